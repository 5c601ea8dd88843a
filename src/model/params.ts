/**
 * Named parameters. A model's parameters are plain tensors keyed by stable hierarchical names
 * (`down.0.res.1.conv1.kernel`); the same names are used in checkpoints. Iteration order is
 * always the sorted order of names, so flattening is identical on every worker.
 */
import * as tf from '@tensorflow/tfjs';

export type Params = Map<string, tf.Tensor>;

/** Names of `p` in canonical (sorted) order. */
export function sortedNames(p: Params): string[] {
  return [...p.keys()].sort();
}

/** Total number of scalars in `p`. */
export function countParams(p: Params): number {
  let n = 0;
  for (const t of p.values()) n += t.size;
  return n;
}

/** Disposes every tensor of `p`. */
export function disposeParams(p: Params): void {
  for (const t of p.values()) t.dispose();
}

/** Keeps every tensor of `p` alive past the enclosing tf.tidy. */
export function keepParams(p: Params): Params {
  for (const t of p.values()) tf.keep(t);
  return p;
}

/** Host copy of `p`: name → {shape, data}, in canonical order. */
export async function paramsToHost(p: Params): Promise<Map<string, HostTensor>> {
  const out = new Map<string, HostTensor>();
  for (const name of sortedNames(p)) {
    const t = p.get(name) as tf.Tensor;
    out.set(name, { shape: [...t.shape], data: (await t.data()) as Float32Array });
  }
  return out;
}

/** Device tensors from a host copy. */
export function paramsFromHost(h: Map<string, HostTensor>): Params {
  const out: Params = new Map();
  for (const [name, t] of h) out.set(name, tf.tensor(t.data, t.shape, 'float32'));
  return out;
}

/** A float32 tensor held in host memory (checkpoints, all-reduce buffers). */
export interface HostTensor {
  shape: number[];
  data: Float32Array;
}
