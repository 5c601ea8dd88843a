/**
 * What every collective is to the ring, and what the ring is to a collective.
 *
 * A collective in progress (`Op`) is fed the predecessor's frames one by one, in order, already
 * filtered by the protocol (protocol.ts: job, generation, authentication, sender, collective).
 * It sees the ring only through `OpHost`: its place in the ring, how to send a frame, how to say
 * it is done, and the buffers the ring lends it (a scratch buffer; the shared-memory segment).
 * One file per collective beside this one: all-reduce.ts, broadcast.ts, all-gather.ts.
 */
import { RingProtocolError, type RingError } from '../errors.js';
import type { Encoding, Frame, FrameHeader, Phase } from '../frame.js';
import type { OwnSegment } from '../shm.js';

/** A collective in progress: consumes the predecessor's frames in order. */
export interface Op {
  readonly seq: number;
  readonly name: string;
  /** Sends the first frames. */
  start(): void;
  /** Processes the next frame from the predecessor (already checked: job, generation, seq). */
  handle(f: Frame): void;
  /** What it waits for (for error messages). */
  waitingFor(): string;
  done: boolean;
  resolve(): void;
  reject(e: RingError): void;
}

/** This rank's shared-memory segment as the all-reduce uses it (transport.ts `ShmLinks`). */
export interface ShmSlots {
  /** Float32 bytes per shared-memory frame (see `sharedMemoryFrameBytes`). */
  readonly frameBytes: number;
  /**
   * Where the last all-reduce left its final values in this rank's segment ([lo, hi) bytes) if it
   * ended without the DONE round: other ranks may still be reading them (see all-reduce.ts).
   */
  unconfirmed: { seg: OwnSegment; lo: number; hi: number } | null;
  /** This rank's segment for a call whose sends need `bytes` bytes of slots (null: the socket). */
  segment(bytes: number, fresh?: boolean): OwnSegment | null;
  /** Counts a data frame sent through shared memory (or not, for want of room). */
  countSend(bytes: number | null): void;
}

/** The ring as a collective sees it (implemented by protocol.ts `Protocol`). */
export interface OpHost {
  readonly jobId: string;
  readonly generation: number;
  readonly rank: number;
  readonly worldSize: number;
  readonly chunkBytes: number;
  readonly compression: 'none' | 'fp16';
  readonly shm: ShmSlots;
  /** Queues a message to the successor (one zeromq.js send in flight at a time). */
  send(h: FrameHeader, payload: Buffer): void;
  /** Called by an op when it has processed its last frame. */
  finish(op: Op): void;
  /**
   * The ring's scratch buffer (at least `length` float32; reused by every call): the partial sums
   * this rank sends on when it frees received frames (see all-reduce.ts). It may be overwritten in
   * the next call: a call ends only once the successor has consumed every frame this rank sent
   * during it.
   */
  scratch(length: number): Float32Array;
}

/** How an op settles the promise of its call. */
export type Settle = { resolve(): void; reject(e: RingError): void };

/** Throws a RingProtocolError naming the difference when `h` is not the frame `want` describes. */
export function expectFrame(
  name: string,
  h: FrameHeader,
  want: {
    phase: Phase;
    step: number;
    chunk: number;
    encoding: Encoding;
    count: number;
    length: number;
    chunks: number;
    root?: number;
  },
): void {
  if (h.phase !== want.phase || h.step !== want.step || h.chunk !== want.chunk)
    throw new RingProtocolError(
      `${name}: expected phase ${want.phase} step ${want.step} chunk ${want.chunk} from rank ${h.sender}, got phase ${h.phase} step ${h.step} chunk ${h.chunk} (did the ranks call different collectives?)`,
    );
  if (h.length !== want.length)
    throw new RingProtocolError(
      `${name}: rank ${h.sender} was called with length ${h.length}, this rank with ${want.length}`,
    );
  if (h.encoding !== want.encoding)
    throw new RingProtocolError(
      `${name}: rank ${h.sender} sends encoding ${h.encoding}, this rank expects ${want.encoding} (compression must match)`,
    );
  if (h.count !== want.count || h.chunks !== want.chunks)
    throw new RingProtocolError(
      `${name}: rank ${h.sender} cut the data differently (count ${h.count}/${want.count}, chunks ${h.chunks}/${want.chunks}; chunkBytes must match)`,
    );
  if (want.root !== undefined && h.root !== want.root)
    throw new RingProtocolError(
      `${name}: rank ${h.sender} broadcasts from root ${h.root}, this rank from ${want.root}`,
    );
}

/** What every collective shares: settling its promise exactly once and marking itself done. */
export abstract class SettledOp implements Op {
  abstract readonly name: string;
  done = false;

  constructor(
    protected readonly ring: OpHost,
    readonly seq: number,
    private readonly settle: Settle,
  ) {}

  abstract start(): void;
  abstract handle(f: Frame): void;
  abstract waitingFor(): string;

  /** Header of a frame of this ring. */
  protected header(
    seq: number,
    phase: Phase,
    step: number,
    chunk: number,
    encoding: Encoding,
    count: number,
    length: number,
    chunks: number,
    root = 0,
  ): FrameHeader {
    return {
      jobId: this.ring.jobId,
      generation: this.ring.generation,
      seq,
      step,
      phase,
      chunk,
      sender: this.ring.rank,
      encoding,
      count,
      length,
      chunks,
      root,
    };
  }

  resolve(): void {
    this.done = true;
    this.settle.resolve();
  }

  reject(e: RingError): void {
    this.done = true;
    this.settle.reject(e);
  }
}
