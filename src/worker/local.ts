/**
 * Single-process training: the whole global batch on one process, with the same step functions,
 * checkpoints and resume logic as the distributed trainer.
 */
import * as path from 'node:path';
import * as tf from '@tensorflow/tfjs';
import type { Config } from '../config/schema.js';
import { openDataset } from '../data/spec.js';
import { resolveForDataset, type ResolvedConfig } from '../config/resolve.js';
import type { Dataset } from '../data/dataset.js';
import { readShard, type LoadedShard } from '../data/prefetch.js';
import { GlobalBatches } from '../data/batches.js';
import { createDenoiser } from '../model/factory.js';
import type { Denoiser } from '../model/model.js';
import {
  disposeParams,
  paramsFromHost,
  paramsToHost,
  type HostTensor,
  type Params,
} from '../model/params.js';
import { scheduleFor, type Schedule } from '../model/schedule.js';
import { createSampler, type SamplerState, type TimestepSampler } from '../model/timesteps.js';
import { disposeState, initialState, type TrainState } from '../model/train.js';
import { fusedStep, type StepReport } from './step.js';
import {
  latestValidCheckpoint,
  writeCheckpoint,
  type CheckpointParts,
  type LoadedCheckpoint,
} from '../model/checkpoint.js';
import type { Logger } from '../util/log.js';

/** Keys whose change would make a resumed run a different run. */
const RUN_DEFINING = [
  'run.seed',
  'data',
  'model',
  'diffusion',
  'train.global_batch',
  'train.lr',
  'train.warmup_steps',
  'train.beta1',
  'train.beta2',
  'train.adam_eps',
  'train.weight_decay',
  'train.grad_clip',
  'train.ema_decay',
  'train.ema_warmup',
  'train.microbatch',
] as const;

function pick(cfg: Config, key: string): unknown {
  return key.split('.').reduce<unknown>((o, k) => (o as Record<string, unknown> | undefined)?.[k], cfg);
}

/** Throws if `saved` differs from `cfg` in a key that defines the run (names the first such key). */
export function checkResumeCompatible(saved: Config, cfg: Config, dir: string): void {
  for (const key of RUN_DEFINING) {
    const a = JSON.stringify(pick(saved, key));
    const b = JSON.stringify(pick(cfg, key));
    if (a !== b)
      throw new Error(
        `${dir}: checkpoint was written with ${key} = ${a}, config has ${b}; use a new run.out_dir`,
      );
  }
}

/** Everything a training process holds between steps. */
export interface Job {
  cfg: ResolvedConfig;
  dataset: Dataset;
  model: Denoiser;
  schedule: Schedule;
  sampler: TimestepSampler;
  batches: GlobalBatches;
  state: TrainState;
  resumedFrom: string | null;
}

/** A job at step 0 (weights from the seed) over `dataset`; no checkpoint is read. */
export function createJob(cfg: ResolvedConfig, dataset: Dataset): Job {
  const model = createDenoiser(cfg.model, [...dataset.shape]);
  const schedule = scheduleFor(cfg.diffusion.schedule, cfg.diffusion.timesteps);
  const batches = new GlobalBatches(dataset.size, cfg.train.global_batch, cfg.run.seed, cfg.data.drop_last);
  const sampler = createSampler(cfg.diffusion.timestep_sampler, cfg.diffusion.timesteps, {
    historyPerTerm: cfg.diffusion.history_per_term,
    uniformProb: cfg.diffusion.uniform_prob,
  });
  const state = initialState(model.init(cfg.run.seed));
  return { cfg, dataset, model, schedule, sampler, batches, state, resumedFrom: null };
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
  const model = createDenoiser(cfg.model, [...dataset.shape]);
  const schedule = scheduleFor(cfg.diffusion.schedule, cfg.diffusion.timesteps);
  const batches = new GlobalBatches(dataset.size, cfg.train.global_batch, cfg.run.seed, cfg.data.drop_last);
  const fresh = model.init(cfg.run.seed);
  const expect = new Map([...fresh].map(([n, t]) => [n, t.shape] as const));
  const { checkpoint, skipped } = await latestValidCheckpoint(cfg.run.out_dir, { model: expect });
  for (const s of skipped) log?.warn({ dir: s.dir, error: s.error }, 'skipping unusable checkpoint');
  const samplerOpts = {
    historyPerTerm: cfg.diffusion.history_per_term,
    uniformProb: cfg.diffusion.uniform_prob,
  };
  if (!checkpoint) {
    const sampler = createSampler(cfg.diffusion.timestep_sampler, cfg.diffusion.timesteps, samplerOpts);
    return { cfg, dataset, model, schedule, sampler, batches, state: initialState(fresh), resumedFrom: null };
  }
  disposeParams(fresh);
  checkResumeCompatible(checkpoint.state.config as Config, cfg, checkpoint.dir);
  const sampler = createSampler(
    cfg.diffusion.timestep_sampler,
    cfg.diffusion.timesteps,
    samplerOpts,
    checkpoint.state.sampler as SamplerState,
  );
  return {
    cfg,
    dataset,
    model,
    schedule,
    sampler,
    batches,
    state: stateFromCheckpoint(checkpoint),
    resumedFrom: checkpoint.dir,
  };
}

/** Device state from a loaded checkpoint. */
export function stateFromCheckpoint(c: LoadedCheckpoint): TrainState {
  const moments = (prefix: string): Params => {
    const h = new Map<string, HostTensor>();
    for (const [name, t] of c.optimizer) if (name.startsWith(prefix)) h.set(name.slice(prefix.length), t);
    return paramsFromHost(h);
  };
  return {
    step: c.step,
    params: paramsFromHost(c.model),
    ema: paramsFromHost(c.ema),
    m: moments('m.'),
    v: moments('v.'),
  };
}

/** A host copy of everything a step changes: tensors by part, and the JSON state. */
export interface Snapshot {
  parts: CheckpointParts;
  state: Record<string, unknown> & { step: number };
}

/** Copies the job's current state to host memory (training can go on while it is written or sent). */
export async function snapshot(job: Job): Promise<Snapshot> {
  const { state } = job;
  const optimizer = new Map<string, HostTensor>();
  for (const [n, t] of await paramsToHost(state.m)) optimizer.set(`m.${n}`, t);
  for (const [n, t] of await paramsToHost(state.v)) optimizer.set(`v.${n}`, t);
  return {
    parts: { model: await paramsToHost(state.params), ema: await paramsToHost(state.ema), optimizer },
    state: {
      step: state.step,
      config: job.cfg,
      sampler: job.sampler.state(),
      cursor: job.batches.cursor(state.step),
      data_shape: [...job.model.dataShape],
      tfjs: tf.version.tfjs,
    },
  };
}

/** Replaces the job's state (weights, EMA, moments, sampler table) by a snapshot's. */
export function restoreSnapshot(job: Job, snap: Snapshot): void {
  const next = stateFromCheckpoint({ ...snap.parts, step: snap.state.step, dir: '', state: snap.state });
  disposeState(job.state);
  job.state = next;
  const c = job.cfg.diffusion;
  job.sampler = createSampler(
    c.timestep_sampler,
    c.timesteps,
    { historyPerTerm: c.history_per_term, uniformProb: c.uniform_prob },
    snap.state.sampler as SamplerState,
  );
}

/** Writes the checkpoint of the job's current step. */
export async function saveCheckpoint(job: Job): Promise<{ dir: string; bytes: number; ms: number }> {
  const snap = await snapshot(job);
  const res = await writeCheckpoint(
    job.cfg.run.out_dir,
    snap.state.step,
    snap.parts,
    snap.state,
    job.cfg.train.keep_checkpoints,
  );
  return { dir: res.dir, bytes: res.bytes, ms: res.ms };
}

/** The examples of positions [from, to) of global batch `step`, read on this thread. */
export function loadShard(job: Job, step: number, from: number, to: number): LoadedShard {
  return readShard(
    job.dataset,
    { data: job.cfg.data, seed: job.cfg.run.seed, globalBatch: job.cfg.train.global_batch },
    { step, from, to },
    job.batches,
  );
}

/** Runs one full step of the whole batch on this process: the fused step of a world of one. */
export async function trainStep(job: Job, prefetched?: LoadedShard): Promise<StepReport> {
  const shard = prefetched ?? loadShard(job, job.state.step, 0, job.cfg.train.global_batch);
  const r = await fusedStep(job, shard, async () => {});
  return {
    step: r.step,
    loss: r.loss,
    lossQuarters: r.lossQuarters,
    gradNorm: r.gradNorm,
    lr: r.lr,
    ms: r.ms,
  };
}

/** Disposes the job's tensors. */
export function closeJob(job: Job): void {
  disposeState(job.state);
}

/** Path of a file in the run directory. */
export function runPath(cfg: Config, name: string): string {
  return path.join(cfg.run.out_dir, name);
}
