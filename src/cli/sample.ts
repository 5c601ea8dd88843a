/**
 * `ringdiff sample`: draws samples from a checkpoint — or from the exact denoiser of a config with
 * `model.kind: analytic`, which needs none — into a PNG picture or a float32 .npy array.
 */
import cliProgress from 'cli-progress';
import { loadCheckpoint } from '../model/checkpoint.js';
import { loadConfig, validateConfig } from '../config/load.js';
import { requireResolved, resolveAnalytic, type ResolvedConfig } from '../config/resolve.js';
import { initBackend } from '../model/backend/index.js';
import { analyticDataShape, jobDenoiser } from '../model/nets/factory.js';
import { disposeParams, paramsFromHost, type Params } from '../model/params.js';
import { scheduleOf } from '../model/diffusion/schedule.js';
import { processOf } from '../model/diffusion/continuous.js';
import { sampleSet } from '../model/sampling/sample.js';
import { SAMPLER_NAMES, samplerNamed, type SamplerName } from '../model/sampling/registry.js';
import { DEFAULT_SETTINGS, type SamplerSettings, type SettingKey } from '../model/sampling/sampler.js';
import { DISCRETIZATIONS, type Discretization } from '../model/sampling/discretization.js';
import { writeSamplesPng } from '../data/image.js';
import { writeNpyFloat32 } from '../data/npy.js';
import { UsageError } from './common.js';

/** The sampler options `sample` and `bench sample` share (commander names; absent = the default). */
export interface SamplerCliOptions {
  sampler?: string;
  steps?: number;
  eta?: number;
  discretization?: string;
  rho?: number;
  churn?: number;
  churnSigmaMin?: number;
  churnSigmaMax?: number;
  churnNoise?: number;
  snr?: number;
  correctorSteps?: number;
  tolerance?: number;
}

/** The options of `ringdiff sample`. */
export interface SampleOptions extends SamplerCliOptions {
  checkpoint?: string;
  config?: string;
  set?: string[];
  count: number;
  guidance: number;
  class?: number;
  seed: number;
  ema: boolean;
  out: string;
  chunk: number;
  backend?: string;
  progress?: boolean;
}

/** CLI option of each setting a sampler may refuse (eta has a default, so it is never refused). */
const OPTION_OF: Partial<Record<SettingKey, string>> = {
  discretization: '--discretization',
  rho: '--rho',
  churn: '--churn',
  churnSigmaMin: '--churn-sigma-min',
  churnSigmaMax: '--churn-sigma-max',
  churnNoise: '--churn-noise',
  snr: '--snr',
  correctorSteps: '--corrector-steps',
  tolerance: '--tolerance',
};

/** Settings from CLI options other than steps (absent = DEFAULT_SETTINGS); bad values name the option. */
export function settingsFromCli(
  o: Omit<SamplerCliOptions, 'steps' | 'tolerance'> & { tolerance?: number },
): Omit<SamplerSettings, 'steps'> {
  const positive = (opt: string, v: number | undefined, dflt: number): number => {
    if (v !== undefined && !(v > 0)) throw new UsageError(`${opt} must be > 0, got ${v}`);
    return v ?? dflt;
  };
  if (o.churn !== undefined && !(o.churn >= 0)) throw new UsageError(`--churn must be ≥ 0, got ${o.churn}`);
  if (o.churnSigmaMin !== undefined && !(o.churnSigmaMin >= 0))
    throw new UsageError(`--churn-sigma-min must be ≥ 0, got ${o.churnSigmaMin}`);
  if (o.tolerance !== undefined && !(o.tolerance > 0 && o.tolerance < 1))
    throw new UsageError(`--tolerance must be in (0, 1), got ${o.tolerance}`);
  if (o.eta !== undefined && !(o.eta >= 0)) throw new UsageError(`--eta must be ≥ 0, got ${o.eta}`);
  const disc = o.discretization ?? 'auto';
  if (disc !== 'auto' && !(DISCRETIZATIONS as readonly string[]).includes(disc))
    throw new UsageError(
      `--discretization must be one of auto, ${DISCRETIZATIONS.join(', ')}, got '${disc}'`,
    );
  const d = DEFAULT_SETTINGS;
  return {
    eta: o.eta ?? d.eta,
    sigma: d.sigma,
    discretization: disc as Discretization | 'auto',
    rho: positive('--rho', o.rho, d.rho),
    churn: o.churn ?? d.churn,
    churnSigmaMin: o.churnSigmaMin ?? d.churnSigmaMin,
    churnSigmaMax: positive('--churn-sigma-max', o.churnSigmaMax, d.churnSigmaMax),
    churnNoise: positive('--churn-noise', o.churnNoise, d.churnNoise),
    snr: positive('--snr', o.snr, d.snr),
    correctorSteps: o.correctorSteps ?? d.correctorSteps,
    tolerance: o.tolerance ?? d.tolerance,
  };
}

/** `--sampler NAME`: the sampler, or a one-line UsageError naming `option`. */
export function samplerOption(name: string, option = '--sampler'): SamplerName {
  if (!(SAMPLER_NAMES as readonly string[]).includes(name))
    throw new UsageError(`${option}: unknown sampler '${name}' (known: ${SAMPLER_NAMES.join(', ')})`);
  return name as SamplerName;
}

/**
 * The sampler and its settings from CLI options: unknown names, values out of range and options
 * the sampler does not read are one-line UsageErrors naming the option. T: the model's timesteps.
 */
export function samplerFromCli(
  o: SamplerCliOptions,
  T: number,
  dflt: SamplerName = 'ddpm',
): { name: SamplerName; settings: SamplerSettings } {
  const name = samplerOption(o.sampler ?? dflt);
  const sampler = samplerNamed(name);
  for (const [key, opt] of Object.entries(OPTION_OF) as [SettingKey, string][]) {
    if (o[key as keyof SamplerCliOptions] !== undefined && !sampler.uses.includes(key))
      throw new UsageError(
        `${opt}: sampler ${name} does not use it (it reads: ${sampler.uses.join(', ') || 'nothing'})`,
      );
  }
  const rest = settingsFromCli(o);
  if (name === 'ddpm' && o.steps !== undefined && o.steps !== T)
    throw new UsageError(`--steps: DDPM runs all ${T} steps of the schedule; use --sampler ddim for fewer`);
  if (name === 'ode-rk45' && o.steps !== undefined)
    throw new UsageError('--steps: ode-rk45 chooses its own steps; set --tolerance instead');
  const steps = o.steps ?? (name === 'ddpm' ? T : 50);
  if (!Number.isInteger(steps) || steps < 1)
    throw new UsageError(`--steps must be an integer ≥ 1, got ${steps}`);
  if (name === 'ddim' && steps > T) throw new UsageError(`--steps must be in 1…${T}, got ${steps}`);
  return { name, settings: { ...rest, steps } };
}

/** A model to sample: its resolved config, example shape, weights (none if analytic) and a name. */
export interface SampleModel {
  cfg: ResolvedConfig;
  dataShape: number[];
  params: Params;
  what: string;
}

/**
 * The model of `--checkpoint` (its EMA or raw weights), or of `--config` with model.kind analytic
 * (no weights); with neither, the built-in analytic model when `builtin` (bench) or an error.
 */
export async function loadSampleModel(
  o: { checkpoint?: string; config?: string; set?: string[]; ema?: boolean },
  builtin = false,
): Promise<SampleModel> {
  if (o.checkpoint !== undefined && o.config !== undefined)
    throw new UsageError('--checkpoint and --config: give one of them');
  if (o.checkpoint === undefined && o.config === undefined && !builtin)
    throw new UsageError(
      'sample: give --checkpoint <dir>, or --config <file> of an analytic model (model.kind: analytic)',
    );
  if (o.checkpoint === undefined) {
    const cfg =
      o.config !== undefined
        ? loadConfig(o.config, o.set ?? [])
        : validateConfig({ model: { kind: 'analytic' } }, 'built-in analytic model');
    if (cfg.model.kind !== 'analytic')
      throw new UsageError(
        `--config: model.kind is ${cfg.model.kind}; only an analytic model samples without weights (use --checkpoint)`,
      );
    const resolved = resolveAnalytic(cfg);
    const what = o.config ?? 'the analytic 8-Gaussian mixture (toy:8gaussians)';
    return { cfg: resolved, dataShape: analyticDataShape(resolved.model), params: new Map(), what };
  }
  if ((o.set ?? []).length > 0)
    throw new UsageError('--set: only with --config (a checkpoint keeps its config)');
  const dir = o.checkpoint;
  const ckpt = await loadCheckpoint(dir);
  const source = `${dir}/state.json config`;
  const cfg = requireResolved(validateConfig(ckpt.state.config, source), source);
  const dataShape = ckpt.state.data_shape;
  if (!Array.isArray(dataShape) || !dataShape.every((d) => Number.isInteger(d) && d > 0)) {
    throw new UsageError(`${dir}/state.json: field data_shape is missing or invalid`);
  }
  return { cfg, dataShape, params: paramsFromHost(o.ema === false ? ckpt.model : ckpt.ema), what: dir };
}

/** Loads the model, samples, writes `out` (.png or .npy); a summary line with the NFE goes to stderr. */
export async function sample(o: SampleOptions): Promise<void> {
  const ext = o.out.toLowerCase().endsWith('.png')
    ? 'png'
    : o.out.toLowerCase().endsWith('.npy')
      ? 'npy'
      : null;
  if (!ext) throw new UsageError(`--out ${o.out}: the file must end in .png or .npy`);
  // Names are checked before anything is loaded (T is not known yet: steps are checked again below).
  samplerFromCli({ ...o, steps: undefined }, Number.MAX_SAFE_INTEGER);
  await initBackend(o.backend);
  const { cfg, dataShape, params, what } = await loadSampleModel(o);
  const T = cfg.diffusion.timesteps;
  const { name, settings } = samplerFromCli(o, T);
  const model = jobDenoiser(cfg, dataShape);
  const schedule = scheduleOf(cfg.diffusion);
  const bar =
    o.progress !== false && process.stderr.isTTY
      ? new cliProgress.SingleBar(
          { format: 'sampling |{bar}| {percentage}% | ETA {eta_formatted}' },
          cliProgress.Presets.shades_classic,
        )
      : null;
  bar?.start(1, 0);
  try {
    const t0 = Date.now();
    const { samples, nfe } = sampleSet(model, params, schedule, {
      ...settings,
      count: o.count,
      sampler: name,
      guidance: o.guidance,
      classLabel: o.class ?? null,
      seed: o.seed,
      sigma: cfg.diffusion.sigma,
      prediction: cfg.diffusion.prediction,
      learnSigma: cfg.diffusion.learn_sigma,
      process: processOf(cfg.diffusion),
      clip: dataShape.length === 3 && cfg.diffusion.clip_denoised,
      chunk: o.chunk,
      onProgress: (d, t) => {
        bar?.setTotal(t);
        bar?.update(d);
      },
    });
    const shape = [o.count, ...dataShape];
    if (ext === 'png') await writeSamplesPng(o.out, samples, shape);
    else await writeNpyFloat32(o.out, samples, shape);
    bar?.stop();
    process.stderr.write(
      `${o.count} samples of ${what} with ${name}: NFE ${Number.isInteger(nfe) ? nfe : nfe.toFixed(1)} per sample, ${((Date.now() - t0) / 1000).toFixed(1)} s → ${o.out}\n`,
    );
  } finally {
    bar?.stop();
    disposeParams(params);
  }
}
