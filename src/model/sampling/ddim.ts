/** DDIM (Song et al. 2021): deterministic or η-stochastic sampling over a strided subset of timesteps. */
import * as tf from '@tensorflow/tfjs';
import type { Schedule } from '../diffusion/schedule.js';
import { initialNoise, stepNoise, type SampleOptions } from './noise.js';
import type { DenoiseFn } from './guidance.js';
import { epsFromX0 } from '../diffusion/process.js';

/** K timesteps spread evenly over 0…T−1, descending, always including T−1 and 0. */
export function stridedTimesteps(T: number, K: number): number[] {
  if (!Number.isInteger(K) || K < 1 || K > T)
    throw new Error(`sampling steps must be an integer in 1…${T}, got ${K}`);
  if (K === 1) return [T - 1];
  const set = new Set<number>();
  for (let i = 0; i < K; i++) set.add(Math.round((i * (T - 1)) / (K - 1)));
  return [...set].sort((a, b) => b - a);
}

/**
 * DDIM sampling (Song et al. 2021, eq. 12) over a strided subset of timesteps:
 * x_prev = √ᾱ_prev x̂₀ + √(1 − ᾱ_prev − σ²) ε̂ + σ z, σ = η √((1−ᾱ_prev)/(1−ᾱ_t)) √(1 − ᾱ_t/ᾱ_prev).
 */
export function ddimSample(
  s: Schedule,
  denoise: DenoiseFn,
  shape: number[],
  opts: SampleOptions & { steps: number; eta: number },
): tf.Tensor {
  const seq = stridedTimesteps(s.T, opts.steps);
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
