/**
 * The denoiser as samplers call it: the network's raw output at one timestep (ε, x₀ or v, see
 * src/model/diffusion/prediction.ts), classifier-free guidance around it, and the (ε̂, x̂₀) pair
 * every sampler works with.
 */
import * as tf from '@tensorflow/tfjs';
import { denoised, type Prediction } from '../diffusion/prediction.js';
import type { Schedule } from '../diffusion/schedule.js';
import { modelLogVariance } from '../diffusion/vlb.js';

/** The network's output at x for a batch where every example is at timestep t: [B, …]. */
export type ModelFn = (x: tf.Tensor, t: number) => tf.Tensor;

/**
 * ε̂ and x̂₀ at x for a batch where every example is at timestep t, each [B, …]; with a learned
 * variance also the model's log σ² of p(x_{t−1} | x_t).
 */
export type DenoiseFn = (x: tf.Tensor, t: number) => { eps: tf.Tensor; x0: tf.Tensor; logVar?: tf.Tensor };

/** The (ε̂, x̂₀[, log σ²]) of a network that predicts `pred` (and its variance, with `learnSigma`). */
export function denoiserFor(pred: Prediction, s: Schedule, f: ModelFn, learnSigma = false): DenoiseFn {
  return (x, t) =>
    tf.tidy(() => {
      const ts = new Array<number>(x.shape[0] ?? 0).fill(t);
      const out = f(x, t);
      if (!learnSigma) return denoised(pred, s, x, ts, out);
      const [o, v] = tf.split(out, 2, out.rank - 1) as [tf.Tensor, tf.Tensor];
      return { ...denoised(pred, s, x, ts, o), logVar: modelLogVariance(s, ts, v) };
    });
}

/**
 * Classifier-free guidance: o = (1 + w)·o(x | y) − w·o(x | ∅) on the raw output o, one model call
 * on the doubled batch. The same as guiding ε for every prediction target: the conversion to ε is
 * affine in o with coefficients that do not depend on the label. `cond(x, t, y)` evaluates the
 * model with labels y ([B] int32, null class = nullClass).
 */
export function guidedOutput(
  cond: (x: tf.Tensor, t: number, y: tf.Tensor1D) => tf.Tensor,
  labels: Int32Array,
  nullClass: number,
  w: number,
  /** The output ends with a learned variance's channels: guide the prediction only, keep v̂ of the conditional half. */
  learnSigma = false,
): ModelFn {
  // guidedOutputAt with every example at t (its per-example timesteps then go unused).
  return (x, t) =>
    guidedOutputAt(
      (x2, _t, y) => cond(x2, t, y),
      labels,
      nullClass,
      w,
      learnSigma,
    )(x, new Float32Array(labels.length).fill(t));
}

/** The network's output at x for per-example (fractional) timesteps t (B values): [B, …]. */
export type ModelAtFn = (x: tf.Tensor, t: Float32Array, rows?: ArrayLike<number>) => tf.Tensor;

/**
 * `guidedOutput` for per-example timesteps, as σ-space samplers call the network: the doubled
 * batch carries each example's timestep twice. `cond(x, t, y)` takes t as a [B] float32 tensor.
 */
export function guidedOutputAt(
  cond: (x: tf.Tensor, t: tf.Tensor1D, y: tf.Tensor1D) => tf.Tensor,
  labels: Int32Array,
  nullClass: number,
  w: number,
  learnSigma = false,
): ModelAtFn {
  return (x, t, rows) =>
    tf.tidy(() => {
      const lab = rows ? Int32Array.from(rows, (r) => labels[r] as number) : labels;
      const B = lab.length;
      if (w === 0) return cond(x, tf.tensor1d(t, 'float32'), tf.tensor1d(lab, 'int32'));
      const y = new Int32Array(2 * B);
      y.set(lab);
      y.fill(nullClass, B);
      const tt = new Float32Array(2 * B);
      tt.set(t);
      tt.set(t, B);
      const both = cond(tf.concat([x, x], 0), tf.tensor1d(tt, 'float32'), tf.tensor1d(y, 'int32'));
      const [c, u] = tf.split(both, 2, 0) as [tf.Tensor, tf.Tensor];
      if (!learnSigma) return tf.sub(tf.mul(1 + w, c), tf.mul(w, u));
      // σ-space samplers drop the variance channels; keep the conditional half's, as guidedOutput does.
      const last = c.rank - 1;
      const [cm, cv] = tf.split(c, 2, last) as [tf.Tensor, tf.Tensor];
      const um = (tf.split(u, 2, last) as [tf.Tensor, tf.Tensor])[0];
      return tf.concat([tf.sub(tf.mul(1 + w, cm), tf.mul(w, um)), cv], last);
    });
}
