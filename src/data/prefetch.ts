/**
 * Prefetching shards of global batches in a worker thread: the next local batch is read,
 * decoded and augmented while the current step computes. The time a step waits for its data is
 * measured, so a slow reader shows up in the metrics rather than as an unexplained slow step.
 */
import { Worker } from 'node:worker_threads';
import { performance } from 'node:perf_hooks';
import type { Config } from '../config/schema.js';
import { GlobalBatches } from './batches.js';
import { exampleSize, type Dataset } from './dataset.js';
import { Purpose, stream } from '../model/rng.js';
import { flipHorizontal } from './preprocess.js';

/** What the loader thread needs to produce shards: the data config and the run's seed and batch. */
export interface LoaderInit {
  data: Config['data'];
  seed: number;
  globalBatch: number;
  /** Module exporting `openDataset(data)`; the product's spec.js unless a test substitutes one. */
  module: string;
}

export interface LoaderRequest {
  id: number;
  step: number;
  from: number;
  to: number;
}

export type LoaderReply =
  | { id: number; ok: true; x0: Float32Array; labels: Int32Array | null; from: number; n: number }
  | { id: number; ok: false; error: string };

/** A shard ready for the training step. */
export interface LoadedShard {
  x0: Float32Array;
  labels: Int32Array | null;
  from: number;
  n: number;
}

/**
 * Reads positions [from, to) of global batch `step` and applies per-example augmentation
 * (horizontal flip drawn from the example's own stream). Pure function of its inputs.
 */
export function readShard(
  dataset: Dataset,
  init: Pick<LoaderInit, 'data' | 'seed' | 'globalBatch'>,
  req: Pick<LoaderRequest, 'step' | 'from' | 'to'>,
  batches: GlobalBatches,
): LoadedShard {
  const idx = batches.indices(req.step, req.from, req.to);
  const size = exampleSize(dataset);
  const x0 = new Float32Array(idx.length * size);
  const labels = dataset.numClasses > 0 ? new Int32Array(idx.length) : null;
  const flip = init.data.random_flip && dataset.shape.length === 3;
  idx.forEach((i, k) => {
    const ex = dataset.get(i);
    const j = req.from + k;
    const x =
      flip && stream(init.seed, req.step, j, Purpose.flip).uniform() < 0.5
        ? flipHorizontal(ex.x, dataset.shape as [number, number, number])
        : ex.x;
    x0.set(x, k * size);
    if (labels) labels[k] = ex.label;
  });
  return { x0, labels, from: req.from, n: idx.length };
}

/** Default module the loader thread opens datasets with. */
export const DEFAULT_DATASET_MODULE = new URL('./spec.js', import.meta.url).href;

/** A loader thread with a queue of requested shards; `get` awaits one and records the wait. */
export class Prefetcher {
  private readonly worker: Worker;
  private readonly ready: Promise<void>;
  private nextId = 0;
  private readonly pending = new Map<string, { id: number; promise: Promise<LoadedShard> }>();
  private readonly waiters = new Map<
    number,
    { resolve: (s: LoadedShard) => void; reject: (e: Error) => void }
  >();
  private failed: Error | null = null;
  private isReady = false;
  /** Milliseconds the last `get` waited for its data. */
  lastWaitMs = 0;
  /** Total milliseconds spent waiting for data. */
  totalWaitMs = 0;

  constructor(init: LoaderInit) {
    this.worker = new Worker(new URL('./loader-worker.js', import.meta.url), { workerData: init });
    this.ready = new Promise((resolve, reject) => {
      const onMsg = (m: { ready?: boolean }) => {
        if (m.ready) {
          this.worker.off('message', onMsg);
          this.isReady = true;
          resolve();
        }
      };
      this.worker.on('message', onMsg);
      this.worker.once('error', reject);
    });
    this.worker.on('message', (m: LoaderReply | { ready: true }) => {
      if ('ready' in m) return;
      const w = this.waiters.get(m.id);
      if (!w) return;
      this.waiters.delete(m.id);
      if (m.ok) w.resolve({ x0: m.x0, labels: m.labels, from: m.from, n: m.n });
      else w.reject(new Error(m.error));
    });
    this.worker.on('error', (e) => this.fail(e));
    this.worker.on('exit', (code) => {
      if (code !== 0) this.fail(new Error(`data loader thread exited with code ${code}`));
    });
  }

  private fail(e: Error): void {
    this.failed ??= e;
    for (const w of this.waiters.values()) w.reject(e);
    this.waiters.clear();
  }

  private key(step: number, from: number, to: number): string {
    return `${step}:${from}:${to}`;
  }

  /** Starts loading positions [from, to) of global batch `step` (no-op if already requested). */
  request(step: number, from: number, to: number): void {
    const k = this.key(step, from, to);
    if (this.pending.has(k)) return;
    const id = this.nextId++;
    // Post synchronously when the thread is up: the caller is about to block the event loop with
    // a training step, and a request left in a microtask would only be sent after it.
    const send = () =>
      new Promise<LoadedShard>((resolve, reject) => {
        if (this.failed) return reject(this.failed);
        this.waiters.set(id, { resolve, reject });
        this.worker.postMessage({ id, step, from, to } satisfies LoaderRequest);
      });
    const promise = this.isReady ? send() : this.ready.then(send);
    promise.catch(() => {}); // surfaced by get(); avoid an unhandled rejection for dropped requests
    this.pending.set(k, { id, promise });
  }

  /** The shard of global batch `step`, requesting it now if nobody did; measures the wait. */
  async get(step: number, from: number, to: number): Promise<LoadedShard> {
    this.request(step, from, to);
    const k = this.key(step, from, to);
    const entry = this.pending.get(k) as { promise: Promise<LoadedShard> };
    const t0 = performance.now();
    try {
      return await entry.promise;
    } finally {
      this.pending.delete(k);
      this.lastWaitMs = performance.now() - t0;
      this.totalWaitMs += this.lastWaitMs;
    }
  }

  /** Forgets requests that will not be used (e.g. after a re-plan for a new world size). */
  drop(): void {
    this.pending.clear();
  }

  /** Stops the loader thread. */
  async close(): Promise<void> {
    await this.worker.terminate();
  }
}
