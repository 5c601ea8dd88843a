/**
 * What the network predicts — ε (Ho et al. 2020), x₀, or v = √ᾱ ε − √(1−ᾱ) x₀ (Salimans & Ho
 * 2022) — and the conversions between them. Training regresses the target of the configured kind;
 * samplers turn the raw output into (ε̂, x̂₀) here, so no sampler depends on the kind. Stored in
 * checkpoints by name: a kind never changes meaning once committed (docs/design.md §8).
 */
import * as tf from '@tensorflow/tfjs';
import { coef } from './process.js';
import type { Schedule } from './schedule.js';

/** The prediction target of `diffusion.prediction`. */
export type Prediction = 'eps' | 'x0' | 'v';

/** The regression target for x₀ and noise ε at timesteps t: [B, …]. */
export function targetFor(
  pred: Prediction,
  s: Schedule,
  x0: tf.Tensor,
  noise: tf.Tensor,
  t: ArrayLike<number>,
): tf.Tensor {
  if (pred === 'eps') return noise;
  if (pred === 'x0') return x0;
  return tf.tidy(() =>
    tf.sub(
      tf.mul(coef(s.sqrtAlphasCumprod, t, x0.rank), noise),
      tf.mul(coef(s.sqrtOneMinusAlphasCumprod, t, x0.rank), x0),
    ),
  );
}

/**
 * (ε̂, x̂₀) from the network's output at x_t. Each is computed from the output directly where that
 * is well defined, so x̂₀ stays finite at ᾱ = 0 (zero terminal SNR) for x₀ and v predictions.
 */
export function denoised(
  pred: Prediction,
  s: Schedule,
  xt: tf.Tensor,
  t: ArrayLike<number>,
  out: tf.Tensor,
): { eps: tf.Tensor; x0: tf.Tensor } {
  return tf.tidy(() => {
    const r = xt.rank;
    const sa = coef(s.sqrtAlphasCumprod, t, r);
    const so = coef(s.sqrtOneMinusAlphasCumprod, t, r);
    if (pred === 'eps') {
      // x̂₀ = (x_t − √(1−ᾱ) ε̂)/√ᾱ, as √(1/ᾱ) x_t − √(1/ᾱ − 1) ε̂.
      const x0 = tf.sub(
        tf.mul(coef(s.sqrtRecipAlphasCumprod, t, r), xt),
        tf.mul(coef(s.sqrtRecipm1AlphasCumprod, t, r), out),
      );
      return { eps: tf.clone(out), x0 };
    }
    if (pred === 'x0') return { eps: tf.div(tf.sub(xt, tf.mul(sa, out)), so), x0: tf.clone(out) };
    // v: ε̂ = √(1−ᾱ) x_t + √ᾱ v̂, x̂₀ = √ᾱ x_t − √(1−ᾱ) v̂.
    return {
      eps: tf.add(tf.mul(so, xt), tf.mul(sa, out)),
      x0: tf.sub(tf.mul(sa, xt), tf.mul(so, out)),
    };
  });
}
