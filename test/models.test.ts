import * as tf from '@tensorflow/tfjs';
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { ModelSchema } from '../src/config/schema.js';
import type { ResolvedModelConfig as ModelConfig } from '../src/config/resolve.js';
import { createDenoiser } from '../src/model/nets/factory.js';
import { MLPDenoiser } from '../src/model/nets/mlp.js';
import type { Denoiser } from '../src/model/nets/denoiser.js';
import {
  conv2d,
  countSpecs,
  fnv1a32,
  groupNorm,
  initParams,
  timestepEmbedding,
  upsampleConv2d,
  upsampleNearest2x,
} from '../src/model/nets/layers.js';
import { countParams, disposeParams, sortedNames, type Params } from '../src/model/params.js';
import { UNet } from '../src/model/nets/unet.js';

await tf.setBackend('cpu');
tf.enableProdMode();

/** A model section as a resolved job has it (every test states num_classes). */
function modelConfig(raw: Record<string, unknown>): ModelConfig {
  const m = ModelSchema.parse(raw);
  if (m.num_classes === 'auto') throw new Error('test configs must state model.num_classes');
  return { ...m, num_classes: m.num_classes };
}

const anchor = (): ModelConfig =>
  modelConfig({
    num_classes: 0,
    kind: 'unet',
    channels: [32, 64, 128],
    res_blocks: 1,
    groups: 8,
    time_embed_dim: 128,
  });

/** A U-Net small enough for the pure-JS backend: 8×8 inputs, channels [8, 16]. */
const small = (over: Partial<ModelConfig> = {}): ModelConfig =>
  modelConfig({
    num_classes: 0,
    kind: 'unet',
    channels: [8, 16],
    res_blocks: 1,
    groups: 4,
    time_embed_dim: 16,
    ...over,
  });

function inputs(d: Denoiser, b: number): { x: tf.Tensor; t: tf.Tensor1D; y: tf.Tensor1D | null } {
  const x = tf.randomNormal([b, ...d.dataShape], 0, 1, 'float32', 1);
  const t = tf.tensor1d(
    Array.from({ length: b }, (_, i) => (i * 337) % 1000),
    'float32',
  );
  const y =
    d.numClasses > 0
      ? tf.tensor1d(
          Array.from({ length: b }, (_, i) => i % (d.numClasses + 1)),
          'int32',
        )
      : null;
  return { x, t, y };
}

async function equalParams(a: Params, b: Params): Promise<boolean> {
  if (sortedNames(a).join() !== sortedNames(b).join()) return false;
  for (const [name, ta] of a) {
    const va = await ta.data();
    const vb = await (b.get(name) as tf.Tensor).data();
    if (va.length !== vb.length || va.some((v, i) => !Object.is(v, vb[i]))) return false;
  }
  return true;
}

test('anchor U-Net has exactly the PyTorch parameter count 656,961', () => {
  const m = createDenoiser(anchor(), [32, 32, 1]) as UNet;
  assert.equal(countSpecs(m.specs), 656_961);
  const p = m.init(0);
  assert.equal(countParams(p), 656_961);
  const shape = (n: string): number[] => (p.get(n) as tf.Tensor).shape;
  assert.deepEqual(shape('time.lin1.kernel'), [32, 128]);
  assert.deepEqual(shape('conv_in.kernel'), [3, 3, 1, 32]);
  assert.deepEqual(shape('down.0.downsample.kernel'), [3, 3, 32, 32]);
  assert.deepEqual(shape('down.1.res.0.skip.kernel'), [1, 1, 32, 64]);
  assert.deepEqual(shape('mid.res.0.conv2.kernel'), [3, 3, 128, 128]);
  assert.deepEqual(shape('up.1.upsample.kernel'), [3, 3, 128, 64]);
  assert.deepEqual(shape('up.1.res.0.conv1.kernel'), [3, 3, 128, 64]);
  assert.deepEqual(shape('up.0.res.0.temb.kernel'), [128, 32]);
  assert.deepEqual(shape('out.conv.kernel'), [3, 3, 32, 1]);
  assert.equal(p.has('down.0.res.0.skip.kernel'), false, 'no skip conv when cin = cout');
  disposeParams(p);
});

test('anchor U-Net forward keeps the input shape', () => {
  const m = createDenoiser(anchor(), [32, 32, 1]);
  const p = m.init(1);
  const { x, t } = inputs(m, 1);
  const out = m.apply(p, x, t, null);
  assert.deepEqual(out.shape, [1, 32, 32, 1]);
  tf.dispose([x, t, out]);
  disposeParams(p);
});

test('output shape equals input shape (unet ± attention, ± classes; mlp ± classes)', () => {
  const cases: [ModelConfig, number[]][] = [
    [small(), [8, 8, 1]],
    [small({ attention_resolutions: [8, 4], attention_heads: 2 }), [8, 8, 3]],
    [small({ num_classes: 3, res_blocks: 2, attention_resolutions: [4] }), [8, 8, 2]],
    [small({ channels: [8, 8, 16] }), [8, 4, 1]],
    [small({ channels: [8] }), [5, 3, 1]],
    [modelConfig({ num_classes: 0, kind: 'mlp' }), [2]],
    [modelConfig({ kind: 'mlp', num_classes: 8, hidden: 32, layers: 2 }), [2]],
  ];
  for (const [cfg, shape] of cases) {
    const m = createDenoiser(cfg, shape);
    const p = m.init(3);
    // Perturb the zero-initialised output layer, so that a wrong shape cannot hide behind zeros.
    for (const [name, v] of p) if (name.startsWith('out.')) p.set(name, tf.onesLike(v));
    const { x, t, y } = inputs(m, 3);
    const out = m.apply(p, x, t, y);
    assert.deepEqual(out.shape, [3, ...shape], JSON.stringify(cfg));
    assert.ok(out.dataSync().every(Number.isFinite));
    // A conditional model also runs with y = null (all null class).
    if (y !== null) tf.dispose(m.apply(p, x, t, null));
    tf.dispose([x, t, out, ...(y ? [y] : [])]);
    disposeParams(p);
  }
});

test('init is a pure function of (seed, name)', async () => {
  const m = createDenoiser(small({ attention_resolutions: [4], num_classes: 2 }), [8, 8, 1]) as UNet;
  const a = m.init(7);
  const b = m.init(7);
  assert.ok(await equalParams(a, b), 'same seed ⇒ bit-identical');
  const reversed = initParams(7, [...m.specs].reverse());
  assert.ok(await equalParams(a, reversed), 'independent of creation order');
  const c = m.init(8);
  for (const [name, ta] of a) {
    const random = !/\.(gamma|beta)$/.test(name) && !name.startsWith('out.conv');
    const same = tf.tidy(() => tf.all(tf.equal(ta, c.get(name) as tf.Tensor)).dataSync()[0] === 1);
    assert.equal(same, !random, `${name}: different seeds should ${random ? 'differ' : 'agree'}`);
  }
  // A tensor does not depend on which other layers exist.
  const plain = createDenoiser(small(), [8, 8, 1]).init(7);
  for (const [name, t] of plain) {
    assert.ok(await equalParams(new Map([[name, t]]), new Map([[name, a.get(name) as tf.Tensor]])), name);
  }
  // PyTorch-default bounds: uniform(±1/√fan_in).
  const k = await (a.get('up.0.res.0.conv1.kernel') as tf.Tensor).data();
  const bound = 1 / Math.sqrt(3 * 3 * 16);
  assert.ok(k.every((v) => Math.abs(v) <= bound));
  assert.ok(Math.max(...k.map(Math.abs)) > 0.9 * bound);
  assert.ok(
    (await (a.get('out.conv.kernel') as tf.Tensor).data()).every((v) => v === 0),
    'zero-init output',
  );
  for (const p of [a, b, c, reversed, plain]) disposeParams(p);
});

test('names are unique, hierarchical, sorted and on distinct rng streams', () => {
  const models: Denoiser[] = [
    createDenoiser(
      modelConfig({
        kind: 'unet',
        channels: [32, 64, 128, 256],
        res_blocks: 3,
        attention_resolutions: [16, 8],
        num_classes: 10,
      }),
      [64, 64, 3],
    ),
    createDenoiser(modelConfig({ kind: 'mlp', num_classes: 8, layers: 6 }), [2]),
  ];
  const re = /^[a-z_]+(\.[a-z0-9_]+)*\.(kernel|bias|gamma|beta|table)$/;
  for (const m of models) {
    const specs = (m as UNet | MLPDenoiser).specs;
    const names = specs.map((s) => s.name);
    assert.equal(new Set(names).size, names.length);
    assert.equal(new Set(names.map(fnv1a32)).size, names.length);
    for (const n of names) assert.match(n, re);
  }
  const unet = (models[0] as UNet).specs.map((s) => s.name);
  for (const n of [
    'time.lin1.kernel',
    'time.lin2.bias',
    'class_embed.table',
    'conv_in.kernel',
    'down.0.res.2.conv1.kernel',
    'down.2.attn.2.qkv.kernel',
    'mid.attn.2.qkv.kernel',
    'down.2.downsample.kernel',
    'mid.res.0.norm1.gamma',
    'up.1.upsample.kernel',
    'up.1.res.0.skip.kernel',
    'up.2.attn.0.proj.bias',
    'up.0.res.2.norm2.beta',
    'out.norm.gamma',
    'out.conv.bias',
  ])
    assert.ok(unet.includes(n), n);
  assert.ok(!unet.some((n) => n.startsWith('down.0.attn')), 'no attention at 64 px');
  const p = createDenoiser(small(), [8, 8, 1]).init(0);
  assert.deepEqual([...p.keys()], sortedNames(p));
  disposeParams(p);
});

/** Gradient of a squared-error loss w.r.t. every parameter of `m`. */
function gradsOf(m: Denoiser, p: Params, b: number): { name: string; g: Float32Array }[] {
  const names = sortedNames(p);
  const { x, t, y } = inputs(m, b);
  const target = tf.randomNormal(x.shape, 0, 1, 'float32', 2);
  const f = (...ts: tf.Tensor[]): tf.Scalar => {
    const q: Params = new Map(names.map((n, i) => [n, ts[i] as tf.Tensor]));
    return tf.mean(tf.square(tf.sub(m.apply(q, x, t, y), target)));
  };
  const { value, grads } = tf.valueAndGrads(f)(names.map((n) => p.get(n) as tf.Tensor));
  assert.ok(Number.isFinite(value.dataSync()[0]));
  const out = names.map((name, i) => {
    const g = grads[i] as tf.Tensor;
    assert.deepEqual(g.shape, (p.get(name) as tf.Tensor).shape, name);
    return { name, g: g.dataSync() as Float32Array };
  });
  tf.dispose([x, t, target, value, ...grads, ...(y ? [y] : [])]);
  return out;
}

/** Replaces the zero-initialised output layer: with it, every other gradient is exactly 0. */
function unzeroOutput(p: Params): void {
  for (const [name, v] of p) {
    if (name.startsWith('out.') && !name.startsWith('out.norm')) {
      p.set(name, tf.randomUniform(v.shape, -0.3, 0.3, 'float32', 5));
      v.dispose();
    }
  }
}

test('gradients reach every U-Net parameter and are finite', () => {
  const m = createDenoiser(
    small({ attention_resolutions: [4], attention_heads: 2, num_classes: 3 }),
    [8, 8, 1],
  );
  const p = m.init(11);
  const atInit = gradsOf(m, p, 2);
  for (const { name, g } of atInit) {
    assert.ok(g.every(Number.isFinite), name);
    if (!name.startsWith('out.conv'))
      assert.ok(
        g.every((v) => v === 0),
        `${name}: zero output layer blocks gradients`,
      );
  }
  unzeroOutput(p);
  const grads = gradsOf(m, p, 2);
  for (const { name, g } of grads) {
    assert.ok(g.every(Number.isFinite), `${name}: finite`);
    assert.ok(
      g.some((v) => v !== 0),
      `${name}: non-zero`,
    );
  }
  disposeParams(p);
});

test('gradients reach every MLP parameter and are finite', () => {
  const m = createDenoiser(
    modelConfig({ kind: 'mlp', hidden: 16, layers: 2, time_embed_dim: 16, num_classes: 2 }),
    [2],
  );
  const p = m.init(5);
  unzeroOutput(p);
  for (const { name, g } of gradsOf(m, p, 4)) {
    assert.ok(g.every(Number.isFinite), `${name}: finite`);
    assert.ok(
      g.some((v) => v !== 0),
      `${name}: non-zero`,
    );
  }
  disposeParams(p);
});

test('apply inside tf.tidy leaks no tensors', () => {
  for (const [cfg, shape] of [
    [small({ attention_resolutions: [8], num_classes: 2 }), [8, 8, 1]],
    [modelConfig({ kind: 'mlp', num_classes: 2 }), [2]],
  ] as [ModelConfig, number[]][]) {
    const m = createDenoiser(cfg, shape);
    const p = m.init(0);
    const { x, t, y } = inputs(m, 2);
    const before = tf.memory().numTensors;
    tf.tidy(() => {
      m.apply(p, x, t, y);
      m.apply(p, x, t, null);
    });
    assert.equal(tf.memory().numTensors, before);
    tf.dispose([x, t, ...(y ? [y] : [])]);
    disposeParams(p);
  }
});

test('stride-2 conv samples like PyTorch padding=1 (centres on even pixels)', () => {
  // A kernel that copies its centre tap: PyTorch's Conv2d(3, stride=2, padding=1) then yields x[::2, ::2].
  const kernel = tf.tensor4d([0, 0, 0, 0, 1, 0, 0, 0, 0], [3, 3, 1, 1]);
  const p: Params = new Map([
    ['c.kernel', kernel],
    ['c.bias', tf.zeros([1])],
  ]);
  const x = tf.tensor4d(
    Array.from({ length: 36 }, (_, i) => i),
    [1, 6, 6, 1],
  );
  const y = conv2d(p, 'c', x, 2);
  assert.deepEqual(y.shape, [1, 3, 3, 1]);
  assert.deepEqual([...y.dataSync()], [0, 2, 4, 12, 14, 16, 24, 26, 28]);
  tf.dispose([kernel, x, y, ...p.values()]);
});

test('upsampleConv2d equals a 3×3 conv of the nearest ×2 upsampled input, values and gradients', () => {
  for (const [i, shape] of (
    [
      [2, 5, 7, 6],
      [1, 1, 1, 3],
      [3, 4, 4, 8],
    ] as Array<[number, number, number, number]>
  ).entries()) {
    const cout = 5 + i;
    const x = tf.randomNormal(shape, 0, 1, 'float32', 10 + i) as tf.Tensor4D;
    const k = tf.randomNormal([3, 3, shape[3], cout], 0, 0.3, 'float32', 20 + i);
    const b = tf.randomNormal([cout], 0, 1, 'float32', 30 + i);
    const dy = tf.randomNormal([shape[0], 2 * shape[1], 2 * shape[2], cout], 0, 1, 'float32', 40 + i);
    const run = (f: (p: Params, x: tf.Tensor4D) => tf.Tensor4D) =>
      tf.grads((xx: tf.Tensor, kk: tf.Tensor, bb: tf.Tensor) => {
        const q: Params = new Map([
          ['u.kernel', kk],
          ['u.bias', bb],
        ]);
        return tf.sum(tf.mul(f(q, xx as tf.Tensor4D), dy));
      })([x, k, b]);
    const p: Params = new Map([
      ['u.kernel', k],
      ['u.bias', b],
    ]);
    const want = conv2d(p, 'u', upsampleNearest2x(x));
    const got = upsampleConv2d(p, 'u', x);
    const gWant = run((q, xx) => conv2d(q, 'u', upsampleNearest2x(xx)));
    const gGot = run((q, xx) => upsampleConv2d(q, 'u', xx));
    for (const [what, a, e] of [
      ['y', got, want],
      ['dx', gGot[0], gWant[0]],
      ['dkernel', gGot[1], gWant[1]],
      ['dbias', gGot[2], gWant[2]],
    ] as Array<[string, tf.Tensor, tf.Tensor]>) {
      assert.deepEqual(a.shape, e.shape, `${JSON.stringify(shape)} ${what}: shape`);
      const scale = tf.max(tf.abs(e)).dataSync()[0] as number;
      const err = tf.max(tf.abs(tf.sub(a, e))).dataSync()[0] as number;
      assert.ok(
        err <= 1e-5 * scale + 1e-6,
        `${JSON.stringify(shape)} ${what}: max error ${err} (scale ${scale})`,
      );
    }
    tf.dispose([x, k, b, dy, want, got, ...gWant, ...gGot]);
  }
});

test('nearest ×2 upsampling, GroupNorm and timestep embedding match their definitions', () => {
  const x = tf.tensor4d([1, 2, 3, 4, 5, 6, 7, 8], [1, 2, 2, 2]);
  const u = upsampleNearest2x(x);
  assert.deepEqual(u.shape, [1, 4, 4, 2]);
  const ch0 = tf.tidy(() => [...tf.slice(u, [0, 0, 0, 0], [1, 4, 4, 1]).dataSync()]);
  assert.deepEqual(ch0, [1, 1, 3, 3, 1, 1, 3, 3, 5, 5, 7, 7, 5, 5, 7, 7]);

  const p: Params = new Map([
    ['n.gamma', tf.ones([4])],
    ['n.beta', tf.zeros([4])],
  ]);
  const z = tf.randomNormal([2, 3, 3, 4], 3, 2, 'float32', 4) as tf.Tensor4D;
  const n = groupNorm(p, 'n', z, 2);
  // Each (example, group) slab has mean 0 and variance 1.
  const r = tf.reshape(n, [2, 9, 2, 2]);
  const { mean, variance } = tf.moments(r, [1, 3]);
  for (const v of mean.dataSync()) assert.ok(Math.abs(v) < 1e-5);
  for (const v of variance.dataSync()) assert.ok(Math.abs(v - 1) < 1e-3);

  const e = timestepEmbedding(tf.tensor1d([0, 10]), 8);
  const ev = e.dataSync();
  assert.deepEqual([...ev.slice(0, 8)], [0, 0, 0, 0, 1, 1, 1, 1]);
  const f2 = Math.exp((-Math.log(10000) * 2) / 4);
  assert.ok(Math.abs((ev[8 + 2] as number) - Math.sin(10 * f2)) < 1e-6);
  assert.ok(Math.abs((ev[8 + 4 + 2] as number) - Math.cos(10 * f2)) < 1e-6);
  tf.dispose([x, u, z, n, r, mean, variance, e, ...p.values()]);
});

test('factory rejects inconsistent configs with one-line errors naming the key', () => {
  const cases: [ModelConfig, number[], RegExp][] = [
    [small({ channels: [12, 24], groups: 8 }), [8, 8, 1], /^model\.groups: 8 does not divide channels 12$/],
    [
      small({ channels: [8, 16, 32] }),
      [6, 6, 1],
      /^model\.channels: 3 levels need image sides divisible by 4, got 6×6$/,
    ],
    [small(), [2], /^model\.kind: unet needs image examples \[H, W, C\], got \[2\]/],
    [modelConfig({ num_classes: 0, kind: 'mlp' }), [8, 8, 1], /^model\.kind: mlp needs 1-D examples/],
    [
      small({ attention_resolutions: [7] }),
      [8, 8, 1],
      /^model\.attention_resolutions: 7 is not a U-Net resolution/,
    ],
    [
      small({ attention_resolutions: [4], attention_heads: 3 }),
      [8, 8, 1],
      /^model\.attention_heads: 3 does not divide channels 16/,
    ],
  ];
  for (const [cfg, shape, re] of cases) {
    assert.throws(
      () => createDenoiser(cfg, shape),
      (err: unknown) => err instanceof Error && re.test(err.message) && !err.message.includes('\n'),
      re.source,
    );
  }
  const m = createDenoiser(small(), [8, 8, 1]);
  const p = m.init(0);
  assert.throws(
    () => m.apply(p, tf.zeros([2, 4, 4, 1]), tf.zeros([2]) as tf.Tensor1D, null),
    /expected \[B, 8, 8, 1\]/,
  );
  assert.throws(
    () =>
      m.apply(p, tf.zeros([2, 8, 8, 1]), tf.zeros([2]) as tf.Tensor1D, tf.zeros([2], 'int32') as tf.Tensor1D),
    /unconditional/,
  );
  disposeParams(p);
});
