import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  LossSecondMomentSampler,
  UniformSampler,
  cdf,
  createSampler,
  drawTimesteps,
  inverseCdf,
} from '../src/model/diffusion/timesteps.js';

test('loss-second-moment: uniform until every t has a full history', () => {
  const s = new LossSecondMomentSampler(4, 3, 0.001);
  for (let k = 0; k < 3; k++) s.update([0, 1, 2], [1, 2, 3]);
  assert.ok(!s.warmedUp());
  assert.deepEqual([...s.probs()], [0.25, 0.25, 0.25, 0.25]);
  s.update([3, 3], [4, 4]);
  assert.ok(!s.warmedUp());
  s.update([3], [4]);
  assert.ok(s.warmedUp());
});

test('loss-second-moment: p(t) ∝ √E[L²] over the last H losses, mixed with uniform', () => {
  const T = 5;
  const H = 4;
  const u = 0.01;
  const s = new LossSecondMomentSampler(T, H, u);
  const hist: number[][] = Array.from({ length: T }, () => []);
  let x = 1;
  // More than H losses per t: only the last H count.
  for (let k = 0; k < 7; k++) {
    for (let t = 0; t < T; t++) {
      x = (x * 7919) % 101;
      const loss = (t + 1) * (x / 101);
      s.update([t], [loss]);
      hist[t]?.push(loss);
    }
  }
  const w = hist.map((h) => Math.sqrt(h.slice(-H).reduce((a, l) => a + l * l, 0) / H));
  const sum = w.reduce((a, b) => a + b, 0);
  const p = s.probs();
  w.forEach((wi, t) => assert.ok(Math.abs((p[t] as number) - ((wi / sum) * (1 - u) + u / T)) < 1e-12));
  assert.ok(Math.abs(p.reduce((a, b) => a + b, 0) - 1) < 1e-12);
  // Round trip of the table through its serializable state.
  const r = createSampler('loss-second-moment', T, { historyPerTerm: H, uniformProb: u }, s.state());
  assert.deepEqual([...r.probs()], [...p]);
  assert.throws(
    () => createSampler('uniform', T, { historyPerTerm: H, uniformProb: u }, s.state()),
    /sampler table/,
  );
});

test('NaN losses are not recorded', () => {
  const s = new LossSecondMomentSampler(2, 1);
  s.update([0, 1], [NaN, 1]);
  assert.ok(!s.warmedUp());
});

test('inverse CDF picks the smallest t with F(t) > q', () => {
  const c = cdf(Float64Array.of(0.1, 0.0, 0.6, 0.3));
  assert.equal(inverseCdf(c, 0), 0);
  assert.equal(inverseCdf(c, 0.0999), 0);
  assert.equal(inverseCdf(c, 0.1), 2);
  assert.equal(inverseCdf(c, 0.69), 2);
  assert.equal(inverseCdf(c, 0.7), 3);
  assert.equal(inverseCdf(c, 0.99999), 3);
});

test('stratified draw: example j falls in stratum [j/B, (j+1)/B) of the CDF', () => {
  const T = 50;
  const p = new Float64Array(T).map((_, t) => (t + 1) ** 2);
  const z = p.reduce((a, b) => a + b, 0);
  p.forEach((v, t) => (p[t] = v / z));
  const c = cdf(p);
  const B = 32;
  const { t, weights } = drawTimesteps(p, 1, 7, B, 0, B);
  t.forEach((ti, j) => {
    const lo = ti === 0 ? 0 : (c[ti - 1] as number);
    const hi = c[ti] as number;
    // The stratum [j/B, (j+1)/B) must intersect [F(t−1), F(t)).
    assert.ok(lo < (j + 1) / B && hi > j / B, `j=${j} t=${ti}`);
    assert.ok(Math.abs((weights[j] as number) - 1 / (T * (p[ti] as number))) < 1e-6 * (weights[j] as number));
  });
  // With uniform p and B = T every timestep is drawn exactly once.
  const u = new UniformSampler(T).probs();
  const all = drawTimesteps(u, 3, 0, T, 0, T).t;
  assert.deepEqual(
    [...all].sort((a, b) => a - b),
    Array.from({ length: T }, (_, i) => i),
  );
});

test('a shard of the batch draws exactly its strata of the whole batch', () => {
  const p = new UniformSampler(100).probs();
  const whole = drawTimesteps(p, 9, 4, 24, 0, 24);
  const a = drawTimesteps(p, 9, 4, 24, 0, 10);
  const b = drawTimesteps(p, 9, 4, 24, 10, 24);
  assert.deepEqual([...a.t, ...b.t], [...whole.t]);
  assert.deepEqual([...a.weights, ...b.weights], [...whole.weights]);
});

test('importance-weighted loss is an unbiased estimate of the uniform objective', () => {
  const T = 100;
  const L = Array.from({ length: T }, (_, t) => 0.05 + Math.exp(-t / 10) + 0.3 * Math.sin(t) ** 2);
  const uniformMean = L.reduce((a, b) => a + b, 0) / T;
  // A skewed p that is far from uniform (as after warm-up).
  const p = new Float64Array(T).map((_, t) => 1 / (t + 2));
  const z = p.reduce((a, b) => a + b, 0);
  p.forEach((v, t) => (p[t] = v / z));
  const B = 64;
  let est = 0;
  const steps = 400;
  for (let s = 0; s < steps; s++) {
    const { t, weights } = drawTimesteps(p, 2, s, B, 0, B);
    let batch = 0;
    t.forEach((ti, j) => (batch += (weights[j] as number) * (L[ti] as number)));
    est += batch / B;
  }
  est /= steps;
  assert.ok(Math.abs(est / uniformMean - 1) < 0.01, `estimate ${est} vs ${uniformMean}`);
  // Without the weights the estimate would be biased towards the likely (small-t, large-loss) steps.
  let biased = 0;
  for (let t = 0; t < T; t++) biased += (p[t] as number) * (L[t] as number);
  assert.ok(Math.abs(biased / uniformMean - 1) > 0.2);
});
