/**
 * Drawing samples from a trained denoiser: chunks of a sample set, DDPM or DDIM, optional
 * classifier-free guidance. Sample n's noise depends only on (seed, n), so the result does
 * not depend on the chunk size.
 */
import * as tf from '@tensorflow/tfjs';
import type { Denoiser } from '../nets/denoiser.js';
import type { Params } from '../params.js';
import type { Schedule } from '../diffusion/schedule.js';
import { ddimSample } from './ddim.js';
import { ddpmSample } from './ddpm.js';
import { denoiserFor, guidedOutput, type ModelFn } from './guidance.js';
import type { Prediction } from '../diffusion/prediction.js';

export interface SampleRequest {
  count: number;
  sampler: 'ddpm' | 'ddim';
  /** DDIM steps (ignored by DDPM, which always runs all T steps). */
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
  clip: boolean;
  /** Examples per model call. */
  chunk: number;
  onProgress?: (done: number, total: number) => void;
}

/** Draws `count` samples: returns [count, ...dataShape] row-major. */
export function drawSamples(model: Denoiser, params: Params, s: Schedule, req: SampleRequest): Float32Array {
  const size = model.dataShape.reduce((a, b) => a * b, 1);
  const out = new Float32Array(req.count * size);
  const K = model.numClasses;
  if (req.classLabel !== null && (K === 0 || req.classLabel < 0 || req.classLabel >= K)) {
    throw new Error(
      K === 0 ? '--class: the model is unconditional' : `--class ${req.classLabel} is outside 0…${K - 1}`,
    );
  }
  if (req.guidance !== 0 && K === 0) throw new Error('--guidance: the model is unconditional');
  const perStep = req.sampler === 'ddpm' ? s.T : Math.min(req.steps, s.T);
  const total = Math.ceil(req.count / req.chunk) * perStep;
  let done = 0;
  for (let start = 0; start < req.count; start += req.chunk) {
    const n = Math.min(req.chunk, req.count - start);
    const shape = [n, ...model.dataShape];
    let f: ModelFn;
    if (K === 0) {
      f = (x, t) =>
        tf.tidy(() => model.apply(params, x, tf.fill([x.shape[0] ?? 0], t, 'float32') as tf.Tensor1D, null));
    } else {
      const labels = new Int32Array(n);
      for (let i = 0; i < n; i++) labels[i] = req.classLabel ?? (start + i) % K;
      f = guidedOutput(
        (x, t, y) => model.apply(params, x, tf.fill([x.shape[0] ?? 0], t, 'float32') as tf.Tensor1D, y),
        labels,
        K,
        req.guidance,
        req.learnSigma ?? false,
      );
    }
    const denoise = denoiserFor(req.prediction, s, f, req.learnSigma ?? false);
    const common = {
      seed: req.seed,
      indexOffset: start,
      clip: req.clip,
      onStep: () => req.onProgress?.(++done, total),
    };
    const x =
      req.sampler === 'ddpm'
        ? ddpmSample(s, denoise, shape, { ...common, sigma: req.sigma })
        : ddimSample(s, denoise, shape, { ...common, steps: req.steps, eta: req.eta });
    out.set(x.dataSync(), start * size);
    x.dispose();
  }
  return out;
}
