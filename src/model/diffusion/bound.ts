/**
 * The terms of the variational bound on −ln p(x₀) (Ho et al. 2020, eq. 5; Nichol & Dhariwal 2021,
 * §2), per example, in nats per dimension:
 *   L_T = KL(q(x_{T−1}|x₀) ‖ N(0, I))                         the prior term (no network),
 *   L_t = KL(q(x_{t−1}|x_t, x₀) ‖ p_θ(x_{t−1}|x_t)), t ≥ 1     one per step,
 *   L_0 = −ln p_θ(x₀|x_0-latent)                                the decoder,
 * with indices 0…T−1 as in the schedule (the paper's t = 1…T). The decoder is the discretised
 * Gaussian of 8-bit images in [−1, 1] (a probability, so the bound is an NLL in bits per
 * dimension comparable with the literature) or, for continuous data, the Gaussian density (a
 * differential NLL, which can be negative). p_θ's variance is fixed (β_t or β̃_t), learned (the
 * network's extra channels, vlb.ts) or, for the analytic model, optimal: Var(x_{t−1}|x_t) =
 * β̃_t + c1_t² Var(x₀|x_t), the true reverse kernel's variance when the data is Gaussian.
 */
import * as tf from '@tensorflow/tfjs';
import { coef } from './process.js';
import type { Schedule } from './schedule.js';
import { modelLogVariance, normalKl } from './vlb.js';

// The per-step terms are shared with training's L_vlb and live beside it.
export { gaussianNll, stepTerms, type DecoderKind } from './vlb.js';

/** The reverse-process variance σ_t² the bound is evaluated with. */
export type ReverseVariance = 'beta' | 'posterior' | 'learned' | 'optimal';
export const REVERSE_VARIANCES: readonly ReverseVariance[] = ['beta', 'posterior', 'learned', 'optimal'];

/**
 * ln σ_t² of a fixed variance, length T: ln β_t or ln β̃_t, both with β̃_1 at t = 0 (β̃_0 = 0 is no
 * variance; this is improved-diffusion's choice for both, so the numbers compare).
 */
export function fixedLogVariances(s: Schedule, kind: 'beta' | 'posterior'): Float64Array {
  if (kind === 'posterior') return s.posteriorLogVarianceClipped;
  const out = Float64Array.from(s.logBetas);
  if (s.T > 1) out[0] = Math.log(s.posteriorVariance[1] as number);
  return out;
}

/**
 * ln σ² of p_θ(x_{t−1}|x_t): [B, 1, …] for fixed variances, [B, …] for learned (`vRaw`: the
 * network's variance channels, [B, …]) and optimal (`x0Var`: Var(x₀|x_t), [B, …]).
 */
export function reverseLogVariance(
  s: Schedule,
  kind: ReverseVariance,
  t: ArrayLike<number>,
  rank: number,
  extra: { vRaw?: tf.Tensor; x0Var?: tf.Tensor } = {},
): tf.Tensor {
  return tf.tidy(() => {
    if (kind === 'beta' || kind === 'posterior') return coef(fixedLogVariances(s, kind), t, rank);
    if (kind === 'learned') {
      if (!extra.vRaw) throw new Error('variance learned: the model has no variance output');
      return modelLogVariance(s, t, extra.vRaw);
    }
    if (!extra.x0Var) throw new Error('variance optimal: needs Var(x₀|x_t) (the analytic model only)');
    const c1 = coef(s.posteriorMeanCoef1, t, rank);
    // Unclipped β̃_t: at t = 0 it is 0 and the decoder variance is Var(x₀|x_0-latent) itself.
    return tf.log(tf.add(coef(s.posteriorVariance, t, rank), tf.mul(tf.square(c1), extra.x0Var)));
  });
}

/** L_T per example, nats per dimension: x₀ [B, …] → [B]. */
export function priorTerm(s: Schedule, x0: tf.Tensor): tf.Tensor1D {
  return tf.tidy(() => {
    const last = new Array<number>(x0.shape[0] ?? 0).fill(s.T - 1);
    const r = x0.rank;
    const mean = tf.mul(coef(s.sqrtAlphasCumprod, last, r), x0);
    const logVar = coef(
      s.alphasCumprod.map((a) => Math.log1p(-a)),
      last,
      r,
    );
    const kl = normalKl(mean, logVar, tf.zerosLike(mean), tf.zerosLike(logVar));
    return tf.mean(kl, axesAfterBatch(r)) as tf.Tensor1D;
  });
}

/** Axes 1…rank−1: every axis of an example. */
function axesAfterBatch(rank: number): number[] {
  return Array.from({ length: rank - 1 }, (_, i) => i + 1);
}
