/**
 * `ringdiff bench sample`: quality against NFE for each sampler and step count, on one model. The
 * target is exact for the analytic model (its mixture: sliced W₂ to an exact sample, mode weights,
 * mean and covariance), and the training data for a checkpoint (sliced W₂, mean, covariance). The
 * noise floor is the same measure for another exact draw of the same size: below it no sampler can
 * be told apart from the target with this many samples. Runs that solve the probability-flow ODE
 * (no noise after x_T) are also measured against its solution for the same x_T: ode-rk45 at
 * tolerance 1e-6 on the same model. That error is free of sampling noise and shows each solver's order.
 */
import type { Denoiser } from '../nets/denoiser.js';
import { mixtureMoments, type Mixture } from '../nets/analytic.js';
import type { Params } from '../params.js';
import type { Prediction } from '../diffusion/prediction.js';
import type { ContinuousProcess } from '../diffusion/continuous.js';
import type { Schedule } from '../diffusion/schedule.js';
import { SAMPLERS, isDeterministic, type SamplerName } from './registry.js';
import type { SamplerSettings } from './sampler.js';
import { sampleSet } from './sample.js';
import { modeWeights, sampleMoments, slicedWasserstein } from './quality.js';

/** One run of the bench: a sampler at a step count (or, for ode-rk45, a tolerance). */
export interface BenchRun {
  sampler: SamplerName;
  steps: number | null;
  tolerance: number | null;
}

/** A run's result: NFE per sample, wall time, and its quality (null: not defined for this target). */
export interface BenchRow extends BenchRun {
  nfe: number;
  seconds: number;
  sw2: number;
  modeTv: number | null;
  meanErr: number;
  covErr: number | null;
  /** RMS distance per sample to the PF-ODE solution for the same x_T (null: the run draws noise). */
  odeErr: number | null;
}

/** Tolerance of the reference PF-ODE solution of a bench. */
export const ODE_REFERENCE_TOLERANCE = 1e-6;

/** RMS over samples of the Euclidean distance between two sample sets (n × D). */
export function rmsDistance(a: Float32Array, b: Float32Array, D: number): number {
  const n = Math.floor(a.length / D);
  let s = 0;
  for (let i = 0; i < a.length; i++) s += ((a[i] as number) - (b[i] as number)) ** 2;
  return Math.sqrt(s / Math.max(n, 1));
}

/** The runs of a bench: ddpm once (all T), ddim at steps ≤ T, ode-rk45 per tolerance, the rest per step count. */
export function benchRuns(
  samplers: readonly SamplerName[],
  steps: readonly number[],
  tolerances: readonly number[],
  T: number,
): BenchRun[] {
  const runs: BenchRun[] = [];
  for (const sampler of samplers) {
    if (sampler === 'ddpm') runs.push({ sampler, steps: T, tolerance: null });
    else if (sampler === 'ode-rk45')
      for (const tolerance of tolerances) runs.push({ sampler, steps: null, tolerance });
    else
      for (const k of steps)
        if (sampler !== 'ddim' || k <= T) runs.push({ sampler, steps: k, tolerance: null });
  }
  return runs;
}

/** The target of a bench: reference samples (any number × D), and the exact mixture when there is one. */
export interface BenchTarget {
  reference: Float32Array;
  /** A second independent draw of the target, of the bench's sample size: the noise floor. */
  second: Float32Array;
  mixture: Mixture | null;
}

/** Quality of samples x against the target (moments: the mixture's exactly, else the reference's). */
export function benchQuality(
  x: Float32Array,
  D: number,
  t: BenchTarget,
): Pick<BenchRow, 'sw2' | 'modeTv' | 'meanErr' | 'covErr'> {
  const target = t.mixture ? mixtureMoments(t.mixture) : sampleMoments(t.reference, D);
  // A covariance of images (D² entries) says little and costs much: only for small D.
  const withCov = D <= 64;
  const got = withCov ? sampleMoments(x, D) : { mean: meanOf(x, D), cov: [] as number[][] };
  const mean = got.mean;
  let meanErr = 0;
  let covErr = 0;
  for (let a = 0; a < D; a++) {
    meanErr += ((mean[a] as number) - (target.mean[a] as number)) ** 2;
    if (withCov)
      for (let b = 0; b < D; b++)
        covErr += (((got.cov[a] as number[])[b] as number) - ((target.cov[a] as number[])[b] as number)) ** 2;
  }
  const f = t.mixture ? modeWeights(t.mixture, x) : null;
  return {
    sw2: slicedWasserstein(x, t.reference, D),
    modeTv:
      f && t.mixture ? 0.5 * f.reduce((s, v, k) => s + Math.abs(v - (t.mixture?.weights[k] ?? 0)), 0) : null,
    meanErr: Math.sqrt(meanErr),
    covErr: withCov ? Math.sqrt(covErr) : null,
  };
}

function meanOf(x: Float32Array, D: number): number[] {
  const n = Math.floor(x.length / D);
  const m = new Array<number>(D).fill(0);
  for (let i = 0; i < n; i++)
    for (let d = 0; d < D; d++) m[d] = (m[d] as number) + (x[i * D + d] as number) / n;
  return m;
}

/** A bench: the model (weights, schedule, target kind), the target, the runs and their common settings. */
export interface SampleBenchOptions {
  model: Denoiser;
  params: Params;
  schedule: Schedule;
  prediction: Prediction;
  learnSigma: boolean;
  /** The continuous-time process of an sde or edm model; absent = DDPM. */
  process?: ContinuousProcess | null;
  clip: boolean;
  target: BenchTarget;
  runs: BenchRun[];
  count: number;
  seed: number;
  chunk: number;
  /** Settings other than steps and tolerance (discretisation, ρ, churn, snr, …). */
  settings: SamplerSettings;
  /** Measure deterministic runs against the PF-ODE solution (costs one ode-rk45 run at 1e-6). */
  odeReference?: boolean;
  log?: (line: string) => void;
}

/** Runs every bench run on the model and measures it against the target. */
export function runSampleBench(o: SampleBenchOptions): BenchRow[] {
  const D = o.model.dataShape.reduce((a, b) => a * b, 1);
  const draw = (run: BenchRun, settings: SamplerSettings) =>
    sampleSet(o.model, o.params, o.schedule, {
      ...settings,
      count: o.count,
      sampler: run.sampler,
      guidance: 0,
      classLabel: null,
      seed: o.seed,
      prediction: o.prediction,
      learnSigma: o.learnSigma,
      process: o.process ?? null,
      clip: o.clip,
      chunk: o.chunk,
    });
  const settingsFor = (run: BenchRun): SamplerSettings => ({
    ...o.settings,
    steps: run.steps ?? o.settings.steps,
    tolerance: run.tolerance ?? o.settings.tolerance,
    // Settings a sampler does not read stay at their defaults (e.g. a discretisation for ddpm).
    discretization: SAMPLERS[run.sampler].uses.includes('discretization')
      ? o.settings.discretization
      : 'auto',
  });
  let reference: Float32Array | null = null;
  if (o.odeReference !== false && o.runs.some((r) => isDeterministic(r.sampler, settingsFor(r)))) {
    const ref = { sampler: 'ode-rk45' as const, steps: null, tolerance: ODE_REFERENCE_TOLERANCE };
    reference = draw(ref, settingsFor(ref)).samples;
    o.log?.(`PF-ODE reference: ode-rk45 at tolerance ${ODE_REFERENCE_TOLERANCE}`);
  }
  return o.runs.map((run) => {
    const settings = settingsFor(run);
    const t0 = performance.now();
    const { samples, nfe } = draw(run, settings);
    const seconds = (performance.now() - t0) / 1000;
    const odeErr =
      reference && isDeterministic(run.sampler, settings) ? rmsDistance(samples, reference, D) : null;
    const row = { ...run, nfe, seconds, ...benchQuality(samples, D, o.target), odeErr };
    o.log?.(
      `${run.sampler} ${run.steps ?? `tol ${run.tolerance}`}: NFE ${fmt(nfe)}, SW2 ${fmt(row.sw2)}, ${seconds.toFixed(1)} s`,
    );
    return row;
  });
}

function fmt(v: number | null): string {
  if (v === null) return '-';
  if (Number.isInteger(v)) return String(v);
  if (v !== 0 && Math.abs(v) < 1e-3) return v.toExponential(2);
  return Math.abs(v) >= 100 ? v.toFixed(1) : v.toPrecision(3);
}

/** The table of a bench: one line per run, and the noise floor of sliced W₂. */
export function formatBenchTable(rows: readonly BenchRow[], floor: number, what: string): string {
  const head = ['sampler', 'steps', 'NFE', 'SW2', 'mode TV', '|Δmean|', '‖ΔCov‖F', 'ODE err', 's'];
  const body = rows.map((r) => [
    r.sampler,
    r.steps === null ? `tol ${r.tolerance}` : String(r.steps),
    fmt(r.nfe),
    fmt(r.sw2),
    fmt(r.modeTv),
    fmt(r.meanErr),
    fmt(r.covErr),
    fmt(r.odeErr),
    r.seconds.toFixed(1),
  ]);
  const w = head.map((h, i) => Math.max(h.length, ...body.map((b) => (b[i] as string).length)));
  const line = (cells: string[]) =>
    cells.map((c, i) => (i === 0 ? c.padEnd(w[i] as number) : c.padStart(w[i] as number))).join('  ');
  return [
    `quality vs NFE on ${what}; SW2 noise floor (another draw of the target, same size) ${fmt(floor)}; ODE err: RMS distance to the PF-ODE solution of the same noise (ode-rk45, tolerance ${ODE_REFERENCE_TOLERANCE})`,
    line(head),
    ...body.map(line),
  ].join('\n');
}
