/**
 * The optimizer side of a step: training state (weights, Adam moments, EMA), the learning-rate
 * and EMA-decay schedules, gradient clipping and the clipped Adam/AdamW update followed by the EMA.
 * Applied once per step to the gradient of the whole global batch, identically on every worker.
 */
import * as tf from '@tensorflow/tfjs';
import { disposeParams, sortedNames, type Params } from './params.js';
import type { TrainConfig } from '../config/schema.js';
import { fusedAdam, fusedEma } from './backend/fused.js';

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

/**
 * Learning rate at 0-based step n: linear warm-up to cfg.lr over warmup_steps, then constant or a
 * cosine / linear decay reaching cfg.lr_final at the last step (cfg.steps − 1).
 */
export function learningRate(cfg: TrainConfig, n: number): number {
  if (cfg.warmup_steps > 0 && n + 1 < cfg.warmup_steps) return cfg.lr * ((n + 1) / cfg.warmup_steps);
  if (cfg.lr_schedule === 'constant') return cfg.lr;
  // Progress p from the end of the warm-up (0) to the last step (1).
  const span = Math.max(1, cfg.steps - Math.max(cfg.warmup_steps, 1));
  const p = Math.min(1, Math.max(0, (n + 1 - Math.max(cfg.warmup_steps, 1)) / span));
  const shape = cfg.lr_schedule === 'cosine' ? 0.5 * (1 + Math.cos(Math.PI * p)) : 1 - p;
  return cfg.lr_final + (cfg.lr - cfg.lr_final) * shape;
}

/**
 * EMA decay at 0-based step n: exponential (ema_decay, with the optional min(decay, (1+n)/(10+n))
 * warm-up), or Karras et al. 2024's power function (1 − 1/(n+1))^(γ+1), whose averaging window
 * grows with the run so that its relative width stays σ_rel.
 */
export function emaDecay(cfg: TrainConfig, n: number): number {
  if (cfg.ema_schedule === 'power') return (1 - 1 / (n + 1)) ** (powerEmaGamma(cfg.ema_sigma_rel) + 1);
  return cfg.ema_warmup ? Math.min(cfg.ema_decay, (1 + n) / (10 + n)) : cfg.ema_decay;
}

/** Relative width σ_rel of the power EMA with exponent γ (Karras et al. 2024, eq. 3). */
export function powerEmaSigmaRel(gamma: number): number {
  return Math.sqrt(gamma + 1) / ((gamma + 2) * Math.sqrt(gamma + 3));
}

/** The exponent γ > 0 whose power EMA has relative width σ_rel ∈ (0, 1/√12) (bisection: σ_rel falls with γ). */
export function powerEmaGamma(sigmaRel: number): number {
  if (!(sigmaRel > 0 && sigmaRel < powerEmaSigmaRel(0)))
    throw new Error(`train.ema_sigma_rel: ${sigmaRel} is outside (0, ${powerEmaSigmaRel(0).toFixed(4)})`);
  let lo = 0;
  let hi = 1;
  while (powerEmaSigmaRel(hi) > sigmaRel) hi *= 2;
  for (let i = 0; i < 100; i++) {
    const mid = (lo + hi) / 2;
    if (powerEmaSigmaRel(mid) > sigmaRel) lo = mid;
    else hi = mid;
  }
  return (lo + hi) / 2;
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
