/**
 * The variational bound of a model over a held-out set (`ringdiff eval nll`), in bits per
 * dimension, with its standard error.
 *
 * The estimator. Each example i contributes b_i = L_T + L_0 + Σ_{k<K−1} n_k·L_{t_k}: the prior
 * term exactly (it needs no network), the decoder L_0 at t = 0 always, and for the T−1 KL terms
 * t = 1…T−1, split into K−1 contiguous strata (`strata`: n_k steps, narrow at small t), one
 * timestep t_k drawn uniformly from each stratum, its term weighted by the stratum size; each
 * evaluated term uses its own draw x_t ~ q(x_t|x₀). So E[b_i | x₀] is the bound of x₀ exactly
 * (stratified sampling is unbiased for the sum), K network calls per example; K = T has strata of
 * one step and is the full bound of Ho et al. (all T terms, independent noise per term, as
 * improved-diffusion's calc_bpd_loop). The reported number is the mean of b_i over the N examples
 * and its standard error sd(b_i)/√N covers the data, the noise and the timestep draws together.
 *
 * Determinism. Example i's timesteps come from stream (seed, 0, i, evalNoise) and its noise at t
 * from (seed, 1 + t, i, evalNoise): a pure function of (seed, example index), so any split of the
 * examples over batches or workers gives the same per-example terms, and `mergeParts` of the parts
 * gives the same sums (taken in index order).
 */
import * as tf from '@tensorflow/tfjs';
import {
  priorTerm,
  reverseLogVariance,
  stepTerms,
  type DecoderKind,
  type ReverseVariance,
} from '../model/diffusion/bound.js';
import { denoised, type Prediction } from '../model/diffusion/prediction.js';
import { qSample } from '../model/diffusion/process.js';
import type { Schedule } from '../model/diffusion/schedule.js';
import type { Denoiser } from '../model/nets/denoiser.js';
import type { Params } from '../model/params.js';
import { Purpose, stream } from '../model/rng.js';

/** A network and the process it was trained on. */
export interface BoundModel {
  readonly denoiser: Denoiser;
  readonly params: Params;
  readonly schedule: Schedule;
  readonly prediction: Prediction;
  /** The output carries variance channels (diffusion.learn_sigma). */
  readonly learnSigma: boolean;
  /** Clip x̂₀ to [−1, 1] (images with diffusion.clip_denoised, as when sampling). */
  readonly clip: boolean;
  /** Var(x₀|x_t) per element, [B, …] (the analytic model only; variance `optimal` needs it). */
  readonly x0Variance?: (xt: tf.Tensor, t: ArrayLike<number>, labels: ArrayLike<number> | null) => tf.Tensor;
}

/** How the bound is evaluated. */
export interface BoundSettings {
  readonly variance: ReverseVariance;
  readonly decoder: DecoderKind;
  /** K, network calls per example, 2…T (T: the full bound). */
  readonly timesteps: number;
  readonly seed: number;
  /** Examples per network call. */
  readonly batch: number;
}

/** One example's contribution, nats per dimension. */
export interface ExampleTerms {
  readonly index: number;
  readonly prior: number;
  readonly decoder: number;
  /** The stratified estimate of Σ_{t≥1} L_t. */
  readonly kl: number;
}

/** The result of a set of examples: additive over disjoint sets (mergeParts). */
export interface BoundPart {
  readonly examples: ExampleTerms[];
  /** Σ over the examples of stratum k's raw term L_{t_k} (nats per dimension), K−1 values. */
  readonly stratumSum: Float64Array;
}

/**
 * Start of each of the K−1 strata of t = 1…T−1, then T: K values, b_j = 1 + ⌊(T−1)(j/(K−1))³⌋
 * pushed apart so that every stratum has a step. Cubic, not even, spacing: the terms fall like
 * 1/t, so even strata put most of the variance in the first one (for N(0, ¼) data and K = 50 the
 * timestep draws' sd is 2.6 nats/dim with even strata, 0.03 with these).
 */
export function strata(T: number, K: number): Int32Array {
  if (!Number.isInteger(K) || K < 2 || K > T)
    throw new Error(`--timesteps must be an integer in 2…${T} (T) or all, got ${K}`);
  const b = new Int32Array(K);
  for (let j = 0; j < K; j++) {
    const cubic = 1 + Math.floor((T - 1) * (j / (K - 1)) ** 3);
    b[j] = Math.min(Math.max(cubic, j === 0 ? 1 : (b[j - 1] as number) + 1), T - (K - 1 - j));
  }
  return b;
}

/** Example `index`'s K−1 timesteps, one uniform draw per stratum of `bounds` (strata()). */
export function exampleTimesteps(seed: number, index: number, bounds: Int32Array): Int32Array {
  const s = stream(seed, 0, index, Purpose.evalNoise);
  return Int32Array.from({ length: bounds.length - 1 }, (_, k) => {
    const from = bounds[k] as number;
    const n = (bounds[k + 1] as number) - from;
    return n === 1 ? from : from + s.int(n);
  });
}

/** The forward noise of example `index` at timestep t (`size` standard normals). */
export function evalNoise(seed: number, index: number, t: number, size: number): Float32Array {
  return stream(seed, 1 + t, index, Purpose.evalNoise).normals(new Float32Array(size));
}

/**
 * The terms of examples `indices` (the unit of work): x0 [n × size] row-major in model space,
 * labels (n values, passed to the network as y) or null. `onProgress(calls done, calls)`.
 */
export function boundTerms(
  model: BoundModel,
  o: BoundSettings,
  x0: Float32Array,
  labels: Int32Array | null,
  indices: ArrayLike<number>,
  onProgress?: (done: number, total: number) => void,
): BoundPart {
  const { denoiser, schedule: s } = model;
  const shape = denoiser.dataShape;
  const size = shape.reduce((a, b) => a * b, 1);
  const n = indices.length;
  if (x0.length !== n * size) throw new Error(`boundTerms: ${x0.length} values for ${n} examples of ${size}`);
  if (!(Number.isInteger(o.batch) && o.batch >= 1)) throw new Error(`--batch must be ≥ 1, got ${o.batch}`);
  if (o.variance === 'learned' && !model.learnSigma)
    throw new Error('--variance learned: the model has no learned variance (diffusion.learn_sigma is false)');
  if (o.variance === 'optimal' && !model.x0Variance)
    throw new Error('--variance optimal: only the analytic model knows Var(x₀|x_t)');
  const bounds = strata(s.T, o.timesteps);
  const K = o.timesteps;
  const examples: ExampleTerms[] = [];
  const stratumSum = new Float64Array(K - 1);
  let done = 0;
  for (let start = 0; start < n; start += o.batch) {
    const b = Math.min(o.batch, n - start);
    const idx = Array.from({ length: b }, (_, i) => indices[start + i] as number);
    const draws = idx.map((i) => exampleTimesteps(o.seed, i, bounds));
    const x0T = tf.tensor(x0.subarray(start * size, (start + b) * size), [b, ...shape], 'float32');
    const y = labels ? labels.subarray(start, start + b) : null;
    const prior = tf.tidy(() => priorTerm(s, x0T).dataSync());
    const decoder = new Float64Array(b);
    const kl = new Float64Array(b);
    for (let slot = 0; slot < K; slot++) {
      const t = Int32Array.from(draws, (d) => (slot === 0 ? 0 : (d[slot - 1] as number)));
      const noise = new Float32Array(b * size);
      idx.forEach((ex, i) => noise.set(evalNoise(o.seed, ex, t[i] as number, size), i * size));
      const terms = tf.tidy(() => slotTerms(model, o, x0T, y, t, noise).dataSync());
      for (let i = 0; i < b; i++) {
        const v = terms[i] as number;
        if (slot === 0) decoder[i] = v;
        else {
          kl[i] = (kl[i] as number) + ((bounds[slot] as number) - (bounds[slot - 1] as number)) * v;
          stratumSum[slot - 1] = (stratumSum[slot - 1] as number) + v;
        }
      }
      done += b;
      onProgress?.(done, n * K);
    }
    x0T.dispose();
    idx.forEach((index, i) =>
      examples.push({ index, prior: prior[i] as number, decoder: decoder[i] as number, kl: kl[i] as number }),
    );
  }
  return { examples, stratumSum };
}

/** L_t of a batch at per-example timesteps t (nats per dimension, [B]); call inside tf.tidy. */
function slotTerms(
  model: BoundModel,
  o: BoundSettings,
  x0: tf.Tensor,
  labels: Int32Array | null,
  t: Int32Array,
  noise: Float32Array,
): tf.Tensor1D {
  const s = model.schedule;
  const xt = qSample(s, x0, t, tf.tensor(noise, x0.shape, 'float32'));
  const y = labels ? tf.tensor1d(labels, 'int32') : null;
  let out = model.denoiser.apply(model.params, xt, tf.tensor1d(Float32Array.from(t), 'float32'), y);
  let vRaw: tf.Tensor | undefined;
  if (model.learnSigma) [out, vRaw] = tf.split(out, 2, out.rank - 1) as [tf.Tensor, tf.Tensor];
  let x0Hat = denoised(model.prediction, s, xt, t, out).x0;
  if (model.clip) x0Hat = tf.clipByValue(x0Hat, -1, 1);
  const x0Var = o.variance === 'optimal' ? model.x0Variance?.(xt, t, labels) : undefined;
  const logVar = reverseLogVariance(s, o.variance, t, x0.rank, { vRaw, x0Var });
  return stepTerms(s, x0, xt, t, x0Hat, logVar, o.decoder);
}

/** The parts of disjoint example sets as one (examples in index order). */
export function mergeParts(parts: readonly BoundPart[]): BoundPart {
  const first = parts[0];
  if (!first) throw new Error('mergeParts: no parts');
  const stratumSum = new Float64Array(first.stratumSum.length);
  for (const p of parts) p.stratumSum.forEach((v, k) => (stratumSum[k] = (stratumSum[k] as number) + v));
  const examples = parts.flatMap((p) => p.examples).sort((a, b) => a.index - b.index);
  return { examples, stratumSum };
}

/** A mean over examples and its standard error, bits per dimension. */
export interface Estimate {
  readonly mean: number;
  readonly se: number;
}

/** One point of the per-term curve: the mean L_t over stratum from…to (inclusive), bits per dimension. */
export interface CurvePoint {
  readonly from: number;
  readonly to: number;
  readonly bits: number;
}

/** The bound over a set of examples. */
export interface BoundSummary {
  readonly count: number;
  readonly T: number;
  readonly timesteps: number;
  readonly estimator: 'full' | 'stratified';
  readonly variance: ReverseVariance;
  readonly decoder: DecoderKind;
  readonly seed: number;
  /** The bound, bits per dimension. */
  readonly bitsPerDim: Estimate;
  /** The bound, nats per dimension. */
  readonly natsPerDim: Estimate;
  /** Its split, bits per dimension: L_T, Σ_{t≥1} L_t, L_0. */
  readonly prior: Estimate;
  readonly kl: Estimate;
  readonly decoderTerm: Estimate;
  /** Where the bits go: L_0 at t = 0, then the mean L_t of each stratum (per timestep). */
  readonly curve: CurvePoint[];
}

/** Mean and standard error sd/√n (sd with n − 1; NaN for n < 2) of `values` × scale. */
export function estimate(values: ArrayLike<number>, scale = 1): Estimate {
  const n = values.length;
  let m = 0;
  for (let i = 0; i < n; i++) m += values[i] as number;
  m /= n;
  let ss = 0;
  for (let i = 0; i < n; i++) ss += ((values[i] as number) - m) ** 2;
  return { mean: m * scale, se: n > 1 ? (Math.sqrt(ss / (n - 1)) / Math.sqrt(n)) * scale : NaN };
}

/** The summary of a (merged) part evaluated with `o` on a schedule of T steps. */
export function summarize(part: BoundPart, o: BoundSettings, T: number): BoundSummary {
  const ex = part.examples;
  const n = ex.length;
  if (n === 0) throw new Error('summarize: no examples');
  const bits = 1 / Math.LN2;
  const total = ex.map((e) => e.prior + e.kl + e.decoder);
  const bounds = strata(T, o.timesteps);
  const curve: CurvePoint[] = [
    {
      from: 0,
      to: 0,
      bits: estimate(
        ex.map((e) => e.decoder),
        bits,
      ).mean,
    },
    ...Array.from(part.stratumSum, (sum, k) => ({
      from: bounds[k] as number,
      to: (bounds[k + 1] as number) - 1,
      bits: (sum / n) * bits,
    })),
  ];
  return {
    count: n,
    T,
    timesteps: o.timesteps,
    estimator: o.timesteps === T ? 'full' : 'stratified',
    variance: o.variance,
    decoder: o.decoder,
    seed: o.seed,
    bitsPerDim: estimate(total, bits),
    natsPerDim: estimate(total),
    prior: estimate(
      ex.map((e) => e.prior),
      bits,
    ),
    kl: estimate(
      ex.map((e) => e.kl),
      bits,
    ),
    decoderTerm: estimate(
      ex.map((e) => e.decoder),
      bits,
    ),
    curve,
  };
}
