/**
 * Inception Score (Salimans et al. 2016): exp E_x[KL(p(y|x) ‖ p(y))] from a classifier's logits,
 * computed over `splits` parts (mean and standard deviation over parts). It ranges from 1 (every
 * prediction equal) to K (confident and balanced). Parts are drawn by a fixed permutation of the
 * rows, not cut contiguously as in the original code: for independent samples the two agree in
 * distribution, but sets in class order give contiguous parts one or two classes each (datasets
 * sorted by class), and interleaved parts as well when the classes cycle with the number of parts
 * (class-cycled samples): a score near 1 either way.
 */
import { epochPermutation } from '../data/batches.js';

/** Seed of the parts' permutation: fixed, so a set always gets the same score. */
const SPLIT_SEED = 0x15;

/** IS mean and standard deviation (numpy's np.std, divisor = splits) over the splits. */
export interface InceptionScore {
  mean: number;
  std: number;
  splits: number;
}

/** Inception score of logits [N, K] (row-major) over `splits` parts (default 10). */
export function inceptionScore(
  logits: Float32Array | Float64Array,
  classes: number,
  splits = 10,
): InceptionScore {
  const n = logits.length / classes;
  if (!Number.isInteger(n) || n < 1)
    throw new Error(`IS: ${logits.length} logits are not rows of ${classes}`);
  if (!Number.isInteger(splits) || splits < 1 || splits > n)
    throw new Error(`IS: splits must be an integer in 1…${n}, got ${splits}`);
  // log p(y|x) by a stable log-softmax, in float64.
  const logp = new Float64Array(n * classes);
  for (let r = 0; r < n; r++) {
    let max = -Infinity;
    for (let c = 0; c < classes; c++) max = Math.max(max, logits[r * classes + c] as number);
    let z = 0;
    for (let c = 0; c < classes; c++) z += Math.exp((logits[r * classes + c] as number) - max);
    const lz = max + Math.log(z);
    for (let c = 0; c < classes; c++) logp[r * classes + c] = (logits[r * classes + c] as number) - lz;
  }
  const perm = epochPermutation(n, SPLIT_SEED, 0);
  const scores: number[] = [];
  for (let s = 0; s < splits; s++) {
    // Part s: the rows at positions s, s + splits, … of the permutation.
    const part = perm.filter((_, j) => j % splits === s);
    const rows = part.length;
    const py = new Float64Array(classes);
    for (const r of part)
      for (let c = 0; c < classes; c++) py[c] = (py[c] as number) + Math.exp(logp[r * classes + c] as number);
    for (let c = 0; c < classes; c++) py[c] = (py[c] as number) / rows;
    let kl = 0;
    for (const r of part) {
      for (let c = 0; c < classes; c++) {
        const lp = logp[r * classes + c] as number;
        const p = Math.exp(lp);
        // 0·log 0 = 0: a class the row gives no mass contributes nothing.
        if (p > 0) kl += p * (lp - Math.log(py[c] as number));
      }
    }
    scores.push(Math.exp(kl / rows));
  }
  const mean = scores.reduce((a, b) => a + b, 0) / splits;
  const std = Math.sqrt(scores.reduce((a, v) => a + (v - mean) ** 2, 0) / splits);
  return { mean, std, splits };
}
