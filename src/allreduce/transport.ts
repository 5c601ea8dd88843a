/**
 * The links of one rank: its sockets, and the shared-memory segments beside them.
 *
 * ## Topology and sockets
 * Rank r binds a PULL socket at `bindAddress` and connects a PUSH socket to the address its
 * successor (r+1 mod N) bound. ZeroMQ keeps the frames of one connection in order, so everything
 * rank r receives from its predecessor arrives in the order it was sent. A background loop
 * receives every message and hands it to the protocol (protocol.ts: decoding, filtering, and what
 * is dropped), which feeds the collective in progress, frame by frame, synchronously; sends go
 * through a FIFO with one zeromq.js send in flight at a time (zeromq.js allows no more per socket).
 * `pickAddress` chooses ipc:// for peers on the same host and tcp:// otherwise.
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
 * payloads straight from them. ZeroMQ still carries every header, in order, so everything else
 * (ordering, DONE round, ABORT, timeouts, generations, dropping) is unchanged; what goes into the
 * segment, and when a region may be rewritten, is the all-reduce's business (ops/all-reduce.ts).
 * The ring always accepts shared-memory frames (whatever its own `sharedMemory`), so ranks that
 * send through the socket and ranks that do not can share a ring.
 *
 * Receivers replace their mapping of a rank's segment when a header names a new one; that header
 * belongs to a call after every frame that referred to the old one, all of them processed on
 * arrival, and the old file was already unlinked by its creator.
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
 */
import * as zmq from 'zeromq';
import { RingConfigError, RingError, RingProtocolError } from './errors.js';
import { ELEMENT_BYTES, Phase, type FrameHeader } from './frame.js';
import { mod } from './layout.js';
import type { CurveKeys, RingCounters } from './options.js';
import type { ShmSlots } from './ops/op.js';
import { zapRegister, zapUnregister, zapDenied } from './auth.js';
import {
  OwnSegment,
  PeerSegment,
  segmentName,
  segmentPattern,
  shmApi,
  shmUnavailableReason,
  shmWanted,
} from './shm.js';

/** Bytes a received frame may exceed `chunkBytes` by (headers and ABORT reasons are far smaller). */
const MAX_FRAME_SLACK = 1 << 20;
/** Segments grow in steps of at least this many bytes (fewer re-creations for growing calls). */
export const SHM_GRANULE = 1 << 20;

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
// Sockets

let sharedContext: zmq.Context | undefined;

/** The context every ring socket lives in (I/O threads: env RINGDIFF_ZMQ_IO_THREADS, default 1). */
export function ringContext(): zmq.Context {
  if (!sharedContext) {
    const io = Number(process.env.RINGDIFF_ZMQ_IO_THREADS ?? 1);
    sharedContext = new zmq.Context({ blocky: true, ioThreads: Number.isInteger(io) && io > 0 ? io : 1 });
  }
  return sharedContext;
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

/** What the sockets report to: the protocol (protocol.ts `Protocol`). */
export interface SocketHost {
  /** Whether the ring is closed (errors of closed sockets are then expected). */
  readonly closed: boolean;
  /** A message received from the predecessor's connection (any sender: not yet checked). */
  onMessage(parts: Buffer[]): void;
  /** Marks the generation broken. */
  fail(err: RingError): void;
}

/** Where a rank's sockets go (resolved `RingOptions`). */
export interface SocketOptions {
  bindAddresses: readonly string[];
  successorAddress: string;
  chunkBytes: number;
  socketBufferBytes: number;
  curve: CurveKeys | undefined;
}

/** A rank's PULL socket (from its predecessor) and PUSH socket (to its successor). */
export class SocketLink {
  private sendQ: Array<[Buffer, Buffer] | undefined> = [];
  private sendHead = 0;
  private pumping = false;
  private pumpIdle: Array<() => void> = [];
  private readonly recvDone: Promise<void>;

  private constructor(
    private readonly pull: zmq.Pull,
    private readonly push: zmq.Push,
    private readonly zapDomain: string | undefined,
    private readonly successorAddress: string,
    private readonly host: SocketHost,
    private readonly counters: RingCounters,
  ) {
    this.recvDone = this.receiveLoop(pull);
  }

  /**
   * Binds the PULL socket and connects the PUSH socket to the successor (does not wait for the
   * peers), then receives into `host` until closed.
   */
  static async open(o: SocketOptions, host: SocketHost, counters: RingCounters): Promise<SocketLink> {
    const context = ringContext();
    const sb = o.socketBufferBytes;
    const pull = new zmq.Pull({
      context,
      linger: 0,
      receiveHighWaterMark: 0,
      // No frame of the ring is larger than a chunk (an ABORT reason is a short text): a peer that
      // announces a larger one is disconnected before ZeroMQ allocates and buffers it, so that
      // anyone who can reach the port cannot make this process hold gigabytes per connection.
      maxMessageSize: o.chunkBytes + MAX_FRAME_SLACK,
      ...(sb > 0 ? { receiveBufferSize: sb } : {}),
    });
    const push = new zmq.Push({
      context,
      linger: 0,
      sendHighWaterMark: 0,
      ...(sb > 0 ? { sendBufferSize: sb } : {}),
    });
    let zapDomain: string | undefined;
    if (o.curve) {
      const allowed =
        typeof o.curve.allowedClientKeys === 'string'
          ? [o.curve.allowedClientKeys]
          : o.curve.allowedClientKeys;
      zapDomain = await zapRegister(context, allowed);
      pull.zapDomain = zapDomain;
      pull.curveServer = true;
      pull.curveSecretKey = o.curve.secretKey;
      push.curveServerKey = o.curve.successorPublicKey;
      push.curvePublicKey = o.curve.publicKey;
      push.curveSecretKey = o.curve.secretKey;
    }
    try {
      for (const a of o.bindAddresses) await bindWithRetry(pull, a);
      push.connect(o.successorAddress);
    } catch (e) {
      pull.close();
      push.close();
      if (zapDomain) zapUnregister(zapDomain);
      throw new RingConfigError(
        `cannot bind ${o.bindAddresses.join(', ')} / connect ${o.successorAddress}: ${(e as Error).message}`,
      );
    }
    return new SocketLink(pull, push, zapDomain, o.successorAddress, host, counters);
  }

  private async receiveLoop(pull: zmq.Pull): Promise<void> {
    for (;;) {
      let parts: Buffer[];
      try {
        parts = await pull.receive();
      } catch (e) {
        if (this.host.closed || pull.closed) return;
        const code = (e as { code?: string }).code;
        if (code === 'ETERM' || code === 'ENOTSOCK' || code === 'EBADF') return;
        await new Promise((r) => setImmediate(r));
        continue;
      }
      try {
        this.host.onMessage(parts);
      } catch (e) {
        // A bug in an op must not kill the process: fail the generation instead.
        this.host.fail(
          e instanceof RingError
            ? e
            : new RingProtocolError(`internal error: ${(e as Error).stack ?? String(e)}`),
        );
      }
    }
  }

  /** Queues a message (encoded header, payload) to the successor. */
  send(header: Buffer, payload: Buffer): void {
    this.sendQ.push([header, payload]);
    if (!this.pumping) void this.pump();
  }

  /** Messages queued and not yet handed to ZeroMQ. */
  get pending(): number {
    return this.sendQ.length - this.sendHead;
  }

  private async pump(): Promise<void> {
    const push = this.push;
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
      if (!this.host.closed)
        this.host.fail(
          new RingProtocolError(`send to ${this.successorAddress} failed: ${(e as Error).message}`),
        );
    } finally {
      this.sendQ.length = 0;
      this.sendHead = 0;
      this.pumping = false;
      const w = this.pumpIdle;
      this.pumpIdle = [];
      for (const f of w) f();
    }
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
   * Closes both sockets once the send queue is empty or after `linger` ms, and waits for the
   * receive loop to end; a new ring in this process may bind the same address right away.
   */
  async close(linger: number, healthy: boolean): Promise<void> {
    await this.drained(linger);
    // Give the I/O thread a moment to write the last frames (the barrier's) to the kernel.
    if (healthy) await new Promise((r) => setTimeout(r, 20));
    this.push.linger = linger;
    this.pull.close();
    this.push.close();
    await this.recvDone;
  }

  /** CURVE clients the ZAP handler refused (undefined without CURVE, or after `releaseAuth`). */
  authDenied(): number | undefined {
    return this.zapDomain ? zapDenied(this.zapDomain) : undefined;
  }

  /** Stops admitting CURVE clients for this ring (after `close`). */
  releaseAuth(): void {
    if (this.zapDomain) zapUnregister(this.zapDomain);
  }
}

// ---------------------------------------------------------------------------------------------
// Shared-memory links

/** Where a rank's shared memory goes (resolved `RingOptions`). */
export interface ShmOptions {
  jobId: string;
  generation: number;
  rank: number;
  worldSize: number;
  successorAddress: string;
  encryption: 'none' | 'curve';
  /** `sharedMemory` as given (undefined: 'auto'). */
  option: 'auto' | 'off' | undefined;
  /** `sharedMemoryBytes`, `sharedMemoryFrameBytes`. */
  cap: number;
  frameBytes: number;
}

/** This rank's segment (the slots it sends from) and its mappings of the other ranks' segments. */
export class ShmLinks implements ShmSlots {
  /** Whether all-reduce payloads to the successor go through shared memory (fixed at open). */
  private sending: boolean;
  readonly frameBytes: number;
  /** This rank's segment (created by the first all-reduce that uses it; replaced when too small). */
  private own: OwnSegment | null = null;
  unconfirmed: { seg: OwnSegment; lo: number; hi: number } | null = null;
  /** Other ranks' segments as mapped here, by rank, and the only names they may have. */
  private readonly peers = new Map<number, PeerSegment>();
  private readonly peerPattern: RegExp;

  constructor(
    private readonly o: ShmOptions,
    private readonly counters: RingCounters,
  ) {
    this.frameBytes = o.frameBytes;
    this.peerPattern = segmentPattern(o.jobId, o.generation);
    const why =
      o.worldSize === 1
        ? 'worldSize 1'
        : !o.successorAddress.startsWith('ipc://')
          ? 'successor not on this host (not ipc://)'
          : o.encryption === 'curve'
            ? 'encryption curve (payloads stay on the encrypted socket)'
            : !shmWanted(o.option ?? 'auto')
              ? o.option === 'off'
                ? "sharedMemory 'off'"
                : 'RINGDIFF_RING_SHM=off'
              : o.cap < SHM_GRANULE
                ? 'sharedMemoryBytes below 1 MiB'
                : shmApi() === null
                  ? (shmUnavailableReason() ?? 'native addon unavailable')
                  : null;
    this.sending = why === null;
    this.counters.shm.active = this.sending;
    this.counters.shm.reason = why;
  }

  /**
   * The payload a shared-memory header points at, as a view of a segment mapped here; null if the
   * header names anything but a segment another rank of this ring may have created (this job and
   * generation; for REDUCE_SCATTER the predecessor's, for ALL_GATHER any other rank's; a regular
   * 0600 file of this user directly in /dev/shm: checked by the addon) or a range outside it. A new
   * name of a rank replaces (and unmaps) the mapping of its previous one: a rank creates a new
   * segment only when a call starts, when every rank has read everything of the old one.
   */
  payload(h: FrameHeader): Buffer | null {
    const api = shmApi();
    const name = h.shmSegment as string;
    const off = h.shmOffset as number;
    if (!api) return null;
    const m = this.peerPattern.exec(name);
    const q = m ? Number(m[1]) : -1;
    const pred = mod(this.o.rank - 1, this.o.worldSize);
    if (h.sender !== pred || q < 0 || q >= this.o.worldSize) return null;
    if (h.phase === Phase.REDUCE_SCATTER ? q !== pred : q === this.o.rank) return null;
    let seg = this.peers.get(q);
    if (!seg || seg.name !== name) {
      let opened: PeerSegment;
      try {
        opened = PeerSegment.open(api, name);
      } catch {
        return null;
      }
      seg?.close(api, false);
      this.peers.set(q, (seg = opened));
    }
    const len = h.count * ELEMENT_BYTES[h.encoding];
    if (off + len > seg.bytes) return null;
    return Buffer.from(seg.buffer, off, len);
  }

  /** Unmaps every segment and removes their files (their creators may have died). */
  release(): void {
    const api = shmApi();
    if (!api) return;
    this.own?.close(api);
    this.own = null;
    for (const seg of this.peers.values()) seg.close(api, true);
    this.peers.clear();
    this.counters.shm.segmentBytes = 0;
  }

  /**
   * This rank's segment for an all-reduce whose sends need `bytes` bytes of slots (null: the
   * socket path); `fresh`: a new one even if the current one is large enough. Called when a call
   * starts. Replacing a segment is always safe: its creator unmaps and unlinks it, but other ranks
   * keep reading their own mappings of it until they see a header naming the new one. A segment
   * that cannot be created (e.g. /dev/shm full) turns shared memory off for this ring.
   */
  segment(bytes: number, fresh = false): OwnSegment | null {
    if (!this.sending || bytes === 0) return null;
    const api = shmApi();
    if (!api) return null;
    const cur = this.own;
    const want = Math.min(this.o.cap, bytes);
    if (cur && cur.bytes >= want && !fresh) return cur;
    const grown = cur && !fresh ? 2 * cur.bytes : (cur?.bytes ?? 0);
    const size = Math.min(this.o.cap, Math.max(Math.ceil(want / SHM_GRANULE) * SHM_GRANULE, grown));
    cur?.close(api);
    this.own = null;
    try {
      this.own = OwnSegment.create(api, segmentName(this.o.jobId, this.o.generation, this.o.rank), size);
    } catch (e) {
      this.sending = false;
      this.counters.shm.active = false;
      this.counters.shm.reason = `cannot create a segment of ${size} bytes: ${(e as Error).message}`;
      this.counters.shm.segmentBytes = 0;
      return null;
    }
    this.counters.shm.segmentBytes = size;
    return this.own;
  }

  /** Counts a data frame sent through shared memory (or not, for want of room). */
  countSend(bytes: number | null): void {
    if (bytes === null) this.counters.shm.overflowFrames++;
    else {
      this.counters.shm.framesSent++;
      this.counters.shm.bytesSent += bytes;
      this.counters.bytesSent += bytes; // the socket carries none of them
    }
  }

  /** Whether `b` is the memory of a segment mapped here (never to be sent through a socket). */
  isMapped(b: ArrayBufferLike): boolean {
    for (const seg of this.peers.values()) if (seg.buffer === b) return true;
    return this.own !== null && this.own.buffer === b;
  }
}
