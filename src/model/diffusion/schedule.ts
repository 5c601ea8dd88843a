/**
 * Noise schedules and the constants derived from them, in float64 (converted to float32 only
 * where they meet tensors). Index t = 0…T−1; t = 0 is the least noisy step.
 */

// Stored in checkpoints by name: once committed, a schedule's name never changes meaning (its
// formula and constants stay as they are); a new variant gets a new name (docs/design.md §8).
export type ScheduleName = 'linear' | 'cosine' | 'sigmoid';

/** β_t of the schedule, length T. */
export function betaSchedule(name: ScheduleName, T: number): Float64Array {
  if (!Number.isInteger(T) || T < 2) throw new Error(`diffusion.timesteps must be an integer ≥ 2, got ${T}`);
  const betas = new Float64Array(T);
  switch (name) {
    case 'linear': {
      // Ho et al. 2020 used 1e-4…0.02 for T = 1000; scaling by 1000/T keeps ᾱ_T comparable for other T.
      const scale = 1000 / T;
      const lo = scale * 1e-4;
      const hi = scale * 0.02;
      if (hi >= 1)
        throw new Error(
          `diffusion.timesteps: the linear schedule needs T > 20 (its last β is 20/T), got ${T}`,
        );
      for (let i = 0; i < T; i++) betas[i] = lo + ((hi - lo) * i) / (T - 1);
      return betas;
    }
    case 'cosine': {
      // Nichol & Dhariwal 2021, eq. 17: ᾱ(t) = f(t)/f(0), f(t) = cos²(((t/T + s)/(1 + s))·π/2).
      const s = 0.008;
      const f = (t: number) => Math.cos(((t / T + s) / (1 + s)) * (Math.PI / 2)) ** 2;
      return alphaBarToBetas(f, T);
    }
    case 'sigmoid': {
      // Jabri/Chen 2023 sigmoid schedule: start −3, end 3, τ = 1.
      const start = -3;
      const end = 3;
      const tau = 1;
      const sig = (x: number) => 1 / (1 + Math.exp(-x));
      const vStart = sig(start / tau);
      const vEnd = sig(end / tau);
      const f = (t: number) => (vEnd - sig(((t / T) * (end - start) + start) / tau)) / (vEnd - vStart);
      return alphaBarToBetas(f, T);
    }
    default:
      throw new Error(`unknown diffusion.schedule '${String(name)}'`);
  }
}

/** β_i = min(1 − ᾱ((i+1))/ᾱ(i), 0.999) for a continuous ᾱ on [0, T]; the clip avoids a singular end. */
function alphaBarToBetas(alphaBar: (t: number) => number, T: number): Float64Array {
  const betas = new Float64Array(T);
  for (let i = 0; i < T; i++) {
    betas[i] = Math.min(1 - alphaBar(i + 1) / alphaBar(i), 0.999);
  }
  return betas;
}

/** Every per-timestep constant the maths uses, each of length T. */
export interface Schedule {
  readonly T: number;
  readonly betas: Float64Array;
  /** log β_t (the upper end of a learned variance). */
  readonly logBetas: Float64Array;
  readonly alphas: Float64Array;
  readonly alphasCumprod: Float64Array;
  /** ᾱ_{t−1}, with ᾱ_{−1} = 1. */
  readonly alphasCumprodPrev: Float64Array;
  readonly sqrtAlphasCumprod: Float64Array;
  readonly sqrtOneMinusAlphasCumprod: Float64Array;
  readonly sqrtRecipAlphasCumprod: Float64Array;
  readonly sqrtRecipm1AlphasCumprod: Float64Array;
  /** β̃_t = β_t (1 − ᾱ_{t−1}) / (1 − ᾱ_t). */
  readonly posteriorVariance: Float64Array;
  /** log β̃_t with t = 0 replaced by t = 1 (β̃_0 = 0). */
  readonly posteriorLogVarianceClipped: Float64Array;
  readonly posteriorMeanCoef1: Float64Array;
  readonly posteriorMeanCoef2: Float64Array;
}

/**
 * Zero terminal SNR (Lin et al. 2023, Algorithm 1): shifts √ᾱ_t so that its last value is 0 and
 * rescales it so that its first value is unchanged; the last β becomes 1 (x_T is pure noise, as
 * sampling assumes). Needs a prediction target other than ε (ε̂ says nothing about x₀ at SNR 0).
 */
export function rescaleZeroTerminalSnr(betas: Float64Array): Float64Array {
  const T = betas.length;
  const sqrtAc = new Float64Array(T);
  let prod = 1;
  for (let t = 0; t < T; t++) {
    prod *= 1 - (betas[t] as number);
    sqrtAc[t] = Math.sqrt(prod);
  }
  const first = sqrtAc[0] as number;
  const last = sqrtAc[T - 1] as number;
  const out = new Float64Array(T);
  let prevAc = 1;
  for (let t = 0; t < T; t++) {
    const r = (((sqrtAc[t] as number) - last) * first) / (first - last);
    const ac = r * r;
    out[t] = 1 - ac / prevAc;
    prevAc = ac;
  }
  out[T - 1] = 1;
  return out;
}

/** Derives the constants of a schedule from its β_t (only the last may be 1: zero terminal SNR). */
export function makeSchedule(betas: Float64Array): Schedule {
  const T = betas.length;
  const mk = () => new Float64Array(T);
  const alphas = mk();
  const ac = mk();
  const acPrev = mk();
  let prod = 1;
  for (let t = 0; t < T; t++) {
    const b = betas[t] as number;
    if (!(b > 0 && (b < 1 || (b === 1 && t === T - 1)))) throw new Error(`β_${t} = ${b} is outside (0, 1)`);
    alphas[t] = 1 - b;
    acPrev[t] = prod;
    prod *= 1 - b;
    ac[t] = prod;
  }
  const s: Schedule = {
    T,
    betas,
    logBetas: betas.map(Math.log),
    alphas,
    alphasCumprod: ac,
    alphasCumprodPrev: acPrev,
    sqrtAlphasCumprod: ac.map(Math.sqrt),
    sqrtOneMinusAlphasCumprod: ac.map((a) => Math.sqrt(1 - a)),
    sqrtRecipAlphasCumprod: ac.map((a) => Math.sqrt(1 / a)),
    sqrtRecipm1AlphasCumprod: ac.map((a) => Math.sqrt(1 / a - 1)),
    posteriorVariance: mk(),
    posteriorLogVarianceClipped: mk(),
    posteriorMeanCoef1: mk(),
    posteriorMeanCoef2: mk(),
  };
  for (let t = 0; t < T; t++) {
    const b = betas[t] as number;
    const a = ac[t] as number;
    const ap = acPrev[t] as number;
    s.posteriorVariance[t] = (b * (1 - ap)) / (1 - a);
    s.posteriorMeanCoef1[t] = (b * Math.sqrt(ap)) / (1 - a);
    s.posteriorMeanCoef2[t] = ((1 - ap) * Math.sqrt(alphas[t] as number)) / (1 - a);
  }
  for (let t = 0; t < T; t++) {
    const v = t === 0 && T > 1 ? (s.posteriorVariance[1] as number) : (s.posteriorVariance[t] as number);
    s.posteriorLogVarianceClipped[t] = Math.log(v);
  }
  return s;
}

/** The schedule named in the config, rescaled to zero terminal SNR when asked. */
export function scheduleFor(name: ScheduleName, T: number, zeroTerminalSnr = false): Schedule {
  const betas = betaSchedule(name, T);
  return makeSchedule(zeroTerminalSnr ? rescaleZeroTerminalSnr(betas) : betas);
}

/** The schedule of a job's `diffusion` config. */
export function scheduleOf(d: {
  schedule: ScheduleName;
  timesteps: number;
  zero_terminal_snr: boolean;
}): Schedule {
  return scheduleFor(d.schedule, d.timesteps, d.zero_terminal_snr);
}

/** Signal-to-noise ratio ᾱ_t / (1 − ᾱ_t) per timestep (0 at a zero-terminal-SNR end). */
export function snr(s: Schedule): Float64Array {
  return s.alphasCumprod.map((a) => a / (1 - a));
}
