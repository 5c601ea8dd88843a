/**
 * What every denoiser offers. Models are functions of explicit parameters (no tf.Variable),
 * so gradients are taken with tf.valueAndGrads over the parameter tensors and the optimizer
 * produces new tensors: the same code runs on every backend and state is easy to checkpoint.
 */
import type * as tf from '@tensorflow/tfjs';
import type { Params } from '../params.js';

export interface Denoiser {
  /** Shape of one example in data space: [2] for 2-D data, [H, W, C] for images. */
  readonly dataShape: readonly number[];
  /** Number of real classes (0 = unconditional). Label `numClasses` is the null class. */
  readonly numClasses: number;
  /** Fresh parameters; a pure function of `seed` (each tensor drawn from its own name-keyed stream). */
  init(seed: number): Params;
  /**
   * ε prediction. x: [B, ...dataShape]; t: [B] float32 timesteps in 0…T−1;
   * y: [B] int32 labels in 0…numClasses (null class = numClasses), or null when unconditional.
   * Returns [B, ...dataShape], with the last axis doubled for a learned variance (the prediction's
   * channels first, then the variance interpolation v̂ ∈ [−1, 1]).
   */
  apply(params: Params, x: tf.Tensor, t: tf.Tensor1D, y: tf.Tensor1D | null, opts?: ApplyOptions): tf.Tensor;
}

/** How a forward pass runs; absent = evaluation (sampling, evaluation metrics). */
export interface ApplyOptions {
  /** Training: the source of dropout masks (models without dropout never call it). */
  readonly dropout?: DropoutMasks;
}

/**
 * Dropout masks keyed by example, not by batch: each example draws from its own stream, layer
 * after layer in forward order, so a mask does not depend on how a batch is split (world-size
 * invariance, micro-batching, exact resume).
 */
export interface DropoutMasks {
  /** Mask for the next dropout layer: [B, ...shape] of 0 or 1/(1 − rate); `shape` is per example. */
  next(shape: readonly number[], rate: number): tf.Tensor;
}
