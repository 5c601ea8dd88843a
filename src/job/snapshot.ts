/**
 * A host copy of a job's state (what the coordinator keeps, what checkpoints and state transfers
 * carry), taken between steps so that training can go on while it is written or sent.
 */
import * as tf from '@tensorflow/tfjs';
import { paramsToHost, type HostTensor } from '../model/params.js';
import { type SamplerState } from '../model/diffusion/timesteps.js';
import { disposeState } from '../model/optim.js';
import { writeCheckpoint, type CheckpointParts } from '../model/checkpoint.js';
import { samplerFor, type Job } from './job.js';
import { stateFromCheckpoint } from './resume.js';

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
  job.sampler = samplerFor(job.cfg, snap.state.sampler as SamplerState);
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

/** The EMA and the JSON state (sampler table) only: what an EMA sync sends. */
export async function emaSnapshot(job: Job): Promise<Snapshot> {
  const full: Snapshot = {
    parts: { model: new Map(), ema: await paramsToHost(job.state.ema), optimizer: new Map() },
    state: {
      step: job.state.step,
      sampler: job.sampler.state(),
      cursor: job.batches.cursor(job.state.step),
      data_shape: [...job.model.dataShape],
    },
  };
  return full;
}
