/**
 * Counter-based random numbers (Philox4x32-10, Salmon et al. 2011).
 *
 * Every random draw of ringdiff is a pure function of a key and a counter, never of call order:
 * an example's noise, timestep, flip and class-dropout bits depend only on
 * (seed, step, index in the global batch, purpose), so the result of a step does not depend on
 * how the batch is split across workers or in what order they run.
 */

/** What a stream is used for; part of the counter so that purposes never share numbers. */
export const Purpose = {
  noise: 0,
  timestep: 1,
  flip: 2,
  classDrop: 3,
  init: 4,
  sampleNoise: 5,
  permutation: 6,
  data: 7,
  offsetNoise: 8,
  dropout: 9,
  /** Exact draws from an analytic model's data distribution (references of `bench sample`). */
  oracle: 10,
  /** Position of a continuous-time example inside its timestep bin (src/model/diffusion/continuous.ts). */
  timeJitter: 11,
  /** Per-example forward noise and stratified timesteps of the likelihood bound (`eval nll`). */
  evalNoise: 12,
} as const;
export type Purpose = (typeof Purpose)[keyof typeof Purpose];

const M0 = 0xd2511f53;
const M1 = 0xcd9e8d57;
const W0 = 0x9e3779b9;
const W1 = 0xbb67ae85;

/** High 32 bits of the 64-bit product of two uint32 (exact, no floats beyond 2^53). */
function mulhi32(a: number, b: number): number {
  const al = a & 0xffff;
  const ah = a >>> 16;
  const bl = b & 0xffff;
  const bh = b >>> 16;
  const lolo = al * bl;
  const mid1 = ah * bl;
  const mid2 = al * bh;
  const carry = ((lolo >>> 16) + (mid1 & 0xffff) + (mid2 & 0xffff)) >>> 16;
  return (ah * bh + (mid1 >>> 16) + (mid2 >>> 16) + carry) >>> 0;
}

/**
 * One Philox4x32-10 block: four uint32 outputs for a 128-bit counter and a 64-bit key.
 * `out` receives the four words.
 */
export function philox4x32(
  c0: number,
  c1: number,
  c2: number,
  c3: number,
  k0: number,
  k1: number,
  out: Uint32Array,
): void {
  let x0 = c0 >>> 0;
  let x1 = c1 >>> 0;
  let x2 = c2 >>> 0;
  let x3 = c3 >>> 0;
  let key0 = k0 >>> 0;
  let key1 = k1 >>> 0;
  for (let r = 0; r < 10; r++) {
    const hi0 = mulhi32(M0, x0);
    const lo0 = Math.imul(M0, x0) >>> 0;
    const hi1 = mulhi32(M1, x2);
    const lo1 = Math.imul(M1, x2) >>> 0;
    const n0 = (hi1 ^ x1 ^ key0) >>> 0;
    const n2 = (hi0 ^ x3 ^ key1) >>> 0;
    x0 = n0;
    x1 = lo1;
    x2 = n2;
    x3 = lo0;
    key0 = (key0 + W0) >>> 0;
    key1 = (key1 + W1) >>> 0;
  }
  out[0] = x0;
  out[1] = x1;
  out[2] = x2;
  out[3] = x3;
}

const TWO_POW_32 = 4294967296;

/** Splits a non-negative safe integer into [low 32 bits, high 32 bits]. */
function split64(n: number): [number, number] {
  if (!Number.isSafeInteger(n) || n < 0)
    throw new Error(`rng key part must be a non-negative safe integer, got ${n}`);
  return [(n % TWO_POW_32) >>> 0, Math.floor(n / TWO_POW_32) >>> 0];
}

/**
 * A stream of random numbers for one (seed, step, index, purpose) key.
 * The stream position is a counter: draw k of the stream is the same whoever asks for it.
 */
export class Stream {
  private readonly k0: number;
  private readonly k1: number;
  private readonly c1: number;
  private readonly c2: number;
  private readonly c3: number;
  private block = 0;
  private readonly buf = new Uint32Array(4);
  private pos = 4;
  private spareNormal: number | undefined;

  constructor(seed: number, step: number, index: number, purpose: Purpose) {
    [this.k0, this.k1] = split64(seed);
    const [s0, s1] = split64(step);
    if (s1 > 0xffff) throw new Error(`rng step ${step} is too large`);
    this.c1 = s0;
    // high bits of step share a word with the purpose: purpose in the low 16 bits.
    this.c3 = ((s1 << 16) | purpose) >>> 0;
    const [i0, i1] = split64(index);
    if (i1 !== 0) throw new Error(`rng index ${index} must be below 2^32`);
    this.c2 = i0;
  }

  /** Next uint32. */
  nextU32(): number {
    if (this.pos === 4) {
      philox4x32(this.block, this.c1, this.c2, this.c3, this.k0, this.k1, this.buf);
      this.block++;
      this.pos = 0;
    }
    return this.buf[this.pos++] as number;
  }

  /** Uniform in the open interval (0, 1), 32 bits of resolution. */
  uniform(): number {
    return (this.nextU32() + 0.5) / TWO_POW_32;
  }

  /** Standard normal (Box–Muller; both values of a pair are used in order). */
  normal(): number {
    if (this.spareNormal !== undefined) {
      const v = this.spareNormal;
      this.spareNormal = undefined;
      return v;
    }
    const u1 = this.uniform();
    const u2 = this.uniform();
    const r = Math.sqrt(-2 * Math.log(u1));
    const a = 2 * Math.PI * u2;
    this.spareNormal = r * Math.sin(a);
    return r * Math.cos(a);
  }

  /** Fills `out` with standard normals and returns it. */
  normals(out: Float32Array): Float32Array {
    for (let i = 0; i < out.length; i++) out[i] = this.normal();
    return out;
  }

  /** Integer uniform in [0, n) (n ≤ 2^32), unbiased by rejection. */
  int(n: number): number {
    if (n <= 0 || n > TWO_POW_32) throw new Error(`rng int range ${n} out of bounds`);
    const limit = TWO_POW_32 - (TWO_POW_32 % n);
    for (;;) {
      const v = this.nextU32();
      if (v < limit) return v % n;
    }
  }
}

/** Convenience: a fresh stream for (seed, step, index, purpose). */
export function stream(seed: number, step: number, index: number, purpose: Purpose): Stream {
  return new Stream(seed, step, index, purpose);
}

/** Standard normals for examples [offset, offset+n) of one draw, each from its own counter stream. */
export function noiseFor(
  seed: number,
  step: number,
  offset: number,
  n: number,
  exampleSize: number,
  purpose: Purpose,
): Float32Array {
  const out = new Float32Array(n * exampleSize);
  for (let i = 0; i < n; i++) {
    stream(seed, step, offset + i, purpose).normals(out.subarray(i * exampleSize, (i + 1) * exampleSize));
  }
  return out;
}
