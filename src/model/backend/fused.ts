/**
 * Fused operations that a backend may offer as one kernel where the portable API needs a chain
 * of ops. Model code asks here and falls back to its own composition when the answer is null, so
 * it runs unchanged on every backend; only this module knows which backend has what.
 */
import * as tf from '@tensorflow/tfjs';
import { CPU_NATIVE, GROUP_NORM, GROUP_NORM_GRAD } from './native.js';

/** GroupNorm (+ SiLU) forward and backward as single kernels. */
export interface FusedGroupNorm {
  /** x [B, H, W, C], γ, β [C] → y [B, H, W, C], μ and 1/√(σ² + ε) [B, groups]. */
  forward(x: tf.Tensor4D, gamma: tf.Tensor, beta: tf.Tensor): [tf.Tensor4D, tf.Tensor2D, tf.Tensor2D];
  /** The forward's inputs and statistics and dy (gradient of y) → [dx, dγ, dβ]. */
  backward(
    x: tf.Tensor4D,
    gamma: tf.Tensor,
    beta: tf.Tensor,
    mean: tf.Tensor2D,
    rstd: tf.Tensor2D,
    dy: tf.Tensor,
  ): [tf.Tensor4D, tf.Tensor, tf.Tensor];
}

/** The active backend's fused GroupNorm (then SiLU when `silu`), or null if it has none. */
export function fusedGroupNorm(groups: number, eps: number, silu: boolean): FusedGroupNorm | null {
  if (tf.getBackend() !== CPU_NATIVE) return null;
  const attrs = { groups, eps, silu } as unknown as tf.NamedAttrMap;
  return {
    forward: (x, gamma, beta) =>
      tf.engine().runKernel(GROUP_NORM, { x, gamma, beta }, attrs) as unknown as [
        tf.Tensor4D,
        tf.Tensor2D,
        tf.Tensor2D,
      ],
    backward: (x, gamma, beta, mean, rstd, dy) =>
      tf.engine().runKernel(GROUP_NORM_GRAD, { x, gamma, beta, mean, rstd, dy }, attrs) as unknown as [
        tf.Tensor4D,
        tf.Tensor,
        tf.Tensor,
      ],
  };
}
