/**
 * Fused operations that a backend may offer as one kernel where the portable API needs a chain
 * of ops. Model code asks here and falls back to its own composition when the answer is null, so
 * it runs unchanged on every backend; only this module knows which backend has what.
 */
import * as tf from '@tensorflow/tfjs';
import { ADAM, CPU_NATIVE, EMA, GROUP_NORM, GROUP_NORM_GRAD, type AdamAttrs } from './native.js';

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

/**
 * One Adam/AdamW update of a parameter tensor as a single kernel: p, m, v, g → [p', m', v'],
 * identical bit for bit to the composition in src/model/train.ts. Null if the backend has none.
 */
export function fusedAdam():
  | ((
      p: tf.Tensor,
      m: tf.Tensor,
      v: tf.Tensor,
      g: tf.Tensor,
      a: AdamAttrs,
    ) => [tf.Tensor, tf.Tensor, tf.Tensor])
  | null {
  if (tf.getBackend() !== CPU_NATIVE) return null;
  return (p, m, v, g, a) =>
    tf.engine().runKernel(ADAM, { p, m, v, g }, a as unknown as tf.NamedAttrMap) as unknown as [
      tf.Tensor,
      tf.Tensor,
      tf.Tensor,
    ];
}

/** d·e + (1 − d)·w as a single kernel, identical to the composition; null if the backend has none. */
export function fusedEma(): ((e: tf.Tensor, w: tf.Tensor, decay: number) => tf.Tensor) | null {
  if (tf.getBackend() !== CPU_NATIVE) return null;
  return (e, w, decay) =>
    (tf.engine().runKernel(EMA, { e, w }, { decay }) as unknown as tf.Tensor[])[0] as tf.Tensor;
}

export type { AdamAttrs };
