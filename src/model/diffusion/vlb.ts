/**
 * The variational bound terms of a learned-variance model (Nichol & Dhariwal 2021): the model's
 * variance interpolates log β_t and log β̃_t in log space, Σ = exp(v log β_t + (1 − v) log β̃_t) with
 * the network's extra output mapped from [−1, 1] to v ∈ [0, 1]; L_t = KL(q(x_{t−1}|x_t, x₀) ‖
 * p(x_{t−1}|x_t)) for t > 0 and the discretised Gaussian decoder NLL of x₀ at t = 0, both in bits per
 * dimension. Training uses L_hybrid = L_simple + λ·T·L_t (the single-sample estimate of λ·L_vlb).
 */
import * as tf from '@tensorflow/tfjs';
import { coef, qPosterior } from './process.js';
import type { Schedule } from './schedule.js';

/** x in the forward pass, no gradient in the backward one (TF.js has no stop-gradient op). */
export const stopGradient = tf.customGrad((...args: (tf.Tensor | tf.GradSaveFunc)[]) => ({
  value: tf.clone(args[0] as tf.Tensor),
  gradFunc: (dy: tf.Tensor | tf.Tensor[]) => tf.zerosLike(dy as tf.Tensor),
})) as (x: tf.Tensor) => tf.Tensor;

/**
 * Per-example L_hybrid = mse(target, ô) + λ·T·L_t for a learned-variance output [B, …, 2C]: the
 * mean part ô (first C channels) is frozen inside L_t, so L_t trains only the variance, as Nichol &
 * Dhariwal 2021 do. `x0Hat(ô)` turns the frozen prediction into x̂₀.
 */
export function hybridLoss(
  s: Schedule,
  out: tf.Tensor,
  target: tf.Tensor,
  x0: tf.Tensor,
  xt: tf.Tensor,
  t: ArrayLike<number>,
  x0Hat: (frozen: tf.Tensor) => tf.Tensor,
  vlbWeight: number,
): tf.Tensor1D {
  return tf.tidy(() => {
    const [mean, vRaw] = tf.split(out, 2, out.rank - 1) as [tf.Tensor, tf.Tensor];
    const axes = Array.from({ length: out.rank - 1 }, (_, i) => i + 1);
    const mse = tf.mean(tf.squaredDifference(target, mean), axes);
    const vb = vbTerms(s, x0, xt, t, x0Hat(stopGradient(mean)), modelLogVariance(s, t, vRaw));
    return tf.add(mse, tf.mul(vb, vlbWeight * s.T)) as tf.Tensor1D;
  });
}

/** log σ² of the model per example: [B, 1, …] coefficients mixed by v̂ ∈ [−1, 1] ([B, …]). */
export function modelLogVariance(s: Schedule, t: ArrayLike<number>, vRaw: tf.Tensor): tf.Tensor {
  return tf.tidy(() => {
    const r = vRaw.rank;
    const minLog = coef(s.posteriorLogVarianceClipped, t, r);
    const maxLog = coef(s.logBetas, t, r);
    const frac = tf.div(tf.add(vRaw, 1), 2);
    return tf.add(tf.mul(frac, maxLog), tf.mul(tf.sub(1, frac), minLog));
  });
}

/** KL(N(μ₁, e^{l₁}) ‖ N(μ₂, e^{l₂})) elementwise, in nats. */
export function normalKl(
  mean1: tf.Tensor,
  logvar1: tf.Tensor,
  mean2: tf.Tensor,
  logvar2: tf.Tensor,
): tf.Tensor {
  return tf.tidy(() =>
    tf.mul(
      0.5,
      tf.add(
        tf.sub(tf.sub(logvar2, logvar1), 1),
        tf.add(
          tf.exp(tf.sub(logvar1, logvar2)),
          tf.mul(tf.squaredDifference(mean1, mean2), tf.exp(tf.neg(logvar2))),
        ),
      ),
    ),
  );
}

/** Φ(x) of the standard normal, by the tanh approximation improved-diffusion uses. */
function approxStandardNormalCdf(x: tf.Tensor): tf.Tensor {
  return tf.mul(
    0.5,
    tf.add(1, tf.tanh(tf.mul(Math.sqrt(2 / Math.PI), tf.add(x, tf.mul(0.044715, tf.pow(x, 3)))))),
  );
}

/**
 * log-likelihood (nats) of x ∈ [−1, 1] quantised to 256 levels under N(mean, e^{logScale·2}),
 * elementwise: the mass of x's bin, with the outer bins reaching to ±∞.
 */
export function discretizedGaussianLogLikelihood(
  x: tf.Tensor,
  mean: tf.Tensor,
  logScale: tf.Tensor,
): tf.Tensor {
  return tf.tidy(() => {
    const centered = tf.sub(x, mean);
    const invStd = tf.exp(tf.neg(logScale));
    const cdfPlus = approxStandardNormalCdf(tf.mul(invStd, tf.add(centered, 1 / 255)));
    const cdfMin = approxStandardNormalCdf(tf.mul(invStd, tf.sub(centered, 1 / 255)));
    const logCdfPlus = tf.log(tf.maximum(cdfPlus, 1e-12));
    const logOneMinusCdfMin = tf.log(tf.maximum(tf.sub(1, cdfMin), 1e-12));
    const logDelta = tf.log(tf.maximum(tf.sub(cdfPlus, cdfMin), 1e-12));
    return tf.where(
      tf.less(x, -0.999),
      logCdfPlus,
      tf.where(tf.greater(x, 0.999), logOneMinusCdfMin, logDelta),
    );
  });
}

/**
 * L_t per example in bits per dimension, [B]: the KL between the true posterior (from x₀) and the
 * model's p(x_{t−1}|x_t) (mean from x̂₀, log-variance `logVar`), or the decoder NLL where t = 0.
 */
export function vbTerms(
  s: Schedule,
  x0: tf.Tensor,
  xt: tf.Tensor,
  t: ArrayLike<number>,
  x0Hat: tf.Tensor,
  logVar: tf.Tensor,
): tf.Tensor1D {
  return tf.tidy(
    () => tf.div(stepTerms(s, x0, xt, t, x0Hat, logVar, 'discretized'), Math.LN2) as tf.Tensor1D,
  );
}

/** How L_0 scores x₀: the 8-bit discretised Gaussian (images) or the Gaussian density (vectors). */
export type DecoderKind = 'discretized' | 'continuous';

/** −ln N(x; mean, e^{logVar}) elementwise, nats. */
export function gaussianNll(x: tf.Tensor, mean: tf.Tensor, logVar: tf.Tensor): tf.Tensor {
  return tf.tidy(() =>
    tf.mul(
      0.5,
      tf.add(
        tf.add(Math.log(2 * Math.PI), logVar),
        tf.mul(tf.squaredDifference(x, mean), tf.exp(tf.neg(logVar))),
      ),
    ),
  );
}

/**
 * Per-example L_t (t ≥ 1) or L_0 (t = 0), nats per dimension, [B]: x₀, x_t, x̂₀ [B, …], logVar
 * [B, 1, …] or [B, …] (reverseLogVariance), t: B timesteps (mixed allowed).
 */
export function stepTerms(
  s: Schedule,
  x0: tf.Tensor,
  xt: tf.Tensor,
  t: ArrayLike<number>,
  x0Hat: tf.Tensor,
  logVar: tf.Tensor,
  decoder: DecoderKind,
): tf.Tensor1D {
  return tf.tidy(() => {
    const axes = Array.from({ length: x0.rank - 1 }, (_, i) => i + 1);
    const truth = qPosterior(s, x0, xt, t);
    const model = qPosterior(s, x0Hat, xt, t);
    const kl = tf.mean(normalKl(truth.mean, truth.logVariance, model.mean, logVar), axes);
    const nll = tf.mean(
      decoder === 'discretized'
        ? tf.neg(discretizedGaussianLogLikelihood(x0, model.mean, tf.mul(0.5, logVar)))
        : gaussianNll(x0, model.mean, logVar),
      axes,
    );
    const first = tf.tensor1d(
      Array.from(t, (ti) => ti === 0),
      'bool',
    );
    return tf.where(first, nll, kl) as tf.Tensor1D;
  });
}
