/**
 * The learned-variance terms (Nichol & Dhariwal 2021) against closed forms: the KL, the
 * discretised Gaussian decoder, the interpolated variance, L_t of an exact posterior, and a DDPM
 * run whose learned variance equals a fixed choice.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as tf from '@tensorflow/tfjs';
import { cpuBackend, meanVar, relErr } from './helpers.js';
import { coef, qPosterior, qSample } from '../src/model/diffusion/process.js';
import { scheduleFor } from '../src/model/diffusion/schedule.js';
import {
  discretizedGaussianLogLikelihood,
  hybridLoss,
  modelLogVariance,
  normalKl,
  vbTerms,
} from '../src/model/diffusion/vlb.js';
import { ddpmSample } from '../src/model/sampling/ddpm.js';
import { denoiserFor, type ModelFn } from '../src/model/sampling/guidance.js';

await cpuBackend();

/** erf by Abramowitz & Stegun 7.1.26 (|error| < 1.5e-7). */
function erf(x: number): number {
  const s = Math.sign(x);
  const a = Math.abs(x);
  const t = 1 / (1 + 0.3275911 * a);
  const y =
    1 -
    ((((1.061405429 * t - 1.453152027) * t + 1.421413741) * t - 0.284496736) * t + 0.254829592) *
      t *
      Math.exp(-a * a);
  return s * y;
}
const Phi = (x: number) => 0.5 * (1 + erf(x / Math.SQRT2));
/** The tanh approximation of Φ that improved-diffusion's decoder uses (and ours). */
const PhiTanh = (x: number) => 0.5 * (1 + Math.tanh(Math.sqrt(2 / Math.PI) * (x + 0.044715 * x ** 3)));

test('normal KL matches its closed form and is 0 between equal Gaussians', () => {
  const m1 = [0.3, -1, 2];
  const l1 = [-1, 0.5, 0];
  const m2 = [0.1, -1, 0];
  const l2 = [-0.5, 0.5, 1];
  const got = normalKl(tf.tensor1d(m1), tf.tensor1d(l1), tf.tensor1d(m2), tf.tensor1d(l2)).dataSync();
  m1.forEach((_, i) => {
    const [a, la, b, lb] = [m1[i], l1[i], m2[i], l2[i]] as [number, number, number, number];
    const want = 0.5 * (lb - la - 1 + Math.exp(la - lb) + (a - b) ** 2 * Math.exp(-lb));
    assert.ok(Math.abs((got[i] as number) - want) < 1e-5, `KL ${i}: ${got[i]} vs ${want}`);
  });
  assert.equal(got[1], 0);
});

test('the discretised Gaussian decoder is the mass of the pixel bin (outer bins open-ended)', () => {
  const xs = [-1, -0.5, 0, 0.33, 1];
  const mean = 0.1;
  const logScale = Math.log(0.3);
  const got = discretizedGaussianLogLikelihood(
    tf.tensor1d(xs),
    tf.fill([xs.length], mean),
    tf.fill([xs.length], logScale),
  ).dataSync();
  const sd = Math.exp(logScale);
  xs.forEach((x, i) => {
    const mass = (F: (z: number) => number) => {
      const hi = F((x - mean + 1 / 255) / sd);
      const lo = F((x - mean - 1 / 255) / sd);
      return x <= -0.999 ? hi : x >= 0.999 ? 1 - lo : hi - lo;
    };
    // The closed form with the decoder's Φ; inside, within a few % of the exact Φ's bin mass (the
    // tanh approximation is poorer far in the tails, where the outer bins sit here).
    assert.ok(Math.abs((got[i] as number) - Math.log(mass(PhiTanh))) < 1e-3, `x = ${x}`);
    if (Math.abs(x) < 0.999)
      assert.ok(Math.abs(Math.exp(got[i] as number) / mass(Phi) - 1) < 0.05, `x = ${x} vs exact Φ`);
  });
  // The masses of all 256 bins sum to 1.
  const bins = Array.from({ length: 256 }, (_, k) => -1 + (2 * k) / 255);
  const ll = discretizedGaussianLogLikelihood(
    tf.tensor1d(bins),
    tf.fill([256], mean),
    tf.fill([256], logScale),
  ).dataSync();
  const total = Array.from(ll).reduce((a, b) => a + Math.exp(b), 0);
  assert.ok(Math.abs(total - 1) < 5e-3, `bins sum to ${total}`);
});

test('the learned variance spans log β̃_t (v̂ = −1) to log β_t (v̂ = 1); L_t of the exact posterior is 0', () => {
  const s = scheduleFor('linear', 1000);
  const t = [1, 10, 500, 999];
  const lo = modelLogVariance(s, t, tf.fill([4, 3], -1)).dataSync();
  const hi = modelLogVariance(s, t, tf.fill([4, 3], 1)).dataSync();
  t.forEach((ti, i) => {
    assert.ok(Math.abs((lo[3 * i] as number) - (s.posteriorLogVarianceClipped[ti] as number)) < 1e-5);
    assert.ok(Math.abs((hi[3 * i] as number) - Math.log(s.betas[ti] as number)) < 1e-5);
  });
  const x0 = tf.tensor2d([
    [0.2, -0.4, 0.9],
    [0.5, 0.5, -1],
    [0, 0.1, 0.2],
    [1, -1, 0],
  ]);
  const xt = qSample(
    s,
    x0,
    t,
    tf.tensor2d([
      [1, -1, 0.5],
      [0, 2, -0.3],
      [0.4, 0.1, 1],
      [-1, 0, 1],
    ]),
  );
  const trueLogVar = coef(s.posteriorLogVarianceClipped, t, 2);
  const zero = vbTerms(s, x0, xt, t, x0, trueLogVar).dataSync();
  zero.forEach((v) => assert.ok(Math.abs(v) < 1e-5, `L_t ${v}`));
  // A wrong x̂₀ or variance costs bits.
  const off = vbTerms(s, x0, xt, t, tf.add(x0, 0.1), trueLogVar).dataSync();
  off.slice(0, 3).forEach((v) => assert.ok(v > 0));
  // At t = 0 the term is the decoder NLL of x₀ under N(μ̃, σ²) per dimension, in bits.
  const t0 = [0, 0, 0, 0];
  const xt0 = qSample(s, x0, t0, tf.zerosLike(x0));
  const lv = coef(s.posteriorLogVarianceClipped, t0, 2);
  const nll = vbTerms(s, x0, xt0, t0, x0, lv).dataSync();
  const mean = qPosterior(s, x0, xt0, t0).mean;
  const ll = discretizedGaussianLogLikelihood(x0, mean, tf.mul(0.5, lv)).mean(1).dataSync();
  nll.forEach((v, i) => assert.ok(Math.abs(v - -(ll[i] as number) / Math.LN2) < 1e-4));
});

test('L_hybrid: the variance term trains only the variance channels (the mean is frozen inside it)', () => {
  const s = scheduleFor('linear', 100);
  const t = [3, 40];
  const x0 = tf.tensor2d([
    [0.2, -0.4],
    [0.5, 0.1],
  ]);
  const noise = tf.tensor2d([
    [1, -1],
    [0.3, 0.2],
  ]);
  const xt = qSample(s, x0, t, noise);
  const out = tf.tensor2d([
    [0.9, -0.8, 0.1, -0.3],
    [0.2, 0.4, 0.5, 0.0],
  ]);
  const x0Hat = (o: tf.Tensor) =>
    tf.div(tf.sub(xt, tf.mul(coef(s.sqrtOneMinusAlphasCumprod, t, 2), o)), coef(s.sqrtAlphasCumprod, t, 2));
  const g = tf
    .grad((o: tf.Tensor) => tf.sum(hybridLoss(s, o, noise, x0, xt, t, x0Hat, 0.001)))(out)
    .arraySync() as number[][];
  const gMse = tf
    .grad((o: tf.Tensor) => tf.sum(tf.mean(tf.squaredDifference(noise, o.slice([0, 0], [2, 2])), 1)))(out)
    .arraySync() as number[][];
  // Mean channels: exactly the MSE's gradient; variance channels: non-zero.
  for (let i = 0; i < 2; i++) {
    assert.ok(relErr([g[i]?.[0] ?? 0, g[i]?.[1] ?? 0], [gMse[i]?.[0] ?? 0, gMse[i]?.[1] ?? 0]) < 1e-6);
    assert.ok(Math.abs(g[i]?.[2] ?? 0) + Math.abs(g[i]?.[3] ?? 0) > 0);
  }
});

test('DDPM with a learned variance of v̂ = −1 samples exactly as the fixed posterior variance', () => {
  const s = scheduleFor('linear', 1000);
  const MU = 0.5;
  const S2 = 0.09;
  const eps: ModelFn = (x, t) =>
    tf.tidy(() => {
      const a = s.alphasCumprod[t] as number;
      return tf.mul(tf.sub(x, Math.sqrt(a) * MU), Math.sqrt(1 - a) / (a * S2 + 1 - a));
    });
  const learned: ModelFn = (x, t) => tf.tidy(() => tf.concat([eps(x, t), tf.fill(x.shape, -1)], 1));
  const a = ddpmSample(s, denoiserFor('eps', s, learned, true), [2000, 1], { seed: 4, sigma: 'beta' });
  const b = ddpmSample(s, denoiserFor('eps', s, eps), [2000, 1], { seed: 4, sigma: 'posterior' });
  assert.ok(relErr(a.dataSync(), b.dataSync()) < 1e-4);
  const { mean, variance } = meanVar(a.dataSync());
  assert.ok(Math.abs(mean - MU) < 0.03 && Math.abs(variance / S2 - 1) < 0.1, `${mean} ${variance}`);
});
