/**
 * A training-state snapshot as one byte buffer, for moving state between processes (a joining
 * worker receiving it over the ring's broadcast, checkpoints streamed to the coordinator):
 * `RDSNAP1\0`, then four length-prefixed sections (u64 LE): state JSON, model, EMA and optimizer
 * as safetensors. The same encodings as a checkpoint directory, so nothing is defined twice.
 */
import { createHash } from 'node:crypto';
import { decodeSafetensors, encodeSafetensors } from '../model/safetensors.js';
import type { HostTensor } from '../model/params.js';
import type { Snapshot } from './snapshot.js';

const MAGIC = Buffer.from('RDSNAP1\0', 'latin1');
const PARTS = ['model', 'ema', 'optimizer'] as const;

/** Encodes a snapshot as one buffer. */
export function encodeSnapshot(s: Snapshot): Buffer {
  const sections = [
    Buffer.from(JSON.stringify(s.state), 'utf8'),
    ...PARTS.map((p) => encodeSafetensors(s.parts[p])),
  ];
  const out = Buffer.alloc(MAGIC.length + sections.reduce((a, b) => a + 8 + b.length, 0));
  MAGIC.copy(out, 0);
  let off = MAGIC.length;
  for (const sec of sections) {
    out.writeBigUInt64LE(BigInt(sec.length), off);
    sec.copy(out, off + 8);
    off += 8 + sec.length;
  }
  return out;
}

/** Decodes a buffer made by `encodeSnapshot`; `label` names the source in errors. */
export function decodeSnapshot(buf: Buffer, label: string): Snapshot {
  if (buf.length < MAGIC.length || !buf.subarray(0, MAGIC.length).equals(MAGIC)) {
    throw new Error(`${label}: not a ringdiff state snapshot (bad magic at offset 0)`);
  }
  let off = MAGIC.length;
  const next = (what: string): Buffer => {
    if (off + 8 > buf.length)
      throw new Error(`${label}: truncated before the ${what} section at offset ${off}`);
    const len = Number(buf.readBigUInt64LE(off));
    if (off + 8 + len > buf.length)
      throw new Error(`${label}: ${what} section at offset ${off} overruns the buffer`);
    const sec = buf.subarray(off + 8, off + 8 + len);
    off += 8 + len;
    return sec;
  };
  let state: Snapshot['state'];
  try {
    state = JSON.parse(next('state').toString('utf8')) as Snapshot['state'];
  } catch (e) {
    throw new Error(`${label}: state section is not valid JSON (${(e as Error).message})`);
  }
  if (typeof state.step !== 'number') throw new Error(`${label}: state section has no step`);
  const parts = {} as Snapshot['parts'];
  for (const p of PARTS) {
    const { tensors } = decodeSafetensors(next(p), `${label} (${p})`);
    const m = new Map<string, HostTensor>();
    for (const [name, t] of tensors) {
      if (!(t.data instanceof Float32Array))
        throw new Error(`${label} (${p}): tensor '${name}' is ${t.dtype}, not F32`);
      m.set(name, { shape: t.shape, data: t.data });
    }
    parts[p] = m;
  }
  if (off !== buf.length) throw new Error(`${label}: ${buf.length - off} trailing bytes at offset ${off}`);
  return { state, parts };
}

/** One piece of a byte buffer on a gRPC stream (the fields of `StateChunk` that describe it). */
export interface Chunk {
  offset: number;
  total: number;
  data: Uint8Array;
  /** sha256 (hex) of the whole buffer, on the last chunk only. */
  sha256: string;
}

/** Default bytes per chunk: well under gRPC's 4 MiB default message limit. */
export const CHUNK_BYTES = 1 << 20;

/** Cuts `buf` into chunks of at most `chunkBytes` (an empty buffer is one empty chunk). */
export function toChunks(buf: Uint8Array, chunkBytes = CHUNK_BYTES): Chunk[] {
  const sha = createHash('sha256').update(buf).digest('hex');
  const out: Chunk[] = [];
  for (let off = 0; off < buf.length || out.length === 0; off += chunkBytes) {
    const end = Math.min(buf.length, off + chunkBytes);
    out.push({
      offset: off,
      total: buf.length,
      data: buf.subarray(off, end),
      sha256: end === buf.length ? sha : '',
    });
  }
  return out;
}

/**
 * Reassembles chunks that must arrive in order; every violation (gap, overlap, changed total,
 * overrun, wrong digest, missing end) is an error naming the offset, so a broken stream can never
 * be taken for a whole state.
 */
export class ChunkAssembler {
  private buf: Buffer | null = null;
  private next = 0;
  private digest = '';

  constructor(
    private readonly label: string,
    /** Largest total accepted, in bytes. */
    private readonly maxBytes: number,
  ) {}

  /** Adds the next chunk. */
  add(c: Chunk): void {
    if (!Number.isSafeInteger(c.total) || c.total < 0 || c.total > this.maxBytes)
      throw new Error(`${this.label}: total ${c.total} is outside 0…${this.maxBytes} bytes`);
    if (this.buf === null) this.buf = Buffer.alloc(c.total);
    if (c.total !== this.buf.length)
      throw new Error(
        `${this.label}: total changed from ${this.buf.length} to ${c.total} at offset ${c.offset}`,
      );
    if (c.offset !== this.next)
      throw new Error(`${this.label}: expected offset ${this.next}, got ${c.offset}`);
    if (c.offset + c.data.length > c.total)
      throw new Error(`${this.label}: chunk at offset ${c.offset} overruns the total of ${c.total} bytes`);
    this.buf.set(c.data, c.offset);
    this.next += c.data.length;
    if (c.sha256) this.digest = c.sha256;
  }

  /** The whole buffer, after checking that it is complete and matches its digest. */
  finish(): Buffer {
    if (this.buf === null) throw new Error(`${this.label}: no chunk received`);
    if (this.next !== this.buf.length)
      throw new Error(`${this.label}: stream ended at offset ${this.next} of ${this.buf.length}`);
    const sha = createHash('sha256').update(this.buf).digest('hex');
    if (sha !== this.digest)
      throw new Error(
        `${this.label}: sha256 mismatch (got ${sha.slice(0, 12)}…, announced ${this.digest.slice(0, 12) || 'none'})`,
      );
    return this.buf;
  }
}
