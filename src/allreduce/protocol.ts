/**
 * The frame protocol of one rank: which received frames it acts on, the collective in progress
 * and the window of collectives it accepts frames for, timeouts, ABORT, and the end of a
 * generation. The wire format itself is in frame.ts; who may send at all, in auth.ts.
 *
 * ## What a rank acts on
 * Anyone who can reach a rank's PULL port can send it messages. Besides malformed ones and those of
 * another job or generation (frame.ts), a rank drops and counts, without acting on them:
 *   - on a ring with a `secret` (workers: a new one with every generation, in the coordinator's
 *     plans), every frame without a valid MAC under it, or whose per-link index is not above the
 *     last one accepted (a replay) — checked before anything else, shared-memory names included;
 *   - data and DONE frames whose sender is not the predecessor, and ABORTs naming no rank;
 *   - frames for a collective other than the current one and the next (the predecessor may be
 *     one collective ahead, never more: a collective ends on a rank only once every rank has
 *     processed its data frames of it); for ABORT, which is about the generation, the previous
 *     one too (the successor of a rank that gave up may already be one collective further). A frame
 *     for the next collective waits in a queue of its own, so no frame can hold up the current one.
 * Without a secret, a forged ABORT for the current collective is still obeyed: that is what the
 * secret is for.
 *
 * ## Failing a generation
 * A rank that gives up (timeout, protocol error, close during a call, a bug in an op) marks the
 * generation broken, rejects the call in progress and sends an ABORT frame naming itself to its
 * successor, which forwards it once around the ring (an ABORT is not forwarded back to the rank
 * that started it), so survivors learn of a failure quickly.
 */
import {
  RingAbortedError,
  RingClosedError,
  RingError,
  RingProtocolError,
  RingTimeoutError,
} from './errors.js';
import { Encoding, Phase, decodeMessage, encodeHeader, type Frame, type FrameHeader } from './frame.js';
import { LinkAuth } from './auth.js';
import { mod } from './layout.js';
import type { RingCounters } from './options.js';
import type { Op, OpHost } from './ops/op.js';
import type { ShmLinks, SocketHost, SocketLink } from './transport.js';

/** What the protocol of a rank needs to know (resolved `RingOptions`). */
export interface ProtocolOptions {
  jobId: string;
  rank: number;
  worldSize: number;
  generation: number;
  chunkBytes: number;
  timeoutMs: number;
  compression: 'none' | 'fp16';
  secret: Uint8Array | undefined;
  onFrame: ((h: FrameHeader) => void) | undefined;
}

/** The frame protocol of one rank (see the file comment); the host of every collective. */
export class Protocol implements OpHost, SocketHost {
  readonly rank: number;
  readonly worldSize: number;
  readonly generation: number;
  readonly jobId: string;
  readonly chunkBytes: number;
  readonly timeoutMs: number;
  readonly compression: 'none' | 'fp16';
  /** The sockets: null until the ring is open, and always with worldSize 1. */
  link: SocketLink | null = null;
  private readonly onFrame: ((h: FrameHeader) => void) | undefined;
  private op: Op | null = null;
  /**
   * Sequence number of the collective in progress, or of the next one to start when idle. Frames
   * are accepted for it (`inbox`) and for the one after it (`nextInbox`: the predecessor may be a
   * collective ahead, never more, since a collective ends only once every rank has processed its
   * data frames); any other is dropped at once, so none can hold up the frames behind it.
   */
  private curSeq = 0;
  private inbox: Frame[] = [];
  private inboxHead = 0;
  private nextInbox: Frame[] = [];
  /** Authenticated rings: MACs under the secret; link indices sent and last accepted. */
  private readonly auth: LinkAuth | null = null;
  private broken: RingError | null = null;
  private isClosed = false;
  private lastProgress = 0;
  private timer: NodeJS.Timeout | undefined;
  private scratchBuf: Float32Array | null = null;
  /** `diagnostics()` when the generation failed. */
  private failedWhile = '';

  constructor(
    o: ProtocolOptions,
    readonly shm: ShmLinks,
    private readonly counters: RingCounters,
  ) {
    this.rank = o.rank;
    this.worldSize = o.worldSize;
    this.generation = o.generation;
    this.jobId = o.jobId;
    this.chunkBytes = o.chunkBytes;
    this.timeoutMs = o.timeoutMs;
    this.compression = o.compression;
    this.onFrame = o.onFrame;
    if (o.secret !== undefined) {
      this.auth = new LinkAuth(o.secret);
      this.counters.dropped.unauthenticated = 0;
    }
  }

  /** The collective in progress, or null. */
  get current(): Op | null {
    return this.op;
  }

  /** The first error of this generation, or null while it is healthy. */
  get failure(): RingError | null {
    return this.broken;
  }

  get closed(): boolean {
    return this.isClosed;
  }

  /** Marks the ring closed (and, if it was healthy, broken by the close). */
  markClosed(): void {
    this.isClosed = true;
    if (!this.broken) this.broken = new RingClosedError();
    if (this.timer) clearTimeout(this.timer);
  }

  // -------------------------------------------------------------------------------------------
  // The collective in progress

  /** Starts `op`, which becomes the collective in progress. */
  startOp(op: Op): void {
    this.op = op;
    this.lastProgress = performance.now();
    try {
      op.start();
      this.drain();
    } catch (e) {
      this.fail(e instanceof RingError ? e : new RingProtocolError(String(e)));
      return;
    }
    if (this.op === op) this.armTimer();
  }

  /** Called by an op when it has processed its last frame. */
  finish(op: Op): void {
    if (this.op !== op) return;
    this.op = null;
    // The window moves on: what is left of this collective is dropped, the next one's frames
    // become current.
    this.counters.dropped.unexpected += this.inbox.length - this.inboxHead;
    this.curSeq = op.seq + 1;
    this.inbox = this.nextInbox;
    this.inboxHead = 0;
    this.nextInbox = [];
    if (this.timer) {
      clearTimeout(this.timer);
      this.timer = undefined;
    }
    this.counters.completed++;
    op.resolve();
  }

  private armTimer(): void {
    if (this.timer) return;
    const fire = () => {
      this.timer = undefined;
      if (!this.op || this.closed) return;
      const idle = performance.now() - this.lastProgress;
      if (idle >= this.timeoutMs) {
        this.fail(
          new RingTimeoutError(
            `rank ${this.rank}: no frame from the predecessor for ${Math.round(idle)} ms during ${this.op.name} #${this.op.seq} (generation ${this.generation}; waiting for ${this.op.waitingFor()}; ${this.inbox.length - this.inboxHead} frames queued${this.inboxHead < this.inbox.length ? `, first of #${(this.inbox[this.inboxHead] as Frame).header.seq}` : ''}; ${this.counters.framesReceived} received, ${this.counters.framesSent} sent, ${this.link?.pending ?? 0} to send)`,
            this.timeoutMs,
          ),
        );
      } else {
        this.timer = setTimeout(fire, this.timeoutMs - idle + 1);
      }
    };
    this.timer = setTimeout(fire, this.timeoutMs);
  }

  /** Where this rank stands (for error messages and debugging). */
  diagnostics(): string {
    const op = this.op;
    const q = this.inbox.length - this.inboxHead;
    const first = q > 0 ? (this.inbox[this.inboxHead] as Frame).header : null;
    return (
      `rank ${this.rank}/${this.worldSize} generation ${this.generation}: ` +
      (op ? `${op.name} #${op.seq} waiting for ${op.waitingFor()}` : 'idle') +
      `; ${q} frames queued${first ? ` (first: #${first.seq} phase ${first.phase} step ${first.step} chunk ${first.chunk})` : ''}` +
      `; ${this.counters.framesReceived} received, ${this.counters.framesSent} sent, ${this.link?.pending ?? 0} to send` +
      (this.failedWhile ? `; failed while: ${this.failedWhile}` : '')
    );
  }

  /** Marks the generation broken, rejects the op in progress and tells the successor. */
  fail(err: RingError, forwardAbort: { origin: number; reason: string } | null = null): void {
    if (this.broken) return;
    this.failedWhile = this.diagnostics();
    this.broken = err;
    if (this.timer) {
      clearTimeout(this.timer);
      this.timer = undefined;
    }
    const op = this.op;
    this.op = null;
    if (op) op.reject(err);
    if (this.closed || !this.link) return;
    const origin = forwardAbort ? forwardAbort.origin : this.rank;
    if (mod(this.rank + 1, this.worldSize) === origin) return; // it started the abort
    const reason = forwardAbort ? forwardAbort.reason : `${err.name}: ${err.message}`;
    const payload = Buffer.from(reason, 'utf8');
    this.send(
      {
        jobId: this.jobId,
        generation: this.generation,
        seq: this.curSeq,
        step: 0,
        phase: Phase.ABORT,
        chunk: 0,
        sender: origin,
        encoding: Encoding.BYTES,
        count: payload.length,
        length: 0,
        chunks: 1,
        root: 0,
      },
      payload,
    );
  }

  // -------------------------------------------------------------------------------------------
  // Receiving

  /** Checks a received message and queues or acts on it (see the file comment). */
  onMessage(parts: Buffer[]): void {
    const c = this.counters;
    const r = decodeMessage(parts);
    if (!r.ok) {
      c.dropped.malformed++;
      return;
    }
    const h = r.frame.header;
    if (h.jobId !== this.jobId) {
      c.dropped.foreignJob++;
      return;
    }
    if (h.generation !== this.generation) {
      if (h.generation < this.generation) c.dropped.staleGeneration++;
      else c.dropped.futureGeneration++;
      return;
    }
    // Before anything acts on the frame (shared-memory segments are opened only for it).
    if (this.auth && !this.auth.accept(parts[0] as Buffer, h, r.frame.payload)) {
      c.dropped.unauthenticated = (c.dropped.unauthenticated ?? 0) + 1;
      return;
    }
    if (this.broken || this.closed) {
      c.dropped.unexpected++;
      return;
    }
    if (h.shmSegment !== undefined) {
      const view = this.shm.payload(h);
      if (!view) {
        c.dropped.malformed++;
        return;
      }
      r.frame.payload = view;
      c.shm.framesReceived++;
      c.shm.bytesReceived += view.byteLength;
    }
    // Only ABORT names another rank than the predecessor as its sender (the one that gave up).
    const pred = mod(this.rank - 1, this.worldSize);
    if (h.sender >= this.worldSize || (h.phase !== Phase.ABORT && h.sender !== pred)) {
      c.dropped.unexpected++;
      return;
    }
    // ABORT is about the generation: the predecessor may be one collective ahead of this rank or
    // one behind. Data frames: the current collective or the next (see `curSeq`).
    const lag = h.seq - this.curSeq;
    if (h.phase === Phase.ABORT ? lag < -1 || lag > 1 : lag !== 0 && lag !== 1) {
      c.dropped.unexpected++;
      return;
    }
    c.framesReceived++;
    c.bytesReceived += r.frame.payload.byteLength;
    if (h.phase === Phase.ABORT) {
      const reason = r.frame.payload.toString('utf8');
      this.fail(
        new RingAbortedError(
          `rank ${h.sender} aborted generation ${this.generation}: ${reason}`,
          h.sender,
          reason,
        ),
        { origin: h.sender, reason },
      );
      return;
    }
    if (lag === 1) {
      this.nextInbox.push(r.frame);
      return;
    }
    this.inbox.push(r.frame);
    this.drain();
  }

  /** Feeds queued frames to the op in progress. */
  private drain(): void {
    while (this.op && this.inboxHead < this.inbox.length) {
      const f = this.inbox[this.inboxHead] as Frame;
      const op = this.op;
      if (f.header.seq !== op.seq) {
        // Cannot happen (the inbox holds frames of `curSeq` only); never let one block the rest.
        this.inboxHead++;
        this.counters.dropped.unexpected++;
        continue;
      }
      this.inbox[this.inboxHead++] = undefined as unknown as Frame;
      this.lastProgress = performance.now();
      if (this.onFrame) this.onFrame(f.header);
      try {
        op.handle(f);
      } catch (e) {
        this.fail(
          e instanceof RingError
            ? e
            : new RingProtocolError(`internal error: ${(e as Error).stack ?? String(e)}`),
        );
        return;
      }
    }
    if (this.inboxHead === this.inbox.length) {
      this.inbox.length = 0;
      this.inboxHead = 0;
    } else if (this.inboxHead > 1024) {
      this.inbox = this.inbox.slice(this.inboxHead);
      this.inboxHead = 0;
    }
  }

  // -------------------------------------------------------------------------------------------
  // Sending

  /** Queues a message to the successor (one zeromq.js send in flight at a time). */
  send(h: FrameHeader, payload: Buffer): void {
    // ZeroMQ reads a payload after this returns; a mapped segment may be unmapped before that.
    if (payload.byteLength > 0 && this.shm.isMapped(payload.buffer))
      throw new RingProtocolError('internal error: a shared-memory view sent through the socket');
    const hb = this.auth ? this.auth.seal(h, payload) : encodeHeader(h);
    this.link?.send(hb, payload);
  }

  /** The ring's scratch buffer (see `OpHost.scratch`). */
  scratch(length: number): Float32Array {
    if (!this.scratchBuf || this.scratchBuf.length < length) this.scratchBuf = new Float32Array(length);
    return this.scratchBuf;
  }
}
