/**
 * A training job: the model, schedule, timestep sampler, batch order and training state a process
 * holds between steps, built fresh or resumed from the newest valid checkpoint. The same job serves
 * `ringdiff train` (a world of one), every worker, and the coordinator's copy of the state.
 */
import * as path from 'node:path';
import type { Config } from '../config/schema.js';
import { openDataset } from '../data/spec.js';
import { resolveForDataset, type ResolvedConfig } from '../config/resolve.js';
import type { Dataset } from '../data/dataset.js';
import { readShard, type LoadedShard } from '../data/prefetch.js';
import { GlobalBatches } from '../data/batches.js';
import { jobDenoiser } from '../model/nets/factory.js';
import type { Denoiser } from '../model/nets/denoiser.js';
import { scheduleOf, type Schedule } from '../model/diffusion/schedule.js';
import { lossWeights } from '../model/diffusion/weighting.js';
import { continuousWeight, processOf } from '../model/diffusion/continuous.js';
import type { StepContext } from '../model/train.js';
import { createSampler, type SamplerState, type TimestepSampler } from '../model/diffusion/timesteps.js';
import { disposeState, initialState, type TrainState } from '../model/optim.js';
import { latestValidCheckpoint } from '../model/checkpoint.js';
import type { Logger } from '../util/log.js';
import { checkResumeCompatible, stateFromCheckpoint } from './resume.js';

/** Everything a training process holds between steps. */
export interface Job {
  cfg: ResolvedConfig;
  dataset: Dataset;
  model: Denoiser;
  schedule: Schedule;
  /** λ_t of the loss weighting per timestep; null = all 1 (none, or a continuous objective). */
  lossWeights: Float64Array | null;
  /** The continuous-time objective and its λ(σ) (diffusion.objective sde or edm); null = DDPM. */
  continuous: StepContext['continuous'];
  sampler: TimestepSampler;
  batches: GlobalBatches;
  state: TrainState;
  resumedFrom: string | null;
}

/** The step context's continuous objective of `d` (null for objective ddpm). */
function continuousOf(d: ResolvedConfig['diffusion']): StepContext['continuous'] {
  const process = processOf(d);
  if (!process) return null;
  const weight =
    d.loss_weighting === 'min_snr'
      ? (sigma: number) => continuousWeight('min_snr', d.prediction, d.min_snr_gamma, sigma)
      : null;
  return { process, weight };
}

/** A job at step 0 (weights from the seed) over `dataset`; no checkpoint is read. */
export function createJob(cfg: ResolvedConfig, dataset: Dataset): Job {
  if (cfg.model.kind === 'analytic')
    throw new Error(
      'model.kind: analytic is exact and has nothing to train; use it with `ringdiff sample --config` or `ringdiff bench sample`',
    );
  const model = jobDenoiser(cfg, [...dataset.shape]);
  const d = cfg.diffusion;
  const schedule = scheduleOf(d);
  return {
    cfg,
    dataset,
    model,
    schedule,
    lossWeights:
      d.loss_weighting === 'none' || d.objective !== 'ddpm'
        ? null
        : lossWeights(d.loss_weighting, d.prediction, schedule, d.min_snr_gamma),
    continuous: continuousOf(d),
    sampler: samplerFor(cfg),
    // The one place the global batch size enters a job: steps, shards and the coordinator's
    // shard reads take it from here (job.batches.B).
    batches: GlobalBatches.forConfig(dataset.size, cfg),
    state: initialState(model.init(cfg.run.seed)),
    resumedFrom: null,
  };
}

/** The job's timestep sampler, fresh or restored from a checkpoint's sampler state. */
export function samplerFor(cfg: ResolvedConfig, saved?: SamplerState): TimestepSampler {
  const d = cfg.diffusion;
  return createSampler(
    d.timestep_sampler,
    d.timesteps,
    { historyPerTerm: d.history_per_term, uniformProb: d.uniform_prob },
    saved,
  );
}

/** Puts the job back at step 0 (a fenced worker discards its state before it rejoins). */
export function resetJob(job: Job): void {
  const fresh = createJob(job.cfg, job.dataset);
  disposeState(job.state);
  job.state = fresh.state;
  job.sampler = fresh.sampler;
}

/**
 * Builds a job, resuming from the newest valid checkpoint in run.out_dir when there is one. The
 * job's config has its data-dependent values (`auto`) decided from the dataset (`opened`, if the
 * caller opened it already).
 */
export async function openJob(config: Config, log?: Logger, opened?: Dataset): Promise<Job> {
  const dataset = opened ?? openDataset(config.data);
  const cfg = resolveForDataset(config, dataset);
  const job = createJob(cfg, dataset);
  const expect = new Map([...job.state.params].map(([n, t]) => [n, t.shape] as const));
  const { checkpoint, skipped } = await latestValidCheckpoint(cfg.run.out_dir, { model: expect });
  for (const s of skipped) log?.warn({ dir: s.dir, error: s.error }, 'skipping unusable checkpoint');
  if (!checkpoint) return job;
  disposeState(job.state);
  checkResumeCompatible(checkpoint.state.config, cfg, checkpoint.dir);
  job.state = stateFromCheckpoint(checkpoint);
  job.sampler = samplerFor(cfg, checkpoint.state.sampler as SamplerState);
  job.resumedFrom = checkpoint.dir;
  return job;
}

/** The examples of positions [from, to) of global batch `step`, read on this thread. */
export function loadShard(job: Job, step: number, from: number, to: number): LoadedShard {
  return readShard(
    job.dataset,
    { data: job.cfg.data, seed: job.cfg.run.seed, globalBatch: job.batches.B },
    { step, from, to },
    job.batches,
  );
}

/** Disposes the job's tensors. */
export function closeJob(job: Job): void {
  disposeState(job.state);
}

/** Path of a file in the run directory. */
export function runPath(cfg: Config, name: string): string {
  return path.join(cfg.run.out_dir, name);
}
