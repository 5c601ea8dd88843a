/**
 * `ringdiff eval nll`: the variational bound on the negative log-likelihood of held-out data, in
 * bits per dimension ± standard error, split into prior / Σ KL / decoder, and the per-term curve
 * (where the bits go) as JSON for the run report. The estimator is described in src/eval/nll.ts.
 */
import { existsSync, readFileSync } from 'node:fs';
import { mkdir } from 'node:fs/promises';
import * as path from 'node:path';
import cliProgress from 'cli-progress';
import { listCheckpoints } from '../model/checkpoint.js';
import { initBackend } from '../model/backend/index.js';
import { jobDenoiser } from '../model/nets/factory.js';
import { AnalyticDenoiser, sampleMixture } from '../model/nets/analytic.js';
import { disposeParams } from '../model/params.js';
import { scheduleOf } from '../model/diffusion/schedule.js';
import { REVERSE_VARIANCES, type ReverseVariance } from '../model/diffusion/bound.js';
import { heldOutSpec, openDataset } from '../data/spec.js';
import { boundTerms, summarize, type BoundSettings, type BoundSummary } from '../eval/nll.js';
import { writeFileAtomic } from '../util/atomic.js';
import { loadSampleModel } from './sample.js';
import { UsageError } from './common.js';

export { heldOutSpec };

/** The options of `ringdiff eval nll` (commander names). */
export interface EvalNllOptions {
  checkpoint?: string;
  config?: string;
  set?: string[];
  data?: string;
  count?: number;
  timesteps: string;
  variance?: string;
  batch: number;
  seed: number;
  json?: boolean;
  out?: string;
  ema: boolean;
  backend?: string;
  progress?: boolean;
}

/** A checkpoint directory, or the newest checkpoint of a run directory, and its run directory. */
async function checkpointOf(p: string): Promise<{ dir: string; runDir: string; step: number }> {
  if (existsSync(path.join(p, 'state.json'))) {
    const state = JSON.parse(readFileSync(path.join(p, 'state.json'), 'utf8')) as { step?: unknown };
    const step = typeof state.step === 'number' ? state.step : NaN;
    return { dir: p, runDir: path.dirname(path.resolve(p)), step };
  }
  const newest = (await listCheckpoints(p)).at(-1);
  if (!newest)
    throw new UsageError(
      `--checkpoint ${p}: neither a checkpoint (no state.json) nor a run directory with ckpt-* checkpoints`,
    );
  return { dir: newest.dir, runDir: p, step: newest.step };
}

/** `--timesteps K|all` → K. */
function timestepsOption(v: string, T: number): number {
  if (v === 'all') return T;
  const k = Number(v);
  if (!Number.isInteger(k) || k < 2 || k > T)
    throw new UsageError(`--timesteps must be an integer in 2…${T} (the model's T) or all, got '${v}'`);
  return k;
}

/** Runs the evaluation and prints (or writes) its summary. */
export async function evalNll(o: EvalNllOptions): Promise<void> {
  if (o.checkpoint !== undefined && o.config !== undefined)
    throw new UsageError('--checkpoint and --config: give one of them');
  if (o.checkpoint === undefined && o.config === undefined)
    throw new UsageError(
      'eval nll: give --checkpoint <run dir or checkpoint>, or --config <file> of an analytic model',
    );
  if (o.variance !== undefined && !(REVERSE_VARIANCES as readonly string[]).includes(o.variance))
    throw new UsageError(`--variance must be one of ${REVERSE_VARIANCES.join(', ')}, got '${o.variance}'`);
  if (o.timesteps !== 'all' && !/^\d+$/.test(o.timesteps))
    throw new UsageError(`--timesteps must be an integer or all, got '${o.timesteps}'`);
  await initBackend(o.backend);
  const ck = o.checkpoint !== undefined ? await checkpointOf(o.checkpoint) : null;
  const { cfg, dataShape, params, what } = await loadSampleModel({ ...o, checkpoint: ck?.dir });
  try {
    const T = cfg.diffusion.timesteps;
    const d = cfg.diffusion;
    if (d.objective !== 'ddpm')
      throw new UsageError(
        `eval nll: the bound is that of the discrete DDPM process; diffusion.objective is ${d.objective} (its likelihood needs the probability-flow ODE, not implemented)`,
      );
    const timesteps = timestepsOption(o.timesteps, T);
    const variance = (o.variance ?? (d.learn_sigma ? 'learned' : d.sigma)) as ReverseVariance;
    const denoiser = jobDenoiser(cfg, dataShape);
    const analytic = denoiser instanceof AnalyticDenoiser ? denoiser : null;
    if (variance === 'learned' && !d.learn_sigma)
      throw new UsageError(
        '--variance learned: this model has no learned variance (diffusion.learn_sigma: false)',
      );
    if (variance === 'optimal' && !analytic)
      throw new UsageError(
        '--variance optimal: only an analytic model (model.kind: analytic) knows the optimal variance',
      );
    const images = dataShape.length === 3;
    const size = dataShape.reduce((a, b) => a * b, 1);

    // The examples: the held-out split, or exact draws of an analytic model's mixture.
    const spec = o.data ?? (analytic ? null : heldOutSpec(cfg.data.dataset));
    if (o.data === undefined && cfg.data.dataset === 'mnist')
      process.stderr.write(
        `note: the job trained on all of ${cfg.data.dataset}, which contains ${spec}: the examples are not held out\n`,
      );
    if (spec === null && !analytic)
      throw new UsageError(
        `--data: the job's dataset ${cfg.data.dataset} has no held-out split to default to; give --data <spec>`,
      );
    let x0: Float32Array;
    let labels: Int32Array | null;
    let dataName: string;
    if (spec === null && analytic) {
      const count = o.count ?? 1000;
      x0 = sampleMixture(analytic.mixture, count, o.seed);
      labels = null;
      dataName = `${count} exact draws of the analytic mixture (seed ${o.seed})`;
    } else {
      const ds = (() => {
        try {
          return openDataset({ ...cfg.data, dataset: spec as string });
        } catch (e) {
          throw new UsageError(`--data ${spec}: ${(e as Error).message}`);
        }
      })();
      if (ds.shape.length !== dataShape.length || ds.shape.some((v, i) => v !== dataShape[i]))
        throw new UsageError(
          `--data ${spec}: examples of shape [${ds.shape.join(', ')}], the model takes [${dataShape.join(', ')}]`,
        );
      const count = o.count ?? Math.min(ds.size, 1000);
      if (count > ds.size) throw new UsageError(`--count ${count}: ${spec} has only ${ds.size} examples`);
      // Evenly spaced, not the first N: a split stored in class order would bias the first N.
      x0 = new Float32Array(count * size);
      labels = new Int32Array(count);
      for (let j = 0; j < count; j++) {
        const e = ds.get(Math.floor((j * ds.size) / count));
        x0.set(e.x, j * size);
        labels[j] = e.label;
      }
      dataName = `${count} of ${ds.size} examples of ${spec}`;
    }
    const count = x0.length / size;

    // Conditional models: the null class when trained with class dropout (the unconditional
    // likelihood), else the true labels (then it is −log p(x | y)).
    let conditioning = 'unconditional';
    const K = denoiser.numClasses;
    if (K > 0) {
      if (cfg.model.class_dropout > 0 || !labels) {
        labels = new Int32Array(count).fill(K);
        conditioning = 'null class (unconditional likelihood)';
      } else {
        if (labels.some((y) => y < 0 || y >= K))
          throw new UsageError(
            `--data ${spec}: the model needs labels 0…${K - 1} and was trained without class dropout`,
          );
        conditioning = 'true labels (−log p(x | y))';
      }
    } else labels = null;

    const settings: BoundSettings = {
      variance,
      decoder: images ? 'discretized' : 'continuous',
      timesteps,
      seed: o.seed,
      batch: o.batch,
    };
    const schedule = scheduleOf(d);
    const bar =
      o.progress !== false && process.stderr.isTTY
        ? new cliProgress.SingleBar(
            { format: 'eval nll |{bar}| {percentage}% | ETA {eta_formatted}' },
            cliProgress.Presets.shades_classic,
          )
        : null;
    bar?.start(count * timesteps, 0);
    const t0 = Date.now();
    let summary: BoundSummary;
    try {
      const part = boundTerms(
        {
          denoiser,
          params,
          schedule,
          prediction: d.prediction,
          learnSigma: d.learn_sigma,
          clip: images && d.clip_denoised,
          x0Variance: analytic ? (xt, t, y) => analytic.x0Variance(xt, t, y) : undefined,
        },
        settings,
        x0,
        labels,
        Array.from({ length: count }, (_, i) => i),
        (done) => bar?.update(done),
      );
      summary = summarize(part, settings, T);
    } finally {
      bar?.stop();
    }
    const report = {
      model: what,
      step: ck ? ck.step : null,
      data: dataName,
      conditioning,
      seconds: (Date.now() - t0) / 1000,
      ...jsonOf(summary),
    };
    const text = `${JSON.stringify(report, null, 2)}\n`;
    const out =
      o.out ??
      (ck ? path.join(ck.runDir, 'eval', `nll-step${ck.step}-${variance}-k${timesteps}.json`) : null);
    if (out !== null) {
      await mkdir(path.dirname(path.resolve(out)), { recursive: true });
      await writeFileAtomic(out, text);
    }
    if (o.json) process.stdout.write(text);
    else process.stdout.write(humanSummary(report.model, dataName, conditioning, summary, out));
  } finally {
    disposeParams(params);
  }
}

/** The summary as the JSON the report reads (snake_case, bits per dimension). */
export function jsonOf(s: BoundSummary): Record<string, unknown> {
  const e = (v: { mean: number; se: number }) => ({ mean: v.mean, se: Number.isFinite(v.se) ? v.se : null });
  return {
    count: s.count,
    T: s.T,
    timesteps: s.timesteps,
    estimator: s.estimator,
    variance: s.variance,
    decoder: s.decoder === 'discretized' ? 'discretized-8bit' : 'continuous-density',
    seed: s.seed,
    bits_per_dim: e(s.bitsPerDim),
    nats_per_dim: e(s.natsPerDim),
    terms_bits_per_dim: { prior: e(s.prior), kl: e(s.kl), decoder: e(s.decoderTerm) },
    curve: s.curve,
  };
}

function humanSummary(
  model: string,
  data: string,
  conditioning: string,
  s: BoundSummary,
  out: string | null,
): string {
  const f = (v: { mean: number; se: number }) =>
    `${v.mean.toFixed(4)} ± ${Number.isFinite(v.se) ? v.se.toFixed(4) : 'n/a'}`;
  const how =
    s.estimator === 'full'
      ? `all ${s.T} terms per example`
      : `${s.timesteps} of ${s.T} timesteps per example (L_0 and one draw per stratum of t = 1…${s.T - 1})`;
  const decoder =
    s.decoder === 'discretized'
      ? 'discretised Gaussian, 8-bit levels of [−1, 1]'
      : 'continuous Gaussian density (a differential NLL: may be negative)';
  return [
    `NLL bound of ${model}`,
    `  data: ${data}${conditioning === 'unconditional' ? '' : `, ${conditioning}`}`,
    `  ${how}; variance ${s.variance}; decoder ${decoder}; seed ${s.seed}`,
    `  bound        ${f(s.bitsPerDim)} bits/dim   (${f(s.natsPerDim)} nats/dim)`,
    `    prior L_T  ${f(s.prior)}`,
    `    Σ KL L_t   ${f(s.kl)}`,
    `    decoder L_0 ${f(s.decoderTerm)}`,
    ...(out ? [`  per-term curve → ${out}`] : []),
    '',
  ].join('\n');
}
