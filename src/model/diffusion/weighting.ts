/**
 * Per-timestep loss weights λ_t of the training objective. Min-SNR-γ (Hang et al. 2023) caps the
 * weight of low-noise timesteps: in x₀ terms the weight is min(SNR_t, γ); expressed for the
 * regressed target it is min(SNR, γ)/SNR for ε, min(SNR, γ) for x₀ and min(SNR, γ)/(SNR + 1) for v.
 * λ multiplies the importance weight 1/(T·p(t)), so the estimate stays unbiased for
 * Σ_t λ_t·E[loss_t]/T under any timestep sampler.
 */
import type { Prediction } from './prediction.js';
import { snr, type Schedule } from './schedule.js';

/** `diffusion.loss_weighting`. */
export type LossWeighting = 'none' | 'min_snr';

/** λ_t for every timestep, length T. */
export function lossWeights(kind: LossWeighting, pred: Prediction, s: Schedule, gamma: number): Float64Array {
  if (kind === 'none') return new Float64Array(s.T).fill(1);
  return snr(s).map((r) => {
    const capped = Math.min(r, gamma);
    if (pred === 'x0') return capped;
    if (pred === 'v') return capped / (r + 1);
    // ε at SNR 0 would be 0/0; the config refuses zero terminal SNR with ε prediction.
    return capped / r;
  });
}
