/**
 * Which examples form global batch s: a pure function of (seed, epoch, s) and nothing about
 * workers. Each epoch is a permutation of the dataset drawn from (seed, epoch); global batch s is
 * a contiguous slice of the concatenated epochs.
 */
import { Purpose, stream } from '../model/rng.js';

/** Permutation of 0…n−1 for an epoch (Fisher–Yates over a counter stream). */
export function epochPermutation(n: number, seed: number, epoch: number): Int32Array {
  const perm = new Int32Array(n);
  for (let i = 0; i < n; i++) perm[i] = i;
  const s = stream(seed, epoch, 0, Purpose.permutation);
  for (let i = n - 1; i > 0; i--) {
    const j = s.int(i + 1);
    const tmp = perm[i] as number;
    perm[i] = perm[j] as number;
    perm[j] = tmp;
  }
  return perm;
}

/** Where the data stream is: the next global batch to train on. */
export interface Cursor {
  epoch: number;
  /** Index of the next batch inside the epoch (drop_last) or of its first example's position (wrap). */
  position: number;
  /** Global step of the next batch. */
  step: number;
}

/** Global batches over a dataset of `size` examples, batch `B`. */
export class GlobalBatches {
  private cache: { epoch: number; perm: Int32Array } | null = null;

  constructor(
    readonly size: number,
    readonly B: number,
    readonly seed: number,
    readonly dropLast: boolean,
  ) {
    if (dropLast && B > size) {
      throw new Error(
        `train.global_batch ${B} is larger than the dataset (${size} examples) with data.drop_last`,
      );
    }
  }

  /** The global batches of a job's config (train.global_batch, run.seed, data.drop_last). */
  static forConfig(
    size: number,
    cfg: { run: { seed: number }; train: { global_batch: number }; data: { drop_last: boolean } },
  ): GlobalBatches {
    return new GlobalBatches(size, cfg.train.global_batch, cfg.run.seed, cfg.data.drop_last);
  }

  /** Batches per epoch when the tail is dropped. */
  get batchesPerEpoch(): number {
    return Math.floor(this.size / this.B);
  }

  private perm(epoch: number): Int32Array {
    if (this.cache?.epoch !== epoch)
      this.cache = { epoch, perm: epochPermutation(this.size, this.seed, epoch) };
    return this.cache.perm;
  }

  /** Dataset indices of positions [from, to) of global batch `step`. */
  indices(step: number, from = 0, to = this.B): Int32Array {
    const out = new Int32Array(to - from);
    for (let j = from; j < to; j++) {
      let epoch: number;
      let k: number;
      if (this.dropLast) {
        epoch = Math.floor(step / this.batchesPerEpoch);
        k = (step % this.batchesPerEpoch) * this.B + j;
      } else {
        // The tail of an epoch wraps into the next one: positions run through the concatenated epochs.
        const pos = step * this.B + j;
        epoch = Math.floor(pos / this.size);
        k = pos % this.size;
      }
      out[j - from] = this.perm(epoch)[k] as number;
    }
    return out;
  }

  /** The cursor before global batch `step`. */
  cursor(step: number): Cursor {
    if (this.dropLast) {
      return { epoch: Math.floor(step / this.batchesPerEpoch), position: step % this.batchesPerEpoch, step };
    }
    const pos = step * this.B;
    return { epoch: Math.floor(pos / this.size), position: pos % this.size, step };
  }
}
