/**
 * Gaussian diffusion maths on tensors: forward noising, the posterior, the ε-prediction loss,
 * and the DDPM / DDIM samplers. Per-example timesteps are host integers; the schedule's float64
 * constants are gathered on the host and sent as one small [B, 1, …] tensor per coefficient.
 */
import * as tf from '@tensorflow/tfjs';
import type { Schedule } from './schedule.js';
import { Purpose, stream } from './rng.js';

/** Coefficients arr[t_i] as a float32 tensor of shape [B, 1, …, 1] with `rank` dims. */
export function coef(arr: Float64Array, t: ArrayLike<number>, rank: number): tf.Tensor {
  const v = new Float32Array(t.length);
  for (let i = 0; i < t.length; i++) {
    const ti = t[i] as number;
    const c = arr[ti];
    if (c === undefined) throw new Error(`timestep ${ti} out of range 0…${arr.length - 1}`);
    v[i] = c;
  }
  const shape = [t.length, ...new Array<number>(rank - 1).fill(1)];
  return tf.tensor(v, shape, 'float32');
}

/** x_t = √ᾱ_t x₀ + √(1−ᾱ_t) ε. x0, noise: [B, …]; t: B timesteps. */
export function qSample(s: Schedule, x0: tf.Tensor, t: ArrayLike<number>, noise: tf.Tensor): tf.Tensor {
  return tf.tidy(() =>
    tf.add(
      tf.mul(coef(s.sqrtAlphasCumprod, t, x0.rank), x0),
      tf.mul(coef(s.sqrtOneMinusAlphasCumprod, t, x0.rank), noise),
    ),
  );
}

/** Mean and variance of q(x_{t−1} | x_t, x₀). Shapes: mean [B, …], variance/logVariance [B, 1, …]. */
export function qPosterior(
  s: Schedule,
  x0: tf.Tensor,
  xt: tf.Tensor,
  t: ArrayLike<number>,
): { mean: tf.Tensor; variance: tf.Tensor; logVariance: tf.Tensor } {
  return tf.tidy(() => {
    const r = x0.rank;
    const mean = tf.add(
      tf.mul(coef(s.posteriorMeanCoef1, t, r), x0),
      tf.mul(coef(s.posteriorMeanCoef2, t, r), xt),
    );
    return {
      mean,
      variance: coef(s.posteriorVariance, t, r),
      logVariance: coef(s.posteriorLogVarianceClipped, t, r),
    };
  });
}

/** x̂₀ = √(1/ᾱ_t) x_t − √(1/ᾱ_t − 1) ε̂. */
export function predictX0(s: Schedule, xt: tf.Tensor, t: ArrayLike<number>, eps: tf.Tensor): tf.Tensor {
  return tf.tidy(() =>
    tf.sub(
      tf.mul(coef(s.sqrtRecipAlphasCumprod, t, xt.rank), xt),
      tf.mul(coef(s.sqrtRecipm1AlphasCumprod, t, xt.rank), eps),
    ),
  );
}

/** ε implied by x_t and a (possibly clipped) x̂₀: inverse of predictX0. */
export function epsFromX0(s: Schedule, xt: tf.Tensor, t: ArrayLike<number>, x0: tf.Tensor): tf.Tensor {
  return tf.tidy(() =>
    tf.div(
      tf.sub(tf.mul(coef(s.sqrtRecipAlphasCumprod, t, xt.rank), xt), x0),
      coef(s.sqrtRecipm1AlphasCumprod, t, xt.rank),
    ),
  );
}

/** Per-example loss mean((ε − ε̂)²) over all non-batch axes: [B, …] × [B, …] → [B]. */
export function perExampleMse(eps: tf.Tensor, epsHat: tf.Tensor): tf.Tensor1D {
  return tf.tidy(() => {
    const axes = Array.from({ length: eps.rank - 1 }, (_, i) => i + 1);
    return tf.mean(tf.squaredDifference(eps, epsHat), axes) as tf.Tensor1D;
  });
}

/** Standard normals for examples [offset, offset+n) of one draw, each from its own counter stream. */
export function noiseFor(
  seed: number,
  step: number,
  offset: number,
  n: number,
  exampleSize: number,
  purpose: Purpose,
): Float32Array {
  const out = new Float32Array(n * exampleSize);
  for (let i = 0; i < n; i++) {
    stream(seed, step, offset + i, purpose).normals(out.subarray(i * exampleSize, (i + 1) * exampleSize));
  }
  return out;
}

/** ε̂(x, t) for a batch where every example is at the same timestep t. Returns [B, …]. */
export type EpsFn = (x: tf.Tensor, t: number) => tf.Tensor;

/**
 * Classifier-free guidance: ε = (1 + w)·ε(x | y) − w·ε(x | ∅), one model call on the doubled batch.
 * `cond(x, t, y)` evaluates the model with labels y ([B] int32, null class = nullClass).
 */
export function guidedEps(
  cond: (x: tf.Tensor, t: number, y: tf.Tensor1D) => tf.Tensor,
  labels: Int32Array,
  nullClass: number,
  w: number,
): EpsFn {
  return (x, t) =>
    tf.tidy(() => {
      const B = labels.length;
      if (w === 0) return cond(x, t, tf.tensor1d(labels, 'int32'));
      const y = new Int32Array(2 * B);
      y.set(labels);
      y.fill(nullClass, B);
      const both = cond(tf.concat([x, x], 0), t, tf.tensor1d(y, 'int32'));
      const [c, u] = tf.split(both, 2, 0) as [tf.Tensor, tf.Tensor];
      return tf.sub(tf.mul(1 + w, c), tf.mul(w, u));
    });
}

export interface SampleOptions {
  seed: number;
  /** Index of the first example of this batch in the whole sample set (keys its noise streams). */
  indexOffset?: number;
  /** Clip x̂₀ to [-1, 1] (images). */
  clip?: boolean;
  /** Called after each denoising step with (done, total). */
  onStep?: (done: number, total: number) => void;
}

function initialNoise(shape: number[], opts: SampleOptions): tf.Tensor {
  const [n, ...rest] = shape;
  const size = rest.reduce((a, b) => a * b, 1);
  return tf.tensor(noiseFor(opts.seed, 0, opts.indexOffset ?? 0, n ?? 0, size, Purpose.sampleNoise), shape);
}

function stepNoise(x: tf.Tensor, k: number, opts: SampleOptions): tf.Tensor {
  const [n, ...rest] = x.shape;
  const size = rest.reduce((a, b) => a * b, 1);
  return tf.tensor(
    noiseFor(opts.seed, 1 + k, opts.indexOffset ?? 0, n ?? 0, size, Purpose.sampleNoise),
    x.shape,
  );
}

/**
 * DDPM ancestral sampling (Ho et al. 2020, Algorithm 2): x_T ~ N(0, I); for t = T−1…0,
 * x_{t−1} = μ̃(x̂₀(x_t, ε̂), x_t) + σ_t z, z = 0 at the last step. Without clipping μ̃ equals
 * (x_t − β_t/√(1−ᾱ_t) ε̂)/√α_t exactly; with clipping x̂₀ is clipped first. σ_t² = β_t or β̃_t.
 */
export function ddpmSample(
  s: Schedule,
  eps: EpsFn,
  shape: number[],
  opts: SampleOptions & { sigma: 'beta' | 'posterior' },
): tf.Tensor {
  let x = initialNoise(shape, opts);
  const B = shape[0] ?? 0;
  for (let t = s.T - 1; t >= 0; t--) {
    const next = tf.tidy(() => {
      const ts = new Array<number>(B).fill(t);
      let x0 = predictX0(s, x, ts, eps(x, t));
      if (opts.clip) x0 = tf.clipByValue(x0, -1, 1);
      const { mean } = qPosterior(s, x0, x, ts);
      if (t === 0) return mean;
      const variance = opts.sigma === 'beta' ? (s.betas[t] as number) : (s.posteriorVariance[t] as number);
      return tf.add(mean, tf.mul(Math.sqrt(variance), stepNoise(x, s.T - 1 - t, opts)));
    });
    x.dispose();
    x = next;
    opts.onStep?.(s.T - t, s.T);
  }
  return x;
}

/** K timesteps spread evenly over 0…T−1, descending, always including T−1 and 0. */
export function stridedTimesteps(T: number, K: number): number[] {
  if (!Number.isInteger(K) || K < 1 || K > T)
    throw new Error(`sampling steps must be an integer in 1…${T}, got ${K}`);
  if (K === 1) return [T - 1];
  const set = new Set<number>();
  for (let i = 0; i < K; i++) set.add(Math.round((i * (T - 1)) / (K - 1)));
  return [...set].sort((a, b) => b - a);
}

/**
 * DDIM sampling (Song et al. 2021, eq. 12) over a strided subset of timesteps:
 * x_prev = √ᾱ_prev x̂₀ + √(1 − ᾱ_prev − σ²) ε̂ + σ z, σ = η √((1−ᾱ_prev)/(1−ᾱ_t)) √(1 − ᾱ_t/ᾱ_prev).
 */
export function ddimSample(
  s: Schedule,
  eps: EpsFn,
  shape: number[],
  opts: SampleOptions & { steps: number; eta: number },
): tf.Tensor {
  const seq = stridedTimesteps(s.T, opts.steps);
  let x = initialNoise(shape, opts);
  const B = shape[0] ?? 0;
  seq.forEach((t, k) => {
    const prev = seq[k + 1];
    const next = tf.tidy(() => {
      const ts = new Array<number>(B).fill(t);
      let e = eps(x, t);
      let x0 = predictX0(s, x, ts, e);
      if (opts.clip) {
        x0 = tf.clipByValue(x0, -1, 1);
        e = epsFromX0(s, x, ts, x0);
      }
      const a = s.alphasCumprod[t] as number;
      const ap = prev === undefined ? 1 : (s.alphasCumprod[prev] as number);
      const sigma = opts.eta * Math.sqrt((1 - ap) / (1 - a)) * Math.sqrt(1 - a / ap);
      const dir = Math.sqrt(Math.max(1 - ap - sigma * sigma, 0));
      let out = tf.add(tf.mul(Math.sqrt(ap), x0), tf.mul(dir, e));
      if (sigma > 0 && prev !== undefined) out = tf.add(out, tf.mul(sigma, stepNoise(x, k, opts)));
      return out;
    });
    x.dispose();
    x = next;
    opts.onStep?.(k + 1, seq.length);
  });
  return x;
}
