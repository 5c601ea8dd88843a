/**
 * Time discretisations: which noise levels a sampler visits. A grid of N levels is
 * σ_0 > σ_1 > … > σ_{N−1} > σ_N = 0; the last step lands on the data (σ = 0), so a fixed-step
 * sampler makes N steps. Names are stored in checkpoints (`sample.discretization`) and never
 * change meaning (docs/design.md §8).
 */
import { sigmaAtTimestep, timestepAtSigma } from '../diffusion/sigmas.js';

/** Every discretisation by name (the config adds `auto`). */
export const DISCRETIZATIONS = ['uniform', 'quadratic', 'karras', 'trailing'] as const;
/**
 * uniform: evenly spaced in time, both ends included (DDIM's strided timesteps);
 * quadratic: u_i = ((N−1−i)/(N−1))², dense at low noise (the "quad" of Song et al. 2021a, over the whole range);
 * karras: σ_i = (σ_max^{1/ρ} + i/(N−1)·(σ_min^{1/ρ} − σ_max^{1/ρ}))^ρ (Karras et al. 2022, eq. 5);
 * trailing: evenly spaced from the noisy end, u_i = 1 − i/N, never visiting the last 1/N
 * (Lin et al. 2023, Table 2: timesteps round(T − iT/N) − 1 for a discrete model).
 */
export type Discretization = (typeof DISCRETIZATIONS)[number];

/** The noise levels of a model, as discretisations need them (a subset of `SigmaModel`). */
export interface NoiseRange {
  readonly sigmaMin: number;
  readonly sigmaMax: number;
  sigmaAt(u: number): number;
  readonly timesteps: number | null;
}

function checkSteps(N: number): void {
  if (!Number.isInteger(N) || N < 1) throw new Error(`sample.steps must be an integer ≥ 1, got ${N}`);
}

/** Times u_i ∈ [0, 1], i = 0…N−1, descending, of a discretisation in time (T: discrete steps or null). */
export function timeGrid(d: 'uniform' | 'quadratic' | 'trailing', N: number, T: number | null): Float64Array {
  checkSteps(N);
  const u = new Float64Array(N);
  for (let i = 0; i < N; i++) {
    if (d === 'trailing') {
      // A discrete model visits whole timesteps, as Lin et al. tabulate; u = t/(T−1).
      u[i] = T === null ? 1 - i / N : Math.max(Math.round(T - (i * T) / N) - 1, 0) / (T - 1);
    } else {
      const f = N === 1 ? 1 : (N - 1 - i) / (N - 1);
      u[i] = d === 'uniform' ? f : f * f;
    }
  }
  return u;
}

/** K timesteps spread evenly over 0…T−1, descending, always including T−1 and 0 (DDIM's strided steps). */
export function stridedTimesteps(T: number, K: number): number[] {
  if (!Number.isInteger(K) || K < 1 || K > T)
    throw new Error(`sampling steps must be an integer in 1…${T}, got ${K}`);
  if (K === 1) return [T - 1];
  const set = new Set<number>();
  for (let i = 0; i < K; i++) set.add(Math.round((i * (T - 1)) / (K - 1)));
  return [...set].sort((a, b) => b - a);
}

/** N Karras et al. 2022 (eq. 5) levels from σ_max down to σ_min, spaced evenly in σ^{1/ρ}. */
export function karrasSigmas(N: number, sigmaMin: number, sigmaMax: number, rho: number): Float64Array {
  checkSteps(N);
  if (!(rho > 0)) throw new Error(`sample.rho must be > 0, got ${rho}`);
  const hi = sigmaMax ** (1 / rho);
  const lo = sigmaMin ** (1 / rho);
  const out = new Float64Array(N);
  for (let i = 0; i < N; i++) out[i] = (hi + (N === 1 ? 0 : i / (N - 1)) * (lo - hi)) ** rho;
  return out;
}

/** σ_0 > … > σ_{N−1} > σ_N = 0 (length N + 1) of discretisation `d` over the model's range. */
export function sigmaSteps(d: Discretization, N: number, range: NoiseRange, rho: number): Float64Array {
  const levels =
    d === 'karras'
      ? karrasSigmas(N, range.sigmaMin, range.sigmaMax, rho)
      : timeGrid(d, N, range.timesteps).map((u) => range.sigmaAt(u));
  const out = new Float64Array(N + 1);
  out.set(levels);
  out[N] = 0;
  return out;
}

/**
 * Integer timesteps, descending and distinct, of discretisation `d` on a T-step schedule with
 * levels `sigmas` (for DDIM). uniform is exactly `stridedTimesteps`; the others round to whole
 * timesteps, and where two levels round to the same step it is visited once (fewer steps than N).
 */
export function discreteTimesteps(
  d: Discretization,
  N: number,
  T: number,
  sigmas: Float64Array,
  rho: number,
): number[] {
  checkSteps(N);
  if (d === 'uniform') return stridedTimesteps(T, N);
  if (N > T) throw new Error(`sampling steps must be an integer in 1…${T}, got ${N}`);
  const t =
    d === 'karras'
      ? [...karrasSigmas(N, sigmas[0] as number, sigmas[T - 1] as number, rho)].map((s) =>
          Math.round(timestepAtSigma(sigmas, s)),
        )
      : [...timeGrid(d, N, T)].map((u) => Math.round(u * (T - 1)));
  return [...new Set(t)].sort((a, b) => b - a);
}

/** σ of a discrete model at time u ∈ [0, 1] (u = t/(T−1)). */
export function discreteSigmaAt(sigmas: Float64Array, u: number): number {
  return sigmaAtTimestep(sigmas, u * (sigmas.length - 1));
}
