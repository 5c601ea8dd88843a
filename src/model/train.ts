/**
 * The training step, split where the distributed trainer needs to cut it:
 * `shardGradients` (a shard of a global batch → summed gradient) and `applyUpdate`
 * (gradient of the whole batch → clipped Adam/AdamW step + EMA). The loss is
 * Σ_j w_j·mse_j / B over the global batch, so shard gradients add up to the batch gradient.
 */
import * as tf from '@tensorflow/tfjs';
import type { Denoiser } from './model.js';
import { disposeParams, sortedNames, type Params } from './params.js';
import type { Schedule } from './schedule.js';
import type { TrainConfig } from '../config/schema.js';
import { drawTimesteps } from './timesteps.js';
import { noiseFor, perExampleMse, qSample } from './diffusion.js';
import { Purpose, stream } from './rng.js';
import { fusedAdam, fusedEma } from './backend/fused.js';

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

/** Everything that changes in a step, identical on every worker. */
export interface TrainState {
  /** Completed optimizer steps. */
  step: number;
  params: Params;
  ema: Params;
  /** Adam first and second moments, by parameter name. */
  m: Params;
  v: Params;
}

/** A fresh state: m = v = 0, EMA = weights. Takes ownership of `params`. */
export function initialState(params: Params): TrainState {
  const clone = (f: (t: tf.Tensor) => tf.Tensor): Params => new Map([...params].map(([n, t]) => [n, f(t)]));
  return {
    step: 0,
    params,
    ema: clone((t) => t.clone()),
    m: clone((t) => tf.zerosLike(t)),
    v: clone((t) => tf.zerosLike(t)),
  };
}

/** Disposes every tensor of a state. */
export function disposeState(s: TrainState): void {
  for (const p of [s.params, s.ema, s.m, s.v]) disposeParams(p);
}

/** Learning rate at 0-based step n: linear warm-up to cfg.lr over warmup_steps. */
export function learningRate(cfg: TrainConfig, n: number): number {
  return cfg.warmup_steps > 0 ? cfg.lr * Math.min(1, (n + 1) / cfg.warmup_steps) : cfg.lr;
}

/** EMA decay at 0-based step n (with the optional min(decay, (1+n)/(10+n)) warm-up). */
export function emaDecay(cfg: TrainConfig, n: number): number {
  return cfg.ema_warmup ? Math.min(cfg.ema_decay, (1 + n) / (10 + n)) : cfg.ema_decay;
}

/** Global L2 norm of a gradient. */
export function globalNorm(grads: Params): number {
  return tf.tidy(() => {
    const sq = [...grads.values()].map((g) => tf.sum(tf.square(g)));
    return Math.sqrt(tf.addN(sq).dataSync()[0] as number);
  });
}

/**
 * Clipped Adam/AdamW step from the whole batch's gradient: replaces params, m and v (old tensors
 * disposed) for 0-based step n = state.step; does not dispose `grads` or advance the step.
 */
export function optimizerStep(
  state: TrainState,
  grads: Params,
  cfg: TrainConfig,
): { gradNorm: number; lr: number } {
  const n = state.step;
  const gradNorm = globalNorm(grads);
  const scale = cfg.grad_clip > 0 && gradNorm > cfg.grad_clip ? cfg.grad_clip / gradNorm : 1;
  const lr = learningRate(cfg, n);
  const b1 = cfg.beta1;
  const b2 = cfg.beta2;
  const bc1 = 1 - b1 ** (n + 1);
  const bc2 = 1 - b2 ** (n + 1);
  const fused = fusedAdam();
  const attrs = {
    scale,
    b1,
    b2,
    bc1,
    bc2,
    eps: cfg.adam_eps,
    lr,
    lrwd: cfg.weight_decay > 0 ? lr * cfg.weight_decay : 0,
  };
  for (const name of sortedNames(state.params)) {
    const p0 = state.params.get(name) as tf.Tensor;
    const m0 = state.m.get(name) as tf.Tensor;
    const v0 = state.v.get(name) as tf.Tensor;
    const [p1, m1, v1] = tf.tidy((): [tf.Tensor, tf.Tensor, tf.Tensor] => {
      let g = grads.get(name);
      if (!g) throw new Error(`no gradient for parameter ${name}`);
      // The same arithmetic as below in one kernel, where the backend has one.
      if (fused) return fused(p0, m0, v0, g, attrs);
      if (scale !== 1) g = tf.mul(g, scale);
      const m = tf.add(tf.mul(b1, m0), tf.mul(1 - b1, g));
      const v = tf.add(tf.mul(b2, v0), tf.mul(1 - b2, tf.square(g)));
      const upd = tf.div(tf.div(m, bc1), tf.add(tf.sqrt(tf.div(v, bc2)), cfg.adam_eps));
      let p = tf.sub(p0, tf.mul(lr, upd));
      if (cfg.weight_decay > 0) p = tf.sub(p, tf.mul(lr * cfg.weight_decay, p0));
      return [p, m, v];
    });
    state.params.set(name, p1);
    state.m.set(name, m1);
    state.v.set(name, v1);
    tf.dispose([p0, m0, v0]);
  }
  return { gradNorm, lr };
}

/** E ← d·E + (1 − d)·W with the decay of 0-based step n = state.step (call after optimizerStep). */
export function updateEma(state: TrainState, cfg: TrainConfig): void {
  const d = emaDecay(cfg, state.step);
  const fused = fusedEma();
  for (const name of sortedNames(state.params)) {
    const e0 = state.ema.get(name) as tf.Tensor;
    const w = state.params.get(name) as tf.Tensor;
    state.ema.set(
      name,
      tf.tidy(() => (fused ? fused(e0, w, d) : tf.add(tf.mul(d, e0), tf.mul(1 - d, w)))),
    );
    e0.dispose();
  }
}

/** One full update from the whole batch's gradient: optimizer step, EMA, step counter. */
export function applyUpdate(
  state: TrainState,
  grads: Params,
  cfg: TrainConfig,
): { gradNorm: number; lr: number } {
  const r = optimizerStep(state, grads, cfg);
  updateEma(state, cfg);
  state.step += 1;
  return r;
}
