/**
 * Sufficient statistics of a feature set for the Fréchet distance: count, Σx and Σxxᵀ in float64.
 * They add up exactly (up to float64 rounding) across parts, so workers can each reduce a share of
 * the samples and only these sums travel; μ and Σ come from the combined sums at the end.
 */

/** Count, Σx [D] and Σxxᵀ [D·D] (row-major; only the upper triangle j ≥ i is kept, the rest stays 0) of D-dimensional features. */
export interface FeatureStats {
  dim: number;
  count: number;
  sum: Float64Array;
  sumOuter: Float64Array;
}

/** Mean [D] and unbiased covariance [D·D] (divisor n − 1, as numpy's np.cov) of a feature set. */
export interface Gaussian {
  dim: number;
  mu: Float64Array;
  sigma: Float64Array;
}

/** Empty statistics of D-dimensional features. */
export function emptyStats(dim: number): FeatureStats {
  if (!Number.isInteger(dim) || dim < 1)
    throw new Error(`feature dimension must be an integer ≥ 1, got ${dim}`);
  return { dim, count: 0, sum: new Float64Array(dim), sumOuter: new Float64Array(dim * dim) };
}

/** Adds features [N, D] (row-major) to `s` in place and returns it. */
export function accumulate(s: FeatureStats, features: Float32Array | Float64Array): FeatureStats {
  const D = s.dim;
  if (features.length % D !== 0)
    throw new Error(`features: ${features.length} values are not a whole number of rows of ${D}`);
  const n = features.length / D;
  const row = new Float64Array(D);
  for (let r = 0; r < n; r++) {
    for (let i = 0; i < D; i++) row[i] = features[r * D + i] as number;
    for (let i = 0; i < D; i++) {
      const xi = row[i] as number;
      s.sum[i] = (s.sum[i] as number) + xi;
      if (xi === 0) continue; // ReLU features are mostly zeros: skipping them is exact and faster.
      const base = i * D;
      // Upper triangle only; mirrored once in `toGaussian`.
      for (let j = i; j < D; j++)
        s.sumOuter[base + j] = (s.sumOuter[base + j] as number) + xi * (row[j] as number);
    }
  }
  s.count += n;
  return s;
}

/** Statistics of features [N, D]. */
export function statsOf(features: Float32Array | Float64Array, dim: number): FeatureStats {
  return accumulate(emptyStats(dim), features);
}

/** The sum of two parts' statistics (a new object). */
export function combineStats(a: FeatureStats, b: FeatureStats): FeatureStats {
  if (a.dim !== b.dim) throw new Error(`cannot combine statistics of dimension ${a.dim} and ${b.dim}`);
  const out = emptyStats(a.dim);
  out.count = a.count + b.count;
  for (let i = 0; i < a.sum.length; i++) out.sum[i] = (a.sum[i] as number) + (b.sum[i] as number);
  for (let i = 0; i < a.sumOuter.length; i++)
    out.sumOuter[i] = (a.sumOuter[i] as number) + (b.sumOuter[i] as number);
  return out;
}

/** μ and the unbiased covariance Σ from statistics of at least 2 features. */
export function toGaussian(s: FeatureStats): Gaussian {
  const { dim: D, count: n } = s;
  if (n < 2) throw new Error(`a covariance needs at least 2 features, got ${n}`);
  const mu = new Float64Array(D);
  for (let i = 0; i < D; i++) mu[i] = (s.sum[i] as number) / n;
  const sigma = new Float64Array(D * D);
  for (let i = 0; i < D; i++) {
    for (let j = i; j < D; j++) {
      // Σxxᵀ − n·μμᵀ, divided by n − 1.
      const v = ((s.sumOuter[i * D + j] as number) - n * (mu[i] as number) * (mu[j] as number)) / (n - 1);
      sigma[i * D + j] = v;
      sigma[j * D + i] = v;
    }
  }
  return { dim: D, mu, sigma };
}
