/**
 * The Fréchet distance between two Gaussians N(μ1, Σ1) and N(μ2, Σ2):
 *   d² = ‖μ1 − μ2‖² + tr Σ1 + tr Σ2 − 2 tr (Σ1Σ2)^½.
 * Σ1Σ2 is not symmetric, and scipy's general sqrtm (pytorch-fid, clean-fid) can return complex
 * noise for nearly singular products. Here tr (Σ1Σ2)^½ = tr (√Σ1 Σ2 √Σ1)^½, because Σ1Σ2 and
 * √Σ1 Σ2 √Σ1 are similar; the latter is symmetric positive semi-definite, so two symmetric
 * eigendecompositions give it with real, clamped eigenvalues.
 */
import { EigenvalueDecomposition, Matrix } from 'ml-matrix';
import type { Gaussian } from './stats.js';

function symmetricMatrix(a: Float64Array, n: number): Matrix {
  const m = new Matrix(n, n);
  for (let i = 0; i < n; i++)
    for (let j = 0; j < n; j++) m.set(i, j, 0.5 * ((a[i * n + j] as number) + (a[j * n + i] as number)));
  return m;
}

/** Eigenvalues and eigenvectors of a symmetric matrix. */
function symmetricEigen(m: Matrix): EigenvalueDecomposition {
  return new EigenvalueDecomposition(m, { assumeSymmetric: true });
}

/** The symmetric square root of a PSD matrix [n·n] (negative rounding-error eigenvalues clamped to 0). */
export function sqrtPsd(a: Float64Array, n: number): Matrix {
  const e = symmetricEigen(symmetricMatrix(a, n));
  const V = e.eigenvectorMatrix;
  const s = e.realEigenvalues.map((l) => Math.sqrt(Math.max(l, 0)));
  // V·diag(√λ)·Vᵀ
  const vs = V.clone();
  for (let i = 0; i < n; i++) for (let j = 0; j < n; j++) vs.set(i, j, V.get(i, j) * (s[j] as number));
  return vs.mmul(V.transpose());
}

/** tr (Σ1Σ2)^½ for PSD Σ1, Σ2 [n·n] (float64). */
export function traceSqrtProduct(sigma1: Float64Array, sigma2: Float64Array, n: number): number {
  const r = sqrtPsd(sigma1, n);
  const m = r.mmul(symmetricMatrix(sigma2, n)).mmul(r);
  // Symmetrised: the product is symmetric only up to rounding, and the eigensolver assumes it.
  const sym = new Float64Array(n * n);
  for (let i = 0; i < n; i++) for (let j = 0; j < n; j++) sym[i * n + j] = m.get(i, j);
  const e = symmetricEigen(symmetricMatrix(sym, n));
  let t = 0;
  for (const l of e.realEigenvalues) t += Math.sqrt(Math.max(l, 0));
  return t;
}

/** Fréchet distance d² between N(μ1, Σ1) and N(μ2, Σ2), in squared feature units. */
export function frechetDistance(a: Gaussian, b: Gaussian): number {
  const n = a.dim;
  if (b.dim !== n) throw new Error(`Fréchet distance: dimensions differ (${a.dim} and ${b.dim})`);
  let d2 = 0;
  for (let i = 0; i < n; i++) d2 += ((a.mu[i] as number) - (b.mu[i] as number)) ** 2;
  let tr = 0;
  for (let i = 0; i < n; i++) tr += (a.sigma[i * n + i] as number) + (b.sigma[i * n + i] as number);
  // Not clamped at 0: rounding leaves ~1e-12·tr Σ either side for identical inputs, and a clamp
  // would hide a real error of sign.
  return d2 + tr - 2 * traceSqrtProduct(a.sigma, b.sigma, n);
}
