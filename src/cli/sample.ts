/** `ringdiff sample`: draws samples from a checkpoint into a PNG picture or a float32 .npy array. */
import cliProgress from 'cli-progress';
import { loadCheckpoint } from '../model/checkpoint.js';
import { validateConfig } from '../config/load.js';
import { requireResolved } from '../config/resolve.js';
import { initBackend } from '../model/backend/index.js';
import { jobDenoiser } from '../model/nets/factory.js';
import { disposeParams, paramsFromHost } from '../model/params.js';
import { scheduleOf } from '../model/diffusion/schedule.js';
import { drawSamples } from '../model/sampling/sample.js';
import { writeSamplesPng } from '../data/image.js';
import { writeNpyFloat32 } from '../data/npy.js';
import { UsageError } from './common.js';

export interface SampleOptions {
  checkpoint: string;
  count: number;
  sampler: string;
  steps?: number;
  eta: number;
  guidance: number;
  class?: number;
  seed: number;
  ema: boolean;
  out: string;
  chunk: number;
  backend?: string;
  progress?: boolean;
}

/** Loads the checkpoint, samples, writes `out` (.png or .npy). */
export async function sample(o: SampleOptions): Promise<void> {
  const ext = o.out.toLowerCase().endsWith('.png')
    ? 'png'
    : o.out.toLowerCase().endsWith('.npy')
      ? 'npy'
      : null;
  if (!ext) throw new UsageError(`--out ${o.out}: the file must end in .png or .npy`);
  if (o.sampler !== 'ddpm' && o.sampler !== 'ddim')
    throw new UsageError(`--sampler must be ddpm or ddim, got '${o.sampler}'`);
  await initBackend(o.backend);
  const ckpt = await loadCheckpoint(o.checkpoint);
  const source = `${o.checkpoint}/state.json config`;
  const cfg = requireResolved(validateConfig(ckpt.state.config, source), source);
  const T = cfg.diffusion.timesteps;
  const steps = o.steps ?? (o.sampler === 'ddim' ? 50 : T);
  if (o.sampler === 'ddim' && (steps < 1 || steps > T))
    throw new UsageError(`--steps must be in 1…${T}, got ${steps}`);
  if (o.sampler === 'ddpm' && o.steps !== undefined && o.steps !== T) {
    throw new UsageError(`--steps: DDPM runs all ${T} steps of the schedule; use --sampler ddim for fewer`);
  }
  const dataShape = ckpt.state.data_shape;
  if (!Array.isArray(dataShape) || !dataShape.every((d) => Number.isInteger(d) && d > 0)) {
    throw new UsageError(`${o.checkpoint}/state.json: field data_shape is missing or invalid`);
  }
  const model = jobDenoiser(cfg, dataShape);
  const params = paramsFromHost(o.ema ? ckpt.ema : ckpt.model);
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
    const data = drawSamples(model, params, schedule, {
      count: o.count,
      sampler: o.sampler,
      steps,
      eta: o.eta,
      guidance: o.guidance,
      classLabel: o.class ?? null,
      seed: o.seed,
      sigma: cfg.diffusion.sigma,
      prediction: cfg.diffusion.prediction,
      learnSigma: cfg.diffusion.learn_sigma,
      clip: dataShape.length === 3 && cfg.diffusion.clip_denoised,
      chunk: o.chunk,
      onProgress: (d, t) => {
        bar?.setTotal(t);
        bar?.update(d);
      },
    });
    const shape = [o.count, ...dataShape];
    if (ext === 'png') await writeSamplesPng(o.out, data, shape);
    else await writeNpyFloat32(o.out, data, shape);
  } finally {
    bar?.stop();
    disposeParams(params);
  }
}
