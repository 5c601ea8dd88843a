/**
 * The ring's element kernels, behind one small object so that a native (SIMD) implementation can
 * replace them with {@link setKernels} without touching the ring.
 *
 * Every kernel must be deterministic element by element (float32 addition of the same two
 * operands, float32 division by the same divisor): the ring's bit-reproducibility rests on it.
 * Addition is commutative in IEEE arithmetic, so `a + b` and `b + a` give the same bits; the ring
 * fixes the association order.
 */
import { addIntoHalf, addIntoHalfFinal, addIntoHalfTo, decodeF16, encodeF16 } from './fp16.js';

export interface RingKernels {
  /** dst[i] = dst[i] + src[i] (float32). */
  add(dst: Float32Array, src: Float32Array): void;
  /** out[i] = a[i] + b[i] (float32) over out.length elements. */
  add3(out: Float32Array, a: Float32Array, b: Float32Array): void;
  /** dst[i] = (dst[i] + src[i]) / divisor (float32; divisor 1: plain add). */
  addDiv(dst: Float32Array, src: Float32Array, divisor: number): void;
  /** x[i] = x[i] / divisor (float32). */
  scale(x: Float32Array, divisor: number): void;
  /** dst.set(src). */
  copy(dst: Float32Array, src: Float32Array): void;
  /** dst[i] = fp16(src[i]). */
  toHalf(src: Float32Array, dst: Uint16Array): void;
  /** dst[i] = float32(src[i]). */
  fromHalf(src: Uint16Array, dst: Float32Array): void;
  /** half[i] = fp16(float32(half[i]) + local[i]). */
  addHalf(half: Uint16Array, local: Float32Array): void;
  /** out[i] = fp16(float32(half[i]) + local[i]) over out.length elements. */
  addHalfTo(out: Uint16Array, half: Uint16Array, local: Float32Array): void;
  /** s = (float32(half[i]) + local[i]) / divisor; half[i] = fp16(s); local[i] = float32(half[i]). */
  addHalfFinal(half: Uint16Array, local: Float32Array, divisor: number): void;
  /**
   * Optional: frees the memory of a received frame now (the ring calls it once it holds no other
   * reference to the frame and ZeroMQ does not send it on); returns whether it did. Without it the
   * frames live until V8's next garbage collection. When present, the ring also writes partial
   * sums into a buffer of its own instead of into the frame it received, so that every frame can
   * be freed as soon as it has been read.
   */
  release?: (bytes: Uint8Array) => boolean;
}

/* The loops are unrolled by 8: V8 then runs them ~30 % faster (fewer bound checks per element). */

function jsAdd(dst: Float32Array, src: Float32Array): void {
  const n = dst.length;
  if (src.length < n) throw new RangeError('add: source too short');
  let i = 0;
  for (const e = n - 7; i < e; i += 8) {
    dst[i] = (dst[i] as number) + (src[i] as number);
    dst[i + 1] = (dst[i + 1] as number) + (src[i + 1] as number);
    dst[i + 2] = (dst[i + 2] as number) + (src[i + 2] as number);
    dst[i + 3] = (dst[i + 3] as number) + (src[i + 3] as number);
    dst[i + 4] = (dst[i + 4] as number) + (src[i + 4] as number);
    dst[i + 5] = (dst[i + 5] as number) + (src[i + 5] as number);
    dst[i + 6] = (dst[i + 6] as number) + (src[i + 6] as number);
    dst[i + 7] = (dst[i + 7] as number) + (src[i + 7] as number);
  }
  for (; i < n; i++) dst[i] = (dst[i] as number) + (src[i] as number);
}

function jsAdd3(out: Float32Array, a: Float32Array, b: Float32Array): void {
  const n = out.length;
  if (a.length < n || b.length < n) throw new RangeError('add3: source too short');
  let i = 0;
  for (const e = n - 3; i < e; i += 4) {
    out[i] = (a[i] as number) + (b[i] as number);
    out[i + 1] = (a[i + 1] as number) + (b[i + 1] as number);
    out[i + 2] = (a[i + 2] as number) + (b[i + 2] as number);
    out[i + 3] = (a[i + 3] as number) + (b[i + 3] as number);
  }
  for (; i < n; i++) out[i] = (a[i] as number) + (b[i] as number);
}

function jsAddDiv(dst: Float32Array, src: Float32Array, divisor: number): void {
  if (divisor === 1) return jsAdd(dst, src);
  const n = dst.length;
  if (src.length < n) throw new RangeError('addDiv: source too short');
  // Round the sum to float32 first, then divide: the same as float32 (a + b) / N.
  const f = Math.fround;
  let i = 0;
  for (const e = n - 3; i < e; i += 4) {
    dst[i] = f((dst[i] as number) + (src[i] as number)) / divisor;
    dst[i + 1] = f((dst[i + 1] as number) + (src[i + 1] as number)) / divisor;
    dst[i + 2] = f((dst[i + 2] as number) + (src[i + 2] as number)) / divisor;
    dst[i + 3] = f((dst[i + 3] as number) + (src[i + 3] as number)) / divisor;
  }
  for (; i < n; i++) dst[i] = f((dst[i] as number) + (src[i] as number)) / divisor;
}

function jsScale(x: Float32Array, divisor: number): void {
  if (divisor === 1) return;
  for (let i = 0; i < x.length; i++) x[i] = (x[i] as number) / divisor;
}

const defaults: RingKernels = {
  add: jsAdd,
  add3: jsAdd3,
  addDiv: jsAddDiv,
  scale: jsScale,
  copy: (dst, src) => dst.set(src),
  toHalf: encodeF16,
  fromHalf: decodeF16,
  addHalf: addIntoHalf,
  addHalfTo: addIntoHalfTo,
  addHalfFinal: addIntoHalfFinal,
};

/** The kernels in use (read by the ring on every call). */
export const kernels: RingKernels = { ...defaults };

/**
 * Replaces some kernels (e.g. with native SIMD ones); returns the previous set, which
 * `setKernels(prev)` restores (an explicit `release: undefined` removes `release`).
 */
export function setKernels(k: Partial<RingKernels>): RingKernels {
  const prev: RingKernels = { ...kernels, release: kernels.release };
  Object.assign(kernels, k);
  if (!kernels.release) delete kernels.release;
  return prev;
}

/** Restores the pure-JavaScript kernels. */
export function resetKernels(): void {
  // `release` is not one of them: drop it, or the ring would keep freeing frames.
  delete kernels.release;
  Object.assign(kernels, defaults);
}

/** The pure-JavaScript kernels (e.g. to compare a native set against them). */
export function jsKernels(): RingKernels {
  return { ...defaults };
}
