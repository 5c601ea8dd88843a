/** DDPM ancestral sampling (Ho et al. 2020, Algorithm 2) over all T timesteps. */
import * as tf from '@tensorflow/tfjs';
import type { Schedule } from '../diffusion/schedule.js';
import { initialNoise, stepNoise, type SampleOptions } from './noise.js';
import type { DenoiseFn } from './guidance.js';
import { qPosterior } from '../diffusion/process.js';
import type { Sampler } from './sampler.js';

/**
 * DDPM ancestral sampling (Ho et al. 2020, Algorithm 2): x_T ~ N(0, I); for t = T−1…0,
 * x_{t−1} = μ̃(x̂₀, x_t) + σ_t z, z = 0 at the last step. Without clipping μ̃ equals
 * (x_t − β_t/√(1−ᾱ_t) ε̂)/√α_t exactly; with clipping x̂₀ is clipped first. σ_t² = β_t or β̃_t.
 */
export function ddpmSample(
  s: Schedule,
  denoise: DenoiseFn,
  shape: number[],
  opts: SampleOptions & { sigma: 'beta' | 'posterior' },
): tf.Tensor {
  let x = initialNoise(shape, opts);
  const B = shape[0] ?? 0;
  for (let t = s.T - 1; t >= 0; t--) {
    const next = tf.tidy(() => {
      const ts = new Array<number>(B).fill(t);
      const d = denoise(x, t);
      const x0 = opts.clip ? tf.clipByValue(d.x0, -1, 1) : d.x0;
      const { mean } = qPosterior(s, x0, x, ts);
      if (t === 0) return mean;
      // A learned variance (Nichol & Dhariwal 2021) replaces the fixed choice of σ².
      const sd = d.logVar
        ? tf.exp(tf.mul(0.5, d.logVar))
        : Math.sqrt(opts.sigma === 'beta' ? (s.betas[t] as number) : (s.posteriorVariance[t] as number));
      return tf.add(mean, tf.mul(sd, stepNoise(x, s.T - 1 - t, opts)));
    });
    x.dispose();
    x = next;
    opts.onStep?.(s.T - t, s.T);
  }
  return x;
}

/** DDPM on the registry's interface: the model's discrete view, all T timesteps. */
export const ddpmSampler: Sampler = {
  name: 'ddpm',
  title: 'DDPM ancestral sampling (Ho et al. 2020), all T training timesteps',
  stochastic: true,
  defaultDiscretization: null,
  uses: ['sigma'],
  nfe: (_st, m) => m.discrete?.schedule.T ?? null,
  run(model, shape, o) {
    if (!model.discrete) throw new Error('sample.sampler: ddpm needs a model trained on discrete timesteps');
    const { schedule, denoise } = model.discrete;
    return { x: ddpmSample(schedule, denoise, shape, { ...o, sigma: o.settings.sigma }), nfe: schedule.T };
  },
};
