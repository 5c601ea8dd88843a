/**
 * Probability-flow ODE solvers (Song et al. 2021b, eq. 13) in σ terms (Karras et al. 2022, eq. 4
 * with s(t) = 1, σ(t) = t): dx/dσ = (x − D(x; σ))/σ, from x ~ N(0, priorStd²) at σ_max to σ = 0.
 * Euler (first order; on the uniform grid of a discrete model it is DDIM with η = 0), Heun (second
 * order, Euler on the last step to σ = 0 where d is undefined), and an adaptive Dormand–Prince 5(4)
 * pair in log σ with per-sample step control, so that a sample does not depend on its batch.
 */
import * as tf from '@tensorflow/tfjs';
import { levels, priorSample, walkGrid, type Sampler, type SigmaModel } from './sampler.js';
import type { SampleOptions } from './noise.js';

/** One Euler step σ → σn: x + (σn − σ)(x − D)/σ, written D + (σn/σ)(x − D) so that σn = 0 gives D exactly. */
export function eulerStep(x: tf.Tensor, d0: tf.Tensor, sigma: number, sigmaNext: number): tf.Tensor {
  return tf.add(d0, tf.mul(sigmaNext / sigma, tf.sub(x, d0)));
}

/**
 * One Heun step σ → σn from x whose denoised value at σ is d0 (Karras et al. 2022, Algorithm 1,
 * lines 5-8): the Euler prediction, corrected by the slope at σn unless σn = 0. One evaluation,
 * none when σn = 0.
 */
export function heunStep(
  model: SigmaModel,
  x: tf.Tensor,
  d0: tf.Tensor,
  sigma: number,
  sigmaNext: number,
): tf.Tensor {
  const xe = eulerStep(x, d0, sigma, sigmaNext);
  if (sigmaNext === 0) return xe;
  const d1 = model.denoise(xe, levels(x.shape[0] ?? 0, sigmaNext));
  const slope = tf.add(tf.div(tf.sub(x, d0), sigma), tf.div(tf.sub(xe, d1), sigmaNext));
  return tf.add(x, tf.mul((sigmaNext - sigma) / 2, slope));
}

/** `ode-euler`: N Euler steps in σ, N evaluations. */
export const odeEulerSampler: Sampler = {
  name: 'ode-euler',
  title: 'probability-flow ODE, Euler in σ (= DDIM η = 0 on the same grid)',
  stochastic: false,
  defaultDiscretization: 'uniform',
  uses: ['steps', 'discretization', 'rho'],
  nfe: (st) => st.steps,
  run(model, shape, o) {
    const B = shape[0] ?? 0;
    const { x, steps } = walkGrid(model, shape, o, 'uniform', (x, s, sn) =>
      eulerStep(x, model.denoise(x, levels(B, s)), s, sn),
    );
    return { x, nfe: steps };
  },
};

/** `ode-heun`: N Heun steps in σ, 2N − 1 evaluations. */
export const odeHeunSampler: Sampler = {
  name: 'ode-heun',
  title: "probability-flow ODE, Heun's second-order method in σ",
  stochastic: false,
  defaultDiscretization: 'uniform',
  uses: ['steps', 'discretization', 'rho'],
  nfe: (st) => 2 * st.steps - 1,
  run(model, shape, o) {
    const B = shape[0] ?? 0;
    const { x, steps } = walkGrid(model, shape, o, 'uniform', (x, s, sn) =>
      heunStep(model, x, model.denoise(x, levels(B, s)), s, sn),
    );
    return { x, nfe: 2 * steps - 1 };
  },
};

// Dormand & Prince 1980, RK5(4)7M: nodes c, stages a, 5th-order weights b (= the last stage's row,
// so the last slope is the next step's first: FSAL), and b − b* (the embedded 4th order) for the error.
const C = [0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1, 1];
const A: number[][] = [
  [],
  [1 / 5],
  [3 / 40, 9 / 40],
  [44 / 45, -56 / 15, 32 / 9],
  [19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729],
  [9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656],
  [35 / 384, 0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84],
];
const E = [71 / 57600, 0, -71 / 16695, 71 / 1920, -17253 / 339200, 22 / 525, -1 / 40];

/** Hairer's error norm of one sample: RMS of err_i/(tol + tol·max(|x_i|, |x5_i|)). */
export function errorNorm(
  err: ArrayLike<number>,
  x: ArrayLike<number>,
  x5: ArrayLike<number>,
  tol: number,
): number {
  let sum = 0;
  for (let i = 0; i < err.length; i++) {
    const sc = tol + tol * Math.max(Math.abs(x[i] as number), Math.abs(x5[i] as number));
    sum += ((err[i] as number) / sc) ** 2;
  }
  return Math.sqrt(sum / Math.max(err.length, 1));
}

/** The step-size factor after an error norm e (order 5: e^{−1/5}, safety 0.9, within [0.2, 5]; ≤ 1 after a rejection). */
export function stepFactor(e: number, accepted: boolean): number {
  const f = e === 0 ? 5 : Math.min(5, Math.max(0.2, 0.9 * e ** -0.2));
  return accepted ? f : Math.min(f, 1);
}

/**
 * Adaptive RK45 on dx/ds = x − D(x; e^s), s = log σ from log σ_max to log σ_min, then x̂₀ = D(x; σ_min).
 * Each sample has its own s, step and error norm; a model call holds the samples still running.
 */
export function rk45Sample(
  model: SigmaModel,
  shape: number[],
  o: SampleOptions & { tolerance: number },
): { x: tf.Tensor; nfe: number } {
  const tol = o.tolerance;
  if (!(tol > 0 && tol < 1)) throw new Error(`sample.tolerance must be in (0, 1), got ${tol}`);
  const [B = 0, ...rest] = shape;
  const size = rest.reduce((a, b) => a * b, 1);
  const s0 = Math.log(model.sigmaMax);
  const s1 = Math.log(model.sigmaMin);
  const x0 = priorSample(model, shape, o);
  const x = Float64Array.from(x0.dataSync());
  x0.dispose();
  /** Slopes x − D(x; e^s) at inputs `xin` (s.length rows of `size`), per-row log σ `s`, of samples `rows` (all when absent). */
  const slope = (xin: Float64Array, s: Float64Array, rows?: readonly number[]): Float64Array => {
    const n = s.length;
    const k = tf.tidy(() => {
      const xt = tf.tensor(Float32Array.from(xin), [n, ...rest]);
      return tf.sub(xt, model.denoise(xt, s.map(Math.exp), rows));
    });
    const out = Float64Array.from(k.dataSync());
    k.dispose();
    return out;
  };
  const nfe = new Float64Array(B).fill(1);
  const first = slope(x, new Float64Array(B).fill(s0));
  const k1 = first; // FSAL: the slope at each sample's current point.
  const s = new Float64Array(B).fill(s0);
  const h = new Float64Array(B).fill((s1 - s0) / 20);
  const done = new Uint8Array(B);
  // The current step ends exactly at log σ_min (s + h would not be exact in floating point).
  const lands = new Uint8Array(B);
  let lastProgress = 0;
  for (let iter = 0; ; iter++) {
    const active: number[] = [];
    for (let j = 0; j < B; j++) if (!done[j]) active.push(j);
    if (active.length === 0) break;
    if (iter > 100000) throw new Error(`ode-rk45: no convergence at sample.tolerance ${tol}`);
    const n = active.length;
    const ks: Float64Array[] = [new Float64Array(n * size)];
    active.forEach((j, r) => (ks[0] as Float64Array).set(k1.subarray(j * size, (j + 1) * size), r * size));
    const stageInput = (row: readonly number[]): Float64Array => {
      const xin = new Float64Array(n * size);
      active.forEach((j, r) => {
        const hj = h[j] as number;
        for (let i = 0; i < size; i++) {
          let acc = x[j * size + i] as number;
          row.forEach((a, m) => {
            if (a !== 0) acc += hj * a * ((ks[m] as Float64Array)[r * size + i] as number);
          });
          xin[r * size + i] = acc;
        }
      });
      return xin;
    };
    let x5: Float64Array = new Float64Array(0);
    for (let st = 1; st < 7; st++) {
      const xin = stageInput(A[st] as number[]);
      if (st === 6) x5 = xin;
      const sv = Float64Array.from(active, (j) => (s[j] as number) + (C[st] as number) * (h[j] as number));
      ks.push(slope(xin, sv, active));
    }
    active.forEach((j, r) => {
      nfe[j] = (nfe[j] as number) + 6;
      const hj = h[j] as number;
      const err = new Float64Array(size);
      for (let i = 0; i < size; i++) {
        let e = 0;
        E.forEach((c, m) => {
          if (c !== 0) e += c * ((ks[m] as Float64Array)[r * size + i] as number);
        });
        err[i] = hj * e;
      }
      const xr = x.subarray(j * size, (j + 1) * size);
      const x5r = x5.subarray(r * size, (r + 1) * size);
      const en = errorNorm(err, xr, x5r, tol);
      const ok = en <= 1;
      if (ok) {
        xr.set(x5r);
        k1.set((ks[6] as Float64Array).subarray(r * size, (r + 1) * size), j * size);
        s[j] = lands[j] ? s1 : (s[j] as number) + hj;
        if (lands[j]) done[j] = 1;
      }
      let hn = hj * stepFactor(en, ok);
      // Land on log σ_min instead of stepping past it.
      lands[j] = (s[j] as number) + hn <= s1 ? 1 : 0;
      if (lands[j]) hn = s1 - (s[j] as number);
      h[j] = hn;
    });
    let slowest = 1;
    for (let j = 0; j < B; j++) slowest = Math.min(slowest, (s0 - (s[j] as number)) / (s0 - s1));
    const progress = Math.floor(100 * slowest);
    if (progress > lastProgress) {
      lastProgress = progress;
      o.onStep?.(progress, 100);
    }
  }
  const out = tf.tidy(() => model.denoise(tf.tensor(Float32Array.from(x), shape), levels(B, model.sigmaMin)));
  let total = 0;
  for (let j = 0; j < B; j++) total += (nfe[j] as number) + 1;
  return { x: out, nfe: B === 0 ? 0 : total / B };
}

/** `ode-rk45`: adaptive, `tolerance` = rtol = atol; NFE is the mean over samples. */
export const odeRk45Sampler: Sampler = {
  name: 'ode-rk45',
  title: 'probability-flow ODE, adaptive Dormand–Prince RK45 in log σ (rtol = atol = tolerance)',
  stochastic: false,
  defaultDiscretization: null,
  uses: ['tolerance'],
  nfe: () => null,
  run: (model, shape, o) => rk45Sample(model, shape, { ...o, tolerance: o.settings.tolerance }),
};
