/**
 * Adapters from a trained network to the `SigmaModel` samplers use. A discrete VP model (every
 * model ringdiff trains today) is asked about x_t = √ᾱ·x at the fractional timestep of σ
 * (k-diffusion's DiscreteSchedule: log σ interpolated over the schedule's σ_t), and its raw output
 * — ε, x₀ or v — becomes x̂₀ with coefficients of σ itself. A VE or EDM model (later: `diffusion.sde`)
 * is another function here: its own σ range, c_in/c_skip/c_out, and no discrete view.
 */
import * as tf from '@tensorflow/tfjs';
import type { Prediction } from '../diffusion/prediction.js';
import type { Schedule } from '../diffusion/schedule.js';
import { scheduleSigmas, sigmaAtTimestep, timestepAtSigma } from '../diffusion/sigmas.js';
import type { DenoiseFn, ModelAtFn } from './guidance.js';
import type { SigmaModel } from './sampler.js';

/** Per-example scalars as a [B, 1, …, 1] float32 tensor of rank `rank`. */
export function perExample(v: ArrayLike<number>, rank: number): tf.Tensor {
  return tf.tensor(Float32Array.from(v), [v.length, ...new Array<number>(rank - 1).fill(1)], 'float32');
}

/**
 * x̂₀ from a VP network's raw output at x_t = a·x, a = √ᾱ = 1/√(1+σ²), b = √(1−ᾱ) = σa; x is the
 * σ-space input. Tensors [B, …]; a, b, sigma: [B, 1, …].
 */
export function vpX0(
  pred: Prediction,
  x: tf.Tensor,
  out: tf.Tensor,
  a: tf.Tensor,
  b: tf.Tensor,
  sigma: tf.Tensor,
): tf.Tensor {
  return tf.tidy(() => {
    if (pred === 'eps') return tf.sub(x, tf.mul(sigma, out)); // (x_t − b ε̂)/a = x − σ ε̂
    if (pred === 'x0') return tf.clone(out);
    return tf.sub(tf.mul(tf.mul(a, a), x), tf.mul(b, out)); // a x_t − b v̂
  });
}

/** The σ-space view of a network trained on the discrete VP schedule `schedule`. */
export function vpSigmaModel(o: {
  schedule: Schedule;
  prediction: Prediction;
  /** Raw output at per-example fractional timesteps (guidance applied). */
  net: ModelAtFn;
  /** The output ends with a learned variance's channels (dropped here). */
  learnSigma: boolean;
  /** Clip x̂₀ to [−1, 1] (images). */
  clip: boolean;
  /** The same network at integer timesteps, for DDPM and DDIM (null: those samplers are refused). */
  discrete: DenoiseFn | null;
}): SigmaModel {
  const sigmas = scheduleSigmas(o.schedule);
  const T = sigmas.length;
  const sigmaMax = sigmas[T - 1] as number;
  return {
    sigmaMin: sigmas[0] as number,
    sigmaMax,
    timesteps: T,
    priorStd: Math.sqrt(1 + sigmaMax * sigmaMax),
    sigmaAt: (u) => sigmaAtTimestep(sigmas, u * (T - 1)),
    discrete: o.discrete ? { schedule: o.schedule, denoise: o.discrete } : null,
    denoise: (x, sigma, rows) =>
      tf.tidy(() => {
        const B = sigma.length;
        const t = new Float32Array(B);
        const s = new Float64Array(B);
        for (let i = 0; i < B; i++) {
          // The network knows σ_0…σ_{T−1} only; outside, both its timestep and the scaling use the clamp.
          s[i] = Math.min(Math.max(sigma[i] as number, sigmas[0] as number), sigmaMax);
          t[i] = timestepAtSigma(sigmas, s[i] as number);
        }
        const r = x.rank;
        const a = perExample(
          s.map((v) => 1 / Math.sqrt(1 + v * v)),
          r,
        );
        const b = perExample(
          s.map((v) => v / Math.sqrt(1 + v * v)),
          r,
        );
        let out = o.net(tf.mul(x, a), t, rows);
        if (o.learnSigma) out = (tf.split(out, 2, out.rank - 1) as [tf.Tensor, tf.Tensor])[0];
        const x0 = vpX0(o.prediction, x, out, a, b, perExample(s, r));
        return o.clip ? tf.clipByValue(x0, -1, 1) : x0;
      }),
  };
}

/**
 * The σ-space view of a continuous-time model that already is a denoiser D(x; σ) over
 * [sigmaMin, sigmaMax] — a VE/VP/sub-VP SDE or an EDM model (src/model/diffusion/continuous.ts)
 * with its preconditioning inside `denoise`. It has no discrete view: DDPM and DDIM refuse it.
 * Without `sigmaAt` the time grid is geometric in σ (VE's σ(u) = σ_min (σ_max/σ_min)^u); without
 * `priorStd`, x at σ_max is N(0, σ_max²), as for VE/EDM.
 */
export function continuousSigmaModel(o: {
  denoise: (x: tf.Tensor, sigma: ArrayLike<number>, rows?: ArrayLike<number>) => tf.Tensor;
  sigmaMin: number;
  sigmaMax: number;
  sigmaAt?: (u: number) => number;
  priorStd?: number;
}): SigmaModel {
  if (!(o.sigmaMin > 0 && o.sigmaMax > o.sigmaMin))
    throw new Error(`σ range must satisfy 0 < σ_min < σ_max, got ${o.sigmaMin}…${o.sigmaMax}`);
  const { sigmaMin, sigmaMax } = o;
  return {
    sigmaMin,
    sigmaMax,
    timesteps: null,
    priorStd: o.priorStd ?? sigmaMax,
    sigmaAt: o.sigmaAt ?? ((u) => sigmaMin * (sigmaMax / sigmaMin) ** u),
    discrete: null,
    denoise: (x, sigma, rows) =>
      tf.tidy(() =>
        o.denoise(
          x,
          Array.from(sigma, (v) => Math.min(Math.max(v, sigmaMin), sigmaMax)),
          rows,
        ),
      ),
  };
}

/** A SigmaModel that counts calls to `denoise` (and to the discrete view): for tests and benches. */
export function countingModel(m: SigmaModel): { model: SigmaModel; calls: () => number } {
  let n = 0;
  const discrete = m.discrete;
  const model: SigmaModel = {
    ...m,
    sigmaAt: (u) => m.sigmaAt(u),
    denoise: (x, s, rows) => {
      n++;
      return m.denoise(x, s, rows);
    },
    discrete: discrete
      ? {
          schedule: discrete.schedule,
          denoise: (x, t) => {
            n++;
            return discrete.denoise(x, t);
          },
        }
      : null,
  };
  return { model, calls: () => n };
}
