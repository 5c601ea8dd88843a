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
import { perExampleMse } from './diffusion/loss.js';
import { qSample } from './diffusion/process.js';
import { Purpose, stream } from './rng.js';

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

/** Gradient of the weighted ε-loss over one shard (micro-batched), summed. */
export function shardGradients(model: Denoiser, params: Params, shard: Shard, ctx: StepContext): ShardResult {
  const names = sortedNames(params);
  const list = names.map((n) => params.get(n) as tf.Tensor);
  const exampleSize = model.dataShape.reduce((a, b) => a * b, 1);
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
    const res = tf.tidy(() => {
      const shape = [n, ...model.dataShape];
      const x0 = tf.tensor(shard.x0.subarray(start * exampleSize, (start + n) * exampleSize), shape);
      const noise = tf.tensor(noiseFor(ctx.seed, ctx.step, pos, n, exampleSize, Purpose.noise), shape);
      const xt = qSample(ctx.schedule, x0, tSlice, noise);
      const tT = tf.tensor1d(Float32Array.from(tSlice), 'float32');
      const w = tf.tensor1d(weights.subarray(start, start + n), 'float32');
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
        const m = perExampleMse(noise, model.apply(p, xt, tT, y));
        mse = tf.keep(m);
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
