import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as tf from '@tensorflow/tfjs';
import { cpuBackend, meanVar, relErr } from './helpers.js';
import { denoised, targetFor } from '../src/model/diffusion/prediction.js';
import { scheduleFor, type Schedule } from '../src/model/diffusion/schedule.js';
import { ddimSample, stridedTimesteps } from '../src/model/sampling/ddim.js';
import { ddpmSample } from '../src/model/sampling/ddpm.js';
import { epsFromX0, predictX0, qPosterior, qSample } from '../src/model/diffusion/process.js';
import { denoiserFor, guidedOutput, type ModelFn } from '../src/model/sampling/guidance.js';
import { noiseFor } from '../src/model/rng.js';
import { perExampleMse } from '../src/model/diffusion/loss.js';
import { Purpose } from '../src/model/rng.js';

await cpuBackend();

test('q_sample has mean √ᾱ·x₀ and variance 1 − ᾱ', () => {
  const s = scheduleFor('linear', 1000);
  const N = 40000;
  for (const t of [0, 100, 500, 999]) {
    const x0 = tf.fill([N, 1], 0.7);
    const noise = tf.tensor(noiseFor(1, 2, 0, N, 1, Purpose.noise), [N, 1]);
    const xt = qSample(s, x0, new Array(N).fill(t), noise);
    const { mean, variance } = meanVar(xt.dataSync());
    const a = s.alphasCumprod[t] as number;
    assert.ok(Math.abs(mean - Math.sqrt(a) * 0.7) < 4 * Math.sqrt((1 - a) / N) + 1e-6, `t=${t} mean ${mean}`);
    assert.ok(Math.abs(variance / (1 - a) - 1) < 0.03, `t=${t} var ${variance}`);
    tf.dispose([x0, noise, xt]);
  }
});

test('posterior mean/variance equal Bayes’ rule for q(x_{t−1} | x_t, x₀)', () => {
  const s = scheduleFor('cosine', 200);
  const ts = [1, 7, 100, 199];
  const x0v = [0.3, -0.8, 0.1, 0.9];
  const xtv = [1.2, -0.4, 0.5, -1.7];
  const x0 = tf.tensor2d(x0v, [4, 1]);
  const xt = tf.tensor2d(xtv, [4, 1]);
  const { mean, variance } = qPosterior(s, x0, xt, ts);
  const m = mean.dataSync();
  const v = variance.dataSync();
  ts.forEach((t, i) => {
    const b = s.betas[t] as number;
    const abPrev = s.alphasCumprodPrev[t] as number;
    const prec = 1 / (1 - abPrev) + (1 - b) / b;
    const mu =
      ((Math.sqrt(abPrev) * (x0v[i] as number)) / (1 - abPrev) +
        (Math.sqrt(1 - b) * (xtv[i] as number)) / b) /
      prec;
    assert.ok(Math.abs((m[i] as number) - mu) < 1e-5, `t=${t}: ${m[i]} vs ${mu}`);
    assert.ok(Math.abs((v[i] as number) - 1 / prec) / (1 / prec) < 1e-5);
  });
  tf.dispose([x0, xt, mean, variance]);
});

test('predictX0 inverts q_sample, epsFromX0 inverts predictX0, per-example mse', () => {
  const s = scheduleFor('linear', 1000);
  const t = [3, 300, 900];
  const x0 = tf.tensor2d([0.1, 0.2, -0.5, 0.4, 0.9, -0.9], [3, 2]);
  const eps = tf.tensor2d([1, -1, 0.5, 0.3, -2, 0.7], [3, 2]);
  const xt = qSample(s, x0, t, eps);
  const back = predictX0(s, xt, t, eps);
  tf.util.assert(true, () => '');
  const d = tf.max(tf.abs(tf.sub(back, x0))).dataSync()[0] as number;
  assert.ok(d < 2e-4, `x0 round trip error ${d}`);
  const e2 = epsFromX0(s, xt, t, x0);
  assert.ok((tf.max(tf.abs(tf.sub(e2, eps))).dataSync()[0] as number) < 1e-3);
  const mse = perExampleMse(eps, tf.zerosLike(eps)).arraySync();
  assert.deepEqual(
    mse.map((x) => Math.round(x * 1000) / 1000),
    [1, 0.17, 2.245],
  );
});

/** The exact ε-predictor for data ~ N(μ, σ²I): E[ε | x_t]. */
function epsOracle(s: Schedule, mu: number, sigma2: number): ModelFn {
  return (x, t) =>
    tf.tidy(() => {
      const a = s.alphasCumprod[t] as number;
      return tf.mul(tf.sub(x, Math.sqrt(a) * mu), Math.sqrt(1 - a) / (a * sigma2 + 1 - a));
    });
}

/** The exact x₀-predictor for data ~ N(μ, σ²I): E[x₀ | x_t] = μ + √ᾱσ²/(ᾱσ² + 1 − ᾱ)·(x_t − √ᾱμ). */
function x0Oracle(s: Schedule, mu: number, sigma2: number): ModelFn {
  return (x, t) =>
    tf.tidy(() => {
      const a = s.alphasCumprod[t] as number;
      return tf.add(mu, tf.mul(tf.sub(x, Math.sqrt(a) * mu), (Math.sqrt(a) * sigma2) / (a * sigma2 + 1 - a)));
    });
}

/** The exact v-predictor: E[v | x_t] = √ᾱ E[ε | x_t] − √(1−ᾱ) E[x₀ | x_t]. */
function vOracle(s: Schedule, mu: number, sigma2: number): ModelFn {
  const e = epsOracle(s, mu, sigma2);
  const x0 = x0Oracle(s, mu, sigma2);
  return (x, t) =>
    tf.tidy(() => {
      const a = s.alphasCumprod[t] as number;
      return tf.sub(tf.mul(Math.sqrt(a), e(x, t)), tf.mul(Math.sqrt(1 - a), x0(x, t)));
    });
}

/** The exact ε-denoiser as samplers call it. */
function oracle(s: Schedule, mu: number, sigma2: number) {
  return denoiserFor('eps', s, epsOracle(s, mu, sigma2));
}

const MU = 0.5;
const SIGMA2 = 0.09;
const N = 10000;

for (const sigma of ['beta', 'posterior'] as const) {
  test(`oracle: DDPM (1000 steps, σ² = ${sigma}) reproduces μ and σ²`, () => {
    const s = scheduleFor('linear', 1000);
    const x = ddpmSample(s, oracle(s, MU, SIGMA2), [N, 1], { seed: 11, sigma, clip: false });
    const { mean, variance } = meanVar(x.dataSync());
    x.dispose();
    assert.ok(Math.abs(mean - MU) < 0.01, `mean ${mean}`);
    assert.ok(Math.abs(variance / SIGMA2 - 1) < 0.05, `variance ${variance}`);
  });
}

/**
 * Variance of DDIM's output for N(μ, σ²) data driven by the oracle, from the exact linear recursion
 * of its discrete steps: d_prev = c·d + σ_k z with c = (√(ᾱ_p ᾱ) σ² + √(1 − ᾱ_p − σ_k²) √(1 − ᾱ)) / (ᾱσ² + 1 − ᾱ).
 * DDIM with few steps underestimates the variance (Cauchy–Schwarz makes every c² too small), so the
 * sampler is checked against this prediction, tightly, and against σ² loosely.
 */
function ddimPredictedVariance(s: Schedule, seq: number[], sigma2: number, eta: number): number {
  const first = s.alphasCumprod[seq[0] as number] as number;
  let v = first * sigma2 + 1 - first;
  seq.forEach((t, k) => {
    const a = s.alphasCumprod[t] as number;
    const next = seq[k + 1];
    const ap = next === undefined ? 1 : (s.alphasCumprod[next] as number);
    const sk2 = next === undefined ? 0 : eta ** 2 * ((1 - ap) / (1 - a)) * (1 - a / ap);
    const c =
      (Math.sqrt(ap * a) * sigma2 + Math.sqrt(1 - ap - sk2) * Math.sqrt(1 - a)) / (a * sigma2 + 1 - a);
    v = c * c * v + sk2;
  });
  return v;
}

test('oracle: DDIM (50 steps, η = 0) reproduces μ exactly and σ² as its discretisation predicts', () => {
  const s = scheduleFor('linear', 1000);
  const run = () => ddimSample(s, oracle(s, MU, SIGMA2), [N, 1], { seed: 5, steps: 50, eta: 0 });
  const x = run();
  const data = x.dataSync().slice();
  const { mean, variance } = meanVar(data);
  const predicted = ddimPredictedVariance(s, stridedTimesteps(1000, 50), SIGMA2, 0);
  assert.ok(Math.abs(mean - MU) < 0.01, `mean ${mean}`);
  assert.ok(Math.abs(variance / predicted - 1) < 0.04, `variance ${variance}, predicted ${predicted}`);
  assert.ok(Math.abs(variance / SIGMA2 - 1) < 0.2, `variance ${variance} vs σ² ${SIGMA2}`);
  const y = run();
  assert.deepEqual(y.dataSync(), data);
  tf.dispose([x, y]);
});

test('oracle: DDIM with η = 1 (stochastic) matches its predicted mean and variance', () => {
  const s = scheduleFor('cosine', 1000);
  const x = ddimSample(s, oracle(s, MU, SIGMA2), [N, 1], { seed: 9, steps: 100, eta: 1 });
  const { mean, variance } = meanVar(x.dataSync());
  x.dispose();
  const predicted = ddimPredictedVariance(s, stridedTimesteps(1000, 100), SIGMA2, 1);
  assert.ok(Math.abs(mean - MU) < 0.01, `mean ${mean}`);
  assert.ok(Math.abs(variance / predicted - 1) < 0.05, `variance ${variance}, predicted ${predicted}`);
  assert.ok(Math.abs(variance / SIGMA2 - 1) < 0.2, `variance ${variance} vs σ² ${SIGMA2}`);
});

test('sampling noise depends on the sample index, not the chunking', () => {
  const s = scheduleFor('linear', 50);
  const eps = denoiserFor('eps', s, (x) => tf.mul(x, 0.1));
  const all = ddpmSample(s, eps, [6, 2], { seed: 3, sigma: 'beta' });
  const a = ddpmSample(s, eps, [2, 2], { seed: 3, sigma: 'beta' });
  const b = ddpmSample(s, eps, [4, 2], { seed: 3, sigma: 'beta', indexOffset: 2 });
  assert.deepEqual(all.dataSync(), tf.concat([a, b]).dataSync());
  tf.dispose([all, a, b]);
});

test('clipping keeps the predicted x₀ in [-1, 1]', () => {
  const s = scheduleFor('linear', 100);
  const wild = denoiserFor('eps', s, (x) => tf.mul(x, -5));
  const x = ddimSample(s, wild, [64, 2], { seed: 1, steps: 10, eta: 0, clip: true });
  const v = x.dataSync();
  assert.ok(Math.max(...v) <= 1 + 1e-5 && Math.min(...v) >= -1 - 1e-5);
  x.dispose();
});

test('strided timesteps: descending, unique, include T−1 and 0', () => {
  assert.deepEqual(stridedTimesteps(1000, 1), [999]);
  const k = stridedTimesteps(1000, 50);
  assert.equal(k.length, 50);
  assert.equal(k[0], 999);
  assert.equal(k[49], 0);
  for (let i = 1; i < k.length; i++) assert.ok((k[i] as number) < (k[i - 1] as number));
  assert.throws(() => stridedTimesteps(10, 11), /steps/);
});

test('classifier-free guidance: ε = (1 + w)·ε(x|y) − w·ε(x|∅)', () => {
  // A fake conditional model: ε(x | y) = x · (y + 1), null class 3.
  const cond = (x: tf.Tensor, _t: number, y: tf.Tensor1D) =>
    tf.mul(x, tf.reshape(tf.add(tf.cast(y, 'float32'), 1), [-1, 1]));
  const x = tf.tensor2d([1, 2, 3, 4], [2, 2]);
  const labels = Int32Array.of(0, 2);
  const w = 1.5;
  const got = guidedOutput(cond, labels, 3, w)(x, 10).arraySync() as number[][];
  // row 0: (1+w)·x·1 − w·x·4; row 1: (1+w)·x·3 − w·x·4
  const expect = [
    [1 * (2.5 - 6), 2 * (2.5 - 6)],
    [3 * (7.5 - 6), 4 * (7.5 - 6)],
  ];
  assert.deepEqual(got, expect);
  assert.deepEqual(guidedOutput(cond, labels, 3, 0)(x, 10).arraySync(), [
    [1, 2],
    [9, 12],
  ]);
});

test('x0 and v prediction: the exact predictors give the same (ε̂, x̂₀) as the ε one, and DDIM reproduces μ and σ²', () => {
  const s = scheduleFor('linear', 1000);
  const x = tf.tensor2d([[-1], [0.2], [1.5]]);
  for (const t of [0, 10, 500, 999]) {
    const ref = denoiserFor('eps', s, epsOracle(s, MU, SIGMA2))(x, t);
    for (const [pred, f] of [
      ['x0', x0Oracle(s, MU, SIGMA2)],
      ['v', vOracle(s, MU, SIGMA2)],
    ] as const) {
      const got = denoiserFor(pred, s, f)(x, t);
      assert.ok(relErr(got.eps.dataSync(), ref.eps.dataSync()) < 1e-4, `${pred} ε̂ at t=${t}`);
      assert.ok(relErr(got.x0.dataSync(), ref.x0.dataSync()) < 1e-4, `${pred} x̂₀ at t=${t}`);
    }
  }
  for (const [pred, f] of [
    ['x0', x0Oracle(s, MU, SIGMA2)],
    ['v', vOracle(s, MU, SIGMA2)],
  ] as const) {
    const out = ddimSample(s, denoiserFor(pred, s, f), [N, 1], { seed: 5, steps: 50, eta: 0 });
    const { mean, variance } = meanVar(out.dataSync());
    out.dispose();
    const predicted = ddimPredictedVariance(s, stridedTimesteps(1000, 50), SIGMA2, 0);
    assert.ok(Math.abs(mean - MU) < 0.01, `${pred}: mean ${mean}`);
    assert.ok(
      Math.abs(variance / predicted - 1) < 0.04,
      `${pred}: variance ${variance}, predicted ${predicted}`,
    );
  }
});

test('targets round-trip: ε, x0 and v of the same (x₀, ε) convert back to both exactly (float32)', () => {
  const s = scheduleFor('cosine', 200);
  const x0 = tf.tensor2d([
    [0.3, -0.7],
    [1, 0.1],
  ]);
  const noise = tf.tensor2d([
    [-1.2, 0.4],
    [0.05, 2],
  ]);
  const t = [3, 150];
  const xt = qSample(s, x0, t, noise);
  for (const pred of ['eps', 'x0', 'v'] as const) {
    const d = denoised(pred, s, xt, t, targetFor(pred, s, x0, noise, t));
    assert.ok(relErr(d.x0.dataSync(), x0.dataSync()) < 1e-5, `${pred}: x0`);
    assert.ok(relErr(d.eps.dataSync(), noise.dataSync()) < 1e-5, `${pred}: eps`);
  }
});

test('zero terminal SNR (Lin et al. 2023): ᾱ_T = 0, √ᾱ_0 unchanged; v-prediction samples stay finite and exact', () => {
  const base = scheduleFor('linear', 1000);
  const s = scheduleFor('linear', 1000, true);
  assert.equal(s.alphasCumprod[999], 0);
  assert.ok(Math.abs((s.sqrtAlphasCumprod[0] as number) - (base.sqrtAlphasCumprod[0] as number)) < 1e-12);
  // √ᾱ_t is an affine map of the original: equal differences keep their ratio.
  const r = (u: Schedule, i: number, j: number) =>
    ((u.sqrtAlphasCumprod[i] as number) - (u.sqrtAlphasCumprod[j] as number)) /
    ((u.sqrtAlphasCumprod[0] as number) - (u.sqrtAlphasCumprod[999] as number));
  assert.ok(Math.abs(r(s, 100, 600) - r(base, 100, 600)) < 1e-9);
  for (const sampler of ['ddim', 'ddpm'] as const) {
    const d = denoiserFor('v', s, vOracle(s, MU, SIGMA2));
    const out =
      sampler === 'ddim'
        ? ddimSample(s, d, [N, 1], { seed: 5, steps: 50, eta: 0 })
        : ddpmSample(s, d, [N, 1], { seed: 11, sigma: 'posterior' });
    const v = out.dataSync();
    out.dispose();
    assert.ok(v.every(Number.isFinite), `${sampler}: finite`);
    const { mean, variance } = meanVar(v);
    const predicted =
      sampler === 'ddim' ? ddimPredictedVariance(s, stridedTimesteps(1000, 50), SIGMA2, 0) : SIGMA2;
    assert.ok(Math.abs(mean - MU) < 0.01, `${sampler}: mean ${mean}`);
    assert.ok(
      Math.abs(variance / predicted - 1) < 0.05,
      `${sampler}: variance ${variance}, predicted ${predicted}`,
    );
  }
});
