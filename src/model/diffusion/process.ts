/**
 * The Gaussian forward process q(x_t | x_0) and its posterior q(x_{t−1} | x_t, x_0) on tensors
 * (Ho et al. 2020, eqs. 4, 6, 7), and the conversions between x̂₀ and ε̂. Per-example timesteps are
 * host integers; the schedule's float64 constants are gathered on the host and sent as one small
 * [B, 1, …] tensor per coefficient.
 */
import * as tf from '@tensorflow/tfjs';
import type { Schedule } from './schedule.js';

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

/**
 * ε implied by x_t and a (possibly clipped) x̂₀: (x_t − √ᾱ x̂₀)/√(1−ᾱ), the inverse of predictX0,
 * written so that it stays finite at ᾱ = 0 (zero terminal SNR).
 */
export function epsFromX0(s: Schedule, xt: tf.Tensor, t: ArrayLike<number>, x0: tf.Tensor): tf.Tensor {
  return tf.tidy(() =>
    tf.div(
      tf.sub(xt, tf.mul(coef(s.sqrtAlphasCumprod, t, xt.rank), x0)),
      coef(s.sqrtOneMinusAlphasCumprod, t, xt.rank),
    ),
  );
}
