/**
 * The per-example training loss of the diffusion objective. A new prediction target or loss
 * weighting goes here (or beside it in src/model/diffusion/); the orchestrator never sees it.
 */
import * as tf from '@tensorflow/tfjs';

/** Per-example loss mean((ε − ε̂)²) over all non-batch axes: [B, …] × [B, …] → [B]. */
export function perExampleMse(eps: tf.Tensor, epsHat: tf.Tensor): tf.Tensor1D {
  return tf.tidy(() => {
    const axes = Array.from({ length: eps.rank - 1 }, (_, i) => i + 1);
    return tf.mean(tf.squaredDifference(eps, epsHat), axes) as tf.Tensor1D;
  });
}
