/**
 * What a ring is opened with (`RingOptions`) and what it counts (`RingCounters`). Every option is
 * checked when the ring is opened (ring.ts); a bad one is a `RingConfigError` naming it.
 */
import type { FrameHeader } from './frame.js';

/** What an all-reduce computes: the sum over the ranks, or that sum divided by N. */
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
