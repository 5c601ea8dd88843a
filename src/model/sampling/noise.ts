/**
 * Options every sampler takes, and its noise: x_T and the noise of each step come from counter
 * streams keyed by (seed, step, example index), so a sample does not depend on the batch split.
 */
import * as tf from '@tensorflow/tfjs';
import { Purpose, noiseFor } from '../rng.js';

export interface SampleOptions {
  seed: number;
  /** Index of the first example of this batch in the whole sample set (keys its noise streams). */
  indexOffset?: number;
  /** Clip x̂₀ to [-1, 1] (images). */
  clip?: boolean;
  /** Called after each denoising step with (done, total). */
  onStep?: (done: number, total: number) => void;
}

/** x at σ_max as standard normals [B, …]: draw 0 of each sample index's stream. */
export function initialNoise(shape: number[], opts: SampleOptions): tf.Tensor {
  const [n, ...rest] = shape;
  const size = rest.reduce((a, b) => a * b, 1);
  return tf.tensor(noiseFor(opts.seed, 0, opts.indexOffset ?? 0, n ?? 0, size, Purpose.sampleNoise), shape);
}

/** Standard normals shaped like x ([B, …]): draw 1 + k of each sample index's stream. */
export function stepNoise(x: tf.Tensor, k: number, opts: SampleOptions): tf.Tensor {
  const [n, ...rest] = x.shape;
  const size = rest.reduce((a, b) => a * b, 1);
  return tf.tensor(
    noiseFor(opts.seed, 1 + k, opts.indexOffset ?? 0, n ?? 0, size, Purpose.sampleNoise),
    x.shape,
  );
}
