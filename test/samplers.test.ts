/**
 * Every sampler against the exact oracle (the analytic denoiser of a 1-D Gaussian and of a 2-D
 * Gaussian mixture on the linear T = 1000 schedule): sample statistics against the target, the
 * order of convergence of the ODE solvers against the closed-form probability-flow solution,
 * NFE, chunk-size independence, memory, DDPM/DDIM bit-identity with the code before the sampler
 * interface, and the CLI (`sample --config` with model.kind analytic, `bench sample`).
 *
 * Tolerances come from the sample size n, at z = 4 standard errors (two-sided p ≈ 6e-5 per check):
 * a mean within 4·s/√n, a variance ratio within 4·√(2/n) (Gaussian sample variance), a mode weight
 * within 4·√(w(1−w)/n), per-mode statistics with n_k the samples of mode k. Step counts are chosen
 * so that each sampler's discretisation bias is well inside them (measured: see the diagnostics).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import * as tf from '@tensorflow/tfjs';
import { cpuBackend, meanVar } from './helpers.js';
import { scheduleFor, type Schedule } from '../src/model/diffusion/schedule.js';
import { AnalyticDenoiser, mixtureDenoise, mixtureOf, type Mixture } from '../src/model/nets/analytic.js';
import { MLPDenoiser } from '../src/model/nets/mlp.js';
import { chunkModel, drawSamples, sampleSet, type SampleRequest } from '../src/model/sampling/sample.js';
import { SAMPLERS, SAMPLER_NAMES, type SamplerName } from '../src/model/sampling/registry.js';
import { DEFAULT_SETTINGS, type SamplerSettings } from '../src/model/sampling/sampler.js';
import { continuousSigmaModel, countingModel } from '../src/model/sampling/sigma-model.js';
import { guidedOutput, guidedOutputAt } from '../src/model/sampling/guidance.js';
import { initialNoise } from '../src/model/sampling/noise.js';
import { assignModes } from '../src/model/sampling/quality.js';
import type { Prediction } from '../src/model/diffusion/prediction.js';
import type { Params } from '../src/model/params.js';
import type { Denoiser } from '../src/model/nets/denoiser.js';
import { samplerFromCli, type SamplerCliOptions } from '../src/cli/sample.js';
import { UsageError } from '../src/cli/common.js';

await cpuBackend();

const S = scheduleFor('linear', 1000);
const MU = 0.5;
const SD = 0.3;
const GAUSS = mixtureOf([1], [[MU]], SD);
const MIX: Mixture = mixtureOf(
  [0.5, 0.3, 0.2],
  [
    [-2, 0],
    [2, 0],
    [0, 2.5],
  ],
  [[0.3, 0.2], 0.25, [0.2, 0.4]],
);
const Z = 4;

type Run = Partial<SamplerSettings> & { sampler: SamplerName };

function request(r: Run, count: number, o: Partial<SampleRequest> = {}): SampleRequest {
  return {
    ...DEFAULT_SETTINGS,
    ...r,
    count,
    guidance: 0,
    classLabel: null,
    seed: 1,
    prediction: 'eps',
    clip: false,
    chunk: count,
    ...o,
  };
}

/** Samples of the analytic model of `mix` with run r: [count × D] and NFE per sample. */
function draw(mix: Mixture, r: Run, count: number, o: Partial<SampleRequest> = {}, s: Schedule = S) {
  const pred = o.prediction ?? 'eps';
  const m = new AnalyticDenoiser(
    mix,
    s,
    pred,
    o.classLabel !== undefined && o.classLabel !== null ? mix.weights.length : 0,
  );
  return sampleSet(m, new Map(), s, request(r, count, o));
}

const fmt = (v: number) => v.toFixed(4);

// The runs of the oracle table. First-order samplers need many steps for their bias to vanish in
// the tolerance; second-order ones few (diagnostics print the measured figures). Samplers that draw
// noise at hundreds of steps spend their time in the noise streams: they get half the samples (and
// tolerances from that n).
type OracleRun = Run & { half?: boolean };
const ORACLE: OracleRun[] = [
  { sampler: 'ddpm', half: true },
  { sampler: 'ddim', steps: 500, eta: 0 },
  { sampler: 'sde-euler', steps: 500, half: true },
  { sampler: 'pc-langevin', steps: 200 },
  { sampler: 'ode-euler', steps: 400, discretization: 'karras' },
  { sampler: 'ode-heun', steps: 60, discretization: 'karras' },
  { sampler: 'ode-rk45', tolerance: 1e-4 },
  { sampler: 'dpmpp-2m', steps: 60 },
  { sampler: 'edm-heun', steps: 60, churn: 10 },
  { sampler: 'unipc-bh2', steps: 40 },
  { sampler: 'dpmpp-2m-sde', steps: 100 },
];

test('the oracle table covers every sampler', () => {
  assert.deepEqual(ORACLE.map((r) => r.sampler).sort(), [...SAMPLER_NAMES].sort());
});

for (const { half, ...r } of ORACLE) {
  test(`oracle, 1-D Gaussian N(0.5, 0.3²): ${r.sampler} matches mean and variance`, (tc) => {
    const n = half ? 4000 : 8000;
    const { samples, nfe } = draw(GAUSS, r, n);
    const { mean, variance } = meanVar(samples);
    const tolMean = (Z * SD) / Math.sqrt(n);
    const tolVar = Z * Math.sqrt(2 / n);
    tc.diagnostic(
      `${r.sampler} NFE ${nfe.toFixed(1)}: mean ${fmt(mean)} (0.5 ± ${fmt(tolMean)}), variance/σ² ${fmt(variance / SD ** 2)} (1 ± ${fmt(tolVar)})`,
    );
    assert.ok(Math.abs(mean - MU) < tolMean, `mean ${mean}`);
    assert.ok(Math.abs(variance / SD ** 2 - 1) < tolVar, `variance ${variance}`);
  });

  test(`oracle, 2-D mixture of 3: ${r.sampler} matches mode weights, per-mode means and variances`, (tc) => {
    const n = half ? 3000 : 6000;
    const { samples, nfe } = draw(MIX, r, n);
    const labels = assignModes(MIX, samples);
    const lines: string[] = [];
    MIX.weights.forEach((w, k) => {
      const idx = [...labels.keys()].filter((i) => labels[i] === k);
      const nk = idx.length;
      const f = nk / n;
      const tolW = Z * Math.sqrt((w * (1 - w)) / n);
      lines.push(`mode ${k}: weight ${fmt(f)} (${w} ± ${fmt(tolW)})`);
      assert.ok(Math.abs(f - w) < tolW, `${r.sampler} mode ${k} weight ${f}`);
      for (let d = 0; d < 2; d++) {
        const { mean, variance } = meanVar(idx.map((i) => samples[2 * i + d] as number));
        const sd = MIX.std[k]?.[d] as number;
        const mu = MIX.means[k]?.[d] as number;
        const tolMean = (Z * sd) / Math.sqrt(nk);
        const tolVar = Z * Math.sqrt(2 / nk);
        lines.push(
          `  x${d} mean ${fmt(mean)} (${mu} ± ${fmt(tolMean)}) var ratio ${fmt(variance / sd ** 2)} (± ${fmt(tolVar)})`,
        );
        assert.ok(Math.abs(mean - mu) < tolMean, `${r.sampler} mode ${k} x${d} mean ${mean}`);
        assert.ok(
          Math.abs(variance / sd ** 2 - 1) < tolVar,
          `${r.sampler} mode ${k} x${d} variance ${variance}`,
        );
      }
    });
    tc.diagnostic(`${r.sampler} NFE ${nfe.toFixed(1)}\n${lines.join('\n')}`);
  });
}

/**
 * The probability-flow ODE of N(μ, s²) data has the closed-form flow x(σ) = μ + (x(σ_max) − μ)·
 * √(s² + σ²)/√(s² + σ_max²). Every solver here ends with the same step from σ_min to 0, x ↦ D(x; σ_min),
 * so its reference is that step applied to the exact x(σ_min): the error then measures the solver
 * on [σ_min, σ_max] only, where its order holds.
 */
function odeErrors(name: SamplerName, steps: number[], discretization: SamplerSettings['discretization']) {
  const n = 64;
  const m = new AnalyticDenoiser(GAUSS, S, 'eps');
  const sm = chunkModel(
    m,
    new Map(),
    S,
    { guidance: 0, classLabel: null, prediction: 'eps', clip: false },
    0,
    n,
  );
  const z = initialNoise([n, 1], { seed: 1 }).dataSync();
  const lo = Math.sqrt(SD ** 2 + sm.sigmaMin ** 2);
  const hi = Math.sqrt(SD ** 2 + sm.sigmaMax ** 2);
  const ref = Array.from(z, (v) => MU + (sm.priorStd * v - MU) * (SD ** 2 / (lo * hi)));
  return steps.map((k) => {
    const { samples, nfe } = draw(GAUSS, { sampler: name, steps: k, discretization }, n);
    let e = 0;
    for (let i = 0; i < n; i++) e += ((samples[i] as number) - (ref[i] as number)) ** 2;
    return { steps: k, nfe, err: Math.sqrt(e / n) };
  });
}

/** Least-squares slope of log(err) against log(NFE), negated: the observed order. */
function order(rows: { nfe: number; err: number }[]): number {
  const xs = rows.map((r) => Math.log(r.nfe));
  const ys = rows.map((r) => Math.log(r.err));
  const mx = xs.reduce((a, b) => a + b, 0) / xs.length;
  const my = ys.reduce((a, b) => a + b, 0) / ys.length;
  let num = 0;
  let den = 0;
  xs.forEach((x, i) => {
    num += (x - mx) * ((ys[i] as number) - my);
    den += (x - mx) ** 2;
  });
  return -num / den;
}

test('order of convergence on the PF-ODE: Euler ≈ 1, Heun ≈ 2, DPM-Solver++(2M) ≈ 2 (slope of error vs NFE)', (tc) => {
  const cases: [SamplerName, number[], number, number][] = [
    ['ode-euler', [16, 32, 64, 128], 0.9, 1.1],
    ['ode-heun', [16, 32, 64, 128], 1.85, 2.3],
    ['dpmpp-2m', [32, 64, 128, 256], 1.85, 2.3],
    ['unipc-bh2', [16, 32, 64, 128], 2.5, 3.5],
  ];
  for (const [name, steps, min, max] of cases) {
    const rows = odeErrors(name, steps, 'karras');
    const p = order(rows);
    tc.diagnostic(
      `${name}: ${rows.map((r) => `NFE ${r.nfe} err ${r.err.toExponential(2)}`).join(', ')} → slope ${p.toFixed(3)}`,
    );
    assert.ok(p > min && p < max, `${name}: order ${p}`);
    for (let i = 1; i < rows.length; i++)
      assert.ok((rows[i]?.err as number) < (rows[i - 1]?.err as number), `${name} error falls`);
  }
});

test('ode-rk45: the error against the closed-form flow falls with the tolerance, the NFE grows', (tc) => {
  const n = 64;
  const m = new AnalyticDenoiser(GAUSS, S, 'eps');
  const sm = chunkModel(
    m,
    new Map(),
    S,
    { guidance: 0, classLabel: null, prediction: 'eps', clip: false },
    0,
    n,
  );
  const z = initialNoise([n, 1], { seed: 1 }).dataSync();
  const c = SD ** 2 / (Math.sqrt(SD ** 2 + sm.sigmaMin ** 2) * Math.sqrt(SD ** 2 + sm.sigmaMax ** 2));
  const rows = [1e-2, 1e-3, 1e-4, 1e-5].map((tolerance) => {
    const { samples, nfe } = draw(GAUSS, { sampler: 'ode-rk45', tolerance }, n);
    let e = 0;
    z.forEach((v, i) => (e += ((samples[i] as number) - (MU + (sm.priorStd * v - MU) * c)) ** 2));
    return { tolerance, nfe, err: Math.sqrt(e / n) };
  });
  tc.diagnostic(
    rows.map((r) => `tol ${r.tolerance}: NFE ${r.nfe.toFixed(1)} err ${r.err.toExponential(2)}`).join(', '),
  );
  for (let i = 1; i < rows.length; i++) {
    assert.ok((rows[i]?.nfe as number) > (rows[i - 1]?.nfe as number), 'more work at a tighter tolerance');
    assert.ok(
      (rows[i]?.err as number) < (rows[i - 1]?.err as number),
      'smaller error at a tighter tolerance',
    );
  }
  // Global error of a locally controlled solver: within a small multiple of the tolerance × |x|.
  assert.ok((rows[2]?.err as number) < 30 * 1e-4, `tol 1e-4: error ${rows[2]?.err}`);
});

test('ode-euler on the uniform grid is DDIM with η = 0 (Karras et al. 2022: DDIM is Euler in σ)', () => {
  // 10 strided steps of T = 1000 are exactly 999, 888, …, 0: the same noise levels for both.
  const a = draw(GAUSS, { sampler: 'ddim', steps: 10, eta: 0 }, 256).samples;
  const b = draw(GAUSS, { sampler: 'ode-euler', steps: 10, discretization: 'uniform' }, 256).samples;
  let err = 0;
  a.forEach((v, i) => (err = Math.max(err, Math.abs(v - (b[i] as number)))));
  assert.ok(err < 2e-4, `max |DDIM − Euler| ${err}`);
  const c = draw(GAUSS, { sampler: 'ode-euler', steps: 10, discretization: 'karras' }, 256).samples;
  assert.ok(Math.abs((c[0] as number) - (a[0] as number)) > 1e-3, 'another grid gives other samples');
});

test('every prediction target (ε, x₀, v) gives the same samples through the σ-space adapter', () => {
  const runs: Run[] = [
    { sampler: 'dpmpp-2m', steps: 12 },
    { sampler: 'edm-heun', steps: 6, churn: 5 },
    { sampler: 'pc-langevin', steps: 8 },
  ];
  for (const r of runs) {
    const out = (['eps', 'x0', 'v'] as Prediction[]).map(
      (prediction) => draw(MIX, r, 64, { prediction }).samples,
    );
    for (const o of out.slice(1)) {
      let err = 0;
      o.forEach((v, i) => (err = Math.max(err, Math.abs(v - (out[0]?.[i] as number)))));
      assert.ok(err < 1e-3, `${r.sampler}: max difference ${err}`);
    }
  }
});

test('a continuous-time (VE/EDM-style) model plugs into every σ-space sampler; DDPM and DDIM refuse it', (tc) => {
  // The exact denoiser over EDM's range σ ∈ [0.002, 80], x at σ_max ~ N(0, 80²): no schedule at all.
  const model = continuousSigmaModel({
    denoise: (x, sigma) => mixtureDenoise(GAUSS, x, sigma, null),
    sigmaMin: 0.002,
    sigmaMax: 80,
  });
  const n = 3000;
  const runs: Run[] = [
    { sampler: 'edm-heun', steps: 40 },
    { sampler: 'dpmpp-2m', steps: 40 },
    { sampler: 'unipc-bh2', steps: 30 },
    { sampler: 'ode-rk45', tolerance: 1e-4 },
    { sampler: 'sde-euler', steps: 300, discretization: 'karras' },
    { sampler: 'pc-langevin', steps: 150, discretization: 'karras' },
  ];
  for (const r of runs) {
    const { x, nfe } = SAMPLERS[r.sampler].run(model, [n, 1], {
      seed: 4,
      settings: { ...DEFAULT_SETTINGS, ...r },
    });
    const { mean, variance } = meanVar(x.dataSync());
    x.dispose();
    tc.diagnostic(
      `${r.sampler} NFE ${nfe.toFixed(1)}: mean ${fmt(mean)}, variance/σ² ${fmt(variance / SD ** 2)}`,
    );
    assert.ok(Math.abs(mean - MU) < (Z * SD) / Math.sqrt(n), `${r.sampler} mean ${mean}`);
    assert.ok(Math.abs(variance / SD ** 2 - 1) < Z * Math.sqrt(2 / n), `${r.sampler} variance ${variance}`);
  }
  for (const name of ['ddpm', 'ddim'] as const)
    assert.throws(
      () => SAMPLERS[name].run(model, [4, 1], { seed: 0, settings: DEFAULT_SETTINGS }),
      new RegExp(`sample\\.sampler: ${name} needs a model trained on discrete timesteps`),
    );
});

test('σ-space samplers drop a learned variance’s channels, with and without guidance', () => {
  // The analytic network with a variance channel appended: the samples must not change.
  const inner = new AnalyticDenoiser(MIX, S, 'v', 3);
  const withVar: Denoiser = {
    dataShape: inner.dataShape,
    numClasses: inner.numClasses,
    init: () => new Map(),
    apply: (p, x, t, y) =>
      tf.tidy(() => {
        const o = inner.apply(p, x, t, y);
        return tf.concat([o, tf.fill(o.shape, 0.7)], 1);
      }),
  };
  for (const guidance of [0, 1.5]) {
    const req = request({ sampler: 'dpmpp-2m', steps: 8 }, 12, { prediction: 'v', guidance, classLabel: 1 });
    const a = drawSamples(inner, new Map(), S, req);
    const b = drawSamples(withVar, new Map(), S, { ...req, learnSigma: true });
    assert.deepEqual(b, a, `guidance ${guidance}`);
  }
});

test('zero terminal SNR: σ-space samplers start at the clamped σ_max and reach the target (v-prediction)', (tc) => {
  const s = scheduleFor('linear', 1000, true);
  const n = 3000;
  // σ_max is ≈ 3·10⁴ here (ᾱ_{T−1} = 0 replaced): a karras grid spends most levels far above the data
  // scale, so this takes ~4x the steps of the plain schedule (40 steps: +17 % variance; docs/samplers.md).
  for (const r of [
    { sampler: 'dpmpp-2m', steps: 150 },
    { sampler: 'ode-rk45', tolerance: 1e-4 },
  ] as Run[]) {
    const { samples } = draw(GAUSS, r, n, { prediction: 'v' }, s);
    const { mean, variance } = meanVar(samples);
    tc.diagnostic(`${r.sampler}: mean ${fmt(mean)}, variance/σ² ${fmt(variance / SD ** 2)}`);
    assert.ok(samples.every(Number.isFinite));
    assert.ok(Math.abs(mean - MU) < (Z * SD) / Math.sqrt(n), `${r.sampler} mean ${mean}`);
    assert.ok(Math.abs(variance / SD ** 2 - 1) < Z * Math.sqrt(2 / n), `${r.sampler} variance ${variance}`);
  }
});

const SMALL = scheduleFor('linear', 100);
const QUICK: Run[] = [
  { sampler: 'ddpm' },
  { sampler: 'ddim', steps: 20, eta: 1 },
  { sampler: 'sde-euler', steps: 20 },
  { sampler: 'pc-langevin', steps: 10, correctorSteps: 2 },
  { sampler: 'ode-euler', steps: 20 },
  { sampler: 'ode-heun', steps: 10 },
  { sampler: 'ode-rk45', tolerance: 1e-3 },
  { sampler: 'dpmpp-2m', steps: 20, discretization: 'trailing' },
  { sampler: 'edm-heun', steps: 10, churn: 5 },
  { sampler: 'unipc-bh2', steps: 12, discretization: 'quadratic' },
];

test('every sampler reports the NFE it spent (model evaluations counted)', () => {
  const m = new AnalyticDenoiser(MIX, SMALL, 'v');
  for (const r of QUICK) {
    const base = chunkModel(
      m,
      new Map(),
      SMALL,
      { guidance: 0, classLabel: null, prediction: 'v', clip: false },
      0,
      16,
    );
    const { model, calls } = countingModel(base);
    const settings = { ...DEFAULT_SETTINGS, ...r };
    const { x, nfe } = SAMPLERS[r.sampler].run(model, [16, 2], { seed: 2, settings });
    x.dispose();
    const fixed = SAMPLERS[r.sampler].nfe(settings, base);
    if (r.sampler === 'ode-rk45') {
      // Adaptive: per-sample counts; a model call serves every sample still running.
      assert.equal(fixed, null);
      assert.ok(nfe >= 8 && nfe <= calls(), `rk45 NFE ${nfe}, calls ${calls()}`);
    } else {
      assert.equal(nfe, calls(), `${r.sampler}: reported ${nfe}, counted ${calls()}`);
      assert.equal(fixed, nfe, `${r.sampler}: the registry's NFE formula`);
    }
  }
});

test('samples depend on the sample index, not the chunk size, for every sampler', () => {
  for (const r of QUICK) {
    const all = draw(MIX, r, 10, { chunk: 10 }, SMALL).samples;
    const split = draw(MIX, r, 10, { chunk: 3 }, SMALL).samples;
    assert.deepEqual(split, all, `${r.sampler}: chunk 3 vs 10`);
    const other = draw(MIX, r, 10, { chunk: 10, seed: 2 }, SMALL).samples;
    assert.notDeepEqual(other, all, `${r.sampler}: the seed matters`);
  }
});

test('a class-conditional model with guidance: each sample keeps its label under any chunking, for every sampler', () => {
  // Labels cycle through the classes; ode-rk45 calls the model on the samples still running only.
  const m = new AnalyticDenoiser(MIX, SMALL, 'eps', MIX.weights.length);
  for (const r of QUICK) {
    const run = (chunk: number) =>
      sampleSet(m, new Map(), SMALL, request(r, 10, { chunk, guidance: 0.5 })).samples;
    assert.deepEqual(run(3), run(10), `${r.sampler}: chunk 3 vs 10`);
  }
});

test('memory stays flat over many steps (tf.tidy per step) and nothing leaks after a run', () => {
  const m = new AnalyticDenoiser(MIX, SMALL, 'eps');
  for (const r of QUICK) {
    const settings = { ...DEFAULT_SETTINGS, ...r, steps: r.sampler === 'ddim' ? 100 : 60 };
    const model = chunkModel(
      m,
      new Map(),
      SMALL,
      { guidance: 0, classLabel: null, prediction: 'eps', clip: false },
      0,
      8,
    );
    const before = tf.memory().numTensors;
    const seen: number[] = [];
    const { x } = SAMPLERS[r.sampler].run(model, [8, 2], {
      seed: 3,
      settings,
      onStep: () => seen.push(tf.memory().numTensors),
    });
    x.dispose();
    assert.ok(seen.length >= 10, `${r.sampler}: ${seen.length} steps seen`);
    assert.ok(
      Math.max(...seen) - Math.min(...seen) <= 1,
      `${r.sampler}: tensors per step ${Math.min(...seen)}…${Math.max(...seen)}`,
    );
    assert.equal(tf.memory().numTensors, before, `${r.sampler}: leaked ${tf.memory().numTensors - before}`);
  }
});

test('labels and guidance reach σ-space samplers: label k puts every sample in mode k', () => {
  for (const r of [
    { sampler: 'dpmpp-2m', steps: 15 },
    { sampler: 'sde-euler', steps: 40 },
  ] as Run[]) {
    for (const guidance of [0, 2]) {
      const { samples } = draw(MIX, r, 60, { classLabel: 2, guidance });
      assert.ok(
        assignModes(MIX, samples).every((k) => k === 2),
        `${r.sampler} w = ${guidance}`,
      );
    }
    // No class given: sample i has class i mod K.
    const m = new AnalyticDenoiser(MIX, S, 'eps', 3);
    const cyc = drawSamples(m, new Map(), S, request(r, 30));
    assignModes(MIX, cyc).forEach((k, i) => assert.equal(k, i % 3, `${r.sampler} sample ${i}`));
  }
  // The per-example guidance is the scalar one at whole timesteps.
  const cond = (x: tf.Tensor, t: tf.Tensor1D, y: tf.Tensor1D) =>
    tf.add(tf.mul(x, tf.reshape(tf.add(t, 1), [-1, 1])), tf.reshape(tf.cast(y, 'float32'), [-1, 1]));
  const x = tf.tensor2d([
    [1, 2],
    [3, 4],
  ]);
  const labels = Int32Array.of(0, 1);
  const a = guidedOutput(
    (x, t, y) => cond(x, tf.fill([x.shape[0] ?? 0], t) as tf.Tensor1D, y),
    labels,
    2,
    1.5,
  )(x, 7);
  const b = guidedOutputAt(cond, labels, 2, 1.5)(x, Float32Array.of(7, 7));
  assert.deepEqual(a.dataSync(), b.dataSync());
  tf.dispose([x, a, b]);
});

test('DDPM and DDIM samples are bit-identical to the code before the sampler interface', () => {
  // sha256 of the float32 samples, recorded from commit 6169e67 (drawSamples before this change)
  // with the same models and requests.
  const golden: [string, number, number, Partial<SampleRequest>, string][] = [
    [
      'ddpm-cfg-eps-beta',
      3,
      1,
      { sampler: 'ddpm', guidance: 1.5 },
      '98d57322fffd77d007e2d219ad75f44cfd1653adfb84beaa4f156ff5a6a37c54',
    ],
    [
      'ddim-eta1-v-class',
      3,
      1,
      { sampler: 'ddim', steps: 10, eta: 1, classLabel: 1, prediction: 'v' },
      'c5930da0e239f2086f222a8b3bad19014087b542295e71f14eb34f210e163d5d',
    ],
    [
      'ddpm-learnsigma-x0',
      0,
      2,
      { sampler: 'ddpm', sigma: 'posterior', prediction: 'x0', learnSigma: true },
      'ea8497b51f038d36899dd7cdeaf4bc4ec01eff1f218b88907188f8ead5b2e7a8',
    ],
    [
      'ddim-eta0-learnsigma-cfg',
      3,
      2,
      { sampler: 'ddim', steps: 7, eta: 0, guidance: 2, learnSigma: true },
      'bdc4cd15ed3570cccccc0a0f6154fc2c40b7864e47b7793d1eb29b1630f6644e',
    ],
    [
      'ddim-eta0.5-clip',
      0,
      1,
      { sampler: 'ddim', steps: 13, eta: 0.5, clip: true },
      '35b8e32ce02cf3a74e95aace12f725ac438ff05eccaf77be5048f06381190793',
    ],
  ];
  const s = scheduleFor('linear', 50);
  for (const [name, K, outputs, req, hash] of golden) {
    const m = new MLPDenoiser({ dim: 2, hidden: 16, layers: 2, timeEmbedDim: 16, numClasses: K, outputs });
    const p: Params = m.init(7);
    // The output layer starts at zero; deterministic non-zero weights make samples depend on the net.
    for (const [n, t] of p) {
      if (n.startsWith('out.')) {
        p.set(
          n,
          tf.tensor(
            new Float32Array(t.size).map((_, i) => 0.3 * Math.sin(1.7 * i + 0.5)),
            t.shape,
          ),
        );
        t.dispose();
      }
    }
    const out = drawSamples(m, p, s, {
      count: 12,
      seed: 3,
      chunk: 5,
      steps: 50,
      eta: 0,
      guidance: 0,
      classLabel: null,
      sigma: 'beta',
      prediction: 'eps',
      learnSigma: false,
      clip: false,
      sampler: 'ddpm',
      ...req,
    });
    assert.equal(createHash('sha256').update(Buffer.from(out.buffer)).digest('hex'), hash, name);
    for (const t of p.values()) t.dispose();
  }
});

// ---- the command line ----

const BIN = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../bin/ringdiff.js');
const dir = mkdtempSync(path.join(tmpdir(), 'ringdiff-samplers-'));
process.on('exit', () => rmSync(dir, { recursive: true, force: true }));

function cli(args: string[]) {
  const r = spawnSync(process.execPath, [BIN, ...args], { encoding: 'utf8', timeout: 120000 });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

function readNpy(file: string): Float32Array {
  const buf = readFileSync(file);
  return new Float32Array(
    buf.buffer.slice(buf.byteOffset + 10 + buf.readUInt16LE(8), buf.byteOffset + buf.length),
  );
}

const MIX_YAML = `model:
  kind: analytic
  analytic:
    weights: [0.5, 0.3, 0.2]
    means: [[-2, 0], [2, 0], [0, 2.5]]
    std: [[0.3, 0.2], 0.25, [0.2, 0.4]]
`;

test('CLI: ringdiff sample --config <analytic> --sampler X draws the mixture without a checkpoint', () => {
  const cfg = path.join(dir, 'mix.yaml');
  writeFileSync(cfg, MIX_YAML);
  for (const args of [
    ['--sampler', 'dpmpp-2m', '--steps', '30'],
    ['--sampler', 'ode-rk45', '--tolerance', '1e-3'],
    ['--sampler', 'edm-heun', '--steps', '30', '--churn', '10', '--discretization', 'karras'],
  ]) {
    const out = path.join(dir, 'x.npy');
    const n = 600;
    const r = cli(['sample', '--config', cfg, '--count', String(n), '--out', out, ...args]);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stderr, /NFE [\d.]+ per sample/);
    const x = readNpy(out);
    assert.equal(x.length, 2 * n);
    const labels = assignModes(MIX, x);
    MIX.weights.forEach((w, k) => {
      const f = labels.filter((l) => l === k).length / n;
      assert.ok(Math.abs(f - w) < Z * Math.sqrt((w * (1 - w)) / n), `${args[1]} mode ${k}: ${f}`);
    });
  }
});

test('bad sampler options are one line naming the option (in-process), exit ≠ 0 (CLI)', () => {
  const bad: [SamplerCliOptions, RegExp][] = [
    [{ sampler: 'heun' }, /^--sampler: unknown sampler 'heun' \(known: ddpm, ddim/],
    [{ sampler: 'ode-euler', steps: 0 }, /^--steps must be an integer ≥ 1, got 0/],
    [{ sampler: 'ode-euler', churn: 2 }, /^--churn: sampler ode-euler does not use it/],
    [{ sampler: 'dpmpp-2m', snr: 0.1 }, /^--snr: sampler dpmpp-2m does not use it/],
    [{ sampler: 'ode-rk45', steps: 5 }, /^--steps: ode-rk45 chooses its own steps/],
    [{ sampler: 'ddim', steps: 1001 }, /^--steps must be in 1…1000/],
    [{ sampler: 'ddpm', steps: 10 }, /^--steps: DDPM runs all 1000 steps/],
    [{ sampler: 'edm-heun', discretization: 'cosine' }, /^--discretization must be one of auto, uniform/],
    [{ sampler: 'edm-heun', rho: -1 }, /^--rho must be > 0/],
    [{ sampler: 'edm-heun', churn: -1 }, /^--churn must be ≥ 0/],
    [{ sampler: 'ode-rk45', tolerance: 2 }, /^--tolerance must be in \(0, 1\)/],
    [{ sampler: 'pc-langevin', snr: 0 }, /^--snr must be > 0/],
  ];
  for (const [o, re] of bad)
    assert.throws(
      () => samplerFromCli(o, 1000),
      (e: Error) => e instanceof UsageError && !e.message.includes('\n') && re.test(e.message),
      JSON.stringify(o),
    );
  assert.deepEqual(samplerFromCli({}, 1000).name, 'ddpm', 'the default sampler is unchanged');
  assert.equal(samplerFromCli({ sampler: 'edm-heun', churn: 3 }, 1000).settings.churn, 3);
  // End to end: one line on stderr, exit code 1.
  const cfg = path.join(dir, 'mix.yaml');
  writeFileSync(cfg, MIX_YAML);
  const out = path.join(dir, 'y.npy');
  for (const [args, re] of [
    [['--sampler', 'heun'], /^ringdiff: --sampler: unknown sampler 'heun'/],
    [['--sampler', 'ode-euler', '--steps', '0'], /--steps.*must be an integer ≥ 1/],
    [['--sampler', 'pc-langevin', '--snr', 'x'], /--snr must be a number/],
    [['--checkpoint', dir], /--checkpoint and --config: give one of them/],
  ] as [string[], RegExp][]) {
    const r = cli(['sample', '--config', cfg, '--out', out, ...args]);
    assert.equal(r.code, 1, args.join(' '));
    const lines = r.stderr.trim().split('\n');
    assert.equal(lines.length, 1, `${args.join(' ')}: ${r.stderr}`);
    assert.match(lines[0] as string, re);
  }
  const unet = path.join(dir, 'unet.yaml');
  writeFileSync(unet, 'model:\n  kind: unet\n');
  const r = cli(['sample', '--config', unet, '--out', out]);
  assert.match(r.stderr.trim(), /^ringdiff: --config: model\.kind is unet; only an analytic model/);
  const t = cli(['train', '--config', cfg, '--set', 'data.dataset=toy:8gaussians']);
  assert.notEqual(t.code, 0);
  assert.match(t.stderr, /model\.kind: analytic is exact and has nothing to train/);
});

test('CLI: ringdiff bench sample prints quality vs NFE per sampler and writes an SVG plot', () => {
  const plot = path.join(dir, 'bench.svg');
  const r = cli([
    'bench',
    'sample',
    '--samplers',
    'ddim,dpmpp-2m,ode-rk45',
    '--steps',
    '3,12',
    '--tolerance',
    '1e-2',
    '--count',
    '400',
    '--plot',
    plot,
    '--json',
  ]);
  assert.equal(r.code, 0, r.stderr);
  const rep = JSON.parse(r.stdout) as {
    sw2_floor: number;
    rows: { sampler: string; nfe: number; sw2: number; modeTv: number; odeErr: number | null }[];
  };
  assert.deepEqual(
    rep.rows.map((x) => `${x.sampler}:${x.nfe > 0}`),
    ['ddim:true', 'ddim:true', 'dpmpp-2m:true', 'dpmpp-2m:true', 'ode-rk45:true'],
  );
  // More steps, closer to the target (3 steps of DPM-Solver++ on σ ∈ [0.01, 157] are far off).
  const dpm = rep.rows.filter((x) => x.sampler === 'dpmpp-2m');
  assert.ok((dpm[1]?.sw2 as number) < (dpm[0]?.sw2 as number), 'dpmpp-2m: 12 steps beat 3');
  // Deterministic runs are also measured against the PF-ODE solution of the same noise.
  assert.ok((dpm[1]?.odeErr as number) < (dpm[0]?.odeErr as number), 'dpmpp-2m: closer to the ODE solution');
  assert.ok(
    rep.rows.every((x) => x.odeErr !== null && x.odeErr >= 0),
    'ddim η = 0, dpmpp-2m, rk45 solve the ODE',
  );
  assert.ok(rep.sw2_floor > 0 && rep.sw2_floor < 0.5);
  assert.ok(existsSync(plot));
  const svg = readFileSync(plot, 'utf8');
  assert.match(svg, /^<svg[^>]*>/);
  for (const s of ['ddim', 'dpmpp-2m', 'ode-rk45', 'noise floor']) assert.ok(svg.includes(`>${s}<`), s);
  const t = cli([
    'bench',
    'sample',
    '--samplers',
    'ddim',
    '--steps',
    '4',
    '--count',
    '100',
    '--plot',
    path.join(dir, 'b.svg'),
  ]);
  assert.equal(t.code, 0, t.stderr);
  assert.match(t.stdout, /sampler\s+steps\s+NFE\s+SW2\s+mode TV/);
  assert.match(t.stdout, /^ddim\s+4\s+4\s/m);
  const bad = cli(['bench', 'sample', '--samplers', 'ddim,nope']);
  assert.notEqual(bad.code, 0);
  assert.match(bad.stderr.trim(), /^ringdiff: --samplers: unknown sampler 'nope'/);
});

test('CLI: sample.sampler and its keys drive the end-of-run samples of a job, NFE logged', () => {
  const out = path.join(dir, 'job');
  const r = cli([
    'train',
    '--set',
    'data.dataset=toy:8gaussians',
    '--set',
    'model.kind=mlp',
    '--set',
    'model.hidden=16',
    '--set',
    'model.layers=1',
    '--set',
    'train.steps=2',
    '--set',
    'train.global_batch=16',
    '--set',
    'sample.count=40',
    '--set',
    'sample.sampler=edm-heun',
    '--set',
    'sample.steps=5',
    '--set',
    'sample.churn=3',
    '--set',
    `run.out_dir=${out}`,
  ]);
  assert.equal(r.code, 0, r.stderr);
  const x = readNpy(path.join(out, 'samples.npy'));
  assert.equal(x.length, 80);
  assert.ok(x.every(Number.isFinite));
  const line = r.stdout.split('\n').find((l) => l.includes('samples written'));
  assert.ok(line, r.stdout.slice(-2000));
  const rec = JSON.parse(line) as { sampler: string; nfe: number };
  assert.deepEqual([rec.sampler, rec.nfe], ['edm-heun', 9]);
});
