/**
 * Reverse-time SDE, Euler–Maruyama (Song et al. 2021b, eq. 6; Karras et al. 2022, eq. 6 with
 * σ(t) = t). In σ terms the forward process is dx = √(2σ) dw, so going down from σ to σ' < σ
 * x ← x + 2σ(σ − σ')·∇log p(x; σ) + √(2σ(σ − σ')) z, ∇log p = (D(x; σ) − x)/σ². The last step, to
 * σ = 0, is the denoising step x̂₀ = D(x; σ_{N−1}) with no noise (score_sde's `denoise`).
 */
import * as tf from '@tensorflow/tfjs';
import { stepNoise } from './noise.js';
import { levels, walkGrid, type Sampler } from './sampler.js';

/** Score ∇log p(x; σ) = (D − x)/σ² of the denoised value d0 of x. */
export function scoreOf(x: tf.Tensor, d0: tf.Tensor, sigma: number): tf.Tensor {
  return tf.div(tf.sub(d0, x), sigma * sigma);
}

/** `sde-euler`: N Euler–Maruyama steps in σ, N evaluations. */
export const sdeEulerSampler: Sampler = {
  name: 'sde-euler',
  title: 'reverse-time SDE, Euler–Maruyama in σ, final denoising step',
  stochastic: true,
  defaultDiscretization: 'uniform',
  uses: ['steps', 'discretization', 'rho'],
  nfe: (st) => st.steps,
  run(model, shape, o) {
    const B = shape[0] ?? 0;
    const { x, steps } = walkGrid(model, shape, o, 'uniform', (x, s, sn, i) => {
      const d0 = model.denoise(x, levels(B, s));
      if (sn === 0) return d0;
      const dt = 2 * s * (s - sn);
      return tf.add(tf.add(x, tf.mul(dt, scoreOf(x, d0, s))), tf.mul(Math.sqrt(dt), stepNoise(x, i, o)));
    });
    return { x, nfe: steps };
  },
};
