/**
 * The sampler interface. Every sampler draws from a `SigmaModel`: a denoiser in σ terms
 * (Karras et al. 2022, §2), D(x; σ) ≈ E[x₀ | x = x₀ + σ·ε], whatever the network predicts (ε, x₀
 * or v) and whatever its noise process (a discrete VP schedule today; VE or EDM models later only
 * need another adapter, see `sigma-model.ts`). In these coordinates the probability-flow ODE is
 * dx/dσ = (x − D(x; σ))/σ and the reverse SDE is dx = −2σ ∇log p dσ + √(2σ) dw̄ with
 * ∇log p(x; σ) = (D(x; σ) − x)/σ²; a VP x_t is √ᾱ·x, so a trajectory here is the VP one, rescaled.
 * DDPM and DDIM walk the training timesteps in x_t coordinates instead, through `discrete`.
 *
 * Sampler names are stored in checkpoints (`sample.sampler`): once committed a name keeps its
 * meaning forever — its update rule, its default discretisation and how it draws noise; a changed
 * recipe gets a new name (docs/design.md §8).
 */
import * as tf from '@tensorflow/tfjs';
import type { Schedule } from '../diffusion/schedule.js';
import type { DenoiseFn } from './guidance.js';
import { initialNoise, type SampleOptions } from './noise.js';
import { sigmaSteps, type Discretization } from './discretization.js';

/** A model as samplers see it: its denoiser in σ terms and the noise levels it knows. */
export interface SigmaModel {
  /**
   * x̂₀ = D(x; σ) ([B, …]) for x = x₀ + σ·ε ([B, …]) at per-example noise levels σ (B values > 0).
   * Levels outside [sigmaMin, sigmaMax] are clamped by the model to the nearest it knows. `rows`:
   * which samples of the run's batch x holds, when fewer (an adaptive solver's running ones), so
   * that each keeps its own class label; absent = all of them, in order.
   */
  denoise(x: tf.Tensor, sigma: ArrayLike<number>, rows?: ArrayLike<number>): tf.Tensor;
  /** Smallest and largest σ the model was trained on. */
  readonly sigmaMin: number;
  readonly sigmaMax: number;
  /** σ at continuous time u ∈ [0, 1] (0 → sigmaMin, 1 → sigmaMax, increasing): time grids use it. */
  sigmaAt(u: number): number;
  /** T of a model trained on T discrete timesteps (u = t/(T−1)); null for a continuous-time model. */
  readonly timesteps: number | null;
  /** Std of the prior x ~ N(0, priorStd² I) at sigmaMax (√(1+σ_max²) for VP: x_T = z exactly). */
  readonly priorStd: number;
  /** The discrete view for DDPM/DDIM: schedule and (ε̂, x̂₀[, log σ²]) at integer timesteps of x_t. */
  readonly discrete: { readonly schedule: Schedule; readonly denoise: DenoiseFn } | null;
}

/** Every setting a sampler may read; each sampler reads only those listed in its `uses`. */
export interface SamplerSettings {
  /** Model evaluations for fixed-step σ samplers, strided timesteps for DDIM; ignored by ddpm and ode-rk45. */
  steps: number;
  /** Time discretisation, or auto = the sampler's own default. */
  discretization: Discretization | 'auto';
  /** ρ of the Karras discretisation (7, Karras et al. 2022 eq. 5). */
  rho: number;
  /** DDIM η. */
  eta: number;
  /** DDPM's σ_t²: β_t or the posterior variance. */
  sigma: 'beta' | 'posterior';
  /** S_churn of Karras et al. 2022 Algorithm 2 (0 = deterministic). */
  churn: number;
  /** Churn only where S_tmin ≤ σ_i ≤ S_tmax. */
  churnSigmaMin: number;
  churnSigmaMax: number;
  /** S_noise: scale of the churn noise. */
  churnNoise: number;
  /** Signal-to-noise ratio r of the Langevin corrector (Song et al. 2021, Algorithm 5). */
  snr: number;
  /** Langevin corrector steps per noise level. */
  correctorSteps: number;
  /** rtol = atol of the adaptive ODE solver. */
  tolerance: number;
}

/** Settings of the keys a sampler reads, defaults as in the config schema (`sample.*`). */
export const DEFAULT_SETTINGS: Readonly<SamplerSettings> = {
  steps: 50,
  discretization: 'auto',
  rho: 7,
  eta: 0,
  sigma: 'beta',
  churn: 0,
  churnSigmaMin: 0,
  churnSigmaMax: Infinity,
  churnNoise: 1,
  snr: 0.16,
  correctorSteps: 1,
  tolerance: 1e-5,
};

/** What a sampler run is given besides the model. */
export interface SamplerRun extends SampleOptions {
  settings: SamplerSettings;
}

/** Samples [B, …] (data space) and model evaluations per sample (the mean, for adaptive solvers). */
export interface SamplerResult {
  x: tf.Tensor;
  nfe: number;
}

/** A setting key a sampler reads (its CLI option is the key with dashes). */
export type SettingKey = keyof SamplerSettings;

/** One sampler of the registry (`registry.ts`). */
export interface Sampler {
  readonly name: string;
  /** One line for help texts and bench tables. */
  readonly title: string;
  /** Draws fresh noise along the way (its samples depend on more than x_T). */
  readonly stochastic: boolean;
  /** Discretisation of `auto`; null: the sampler has no time grid to choose (ddpm, ode-rk45). */
  readonly defaultDiscretization: Discretization | null;
  /** Settings it reads (others are refused when given on the command line). */
  readonly uses: readonly SettingKey[];
  /** Model evaluations per sample of a run on `model`, or null when adaptive. */
  nfe(settings: SamplerSettings, model: SigmaModel): number | null;
  /** Draws samples of `shape` ([B, …]) from noise keyed by (seed, indexOffset + i). */
  run(model: SigmaModel, shape: number[], o: SamplerRun): SamplerResult;
}

/** The σ grid (N + 1 levels, last 0) a fixed-step σ sampler visits for `settings` (auto = `dflt`). */
export function gridFor(model: SigmaModel, settings: SamplerSettings, dflt: Discretization): Float64Array {
  const d = settings.discretization === 'auto' ? dflt : settings.discretization;
  return sigmaSteps(d, settings.steps, model, settings.rho);
}

/** B copies of σ: the per-example levels of a batch at one noise level. */
export function levels(B: number, sigma: number): Float64Array {
  return new Float64Array(B).fill(sigma);
}

/** One sampler step: x ← f(x) inside tf.tidy, the old x disposed. */
function advance(x: tf.Tensor, f: (x: tf.Tensor) => tf.Tensor): tf.Tensor {
  const next = tf.tidy(() => f(x));
  x.dispose();
  return next;
}

/**
 * The loop of every fixed-grid σ sampler: x from the prior, then for each interval i of the grid
 * (auto = `dflt`) x ← step(x, σ_i, σ_{i+1}, i) inside tf.tidy, progress reported. A multistep
 * method keeps what it carries to the next step with tf.keep and disposes it itself.
 */
export function walkGrid(
  model: SigmaModel,
  shape: number[],
  o: SamplerRun,
  dflt: Discretization,
  step: (x: tf.Tensor, sigma: number, sigmaNext: number, i: number, grid: Float64Array) => tf.Tensor,
): { x: tf.Tensor; steps: number } {
  const grid = gridFor(model, o.settings, dflt);
  const N = grid.length - 1;
  let x = priorSample(model, shape, o);
  for (let i = 0; i < N; i++) {
    const s = grid[i] as number;
    const sn = grid[i + 1] as number;
    x = advance(x, (x) => step(x, s, sn, i, grid));
    o.onStep?.(i + 1, N);
  }
  return { x, steps: N };
}

/** x ~ N(0, priorStd² I) at σ_max, from the noise of sample indices (seed, indexOffset + i). */
export function priorSample(model: SigmaModel, shape: number[], o: SampleOptions): tf.Tensor {
  return tf.tidy(() => tf.mul(initialNoise(shape, o), model.priorStd));
}
