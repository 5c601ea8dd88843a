/**
 * Where a buffer's elements go in a ring of N ranks, and typed views of frame payloads.
 *
 * The buffer of L elements is cut into N segments (segment k = [⌊kL/N⌋, ⌊(k+1)L/N⌋)) and each
 * segment into chunks of `chunkBytes / 4` elements (at least one chunk per segment, possibly
 * empty). Every rank computes the same cut from the same length, world size and chunk size, so the
 * frames' (step, chunk, count) name the same elements on every rank.
 */

/** Segment and chunk boundaries of an N-way split of L elements. */
export class Layout {
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

/** a mod n in [0, n) (ranks and segments around the ring). */
export const mod = (a: number, n: number) => ((a % n) + n) % n;

/** The float32 elements of a payload: a view when aligned, else a copy. */
export function f32View(b: Buffer): Float32Array {
  if (b.byteOffset % 4 === 0) return new Float32Array(b.buffer, b.byteOffset, b.byteLength / 4);
  const c = new Float32Array(b.byteLength / 4);
  new Uint8Array(c.buffer).set(b);
  return c;
}

/** The fp16 elements of a payload: a view when aligned, else a copy. */
export function u16View(b: Buffer): Uint16Array {
  if (b.byteOffset % 2 === 0) return new Uint16Array(b.buffer, b.byteOffset, b.byteLength / 2);
  const c = new Uint16Array(b.byteLength / 2);
  new Uint8Array(c.buffer).set(b);
  return c;
}

/** The bytes of a typed array, as a Buffer over the same memory (no copy). */
export function bytesOf(v: ArrayBufferView): Buffer {
  return Buffer.from(v.buffer, v.byteOffset, v.byteLength);
}
