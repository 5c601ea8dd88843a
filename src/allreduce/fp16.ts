/**
 * IEEE 754 binary16 ("fp16") conversion for the ring's `compression: 'fp16'` wire encoding.
 *
 * float32 → fp16 rounds to nearest, ties to even (like a hardware conversion): values beyond
 * ±65504 become ±Infinity (from 65520 on), tiny values become fp16 subnormals or ±0, NaN stays
 * NaN (quiet, payload dropped). fp16 → float32 is exact (table lookup).
 */

let table: Float32Array | undefined;

/** float32 value of every fp16 bit pattern (65,536 entries, built once). */
export function halfTable(): Float32Array {
  if (!table) {
    table = new Float32Array(65536);
    for (let h = 0; h < 65536; h++) {
      const s = h & 0x8000 ? -1 : 1;
      const e = (h >>> 10) & 0x1f;
      const m = h & 0x3ff;
      let v: number;
      if (e === 0) v = m * 2 ** -24;
      else if (e === 31) v = m === 0 ? Infinity : NaN;
      else v = (1024 + m) * 2 ** (e - 25);
      table[h] = s * v;
    }
  }
  return table;
}

/** fp16 bits of the float32 with bits `x` (round to nearest even). */
export function bitsToHalf(x: number): number {
  const sign = (x >>> 16) & 0x8000;
  const a = x & 0x7fffffff;
  if (a >= 0x38800000) {
    if (a >= 0x477ff000) return sign | (a > 0x7f800000 ? 0x7e00 : 0x7c00);
    return sign | ((a - 0x38000000 + 0xfff + ((a >>> 13) & 1)) >>> 13);
  }
  if (a <= 0x33000000) return sign; // ≤ 2^-25 (2^-25 itself ties to the even 0)
  const e = a >>> 23;
  const m = (a & 0x7fffff) | 0x800000;
  const shift = 126 - e; // 14 … 24
  const q = m >>> shift;
  const rem = m & ((1 << shift) - 1);
  const half = 1 << (shift - 1);
  return sign | (q + (rem > half || (rem === half && (q & 1) === 1) ? 1 : 0));
}

const f32 = new Float32Array(1);
const u32 = new Uint32Array(f32.buffer);

/** fp16 bits of a number (first rounded to float32, then to fp16). */
export function toHalf(v: number): number {
  f32[0] = v;
  return bitsToHalf(u32[0] as number);
}

/** dst[i] = fp16(src[i]). */
export function encodeF16(src: Float32Array, dst: Uint16Array): void {
  const n = src.length;
  if (dst.length < n) throw new RangeError('encodeF16: destination too short');
  const bits = new Uint32Array(src.buffer, src.byteOffset, n);
  for (let i = 0; i < n; i++) dst[i] = bitsToHalf(bits[i] as number);
}

/** dst[i] = float32(src[i]) (exact). */
export function decodeF16(src: Uint16Array, dst: Float32Array): void {
  const t = halfTable();
  const n = src.length;
  if (dst.length < n) throw new RangeError('decodeF16: destination too short');
  for (let i = 0; i < n; i++) dst[i] = t[src[i] as number] as number;
}

/**
 * Reduce-scatter hop in fp16: half[i] = fp16(float32(half[i]) + local[i]) — accumulation in
 * float32, one rounding to fp16 per hop for the wire.
 */
export function addIntoHalf(half: Uint16Array, local: Float32Array): void {
  const t = halfTable();
  const n = half.length;
  for (let i = 0; i < n; i++) {
    f32[0] = (t[half[i] as number] as number) + (local[i] as number);
    half[i] = bitsToHalf(u32[0] as number);
  }
}

/** Like {@link addIntoHalf}, into another array: out[i] = fp16(float32(half[i]) + local[i]). */
export function addIntoHalfTo(out: Uint16Array, half: Uint16Array, local: Float32Array): void {
  const t = halfTable();
  const n = out.length;
  if (half.length < n || local.length < n) throw new RangeError('addIntoHalfTo: source too short');
  for (let i = 0; i < n; i++) {
    f32[0] = (t[half[i] as number] as number) + (local[i] as number);
    out[i] = bitsToHalf(u32[0] as number);
  }
}

/**
 * Last reduce-scatter hop in fp16: s = (float32(half[i]) + local[i]) / divisor, then
 * half[i] = fp16(s) and local[i] = float32(half[i]) — the owner keeps exactly what it sends, so
 * every rank ends with bit-identical values.
 */
export function addIntoHalfFinal(half: Uint16Array, local: Float32Array, divisor: number): void {
  const t = halfTable();
  const n = half.length;
  if (divisor === 1) {
    for (let i = 0; i < n; i++) {
      f32[0] = (t[half[i] as number] as number) + (local[i] as number);
      const h = bitsToHalf(u32[0] as number);
      half[i] = h;
      local[i] = t[h] as number;
    }
  } else {
    for (let i = 0; i < n; i++) {
      f32[0] = (t[half[i] as number] as number) + (local[i] as number);
      f32[0] = (f32[0] as number) / divisor;
      const h = bitsToHalf(u32[0] as number);
      half[i] = h;
      local[i] = t[h] as number;
    }
  }
}
