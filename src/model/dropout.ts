/**
 * Training-time dropout masks drawn per example from counter-based streams (src/model/rng.ts):
 * example i of a step owns the stream (seed, step, global index i, dropout), and the network's
 * dropout layers take consecutive draws of it in forward order. An example's masks are therefore
 * the same whatever shard, micro-batch or worker computes it.
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
    const n = this.streams.length;
    const out = new Float32Array(n * size);
    // Each 32-bit draw gives two 16-bit uniforms (half the generator cost). Keeping u < thr has
    // probability thr/2^16, and scaling by 2^16/thr instead of 1/(1 − rate) keeps E[mask] = 1 exactly.
    const thr = Math.max(1, Math.round((1 - rate) * HALF));
    const keep = HALF / thr;
    for (let i = 0; i < n; i++) {
      const s = this.streams[i] as Stream;
      const base = i * size;
      for (let k = 0; k < size; k += 2) {
        const u = s.nextU32();
        out[base + k] = (u & 0xffff) < thr ? keep : 0;
        if (k + 1 < size) out[base + k + 1] = u >>> 16 < thr ? keep : 0;
      }
    }
    return tf.tensor(out, [n, ...shape]);
  }
}
