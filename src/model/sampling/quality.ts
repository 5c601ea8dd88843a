/**
 * How close a sample set is to a target: the measures `bench sample` and the sampler tests report.
 * Sliced 2-Wasserstein (Rabin et al. 2011) compares whole distributions in any dimension; the mode
 * weights, mean and covariance compare what an analytic target knows exactly.
 */
import { Purpose, stream } from '../rng.js';
import type { Mixture } from '../nets/analytic.js';

/** Sorted values of x (n × D, row-major) projected on direction θ (D values). */
function projected(x: Float32Array, D: number, theta: Float64Array): Float64Array {
  const n = Math.floor(x.length / D);
  const out = new Float64Array(n);
  for (let i = 0; i < n; i++) {
    let v = 0;
    for (let d = 0; d < D; d++) v += (x[i * D + d] as number) * (theta[d] as number);
    out[i] = v;
  }
  return out.sort();
}

/** Value at quantile q ∈ [0, 1] of sorted values (linear interpolation). */
function quantile(sorted: Float64Array, q: number): number {
  const p = q * (sorted.length - 1);
  const i = Math.floor(p);
  const a = sorted[i] as number;
  return i + 1 < sorted.length ? a + (p - i) * ((sorted[i + 1] as number) - a) : a;
}

/**
 * Sliced 2-Wasserstein distance between two sample sets (n × D and m × D), √(mean over `L`
 * directions θ of W₂²(θ·a, θ·b)), each 1-D W₂ from quantiles; directions are uniform on the sphere
 * from the counter stream (seed, l), so the value is reproducible. D = 1 uses the one direction.
 */
export function slicedWasserstein(a: Float32Array, b: Float32Array, D: number, L = 64, seed = 0): number {
  const dirs = D === 1 ? 1 : L;
  let total = 0;
  for (let l = 0; l < dirs; l++) {
    const theta = new Float64Array(D);
    if (D === 1) theta[0] = 1;
    else {
      const s = stream(seed, 0, l, Purpose.oracle);
      let norm = 0;
      for (let d = 0; d < D; d++) {
        theta[d] = s.normal();
        norm += (theta[d] as number) ** 2;
      }
      for (let d = 0; d < D; d++) theta[d] = (theta[d] as number) / Math.sqrt(norm);
    }
    const pa = projected(a, D, theta);
    const pb = projected(b, D, theta);
    // Equal sizes pair order statistics; otherwise compare at the midpoints of a's quantiles.
    let w = 0;
    const n = pa.length;
    for (let i = 0; i < n; i++) {
      const q = pb.length === n ? (pb[i] as number) : quantile(pb, (i + 0.5) / n);
      w += ((pa[i] as number) - q) ** 2;
    }
    total += w / Math.max(n, 1);
  }
  return Math.sqrt(total / dirs);
}

/** Mean [D] and covariance [D × D] (divided by n) of n × D samples. */
export function sampleMoments(x: Float32Array, D: number): { mean: number[]; cov: number[][] } {
  const n = Math.floor(x.length / D);
  const mean = new Array<number>(D).fill(0);
  for (let i = 0; i < n; i++)
    for (let d = 0; d < D; d++) mean[d] = (mean[d] as number) + (x[i * D + d] as number) / n;
  const cov = Array.from({ length: D }, () => new Array<number>(D).fill(0));
  for (let i = 0; i < n; i++)
    for (let a = 0; a < D; a++) {
      const da = (x[i * D + a] as number) - (mean[a] as number);
      const row = cov[a] as number[];
      for (let b = 0; b < D; b++)
        row[b] = (row[b] as number) + (da * ((x[i * D + b] as number) - (mean[b] as number))) / n;
    }
  return { mean, cov };
}

/** The most likely component of each sample under the mixture (Bayes assignment): n labels. */
export function assignModes(m: Mixture, x: Float32Array): Int32Array {
  const D = m.means[0]?.length ?? 0;
  const n = Math.floor(x.length / D);
  const out = new Int32Array(n);
  for (let i = 0; i < n; i++) {
    let best = -Infinity;
    m.weights.forEach((w, k) => {
      const mu = m.means[k] as readonly number[];
      const sd = m.std[k] as readonly number[];
      let l = Math.log(w);
      for (let d = 0; d < D; d++) {
        const s = sd[d] as number;
        l -= 0.5 * (((x[i * D + d] as number) - (mu[d] as number)) / s) ** 2 + Math.log(s);
      }
      if (l > best) {
        best = l;
        out[i] = k;
      }
    });
  }
  return out;
}

/** Fraction of samples assigned to each component. */
export function modeWeights(m: Mixture, x: Float32Array): number[] {
  const labels = assignModes(m, x);
  const f = new Array<number>(m.weights.length).fill(0);
  for (const k of labels) f[k] = (f[k] as number) + 1 / Math.max(labels.length, 1);
  return f;
}
