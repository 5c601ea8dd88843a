/**
 * Improved precision and recall (Kynkäänniemi et al. 2019). Each set's manifold is the union of
 * balls around its points with radius = distance to the point's k-th nearest neighbour in the same
 * set (k = 3). Precision: the share of generated points inside the real manifold (fidelity);
 * recall: the share of real points inside the generated manifold (coverage).
 */
import * as tf from '@tensorflow/tfjs';

/** Precision and recall, each in [0, 1]. */
export interface PrecisionRecall {
  precision: number;
  recall: number;
  k: number;
}

/** Rows per distance block: [rows, N] float32 distances must fit memory comfortably. */
function blockRows(n: number): number {
  return Math.max(1, Math.min(1024, Math.floor(16_000_000 / Math.max(n, 1))));
}

/** Squared Euclidean distances between rows of a [r, D] and b [n, D] (clamped at 0 against rounding). */
function sqDistances(a: tf.Tensor2D, b: tf.Tensor2D, bNorms: tf.Tensor2D): tf.Tensor2D {
  const an = tf.sum(tf.square(a), 1, true);
  return tf.relu(tf.add(tf.sub(an, tf.mul(2, tf.matMul(a, b, false, true))), bNorms)) as tf.Tensor2D;
}

/** Squared k-NN radii [N] of features [N, D]: squared distance to the k-th nearest other point. */
export function knnRadii(f: Float32Array, dim: number, k = 3): Float32Array {
  const n = f.length / dim;
  if (!Number.isInteger(n) || n <= k)
    throw new Error(`precision/recall: needs more than k = ${k} features per set, got ${n}`);
  const out = new Float32Array(n);
  const B = blockRows(n);
  tf.tidy(() => {
    const all = tf.tensor2d(f, [n, dim]);
    const norms = tf.reshape(tf.sum(tf.square(all), 1), [1, n]) as tf.Tensor2D;
    for (let r0 = 0; r0 < n; r0 += B) {
      const rows = Math.min(B, n - r0);
      const r = tf.tidy(() => {
        const d = sqDistances(tf.slice(all, [r0, 0], [rows, dim]), all, norms);
        // The k+1 smallest include the point itself (distance 0): the last of them is the k-th other.
        const { values } = tf.topk(tf.neg(d), k + 1, true);
        return tf.neg(tf.slice(values, [0, k], [rows, 1])).dataSync() as Float32Array;
      });
      out.set(r, r0);
    }
  });
  return out;
}

/** Share of rows of `q` [Nq, D] within the radius of at least one row of `ref` [Nr, D] (radii squared). */
export function coverage(q: Float32Array, ref: Float32Array, radii2: Float32Array, dim: number): number {
  const nq = q.length / dim;
  const nr = ref.length / dim;
  const B = blockRows(nr);
  let inside = 0;
  tf.tidy(() => {
    const R = tf.tensor2d(ref, [nr, dim]);
    const norms = tf.reshape(tf.sum(tf.square(R), 1), [1, nr]) as tf.Tensor2D;
    const rad = tf.tensor2d(radii2, [1, nr]);
    for (let r0 = 0; r0 < nq; r0 += B) {
      const rows = Math.min(B, nq - r0);
      inside += tf.tidy(() => {
        const d = sqDistances(tf.tensor2d(q.subarray(r0 * dim, (r0 + rows) * dim), [rows, dim]), R, norms);
        return tf.sum(tf.cast(tf.any(tf.lessEqual(d, rad), 1), 'int32')).dataSync()[0] as number;
      });
    }
  });
  return inside / nq;
}

/** Precision and recall of generated features `fake` [Nf, D] against `real` [Nr, D]. */
export function precisionRecall(real: Float32Array, fake: Float32Array, dim: number, k = 3): PrecisionRecall {
  const realRadii = knnRadii(real, dim, k);
  const fakeRadii = knnRadii(fake, dim, k);
  return {
    precision: coverage(fake, real, realRadii, dim),
    recall: coverage(real, fake, fakeRadii, dim),
    k,
  };
}
