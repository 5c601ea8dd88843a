/**
 * The σ view of a discrete variance-preserving schedule (Karras et al. 2022, §2 and App. C.1):
 * x_t = √ᾱ_t x₀ + √(1−ᾱ_t) ε is x_t = √ᾱ_t·(x₀ + σ_t ε) with σ_t = √((1−ᾱ_t)/ᾱ_t), so a model
 * trained on T discrete steps is a denoiser at T noise levels σ_0 < … < σ_{T−1}. Between them
 * log σ is interpolated linearly in the timestep, as k-diffusion does: a continuous-time sampler
 * then asks the network about a fractional timestep, which it accepts.
 */
import type { Schedule } from './schedule.js';

/**
 * ᾱ standing in for ᾱ_{T−1} = 0 at a zero-terminal-SNR end (σ = ∞): 2⁻²⁴, as diffusers uses for its
 * σ-space schedulers (σ_max ≈ 4096), or ᾱ_{T−2}/4 if that is smaller, so that σ keeps increasing.
 */
export const TERMINAL_ALPHA_BAR = 2 ** -24;

/** σ_t = √((1−ᾱ_t)/ᾱ_t) per timestep, strictly increasing, length T (a last ᾱ = 0 replaced, see above). */
export function scheduleSigmas(s: Schedule): Float64Array {
  const T = s.alphasCumprod.length;
  return s.alphasCumprod.map((a, t) => {
    const ac = a > 0 ? a : Math.min(TERMINAL_ALPHA_BAR, (t > 0 ? (s.alphasCumprod[t - 1] as number) : 1) / 4);
    if (!(ac > 0) || (a === 0 && t !== T - 1)) throw new Error(`ᾱ_${t} = ${a}: only the last ᾱ may be 0`);
    return Math.sqrt((1 - ac) / ac);
  });
}

/** σ at a fractional timestep t ∈ [0, T−1] (log-linear between steps; clamped outside). */
export function sigmaAtTimestep(sigmas: Float64Array, t: number): number {
  const T = sigmas.length;
  if (!(t > 0)) return sigmas[0] as number;
  if (t >= T - 1) return sigmas[T - 1] as number;
  const i = Math.floor(t);
  const f = t - i;
  const lo = Math.log(sigmas[i] as number);
  const hi = Math.log(sigmas[i + 1] as number);
  return Math.exp(lo + f * (hi - lo));
}

/**
 * The fractional timestep whose σ is `sigma`: the inverse of sigmaAtTimestep. Outside
 * [σ_0, σ_{T−1}] it is clamped to 0 or T−1 (the network never saw other noise levels).
 */
export function timestepAtSigma(sigmas: Float64Array, sigma: number): number {
  const T = sigmas.length;
  if (!(sigma > (sigmas[0] as number))) return 0;
  if (sigma >= (sigmas[T - 1] as number)) return T - 1;
  // Largest i with σ_i ≤ σ (σ is increasing).
  let lo = 0;
  let hi = T - 1;
  while (hi - lo > 1) {
    const mid = (lo + hi) >> 1;
    if ((sigmas[mid] as number) <= sigma) lo = mid;
    else hi = mid;
  }
  const a = Math.log(sigmas[lo] as number);
  const b = Math.log(sigmas[lo + 1] as number);
  return lo + (Math.log(sigma) - a) / (b - a);
}
