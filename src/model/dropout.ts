/**
 * Training-time dropout masks drawn per example: example i of a step owns the counter-based
 * stream (seed, step, global index i, dropout) of src/model/rng.ts, and each dropout layer, in
 * forward order, takes the next 128 bits of it to seed a xoshiro128** generator that draws the
 * layer's mask. An example's masks are therefore the same whatever shard, micro-batch or worker
 * computes it. Philox alone costs about 150 ns per 32 bits in JavaScript, a large share of a step
 * for the millions of mask elements of an ADM U-Net; xoshiro128** costs a few ns.
 */
import * as tf from '@tensorflow/tfjs';
import type { DropoutMasks } from './nets/denoiser.js';
import { Purpose, stream, type Stream } from './rng.js';

const HALF = 65536;

/** Masks for examples [from, from + n) of one step. */
export class ExampleDropout implements DropoutMasks {
  private readonly streams: Stream[];

  constructor(seed: number, step: number, from: number, n: number) {
    this.streams = Array.from({ length: n }, (_, i) => stream(seed, step, from + i, Purpose.dropout));
  }

  /** [n, ...shape] of 0 or 1/p_keep, each element kept with probability 1 − rate. */
  next(shape: readonly number[], rate: number): tf.Tensor {
    if (!(rate >= 0 && rate < 1)) throw new Error(`dropout rate must be in [0, 1), got ${rate}`);
    const size = shape.reduce((a, b) => a * b, 1);
    const out = new Float32Array(this.streams.length * size);
    // Each 32-bit draw gives two 16-bit uniforms. Keeping u < thr has probability thr/2^16, and
    // scaling by 2^16/thr instead of 1/(1 − rate) keeps E[mask] = 1 exactly.
    const thr = Math.max(1, Math.round((1 - rate) * HALF));
    const keep = HALF / thr;
    this.streams.forEach((s, i) => {
      fillMask(out.subarray(i * size, (i + 1) * size), s, thr, keep);
    });
    return tf.tensor(out, [this.streams.length, ...shape]);
  }
}

/** Fills `out` with keep (16-bit uniform < thr) or 0, from a xoshiro128** seeded by 128 bits of `s`. */
function fillMask(out: Float32Array, s: Stream, thr: number, keep: number): void {
  let s0 = s.nextU32();
  let s1 = s.nextU32();
  let s2 = s.nextU32();
  let s3 = s.nextU32();
  if ((s0 | s1 | s2 | s3) === 0) s0 = 1; // the one state xoshiro never leaves
  for (let k = 0; k < out.length; k += 2) {
    const m = Math.imul(s1, 5);
    const u = Math.imul((m << 7) | (m >>> 25), 9) >>> 0;
    const t = s1 << 9;
    s2 ^= s0;
    s3 ^= s1;
    s1 ^= s2;
    s0 ^= s3;
    s2 ^= t;
    s3 = (s3 << 11) | (s3 >>> 21);
    out[k] = (u & 0xffff) < thr ? keep : 0;
    if (k + 1 < out.length) out[k + 1] = u >>> 16 < thr ? keep : 0;
  }
}
