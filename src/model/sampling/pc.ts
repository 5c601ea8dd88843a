/**
 * Predictor–corrector sampling (Song et al. 2021b, Algorithms 2 and 4-5): at each level σ_i,
 * M Langevin corrector steps x ← x + ε ∇log p(x; σ_i) + √(2ε) z, then the reverse-diffusion
 * predictor x ← x + (σ_i² − σ_{i+1}²) ∇log p + √(σ_i² − σ_{i+1}²) z (the last predictor step,
 * to σ = 0, is x̂₀ = D(x; σ_i) with no noise, as score_sde's `denoise`).
 *
 * The corrector's step is ε = 2(r σ_i)² for signal-to-noise ratio r. Song et al. set
 * ε = 2(r ‖z‖/‖∇log p‖)² with ‖·‖ averaged over the batch, which makes a sample depend on its
 * batch; ‖z‖ ≈ √d and ‖∇log p‖ ≈ √d/σ for data narrow against σ give this batch-free form, the
 * annealed Langevin step ε ∝ σ² of Song & Ermon 2019.
 */
import * as tf from '@tensorflow/tfjs';
import { stepNoise } from './noise.js';
import { levels, walkGrid, type Sampler } from './sampler.js';
import { scoreOf } from './sde.js';

/** Langevin step size ε = 2(r σ)² at level σ for signal-to-noise ratio r. */
export function langevinStep(snr: number, sigma: number): number {
  return 2 * (snr * sigma) ** 2;
}

/** `pc-langevin`: N levels, M corrector steps each, N(1 + M) evaluations. */
export const pcLangevinSampler: Sampler = {
  name: 'pc-langevin',
  title: 'predictor–corrector: reverse-diffusion predictor + Langevin corrector (snr r)',
  stochastic: true,
  defaultDiscretization: 'uniform',
  uses: ['steps', 'discretization', 'rho', 'snr', 'correctorSteps'],
  nfe: (st) => st.steps * (1 + st.correctorSteps),
  run(model, shape, o) {
    const { snr, correctorSteps: M } = o.settings;
    if (!(snr > 0)) throw new Error(`sample.snr must be > 0, got ${snr}`);
    if (!Number.isInteger(M) || M < 0)
      throw new Error(`sample.corrector_steps must be an integer ≥ 0, got ${M}`);
    const B = shape[0] ?? 0;
    const { x, steps } = walkGrid(model, shape, o, 'uniform', (x0, s, sn, i) => {
      // Noise draws of level i: M corrector draws, then the predictor's.
      const draw = i * (M + 1);
      const eps = langevinStep(snr, s);
      let x = x0;
      for (let m = 0; m < M; m++) {
        const g = scoreOf(x, model.denoise(x, levels(B, s)), s);
        x = tf.add(tf.add(x, tf.mul(eps, g)), tf.mul(Math.sqrt(2 * eps), stepNoise(x, draw + m, o)));
      }
      const d0 = model.denoise(x, levels(B, s));
      if (sn === 0) return d0;
      const dv = s * s - sn * sn;
      return tf.add(
        tf.add(x, tf.mul(dv, scoreOf(x, d0, s))),
        tf.mul(Math.sqrt(dv), stepNoise(x, draw + M, o)),
      );
    });
    return { x, nfe: steps * (1 + M) };
  },
};
