/**
 * One data-parallel step, the same code for 1 or N workers: the local shard's gradient and
 * per-example losses are packed into one fused buffer `[gradients | loss slots 0…B−1]`, summed
 * over the ring (or not, alone), and every worker applies the identical update.
 */
import { performance } from 'node:perf_hooks';
import * as tf from '@tensorflow/tfjs';
import { disposeParams, sortedNames, type Params } from '../model/params.js';
import { applyUpdate } from '../model/optim.js';
import { shardGradients } from '../model/train.js';
import { drawTimesteps } from '../model/diffusion/timesteps.js';
import type { LoadedShard } from '../data/prefetch.js';
import type { Job } from './job.js';
import { eventLoopTurn } from '../util/turn.js';
import { loadShard } from './job.js';

export interface StepReport {
  step: number;
  loss: number;
  /** Mean raw loss per timestep quarter (NaN where no example fell). */
  lossQuarters: number[];
  gradNorm: number;
  lr: number;
  ms: number;
}

/** Mean of `losses` per quarter of [0, T) of their timesteps. */
export function lossByQuarter(t: Int32Array, losses: Float32Array, T: number): number[] {
  const sum = [0, 0, 0, 0];
  const cnt = [0, 0, 0, 0];
  t.forEach((ti, i) => {
    const q = Math.min(3, Math.floor((4 * ti) / T));
    sum[q] = (sum[q] as number) + (losses[i] as number);
    cnt[q] = (cnt[q] as number) + 1;
  });
  return sum.map((s, q) => ((cnt[q] as number) > 0 ? s / (cnt[q] as number) : NaN));
}

/** Where each parameter's gradient lives in the fused buffer. */
export interface FusedLayout {
  names: string[];
  shapes: number[][];
  offsets: number[];
  /** Scalars of gradient (the loss slots follow). */
  gradSize: number;
  /** gradSize + global batch. */
  total: number;
}

const layouts = new WeakMap<Params, FusedLayout>();

/**
 * Layout for `params` (canonical name order) and a global batch of B. Cached per parameter map:
 * the optimizer replaces tensors in the same map, never their names or shapes.
 */
export function fusedLayout(params: Params, B: number): FusedLayout {
  const cached = layouts.get(params);
  if (cached && cached.total === cached.gradSize + B) return cached;
  const layout = computeLayout(params, B);
  layouts.set(params, layout);
  return layout;
}

function computeLayout(params: Params, B: number): FusedLayout {
  const names = sortedNames(params);
  const shapes: number[][] = [];
  const offsets: number[] = [];
  let off = 0;
  for (const n of names) {
    const t = params.get(n) as tf.Tensor;
    shapes.push([...t.shape]);
    offsets.push(off);
    off += t.size;
  }
  return { names, shapes, offsets, gradSize: off, total: off + B };
}

/** Packs a shard's gradient and its raw losses (into slots [from, from + n)); the rest is zero. */
export function packFused(
  layout: FusedLayout,
  grads: Params,
  losses: Float32Array,
  from: number,
): Float32Array {
  const buf = new Float32Array(layout.total);
  layout.names.forEach((n, i) => {
    const g = grads.get(n);
    if (!g) throw new Error(`no gradient for parameter ${n}`);
    buf.set(g.dataSync() as Float32Array, layout.offsets[i]);
  });
  buf.set(losses, layout.gradSize + from);
  return buf;
}

/** Gradient tensors from a reduced fused buffer (views are copied into tensors). */
export function unpackGradients(layout: FusedLayout, buf: Float32Array): Params {
  const out: Params = new Map();
  layout.names.forEach((n, i) => {
    const shape = layout.shapes[i] as number[];
    const off = layout.offsets[i] as number;
    const size = shape.reduce((a, b) => a * b, 1);
    out.set(n, tf.tensor(buf.subarray(off, off + size), shape, 'float32'));
  });
  return out;
}

/** Sums a fused buffer over all workers in place (a ring all-reduce; identity when alone). */
export type AllReduce = (buf: Float32Array) => Promise<void>;

export interface FusedStepReport extends StepReport {
  /** The reduced fused buffer of this step (kept for roll-forward of a worker that missed it). */
  reduced: Float32Array;
  timings: { forwardBackwardMs: number; allreduceMs: number; optimizerMs: number };
}

/**
 * Runs step `job.state.step` on this worker's shard: gradient, fused all-reduce, identical update,
 * sampler update with every example's loss. The state is only touched after the all-reduce
 * succeeded: a failed all-reduce leaves the step uncommitted. Resolves after the event loop has
 * polled once since the commit (`eventLoopTurn`), so whatever arrived during the step — Ctrl-C,
 * SIGTERM, a new plan — has been handled before the caller decides whether to run the next one.
 */
export async function fusedStep(
  job: Job,
  shard: LoadedShard,
  allReduce: AllReduce,
): Promise<FusedStepReport> {
  const t0 = performance.now();
  const { cfg, state } = job;
  const step = state.step;
  const B = job.batches.B;
  const probs = job.sampler.probs();
  const res = shardGradients(job.model, state.params, shard, {
    seed: cfg.run.seed,
    step,
    globalBatch: B,
    schedule: job.schedule,
    probs,
    classDropout: cfg.model.class_dropout,
    microbatch: cfg.train.microbatch,
    prediction: cfg.diffusion.prediction,
    lossWeights: job.lossWeights,
    offsetNoise: cfg.diffusion.offset_noise,
    vlbWeight: cfg.diffusion.learn_sigma ? cfg.diffusion.vlb_weight : null,
    continuous: job.continuous,
  });
  const layout = fusedLayout(state.params, B);
  const fused = packFused(layout, res.grads, res.losses, shard.from);
  disposeParams(res.grads);
  const t1 = performance.now();
  await allReduce(fused);
  const t2 = performance.now();
  const c = commitReduced(job, fused);
  const t3 = performance.now();
  await eventLoopTurn();
  return {
    step: state.step,
    loss: c.loss,
    lossQuarters: c.lossQuarters,
    gradNorm: c.gradNorm,
    lr: c.lr,
    ms: t3 - t0,
    reduced: fused,
    timings: { forwardBackwardMs: t1 - t0, allreduceMs: t2 - t1, optimizerMs: t3 - t2 },
  };
}

/**
 * Commits step `job.state.step` from its reduced fused buffer: the identical optimizer update, EMA
 * and sampler update on every worker. Also how a worker that missed the end of a step's all-reduce
 * catches up from a peer's copy of the buffer (roll forward).
 */
export function commitReduced(
  job: Job,
  reduced: Float32Array,
): Pick<StepReport, 'loss' | 'lossQuarters' | 'gradNorm' | 'lr'> {
  const { cfg, state } = job;
  const step = state.step;
  const B = job.batches.B;
  const probs = job.sampler.probs();
  const layout = fusedLayout(state.params, B);
  if (reduced.length !== layout.total) {
    throw new Error(`reduced buffer of step ${step} has ${reduced.length} values, expected ${layout.total}`);
  }
  const grads = unpackGradients(layout, reduced);
  const upd = applyUpdate(state, grads, cfg.train);
  disposeParams(grads);
  // Every worker recomputes every example's timestep: the draw is a pure function of (seed, step, j, p).
  const all = drawTimesteps(probs, cfg.run.seed, step, B, 0, B);
  const losses = reduced.subarray(layout.gradSize, layout.total);
  job.sampler.update(all.t, losses);
  let loss = 0;
  for (let j = 0; j < B; j++) loss += ((all.weights[j] as number) * (losses[j] as number)) / B;
  return {
    loss,
    lossQuarters: lossByQuarter(all.t, Float32Array.from(losses), job.schedule.T),
    gradNorm: upd.gradNorm,
    lr: upd.lr,
  };
}

/** Runs one full step of the whole batch on this process: the fused step of a world of one. */
export async function trainStep(job: Job, prefetched?: LoadedShard): Promise<StepReport> {
  const shard = prefetched ?? loadShard(job, job.state.step, 0, job.batches.B);
  const r = await fusedStep(job, shard, async () => {});
  return {
    step: r.step,
    loss: r.loss,
    lossQuarters: r.lossQuarters,
    gradNorm: r.gradNorm,
    lr: r.lr,
    ms: r.ms,
  };
}
