/**
 * The stochastic Heun sampler of Karras et al. 2022 (Algorithm 2), with its ρ = 7 σ grid by
 * default: at each σ_i with S_tmin ≤ σ_i ≤ S_tmax the noise is raised to σ̂ = (1 + γ)σ_i,
 * γ = min(S_churn/N, √2 − 1), by adding N(0, S_noise²(σ̂² − σ_i²)), then a Heun step goes from σ̂ to
 * σ_{i+1}. S_churn = 0 is their deterministic Algorithm 1. σ̂ is kept ≤ σ_max of the model (a
 * discrete model knows no larger σ).
 */
import * as tf from '@tensorflow/tfjs';
import { stepNoise } from './noise.js';
import { heunStep } from './ode.js';
import { levels, walkGrid, type Sampler } from './sampler.js';

/** γ_i of Algorithm 2 for level σ with N steps. */
export function churnGamma(
  sigma: number,
  N: number,
  st: { churn: number; churnSigmaMin: number; churnSigmaMax: number },
): number {
  if (st.churn <= 0 || sigma < st.churnSigmaMin || sigma > st.churnSigmaMax) return 0;
  return Math.min(st.churn / N, Math.SQRT2 - 1);
}

/** `edm-heun`: N Heun steps, 2N − 1 evaluations, karras levels by default, churn from the settings. */
export const edmHeunSampler: Sampler = {
  name: 'edm-heun',
  title: 'Karras et al. 2022 Heun (Algorithm 2): ρ-spaced σ, optional churn',
  stochastic: true,
  defaultDiscretization: 'karras',
  uses: ['steps', 'discretization', 'rho', 'churn', 'churnSigmaMin', 'churnSigmaMax', 'churnNoise'],
  nfe: (st) => 2 * st.steps - 1,
  run(model, shape, o) {
    const st = o.settings;
    if (!(st.churn >= 0)) throw new Error(`sample.churn must be ≥ 0, got ${st.churn}`);
    const B = shape[0] ?? 0;
    const { x, steps } = walkGrid(model, shape, o, 'karras', (x, s, sn, i, grid) => {
      const sHat = Math.min(s * (1 + churnGamma(s, grid.length - 1, st)), Math.max(model.sigmaMax, s));
      const xh =
        sHat > s ? tf.add(x, tf.mul(st.churnNoise * Math.sqrt(sHat * sHat - s * s), stepNoise(x, i, o))) : x;
      return heunStep(model, xh, model.denoise(xh, levels(B, sHat)), sHat, sn);
    });
    return { x, nfe: 2 * steps - 1 };
  },
};
