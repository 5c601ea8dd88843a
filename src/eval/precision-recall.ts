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

/** Radii already computed, per feature array and k: a reference set is scored against many sample sets (feature arrays must not change once scored). */
const radiiCache = new WeakMap<Float32Array, Map<number, Float32Array>>();

/** Squared k-NN radii [N] of features [N, D]: squared distance to the k-th nearest other point. */
export function knnRadii(f: Float32Array, dim: number, k = 3): Float32Array {
  const hit = radiiCache.get(f)?.get(k);
  if (hit) return hit;
  const n = f.length / dim;
  if (!Number.isInteger(n) || n <= k)
    throw new Error(`precision/recall: needs more than k = ${k} features per set, got ${n}`);
  const out = new Float32Array(n);
  const B = blockRows(n);
  const best = new Float64Array(k + 1);
  tf.tidy(() => {
    const all = tf.tensor2d(f, [n, dim]);
    const norms = tf.reshape(tf.sum(tf.square(all), 1), [1, n]) as tf.Tensor2D;
    for (let r0 = 0; r0 < n; r0 += B) {
      const rows = Math.min(B, n - r0);
      // Read back outside an inner tf.tidy: tidy walks every element of typed arrays handed back.
      const dt = sqDistances(tf.slice(all, [r0, 0], [rows, dim]), all, norms);
      const d = dt.dataSync() as Float32Array;
      dt.dispose();
      // The k+1 smallest of each row by insertion (k is tiny; a full sort of N per row is not):
      // they include the point itself at distance 0, so the last is the k-th other point.
      for (let r = 0; r < rows; r++) {
        best.fill(Infinity);
        for (let j = 0; j < n; j++) {
          const v = d[r * n + j] as number;
          if (v >= (best[k] as number)) continue;
          let p = k;
          while (p > 0 && (best[p - 1] as number) > v) {
            best[p] = best[p - 1] as number;
            p--;
          }
          best[p] = v;
        }
        out[r0 + r] = best[k] as number;
      }
    }
  });
  const perK = radiiCache.get(f) ?? new Map<number, Float32Array>();
  perK.set(k, out);
  radiiCache.set(f, perK);
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
