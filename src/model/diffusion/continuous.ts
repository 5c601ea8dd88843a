/**
 * Continuous-time objectives: the VP, VE and sub-VP SDEs of Song et al. 2021 trained by denoising
 * score matching, and EDM (Karras et al. 2022) with its preconditioning and log-normal σ. All are
 * written in σ form, x_t = s(t)·(x₀ + σ(t)·ε) (Karras et al. 2022, eq. 12), which is also how the
 * samplers see every model (src/model/sampling/sampler.ts).
 *
 * How continuous time keeps the orchestrator's invariants: training still draws one of
 * `diffusion.timesteps` bins k per example from the timestep sampler (stratified over the global
 * batch, importance weight 1/(K·p_k)), then a uniform u from the example's own counter stream
 * (Purpose.timeJitter) places it inside the bin at quantile q = (k + u)/K of the objective's
 * training distribution of σ: uniform t ∈ [ε, 1] for the SDEs, log-normal σ for EDM. Every draw is
 * keyed by (seed, step, example), so the batch does not depend on the world size; the loss-second-
 * moment sampler learns p over bins exactly as over DDPM timesteps, and its weights keep the
 * estimate unbiased for the continuous objective, E_q[loss(σ(q))].
 *
 * The objective names and their constants are stored in checkpoints with the config: once
 * committed, a name keeps its meaning (docs/design.md §8).
 */
import * as tf from '@tensorflow/tfjs';
import type { DiffusionConfig } from '../../config/schema.js';
import type { Prediction } from './prediction.js';

/** The SDEs of `diffusion.sde`. */
export type SdeKind = 'vp' | 've' | 'subvp';

/** A continuous-time process and its training distribution, as pure functions of σ. */
export interface ContinuousProcess {
  /** Name for messages and checkpoints: vp, ve, subvp or edm. */
  readonly kind: SdeKind | 'edm';
  /** σ at quantile q ∈ (0, 1) of the training distribution of noise levels (increasing in q). */
  sigmaAtQuantile(q: number): number;
  /** The smallest and largest σ sampling visits. */
  readonly sigmaMin: number;
  readonly sigmaMax: number;
  /** σ at sampler time u ∈ [0, 1] (0 → sigmaMin, 1 → sigmaMax): uniform and quadratic grids use it. */
  sigmaAt(u: number): number;
  /** Std of the prior the samplers start from, in σ coordinates (x = x_t/s). */
  readonly priorStd: number;
  /** The network's input scale c_in(σ): s(σ) for the SDEs, 1/√(σ² + σ_data²) for EDM. */
  cIn(sigma: number): number;
  /** What the network's time embedding is fed at σ (a float on the scale of DDPM's 0…999). */
  netTime(sigma: number): number;
  /** EDM's skip and output scales (D = c_skip·x + c_out·F); null for the SDEs, which use the prediction. */
  readonly precond: { cSkip(sigma: number): number; cOut(sigma: number): number } | null;
}

/** Song et al.'s smallest training time for the SDEs (t = 0 has no noise to denoise). */
export const SDE_T_EPS = 1e-5;

/** log α(t) of the VP and sub-VP SDEs: −¼t²(β_max − β_min) − ½t·β_min (Song et al. 2021, eq. 33). */
function logAlphaVp(t: number, bMin: number, bMax: number): number {
  return -0.25 * t * t * (bMax - bMin) - 0.5 * t * bMin;
}

/** The t with log α(t) = la (the positive root of the quadratic above). */
function tOfLogAlphaVp(la: number, bMin: number, bMax: number): number {
  const a = 0.25 * (bMax - bMin);
  const b = 0.5 * bMin;
  return a > 0 ? (-b + Math.sqrt(b * b - 4 * a * la)) / (2 * a) : -la / b;
}

/** Φ⁻¹(p) of the standard normal (Acklam's rational approximation, relative error < 1.2e-9). */
export function normalQuantile(p: number): number {
  if (!(p > 0 && p < 1)) throw new Error(`normal quantile needs 0 < p < 1, got ${p}`);
  const a = [
    -39.69683028665376, 220.9460984245205, -275.9285104469687, 138.357751867269, -30.66479806614716,
    2.506628277459239,
  ];
  const b = [
    -54.47609879822406, 161.5858368580409, -155.6989798598866, 66.80131188771972, -13.28068155288572,
  ];
  const c = [
    -0.007784894002430293, -0.3223964580411365, -2.400758277161838, -2.549732539343734, 4.374664141464968,
    2.938163982698783,
  ];
  const d = [0.007784695709041462, 0.3224671290700398, 2.445134137142996, 3.754408661907416];
  const at = (v: number[], i: number) => v[i] as number;
  const tail = (q: number) =>
    (((((at(c, 0) * q + at(c, 1)) * q + at(c, 2)) * q + at(c, 3)) * q + at(c, 4)) * q + at(c, 5)) /
    ((((at(d, 0) * q + at(d, 1)) * q + at(d, 2)) * q + at(d, 3)) * q + 1);
  let x: number;
  if (p < 0.02425) x = tail(Math.sqrt(-2 * Math.log(p)));
  else if (p > 1 - 0.02425) x = -tail(Math.sqrt(-2 * Math.log(1 - p)));
  else {
    const q = p - 0.5;
    const r = q * q;
    x =
      ((((((at(a, 0) * r + at(a, 1)) * r + at(a, 2)) * r + at(a, 3)) * r + at(a, 4)) * r + at(a, 5)) * q) /
      (((((at(b, 0) * r + at(b, 1)) * r + at(b, 2)) * r + at(b, 3)) * r + at(b, 4)) * r + 1);
  }
  return x;
}

/** The SDE of Song et al. 2021 with σ(t) and s(t) in closed form; t uniform on [ε, 1] in training. */
export function sdeProcess(
  kind: SdeKind,
  o: { betaMin: number; betaMax: number; sigmaMin: number; sigmaMax: number },
): ContinuousProcess {
  const tOfQ = (q: number) => SDE_T_EPS + (1 - SDE_T_EPS) * q;
  // 999·t, the time label of Song et al.'s DDPM++ (and of a 1000-step DDPM model).
  const label = (t: number) => 999 * t;
  if (kind === 've') {
    const { sigmaMin: lo, sigmaMax: hi } = o;
    const sigma = (t: number) => lo * (hi / lo) ** t;
    const tOf = (s: number) => Math.log(s / lo) / Math.log(hi / lo);
    return {
      kind,
      sigmaAtQuantile: (q) => sigma(tOfQ(q)),
      sigmaMin: sigma(SDE_T_EPS),
      sigmaMax: hi,
      sigmaAt: (u) => sigma(tOfQ(u)),
      // x_T ~ N(0, σ_max²): the data's own spread is negligible next to σ_max.
      priorStd: hi,
      cIn: () => 1,
      netTime: (s) => label(tOf(s)),
      precond: null,
    };
  }
  const { betaMin: b0, betaMax: b1 } = o;
  // VP: mean α, std √(1−α²), so σ = √(1−α²)/α. Sub-VP: std 1 − α², σ = (1 − α²)/α.
  const sigma = (t: number) => {
    const a = Math.exp(logAlphaVp(t, b0, b1));
    return kind === 'vp'
      ? Math.sqrt(-Math.expm1(2 * logAlphaVp(t, b0, b1))) / a
      : -Math.expm1(2 * logAlphaVp(t, b0, b1)) / a;
  };
  const alphaOf = (s: number) => (kind === 'vp' ? 1 / Math.sqrt(1 + s * s) : (Math.sqrt(s * s + 4) - s) / 2);
  const tOf = (s: number) => tOfLogAlphaVp(Math.log(alphaOf(s)), b0, b1);
  const sMax = sigma(1);
  return {
    kind,
    sigmaAtQuantile: (q) => sigma(tOfQ(q)),
    sigmaMin: sigma(SDE_T_EPS),
    sigmaMax: sMax,
    sigmaAt: (u) => sigma(tOfQ(u)),
    // Both start from x_T ~ N(0, I): in σ coordinates std 1/s(1) = 1/α(1).
    priorStd: 1 / alphaOf(sMax),
    cIn: alphaOf,
    netTime: (s) => label(tOf(s)),
    precond: null,
  };
}

/**
 * EDM (Karras et al. 2022, Table 1): ln σ ~ N(P_mean, P_std²) in training, c_in = 1/√(σ² + σ_d²),
 * c_skip = σ_d²/(σ² + σ_d²), c_out = σ·σ_d/√(σ² + σ_d²), and the loss weight λ(σ) = 1/c_out² that
 * makes the regression of F onto (x₀ − c_skip·x)/c_out unit-weighted.
 */
export function edmProcess(o: {
  sigmaData: number;
  pMean: number;
  pStd: number;
  sigmaMin: number;
  sigmaMax: number;
}): ContinuousProcess {
  const { sigmaData: sd, sigmaMin: lo, sigmaMax: hi } = o;
  const logLo = Math.log(lo);
  const logHi = Math.log(hi);
  return {
    kind: 'edm',
    sigmaAtQuantile: (q) => Math.exp(o.pMean + o.pStd * normalQuantile(q)),
    sigmaMin: lo,
    sigmaMax: hi,
    sigmaAt: (u) => Math.exp(logLo + u * (logHi - logLo)),
    priorStd: hi,
    cIn: (s) => 1 / Math.sqrt(s * s + sd * sd),
    // EDM feeds c_noise = ¼ ln σ; this is the same up to an affine map, which puts [σ_min, σ_max]
    // on DDPM's 0…1000 so the sinusoidal embedding resolves it as it resolves timesteps.
    netTime: (s) => (1000 * (Math.log(s) - logLo)) / (logHi - logLo),
    precond: {
      cSkip: (s) => (sd * sd) / (s * s + sd * sd),
      cOut: (s) => (s * sd) / Math.sqrt(s * s + sd * sd),
    },
  };
}

/** The process of `diffusion.objective` (null for the discrete DDPM objective). */
export function processOf(d: DiffusionConfig): ContinuousProcess | null {
  if (d.objective === 'ddpm') return null;
  if (d.objective === 'edm')
    return edmProcess({
      sigmaData: d.sigma_data,
      pMean: d.p_mean,
      pStd: d.p_std,
      sigmaMin: d.sigma_min ?? 0.002,
      sigmaMax: d.sigma_max ?? 80,
    });
  return sdeProcess(d.sde, {
    betaMin: d.beta_min,
    betaMax: d.beta_max,
    sigmaMin: d.sigma_min ?? 0.01,
    sigmaMax: d.sigma_max ?? 50,
  });
}

/** Per-example constants of a batch at noise levels σ (all float64, length B). */
export interface ContinuousCoefs {
  cIn: Float64Array;
  /** Network time labels. */
  time: Float32Array;
  /** EDM only: skip and output scales. */
  cSkip: Float64Array | null;
  cOut: Float64Array | null;
}

/** The per-example constants of `p` at levels `sigma`. */
export function coefsAt(p: ContinuousProcess, sigma: ArrayLike<number>): ContinuousCoefs {
  const B = sigma.length;
  const at = (f: (s: number) => number) => Float64Array.from({ length: B }, (_, i) => f(sigma[i] as number));
  return {
    cIn: at((s) => p.cIn(s)),
    time: Float32Array.from(at((s) => p.netTime(s))),
    cSkip: p.precond ? at(p.precond.cSkip) : null,
    cOut: p.precond ? at(p.precond.cOut) : null,
  };
}

/**
 * λ(σ) of `diffusion.loss_weighting` for a continuous objective, for the regressed target: min-SNR-γ
 * with SNR = 1/σ² (as weighting.ts does per DDPM timestep), or 1.
 */
export function continuousWeight(
  kind: 'none' | 'min_snr',
  pred: Prediction,
  gamma: number,
  sigma: number,
): number {
  if (kind === 'none') return 1;
  const r = 1 / (sigma * sigma);
  const capped = Math.min(r, gamma);
  if (pred === 'x0') return capped;
  if (pred === 'v') return capped / (r + 1);
  return capped / r;
}

/** Per-example scalars as a [B, 1, …, 1] float32 tensor of rank `rank`. */
function col(v: ArrayLike<number>, rank: number): tf.Tensor {
  return tf.tensor(Float32Array.from(v), [v.length, ...new Array<number>(rank - 1).fill(1)], 'float32');
}

/**
 * One training batch of a continuous objective at levels σ (B values): the network input
 * c_in·(x₀ + σ·n), its time labels, and the regression target — ε, x₀ or v = (ε − σ·x₀)/√(1+σ²)
 * for the SDEs (v as in the VP view), (x₀ − c_skip·x)/c_out for EDM. x0, noise: [B, …].
 */
export function continuousTraining(
  p: ContinuousProcess,
  pred: Prediction,
  x0: tf.Tensor,
  noise: tf.Tensor,
  sigma: ArrayLike<number>,
): { input: tf.Tensor; time: Float32Array; target: tf.Tensor } {
  const c = coefsAt(p, sigma);
  const r = x0.rank;
  return tf.tidy(() => {
    const sig = col(sigma, r);
    const x = tf.add(x0, tf.mul(sig, noise));
    const input = tf.mul(col(c.cIn, r), x);
    let target: tf.Tensor;
    if (c.cSkip && c.cOut) target = tf.div(tf.sub(x0, tf.mul(col(c.cSkip, r), x)), col(c.cOut, r));
    else if (pred === 'eps') target = tf.clone(noise);
    else if (pred === 'x0') target = tf.clone(x0);
    else
      target = tf.div(
        tf.sub(noise, tf.mul(sig, x0)),
        col(
          Array.from(sigma, (s) => Math.sqrt(1 + s * s)),
          r,
        ),
      );
    return { input, time: c.time, target };
  });
}

/** x̂₀ = D(x; σ) from the network's raw output at input c_in·x ([B, …]; σ: B levels). */
export function continuousDenoised(
  p: ContinuousProcess,
  pred: Prediction,
  x: tf.Tensor,
  out: tf.Tensor,
  sigma: ArrayLike<number>,
): tf.Tensor {
  const c = coefsAt(p, sigma);
  const r = x.rank;
  return tf.tidy(() => {
    if (c.cSkip && c.cOut) return tf.add(tf.mul(col(c.cSkip, r), x), tf.mul(col(c.cOut, r), out));
    if (pred === 'eps') return tf.sub(x, tf.mul(col(sigma, r), out));
    if (pred === 'x0') return tf.clone(out);
    // v: x̂₀ = a²·x − b·v̂ with a = 1/√(1+σ²), b = σ·a.
    const a2 = Array.from(sigma, (s) => 1 / (1 + s * s));
    const b = Array.from(sigma, (s) => s / Math.sqrt(1 + s * s));
    return tf.sub(tf.mul(col(a2, r), x), tf.mul(col(b, r), out));
  });
}
