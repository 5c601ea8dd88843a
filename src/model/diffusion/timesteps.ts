/**
 * Timestep samplers (improved-diffusion's resample.py, re-derived): the distribution p(t) from
 * which training draws timesteps, and the stratified draw that spreads a global batch over p.
 * Importance weights 1/(T·p(t)) keep the weighted loss an unbiased estimate of the uniform one.
 */
import { Purpose, stream } from '../rng.js';

/** Serializable sampler state (lives in checkpoints). */
export interface SamplerState {
  kind: 'uniform' | 'loss-second-moment';
  T: number;
  historyPerTerm?: number;
  uniformProb?: number;
  /** T × historyPerTerm losses, row-major (loss-second-moment only). */
  history?: number[];
  /** Losses recorded per t, capped at historyPerTerm. */
  counts?: number[];
}

export interface TimestepSampler {
  readonly T: number;
  /** p(t) for t = 0…T−1; sums to 1. */
  probs(): Float64Array;
  /** Records raw (unweighted) per-example losses at their timesteps, in order. */
  update(ts: ArrayLike<number>, losses: ArrayLike<number>): void;
  state(): SamplerState;
}

export class UniformSampler implements TimestepSampler {
  private readonly p: Float64Array;
  constructor(readonly T: number) {
    this.p = new Float64Array(T).fill(1 / T);
  }
  probs(): Float64Array {
    return this.p;
  }
  update(): void {}
  state(): SamplerState {
    return { kind: 'uniform', T: this.T };
  }
}

/**
 * Improved DDPM's importance sampler: p(t) ∝ √E[L_t²] over the last `historyPerTerm` losses of
 * each t, mixed with `uniformProb` of uniform; uniform until every t has a full history.
 */
export class LossSecondMomentSampler implements TimestepSampler {
  private readonly history: Float64Array;
  private readonly counts: Int32Array;
  private cached: Float64Array | null = null;

  constructor(
    readonly T: number,
    readonly historyPerTerm = 10,
    readonly uniformProb = 0.001,
  ) {
    this.history = new Float64Array(T * historyPerTerm);
    this.counts = new Int32Array(T);
  }

  /** True once every timestep holds a full history. */
  warmedUp(): boolean {
    return this.counts.every((c) => c === this.historyPerTerm);
  }

  probs(): Float64Array {
    if (this.cached) return this.cached;
    const T = this.T;
    const p = new Float64Array(T);
    if (!this.warmedUp()) {
      p.fill(1 / T);
    } else {
      const H = this.historyPerTerm;
      let sum = 0;
      for (let t = 0; t < T; t++) {
        let m2 = 0;
        for (let k = 0; k < H; k++) m2 += (this.history[t * H + k] as number) ** 2;
        const w = Math.sqrt(m2 / H);
        p[t] = w;
        sum += w;
      }
      for (let t = 0; t < T; t++) {
        const base = sum > 0 ? (p[t] as number) / sum : 1 / T;
        p[t] = base * (1 - this.uniformProb) + this.uniformProb / T;
      }
    }
    this.cached = p;
    return p;
  }

  update(ts: ArrayLike<number>, losses: ArrayLike<number>): void {
    const H = this.historyPerTerm;
    for (let i = 0; i < ts.length; i++) {
      const t = ts[i] as number;
      const loss = losses[i] as number;
      if (!Number.isFinite(loss)) continue; // a NaN would poison p(t) forever
      const c = this.counts[t] as number;
      const row = t * H;
      if (c === H) {
        this.history.copyWithin(row, row + 1, row + H);
        this.history[row + H - 1] = loss;
      } else {
        this.history[row + c] = loss;
        this.counts[t] = c + 1;
      }
    }
    this.cached = null;
  }

  state(): SamplerState {
    return {
      kind: 'loss-second-moment',
      T: this.T,
      historyPerTerm: this.historyPerTerm,
      uniformProb: this.uniformProb,
      history: Array.from(this.history),
      counts: Array.from(this.counts),
    };
  }

  /** Restores a state written by `state()`; shapes must match. */
  static fromState(st: SamplerState): LossSecondMomentSampler {
    const H = st.historyPerTerm ?? 10;
    const s = new LossSecondMomentSampler(st.T, H, st.uniformProb ?? 0.001);
    if (!st.history || st.history.length !== st.T * H || !st.counts || st.counts.length !== st.T) {
      throw new Error(`sampler table: expected history of ${st.T}×${H} and ${st.T} counts`);
    }
    s.history.set(st.history);
    s.counts.set(st.counts);
    return s;
  }
}

// Sampler kinds and their state are stored in checkpoints by name: once committed, a kind never
// changes meaning or state layout; a new variant gets a new name (docs/design.md §8).
/** A sampler of the configured kind, optionally restored from a checkpoint state. */
export function createSampler(
  kind: 'uniform' | 'loss-second-moment',
  T: number,
  opts: { historyPerTerm: number; uniformProb: number },
  restore?: SamplerState,
): TimestepSampler {
  if (restore) {
    if (restore.kind !== kind || restore.T !== T) {
      throw new Error(
        `sampler table in checkpoint is ${restore.kind}/T=${restore.T}, config asks ${kind}/T=${T}`,
      );
    }
    return kind === 'uniform' ? new UniformSampler(T) : LossSecondMomentSampler.fromState(restore);
  }
  return kind === 'uniform'
    ? new UniformSampler(T)
    : new LossSecondMomentSampler(T, opts.historyPerTerm, opts.uniformProb);
}

/** Cumulative distribution of p, with the last entry forced to exactly 1. */
export function cdf(p: Float64Array): Float64Array {
  const c = new Float64Array(p.length);
  let acc = 0;
  for (let i = 0; i < p.length; i++) {
    acc += p[i] as number;
    c[i] = acc;
  }
  if (c.length > 0) c[c.length - 1] = 1;
  return c;
}

/** Smallest t with cdf[t] > q (binary search). */
export function inverseCdf(c: Float64Array, q: number): number {
  let lo = 0;
  let hi = c.length - 1;
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    if ((c[mid] as number) > q) hi = mid;
    else lo = mid + 1;
  }
  return lo;
}

/**
 * Stratified timesteps for positions [from, to) of a global batch of size B at `step`:
 * position j gets u_j from its own counter stream and t_j = F⁻¹((j + u_j)/B), weight 1/(T·p(t_j)).
 * A worker owning positions [a, b) owns exactly those strata of p.
 */
export function drawTimesteps(
  p: Float64Array,
  seed: number,
  step: number,
  B: number,
  from: number,
  to: number,
): { t: Int32Array; weights: Float32Array } {
  const T = p.length;
  const c = cdf(p);
  const n = to - from;
  const t = new Int32Array(n);
  const weights = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    const j = from + i;
    const u = stream(seed, step, j, Purpose.timestep).uniform();
    const ti = inverseCdf(c, (j + u) / B);
    t[i] = ti;
    weights[i] = 1 / (T * (p[ti] as number));
  }
  return { t, weights };
}
