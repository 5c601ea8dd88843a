/** `ringdiff train`: single-process training with checkpoints, a progress bar on a TTY, JSON logs otherwise. */
import { createWriteStream, mkdirSync } from 'node:fs';
import cliProgress from 'cli-progress';
import { loadConfig } from '../config/load.js';
import { resolveForDataset } from '../config/resolve.js';
import { openDataset } from '../data/spec.js';
import type { Config } from '../config/schema.js';
import { initBackend } from '../model/backend/index.js';
import { createLogger, type Logger } from '../util/log.js';
import { closeJob, openJob, runPath, type Job } from '../job/job.js';
import { saveCheckpoint } from '../job/snapshot.js';
import { trainStep } from '../job/step.js';
import { configSettings, sampleSet } from '../model/sampling/sample.js';
import { DEFAULT_DATASET_MODULE, Prefetcher } from '../data/prefetch.js';
import { writeSamplesPng } from '../data/image.js';
import { writeNpyFloat32 } from '../data/npy.js';
import { HistoryWriter } from '../telemetry/history.js';
import { writeReport } from '../telemetry/report.js';
import type { Denoiser } from '../model/nets/denoiser.js';
import type { Params } from '../model/params.js';
import type { Schedule } from '../model/diffusion/schedule.js';
import { processOf } from '../model/diffusion/continuous.js';
import { Evaluation } from '../job/evaluate.js';
import { UsageError } from './common.js';

export interface TrainOptions {
  config?: string;
  set?: string[];
  backend?: string;
  pretty?: boolean;
  progress?: boolean;
}

/** Draws the end-of-run samples from the EMA weights into samples.png and samples.npy. */
export async function writeFinalSamples(job: Job, log: Logger): Promise<void> {
  await writeSamplesFrom(job.cfg, job.model, job.state.ema, job.schedule, log);
}

/** Draws `cfg.sample.count` samples from `ema` into `<out_dir>/samples.png` and `samples.npy`. */
export async function writeSamplesFrom(
  cfg: Config,
  model: Denoiser,
  ema: Params,
  schedule: Schedule,
  log: Logger,
): Promise<void> {
  const sc = cfg.sample;
  const n = sc.count;
  if (n === 0) return;
  const t0 = Date.now();
  const images = model.dataShape.length === 3;
  const { samples: data, nfe } = sampleSet(model, ema, schedule, {
    ...configSettings(sc, schedule.T),
    count: n,
    sampler: sc.sampler,
    // Unconditional models have nothing to guide; the default w is for the default (conditional) job.
    guidance: model.numClasses > 0 ? sc.guidance : 0,
    classLabel: null,
    seed: cfg.run.seed,
    sigma: cfg.diffusion.sigma,
    prediction: cfg.diffusion.prediction,
    learnSigma: cfg.diffusion.learn_sigma,
    process: processOf(cfg.diffusion),
    clip: images && cfg.diffusion.clip_denoised,
    chunk: 256,
  });
  const shape = [n, ...model.dataShape];
  await writeNpyFloat32(runPath(cfg, 'samples.npy'), data, shape);
  await writeSamplesPng(runPath(cfg, 'samples.png'), data, shape);
  log.info(
    { count: n, sampler: sc.sampler, nfe, ms: Date.now() - t0, file: runPath(cfg, 'samples.png') },
    'samples written',
  );
}

/**
 * Writes the run report; a failure to draw it is logged, never fails the finished job. After a
 * stop (`stopped`) it draws no new sample grids, so that the process exits promptly.
 */
export async function reportAtEnd(outDir: string, log: Logger, stopped = false): Promise<void> {
  try {
    const file = await writeReport(outDir, { draw: !stopped });
    log.info({ file }, 'report written');
  } catch (e) {
    log.warn({ error: (e as Error).message }, 'no run report');
  }
}

/** Trains the job described by the options; resolves when the last checkpoint is written. */
export async function train(opts: TrainOptions): Promise<void> {
  const cfg: Config = loadConfig(opts.config, opts.set ?? []);
  const backend = await initBackend(opts.backend);
  // The dataset first: a config that does not fit it is refused before anything is written.
  const dataset = openDataset(cfg.data);
  resolveForDataset(cfg, dataset);
  mkdirSync(cfg.run.out_dir, { recursive: true });
  const tty = opts.progress !== false && process.stderr.isTTY === true;
  // On a TTY the bar owns the terminal, so the JSON log goes to the run directory.
  const log = createLogger({
    job: cfg.run.name,
    pretty: opts.pretty,
    destination:
      tty && !opts.pretty ? createWriteStream(runPath(cfg, 'train.log'), { flags: 'a' }) : undefined,
  });
  log.info({ backend: backend.chosen, out_dir: cfg.run.out_dir }, 'starting');
  const job = await openJob(cfg, log, dataset);
  if (job.resumedFrom) log.info({ dir: job.resumedFrom, step: job.state.step }, 'resumed from checkpoint');
  let stopping = false;
  const onSignal = (sig: string) => {
    if (stopping) process.exit(130);
    stopping = true;
    log.warn({ signal: sig }, 'stopping after this step');
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  const bar = tty
    ? new cliProgress.SingleBar(
        {
          format: 'step {value}/{total} |{bar}| loss {loss} | {sps} samples/s | ETA {eta_formatted}',
          etaBuffer: 50,
          hideCursor: true,
        },
        cliProgress.Presets.shades_classic,
      )
    : null;
  bar?.start(cfg.train.steps, job.state.step, { loss: '-', sps: '-' });
  const every = cfg.train.checkpoint_every;
  let lastLog = { t: Date.now(), step: job.state.step };
  let lossAvg = NaN;
  const B = cfg.train.global_batch;
  const history = new HistoryWriter(cfg.run.out_dir);
  // The same evaluation round as the workers', in a world of one (see src/job/evaluate.ts).
  let evaluation: Evaluation | null = null;
  if (cfg.eval.every > 0) {
    try {
      evaluation = new Evaluation(job.cfg, job.model.dataShape);
    } catch (e) {
      closeJob(job);
      throw new UsageError((e as Error).message);
    }
  }
  const loader = new Prefetcher({
    data: cfg.data,
    seed: cfg.run.seed,
    globalBatch: B,
    module: DEFAULT_DATASET_MODULE,
  });
  try {
    while (job.state.step < cfg.train.steps && !stopping) {
      const shard = await loader.get(job.state.step, 0, B);
      if (job.state.step + 1 < cfg.train.steps) loader.request(job.state.step + 1, 0, B);
      const r = await trainStep(job, shard);
      lossAvg = Number.isNaN(lossAvg) ? r.loss : 0.95 * lossAvg + 0.05 * r.loss;
      const now = Date.now();
      history.add({
        step: r.step,
        t: now,
        loss: r.loss,
        loss_q: r.lossQuarters,
        lr: r.lr,
        grad_norm: r.gradNorm,
        samples_per_s: (B * 1000) / Math.max(r.ms + loader.lastWaitMs, 1e-3),
      });
      if (bar) {
        const sps = (cfg.train.global_batch * 1000) / Math.max(r.ms, 1e-3);
        bar.update(r.step, { loss: lossAvg.toFixed(4), sps: sps.toFixed(1) });
      }
      if (r.step % cfg.train.log_every === 0 || r.step === cfg.train.steps) {
        const sps = ((r.step - lastLog.step) * cfg.train.global_batch * 1000) / Math.max(now - lastLog.t, 1);
        log.info(
          {
            step: r.step,
            loss: r.loss,
            loss_q: r.lossQuarters,
            grad_norm: r.gradNorm,
            lr: r.lr,
            samples_per_s: sps,
            data_wait_ms: loader.lastWaitMs,
          },
          'step',
        );
        lastLog = { t: now, step: r.step };
      }
      if (!Number.isFinite(r.loss)) throw new Error(`loss is ${r.loss} at step ${r.step}: training diverged`);
      if (evaluation?.due(r.step, cfg.train.steps)) {
        const t1 = Date.now();
        const m = await evaluation.run(
          { cfg: job.cfg, model: job.model, ema: job.state.ema, schedule: job.schedule },
          0,
          1,
          async (part) => [part],
          (msg) => log.warn({ step: r.step }, msg),
        );
        if (m) {
          history.addEval({ step: r.step, t: Date.now(), eval: m });
          log.info({ step: r.step, ms: Date.now() - t1, ...m }, 'evaluation');
        }
      }
      if (every > 0 && r.step % every === 0 && r.step !== cfg.train.steps) {
        const c = await saveCheckpoint(job);
        log.info({ step: r.step, ...c }, 'checkpoint written');
      }
    }
    bar?.stop();
    const c = await saveCheckpoint(job);
    log.info({ step: job.state.step, ...c }, 'checkpoint written');
    if (!stopping) await writeFinalSamples(job, log);
    await reportAtEnd(cfg.run.out_dir, log, stopping);
    log.info({ step: job.state.step }, stopping ? 'stopped' : 'done');
    if (tty) {
      const pic = stopping || cfg.sample.count === 0 ? '' : `, samples in ${runPath(cfg, 'samples.png')}`;
      process.stderr.write(
        `${stopping ? 'stopped' : 'done'} at step ${job.state.step}: checkpoint ${c.dir}${pic}\n`,
      );
    }
  } finally {
    await loader.close();
    bar?.stop();
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
    evaluation?.dispose();
    closeJob(job);
  }
  if (stopping) process.exitCode = 130;
}
