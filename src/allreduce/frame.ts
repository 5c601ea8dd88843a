/**
 * Ring wire format.
 *
 * Every ZeroMQ message on a ring link (PUSH of rank r → PULL of rank r+1) has exactly two frames:
 *
 * 1. a header, the protobuf message `ringdiff.v1.RingHeader` of `proto/ring.proto`
 *    (loaded at run time with protobufjs): job id, generation, collective sequence number `seq`,
 *    ring `step`, `phase`, `chunk` index, `sender` rank, payload `encoding` and element `count`,
 *    the collective's `length` in elements, the number of `chunks` in this segment, and the
 *    broadcast `root` (in an all-reduce's DONE tokens: the rank that issued the token, see
 *    ops/all-reduce.ts);
 * 2. the payload: `count` little-endian float32 (`F32`), IEEE binary16 (`F16`) values or bytes
 *    (`BYTES`); for `ABORT` a UTF-8 reason; empty for `DONE`.
 *
 * Shared-memory frames (all-reduce data between ranks of one host, see transport.ts): the header also
 * names a segment (`shm_segment`) and the byte offset of the payload in it (`shm_offset`, a double
 * holding an integer); the payload frame is then empty and the `count × element size` bytes at
 * that offset are the payload. (Receivers of an older version ignore the two fields, as proto3
 * does with unknown fields, and then drop the frame for its empty payload.)
 *
 * Authenticated rings (a `secret` in the ring options: workers get one per generation in their
 * plans): the header also carries `link_index` (1, 2, … per link and generation) and ends with the
 * field `mac`, encoded last: HMAC-SHA256 under the secret of every header byte before it (and, for
 * ABORT, of the reason too), truncated to 16 bytes ({@link FrameAuth}). A receiver checks it before
 * it acts on anything but the job id and generation. Data payloads are not covered: HMAC-SHA256
 * runs at ~1.7 GB/s on one core here, about the ring's own throughput, so hashing every payload on
 * both sides would cost more than half of the all-reduce bandwidth; the header (job, generation,
 * collective, step, sender, shared-memory segment and offset, link index) is what an outsider needs
 * to disturb a ring, and payload integrity against someone who can tamper with the stream itself
 * (not just reach the port) is CURVE's job.
 *
 * A receiver drops (and counts, see `RingCounters`) any message that is not two frames, whose
 * header does not decode or has out-of-range enums, whose payload size does not match
 * `count × element size` (for a shared-memory frame: that is not empty, whose phase is not
 * REDUCE_SCATTER / ALL_GATHER, whose encoding is not F32 / F16, whose offset is not a multiple of
 * the element size, or whose segment name is not of the form shm.ts produces), whose job id
 * differs, or whose generation differs from its own. The ring then checks the segment itself.
 */
import { createHmac, timingSafeEqual } from 'node:crypto';
import { fileURLToPath } from 'node:url';
import protobuf from 'protobufjs';

/** Mirrors `ringdiff.v1.RingPhase`. */
export const Phase = {
  REDUCE_SCATTER: 1,
  ALL_GATHER: 2,
  BROADCAST: 3,
  GATHER: 4,
  DONE: 5,
  ABORT: 6,
} as const;
export type Phase = (typeof Phase)[keyof typeof Phase];

/** Mirrors `ringdiff.v1.RingEncoding`. */
export const Encoding = { F32: 0, F16: 1, BYTES: 2 } as const;
export type Encoding = (typeof Encoding)[keyof typeof Encoding];

/** Bytes per element of each encoding. */
export const ELEMENT_BYTES: Record<Encoding, number> = { 0: 4, 1: 2, 2: 1 };

export interface FrameHeader {
  jobId: string;
  generation: number;
  seq: number;
  step: number;
  phase: Phase;
  chunk: number;
  sender: number;
  encoding: Encoding;
  count: number;
  length: number;
  chunks: number;
  root: number;
  /** Shared-memory frames only: the segment in /dev/shm that holds the payload. */
  shmSegment?: string;
  /** Shared-memory frames only: byte offset of the payload in the segment. */
  shmOffset?: number;
  /** Authenticated rings: index of the message on its link (1, 2, …); absent or 0 otherwise. */
  linkIndex?: number;
  /** All-reduce data frames: the call ends with the DONE round (see ops/all-reduce.ts); absent: false. */
  doneRound?: boolean;
}

/** Longest segment name accepted (shm.ts produces about 90 characters). */
const MAX_SEGMENT_NAME = 200;
/** Every name shm.ts produces (the ring then checks the exact one its predecessor may use). */
export const SEGMENT_NAME_RE =
  /^ringdiff-[A-Za-z0-9_]{1,24}_[0-9a-f]{8}-g\d{1,10}-r\d{1,5}-p\d{1,10}-[0-9a-f]{16}$/;

/** Where `proto/ring.proto` lives relative to this module (dist/src/allreduce or src/allreduce). */
function protoPath(): string {
  return fileURLToPath(new URL('../../../proto/ring.proto', import.meta.url));
}

let headerType: protobuf.Type | undefined;

function type(): protobuf.Type {
  if (!headerType) {
    let root: protobuf.Root;
    try {
      root = protobuf.loadSync(protoPath());
    } catch {
      // Running from src/ (one level less deep than dist/src/).
      root = protobuf.loadSync(fileURLToPath(new URL('../../proto/ring.proto', import.meta.url)));
    }
    headerType = root.lookupType('ringdiff.v1.RingHeader');
  }
  return headerType;
}

/** Encodes a header frame (a Buffer, as zeromq.js needs for binary frames). */
export function encodeHeader(h: FrameHeader): Buffer {
  const u8 = type().encode(h).finish();
  return Buffer.isBuffer(u8) ? u8 : Buffer.from(u8.buffer, u8.byteOffset, u8.byteLength);
}

const PHASES = new Set<number>(Object.values(Phase));
const U32_MAX = 0xffffffff;

function isU32(x: unknown): x is number {
  return typeof x === 'number' && Number.isInteger(x) && x >= 0 && x <= U32_MAX;
}

/** Decodes and validates a header frame; null if it is malformed. Never throws. */
export function decodeHeader(buf: Uint8Array): FrameHeader | null {
  let m: Record<string, unknown>;
  try {
    m = type().decode(buf) as unknown as Record<string, unknown>;
  } catch {
    return null;
  }
  const h: FrameHeader = {
    jobId: m.jobId as string,
    generation: m.generation as number,
    seq: m.seq as number,
    step: m.step as number,
    phase: m.phase as Phase,
    chunk: m.chunk as number,
    sender: m.sender as number,
    encoding: m.encoding as Encoding,
    count: m.count as number,
    length: m.length as number,
    chunks: m.chunks as number,
    root: m.root as number,
  };
  if (typeof h.jobId !== 'string' || h.jobId.length === 0) return null;
  if (!PHASES.has(h.phase)) return null;
  if (h.encoding !== Encoding.F32 && h.encoding !== Encoding.F16 && h.encoding !== Encoding.BYTES)
    return null;
  for (const k of [
    'generation',
    'seq',
    'step',
    'chunk',
    'sender',
    'count',
    'length',
    'chunks',
    'root',
  ] as const)
    if (!isU32(h[k])) return null;
  if (m.doneRound === true) h.doneRound = true;
  const li = m.linkIndex;
  if (li !== undefined && li !== 0) {
    if (typeof li !== 'number' || !Number.isSafeInteger(li) || li < 0) return null;
    h.linkIndex = li;
  }
  const seg = m.shmSegment;
  if (typeof seg === 'string' && seg.length > 0) {
    const off = m.shmOffset;
    if (seg.length > MAX_SEGMENT_NAME || !SEGMENT_NAME_RE.test(seg)) return null;
    if (typeof off !== 'number' || !Number.isSafeInteger(off) || off < 0) return null;
    if (h.phase !== Phase.REDUCE_SCATTER && h.phase !== Phase.ALL_GATHER) return null;
    if (h.encoding !== Encoding.F32 && h.encoding !== Encoding.F16) return null;
    if (off % ELEMENT_BYTES[h.encoding] !== 0) return null;
    h.shmSegment = seg;
    h.shmOffset = off;
  }
  return h;
}

/** A decoded, size-checked message. */
export interface Frame {
  header: FrameHeader;
  /** For a shared-memory frame: empty as received; the ring replaces it by a view of the segment. */
  payload: Buffer;
}

export type DecodeResult = { ok: true; frame: Frame } | { ok: false; reason: 'parts' | 'header' | 'payload' };

/** Splits and checks a received multipart message. Never throws. */
export function decodeMessage(parts: Buffer[]): DecodeResult {
  if (parts.length !== 2) return { ok: false, reason: 'parts' };
  const [hb, payload] = parts as [Buffer, Buffer];
  const header = decodeHeader(hb);
  if (!header) return { ok: false, reason: 'header' };
  if (header.shmSegment !== undefined) {
    if (payload.byteLength !== 0) return { ok: false, reason: 'payload' };
  } else if (
    header.phase !== Phase.ABORT &&
    payload.byteLength !== header.count * ELEMENT_BYTES[header.encoding]
  )
    return { ok: false, reason: 'payload' };
  return { ok: true, frame: { header, payload } };
}

// ---------------------------------------------------------------------------------------------
// Authentication

/** Bytes of the truncated HMAC-SHA256 a header frame ends with. */
export const MAC_BYTES = 16;
/** Field 16 (`mac`), wire type 2, then its length: what precedes the MAC at the end of a header. */
const MAC_TAG = Buffer.from([0x82, 0x01, MAC_BYTES]);
const TRAILER_BYTES = MAC_TAG.length + MAC_BYTES;
/** Accepted secret lengths, bytes. */
export const SECRET_MIN_BYTES = 16;
export const SECRET_MAX_BYTES = 64;

/**
 * Header MACs under a ring generation's secret. The MAC is appended as the last protobuf field
 * rather than computed over a re-encoding, so that the receiver checks exactly the bytes it
 * decoded, whatever encoder the sender used.
 */
export class FrameAuth {
  private readonly key: Buffer;

  constructor(secret: Uint8Array) {
    if (secret.byteLength < SECRET_MIN_BYTES || secret.byteLength > SECRET_MAX_BYTES)
      throw new RangeError(`secret must be ${SECRET_MIN_BYTES} to ${SECRET_MAX_BYTES} bytes`);
    this.key = Buffer.from(secret);
  }

  private mac(header: Uint8Array, payload: Uint8Array | null): Buffer {
    const h = createHmac('sha256', this.key).update(header);
    if (payload && payload.byteLength > 0) h.update(payload);
    return h.digest().subarray(0, MAC_BYTES);
  }

  /** `header` (an encoded RingHeader without `mac`) followed by its MAC field; `payload`: ABORT's reason. */
  seal(header: Uint8Array, payload: Uint8Array | null = null): Buffer {
    return Buffer.concat([header, MAC_TAG, this.mac(header, payload)]);
  }

  /** Whether `frame` ends with the MAC field of the bytes before it (and `payload`). Never throws. */
  verify(frame: Uint8Array, payload: Uint8Array | null = null): boolean {
    const n = frame.byteLength - TRAILER_BYTES;
    if (n < 0) return false;
    for (let i = 0; i < MAC_TAG.length; i++) if (frame[n + i] !== MAC_TAG[i]) return false;
    return timingSafeEqual(this.mac(frame.subarray(0, n), payload), frame.subarray(n + MAC_TAG.length));
  }
}
