/**
 * The exact denoiser of Gaussian-mixture data (`model.kind: analytic`): an oracle for samplers.
 * For x₀ ~ Σ_k π_k N(μ_k, diag s_k²) and x = x₀ + σε (x_t = √ᾱ·x under the VP forward process of
 * any schedule), every marginal is again a mixture, Σ_k π_k N(μ_k, diag(s_k² + σ²)), and
 *   E[x₀ | x] = Σ_k r_k(x) (μ_k + s_k²/(s_k² + σ²)·(x − μ_k)),  r_k ∝ π_k N(x; μ_k, diag(s_k² + σ²)).
 * It answers as a trained network would — the prediction target (ε, x₀ or v) at fractional
 * timesteps of its schedule — so every sampler can be checked, and demonstrated, without training.
 * With labels, label k < K conditions on component k (r = one-hot) and the null class K on the
 * mixture, so guidance has an exact oracle too. It has no trainable parameters.
 */
import * as tf from '@tensorflow/tfjs';
import type { Prediction } from '../diffusion/prediction.js';
import type { Schedule } from '../diffusion/schedule.js';
import { scheduleSigmas, sigmaAtTimestep } from '../diffusion/sigmas.js';
import { Purpose, stream } from '../rng.js';
import type { Params } from '../params.js';
import type { Denoiser } from './denoiser.js';
import type { ParamSpec } from './layers.js';

/** A Gaussian mixture with diagonal covariances: K weights, K means and K std vectors of D values. */
export interface Mixture {
  readonly weights: readonly number[];
  readonly means: readonly (readonly number[])[];
  readonly std: readonly (readonly number[])[];
}

/** `model.analytic`'s std (one value, one per component, or one vector per component) as K × D. */
export function mixtureOf(
  weights: readonly number[],
  means: readonly (readonly number[])[],
  std: number | readonly (number | readonly number[])[],
): Mixture {
  const D = means[0]?.length ?? 0;
  const K = means.length;
  const rows = Array.from({ length: K }, (_, k) => {
    const s = typeof std === 'number' ? std : std[k];
    return typeof s === 'number' ? new Array<number>(D).fill(s) : [...(s ?? [])];
  });
  return { weights: [...weights], means: means.map((m) => [...m]), std: rows };
}

/** Mean [D] and covariance [D × D] of the mixture (law of total variance). */
export function mixtureMoments(m: Mixture): { mean: number[]; cov: number[][] } {
  const D = m.means[0]?.length ?? 0;
  const mean = new Array<number>(D).fill(0);
  m.weights.forEach((w, k) => m.means[k]?.forEach((v, d) => (mean[d] = (mean[d] as number) + w * v)));
  const cov = Array.from({ length: D }, () => new Array<number>(D).fill(0));
  m.weights.forEach((w, k) => {
    const mu = m.means[k] as readonly number[];
    const s = m.std[k] as readonly number[];
    for (let a = 0; a < D; a++)
      for (let b = 0; b < D; b++) {
        const c = ((mu[a] as number) - (mean[a] as number)) * ((mu[b] as number) - (mean[b] as number));
        const row = cov[a] as number[];
        row[b] = (row[b] as number) + w * (c + (a === b ? (s[a] as number) ** 2 : 0));
      }
  });
  return { mean, cov };
}

/** n exact samples [n × D] of the mixture, sample i from the counter stream (seed, i). */
export function sampleMixture(m: Mixture, n: number, seed: number): Float32Array {
  const D = m.means[0]?.length ?? 0;
  const out = new Float32Array(n * D);
  for (let i = 0; i < n; i++) {
    const s = stream(seed, 0, i, Purpose.oracle);
    const k = componentOf(m.weights, s.uniform());
    const mu = m.means[k] as readonly number[];
    const sd = m.std[k] as readonly number[];
    for (let d = 0; d < D; d++) out[i * D + d] = (mu[d] as number) + (sd[d] as number) * s.normal();
  }
  return out;
}

/** The component of uniform u ∈ (0, 1) under cumulative weights. */
function componentOf(weights: readonly number[], u: number): number {
  let acc = 0;
  for (let k = 0; k < weights.length; k++) {
    acc += weights[k] as number;
    if (u < acc) return k;
  }
  return weights.length - 1;
}

/**
 * Responsibilities r_k(x_i) of the components for example i of x (B × D row-major) at noise
 * variance s2, written into `r` (K values); a label y < K pins component y.
 */
function responsibilities(
  m: Mixture,
  logw: readonly number[],
  x: ArrayLike<number>,
  i: number,
  s2: number,
  y: number,
  r: Float64Array,
): void {
  const K = m.weights.length;
  const D = m.means[0]?.length ?? 0;
  let top = -Infinity;
  for (let k = 0; k < K; k++) {
    if (y < K && k !== y) {
      r[k] = -Infinity;
      continue;
    }
    const mu = m.means[k] as readonly number[];
    const sd = m.std[k] as readonly number[];
    let q = 0;
    for (let d = 0; d < D; d++) {
      const v = (sd[d] as number) ** 2 + s2;
      q += ((x[i * D + d] as number) - (mu[d] as number)) ** 2 / v + Math.log(v);
    }
    r[k] = (logw[k] as number) - 0.5 * q;
    top = Math.max(top, r[k] as number);
  }
  let z = 0;
  for (let k = 0; k < K; k++) z += Math.exp((r[k] as number) - top);
  for (let k = 0; k < K; k++) r[k] = Math.exp((r[k] as number) - top) / z;
}

/**
 * E[x₀ | x₀ + σε = x] of the mixture, on the host in float64 (a few components in a few
 * dimensions: a loop beats a chain of small tensor ops). x: B × D row-major; per-example σ (B values
 * ≥ 0); labels (B values, k < K: component k; K or null: the mixture). Returns B × D.
 */
export function mixtureDenoiseHost(
  m: Mixture,
  x: ArrayLike<number>,
  sigma: ArrayLike<number>,
  labels: ArrayLike<number> | null,
): Float64Array {
  return mixturePosteriorHost(m, x, sigma, labels, false).mean;
}

/**
 * Mean and per-coordinate variance of x₀ given x₀ + σε = x (as `mixtureDenoiseHost`; variance
 * only when asked, else empty): Var = Σ_k r_k (v_k + (m_k − mean)²), v_k = s_k²σ²/(s_k² + σ²).
 */
export function mixturePosteriorHost(
  m: Mixture,
  x: ArrayLike<number>,
  sigma: ArrayLike<number>,
  labels: ArrayLike<number> | null,
  withVariance = true,
): { mean: Float64Array; variance: Float64Array } {
  const K = m.weights.length;
  const D = m.means[0]?.length ?? 0;
  const B = sigma.length;
  const mean = new Float64Array(B * D);
  const variance = new Float64Array(withVariance ? B * D : 0);
  const r = new Float64Array(K);
  const logw = m.weights.map(Math.log);
  const compMean = (k: number, i: number, d: number, s2: number): number => {
    const mu = (m.means[k] as readonly number[])[d] as number;
    const v = ((m.std[k] as readonly number[])[d] as number) ** 2;
    return mu + (v / (v + s2)) * ((x[i * D + d] as number) - mu);
  };
  for (let i = 0; i < B; i++) {
    const s2 = (sigma[i] as number) ** 2;
    responsibilities(m, logw, x, i, s2, labels ? (labels[i] as number) : K, r);
    for (let k = 0; k < K; k++) {
      const rk = r[k] as number;
      if (rk === 0) continue;
      for (let d = 0; d < D; d++) mean[i * D + d] = (mean[i * D + d] as number) + rk * compMean(k, i, d, s2);
    }
    if (!withVariance) continue;
    for (let k = 0; k < K; k++) {
      const rk = r[k] as number;
      if (rk === 0) continue;
      for (let d = 0; d < D; d++) {
        const v = ((m.std[k] as readonly number[])[d] as number) ** 2;
        const dev = compMean(k, i, d, s2) - (mean[i * D + d] as number);
        variance[i * D + d] = (variance[i * D + d] as number) + rk * ((v * s2) / (v + s2) + dev * dev);
      }
    }
  }
  return { mean, variance };
}

/** `mixtureDenoiseHost` on tensors: x [B, D] → [B, D]. */
export function mixtureDenoise(
  m: Mixture,
  x: tf.Tensor,
  sigma: ArrayLike<number>,
  labels: Int32Array | null,
): tf.Tensor {
  return tf.tensor(Float32Array.from(mixtureDenoiseHost(m, x.dataSync(), sigma, labels)), x.shape, 'float32');
}

/** The analytic denoiser as a network of `prediction` on schedule `schedule` (vector data [D]). */
export class AnalyticDenoiser implements Denoiser {
  readonly dataShape: readonly number[];
  readonly numClasses: number;
  /** No parameters: nothing to train, initialise or checkpoint. */
  readonly specs: readonly ParamSpec[] = [];
  private readonly sigmas: Float64Array;

  constructor(
    readonly mixture: Mixture,
    schedule: Schedule,
    private readonly prediction: Prediction,
    /** 0 (unconditional) or K (label k = component k, K = the null class). */
    numClasses = 0,
  ) {
    const K = mixture.weights.length;
    if (numClasses !== 0 && numClasses !== K)
      throw new Error(
        `model.num_classes: the analytic model has ${K} components; use 0 or ${K}, got ${numClasses}`,
      );
    this.dataShape = [mixture.means[0]?.length ?? 0];
    this.numClasses = numClasses;
    this.sigmas = scheduleSigmas(schedule);
  }

  init(_seed: number): Params {
    return new Map();
  }

  /** The prediction target at x_t ([B, D]) for timesteps t ([B], fractional allowed), labels y or null. */
  apply(_params: Params, x: tf.Tensor, t: tf.Tensor1D, y: tf.Tensor1D | null): tf.Tensor {
    const ts = t.dataSync();
    const labels = y ? y.dataSync() : null;
    const xt = x.dataSync();
    const B = ts.length;
    const D = this.dataShape[0] as number;
    const { sigma, xs } = this.unscaled(xt, ts);
    const x0 = mixtureDenoiseHost(this.mixture, xs, sigma, labels);
    const out = new Float32Array(B * D);
    for (let i = 0; i < B; i++) {
      const s = sigma[i] as number;
      const a = 1 / Math.sqrt(1 + s * s);
      const b = s * a;
      for (let d = 0; d < D; d++) {
        const j = i * D + d;
        const eps = ((xt[j] as number) - a * (x0[j] as number)) / b;
        out[j] =
          this.prediction === 'x0'
            ? (x0[j] as number)
            : this.prediction === 'eps'
              ? eps
              : a * eps - b * (x0[j] as number);
      }
    }
    return tf.tensor(out, x.shape, 'float32');
  }

  /**
   * Var(x₀ | x_t) per coordinate, [B, D] float32, for x_t [B, D] at timesteps t (B values) and
   * labels (as `apply`; null = the mixture): what the optimal reverse variance of the bound needs.
   */
  x0Variance(x: tf.Tensor, t: ArrayLike<number>, labels: ArrayLike<number> | null): tf.Tensor {
    const { sigma, xs } = this.unscaled(x.dataSync(), t);
    const { variance } = mixturePosteriorHost(this.mixture, xs, sigma, labels);
    return tf.tensor(Float32Array.from(variance), x.shape, 'float32');
  }

  /** σ of each timestep and x_t/√ᾱ = x₀ + σε (B × D, float64). */
  private unscaled(xt: ArrayLike<number>, ts: ArrayLike<number>): { sigma: Float64Array; xs: Float64Array } {
    const B = ts.length;
    const D = this.dataShape[0] as number;
    const sigma = Float64Array.from(ts, (v) => sigmaAtTimestep(this.sigmas, v));
    // x_t = a·(x₀ + σε) with a = √ᾱ = 1/√(1+σ²), b = √(1−ᾱ) = σa.
    const xs = new Float64Array(B * D);
    for (let i = 0; i < B; i++) {
      const inv = Math.sqrt(1 + (sigma[i] as number) ** 2);
      for (let d = 0; d < D; d++) xs[i * D + d] = (xt[i * D + d] as number) * inv;
    }
    return { sigma, xs };
  }
}
