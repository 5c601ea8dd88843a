/** DDIM (Song et al. 2021): deterministic or η-stochastic sampling over a strided subset of timesteps. */
import * as tf from '@tensorflow/tfjs';
import type { Schedule } from '../diffusion/schedule.js';
import { initialNoise, stepNoise, type SampleOptions } from './noise.js';
import type { DenoiseFn } from './guidance.js';
import { epsFromX0 } from '../diffusion/process.js';
import { scheduleSigmas } from '../diffusion/sigmas.js';
import { discreteTimesteps, stridedTimesteps } from './discretization.js';
import type { Sampler, SamplerSettings } from './sampler.js';

export { stridedTimesteps };

/**
 * DDIM sampling (Song et al. 2021, eq. 12) over a strided subset of timesteps:
 * x_prev = √ᾱ_prev x̂₀ + √(1 − ᾱ_prev − σ²) ε̂ + σ z, σ = η √((1−ᾱ_prev)/(1−ᾱ_t)) √(1 − ᾱ_t/ᾱ_prev).
 */
export function ddimSample(
  s: Schedule,
  denoise: DenoiseFn,
  shape: number[],
  opts: SampleOptions & { steps: number; eta: number; timesteps?: number[] },
): tf.Tensor {
  // Descending timesteps; `steps` strided ones unless given.
  const seq = opts.timesteps ?? stridedTimesteps(s.T, opts.steps);
  let x = initialNoise(shape, opts);
  const B = shape[0] ?? 0;
  seq.forEach((t, k) => {
    const prev = seq[k + 1];
    const next = tf.tidy(() => {
      const ts = new Array<number>(B).fill(t);
      let { eps: e, x0 } = denoise(x, t);
      if (opts.clip) {
        x0 = tf.clipByValue(x0, -1, 1);
        e = epsFromX0(s, x, ts, x0);
      }
      const a = s.alphasCumprod[t] as number;
      const ap = prev === undefined ? 1 : (s.alphasCumprod[prev] as number);
      const sigma = opts.eta * Math.sqrt((1 - ap) / (1 - a)) * Math.sqrt(1 - a / ap);
      const dir = Math.sqrt(Math.max(1 - ap - sigma * sigma, 0));
      let out = tf.add(tf.mul(Math.sqrt(ap), x0), tf.mul(dir, e));
      if (sigma > 0 && prev !== undefined) out = tf.add(out, tf.mul(sigma, stepNoise(x, k, opts)));
      return out;
    });
    x.dispose();
    x = next;
    opts.onStep?.(k + 1, seq.length);
  });
  return x;
}

/** DDIM's timesteps for `settings` on schedule `s` (auto = uniform = strided). */
export function ddimTimesteps(s: Schedule, settings: SamplerSettings): number[] {
  const d = settings.discretization === 'auto' ? 'uniform' : settings.discretization;
  return discreteTimesteps(d, settings.steps, s.T, scheduleSigmas(s), settings.rho);
}

/** DDIM on the registry's interface: the model's discrete view, one evaluation per timestep. */
export const ddimSampler: Sampler = {
  name: 'ddim',
  title: 'DDIM (Song et al. 2021a) on training timesteps; η = 0 deterministic',
  stochastic: true,
  defaultDiscretization: 'uniform',
  uses: ['steps', 'eta', 'discretization', 'rho'],
  nfe: (st, m) => (m.discrete ? ddimTimesteps(m.discrete.schedule, st).length : null),
  run(model, shape, o) {
    if (!model.discrete) throw new Error('sample.sampler: ddim needs a model trained on discrete timesteps');
    const seq = ddimTimesteps(model.discrete.schedule, o.settings);
    const x = ddimSample(model.discrete.schedule, model.discrete.denoise, shape, {
      ...o,
      steps: seq.length,
      eta: o.settings.eta,
      timesteps: seq,
    });
    return { x, nfe: seq.length };
  },
};
