/**
 * Inception Score (Salimans et al. 2016): exp E_x[KL(p(y|x) ‖ p(y))] from a classifier's logits,
 * computed over `splits` parts (mean and standard deviation over parts). It ranges from 1 (every
 * prediction equal) to K (confident and balanced). Parts are interleaved (row r in part r mod
 * splits), not contiguous as in the original code: for independent samples the two agree in
 * distribution, but sets sorted by class (datasets, class-cycled samples) would give each
 * contiguous part one or two classes and a score near 1.
 */

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
  const scores: number[] = [];
  for (let s = 0; s < splits; s++) {
    const rows = Math.ceil((n - s) / splits);
    const py = new Float64Array(classes);
    for (let r = s; r < n; r += splits)
      for (let c = 0; c < classes; c++) py[c] = (py[c] as number) + Math.exp(logp[r * classes + c] as number);
    for (let c = 0; c < classes; c++) py[c] = (py[c] as number) / rows;
    let kl = 0;
    for (let r = s; r < n; r += splits) {
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
