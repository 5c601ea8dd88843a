/**
 * DPM-Solver++(2M) (Lu et al. 2022, Algorithm 2), the multistep second-order solver of the
 * probability-flow ODE in data prediction, in σ terms (α = 1, λ = −log σ), as k-diffusion's
 * `sample_dpmpp_2m`: with h = λ_{i+1} − λ_i and r = h_{i−1}/h,
 *   D' = (1 + 1/(2r)) D_i − 1/(2r) D_{i−1},   x_{i+1} = (σ_{i+1}/σ_i) x_i − (e^{−h} − 1) D'.
 * The first step is first order (DPM-Solver++1 = DDIM), and so is the last, to σ = 0 (x = D_{N−1}).
 */
import * as tf from '@tensorflow/tfjs';
import { levels, walkGrid, type Sampler } from './sampler.js';

/** The second-order data estimate D' of the multistep update (r = h_prev/h). */
export function multistepDenoised(d: tf.Tensor, dPrev: tf.Tensor, r: number): tf.Tensor {
  return tf.sub(tf.mul(1 + 1 / (2 * r), d), tf.mul(1 / (2 * r), dPrev));
}

/** `dpmpp-2m`: N steps, N evaluations, karras levels by default. */
export const dpmpp2mSampler: Sampler = {
  name: 'dpmpp-2m',
  title: 'DPM-Solver++(2M) (Lu et al. 2022), multistep second order, data prediction',
  stochastic: false,
  defaultDiscretization: 'karras',
  uses: ['steps', 'discretization', 'rho'],
  nfe: (st) => st.steps,
  run(model, shape, o) {
    const B = shape[0] ?? 0;
    // D of the previous level, kept across steps.
    let prev: tf.Tensor | null = null;
    const { x, steps } = walkGrid(model, shape, o, 'karras', (x, s, sn, i, grid) => {
      const d = model.denoise(x, levels(B, s));
      const old = prev;
      prev = tf.keep(d);
      let next: tf.Tensor;
      if (sn === 0) next = tf.clone(d);
      else {
        const h = Math.log(s / sn);
        const dd = old === null ? d : multistepDenoised(d, old, Math.log((grid[i - 1] as number) / s) / h);
        next = tf.sub(tf.mul(sn / s, x), tf.mul(Math.expm1(-h), dd));
      }
      old?.dispose();
      return next;
    });
    (prev as tf.Tensor | null)?.dispose();
    return { x, nfe: steps };
  },
};
