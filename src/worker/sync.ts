/**
 * The start of a generation: the new ring agrees on one state before the first step, with no
 * round trip to the coordinator (docs/design.md §4).
 *
 * 1. All-gather every rank's committed step; the newest, S, wins (the lowest rank holding it is
 *    the root).
 * 2. Ranks at S − 1 missed only the end of step S − 1's all-reduce: the root broadcasts the
 *    reduced buffer it kept and they commit it (roll forward), identically to everyone else.
 * 3. Ranks further behind (a joining worker) receive the root's whole state snapshot.
 * Every rank takes part in every broadcast (ring collectives need all ranks), so the sequence of
 * collectives is the same everywhere.
 */
import type { Ring } from '../allreduce/ring.js';
import { RingTimeoutError } from '../allreduce/errors.js';
import { restoreSnapshot, snapshot } from '../job/snapshot.js';
import { type Job } from '../job/job.js';
import { commitReduced } from '../job/step.js';
import { decodeSnapshot, encodeSnapshot } from '../job/transfer.js';

export interface SyncResult {
  /** Step every rank is at after the sync. */
  step: number;
  root: number;
  rolledForward: boolean;
  receivedState: boolean;
}

/** What a rank keeps between steps so that it can help others catch up. */
export interface Kept {
  /** Step whose reduced buffer `reduced` is (the last step this rank committed is `step`). */
  step: number;
  reduced: Float32Array;
}

/**
 * The first collective of a new ring, bounded by `timeoutMs`: on expiry the ring is closed and a
 * `RingTimeoutError` thrown, so the caller reports a ring failure and the coordinator re-forms
 * the ring. Needed because a peer that connects while this rank's socket of the previous
 * generation is still bound can have its first frames dropped there as a future generation: the
 * peer completes the collective, this rank would wait for the whole ring timeout.
 */
async function firstCollective<T>(ring: Ring, op: Promise<T>, timeoutMs: number | undefined): Promise<T> {
  if (timeoutMs === undefined || ring.worldSize === 1) return op;
  let timer: NodeJS.Timeout | undefined;
  const expired = new Promise<'expired'>((resolve) => {
    timer = setTimeout(() => resolve('expired'), timeoutMs);
  });
  try {
    const r = await Promise.race([op, expired]);
    if (r !== 'expired') return r;
  } finally {
    clearTimeout(timer);
  }
  op.catch(() => {});
  await ring.close().catch(() => {});
  throw new RingTimeoutError(
    `rank ${ring.rank}: the generation-start all-gather of generation ${ring.generation} did not complete within ${timeoutMs} ms`,
    timeoutMs,
  );
}

/**
 * Brings every rank of `ring` to the newest committed state; see the module comment.
 * `firstTimeoutMs` bounds the first collective (see `firstCollective`).
 */
export async function syncGeneration(
  job: Job,
  ring: Ring,
  kept: Kept | null,
  opts: { firstTimeoutMs?: number } = {},
): Promise<SyncResult> {
  const mine = job.state.step;
  const steps = (await firstCollective(ring, ring.allGather(Float32Array.of(mine)), opts.firstTimeoutMs)).map(
    (a) => a[0] as number,
  );
  const newest = Math.max(...steps);
  const root = steps.indexOf(newest);
  const rollers = steps.some((s) => s === newest - 1);
  const laggards = steps.some((s) => s < newest - 1);
  const isRoot = ring.rank === root;
  let rolledForward = false;
  let receivedState = false;
  if (rollers) {
    if (isRoot && (!kept || kept.step !== newest - 1)) {
      throw new Error(
        `rank ${ring.rank} is at step ${newest} but did not keep the reduced buffer of step ${newest - 1}`,
      );
    }
    // Lengths first: a rank that is behind may not know the layout size (it does, but checks it).
    const len = Uint32Array.of(isRoot && kept ? kept.reduced.length : 0);
    await ring.broadcast(len, root);
    const buf = isRoot && kept ? kept.reduced : new Float32Array(len[0] as number);
    await ring.broadcast(buf, root);
    if (mine === newest - 1) {
      commitReduced(job, buf);
      rolledForward = true;
    }
  }
  if (laggards) {
    const bytes = isRoot ? encodeSnapshot(await snapshot(job)) : null;
    const len = Float64Array.of(bytes ? bytes.length : 0);
    await ring.broadcast(len, root);
    const buf = bytes ?? Buffer.alloc(len[0] as number);
    await ring.broadcast(buf, root);
    if (job.state.step < newest) {
      restoreSnapshot(job, decodeSnapshot(buf, `state from rank ${root}`));
      receivedState = true;
    }
  }
  if (job.state.step !== newest) {
    throw new Error(
      `rank ${ring.rank} ended the generation sync at step ${job.state.step}, expected ${newest}`,
    );
  }
  return { step: newest, root, rolledForward, receivedState };
}
