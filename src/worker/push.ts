/**
 * A worker's state pushes to the coordinator: periodic checkpoints and EMA syncs queued behind the
 * one in flight (training goes on), and the final state, retried until it is durable.
 */
import { performance } from 'node:perf_hooks';
import type { Logger } from '../util/log.js';
import type { CoordinatorClient } from './client.js';
import { encodeSnapshot } from '../job/transfer.js';
import type { Snapshot } from '../job/snapshot.js';

/** Why a snapshot is pushed. */
export type PushReason = 'checkpoint' | 'ema-sync' | 'final' | 'shutdown';

/** A snapshot waiting to be pushed, with the registration and generation it was taken in. */
interface QueuedPush {
  reason: 'checkpoint' | 'ema-sync';
  snap: Snapshot;
  generation: number;
  workerId: string;
}

/** What the pusher reads of its worker, live. */
export interface PusherHost {
  /** This worker's current registration ('' before the first). */
  workerId(): string;
  /** The generation this worker is in now. */
  generation(): number;
  /** Out of the job (fenced): older snapshots must not be pushed. */
  fenced(): boolean;
  /** The running generation is over (a new plan, the stream's end, leaving). */
  interrupted(): boolean;
}

/** A push the coordinator refused for good: the caller decides (e.g. a fatal token error). */
export class PushRefused extends Error {
  constructor(
    message: string,
    readonly code: number,
  ) {
    super(message);
  }
}

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

/** Pushes one worker's snapshots to the coordinator. */
export class StatePusher {
  private queued: { checkpoint: QueuedPush | null; ema: QueuedPush | null } = { checkpoint: null, ema: null };
  private pushing: Promise<void> | null = null;

  constructor(
    private readonly client: CoordinatorClient,
    private readonly host: PusherHost,
    private readonly log: Logger,
  ) {}

  /**
   * Queues a push of a snapshot (a copy: training goes on) behind the one in flight. Only the
   * newest checkpoint and the newest EMA sync wait (a checkpoint carries the EMA too): when pushes
   * are slower than the steps (a slow or stalled link to the coordinator) older ones are dropped
   * rather than piling up and reaching the coordinator late. A push is made under the
   * registration it was taken in: once this worker registered again (fenced: its state
   * discarded), its older snapshots are not pushed.
   */
  enqueue(reason: 'checkpoint' | 'ema-sync', snap: Snapshot, generation: number): void {
    const q: QueuedPush = { reason, snap, generation, workerId: this.host.workerId() };
    if (reason === 'checkpoint') this.queued = { checkpoint: q, ema: null };
    else this.queued.ema = q;
    this.pushing ??= this.drain();
  }

  /** Resolves when the queue is empty (nothing in flight). */
  async idle(): Promise<void> {
    await this.pushing;
  }

  /** Drops queued snapshots (a fenced worker's state is discarded). */
  clear(): void {
    this.queued = { checkpoint: null, ema: null };
  }

  /**
   * The final state must become a durable checkpoint before the job can finish: a push the
   * coordinator could not write (disk full, read-only run directory: UNAVAILABLE) or that failed in
   * transit is retried with back-off until it is accepted, or until this generation ends (a new
   * plan, a lost coordinator: then the next rank 0 pushes it). Throws PushRefused on a bad token.
   */
  async pushFinal(snap: Snapshot, generation: number): Promise<void> {
    let backoff = 500;
    for (;;) {
      try {
        await this.push('final', snap, generation);
        return;
      } catch (e) {
        const code = (e as { code?: number }).code;
        if (code === 5 /* NOT_FOUND */ || code === 9 /* FAILED_PRECONDITION */) {
          // Fenced or superseded: the plan stream tells us what comes next.
          this.log.warn(
            { error: (e as Error).message },
            'final state refused: not a member of this generation',
          );
          return;
        }
        if (code === 16 /* UNAUTHENTICATED */) throw new PushRefused((e as Error).message, code);
        this.log.warn(
          { error: (e as Error).message, retry_ms: backoff },
          'final state not checkpointed yet; retrying',
        );
      }
      const until = Date.now() + backoff;
      while (Date.now() < until) {
        if (this.host.interrupted()) return;
        await sleep(Math.min(100, until - Date.now()));
      }
      backoff = Math.min(5000, backoff * 2);
    }
  }

  /** Pushes a snapshot now, as `workerId` (default: the current registration) in `generation`. */
  async push(
    reason: PushReason,
    snap: Snapshot,
    generation: number,
    workerId = this.host.workerId(),
  ): Promise<void> {
    const t0 = performance.now();
    const buf = encodeSnapshot(snap);
    const r = await this.client.pushState({ workerId, generation, step: snap.state.step, reason }, buf);
    this.log.info(
      { reason, step: r.step, bytes: buf.length, ms: Math.round(performance.now() - t0) },
      'state pushed',
    );
  }

  private async drain(): Promise<void> {
    try {
      for (;;) {
        const q = this.queued.checkpoint ?? this.queued.ema;
        if (!q) return;
        if (q === this.queued.checkpoint) this.queued.checkpoint = null;
        else this.queued.ema = null;
        if (q.workerId !== this.host.workerId()) continue;
        try {
          await this.pushAcrossGenerations(q);
        } catch (e) {
          this.log.warn(
            { error: (e as Error).message, reason: q.reason, step: q.snap.state.step },
            'state push failed',
          );
        }
      }
    } finally {
      this.pushing = null;
    }
  }

  /**
   * A push refused because the coordinator has moved to a newer generation meanwhile (a worker
   * joined or left while it was in flight) is made again as a member of the new generation: the
   * snapshot is of a committed step, which every member of the new generation shares.
   */
  private async pushAcrossGenerations(q: QueuedPush): Promise<void> {
    try {
      await this.push(q.reason, q.snap, q.generation, q.workerId);
    } catch (e) {
      if ((e as { code?: number }).code !== 9 /* FAILED_PRECONDITION */) throw e;
      const until = Date.now() + 5000;
      const h = this.host;
      while (h.generation() <= q.generation && !h.fenced() && Date.now() < until) await sleep(50);
      if (h.generation() <= q.generation || h.fenced() || h.workerId() !== q.workerId) throw e;
      await this.push(q.reason, q.snap, h.generation(), q.workerId);
    }
  }
}
