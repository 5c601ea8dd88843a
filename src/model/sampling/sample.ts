/**
 * Drawing samples from a trained denoiser: chunks of a sample set, any sampler of the registry,
 * optional classifier-free guidance. Sample n's noise depends only on (seed, n), so the result does
 * not depend on the chunk size.
 */
import * as tf from '@tensorflow/tfjs';
import type { Denoiser } from '../nets/denoiser.js';
import type { Params } from '../params.js';
import type { Schedule } from '../diffusion/schedule.js';
import { denoiserFor, guidedOutput, guidedOutputAt, type ModelAtFn, type ModelFn } from './guidance.js';
import type { Prediction } from '../diffusion/prediction.js';
import { samplerNamed, type SamplerName } from './registry.js';
import { DEFAULT_SETTINGS, type SamplerSettings, type SigmaModel } from './sampler.js';
import { continuousSigmaModel, perExample, vpSigmaModel } from './sigma-model.js';
import { coefsAt, continuousDenoised, type ContinuousProcess } from '../diffusion/continuous.js';
import type { SampleConfig } from '../../config/schema.js';

/** A sample set to draw: count, sampler and its settings, guidance and labels, seed, chunking. */
export interface SampleRequest extends Partial<Omit<SamplerSettings, 'steps' | 'eta' | 'sigma'>> {
  count: number;
  sampler: SamplerName;
  /** Steps of the sampler (ignored by DDPM, which always runs all T steps, and by ode-rk45). */
  steps: number;
  eta: number;
  /** Guidance weight w (0 = plain conditional or unconditional). */
  guidance: number;
  /** Class of every sample, or null: unconditional models, or cycle through the classes. */
  classLabel: number | null;
  seed: number;
  sigma: 'beta' | 'posterior';
  /** What the network predicts (the job's diffusion.prediction). */
  prediction: Prediction;
  /** The network also outputs its variance (diffusion.learn_sigma). */
  learnSigma?: boolean;
  /** The continuous-time process of an sde or edm model (continuous.ts `processOf`); absent = DDPM. */
  process?: ContinuousProcess | null;
  clip: boolean;
  /** Examples per model call. */
  chunk: number;
  /** Global index of the first sample (0): a part of a larger set, as the workers of an evaluation draw it. */
  first?: number;
  onProgress?: (done: number, total: number) => void;
}

/** The sampler settings of a request (unset keys take `DEFAULT_SETTINGS`). */
export function settingsOf(req: SampleRequest): SamplerSettings {
  const d = DEFAULT_SETTINGS;
  return {
    steps: req.steps,
    eta: req.eta,
    sigma: req.sigma,
    discretization: req.discretization ?? d.discretization,
    rho: req.rho ?? d.rho,
    churn: req.churn ?? d.churn,
    churnSigmaMin: req.churnSigmaMin ?? d.churnSigmaMin,
    churnSigmaMax: req.churnSigmaMax ?? d.churnSigmaMax,
    churnNoise: req.churnNoise ?? d.churnNoise,
    snr: req.snr ?? d.snr,
    correctorSteps: req.correctorSteps ?? d.correctorSteps,
    tolerance: req.tolerance ?? d.tolerance,
  };
}

/** The sampler settings of a job's `sample` section (T: its timesteps; DDIM's steps are capped at T). */
export function configSettings(sc: SampleConfig, T: number): SamplerSettings {
  return {
    ...DEFAULT_SETTINGS,
    steps: sc.sampler === 'ddim' ? Math.min(sc.steps, T) : sc.steps,
    eta: sc.eta,
    discretization: sc.discretization,
    rho: sc.rho,
    churn: sc.churn,
    churnSigmaMin: sc.churn_sigma_min,
    churnSigmaMax: sc.churn_sigma_max ?? Infinity,
    churnNoise: sc.churn_noise,
    snr: sc.snr,
    correctorSteps: sc.corrector_steps,
    tolerance: sc.tolerance,
  };
}

/** The σ-space model (with its discrete view) of a network on a discrete VP schedule, for a chunk. */
export function chunkModel(
  model: Denoiser,
  params: Params,
  s: Schedule,
  req: Pick<SampleRequest, 'guidance' | 'classLabel' | 'prediction' | 'learnSigma' | 'clip' | 'process'>,
  start: number,
  n: number,
): SigmaModel {
  const K = model.numClasses;
  const learnSigma = req.learnSigma ?? false;
  let f: ModelFn;
  let g: ModelAtFn;
  if (K === 0) {
    f = (x, t) =>
      tf.tidy(() => model.apply(params, x, tf.fill([x.shape[0] ?? 0], t, 'float32') as tf.Tensor1D, null));
    g = (x, t) => tf.tidy(() => model.apply(params, x, tf.tensor1d(t, 'float32'), null));
  } else {
    const labels = new Int32Array(n);
    for (let i = 0; i < n; i++) labels[i] = req.classLabel ?? (start + i) % K;
    f = guidedOutput(
      (x, t, y) => model.apply(params, x, tf.fill([x.shape[0] ?? 0], t, 'float32') as tf.Tensor1D, y),
      labels,
      K,
      req.guidance,
      learnSigma,
    );
    g = guidedOutputAt((x, t, y) => model.apply(params, x, t, y), labels, K, req.guidance, learnSigma);
  }
  const proc = req.process ?? null;
  if (proc) {
    return continuousSigmaModel({
      sigmaMin: proc.sigmaMin,
      sigmaMax: proc.sigmaMax,
      sigmaAt: (u) => proc.sigmaAt(u),
      priorStd: proc.priorStd,
      denoise: (x, sigma, rows) =>
        tf.tidy(() => {
          const c = coefsAt(proc, sigma);
          const out = g(tf.mul(x, perExample(c.cIn, x.rank)), c.time, rows);
          const x0 = continuousDenoised(proc, req.prediction, x, out, sigma);
          return req.clip ? tf.clipByValue(x0, -1, 1) : x0;
        }),
    });
  }
  return vpSigmaModel({
    schedule: s,
    prediction: req.prediction,
    net: g,
    learnSigma,
    clip: req.clip,
    discrete: denoiserFor(req.prediction, s, f, learnSigma),
  });
}

/** Samples ([count, ...dataShape] row-major) and model evaluations per sample. */
export interface SampleSet {
  samples: Float32Array;
  nfe: number;
}

/** Draws `count` samples with the request's sampler and reports its NFE per sample. */
export function sampleSet(model: Denoiser, params: Params, s: Schedule, req: SampleRequest): SampleSet {
  const size = model.dataShape.reduce((a, b) => a * b, 1);
  const out = new Float32Array(req.count * size);
  const K = model.numClasses;
  if (req.classLabel !== null && (K === 0 || req.classLabel < 0 || req.classLabel >= K)) {
    throw new Error(
      K === 0 ? '--class: the model is unconditional' : `--class ${req.classLabel} is outside 0…${K - 1}`,
    );
  }
  if (req.guidance !== 0 && K === 0) throw new Error('--guidance: the model is unconditional');
  if (!(req.chunk >= 1)) throw new Error(`--chunk must be ≥ 1, got ${req.chunk}`);
  const sampler = samplerNamed(req.sampler);
  const settings = settingsOf(req);
  const chunks = Math.ceil(req.count / req.chunk);
  const first = req.first ?? 0;
  let nfeSum = 0;
  for (let c = 0; c < chunks; c++) {
    const start = c * req.chunk;
    const n = Math.min(req.chunk, req.count - start);
    // Noise and class labels follow the global index, so a part equals the same rows of the whole.
    const m = chunkModel(model, params, s, req, first + start, n);
    const { x, nfe } = sampler.run(m, [n, ...model.dataShape], {
      seed: req.seed,
      indexOffset: first + start,
      clip: req.clip,
      settings,
      // Progress over the whole set: each chunk is one slice of `chunks`.
      onStep: (d, t) => req.onProgress?.(c * t + d, chunks * t),
    });
    nfeSum += nfe * n;
    out.set(x.dataSync(), start * size);
    x.dispose();
  }
  return { samples: out, nfe: req.count === 0 ? 0 : nfeSum / req.count };
}

/** Draws `count` samples: returns [count, ...dataShape] row-major. */
export function drawSamples(model: Denoiser, params: Params, s: Schedule, req: SampleRequest): Float32Array {
  return sampleSet(model, params, s, req).samples;
}
