/**
 * The coordinator's durable copy of the training state: the newest checkpoint (loaded at start,
 * replaced by each checkpoint a worker pushes), the central EMA (refreshed every
 * `train.ema_sync_every` steps) and the authoritative timestep-sampling table that travels with
 * them. Checkpoints are written atomically by `writeCheckpoint`; only then is one counted.
 */
import * as path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import type { Dataset } from '../data/dataset.js';
import { latestValidCheckpoint, writeCheckpoint } from '../model/checkpoint.js';
import { jobDenoiser } from '../model/nets/factory.js';
import type { ResolvedConfig } from '../config/resolve.js';
import { disposeParams, type HostTensor } from '../model/params.js';
import { checkResumeCompatible } from '../job/resume.js';
import { type Snapshot } from '../job/snapshot.js';
import { decodeSnapshot, encodeSnapshot } from '../job/transfer.js';
import type { Logger } from '../util/log.js';
import { RpcError } from './rpc-error.js';

/** Why a worker pushed its state. */
export type PushReason = 'checkpoint' | 'final' | 'shutdown' | 'ema-sync';
export const PUSH_REASONS: readonly PushReason[] = ['checkpoint', 'final', 'shutdown', 'ema-sync'];

export interface CheckpointInfo {
  step: number;
  dir: string;
  bytes: number;
  ms: number;
}

/** Newest checkpoint, central EMA and sampler table of a job. */
export class CentralState {
  /** The newest durable checkpoint (null before the first). */
  private ckpt: Snapshot | null = null;
  private encoded: Buffer | null = null;
  /** Central EMA and the step it belongs to. */
  ema: Map<string, HostTensor> | null = null;
  emaStep = -1;
  /** Sampler table state as of `emaStep` (or the checkpoint). */
  sampler: unknown = null;
  lastCheckpoint: CheckpointInfo | null = null;
  /** Tensor names and shapes of the model: pushed state must match them. */
  private readonly shapes: Map<string, number[]>;

  private constructor(
    readonly cfg: ResolvedConfig,
    shapes: Map<string, number[]>,
    private readonly log?: Logger,
  ) {
    this.shapes = shapes;
  }

  /** Opens the run directory: resumes from its newest valid checkpoint when there is one. */
  static async open(cfg: ResolvedConfig, dataset: Dataset, log?: Logger): Promise<CentralState> {
    const model = jobDenoiser(cfg, [...dataset.shape]);
    const init = model.init(cfg.run.seed);
    const shapes = new Map<string, number[]>([...init].map(([n, t]) => [n, [...t.shape]]));
    disposeParams(init);
    const st = new CentralState(cfg, shapes, log);
    const { checkpoint, skipped } = await latestValidCheckpoint(cfg.run.out_dir, { model: shapes });
    for (const s of skipped) log?.warn({ dir: s.dir, error: s.error }, 'skipping unusable checkpoint');
    if (checkpoint) {
      checkResumeCompatible(checkpoint.state.config, cfg, checkpoint.dir);
      st.ckpt = {
        parts: { model: checkpoint.model, ema: checkpoint.ema, optimizer: checkpoint.optimizer },
        state: { ...checkpoint.state, step: checkpoint.step },
      };
      st.ema = checkpoint.ema;
      st.emaStep = checkpoint.step;
      st.sampler = checkpoint.state.sampler ?? null;
      st.lastCheckpoint = { step: checkpoint.step, dir: checkpoint.dir, bytes: 0, ms: 0 };
      log?.info({ dir: checkpoint.dir, step: checkpoint.step }, 'resuming from checkpoint');
    }
    return st;
  }

  /** Number of model parameters (scalars). */
  get modelScalars(): number {
    let n = 0;
    for (const s of this.shapes.values()) n += s.reduce((a, b) => a * b, 1);
    return n;
  }

  /** Step of the newest durable checkpoint, −1 when there is none. */
  get checkpointStep(): number {
    return this.ckpt?.state.step ?? -1;
  }

  /** The newest checkpoint as one snapshot buffer (for FetchState), or null. */
  checkpointBytes(): Buffer | null {
    if (!this.ckpt) return null;
    this.encoded ??= encodeSnapshot(this.ckpt);
    return this.encoded;
  }

  /**
   * Takes a state pushed by a worker: checks it, keeps its EMA and sampler table and, unless it is
   * only an EMA sync, writes it as a checkpoint. Returns the checkpoint written, if any.
   */
  async accept(buf: Buffer, reason: PushReason, label: string): Promise<CheckpointInfo | null> {
    const snap = decodeSnapshot(buf, label);
    const step = snap.state.step;
    if (!Number.isSafeInteger(step) || step < 0 || step > this.cfg.train.steps)
      throw new Error(`${label}: step ${step} is outside 0…${this.cfg.train.steps}`);
    this.checkShapes(snap.parts.ema, `${label} (ema)`);
    if (reason !== 'ema-sync') {
      this.checkShapes(snap.parts.model, `${label} (model)`);
      if (snap.parts.optimizer.size !== 2 * this.shapes.size)
        throw new Error(
          `${label} (optimizer): ${snap.parts.optimizer.size} tensors, expected ${2 * this.shapes.size}`,
        );
    }
    if (step >= this.emaStep) {
      this.ema = snap.parts.ema;
      this.emaStep = step;
      this.sampler = snap.state.sampler ?? null;
    }
    if (reason === 'ema-sync') return null;
    if (step <= this.checkpointStep) return null;
    let res;
    try {
      res = await writeCheckpoint(
        this.cfg.run.out_dir,
        step,
        snap.parts,
        snap.state,
        this.cfg.train.keep_checkpoints,
      );
    } catch (e) {
      // Disk full, read-only or failing run directory: the write left nothing behind (temp dir
      // removed) and the previous checkpoint stays the newest, on disk and for FetchState. The job
      // goes on; the next checkpoint step tries again, and the final state is retried by rank 0
      // until it is written (the job cannot finish without it).
      const why = (e as Error).message.replace(/\s*[\r\n]+\s*/g, ' ');
      const dir = path.join(this.cfg.run.out_dir, `ckpt-${step}`);
      const kept = this.lastCheckpoint?.dir ?? 'no checkpoint';
      this.log?.error(
        {
          step,
          dir,
          error: why,
          code: (e as NodeJS.ErrnoException).code,
          newest: this.lastCheckpoint?.dir ?? null,
        },
        `checkpoint ${dir} not written (${why}); ${kept} stays the newest`,
      );
      throw new RpcError(grpc.status.UNAVAILABLE, `checkpoint ${dir} not written: ${why}`);
    }
    this.ckpt = snap;
    this.encoded = null;
    this.lastCheckpoint = { step, dir: res.dir, bytes: res.bytes, ms: res.ms };
    this.log?.info(
      { step, dir: res.dir, bytes: res.bytes, ms: Math.round(res.ms), reason },
      'checkpoint written',
    );
    return this.lastCheckpoint;
  }

  private checkShapes(part: Map<string, HostTensor>, label: string): void {
    if (part.size !== this.shapes.size)
      throw new Error(`${label}: ${part.size} tensors, the model has ${this.shapes.size}`);
    for (const [name, shape] of this.shapes) {
      const t = part.get(name);
      if (!t) throw new Error(`${label}: tensor ${name} is missing`);
      if (t.shape.length !== shape.length || t.shape.some((d, i) => d !== shape[i]))
        throw new Error(
          `${label}: tensor ${name} has shape [${t.shape.join(', ')}], expected [${shape.join(', ')}]`,
        );
    }
  }
}
