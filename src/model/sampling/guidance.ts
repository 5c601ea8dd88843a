/** The denoiser as samplers call it (ε̂ at one timestep), and classifier-free guidance around it. */
import * as tf from '@tensorflow/tfjs';

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
