/**
 * The training step, split where the distributed trainer needs to cut it:
 * `shardGradients` (a shard of a global batch → summed gradient) and `applyUpdate`
 * (gradient of the whole batch → clipped Adam/AdamW step + EMA). The loss is
 * Σ_j w_j·mse_j / B over the global batch, so shard gradients add up to the batch gradient.
 */
import * as tf from '@tensorflow/tfjs';
import type { Denoiser } from './nets/denoiser.js';
import { sortedNames, type Params } from './params.js';
import type { Schedule } from './diffusion/schedule.js';
import { drawTimesteps } from './diffusion/timesteps.js';
import { noiseFor } from './rng.js';
import { denoised, targetFor, type Prediction } from './diffusion/prediction.js';
import { hybridLoss } from './diffusion/vlb.js';
import { perExampleMse } from './diffusion/loss.js';
import { qSample } from './diffusion/process.js';
import { Purpose, stream } from './rng.js';
import { ExampleDropout } from './dropout.js';
import { continuousTraining, type ContinuousProcess } from './diffusion/continuous.js';

/** A contiguous shard of a global batch: positions [from, from + n) with their data. */
export interface Shard {
  /** Examples, [n, ...dataShape] row-major. */
  x0: Float32Array;
  /** Labels [n] (0…numClasses−1), or null for unconditional data. */
  labels: Int32Array | null;
  /** Position of the first example in the global batch. */
  from: number;
  n: number;
}

export interface StepContext {
  seed: number;
  /** Index of this step (0-based); keys every random draw. */
  step: number;
  globalBatch: number;
  schedule: Schedule;
  /** Timestep distribution p_s of this step. */
  probs: Float64Array;
  classDropout: number;
  /** Largest number of examples per forward/backward (0 = whole shard). */
  microbatch: number;
  /** What the network predicts (default ε). */
  prediction?: Prediction;
  /** Loss weight λ_t per timestep (src/model/diffusion/weighting.ts); null or absent = 1. */
  lossWeights?: Float64Array | null;
  /** Scale of the per-example, per-channel noise offset (0 or absent = off). */
  offsetNoise?: number;
  /** λ of L_hybrid when the model learns its variance (its output has doubled channels); absent = no. */
  vlbWeight?: number | null;
  /**
   * A continuous-time objective (SDE or EDM): `probs` are then over its bins and each example's
   * σ lies inside its bin (continuous.ts); λ(σ) per example replaces `lossWeights`. Absent = DDPM.
   */
  continuous?: { process: ContinuousProcess; weight: ((sigma: number) => number) | null } | null;
}

/** λ per example of a micro-batch (bins `t`, levels `sigma` of a continuous objective), or null = all 1. */
function exampleWeights(ctx: StepContext, t: Int32Array, sigma: Float64Array | null): Float32Array | null {
  const f = ctx.continuous?.weight;
  if (sigma) return f ? Float32Array.from(sigma, f) : null;
  const lambda = ctx.lossWeights;
  return lambda ? Float32Array.from(t, (ti) => lambda[ti] as number) : null;
}

/** σ of each example of positions [from, from + n): bin k_i and a uniform from its own stream. */
export function continuousSigmas(
  ctx: StepContext,
  process: ContinuousProcess,
  bins: Int32Array,
  from: number,
): Float64Array {
  const K = ctx.probs.length;
  return Float64Array.from(bins, (k, i) => {
    const u = stream(ctx.seed, ctx.step, from + i, Purpose.timeJitter).uniform();
    return process.sigmaAtQuantile((k + u) / K);
  });
}

export interface ShardResult {
  /** Σ over the shard of ∂(w_j·mse_j/B)/∂θ, by parameter name. */
  grads: Params;
  /** Σ over the shard of w_j·mse_j/B. */
  loss: number;
  /** Raw mse_j per example of the shard (what the importance sampler records). */
  losses: Float32Array;
  /** Timestep of each example of the shard. */
  t: Int32Array;
}

/** Labels after class dropout: each example's bit comes from its own counter stream. */
export function dropLabels(
  labels: Int32Array,
  ctx: StepContext,
  from: number,
  nullClass: number,
): Int32Array {
  const out = new Int32Array(labels.length);
  for (let i = 0; i < labels.length; i++) {
    const drop =
      ctx.classDropout > 0 &&
      stream(ctx.seed, ctx.step, from + i, Purpose.classDrop).uniform() < ctx.classDropout;
    out[i] = drop ? nullClass : (labels[i] as number);
  }
  return out;
}

/**
 * Standard normals for examples [offset, offset+n) of a step plus, with `scale` > 0, an offset
 * drawn per example and channel (last axis) and added over the whole example (offset noise,
 * Guttenberg 2023); each example's draws come from its own streams.
 */
export function trainingNoise(
  ctx: StepContext,
  offset: number,
  n: number,
  dataShape: readonly number[],
  scale: number,
): Float32Array {
  const size = dataShape.reduce((a, b) => a * b, 1);
  const noise = noiseFor(ctx.seed, ctx.step, offset, n, size, Purpose.noise);
  if (scale <= 0) return noise;
  const C = dataShape[dataShape.length - 1] ?? 1;
  const shift = new Float32Array(C);
  for (let i = 0; i < n; i++) {
    stream(ctx.seed, ctx.step, offset + i, Purpose.offsetNoise).normals(shift);
    const ex = noise.subarray(i * size, (i + 1) * size);
    for (let k = 0; k < size; k++) ex[k] = (ex[k] as number) + scale * (shift[k % C] as number);
  }
  return noise;
}

/**
 * Gradient over one shard (micro-batched), summed, of Σ_j w_j·λ(t_j)·mse_j / B: mse_j between the
 * network's output and the target of `ctx.prediction` (ε, x₀ or v), w_j the importance weight.
 */
export function shardGradients(model: Denoiser, params: Params, shard: Shard, ctx: StepContext): ShardResult {
  const names = sortedNames(params);
  const list = names.map((n) => params.get(n) as tf.Tensor);
  const exampleSize = model.dataShape.reduce((a, b) => a * b, 1);
  const pred = ctx.prediction ?? 'eps';
  const { t, weights } = drawTimesteps(
    ctx.probs,
    ctx.seed,
    ctx.step,
    ctx.globalBatch,
    shard.from,
    shard.from + shard.n,
  );
  const losses = new Float32Array(shard.n);
  const mb = ctx.microbatch > 0 ? ctx.microbatch : Math.max(shard.n, 1);
  let grads: tf.Tensor[] | null = null;
  let lossSum = 0;
  for (let start = 0; start < shard.n; start += mb) {
    const n = Math.min(mb, shard.n - start);
    const pos = shard.from + start;
    const tSlice = t.subarray(start, start + n);
    const cont = ctx.continuous ?? null;
    const sigma = cont ? continuousSigmas(ctx, cont.process, tSlice, pos) : null;
    const res = tf.tidy(() => {
      const shape = [n, ...model.dataShape];
      const x0 = tf.tensor(shard.x0.subarray(start * exampleSize, (start + n) * exampleSize), shape);
      const noise = tf.tensor(trainingNoise(ctx, pos, n, model.dataShape, ctx.offsetNoise ?? 0), shape);
      let xt: tf.Tensor;
      let target: tf.Tensor;
      let tT: tf.Tensor1D;
      if (cont && sigma) {
        const c = continuousTraining(cont.process, pred, x0, noise, sigma);
        xt = c.input;
        target = c.target;
        tT = tf.tensor1d(c.time, 'float32');
      } else {
        xt = qSample(ctx.schedule, x0, tSlice, noise);
        target = targetFor(pred, ctx.schedule, x0, noise, tSlice);
        tT = tf.tensor1d(Float32Array.from(tSlice), 'float32');
      }
      // λ enters the recorded losses too: the importance sampler then evens out what is optimised.
      const lam = exampleWeights(ctx, tSlice, sigma);
      const wHost = weights.slice(start, start + n);
      if (lam) for (let i = 0; i < n; i++) wHost[i] = (wHost[i] as number) * (lam[i] as number);
      const w = tf.tensor1d(wHost, 'float32');
      const y =
        shard.labels && model.numClasses > 0
          ? tf.tensor1d(
              dropLabels(shard.labels.subarray(start, start + n), ctx, pos, model.numClasses),
              'int32',
            )
          : null;
      let mse: tf.Tensor1D | null = null;
      const f = (...ps: tf.Tensor[]): tf.Scalar => {
        const p: Params = new Map(names.map((name, i) => [name, ps[i] as tf.Tensor]));
        const out = model.apply(p, xt, tT, y, { dropout: new ExampleDropout(ctx.seed, ctx.step, pos, n) });
        const m =
          ctx.vlbWeight !== undefined && ctx.vlbWeight !== null
            ? hybridLoss(
                ctx.schedule,
                out,
                target,
                x0,
                xt,
                tSlice,
                (frozen) => denoised(pred, ctx.schedule, xt, tSlice, frozen).x0,
                ctx.vlbWeight,
              )
            : perExampleMse(target, out);
        mse = tf.keep(lam ? (tf.mul(m, tf.tensor1d(lam, 'float32')) as tf.Tensor1D) : m);
        return tf.div(tf.sum(tf.mul(w, m)), ctx.globalBatch) as tf.Scalar;
      };
      const { value, grads: g } = tf.valueAndGrads(f)(list);
      return { value, g, mse: mse as unknown as tf.Tensor1D };
    });
    lossSum += res.value.dataSync()[0] as number;
    losses.set(res.mse.dataSync(), start);
    res.value.dispose();
    res.mse.dispose();
    if (grads === null) {
      grads = res.g;
    } else {
      const prev: tf.Tensor[] = grads;
      grads = prev.map((a, i) => tf.add(a, res.g[i] as tf.Tensor));
      prev.forEach((x) => x.dispose());
      res.g.forEach((x) => x.dispose());
    }
  }
  const out: Params = new Map();
  names.forEach((name, i) => {
    const p = params.get(name) as tf.Tensor;
    out.set(name, grads ? (grads[i] as tf.Tensor) : tf.zerosLike(p));
  });
  return { grads: out, loss: lossSum, losses, t };
}
