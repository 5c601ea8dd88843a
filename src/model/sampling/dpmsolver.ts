/**
 * DPM-Solver++(2M) (Lu et al. 2022, Algorithm 2), the multistep second-order solver of the
 * probability-flow ODE in data prediction, in σ terms (α = 1, λ = −log σ), as k-diffusion's
 * `sample_dpmpp_2m`: with h = λ_{i+1} − λ_i and r = h_{i−1}/h,
 *   D' = (1 + 1/(2r)) D_i − 1/(2r) D_{i−1},   x_{i+1} = (σ_{i+1}/σ_i) x_i − (e^{−h} − 1) D'.
 * The first step is first order (DPM-Solver++1 = DDIM), and so is the last, to σ = 0 (x = D_{N−1}).
 */
import * as tf from '@tensorflow/tfjs';
import { levels, walkGrid, type Sampler, type SamplerRun } from './sampler.js';
import { stepNoise } from './noise.js';

/** The second-order data estimate D' of the multistep update (r = h_prev/h). */
export function multistepDenoised(d: tf.Tensor, dPrev: tf.Tensor, r: number): tf.Tensor {
  return tf.sub(tf.mul(1 + 1 / (2 * r), d), tf.mul(1 / (2 * r), dPrev));
}

/**
 * The loop both forms of DPM-Solver++(2M) share: D at each level, the previous D kept for the
 * multistep term, the step to σ = 0 a plain x = D. `update` gets x, D_i, D_{i−1} (null at the first
 * step), σ_i, σ_{i+1}, h = log(σ_i/σ_{i+1}), the previous h and the step index.
 */
function multistep(
  update: (
    x: tf.Tensor,
    d: tf.Tensor,
    old: tf.Tensor | null,
    s: number,
    sn: number,
    h: number,
    hLast: number,
    i: number,
    o: SamplerRun,
  ) => tf.Tensor,
): Sampler['run'] {
  return (model, shape, o) => {
    const B = shape[0] ?? 0;
    // D of the previous level, kept across steps.
    let prev: tf.Tensor | null = null;
    let hLast = 0;
    const { x, steps } = walkGrid(model, shape, o, 'karras', (x, s, sn, i) => {
      const d = model.denoise(x, levels(B, s));
      const old = prev;
      prev = tf.keep(d);
      let next: tf.Tensor;
      if (sn === 0) next = tf.clone(d);
      else {
        const h = Math.log(s / sn);
        next = update(x, d, old, s, sn, h, hLast, i, o);
        hLast = h;
      }
      old?.dispose();
      return next;
    });
    (prev as tf.Tensor | null)?.dispose();
    return { x, nfe: steps };
  };
}

/** `dpmpp-2m`: N steps, N evaluations, karras levels by default. */
export const dpmpp2mSampler: Sampler = {
  name: 'dpmpp-2m',
  title: 'DPM-Solver++(2M) (Lu et al. 2022), multistep second order, data prediction',
  stochastic: false,
  defaultDiscretization: 'karras',
  uses: ['steps', 'discretization', 'rho'],
  nfe: (st) => st.steps,
  run: multistep((x, d, old, s, sn, h, hLast) => {
    const dd = old === null ? d : multistepDenoised(d, old, hLast / h);
    return tf.sub(tf.mul(sn / s, x), tf.mul(Math.expm1(-h), dd));
  }),
};

/**
 * `dpmpp-2m-sde`: DPM-Solver++(2M) for the reverse SDE (Lu et al. 2022, §5; k-diffusion's
 * `sample_dpmpp_2m_sde` with η = 1 and the midpoint correction): with h = λ_{i+1} − λ_i,
 *   x_{i+1} = (σ_{i+1}/σ_i)e^{−h} x_i + (1 − e^{−2h}) D_i + ½(1 − e^{−2h})(D_i − D_{i−1})/r
 *             + σ_{i+1}√(1 − e^{−2h})·z,
 * N steps, N evaluations. Fresh noise each step corrects what the model's error put off the data,
 * which is why it keeps the quality of ancestral DDPM where the deterministic 2M loses it.
 */
export const dpmpp2mSdeSampler: Sampler = {
  name: 'dpmpp-2m-sde',
  title: 'DPM-Solver++(2M) SDE (Lu et al. 2022), η = 1, midpoint correction',
  stochastic: true,
  defaultDiscretization: 'karras',
  uses: ['steps', 'discretization', 'rho'],
  nfe: (st) => st.steps,
  run: multistep((x, d, old, s, sn, h, hLast, i, o) => {
    // 1 − e^{−2h}: the SDE's η = 1 doubles the exponent of the ODE's 1 − e^{−h}.
    const a = -Math.expm1(-2 * h);
    let next = tf.add(tf.mul((sn / s) * Math.exp(-h), x), tf.mul(a, d));
    if (old !== null) next = tf.add(next, tf.mul((0.5 * a * h) / hLast, tf.sub(d, old)));
    return tf.add(next, tf.mul(sn * Math.sqrt(a), stepNoise(x, i, o)));
  }),
};
