/**
 * Shard invariance, shared by the model tests: the gradient of a global batch split at `cuts`
 * (each part through shardGradients, as workers would) summed over the parts, and the step
 * context those tests use (no tests in this file).
 */
import { disposeParams, type Params } from '../src/model/params.js';
import { scheduleFor } from '../src/model/diffusion/schedule.js';
import { LossSecondMomentSampler } from '../src/model/diffusion/timesteps.js';
import { shardGradients, type Shard, type StepContext } from '../src/model/train.js';
import type { Denoiser } from '../src/model/nets/denoiser.js';

/** Σ over the parts [0, cuts…, B) of shardGradients: gradients by name, loss, per-example losses and t. */
export function splitGradients(
  model: Denoiser,
  params: Params,
  x0: Float32Array,
  labels: Int32Array | null,
  cuts: number[],
  ctx: StepContext,
) {
  const size = model.dataShape.reduce((a, b) => a * b, 1);
  const total = new Map<string, Float32Array>();
  let loss = 0;
  const losses: number[] = [];
  const ts: number[] = [];
  const bounds = [0, ...cuts, ctx.globalBatch];
  for (let k = 0; k + 1 < bounds.length; k++) {
    const from = bounds[k] as number;
    const to = bounds[k + 1] as number;
    const shard: Shard = {
      x0: x0.subarray(from * size, to * size),
      labels: labels ? labels.subarray(from, to) : null,
      from,
      n: to - from,
    };
    const r = shardGradients(model, params, shard, ctx);
    loss += r.loss;
    losses.push(...r.losses);
    ts.push(...r.t);
    for (const [name, g] of r.grads) {
      const v = g.dataSync() as Float32Array;
      const acc = total.get(name);
      if (acc) v.forEach((x, i) => (acc[i] = (acc[i] as number) + x));
      else total.set(name, Float32Array.from(v));
    }
    disposeParams(r.grads);
  }
  return { total, loss, losses, ts };
}

/** A step context over T = 50 with a non-uniform importance sampler and class dropout 0.3. */
export function shardTestContext(globalBatch: number): StepContext {
  const sampler = new LossSecondMomentSampler(50, 1);
  sampler.update(
    Array.from({ length: 50 }, (_, t) => t),
    Array.from({ length: 50 }, (_, t) => 1 + t / 10),
  );
  return {
    seed: 3,
    step: 17,
    globalBatch,
    schedule: scheduleFor('linear', 50),
    probs: sampler.probs(),
    classDropout: 0.3,
    microbatch: 0,
  };
}
