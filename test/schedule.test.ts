import { test } from 'node:test';
import assert from 'node:assert/strict';
import { betaSchedule, makeSchedule, scheduleFor } from '../src/model/diffusion/schedule.js';

test('linear schedule, T = 1000: end points and ᾱ_T against the closed form', () => {
  const s = scheduleFor('linear', 1000);
  assert.equal(s.betas[0], 1e-4);
  assert.ok(Math.abs((s.betas[999] as number) - 0.02) < 1e-15);
  // ᾱ_T = Π(1 − β_i); known value ≈ 4.04e-5 for Ho et al.'s schedule.
  let prod = 1;
  for (let i = 0; i < 1000; i++) prod *= 1 - (1e-4 + ((0.02 - 1e-4) * i) / 999);
  assert.ok(Math.abs((s.alphasCumprod[999] as number) - prod) < 1e-15);
  assert.ok(Math.abs((s.alphasCumprod[999] as number) - 4.04e-5) < 0.01e-5, `ᾱ_T = ${s.alphasCumprod[999]}`);
});

test('linear schedule scales by 1000/T for other T', () => {
  const b = betaSchedule('linear', 250);
  assert.ok(Math.abs((b[0] as number) - 4e-4) < 1e-15);
  assert.ok(Math.abs((b[249] as number) - 0.08) < 1e-15);
});

test('cosine schedule: ᾱ follows cos² closely, β clipped at 0.999, monotone', () => {
  const T = 1000;
  const s = scheduleFor('cosine', T);
  const f = (t: number) => Math.cos(((t / T + 0.008) / 1.008) * (Math.PI / 2)) ** 2;
  for (const t of [0, 10, 100, 500, 900]) {
    const expect = f(t + 1) / f(0);
    assert.ok(Math.abs((s.alphasCumprod[t] as number) - expect) < 1e-12, `t=${t}`);
  }
  assert.equal(Math.max(...s.betas), 0.999);
  for (let t = 1; t < T; t++) assert.ok((s.alphasCumprod[t] as number) < (s.alphasCumprod[t - 1] as number));
  // β starts tiny: the cosine schedule destroys information slowly at first.
  assert.ok((s.betas[0] as number) < 1e-4);
});

test('sigmoid schedule is a valid, monotone schedule that ends near pure noise', () => {
  const s = scheduleFor('sigmoid', 1000);
  for (let t = 0; t < 1000; t++) {
    const b = s.betas[t] as number;
    assert.ok(b > 0 && b <= 0.999);
  }
  assert.ok((s.alphasCumprod[999] as number) < 1e-3);
  assert.ok((s.alphasCumprod[0] as number) > 0.99);
});

test('posterior coefficients equal their direct formulas', () => {
  const s = scheduleFor('linear', 100);
  for (const t of [1, 2, 50, 99]) {
    const b = s.betas[t] as number;
    const a = 1 - b;
    let ab = 1;
    for (let i = 0; i <= t; i++) ab *= 1 - (s.betas[i] as number);
    const abPrev = ab / a;
    assert.ok(Math.abs((s.posteriorVariance[t] as number) - (b * (1 - abPrev)) / (1 - ab)) < 1e-14);
    assert.ok(Math.abs((s.posteriorMeanCoef1[t] as number) - (b * Math.sqrt(abPrev)) / (1 - ab)) < 1e-14);
    assert.ok(
      Math.abs((s.posteriorMeanCoef2[t] as number) - ((1 - abPrev) * Math.sqrt(a)) / (1 - ab)) < 1e-14,
    );
  }
  assert.equal(s.posteriorVariance[0], 0);
  assert.equal(s.posteriorLogVarianceClipped[0], Math.log(s.posteriorVariance[1] as number));
});

test('invalid schedules are rejected', () => {
  assert.throws(() => betaSchedule('linear', 1), /timesteps/);
  assert.throws(() => betaSchedule('linear', 20), /diffusion\.timesteps: the linear schedule needs T > 20/);
  assert.throws(() => makeSchedule(Float64Array.of(0.5, 1.5)), /outside/);
});
