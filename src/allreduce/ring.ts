/**
 * Ring collectives over ZeroMQ: all-reduce (sum / mean), broadcast and all-gather among the N ranks
 * of one generation.
 *
 * ## Topology and transport
 * Rank r binds a PULL socket at `bindAddress` and connects a PUSH socket to the address its
 * successor (r+1 mod N) bound. ZeroMQ keeps the frames of one connection in order, so everything
 * rank r receives from its predecessor arrives in the order it was sent. A background loop
 * receives, decodes and filters every message (see `frame.ts` for the wire format and what is
 * dropped), and feeds the collective in progress, frame by frame, synchronously; sends go through a
 * FIFO with one zeromq.js send in flight at a time (zeromq.js allows no more per socket).
 * `pickAddress` chooses ipc:// for peers on the same host and tcp:// otherwise.
 *
 * ## All-reduce (bandwidth-optimal ring, pipelined)
 * The buffer of L elements is cut into N segments (segment k = [⌊kL/N⌋, ⌊(k+1)L/N⌋)) and each
 * segment into chunks of `chunkBytes / 4` elements (at least one chunk per segment, possibly
 * empty). 2(N−1) steps each move one segment per link: reduce-scatter steps s = 0…N−2 (rank r
 * sends segment r−s, receives r−s−1 and adds its own contribution to the received partial sum,
 * which it then sends on; at the last one it adds the received frame into its own buffer, which
 * then holds the final value of that segment), then all-gather steps (rank r starts with segment
 * r+1, which it owns, and copies every segment it receives into its buffer and sends it on from
 * there). Every chunk is sent on as soon as it is processed, so sending, receiving and adding
 * overlap along the whole ring. The call ends with DONE tokens (see below). The sum of segment k
 * is always formed in the order ((x_k + x_{k+1}) + x_{k+2}) + … (indices mod N; the chunk size
 * does not matter), so within a generation (same ranks, same order) results are bit-reproducible
 * and bit-identical on every rank. `mean` divides the float32 sum by N once, at the owner, before
 * the all-gather.
 *
 * With `compression: 'fp16'` the payloads are IEEE binary16: each hop adds in float32 and rounds
 * the partial sum to fp16 for the wire; the owner keeps the fp16-rounded final value, so every
 * rank still ends with identical bits.
 *
 * ## Kernels
 * The element loops are `kernels` of reduce.ts: the native SIMD ones of native.ts (installed when
 * this module loads, if the addon is built and RINGDIFF_RING_KERNELS is not 'js') or the pure-JS
 * ones; both give the same bits, and ranks with either kind can share a ring.
 *
 * ## Buffers and copies
 * Frames are sent zero-copy: ZeroMQ references the memory until its I/O thread has written it.
 * All-reduce frames are sent from the caller's buffer (the rank's own segment at reduce-scatter
 * step 0, the final values from the owner's last reduce-scatter step on) or, for partial sums,
 * from the received frame itself (pure-JS kernels) or from the ring's scratch buffer (native
 * kernels, below). So that no send of that memory is pending when `allReduce` resolves, every rank
 * that has processed all its data frames sends a DONE token carrying its rank, and passes on the
 * others' tokens until its successor's has come back round (N−1 tokens per rank and call, in a
 * fixed order on every link: the sender's data, its own token, then the ones it passes on); the
 * successor's token proves it has consumed everything this rank sent, so the caller may reuse its
 * buffer at once, and the scratch buffer may be overwritten by the next call. A call whose
 * payloads all went through shared memory (below) ends without this round unless it is a
 * `barrier()`: N−1 more hops, each a wake-up of another process, are a large part of a call
 * when ranks outnumber cores.
 *
 * ZeroMQ allocates every received frame with malloc, and zeromq.js hands it to JavaScript as an
 * external buffer that only a garbage collection would free — while the external memory it
 * reports makes V8 run a full collection every few tens of megabytes received. The native kernels
 * include `release`, which frees a frame as soon as it has been read; since a frame that is sent
 * on cannot be freed yet, with them partial sums are written into a scratch buffer owned by the
 * ring (as large as the largest buffer reduced; allocated on first use, N > 2 or fp16 only) and
 * sent from there, so no received frame is ever sent on. Per rank and call, the data is touched
 * by: one float32 add of (N−1)/N of it (received frame + caller's buffer → scratch or received
 * frame, or into the caller's buffer at the last step) and one copy of (N−1)/N of it (all-gather,
 * received frame → caller's buffer), besides ZeroMQ's own copies into and out of the kernel.
 *
 * Processes that run a ring should be started with `RING_MALLOC_ENV` (bench.ts) in their
 * environment, or glibc may hand out fresh pages (and page faults) for every frame.
 *
 * ## Shared memory (ranks on one host)
 * When the successor's address is ipc:// (`pickAddress` chooses it only for a peer on this host),
 * encryption is not 'curve', `sharedMemory` is 'auto' (env RINGDIFF_RING_SHM=off overrides) and
 * the native addon is built, all-reduce payloads do not go through the socket: the rank writes
 * them into a segment it created in /dev/shm (shm.ts: mode 0600, a name with the job, generation,
 * rank, pid and a random nonce) and sends only the header, which names the segment and the offset
 * (frame.ts); the payload frame is empty. Receivers map other ranks' segments read-only and read
 * payloads straight from them. ZeroMQ still carries every header, in order, so everything above
 * (ordering, DONE round, ABORT, timeouts, generations, dropping) is unchanged. The data is touched:
 *   - step 0: the rank's own segment is copied (fp16: converted) into its slot;
 *   - reduce-scatter steps s < N−2: received slot + caller's buffer → the next slot (one add,
 *     written straight into this rank's segment);
 *   - the last reduce-scatter step: received slot + caller's buffer → caller's buffer (the final
 *     value; fp16: formed in the slot, then widened into the buffer), copied into the slot;
 *   - all-gather: received slot → caller's buffer, and the header goes on unchanged — it still
 *     names the slot of the rank that formed the final value, so all-gather moves no payload
 *     bytes between ranks at all: every rank reads each final segment from its owner's segment.
 * A frame through shared memory covers several consecutive chunks of its step (whole chunks,
 * about `sharedMemoryFrameBytes`, default 32 MiB of float32; its `count` tells the receiver how
 * many): without payload bytes to stream through a socket, small frames only cost per-frame work
 * on every rank. A receiver that passes such a frame on through the socket splits it into chunks.
 * Results are bit-identical to the socket path (the same kernels on the same operands, in the
 * same order; copies preserve bits). The ring always accepts shared-memory frames (whatever its own
 * `sharedMemory`), so ranks that send through the socket and ranks that do not can share a ring.
 *
 * Slots and their reuse. Each call lays out one region per step 0 … N−1 (the segment that step
 * sends, chunks contiguous; ≈ the buffer size in all, half with fp16) from the start of the
 * rank's segment, so no slot is written twice within a call. The segment is created by the first
 * call that needs it and replaced by a larger one (at least double, at most `sharedMemoryBytes`,
 * default 1 GiB) when a call needs more; steps that do not fit under the cap go through the
 * socket, so memory stays bounded for any model size (≈ N × the cap per host). A slot is
 * rewritten (or its segment replaced) only by a later call of the same rank, and processing a
 * frame reads its slot synchronously, to the last byte, before anything else runs. After a call
 * with the DONE round, the rank has received the DONE token of every other rank, each sent only
 * after that rank processed all its data frames: every read of every slot is done. Without it
 * (every rank sent every payload through shared memory: each data header carries its sender's
 * `done_round` ORed with those it received, and a rank's last data frame descends from frames of
 * every rank, so all ranks decide alike), the reads that may still be under way when the rank
 * starts its next call are of its final values (region N−1: its predecessor reads them last of
 * all, at its last step). Its reduce-scatter regions were read by its successor before that one
 * formed the final values that reached this rank last. The next call writes region 0 at once, and
 * every other region only after a frame of that call from the predecessor — which has then
 * finished the previous call, so all reads of the old final values are done. So region 0 alone
 * must not overlap the previous call's final values: it is laid out after them when it would
 * (lengths changing between calls), or in a fresh segment. Receivers replace their mapping of a
 * rank's segment when a header names a new one; that header belongs to a call after every frame
 * that referred to the old one, all of them processed on arrival, and the old file was already
 * unlinked by its creator.
 *
 * What a receiver checks before it reads (else the frame is dropped and counted as malformed,
 * like any malformed frame): the frame decoder checks the name's form, that the phase is a data
 * phase, the encoding F32/F16, the offset an aligned integer and the payload frame empty; then the
 * ring checks that the name is one the right rank of this job and generation may have created
 * (the predecessor for reduce-scatter, any other rank for all-gather), that the frame comes from
 * the predecessor, and that offset + count × element size lies inside the mapping. The addon opens
 * only a regular file of this user, mode 0600, directly in /dev/shm, without following symlinks or
 * blocking on a FIFO. Limits: a process of the same user can write into (or truncate: SIGBUS) a
 * segment, as it could ptrace the rank; injected data is no worse than injecting on the socket,
 * which is what CURVE is for (and with CURVE, payloads stay on the socket). A segment is unlinked
 * when its ring closes, by the other ranks' rings when they close (its creator may have died), at
 * process exit, or by a later segment creation on the host once its process is gone (shm.ts).
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
import * as zmq from 'zeromq';
import {
  RingAbortedError,
  RingBrokenError,
  RingClosedError,
  RingConfigError,
  RingError,
  RingProtocolError,
  RingTimeoutError,
} from './errors.js';
import {
  ELEMENT_BYTES,
  Encoding,
  FrameAuth,
  Phase,
  SECRET_MAX_BYTES,
  SECRET_MIN_BYTES,
  decodeMessage,
  encodeHeader,
  type Frame,
  type FrameHeader,
} from './frame.js';
import { installNativeKernels, type NativeKernelsStatus } from './native.js';
import { kernels } from './reduce.js';
import {
  OwnSegment,
  PeerSegment,
  SLOT_ALIGN,
  segmentName,
  segmentPattern,
  shmApi,
  shmUnavailableReason,
  shmWanted,
} from './shm.js';

/**
 * The native (SIMD) kernels, installed when this module is loaded if the addon is built and
 * RINGDIFF_RING_KERNELS is not 'js' (see native.ts); `ok` false: the pure-JS kernels run.
 */
export const ringKernelStatus: NativeKernelsStatus = installNativeKernels();

export type ReduceOp = 'sum' | 'mean';

/** CURVE keys (Z85 strings of 40 characters, e.g. from `zmq.curveKeyPair()`). */
export interface CurveKeys {
  /** This rank's long-term key pair. */
  publicKey: string;
  secretKey: string;
  /** Public key of the successor (the CURVE server this rank connects to). */
  successorPublicKey: string;
  /**
   * Public key(s) of the client(s) allowed to connect to this rank's PULL socket — normally the
   * predecessor's. A ZAP handler rejects every other client during the handshake, so a peer
   * without an allowed key cannot deliver any frame.
   */
  allowedClientKeys: string | string[];
}

export interface RingOptions {
  /** Job id carried in every frame; frames of other jobs are dropped. */
  jobId: string;
  rank: number;
  worldSize: number;
  /** Membership generation; frames of any other generation are dropped. */
  generation: number;
  /** ZeroMQ endpoint(s) this rank's PULL socket binds, e.g. `tcp://127.0.0.1:7001`, `ipc:///tmp/r0`. */
  bindAddress: string | string[];
  /** Endpoint the successor bound (choose with `pickAddress`). */
  successorAddress: string;
  /**
   * Bytes of float32 data per chunk (fp16 sends half as many bytes). Default 1 MiB. Every rank must
   * use the same value; a frame larger than `chunkBytes` + 1 MiB disconnects the peer that sent it.
   */
  chunkBytes?: number;
  /** Reject when no frame arrives for this long while a call waits for one. Default 30 s. */
  timeoutMs?: number;
  /** Wire encoding of all-reduce payloads. Default 'none' (float32). */
  compression?: 'none' | 'fp16';
  /** 'curve' needs `curve`. Default 'none'. */
  encryption?: 'none' | 'curve';
  curve?: CurveKeys;
  /** How long `close()` waits for the other ranks to close too (graceful close). Default 2000 ms. */
  closeLingerMs?: number;
  /** SO_SNDBUF / SO_RCVBUF in bytes (0: the OS default). Default 0. */
  socketBufferBytes?: number;
  /**
   * All-reduce payloads to an ipc:// successor (same host) through a shared-memory segment instead
   * of the socket ('auto', the default, when the native addon is built and encryption is not
   * 'curve'), or always through the socket ('off'). Env RINGDIFF_RING_SHM=off forces 'off'. Only
   * the sending side is affected: a ring always accepts shared-memory frames from its predecessor.
   */
  sharedMemory?: 'auto' | 'off';
  /**
   * Upper bound of this rank's segment, bytes (default 1 GiB). An all-reduce of B bytes (float32;
   * half with fp16) needs about 2(N−1)/N · B; steps that do not fit go through the socket.
   */
  sharedMemoryBytes?: number;
  /**
   * Float32 bytes of payload per shared-memory frame, rounded down to whole chunks (at least one);
   * default 32 MiB. With no payload to stream through a socket, small chunks only cost per-frame
   * work (a ZeroMQ message and an event-loop turn on each rank), so such frames cover several
   * chunks (measured here, 4 ranks, 64 MiB: 1 MiB frames cost ~55 ms of CPU per rank and call,
   * 4-8 MiB ~35 ms; a whole segment per frame, i.e. no pipelining within a step, took 0.75-0.96x
   * the time of 8 MiB frames at 64 MiB with 2 and 4 ranks, call by call interleaved: every wake-up
   * of a rank costs when ranks outnumber cores). Ranks may differ: a receiver follows its sender's
   * frames.
   */
  sharedMemoryFrameBytes?: number;
  /**
   * The generation's secret, shared by its ranks only (workers get 16 random bytes per generation
   * in their plans; 16-64 bytes). Every header then carries a MAC under it and a per-link index,
   * and frames without a valid MAC, or replayed, are dropped and counted
   * (`dropped.unauthenticated`) before anything acts on them: someone who can reach the port but
   * holds no plan cannot abort, stall or feed the ring. Data payloads are not covered (see
   * frame.ts). Without a secret nothing is authenticated (every rank must agree: a ring with one
   * drops all frames of a rank without).
   */
  secret?: Uint8Array;
  /** Diagnostic hook: called with every accepted data frame before it is processed. */
  onFrame?: (h: FrameHeader) => void;
}

export interface RingCounters {
  /** Messages handed to ZeroMQ and their payload bytes. */
  framesSent: number;
  bytesSent: number;
  /** Accepted messages (right job and generation, well-formed) and their payload bytes. */
  framesReceived: number;
  bytesReceived: number;
  dropped: {
    /** Another job id. */
    foreignJob: number;
    /** An older generation. */
    staleGeneration: number;
    /** A newer generation (this rank is probably fenced). */
    futureGeneration: number;
    /** Not two frames, undecodable header, bad enum, payload size ≠ count × element size. */
    malformed: number;
    /**
     * Right job and generation but not a frame to act on: for a collective that is neither the
     * current nor the next one (including ABORTs more than one collective away), a data frame
     * whose sender is not the predecessor, a sender that is no rank, a frame left over when its
     * collective ended, or any frame after a failure.
     */
    unexpected: number;
    /**
     * Only on rings with a `secret`: no valid MAC under it (an outsider, or another generation),
     * or a link index not above the last one accepted (a replay).
     */
    unauthenticated?: number;
  };
  /** CURVE clients refused by the ZAP handler. */
  authDenied: number;
  /** The shared-memory payload path (included in the frame and byte counts above). */
  shm: {
    /** Whether this rank sends payloads through shared memory; why not otherwise. */
    active: boolean;
    reason: string | null;
    /** Size of this rank's segment, bytes (0: none yet). */
    segmentBytes: number;
    /** Data frames whose payload went / came through a segment, and their payload bytes. */
    framesSent: number;
    bytesSent: number;
    framesReceived: number;
    bytesReceived: number;
    /** Data frames sent through the socket because the segment was too small for their step. */
    overflowFrames: number;
  };
  /** Collectives completed. */
  completed: number;
}

/** Endpoints a rank advertises: the ring connects over ipc:// when both ranks share a host. */
export interface PeerEndpoints {
  hostId: string;
  tcp: string;
  ipc?: string;
}

/** ipc:// when the peer is on the same host and offers it, tcp:// otherwise. */
export function pickAddress(selfHostId: string, peer: PeerEndpoints): string {
  return peer.ipc && peer.hostId === selfHostId ? peer.ipc : peer.tcp;
}

// ---------------------------------------------------------------------------------------------
// Shared ZeroMQ context and ZAP handler

let sharedContext: zmq.Context | undefined;

/** The context every ring socket lives in (I/O threads: env RINGDIFF_ZMQ_IO_THREADS, default 1). */
export function ringContext(): zmq.Context {
  if (!sharedContext) {
    const io = Number(process.env.RINGDIFF_ZMQ_IO_THREADS ?? 1);
    sharedContext = new zmq.Context({ blocky: true, ioThreads: Number.isInteger(io) && io > 0 ? io : 1 });
  }
  return sharedContext;
}

interface ZapDomain {
  allowed: Set<string>;
  denied: number;
}

const zapDomains = new Map<string, ZapDomain>();
let zapSocket: zmq.Reply | undefined;
let zapUsers = 0;
let zapSeq = 0;

const Z85_CHARS = '0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.-:+=^!/*?&<>()[]{}@%$#';

/** Z85 encoding (ZeroMQ RFC 32) of a byte string whose length is a multiple of 4. */
export function z85Encode(data: Uint8Array): string {
  let out = '';
  for (let i = 0; i < data.length; i += 4) {
    let v =
      ((data[i] as number) * 2 ** 24 +
        ((data[i + 1] as number) << 16) +
        ((data[i + 2] as number) << 8) +
        (data[i + 3] as number)) >>>
      0;
    let s = '';
    for (let j = 0; j < 5; j++) {
      s = (Z85_CHARS[v % 85] as string) + s;
      v = Math.floor(v / 85);
    }
    out += s;
  }
  return out;
}

async function zapLoop(sock: zmq.Reply): Promise<void> {
  for (;;) {
    let req: Buffer[];
    try {
      req = await sock.receive();
    } catch {
      return; // closed
    }
    const version = req[0]?.toString() ?? '1.0';
    const requestId = req[1] ?? Buffer.alloc(0);
    const domain = req[2]?.toString() ?? '';
    const mechanism = req[5]?.toString() ?? '';
    const key = req[6];
    const d = zapDomains.get(domain);
    let ok = false;
    if (d && mechanism === 'CURVE' && key && key.length === 32) ok = d.allowed.has(z85Encode(key));
    if (!ok && d) d.denied++;
    try {
      await sock.send([
        version,
        requestId,
        ok ? '200' : '400',
        ok ? 'OK' : 'not an allowed ring peer',
        '',
        '',
      ]);
    } catch {
      return;
    }
  }
}

/** The ZAP socket while it is being bound (rings opened concurrently must not bind it twice). */
let zapStarting: Promise<zmq.Reply> | undefined;

async function zapRegister(allowed: string[]): Promise<string> {
  const domain = `ringdiff-${process.pid}-${++zapSeq}`;
  zapDomains.set(domain, { allowed: new Set(allowed), denied: 0 });
  zapUsers++;
  if (!zapSocket) {
    const starting = (zapStarting ??= (async () => {
      const sock = new zmq.Reply({ context: ringContext(), linger: 0 });
      await sock.bind('inproc://zeromq.zap.01');
      return sock;
    })());
    try {
      const sock = await starting;
      if (zapStarting === starting) {
        zapStarting = undefined;
        zapSocket = sock;
        void zapLoop(sock);
      }
    } catch (e) {
      if (zapStarting === starting) zapStarting = undefined;
      zapUnregister(domain);
      throw e;
    }
  }
  return domain;
}

function zapUnregister(domain: string): void {
  if (!zapDomains.delete(domain)) return;
  zapUsers--;
  if (zapUsers === 0 && zapSocket) {
    zapSocket.close();
    zapSocket = undefined;
  }
}

/**
 * Binds, retrying for up to 2 s while the address is still held by a socket this process just
 * closed (ZeroMQ releases it asynchronously) — so a new generation can reuse its address at once.
 */
async function bindWithRetry(sock: zmq.Pull, address: string): Promise<void> {
  const until = performance.now() + 2000;
  for (;;) {
    try {
      await sock.bind(address);
      return;
    } catch (e) {
      if ((e as { code?: string }).code !== 'EADDRINUSE' || performance.now() > until) throw e;
      await new Promise((r) => setTimeout(r, 20));
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Segment / chunk layout

/** Segment and chunk boundaries of an N-way split of L elements. */
class Layout {
  constructor(
    readonly length: number,
    readonly n: number,
    readonly chunkElems: number,
  ) {}
  segStart(k: number): number {
    return Math.floor((k * this.length) / this.n);
  }
  segLen(k: number): number {
    return this.segStart(k + 1) - this.segStart(k);
  }
  chunks(k: number): number {
    return Math.max(1, Math.ceil(this.segLen(k) / this.chunkElems));
  }
  /** [lo, hi) of chunk c of segment k, in buffer elements. */
  chunk(k: number, c: number): [number, number] {
    const s = this.segStart(k);
    const e = this.segStart(k + 1);
    const lo = Math.min(e, s + c * this.chunkElems);
    return [lo, Math.min(e, lo + this.chunkElems)];
  }
}

const mod = (a: number, n: number) => ((a % n) + n) % n;

function f32View(b: Buffer): Float32Array {
  if (b.byteOffset % 4 === 0) return new Float32Array(b.buffer, b.byteOffset, b.byteLength / 4);
  const c = new Float32Array(b.byteLength / 4);
  new Uint8Array(c.buffer).set(b);
  return c;
}

function u16View(b: Buffer): Uint16Array {
  if (b.byteOffset % 2 === 0) return new Uint16Array(b.buffer, b.byteOffset, b.byteLength / 2);
  const c = new Uint16Array(b.byteLength / 2);
  new Uint8Array(c.buffer).set(b);
  return c;
}

function bytesOf(v: ArrayBufferView): Buffer {
  return Buffer.from(v.buffer, v.byteOffset, v.byteLength);
}

// ---------------------------------------------------------------------------------------------
// Collectives in progress

/** A collective in progress: consumes the predecessor's frames in order. */
interface Op {
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

const DEFAULT_CHUNK_BYTES = 1 << 20;
/** Bytes a received frame may exceed `chunkBytes` by (headers and ABORT reasons are far smaller). */
const MAX_FRAME_SLACK = 1 << 20;
const DEFAULT_TIMEOUT_MS = 30_000;
const DEFAULT_SHM_BYTES = 1 << 30;
/** Default `sharedMemoryFrameBytes`. */
const DEFAULT_SHM_FRAME_BYTES = 32 << 20;
/** Segments grow in steps of at least this many bytes (fewer re-creations for growing calls). */
const SHM_GRANULE = 1 << 20;
const EMPTY = Buffer.alloc(0);

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
  private push: zmq.Push | undefined;
  private pull: zmq.Pull | undefined;
  private zapDomain: string | undefined;
  private readonly closeLingerMs: number;
  private readonly socketBufferBytes: number;
  private readonly onFrame: ((h: FrameHeader) => void) | undefined;
  private readonly curve: CurveKeys | undefined;

  private nextSeq = 0;
  /**
   * Sequence number of the collective in progress, or of the next one to start when idle. Frames
   * are accepted for it (`inbox`) and for the one after it (`nextInbox`: the predecessor may be a
   * collective ahead, never more, since a collective ends only once every rank has processed its
   * data frames); any other is dropped at once, so none can hold up the frames behind it.
   */
  private curSeq = 0;
  private tail: Promise<unknown> = Promise.resolve();
  private op: Op | null = null;
  private inbox: Frame[] = [];
  private inboxHead = 0;
  private nextInbox: Frame[] = [];
  /** Authenticated rings: MACs under the secret; link indices sent and last accepted. */
  private readonly auth: FrameAuth | null = null;
  private sendIndex = 0;
  private recvIndex = 0;
  private sendQ: Array<[Buffer, Buffer] | undefined> = [];
  private sendHead = 0;
  private pumping = false;
  private pumpIdle: Array<() => void> = [];
  private broken: RingError | null = null;
  private closed = false;
  private lastProgress = 0;
  private timer: NodeJS.Timeout | undefined;
  private recvDone: Promise<void> = Promise.resolve();
  private scratchBuf: Float32Array | null = null;
  /** Whether all-reduce payloads to the successor go through shared memory (fixed at open). */
  private shmSend = false;
  private readonly shmCap: number;
  /** @internal Float32 bytes per shared-memory frame (see `sharedMemoryFrameBytes`). */
  readonly shmFrameBytes: number;
  /** This rank's segment (created by the first all-reduce that uses it; replaced when too small). */
  private shmOut: OwnSegment | null = null;
  /**
   * @internal Where the last all-reduce left its final values in `shmOut` ([lo, hi) bytes) if it
   * ended without the DONE round: other ranks may still be reading them (see AllReduceOp).
   */
  shmUnconfirmed: { seg: OwnSegment; lo: number; hi: number } | null = null;
  /** Other ranks' segments as mapped here, by rank, and the only names they may have. */
  private readonly shmPeers = new Map<number, PeerSegment>();
  private readonly shmPeerPattern: RegExp;

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
    this.onFrame = o.onFrame;
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
      this.auth = new FrameAuth(sec);
      this.counters.dropped.unauthenticated = 0;
    }
    const shmMode = o.sharedMemory ?? 'auto';
    if (shmMode !== 'auto' && shmMode !== 'off')
      throw new RingConfigError(`sharedMemory must be 'auto' or 'off'`);
    this.shmCap = intIn('sharedMemoryBytes', o.sharedMemoryBytes ?? DEFAULT_SHM_BYTES, 0, 2 ** 40);
    this.shmFrameBytes = intIn(
      'sharedMemoryFrameBytes',
      o.sharedMemoryFrameBytes ?? DEFAULT_SHM_FRAME_BYTES,
      4,
      2 ** 40,
    );
    this.shmPeerPattern = segmentPattern(this.jobId, this.generation);
    const why =
      this.worldSize === 1
        ? 'worldSize 1'
        : !this.successorAddress.startsWith('ipc://')
          ? 'successor not on this host (not ipc://)'
          : this.encryption === 'curve'
            ? 'encryption curve (payloads stay on the encrypted socket)'
            : !shmWanted(shmMode)
              ? o.sharedMemory === 'off'
                ? "sharedMemory 'off'"
                : 'RINGDIFF_RING_SHM=off'
              : this.shmCap < SHM_GRANULE
                ? 'sharedMemoryBytes below 1 MiB'
                : shmApi() === null
                  ? (shmUnavailableReason() ?? 'native addon unavailable')
                  : null;
    this.shmSend = why === null;
    this.counters.shm.active = this.shmSend;
    this.counters.shm.reason = why;
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
    const context = ringContext();
    const sb = this.socketBufferBytes;
    const pull = new zmq.Pull({
      context,
      linger: 0,
      receiveHighWaterMark: 0,
      // No frame of the ring is larger than a chunk (an ABORT reason is a short text): a peer that
      // announces a larger one is disconnected before ZeroMQ allocates and buffers it, so that
      // anyone who can reach the port cannot make this process hold gigabytes per connection.
      maxMessageSize: this.chunkBytes + MAX_FRAME_SLACK,
      ...(sb > 0 ? { receiveBufferSize: sb } : {}),
    });
    const push = new zmq.Push({
      context,
      linger: 0,
      sendHighWaterMark: 0,
      ...(sb > 0 ? { sendBufferSize: sb } : {}),
    });
    if (this.curve) {
      const allowed =
        typeof this.curve.allowedClientKeys === 'string'
          ? [this.curve.allowedClientKeys]
          : this.curve.allowedClientKeys;
      this.zapDomain = await zapRegister(allowed);
      pull.zapDomain = this.zapDomain;
      pull.curveServer = true;
      pull.curveSecretKey = this.curve.secretKey;
      push.curveServerKey = this.curve.successorPublicKey;
      push.curvePublicKey = this.curve.publicKey;
      push.curveSecretKey = this.curve.secretKey;
    }
    try {
      for (const a of this.bindAddresses) await bindWithRetry(pull, a);
      push.connect(this.successorAddress);
    } catch (e) {
      pull.close();
      push.close();
      if (this.zapDomain) zapUnregister(this.zapDomain);
      throw new RingConfigError(
        `cannot bind ${this.bindAddresses.join(', ')} / connect ${this.successorAddress}: ${(e as Error).message}`,
      );
    }
    this.pull = pull;
    this.push = push;
    this.recvDone = this.receiveLoop(pull);
  }

  /** A snapshot of the counters. */
  stats(): RingCounters {
    const c = this.counters;
    const d = this.zapDomain ? zapDomains.get(this.zapDomain) : undefined;
    if (d) c.authDenied = d.denied;
    return { ...c, dropped: { ...c.dropped }, shm: { ...c.shm } };
  }

  /** The first error of this generation, or null while it is healthy. */
  get failure(): RingError | null {
    return this.broken;
  }

  get isClosed(): boolean {
    return this.closed;
  }

  // -------------------------------------------------------------------------------------------
  // Public collectives

  /**
   * In-place all-reduce of `buf` over all ranks. Every rank must call it with the same length and
   * op, in the same order relative to the ring's other collectives. Resolves when this rank holds
   * the result (bit-identical on every rank). See the module comment for failure semantics.
   */
  allReduce(buf: Float32Array, opts: { op?: ReduceOp } = {}): Promise<void> {
    const op = opts.op ?? 'sum';
    if (!(buf instanceof Float32Array))
      return Promise.reject(new RingConfigError('allReduce needs a Float32Array'));
    if (op !== 'sum' && op !== 'mean') return Promise.reject(new RingConfigError(`unknown op ${String(op)}`));
    if (buf.length > 0xffffffff) return Promise.reject(new RingConfigError('buffer too long'));
    return this.enqueue(
      (seq, settle) => new AllReduceOp(this, seq, buf, op === 'mean' ? this.worldSize : 1, settle),
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
    return this.enqueue((seq, settle) => new BroadcastOp(this, seq, bytesOf(buf), root, settle));
  }

  /**
   * All-gather of variable-length float32 contributions: resolves with one array per rank, in rank
   * order (this rank's entry is a copy of `local`).
   */
  allGather(local: Float32Array): Promise<Float32Array[]> {
    if (!(local instanceof Float32Array))
      return Promise.reject(new RingConfigError('allGather needs a Float32Array'));
    const out: Float32Array[] = new Array<Float32Array>(this.worldSize);
    return this.enqueue((seq, settle) => new AllGatherOp(this, seq, local, out, settle)).then(() => out);
  }

  /**
   * Resolves once every rank has called `barrier()` (an all-reduce of one element, always with the
   * DONE round: every frame this rank sent before has then been received).
   */
  barrier(): Promise<void> {
    return this.enqueue((seq, settle) => new AllReduceOp(this, seq, new Float32Array(1), 1, settle, true));
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
    if (this.op === null && this.broken === null && this.worldSize > 1 && this.closeLingerMs > 0) {
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
      if (!done && this.op)
        this.fail(
          new RingClosedError(`ring closed: the other ranks did not close within ${this.closeLingerMs} ms`),
        );
    } else {
      this.closeRequested = true;
      if (this.op) this.fail(new RingClosedError('ring closed during a collective'));
    }
    const healthy = this.broken === null;
    this.closed = true;
    if (!this.broken) this.broken = new RingClosedError();
    if (this.timer) clearTimeout(this.timer);
    const push = this.push;
    const pull = this.pull;
    if (push && pull) {
      const linger = healthy ? this.closeLingerMs : Math.min(200, this.closeLingerMs);
      await this.drained(linger);
      // Give the I/O thread a moment to write the last frames (the barrier's) to the kernel.
      if (healthy) await new Promise((r) => setTimeout(r, 20));
      push.linger = linger;
      pull.close();
      push.close();
      await this.recvDone;
    }
    this.releaseSegments();
    if (this.zapDomain) {
      this.stats();
      zapUnregister(this.zapDomain);
    }
  }

  // -------------------------------------------------------------------------------------------
  // Op scheduling

  private enqueue(
    make: (seq: number, settle: { resolve(): void; reject(e: RingError): void }) => Op,
  ): Promise<void> {
    if (this.closed || this.closeRequested) return Promise.reject(new RingClosedError());
    const seq = this.nextSeq++;
    const run = () =>
      new Promise<void>((resolve, reject) => {
        if (this.closed) return reject(new RingClosedError());
        if (this.broken) return reject(new RingBrokenError(this.broken));
        const op = make(seq, { resolve, reject });
        this.startOp(op);
      });
    const p = this.tail.then(run);
    this.tail = p.catch(() => undefined);
    return p;
  }

  private startOp(op: Op): void {
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

  /** @internal Called by an op when it has processed its last frame. */
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
            `rank ${this.rank}: no frame from the predecessor for ${Math.round(idle)} ms during ${this.op.name} #${this.op.seq} (generation ${this.generation}; waiting for ${this.op.waitingFor()}; ${this.inbox.length - this.inboxHead} frames queued${this.inboxHead < this.inbox.length ? `, first of #${(this.inbox[this.inboxHead] as Frame).header.seq}` : ''}; ${this.counters.framesReceived} received, ${this.counters.framesSent} sent, ${this.sendQ.length - this.sendHead} to send)`,
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
      `; ${this.counters.framesReceived} received, ${this.counters.framesSent} sent, ${this.sendQ.length - this.sendHead} to send` +
      (this.failedWhile ? `; failed while: ${this.failedWhile}` : '')
    );
  }

  private failedWhile = '';

  /** Marks the generation broken, rejects the op in progress and tells the successor. */
  private fail(err: RingError, forwardAbort: { origin: number; reason: string } | null = null): void {
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
    if (this.closed || !this.push) return;
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

  private async receiveLoop(pull: zmq.Pull): Promise<void> {
    for (;;) {
      let parts: Buffer[];
      try {
        parts = await pull.receive();
      } catch (e) {
        if (this.closed || pull.closed) return;
        const code = (e as { code?: string }).code;
        if (code === 'ETERM' || code === 'ENOTSOCK' || code === 'EBADF') return;
        await new Promise((r) => setImmediate(r));
        continue;
      }
      try {
        this.onMessage(parts);
      } catch (e) {
        // A bug in an op must not kill the process: fail the generation instead.
        this.fail(
          e instanceof RingError
            ? e
            : new RingProtocolError(`internal error: ${(e as Error).stack ?? String(e)}`),
        );
      }
    }
  }

  private onMessage(parts: Buffer[]): void {
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
    if (this.auth) {
      // Before anything acts on the frame (shared-memory segments are opened only for it).
      const ok =
        this.auth.verify(parts[0] as Buffer, h.phase === Phase.ABORT ? r.frame.payload : null) &&
        (h.linkIndex ?? 0) > this.recvIndex;
      if (!ok) {
        c.dropped.unauthenticated = (c.dropped.unauthenticated ?? 0) + 1;
        return;
      }
      this.recvIndex = h.linkIndex as number;
    }
    if (this.broken || this.closed) {
      c.dropped.unexpected++;
      return;
    }
    if (h.shmSegment !== undefined) {
      const view = this.peerPayload(h);
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

  /**
   * The payload a shared-memory header points at, as a view of a segment mapped here; null if the
   * header names anything but a segment another rank of this ring may have created (this job and
   * generation; for REDUCE_SCATTER the predecessor's, for ALL_GATHER any other rank's; a regular
   * 0600 file of this user directly in /dev/shm: checked by the addon) or a range outside it. A new
   * name of a rank replaces (and unmaps) the mapping of its previous one: a rank creates a new
   * segment only when a call starts, when every rank has read everything of the old one.
   */
  private peerPayload(h: FrameHeader): Buffer | null {
    const api = shmApi();
    const name = h.shmSegment as string;
    const off = h.shmOffset as number;
    if (!api) return null;
    const m = this.shmPeerPattern.exec(name);
    const q = m ? Number(m[1]) : -1;
    const pred = mod(this.rank - 1, this.worldSize);
    if (h.sender !== pred || q < 0 || q >= this.worldSize) return null;
    if (h.phase === Phase.REDUCE_SCATTER ? q !== pred : q === this.rank) return null;
    let seg = this.shmPeers.get(q);
    if (!seg || seg.name !== name) {
      let opened: PeerSegment;
      try {
        opened = PeerSegment.open(api, name);
      } catch {
        return null;
      }
      seg?.close(api, false);
      this.shmPeers.set(q, (seg = opened));
    }
    const len = h.count * ELEMENT_BYTES[h.encoding];
    if (off + len > seg.bytes) return null;
    return Buffer.from(seg.buffer, off, len);
  }

  /** Unmaps every segment and removes their files (their creators may have died). */
  private releaseSegments(): void {
    const api = shmApi();
    if (!api) return;
    this.shmOut?.close(api);
    this.shmOut = null;
    for (const seg of this.shmPeers.values()) seg.close(api, true);
    this.shmPeers.clear();
    this.counters.shm.segmentBytes = 0;
  }

  /**
   * @internal This rank's segment for an all-reduce whose sends need `bytes` bytes of slots (null:
   * the socket path); `fresh`: a new one even if the current one is large enough. Called when a
   * call starts. Replacing a segment is always safe: its creator unmaps and unlinks it, but other
   * ranks keep reading their own mappings of it until they see a header naming the new one. A
   * segment that cannot be created (e.g. /dev/shm full) turns shared memory off for this ring.
   */
  shmSegment(bytes: number, fresh = false): OwnSegment | null {
    if (!this.shmSend || bytes === 0) return null;
    const api = shmApi();
    if (!api) return null;
    const cur = this.shmOut;
    const want = Math.min(this.shmCap, bytes);
    if (cur && cur.bytes >= want && !fresh) return cur;
    const grown = cur && !fresh ? 2 * cur.bytes : (cur?.bytes ?? 0);
    const size = Math.min(this.shmCap, Math.max(Math.ceil(want / SHM_GRANULE) * SHM_GRANULE, grown));
    cur?.close(api);
    this.shmOut = null;
    try {
      this.shmOut = OwnSegment.create(api, segmentName(this.jobId, this.generation, this.rank), size);
    } catch (e) {
      this.shmSend = false;
      this.counters.shm.active = false;
      this.counters.shm.reason = `cannot create a segment of ${size} bytes: ${(e as Error).message}`;
      this.counters.shm.segmentBytes = 0;
      return null;
    }
    this.counters.shm.segmentBytes = size;
    return this.shmOut;
  }

  /** @internal Counts a data frame sent through shared memory (or not, for want of room). */
  countShmSend(bytes: number | null): void {
    if (bytes === null) this.counters.shm.overflowFrames++;
    else {
      this.counters.shm.framesSent++;
      this.counters.shm.bytesSent += bytes;
      this.counters.bytesSent += bytes; // the socket carries none of them
    }
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

  /** @internal Queues a message to the successor (one zeromq.js send in flight at a time). */
  send(h: FrameHeader, payload: Buffer): void {
    // ZeroMQ reads a payload after this returns; a mapped segment may be unmapped before that.
    if (payload.byteLength > 0 && this.isMapped(payload.buffer))
      throw new RingProtocolError('internal error: a shared-memory view sent through the socket');
    let hb: Buffer;
    if (this.auth) {
      h.linkIndex = ++this.sendIndex;
      hb = this.auth.seal(encodeHeader(h), h.phase === Phase.ABORT ? payload : null);
    } else hb = encodeHeader(h);
    this.sendQ.push([hb, payload]);
    if (!this.pumping) void this.pump();
  }

  private async pump(): Promise<void> {
    const push = this.push;
    if (!push) return;
    this.pumping = true;
    try {
      while (this.sendHead < this.sendQ.length) {
        const m = this.sendQ[this.sendHead] as [Buffer, Buffer];
        this.sendQ[this.sendHead++] = undefined;
        await push.send(m);
        this.counters.framesSent++;
        this.counters.bytesSent += m[1].byteLength;
      }
    } catch (e) {
      if (!this.closed)
        this.fail(new RingProtocolError(`send to ${this.successorAddress} failed: ${(e as Error).message}`));
    } finally {
      this.sendQ.length = 0;
      this.sendHead = 0;
      this.pumping = false;
      const w = this.pumpIdle;
      this.pumpIdle = [];
      for (const f of w) f();
    }
  }

  private isMapped(b: ArrayBufferLike): boolean {
    for (const seg of this.shmPeers.values()) if (seg.buffer === b) return true;
    return this.shmOut !== null && this.shmOut.buffer === b;
  }

  /** Resolves when the send queue is empty or after `ms`. */
  private drained(ms: number): Promise<void> {
    if (!this.pumping) return Promise.resolve();
    return new Promise((resolve) => {
      const t = setTimeout(resolve, ms);
      this.pumpIdle.push(() => {
        clearTimeout(t);
        resolve();
      });
    });
  }

  /**
   * @internal The ring's scratch buffer (at least `length` float32; reused by every call): the
   * partial sums this rank sends on when it frees received frames (see AllReduceOp). It may be
   * overwritten in the next call: a call ends only once the successor has consumed every frame
   * this rank sent during it.
   */
  scratch(length: number): Float32Array {
    if (!this.scratchBuf || this.scratchBuf.length < length) this.scratchBuf = new Float32Array(length);
    return this.scratchBuf;
  }

  /** @internal Header of a frame of this ring. */
  header(
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
      jobId: this.jobId,
      generation: this.generation,
      seq,
      step,
      phase,
      chunk,
      sender: this.rank,
      encoding,
      count,
      length,
      chunks,
      root,
    };
  }
}

// ---------------------------------------------------------------------------------------------
// All-reduce

type Settle = { resolve(): void; reject(e: RingError): void };

function expectFrame(
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
abstract class SettledOp implements Op {
  abstract readonly name: string;
  done = false;

  constructor(
    protected readonly ring: Ring,
    readonly seq: number,
    private readonly settle: Settle,
  ) {}

  abstract start(): void;
  abstract handle(f: Frame): void;
  abstract waitingFor(): string;

  resolve(): void {
    this.done = true;
    this.settle.resolve();
  }

  reject(e: RingError): void {
    this.done = true;
    this.settle.reject(e);
  }
}

class AllReduceOp extends SettledOp {
  readonly name = 'allReduce';
  private readonly n: number;
  private readonly layout: Layout;
  private readonly enc: Encoding;
  /** Data steps: 2(N−1). Steps `steps` … `steps + N − 2` receive the DONE tokens. */
  private readonly steps: number;
  private step = 0;
  private chunk = 0;
  /**
   * Whether received frames are freed as soon as they are read (`kernels.release`; fixed for the
   * call). Every frame is then read exactly once and never sent on: partial sums (and, with fp16,
   * the half-precision frames passed on) go out from the ring's scratch buffer instead.
   */
  private readonly releases = kernels.release !== undefined;
  /** This call's shared-memory segment (null: every payload goes through the socket). */
  private seg: OwnSegment | null = null;
  /** Byte offset of each send step's region in `seg`; −1: that step goes through the socket. */
  private slotBase: number[] = [];
  /** Chunks per frame this rank sends from its segment. */
  private readonly spanChunks: number;
  /** Bytes of each send step's region (steps 0 … N−1). */
  private slotBytes: number[] = [];
  /**
   * Whether the call ends with the DONE round: when any rank sends payload bytes through the
   * socket (or a barrier asks for it). Each rank starts with its own answer and ORs in the flag of
   * every data frame it receives, and sends its current value with each; the last data frame a
   * rank receives descends from frames of every rank, so all ranks end with the same value.
   */
  private needDone: boolean;

  constructor(
    ring: Ring,
    seq: number,
    private readonly buf: Float32Array,
    private readonly divisor: number,
    settle: Settle,
    confirm = false,
  ) {
    super(ring, seq, settle);
    this.n = ring.worldSize;
    this.layout = new Layout(buf.length, this.n, Math.max(1, Math.floor(ring.chunkBytes / 4)));
    this.enc = ring.compression === 'fp16' ? Encoding.F16 : Encoding.F32;
    this.steps = 2 * (this.n - 1);
    this.spanChunks = Math.max(1, Math.floor(ring.shmFrameBytes / (this.layout.chunkElems * 4)));
    this.needDone = confirm;
  }

  waitingFor(): string {
    return this.step >= this.steps
      ? `DONE of rank ${this.doneOrigin(this.step - this.steps)}`
      : `step ${this.step} chunk ${this.chunk}`;
  }

  /** Segment received at step s. */
  private recvSeg(s: number): number {
    const r = this.ring.rank;
    return s < this.n - 1 ? mod(r - s - 1, this.n) : mod(r - (s - (this.n - 1)), this.n);
  }

  private phaseOf(s: number): Phase {
    return s < this.n - 1 ? Phase.REDUCE_SCATTER : Phase.ALL_GATHER;
  }

  /** Rank whose DONE token this rank receives j-th: its predecessor's first, its successor's last. */
  private doneOrigin(j: number): number {
    return mod(this.ring.rank - 1 - j, this.n);
  }

  private doneHeader(step: number, origin: number): FrameHeader {
    return this.ring.header(this.seq, Phase.DONE, step, 0, this.enc, 0, this.buf.length, 1, origin);
  }

  /** Elements [lo, hi) of the scratch buffer as fp16 (its first half, same indices as `buf`). */
  private scratchHalf(lo: number, hi: number): Uint16Array {
    const s = this.ring.scratch(this.buf.length);
    return new Uint16Array(s.buffer, s.byteOffset + lo * 2, hi - lo);
  }

  /**
   * Ends the call without the DONE round (every payload went through shared memory): what it
   * guarded is safe without it. No payload of this call is on a socket, so the caller's buffer is
   * free at once; and this rank's regions stay untouched until its predecessor has finished this
   * call, which implies every read of them is done: the predecessor reads this rank's final values
   * last of all ranks, and the successor has read the reduce-scatter regions before it formed the
   * final values that reached this rank last. Only step 0 of the next call writes before that, so
   * planSlots keeps it off the final values recorded here.
   */
  private finishUnconfirmed(): void {
    const base = this.slotBase[this.n - 1];
    const size = this.slotBytes[this.n - 1];
    this.ring.shmUnconfirmed =
      this.seg && base !== undefined && base >= 0 && size !== undefined
        ? { seg: this.seg, lo: base, hi: base + size }
        : null;
    this.ring.finish(this);
  }

  /** Segment sent at step s (step s > 0 sends on the segment received at step s − 1). */
  private sendSeg(s: number): number {
    return mod(this.ring.rank - s, this.n);
  }

  /**
   * Lays out this call's sends in the ring's segment: one region for each of the steps 0 … N−1
   * (the segment the step sends, chunks contiguous, regions 64-byte aligned), in step order;
   * steps beyond the segment's capacity go through the socket. Nothing is overwritten within a
   * call. Steps N … 2N−3 send a reference to the slot the data came from (see the module comment)
   * and need no room, unless that data came through the socket (then they use the socket too).
   */
  private planSlots(): void {
    const eb = ELEMENT_BYTES[this.enc];
    const bases: number[] = [];
    const sizes: number[] = [];
    let total = 0;
    for (let s = 0; s < this.n; s++) {
      const bytes = this.layout.segLen(this.sendSeg(s)) * eb;
      bases.push(total);
      sizes.push(bytes);
      total += Math.ceil(bytes / SLOT_ALIGN) * SLOT_ALIGN;
    }
    let seg = this.ring.shmSegment(total);
    if (!seg) return;
    // Step 0 writes its region before this rank hears from its predecessor in this call, i.e.
    // while other ranks may still read the previous call's final values (when it ended without
    // the DONE round): never over them. (Every later write follows a frame of this call from the
    // predecessor, which has then finished the previous call: all its readers are done.)
    let shift = 0;
    const prev = this.ring.shmUnconfirmed;
    if (prev && prev.seg === seg && prev.lo < (sizes[0] as number) && (bases[0] as number) < prev.hi) {
      shift = Math.ceil(prev.hi / SLOT_ALIGN) * SLOT_ALIGN;
      if (shift + total > seg.bytes) {
        shift = 0;
        seg = this.ring.shmSegment(Math.max(total, seg.bytes), true);
        if (!seg) return;
      }
    }
    const bytes = seg.bytes;
    this.seg = seg;
    this.slotBytes = sizes;
    this.slotBase = bases.map((b, s) => (b + shift + (sizes[s] as number) <= bytes ? b + shift : -1));
  }

  /** Byte offset in the segment of the chunk starting at element `lo` sent at step s; −1: socket. */
  private slotOffset(s: number, lo: number): number {
    const base = this.slotBase[s];
    if (base === undefined || base < 0) return -1;
    return base + (lo - this.layout.segStart(this.sendSeg(s))) * ELEMENT_BYTES[this.enc];
  }

  private slotF32(off: number, count: number): Float32Array {
    return new Float32Array((this.seg as OwnSegment).buffer, off, count);
  }

  private slotU16(off: number, count: number): Uint16Array {
    return new Uint16Array((this.seg as OwnSegment).buffer, off, count);
  }

  /**
   * Sends chunks c … c + span − 1 (elements [lo, hi)) of step s: as one frame whose payload is at
   * `off` in this rank's segment (≥ 0) or at `ref` in another rank's, else through the socket as
   * one frame per chunk, from `payload` (the bytes of elements [lo, hi)).
   */
  private sendSpan(
    s: number,
    c: number,
    span: number,
    lo: number,
    hi: number,
    off: number,
    payload: Buffer | null,
    ref?: { name: string; off: number },
  ): void {
    const k = this.sendSeg(s);
    const nc = this.layout.chunks(k);
    const header = (chunk: number, count: number) => {
      const h = this.ring.header(this.seq, this.phaseOf(s), s, chunk, this.enc, count, this.buf.length, nc);
      if (this.needDone) h.doneRound = true;
      return h;
    };
    if (off >= 0 || ref) {
      const h = header(c, hi - lo);
      h.shmSegment = ref ? ref.name : (this.seg as OwnSegment).name;
      h.shmOffset = ref ? ref.off : off;
      this.ring.countShmSend((hi - lo) * ELEMENT_BYTES[this.enc]);
      this.ring.send(h, EMPTY);
      return;
    }
    const p = payload as Buffer;
    const eb = ELEMENT_BYTES[this.enc];
    for (let i = c; i < c + span; i++) {
      const [a, b] = this.layout.chunk(k, i);
      if (this.seg && s < this.n) this.ring.countShmSend(null);
      this.ring.send(header(i, b - a), span === 1 ? p : p.subarray((a - lo) * eb, (b - lo) * eb));
    }
  }

  start(): void {
    if (this.n === 1) {
      if (this.divisor !== 1) kernels.scale(this.buf, this.divisor);
      this.ring.finish(this);
      return;
    }
    this.planSlots();
    if (!this.seg || this.slotBase.some((b) => b < 0)) this.needDone = true;
    // Reduce-scatter step 0: this rank's own segment, from the caller's buffer (zero-copy on the
    // socket; copied, or converted to fp16, into the segment with shared memory).
    const k = this.ring.rank;
    const nc = this.layout.chunks(k);
    const span = this.slotOffset(0, this.layout.segStart(k)) >= 0 ? this.spanChunks : 1;
    for (let c = 0; c < nc; c += span) {
      const m = Math.min(span, nc - c);
      const lo = this.layout.chunk(k, c)[0];
      const hi = this.layout.chunk(k, c + m - 1)[1];
      const local = this.buf.subarray(lo, hi);
      const off = this.slotOffset(0, lo);
      let payload: Buffer | null = null;
      if (off >= 0) {
        if (this.enc === Encoding.F32) kernels.copy(this.slotF32(off, hi - lo), local);
        else kernels.toHalf(local, this.slotU16(off, hi - lo));
      } else if (this.enc === Encoding.F32) payload = bytesOf(local);
      else {
        const half = this.releases ? this.scratchHalf(lo, hi) : new Uint16Array(hi - lo);
        kernels.toHalf(local, half);
        payload = bytesOf(half);
      }
      this.sendSpan(0, c, m, lo, hi, off, payload);
    }
  }

  handle(f: Frame): void {
    const s = this.step;
    const h = f.header;
    if (s >= this.steps) {
      // DONE tokens. Every rank sends its own once it has processed all its data frames, and
      // passes on the others' until the successor's comes back round: then the successor has
      // consumed every frame this rank sent during the call, so none is still read from the
      // caller's buffer, the scratch buffer or this rank's segment, and the caller may reuse its
      // buffer at once. On each link the order is fixed: the sender's data, its DONE, then the
      // ones it passes on.
      const j = s - this.steps;
      const origin = this.doneOrigin(j);
      expectFrame('allReduce', h, {
        phase: Phase.DONE,
        step: s,
        chunk: 0,
        encoding: this.enc,
        count: 0,
        length: this.buf.length,
        chunks: 1,
        root: origin,
      });
      if (j === this.n - 2) {
        this.ring.shmUnconfirmed = null; // every rank has processed every data frame of the call
        this.ring.finish(this);
        return;
      }
      this.ring.send(this.doneHeader(s + 1, origin), EMPTY);
      this.step = s + 1;
      return;
    }
    const c = this.chunk;
    const k = this.recvSeg(s);
    const nc = this.layout.chunks(k);
    // A frame from shared memory may cover several whole chunks (its count says how many).
    const fromShm = h.shmSegment !== undefined;
    const span = fromShm ? Math.max(1, Math.min(nc - c, Math.ceil(h.count / this.layout.chunkElems))) : 1;
    const lo = this.layout.chunk(k, c)[0];
    const hi = this.layout.chunk(k, c + span - 1)[1];
    expectFrame('allReduce', h, {
      phase: this.phaseOf(s),
      step: s,
      chunk: c,
      encoding: this.enc,
      count: hi - lo,
      length: this.buf.length,
      chunks: nc,
    });
    if (h.doneRound) this.needDone = true;
    // A frame from shared memory is a read-only view of another rank's segment: it is never
    // written to, sent on or released. It is empty if its mapping was replaced meanwhile (only a
    // forged header naming another segment can cause that).
    if (f.payload.byteLength !== (hi - lo) * ELEMENT_BYTES[this.enc])
      throw new RingProtocolError(
        `allReduce: the payload of step ${s} chunk ${c} from rank ${h.sender} is gone (its shared-memory segment was replaced by a forged header?)`,
      );
    const local = this.buf.subarray(lo, hi);
    const last = this.n - 2; // last reduce-scatter step
    const forward = s + 1 < this.steps; // the next step sends exactly the segment just received
    // An all-gather chunk that came from shared memory goes on as a reference to the same bytes
    // (in the segment of the rank that formed the final value: nobody writes them before the
    // call ends everywhere); others go to their slot in this rank's segment (off ≥ 0) if they
    // have one, else through the socket (`payload`).
    const ref =
      forward && fromShm && s > last
        ? { name: h.shmSegment as string, off: h.shmOffset as number }
        : undefined;
    const off = forward && !ref ? this.slotOffset(s + 1, lo) : -1;
    const copyOut = this.releases || fromShm; // the received frame cannot be sent on
    let payload: Buffer | null = null;
    if (this.enc === Encoding.F32) {
      const v = f32View(f.payload);
      if (s < last) {
        // A partial sum: this rank's contribution added to the received one, passed on.
        if (off >= 0) kernels.add3(this.slotF32(off, hi - lo), v, local);
        else if (copyOut) {
          const out = this.ring.scratch(this.buf.length).subarray(lo, hi);
          kernels.add3(out, v, local);
          payload = bytesOf(out);
        } else {
          kernels.add(v, local);
          payload = v.buffer === f.payload.buffer ? f.payload : bytesOf(v);
        }
      } else {
        // This rank owns segment k (s = last: the final value is formed in the caller's buffer),
        // or it receives its final value (all-gather): either way it goes on from the caller's
        // buffer (zero-copy; safe because the call waits for the successor's DONE token) or from
        // a copy in the segment.
        if (s === last) kernels.addDiv(local, v, this.divisor);
        else kernels.copy(local, v);
        if (off >= 0) kernels.copy(this.slotF32(off, hi - lo), local);
        else if (!ref) payload = bytesOf(local);
      }
    } else {
      const v = u16View(f.payload);
      if (s < last) {
        if (off >= 0) kernels.addHalfTo(this.slotU16(off, hi - lo), v, local);
        else if (copyOut) {
          const out = this.scratchHalf(lo, hi);
          kernels.addHalfTo(out, v, local);
          payload = bytesOf(out);
        } else {
          kernels.addHalf(v, local);
          payload = v.buffer === f.payload.buffer ? f.payload : bytesOf(v);
        }
      } else if (s === last && (off >= 0 || fromShm)) {
        // The final value in fp16 is formed where it goes on from (never in the read-only view).
        const out = off >= 0 ? this.slotU16(off, hi - lo) : this.scratchHalf(lo, hi);
        out.set(v);
        kernels.addHalfFinal(out, local, this.divisor);
        if (off < 0) payload = bytesOf(out);
      } else {
        if (s === last) kernels.addHalfFinal(v, local, this.divisor);
        else kernels.fromHalf(v, local);
        // The half-precision frame goes on as it is (the final value in fp16): into the segment,
        // or from a copy in the scratch buffer when the frame cannot be sent on.
        if (forward && !ref) {
          if (off >= 0) this.slotU16(off, hi - lo).set(v);
          else if (copyOut) {
            const out = this.scratchHalf(lo, hi);
            out.set(v);
            payload = bytesOf(out);
          } else payload = v.buffer === f.payload.buffer ? f.payload : bytesOf(v);
        }
      }
    }
    if (forward) this.sendSpan(s + 1, c, span, lo, hi, off, payload, ref);
    // Free the frame now (rather than at a later garbage collection, which the external memory
    // of received frames otherwise triggers every few tens of megabytes) unless it goes on.
    if (this.releases && !fromShm && payload !== f.payload) kernels.release?.(f.payload);
    if (c + span < nc) this.chunk = c + span;
    else {
      this.chunk = 0;
      this.step = s + 1;
      if (this.step === this.steps) {
        if (this.needDone) this.ring.send(this.doneHeader(this.steps, this.ring.rank), EMPTY);
        else this.finishUnconfirmed();
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Broadcast

class BroadcastOp extends SettledOp {
  readonly name = 'broadcast';
  private readonly n: number;
  private readonly chunkBytes: number;
  private readonly nc: number;
  private chunk = 0;

  constructor(
    ring: Ring,
    seq: number,
    private readonly bytes: Buffer,
    private readonly root: number,
    settle: Settle,
  ) {
    super(ring, seq, settle);
    this.n = ring.worldSize;
    this.chunkBytes = ring.chunkBytes;
    this.nc = Math.max(1, Math.ceil(bytes.length / this.chunkBytes));
  }

  waitingFor(): string {
    return this.ring.rank === this.root ? 'DONE' : `chunk ${this.chunk}`;
  }

  private range(c: number): [number, number] {
    const lo = Math.min(this.bytes.length, c * this.chunkBytes);
    return [lo, Math.min(this.bytes.length, lo + this.chunkBytes)];
  }

  start(): void {
    if (this.n === 1) {
      this.ring.finish(this);
      return;
    }
    if (this.ring.rank !== this.root) return;
    for (let c = 0; c < this.nc; c++) {
      const [lo, hi] = this.range(c);
      this.ring.send(this.chunkHeader(c, hi - lo), this.bytes.subarray(lo, hi));
    }
  }

  /** Header of broadcast chunk `c` holding `count` bytes. */
  private chunkHeader(c: number, count: number): FrameHeader {
    return this.ring.header(
      this.seq,
      Phase.BROADCAST,
      0,
      c,
      Encoding.BYTES,
      count,
      this.bytes.length,
      this.nc,
      this.root,
    );
  }

  handle(f: Frame): void {
    const h = f.header;
    const succ = mod(this.ring.rank + 1, this.n);
    if (this.ring.rank === this.root) {
      // The only frame the root receives: DONE from its predecessor (the last rank).
      expectFrame('broadcast', h, {
        phase: Phase.DONE,
        step: 0,
        chunk: 0,
        encoding: Encoding.BYTES,
        count: 0,
        length: this.bytes.length,
        chunks: this.nc,
        root: this.root,
      });
      this.ring.finish(this);
      return;
    }
    const c = this.chunk;
    const [lo, hi] = this.range(c);
    expectFrame('broadcast', h, {
      phase: Phase.BROADCAST,
      step: 0,
      chunk: c,
      encoding: Encoding.BYTES,
      count: hi - lo,
      length: this.bytes.length,
      chunks: this.nc,
      root: this.root,
    });
    f.payload.copy(this.bytes, lo);
    if (succ !== this.root) {
      this.ring.send(this.chunkHeader(c, hi - lo), f.payload);
    }
    this.chunk = c + 1;
    if (this.chunk === this.nc) {
      if (succ === this.root)
        this.ring.send(
          this.ring.header(
            this.seq,
            Phase.DONE,
            0,
            0,
            Encoding.BYTES,
            0,
            this.bytes.length,
            this.nc,
            this.root,
          ),
          Buffer.alloc(0),
        );
      this.ring.finish(this);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// All-gather (variable lengths)

class AllGatherOp extends SettledOp {
  readonly name = 'allGather';
  private readonly n: number;
  private readonly chunkElems: number;
  private step = 0;
  private chunk = 0;
  private cur: Float32Array | null = null;

  constructor(
    ring: Ring,
    seq: number,
    private readonly local: Float32Array,
    private readonly out: Float32Array[],
    settle: Settle,
  ) {
    super(ring, seq, settle);
    this.n = ring.worldSize;
    this.chunkElems = Math.max(1, Math.floor(ring.chunkBytes / 4));
  }

  waitingFor(): string {
    return `step ${this.step} chunk ${this.chunk}`;
  }

  start(): void {
    // Two copies of the (small) contribution: the caller's result, and what goes on the wire.
    const mine = Float32Array.from(this.local);
    this.out[this.ring.rank] = mine;
    const wire = Float32Array.from(this.local);
    if (this.n === 1) {
      this.ring.finish(this);
      return;
    }
    const nc = Math.max(1, Math.ceil(mine.length / this.chunkElems));
    for (let c = 0; c < nc; c++) {
      const lo = Math.min(mine.length, c * this.chunkElems);
      const hi = Math.min(mine.length, lo + this.chunkElems);
      this.ring.send(
        this.ring.header(this.seq, Phase.GATHER, 0, c, Encoding.F32, hi - lo, mine.length, nc),
        bytesOf(wire.subarray(lo, hi)),
      );
    }
  }

  handle(f: Frame): void {
    const h = f.header;
    const s = this.step;
    const c = this.chunk;
    if (c === 0) {
      if (h.phase !== Phase.GATHER || h.step !== s || h.chunk !== 0)
        throw new RingProtocolError(
          `allGather: expected step ${s} chunk 0 from rank ${h.sender}, got phase ${h.phase} step ${h.step} chunk ${h.chunk}`,
        );
      this.cur = new Float32Array(h.length);
    }
    const cur = this.cur as Float32Array;
    const nc = Math.max(1, Math.ceil(cur.length / this.chunkElems));
    const lo = Math.min(cur.length, c * this.chunkElems);
    const hi = Math.min(cur.length, lo + this.chunkElems);
    expectFrame('allGather', h, {
      phase: Phase.GATHER,
      step: s,
      chunk: c,
      encoding: Encoding.F32,
      count: hi - lo,
      length: cur.length,
      chunks: nc,
    });
    cur.set(f32View(f.payload), lo);
    if (s + 1 < this.n - 1)
      this.ring.send(
        this.ring.header(this.seq, Phase.GATHER, s + 1, c, Encoding.F32, hi - lo, cur.length, nc),
        f.payload,
      );
    if (c + 1 < nc) this.chunk = c + 1;
    else {
      this.out[mod(this.ring.rank - s - 1, this.n)] = cur;
      this.cur = null;
      this.chunk = 0;
      this.step = s + 1;
      if (this.step === this.n - 1) this.ring.finish(this);
    }
  }
}
