/**
 * Ring collectives over ZeroMQ: all-reduce (sum / mean), broadcast and all-gather among the N ranks
 * of one generation. This file holds what callers use: the `Ring` they open, its options and
 * counters (options.ts), and the address helpers; the rest lives beside it, each part with the
 * design notes that explain it:
 *   - transport.ts: the sockets (topology, the send FIFO, the receive loop) and the shared-memory
 *     links (when payloads go through /dev/shm, and what a receiver checks before it reads);
 *   - auth.ts: who may send to a rank (CURVE's ZAP handler, MACs under the generation's secret);
 *   - protocol.ts: which frames a rank acts on, the collective in progress and the window of
 *     collectives, timeouts, ABORT and failing a generation;
 *   - frame.ts: the wire format; layout.ts: segments and chunks of a buffer;
 *   - ops/: one file per collective behind `OpHost` (ops/op.ts): all-reduce.ts (the ring
 *     algorithm, its summation order, the DONE round, buffers and copies, shared-memory slots),
 *     broadcast.ts, all-gather.ts.
 *
 * ## Kernels
 * The element loops are `kernels` of reduce.ts: the native SIMD ones of native.ts (installed when
 * this module loads, if the addon is built and RINGDIFF_RING_KERNELS is not 'js') or the pure-JS
 * ones; both give the same bits, and ranks with either kind can share a ring.
 *
 * ## Failure semantics
 * Every call rejects with a `RingError` (see `errors.ts`): `RingTimeoutError` when no frame
 * arrives from the predecessor for `timeoutMs` while the call waits for one, `RingAbortedError`
 * when another rank gave up (ranks that fail send an ABORT frame to their successor, which
 * forwards it once around the ring, so survivors learn of a failure quickly), `RingProtocolError`
 * when the ranks' calls do not match, `RingClosedError` when the ring is closed. After any of them
 * the generation is broken: later calls reject with `RingBrokenError`; close it and open a new
 * generation (possibly with different peers, in the same process). `close()` is graceful on a
 * healthy ring (a last barrier, so that no rank leaves with undelivered frames; see `close`).
 *
 * What the caller's buffer holds after a rejected `allReduce`: each element holds either its
 * input value or its final reduced value (never a partial sum); which ones is unspecified. Keep a
 * copy of the input if you need it after a failure. A rejected `broadcast` leaves a prefix of the
 * root's data in the buffer of non-root ranks. `allGather` never writes into its argument.
 */
import { RingBrokenError, RingClosedError, RingConfigError, type RingError } from './errors.js';
import { SECRET_MAX_BYTES, SECRET_MIN_BYTES } from './frame.js';
import { bytesOf } from './layout.js';
import { installNativeKernels, type NativeKernelsStatus } from './native.js';
import type { CurveKeys, ReduceOp, RingCounters, RingOptions } from './options.js';
import type { Op, Settle } from './ops/op.js';
import { AllGatherOp } from './ops/all-gather.js';
import { AllReduceOp } from './ops/all-reduce.js';
import { BroadcastOp } from './ops/broadcast.js';
import { Protocol } from './protocol.js';
import { ShmLinks, SocketLink } from './transport.js';

export type { CurveKeys, ReduceOp, RingCounters, RingOptions } from './options.js';
export { pickAddress, ringContext, type PeerEndpoints } from './transport.js';
export { z85Encode } from './auth.js';

/**
 * The native (SIMD) kernels, installed when this module is loaded if the addon is built and
 * RINGDIFF_RING_KERNELS is not 'js' (see native.ts); `ok` false: the pure-JS kernels run.
 */
export const ringKernelStatus: NativeKernelsStatus = installNativeKernels();

const DEFAULT_CHUNK_BYTES = 1 << 20;
const DEFAULT_TIMEOUT_MS = 30_000;
const DEFAULT_SHM_BYTES = 1 << 30;
/** Default `sharedMemoryFrameBytes`. */
const DEFAULT_SHM_FRAME_BYTES = 32 << 20;

/** One rank's membership of a ring generation (see the file comment). */
export class Ring {
  readonly rank: number;
  readonly worldSize: number;
  readonly generation: number;
  readonly jobId: string;
  readonly successorAddress: string;
  readonly bindAddresses: readonly string[];
  readonly chunkBytes: number;
  readonly timeoutMs: number;
  readonly compression: 'none' | 'fp16';
  readonly encryption: 'none' | 'curve';

  private readonly counters: RingCounters = {
    framesSent: 0,
    bytesSent: 0,
    framesReceived: 0,
    bytesReceived: 0,
    dropped: { foreignJob: 0, staleGeneration: 0, futureGeneration: 0, malformed: 0, unexpected: 0 },
    authDenied: 0,
    completed: 0,
    shm: {
      active: false,
      reason: null,
      segmentBytes: 0,
      framesSent: 0,
      bytesSent: 0,
      framesReceived: 0,
      bytesReceived: 0,
      overflowFrames: 0,
    },
  };
  private readonly closeLingerMs: number;
  private readonly socketBufferBytes: number;
  private readonly curve: CurveKeys | undefined;
  /** The frame protocol, the host of every collective. */
  private readonly protocol: Protocol;
  /** This rank's shared-memory segment and its mappings of the others'. */
  private readonly shm: ShmLinks;
  /** The sockets (after `open`; never with worldSize 1). */
  private link: SocketLink | null = null;

  private nextSeq = 0;
  private tail: Promise<unknown> = Promise.resolve();

  private constructor(o: RingOptions) {
    const intIn = (name: string, v: unknown, lo: number, hi: number) => {
      if (typeof v !== 'number' || !Number.isInteger(v) || v < lo || v > hi)
        throw new RingConfigError(`${name} must be an integer in [${lo}, ${hi}], got ${String(v)}`);
      return v;
    };
    this.worldSize = intIn('worldSize', o.worldSize, 1, 65535);
    this.rank = intIn('rank', o.rank, 0, this.worldSize - 1);
    this.generation = intIn('generation', o.generation, 0, 0xffffffff);
    if (typeof o.jobId !== 'string' || o.jobId.length === 0)
      throw new RingConfigError('jobId must be a non-empty string');
    this.jobId = o.jobId;
    this.bindAddresses = typeof o.bindAddress === 'string' ? [o.bindAddress] : [...o.bindAddress];
    if (this.bindAddresses.length === 0) throw new RingConfigError('bindAddress is empty');
    this.successorAddress = o.successorAddress;
    this.chunkBytes = intIn('chunkBytes', o.chunkBytes ?? DEFAULT_CHUNK_BYTES, 4, 1 << 30);
    this.timeoutMs = intIn('timeoutMs', o.timeoutMs ?? DEFAULT_TIMEOUT_MS, 1, 2 ** 31 - 1);
    this.closeLingerMs = intIn('closeLingerMs', o.closeLingerMs ?? 2000, 0, 2 ** 31 - 1);
    this.socketBufferBytes = intIn('socketBufferBytes', o.socketBufferBytes ?? 0, 0, 2 ** 31 - 1);
    this.compression = o.compression ?? 'none';
    if (this.compression !== 'none' && this.compression !== 'fp16')
      throw new RingConfigError(`compression must be 'none' or 'fp16'`);
    this.encryption = o.encryption ?? 'none';
    if (this.encryption !== 'none' && this.encryption !== 'curve')
      throw new RingConfigError(`encryption must be 'none' or 'curve'`);
    if (this.encryption === 'curve') {
      const c = o.curve;
      const z = (s: unknown) => typeof s === 'string' && s.length === 40;
      if (!c || !z(c.publicKey) || !z(c.secretKey) || !z(c.successorPublicKey))
        throw new RingConfigError(
          'encryption curve needs curve.{publicKey, secretKey, successorPublicKey} (Z85, 40 chars)',
        );
      const allowed = typeof c.allowedClientKeys === 'string' ? [c.allowedClientKeys] : c.allowedClientKeys;
      if (!Array.isArray(allowed) || allowed.length === 0 || !allowed.every(z))
        throw new RingConfigError('encryption curve needs curve.allowedClientKeys (Z85, 40 chars each)');
      this.curve = c;
    }
    if (
      this.worldSize > 1 &&
      (typeof this.successorAddress !== 'string' || this.successorAddress.length === 0)
    )
      throw new RingConfigError('successorAddress is required when worldSize > 1');
    if (o.secret !== undefined) {
      const sec = o.secret;
      if (
        !(sec instanceof Uint8Array) ||
        sec.byteLength < SECRET_MIN_BYTES ||
        sec.byteLength > SECRET_MAX_BYTES
      )
        throw new RingConfigError(
          `secret must be a Uint8Array of ${SECRET_MIN_BYTES} to ${SECRET_MAX_BYTES} bytes`,
        );
    }
    const shmMode = o.sharedMemory ?? 'auto';
    if (shmMode !== 'auto' && shmMode !== 'off')
      throw new RingConfigError(`sharedMemory must be 'auto' or 'off'`);
    const shmCap = intIn('sharedMemoryBytes', o.sharedMemoryBytes ?? DEFAULT_SHM_BYTES, 0, 2 ** 40);
    const shmFrameBytes = intIn(
      'sharedMemoryFrameBytes',
      o.sharedMemoryFrameBytes ?? DEFAULT_SHM_FRAME_BYTES,
      4,
      2 ** 40,
    );
    this.shm = new ShmLinks(
      {
        jobId: this.jobId,
        generation: this.generation,
        rank: this.rank,
        worldSize: this.worldSize,
        successorAddress: this.successorAddress,
        encryption: this.encryption,
        option: o.sharedMemory,
        cap: shmCap,
        frameBytes: shmFrameBytes,
      },
      this.counters,
    );
    this.protocol = new Protocol(
      {
        jobId: this.jobId,
        rank: this.rank,
        worldSize: this.worldSize,
        generation: this.generation,
        chunkBytes: this.chunkBytes,
        timeoutMs: this.timeoutMs,
        compression: this.compression,
        secret: o.secret,
        onFrame: o.onFrame,
      },
      this.shm,
      this.counters,
    );
  }

  /**
   * Binds this rank's PULL socket and connects its PUSH socket to the successor. Does not wait for
   * the peers: the first collective does (within `timeoutMs`). With worldSize 1 no socket is opened.
   */
  static async open(options: RingOptions): Promise<Ring> {
    const ring = new Ring(options);
    await ring.init();
    return ring;
  }

  private async init(): Promise<void> {
    if (this.worldSize === 1) return;
    this.link = await SocketLink.open(
      {
        bindAddresses: this.bindAddresses,
        successorAddress: this.successorAddress,
        chunkBytes: this.chunkBytes,
        socketBufferBytes: this.socketBufferBytes,
        curve: this.curve,
      },
      this.protocol,
      this.counters,
    );
    this.protocol.link = this.link;
  }

  /** A snapshot of the counters. */
  stats(): RingCounters {
    const c = this.counters;
    const denied = this.link?.authDenied();
    if (denied !== undefined) c.authDenied = denied;
    return { ...c, dropped: { ...c.dropped }, shm: { ...c.shm } };
  }

  /** The first error of this generation, or null while it is healthy. */
  get failure(): RingError | null {
    return this.protocol.failure;
  }

  get isClosed(): boolean {
    return this.protocol.closed;
  }

  /** Where this rank stands (for error messages and debugging). */
  diagnostics(): string {
    return this.protocol.diagnostics();
  }

  // -------------------------------------------------------------------------------------------
  // Public collectives

  /**
   * In-place all-reduce of `buf` over all ranks. Every rank must call it with the same length and
   * op, in the same order relative to the ring's other collectives. Resolves when this rank holds
   * the result (bit-identical on every rank). See the file comment for failure semantics.
   */
  allReduce(buf: Float32Array, opts: { op?: ReduceOp } = {}): Promise<void> {
    const op = opts.op ?? 'sum';
    if (!(buf instanceof Float32Array))
      return Promise.reject(new RingConfigError('allReduce needs a Float32Array'));
    if (op !== 'sum' && op !== 'mean') return Promise.reject(new RingConfigError(`unknown op ${String(op)}`));
    if (buf.length > 0xffffffff) return Promise.reject(new RingConfigError('buffer too long'));
    return this.enqueue(
      (seq, settle) => new AllReduceOp(this.protocol, seq, buf, op === 'mean' ? this.worldSize : 1, settle),
    );
  }

  /**
   * Broadcast of `buf` (any typed array, sent as bytes) from `root` to every rank, in place.
   * Resolves on the root once the last rank holds the data; on the others once they hold it.
   */
  broadcast(buf: ArrayBufferView, root = 0): Promise<void> {
    if (!ArrayBuffer.isView(buf)) return Promise.reject(new RingConfigError('broadcast needs a typed array'));
    if (!Number.isInteger(root) || root < 0 || root >= this.worldSize)
      return Promise.reject(new RingConfigError(`root must be a rank in [0, ${this.worldSize - 1}]`));
    if (buf.byteLength > 0xffffffff) return Promise.reject(new RingConfigError('buffer too long'));
    return this.enqueue((seq, settle) => new BroadcastOp(this.protocol, seq, bytesOf(buf), root, settle));
  }

  /**
   * All-gather of variable-length float32 contributions: resolves with one array per rank, in rank
   * order (this rank's entry is a copy of `local`).
   */
  allGather(local: Float32Array): Promise<Float32Array[]> {
    if (!(local instanceof Float32Array))
      return Promise.reject(new RingConfigError('allGather needs a Float32Array'));
    const out: Float32Array[] = new Array<Float32Array>(this.worldSize);
    return this.enqueue((seq, settle) => new AllGatherOp(this.protocol, seq, local, out, settle)).then(
      () => out,
    );
  }

  /**
   * Resolves once every rank has called `barrier()` (an all-reduce of one element, always with the
   * DONE round: every frame this rank sent before has then been received).
   */
  barrier(): Promise<void> {
    return this.enqueue(
      (seq, settle) => new AllReduceOp(this.protocol, seq, new Float32Array(1), 1, settle, true),
    );
  }

  /**
   * Ends this rank's membership.
   *
   * On a healthy ring with no collective in progress the close is graceful: a last barrier with the
   * other ranks (who are expected to close too), bounded by `closeLingerMs`. Completing it proves
   * that every frame of every earlier collective reached its receiver — without it a rank that
   * closes (or exits) right after its last call could take undelivered frames with it and leave
   * its successor waiting. If the others do not close within `closeLingerMs`, close() gives up
   * waiting (and the others see an ABORT). A collective in progress rejects with
   * `RingClosedError` (the successor is told with an ABORT frame).
   *
   * Resolves when the sockets are closed; a new ring in this process may bind the same address
   * right away.
   */
  close(): Promise<void> {
    this.closing ??= this.doClose();
    return this.closing;
  }

  private closing: Promise<void> | undefined;
  private closeRequested = false;

  private async doClose(): Promise<void> {
    const protocol = this.protocol;
    if (
      protocol.current === null &&
      protocol.failure === null &&
      this.worldSize > 1 &&
      this.closeLingerMs > 0
    ) {
      let timer: NodeJS.Timeout | undefined;
      const barrier = this.barrier();
      this.closeRequested = true;
      const done = await Promise.race([
        barrier.then(
          () => true,
          () => false,
        ),
        new Promise<boolean>((resolve) => {
          timer = setTimeout(() => resolve(false), this.closeLingerMs);
        }),
      ]);
      clearTimeout(timer);
      if (!done && protocol.current)
        protocol.fail(
          new RingClosedError(`ring closed: the other ranks did not close within ${this.closeLingerMs} ms`),
        );
    } else {
      this.closeRequested = true;
      if (protocol.current) protocol.fail(new RingClosedError('ring closed during a collective'));
    }
    const healthy = protocol.failure === null;
    protocol.markClosed();
    const link = this.link;
    if (link) {
      const linger = healthy ? this.closeLingerMs : Math.min(200, this.closeLingerMs);
      await link.close(linger, healthy);
    }
    this.shm.release();
    if (link) {
      this.stats(); // the last count of refused CURVE clients
      link.releaseAuth();
    }
  }

  // -------------------------------------------------------------------------------------------
  // Op scheduling

  private enqueue(make: (seq: number, settle: Settle) => Op): Promise<void> {
    const protocol = this.protocol;
    if (protocol.closed || this.closeRequested) return Promise.reject(new RingClosedError());
    const seq = this.nextSeq++;
    const run = () =>
      new Promise<void>((resolve, reject) => {
        if (protocol.closed) return reject(new RingClosedError());
        const broken = protocol.failure;
        if (broken) return reject(new RingBrokenError(broken));
        const op = make(seq, { resolve, reject });
        protocol.startOp(op);
      });
    const p = this.tail.then(run);
    this.tail = p.catch(() => undefined);
    return p;
  }
}
