/**
 * Gradient checks shared by the network tests: analytic gradients of Σ(f(x)·r) against central
 * finite differences, and zero-initialised tensors made random so that every path carries a
 * gradient (no tests in this file).
 */
import assert from 'node:assert/strict';
import * as tf from '@tensorflow/tfjs';
import type { Denoiser } from '../src/model/nets/denoiser.js';
import { sortedNames, type Params } from '../src/model/params.js';

/** Replaces every all-zero tensor (zero-initialised layers, biases) by small random values. */
export function randomizeZeros(p: Params, seed: number): void {
  let k = 0;
  for (const [name, v] of p) {
    if (tf.tidy(() => tf.max(tf.abs(v)).dataSync()[0]) === 0) {
      p.set(name, tf.randomNormal(v.shape, 0, 0.3, 'float32', seed + k++));
      v.dispose();
    }
  }
}

/**
 * Asserts that ∂Σ(m(x, t, y)·r)/∂θ matches central differences (h = 1e-2, float32) at the two
 * largest-gradient coordinates and the middle one of each tensor in `check`; returns the count.
 */
export function checkGradients(
  m: Denoiser,
  p: Params,
  inputs: { x: tf.Tensor; t: tf.Tensor1D; y: tf.Tensor1D | null; r: tf.Tensor },
  check: readonly string[],
): number {
  const { x, t, y, r } = inputs;
  const names = sortedNames(p);
  const lossOf = (q: Params): number =>
    tf.tidy(() => tf.sum(tf.mul(m.apply(q, x, t, y), r)).dataSync()[0] as number);
  const { grads } = tf.valueAndGrads((...ts: tf.Tensor[]) =>
    tf.sum(tf.mul(m.apply(new Map(names.map((n, i) => [n, ts[i] as tf.Tensor])), x, t, y), r)),
  )(names.map((n) => p.get(n) as tf.Tensor));
  const g = new Map(names.map((n, i) => [n, (grads[i] as tf.Tensor).dataSync()]));
  tf.dispose(grads);
  const h = 1e-2;
  let checked = 0;
  for (const name of check) {
    const v = p.get(name);
    assert.ok(v, `${name} exists`);
    const base = v.dataSync().slice() as Float32Array;
    const gv = g.get(name) as Float32Array;
    // The coordinates with the largest gradients, plus one fixed one: well above float32 noise.
    const order = [...gv.keys()].sort((a, b) => Math.abs(gv[b] as number) - Math.abs(gv[a] as number));
    for (const i of [order[0], order[1], Math.floor(base.length / 2)] as number[]) {
      const at = (d: number): number => {
        const w = base.slice();
        w[i] = (w[i] as number) + d;
        const q = new Map(p);
        const tw = tf.tensor(w, v.shape);
        q.set(name, tw);
        const f = lossOf(q);
        tw.dispose();
        return f;
      };
      const fd = (at(h) - at(-h)) / (2 * h);
      const an = gv[i] as number;
      assert.ok(
        Math.abs(fd - an) <= 2e-2 * Math.abs(an) + 2e-3,
        `${name}[${i}]: analytic ${an}, numeric ${fd}`,
      );
      checked++;
    }
  }
  return checked;
}
