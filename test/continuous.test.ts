/**
 * Continuous-time objectives (src/model/diffusion/continuous.ts): the SDEs' σ(t) against their
 * published formulas, EDM's log-normal σ and preconditioning, the round trip target → x̂₀ for every
 * prediction, σ inside its importance-sampler bin, and the config's one-line refusals. Training and
 * sampling end to end are in converge.test.ts; shard invariance and exact resume in train.test.ts.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as tf from '@tensorflow/tfjs';
import { cpuBackend } from './helpers.js';
import {
  coefsAt,
  continuousDenoised,
  continuousTraining,
  edmProcess,
  normalQuantile,
  processOf,
  sdeProcess,
  SDE_T_EPS,
} from '../src/model/diffusion/continuous.js';
import { continuousSigmas, type StepContext } from '../src/model/train.js';
import { drawTimesteps } from '../src/model/diffusion/timesteps.js';
import { scheduleFor } from '../src/model/diffusion/schedule.js';
import { Purpose, stream } from '../src/model/rng.js';
import { loadConfig } from '../src/config/load.js';

await cpuBackend();

const SDE = { betaMin: 0.1, betaMax: 20, sigmaMin: 0.01, sigmaMax: 50 };
const EDM = { sigmaData: 0.5, pMean: -1.2, pStd: 1.2, sigmaMin: 0.002, sigmaMax: 80 };

test('Φ⁻¹ matches tabulated normal quantiles to 1e-8', () => {
  for (const [p, x] of [
    [0.5, 0],
    [0.975, 1.959963984540054],
    [0.025, -1.959963984540054],
    [0.8413447460685429, 1],
    [1e-6, -4.753424308822899],
    [0.999, 3.090232306167813],
  ] as const)
    assert.ok(Math.abs(normalQuantile(p) - x) < 1e-8 * Math.max(1, Math.abs(x)), `Φ⁻¹(${p})`);
  assert.throws(() => normalQuantile(0), /0 < p < 1/);
});

test('VP, sub-VP and VE SDEs: σ(t), c_in and the time label follow Song et al. 2021 (eqs. 29–33)', () => {
  const b0 = SDE.betaMin;
  const b1 = SDE.betaMax;
  for (const kind of ['vp', 'subvp', 've'] as const) {
    const p = sdeProcess(kind, SDE);
    for (const t of [SDE_T_EPS, 0.01, 0.3, 0.77, 1]) {
      const q = (t - SDE_T_EPS) / (1 - SDE_T_EPS);
      const sigma = p.sigmaAtQuantile(q);
      // Mean coefficient and std of x_t given x₀, written from the paper's integrals.
      const logMean = -0.25 * t * t * (b1 - b0) - 0.5 * t * b0;
      const mean = kind === 've' ? 1 : Math.exp(logMean);
      const std =
        kind === 've'
          ? SDE.sigmaMin * (SDE.sigmaMax / SDE.sigmaMin) ** t
          : kind === 'vp'
            ? Math.sqrt(1 - Math.exp(2 * logMean))
            : 1 - Math.exp(2 * logMean);
      assert.ok(Math.abs(sigma / (std / mean) - 1) < 1e-9, `${kind} σ(${t})`);
      assert.ok(Math.abs(p.cIn(sigma) / mean - 1) < 1e-9, `${kind} c_in(${t})`);
      assert.ok(Math.abs(p.netTime(sigma) - 999 * t) < 1e-6, `${kind} label(${t})`);
      assert.ok(Math.abs(p.sigmaAt(q) / sigma - 1) < 1e-12, `${kind} grid(${t})`);
    }
    assert.ok(p.sigmaMin < p.sigmaAt(0.5) && p.sigmaAt(0.5) < p.sigmaMax);
  }
  // Both VP-type SDEs end at x_T ≈ N(0, I): in σ coordinates std 1/α(1) ≈ 152.
  const vp = sdeProcess('vp', SDE);
  assert.ok(Math.abs(vp.priorStd - Math.exp(0.25 * (b1 - b0) + 0.5 * b0)) < 1e-9 * vp.priorStd);
  assert.equal(sdeProcess('ve', SDE).priorStd, 50);
});

test('EDM: ln σ of the training quantiles is N(P_mean, P_std²); preconditioning gives unit-variance inputs and targets', () => {
  const p = edmProcess(EDM);
  const K = 20000;
  let m = 0;
  let m2 = 0;
  for (let k = 0; k < K; k++) {
    const l = Math.log(p.sigmaAtQuantile((k + 0.5) / K));
    m += l / K;
    m2 += (l * l) / K;
  }
  assert.ok(Math.abs(m - EDM.pMean) < 1e-3, `mean ${m}`);
  assert.ok(Math.abs(Math.sqrt(m2 - m * m) - EDM.pStd) < 2e-3, `std ${Math.sqrt(m2 - m * m)}`);
  // Karras et al. 2022 App. B.6: for Var[x₀] = σ_d², Var[c_in·x] = 1 and Var[target] = 1 at every σ.
  const sd = EDM.sigmaData;
  for (const s of [0.002, 0.1, 0.5, 3, 80]) {
    const { cIn, cSkip, cOut } = coefsAt(p, [s]);
    const ci = cIn[0] as number;
    const cs = (cSkip as Float64Array)[0] as number;
    const co = (cOut as Float64Array)[0] as number;
    assert.ok(Math.abs(ci * ci * (sd * sd + s * s) - 1) < 1e-12);
    assert.ok(Math.abs(((1 - cs) ** 2 * sd * sd + cs * cs * s * s) / (co * co) - 1) < 1e-12);
  }
  assert.ok(Math.abs(p.netTime(0.002)) < 1e-9 && Math.abs(p.netTime(80) - 1000) < 1e-9);
});

test('a perfect prediction of the training target denoises exactly, for ε, x₀, v and EDM', () => {
  const B = 6;
  const x0 = tf.tensor(stream(1, 0, 0, Purpose.data).normals(new Float32Array(B * 3)), [B, 3]);
  const noise = tf.tensor(stream(1, 0, 1, Purpose.data).normals(new Float32Array(B * 3)), [B, 3]);
  const sigma = [0.003, 0.05, 0.4, 1.7, 9, 45];
  const want = x0.arraySync() as number[][];
  for (const [p, pred] of [
    [sdeProcess('ve', SDE), 'eps'],
    [sdeProcess('vp', SDE), 'x0'],
    [sdeProcess('subvp', SDE), 'v'],
    [sdeProcess('ve', SDE), 'v'],
    [edmProcess(EDM), 'eps'],
  ] as const) {
    const c = continuousTraining(p, pred, x0, noise, sigma);
    // The network sees c_in·x; the sampler's denoiser gets x itself.
    const x = tf.div(c.input, tf.tensor(Float32Array.from(coefsAt(p, sigma).cIn), [B, 1]));
    const got = continuousDenoised(p, pred, x, c.target, sigma).arraySync() as number[][];
    got.forEach((row, i) =>
      row.forEach((v, d) => {
        const w = (want[i] as number[])[d] as number;
        // float32: the error scales with σ·|ε| for ε prediction.
        const tol = 1e-5 * (1 + (sigma[i] as number));
        assert.ok(Math.abs(v - w) < tol, `${p.kind}/${pred} σ=${sigma[i]}: ${v} vs ${w}`);
      }),
    );
    tf.dispose([c.input, c.target, x]);
  }
  tf.dispose([x0, noise]);
});

test('each example’s σ lies inside the quantile range of its importance-sampler bin, keyed by its global index', () => {
  const p = edmProcess(EDM);
  const K = 50;
  const probs = new Float64Array(K).map((_, k) => (k + 1) / ((K * (K + 1)) / 2));
  const ctx = { seed: 5, step: 9, globalBatch: 32, probs } as unknown as StepContext;
  const { t } = drawTimesteps(probs, 5, 9, 32, 0, 32);
  const all = continuousSigmas(ctx, p, t, 0);
  t.forEach((k, i) => {
    const s = all[i] as number;
    assert.ok(
      s >= (k === 0 ? 0 : p.sigmaAtQuantile(k / K)) &&
        s <= (k === K - 1 ? Infinity : p.sigmaAtQuantile((k + 1) / K)),
      `example ${i} bin ${k}`,
    );
  });
  // A worker holding positions 10…19 computes the same σ for them.
  const part = continuousSigmas(ctx, p, t.subarray(10, 20), 10);
  assert.deepEqual(Array.from(part), Array.from(all.subarray(10, 20)));
  // The DDPM schedule is untouched by the continuous objectives (same object shape for both paths).
  assert.equal(scheduleFor('linear', K).T, K);
});

test('config: objectives sde and edm; what they cannot take is refused in one line naming the key', () => {
  const ok = loadConfig(undefined, ['diffusion.objective=edm', 'sample.sampler=edm-heun']);
  assert.equal(processOf(ok.diffusion)?.kind, 'edm');
  assert.equal(processOf(loadConfig(undefined, []).diffusion), null);
  const ve = loadConfig(undefined, [
    'diffusion.objective=sde',
    'diffusion.sde=ve',
    'sample.sampler=pc-langevin',
  ]);
  assert.equal(processOf(ve.diffusion)?.sigmaMax, 50);
  for (const [sets, re] of [
    [
      ['diffusion.objective=edm'],
      /sample\.sampler: ddim walks the timesteps of objective ddpm; objective edm needs a σ sampler/,
    ],
    [
      ['diffusion.objective=edm', 'sample.sampler=edm-heun', 'diffusion.prediction=v'],
      /diffusion\.prediction: objective edm trains EDM's preconditioned F/,
    ],
    [
      ['diffusion.objective=sde', 'sample.sampler=edm-heun', 'diffusion.learn_sigma=true'],
      /diffusion\.learn_sigma: is for objective ddpm/,
    ],
    [
      ['diffusion.objective=edm', 'sample.sampler=edm-heun', 'diffusion.loss_weighting=min_snr'],
      /diffusion\.loss_weighting: objective edm has its own weighting/,
    ],
    [
      ['diffusion.objective=sde', 'diffusion.sde=ve', 'sample.sampler=edm-heun', 'diffusion.sigma_max=0.005'],
      /diffusion\.sigma_max: must exceed sigma_min \(0\.01\), got 0\.005/,
    ],
    [
      ['diffusion.objective=sde', 'sample.sampler=edm-heun', 'diffusion.beta_max=0.05'],
      /diffusion\.beta_max: must exceed beta_min/,
    ],
    [['diffusion.objective=ode'], /diffusion\.objective/],
  ] as const)
    assert.throws(() => loadConfig(undefined, [...sets]), re);
});
