/**
 * The fused kernels `cpu-native` adds (src/model/backend/fused.ts) against the portable
 * compositions they replace, run on TF.js's pure-JS `cpu` backend: GroupNorm + SiLU (forward and
 * gradients, within float32 tolerance: sums run in another order), Adam/AdamW and the EMA
 * (identical bit for bit: the same float32 operations in the same order).
 */
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import * as tf from '@tensorflow/tfjs';
import { uniform } from './helpers.js';
import {
  ADAM,
  EMA,
  GROUP_NORM,
  GROUP_NORM_GRAD,
  nativeKernelCalls,
  registerCpuNative,
} from '../src/model/backend/native.js';
import { groupNorm, groupNormSilu } from '../src/model/nets/layers.js';
import type { Params } from '../src/model/params.js';
import { initialState, optimizerStep, updateEma, disposeState, type TrainState } from '../src/model/optim.js';
import { TrainSchema } from '../src/config/schema.js';

tf.enableProdMode();
const status = registerCpuNative();

function native(name: string, fn: (t: TestContext) => Promise<void>): void {
  test(name, async (t) => {
    if (!status.ok) {
      t.skip(`cpu-native unavailable: ${status.reason}`);
      return;
    }
    await fn(t);
  });
}

/** How often each named kernel ran natively so far. */
const ran = (a: string, b: string): [number, number] => [
  nativeKernelCalls()[a]?.native ?? 0,
  nativeKernelCalls()[b]?.native ?? 0,
];

/** Every output of f on `backend`, copied out. */
async function on(backend: string, f: () => tf.Tensor[]): Promise<Float32Array[]> {
  assert.ok(await tf.setBackend(backend));
  return tf.tidy(() => f().map((t) => t.dataSync().slice() as Float32Array)) as unknown as Float32Array[];
}

function assertClose(what: string, a: Float32Array, b: Float32Array, rel = 2e-5, floor = 1e-6): void {
  assert.equal(a.length, b.length, `${what}: size`);
  let scale = 0;
  for (const v of b) scale = Math.max(scale, Math.abs(v));
  for (let i = 0; i < a.length; i++) {
    const x = a[i] as number;
    const y = b[i] as number;
    if (Number.isNaN(y)) {
      assert.ok(Number.isNaN(x), `${what}: element ${i} is ${x}, expected NaN`);
      continue;
    }
    assert.ok(
      Math.abs(x - y) <= rel * scale + floor,
      `${what}: element ${i} is ${x}, expected ${y} (scale ${scale})`,
    );
  }
}

interface GnCase {
  shape: [number, number, number, number];
  groups: number;
  /** Inputs around this value: a large mean tests the variance against cancellation. */
  offset?: number;
  /** Absolute tolerance floor. */
  floor?: number;
}

const GN: GnCase[] = [
  { shape: [2, 8, 8, 32], groups: 8 },
  { shape: [3, 5, 7, 12], groups: 3 },
  // One-element groups: x̂ = 0, and dx = 0 up to rounding of terms of size |γ·dy|/√ε ≈ 300.
  { shape: [1, 1, 1, 8], groups: 8, floor: 1e-4 },
  { shape: [2, 4, 4, 6], groups: 1 },
  { shape: [2, 6, 6, 16], groups: 4, offset: 1000 },
];

native('fused GroupNorm(+SiLU) and its gradients match the composed ops on cpu', async () => {
  for (const [ci, c] of GN.entries()) {
    const [b, h, w, ch] = c.shape;
    const x = uniform(b * h * w * ch, 10 + ci, 1, c.offset ?? 0);
    const gamma = uniform(ch, 20 + ci, 0.5, 1);
    const beta = uniform(ch, 30 + ci, 0.5);
    const dy = uniform(x.length, 40 + ci);
    for (const act of [true, false]) {
      const f = () => {
        const p: Params = new Map([
          ['n.gamma', tf.tensor1d(gamma)],
          ['n.beta', tf.tensor1d(beta)],
        ]);
        const xt = tf.tensor4d(x, c.shape);
        const fn = (xx: tf.Tensor, g: tf.Tensor, bb: tf.Tensor): tf.Tensor => {
          const q: Params = new Map([
            ['n.gamma', g],
            ['n.beta', bb],
          ]);
          const y = (act ? groupNormSilu : groupNorm)(q, 'n', xx as tf.Tensor4D, c.groups);
          return tf.sum(tf.mul(y, tf.tensor(dy, c.shape)));
        };
        const y = (act ? groupNormSilu : groupNorm)(p, 'n', xt, c.groups);
        const grads = tf.grads(fn)([xt, p.get('n.gamma') as tf.Tensor, p.get('n.beta') as tf.Tensor]);
        return [y, ...grads];
      };
      const what = `${act ? 'groupNormSilu' : 'groupNorm'} ${JSON.stringify(c)}`;
      const expected = await on('cpu', f);
      const before = ran(GROUP_NORM, GROUP_NORM_GRAD);
      const actual = await on('cpu-native', f);
      const after = ran(GROUP_NORM, GROUP_NORM_GRAD);
      assert.ok(after[0] > before[0] && after[1] > before[1], `${what}: the fused kernels did not run`);
      ['y', 'dx', 'dgamma', 'dbeta'].forEach((name, k) =>
        assertClose(
          `${what}: ${name}`,
          actual[k] as Float32Array,
          expected[k] as Float32Array,
          c.offset ? 2e-3 : 2e-5,
          c.floor,
        ),
      );
    }
  }
});

native('fused GroupNorm propagates NaN to its group, as the composition does', async () => {
  const x = uniform(2 * 4 * 4 * 8, 5);
  x[3] = NaN; // example 0, channel 3: group 1 of 4
  const f = () => {
    const p: Params = new Map([
      ['n.gamma', tf.ones([8])],
      ['n.beta', tf.zeros([8])],
    ]);
    return [groupNormSilu(p, 'n', tf.tensor4d(x, [2, 4, 4, 8]), 4)];
  };
  const [ours] = await on('cpu-native', f);
  const [theirs] = await on('cpu', f);
  for (let i = 0; i < x.length; i++) {
    const nan = i < 4 * 4 * 8 && (i % 8) >> 1 === 1;
    assert.equal(Number.isNaN(ours?.[i]), nan, `element ${i}: NaN expected ${nan}`);
    assert.equal(Number.isNaN(theirs?.[i]), nan, `composition, element ${i}`);
  }
});

/** Two identical states with a few parameters of awkward sizes. */
function freshState(): TrainState {
  const p: Params = new Map();
  [[3], [5, 7], [65537], [2, 3, 4, 5]].forEach((shape, i) => {
    p.set(
      `p${i}`,
      tf.tensor(
        uniform(
          shape.reduce((a, b) => a * b, 1),
          50 + i,
        ),
        shape,
      ),
    );
  });
  return initialState(p);
}

native('fused Adam/AdamW and EMA updates equal the composed ops bit for bit', async () => {
  const configs = [
    TrainSchema.parse({}),
    TrainSchema.parse({ weight_decay: 0.01, grad_clip: 0.5, beta1: 0.8, beta2: 0.95, adam_eps: 1e-6 }),
  ];
  for (const [ci, cfg] of configs.entries()) {
    const run = async (backend: string): Promise<Float32Array[]> => {
      assert.ok(await tf.setBackend(backend));
      const state = freshState();
      const norms: number[] = [];
      for (let step = 0; step < 4; step++) {
        const grads: Params = new Map(
          [...state.params].map(([n, t], i) => [n, tf.tensor(uniform(t.size, 100 * step + i, 3), t.shape)]),
        );
        norms.push(optimizerStep(state, grads, cfg).gradNorm);
        updateEma(state, cfg);
        state.step++;
        for (const g of grads.values()) g.dispose();
      }
      const out = [
        ...state.params.values(),
        ...state.m.values(),
        ...state.v.values(),
        ...state.ema.values(),
      ].map((t) => t.dataSync().slice() as Float32Array);
      disposeState(state);
      return out;
    };
    const theirs = await run('cpu');
    const before = ran(ADAM, EMA);
    const ours = await run('cpu-native');
    const after = ran(ADAM, EMA);
    assert.equal(after[0] - before[0], 4 * 4, 'fused Adam ran once per tensor and step');
    assert.equal(after[1] - before[1], 4 * 4, 'fused EMA ran once per tensor and step');
    ours.forEach((o, k) => assert.deepEqual(o, theirs[k], `config ${ci}: tensor ${k} differs`));
  }
});
