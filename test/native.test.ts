/**
 * The `cpu-native` kernels against TF.js's pure-JS `cpu` kernels, on random inputs at the shapes
 * the U-Net uses. Tolerance: max|a − b| ≤ 1e-4·max|b| + 1e-5 (sgemm sums in another order).
 */
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import * as tf from '@tensorflow/tfjs';
import {
  nativeBufferStats,
  nativeKernelCalls,
  nativeThreads,
  registerCpuNative,
  setNativeThreads,
  trimNativeBuffers,
} from '../src/model/backend/native.js';
import { groupNorm, silu, upsampleNearest2x } from '../src/model/nets/layers.js';
import type { Params } from '../src/model/params.js';

tf.enableProdMode();
const status = registerCpuNative();
const SKIP = `cpu-native unavailable: ${status.reason}`;

/** Runs the test body only when the addon loaded; otherwise marks it skipped, with why. */
function native(name: string, fn: (t: TestContext) => Promise<void> | void): void {
  test(name, async (t) => {
    if (!status.ok) {
      t.skip(SKIP);
      return;
    }
    await fn(t);
  });
}

const size = (shape: readonly number[]): number => shape.reduce((p, d) => p * d, 1);

/** Deterministic N(0,1)-ish data (mulberry32 + Box-Muller), so failures reproduce. */
function randn(n: number, seed: number, scale = 1): Float32Array {
  let s = seed >>> 0;
  const u = () => {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return (((t ^ (t >>> 14)) >>> 0) + 0.5) / 4294967296;
  };
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) out[i] = scale * Math.sqrt(-2 * Math.log(u())) * Math.cos(2 * Math.PI * u());
  return out;
}

interface Out {
  shape: number[];
  data: Float32Array;
}

/** Evaluates f on a backend and copies every output out (tensors are disposed). */
async function on(backend: string, f: () => tf.Tensor | tf.Tensor[]): Promise<Out[]> {
  assert.ok(await tf.setBackend(backend));
  const outs: Out[] = [];
  tf.tidy(() => {
    const r = f();
    for (const t of Array.isArray(r) ? r : [r])
      outs.push({ shape: t.shape, data: Float32Array.from(t.dataSync()) });
  });
  return outs;
}

function assertClose(actual: Out[], expected: Out[], what: string): void {
  assert.equal(actual.length, expected.length, `${what}: number of outputs`);
  expected.forEach((e, k) => {
    const a = actual[k] as Out;
    assert.deepEqual(a.shape, e.shape, `${what}[${k}]: shape`);
    let diff = 0;
    let ref = 0;
    for (let i = 0; i < e.data.length; i++) {
      const av = a.data[i] as number;
      const ev = e.data[i] as number;
      if (av === ev || (Number.isNaN(av) && Number.isNaN(ev))) continue;
      // Non-finite values must match exactly (NaN for NaN, the same infinity).
      assert.ok(Number.isFinite(av) && Number.isFinite(ev), `${what}[${k}]: ${av} vs ${ev} at ${i}`);
      diff = Math.max(diff, Math.abs(av - ev));
    }
    for (const v of e.data) if (Number.isFinite(v)) ref = Math.max(ref, Math.abs(v));
    assert.ok(diff <= 1e-4 * ref + 1e-5, `${what}[${k}]: max|a-b| = ${diff} > 1e-4·${ref} + 1e-5`);
  });
}

/**
 * f on cpu-native equals f on cpu, and the cpu-native run went through the addon for each of
 * `kernels` (or through the JS fallback, when `path` says so): a comparison that silently ran
 * JS on both sides would prove nothing.
 */
async function same(
  what: string,
  f: () => tf.Tensor | tf.Tensor[],
  kernels: string[],
  path: 'native' | 'fallback' = 'native',
): Promise<void> {
  const expected = await on('cpu', f);
  const before = nativeKernelCalls();
  const actual = await on('cpu-native', f);
  const after = nativeKernelCalls();
  assertClose(actual, expected, what);
  for (const k of kernels) {
    const ran = (after[k]?.[path] ?? 0) - (before[k]?.[path] ?? 0);
    assert.ok(ran > 0, `${what}: ${k} did not run on the ${path} path`);
  }
}

type Pad =
  'same' | 'valid' | number | [[number, number], [number, number], [number, number], [number, number]];

interface ConvCase {
  x: [number, number, number, number];
  k: [number, number];
  cout: number;
  stride: number | [number, number];
  pad: Pad;
  dilation?: number | [number, number];
}

// The U-Net's channel steps (1→32, 32→64, 64→128, 128→64, 64→32, 32→1) at small spatial sizes,
// plus each code path of the addon: pointwise 1×1, strided 1×1, stride 2 (col2im gather), odd
// sizes, explicit and numeric padding, dilation, non-square filters and strides.
const CONVS: ConvCase[] = [
  { x: [2, 8, 8, 1], k: [3, 3], cout: 32, stride: 1, pad: 'same' },
  { x: [2, 8, 8, 32], k: [3, 3], cout: 64, stride: 1, pad: 'same' },
  { x: [2, 8, 8, 32], k: [3, 3], cout: 32, stride: 2, pad: 'same' },
  { x: [1, 9, 9, 64], k: [3, 3], cout: 128, stride: 2, pad: 'valid' },
  {
    x: [2, 6, 6, 128],
    k: [3, 3],
    cout: 64,
    stride: 1,
    pad: [
      [0, 0],
      [1, 2],
      [2, 0],
      [0, 0],
    ],
  },
  { x: [3, 8, 8, 64], k: [3, 3], cout: 32, stride: 1, pad: 'same' },
  { x: [2, 8, 8, 32], k: [3, 3], cout: 1, stride: 1, pad: 'same' },
  { x: [3, 7, 6, 32], k: [1, 1], cout: 64, stride: 1, pad: 'valid' },
  { x: [2, 8, 8, 16], k: [1, 1], cout: 8, stride: 2, pad: 'same' },
  { x: [2, 10, 10, 8], k: [3, 3], cout: 16, stride: 1, pad: 'same', dilation: 2 },
  { x: [1, 11, 9, 4], k: [3, 3], cout: 6, stride: 1, pad: 'valid', dilation: [2, 1] },
  { x: [2, 10, 9, 8], k: [3, 2], cout: 4, stride: [2, 1], pad: 'valid' },
  { x: [1, 5, 5, 3], k: [5, 5], cout: 2, stride: 1, pad: 2 },
  { x: [1, 7, 7, 5], k: [3, 3], cout: 3, stride: 3, pad: 'same' },
  // Thin convolutions (one input or one output channel) take direct loops instead of GEMMs.
  { x: [2, 9, 8, 1], k: [3, 3], cout: 8, stride: 2, pad: 'same' },
  { x: [2, 9, 9, 1], k: [3, 2], cout: 5, stride: 1, pad: 'valid', dilation: [1, 2] },
  { x: [2, 8, 9, 16], k: [3, 3], cout: 1, stride: 2, pad: 'valid' },
  { x: [1, 7, 7, 12], k: [3, 3], cout: 1, stride: 1, pad: 'same', dilation: 2 },
  { x: [2, 6, 7, 1], k: [3, 3], cout: 1, stride: 1, pad: 'same' },
  { x: [1, 6, 6, 1], k: [1, 1], cout: 4, stride: 1, pad: 'valid' },
];

function label(c: ConvCase): string {
  const pad = Array.isArray(c.pad) ? JSON.stringify(c.pad) : String(c.pad);
  return `x${JSON.stringify(c.x)} k${c.k.join('x')}→${c.cout} s${c.stride} pad ${pad} d${c.dilation ?? 1}`;
}

function convTensors(c: ConvCase, seed: number): { x: tf.Tensor4D; w: tf.Tensor4D } {
  const [n, h, w, cin] = c.x;
  const x = tf.tensor4d(randn(n * h * w * cin, seed), c.x);
  const wShape: [number, number, number, number] = [c.k[0], c.k[1], cin, c.cout];
  const filter = tf.tensor4d(randn(size(wShape), seed + 1, 1 / Math.sqrt(c.k[0] * c.k[1] * cin)), wShape);
  return { x, w: filter };
}

native('Conv2D matches cpu', async () => {
  for (const [i, c] of CONVS.entries()) {
    await same(
      `conv2d ${label(c)}`,
      () => {
        const { x, w } = convTensors(c, 100 + i);
        return tf.conv2d(x, w, c.stride, c.pad, 'NHWC', c.dilation ?? 1);
      },
      [tf.Conv2D],
    );
  }
});

native('Conv2DBackpropInput and Conv2DBackpropFilter match cpu', async () => {
  // TF.js's conv gradients (and these kernels' attrs) have no dilations.
  for (const [i, c] of CONVS.filter((cc) => (cc.dilation ?? 1) === 1).entries()) {
    await same(
      `backprop ${label(c)}`,
      () => {
        const { x, w } = convTensors(c, 200 + i);
        const y = tf.conv2d(x, w, c.stride, c.pad);
        const dy = tf.tensor(randn(y.size, 300 + i), y.shape);
        const attrs = { strides: c.stride, pad: c.pad, dataFormat: 'NHWC' } as unknown as tf.NamedAttrMap;
        const dx = tf
          .engine()
          .runKernel(tf.Conv2DBackpropInput, { dy, filter: w }, { ...attrs, inputShape: c.x });
        const dw = tf
          .engine()
          .runKernel(tf.Conv2DBackpropFilter, { x, dy }, { ...attrs, filterShape: w.shape });
        return [dx as tf.Tensor, dw as tf.Tensor];
      },
      [tf.Conv2DBackpropInput, tf.Conv2DBackpropFilter],
    );
  }
});

native('FusedConv2D (bias, activations) matches cpu, including fallbacks', async () => {
  const acts: Array<{ activation: tf.fused.Activation; leakyreluAlpha?: number; prelu?: boolean }> = [
    { activation: 'linear' },
    { activation: 'relu' },
    { activation: 'relu6' },
    { activation: 'elu' },
    { activation: 'sigmoid' },
    { activation: 'leakyrelu', leakyreluAlpha: 0.15 },
    { activation: 'prelu', prelu: true },
  ];
  const picks = [CONVS[1], CONVS[2], CONVS[7], CONVS[4]] as ConvCase[];
  let seed = 400;
  for (const c of picks) {
    for (const a of acts) {
      for (const biasKind of ['channel', 'scalar', 'none', 'spatial'] as const) {
        seed += 3;
        const s = seed;
        await same(
          `fused ${label(c)} ${a.activation} bias ${biasKind}`,
          () => {
            const { x, w } = convTensors(c, s);
            const y = tf.conv2d(x, w, c.stride, c.pad);
            const ow = y.shape[2];
            // 'spatial' broadcasts along width: the addon declines it and the JS kernel runs.
            const bias =
              biasKind === 'channel'
                ? tf.tensor1d(randn(c.cout, s + 1))
                : biasKind === 'scalar'
                  ? tf.tensor1d([0.3])
                  : biasKind === 'spatial'
                    ? tf.tensor(randn(ow, s + 1), [ow, 1])
                    : undefined;
            const preluActivationWeights = a.prelu ? tf.tensor1d(randn(c.cout, s + 2, 0.2)) : undefined;
            return tf.fused.conv2d({
              x,
              filter: w,
              strides: c.stride,
              pad: c.pad,
              bias,
              activation: a.activation,
              leakyreluAlpha: a.leakyreluAlpha,
              preluActivationWeights,
            });
          },
          [tf.FusedConv2D],
          biasKind === 'spatial' ? 'fallback' : 'native',
        );
      }
    }
  }
});

interface MatCase {
  a: number[];
  b: number[];
  ta: boolean;
  tb: boolean;
}

// Dense layers of the U-Net ([B,32]·[32,128], [B,128]·[128,128]), thin and wide products that the
// addon splits by rows or by columns, every transpose, batched and broadcast batches.
const MATS: MatCase[] = [
  { a: [8, 32], b: [32, 128], ta: false, tb: false },
  { a: [8, 128], b: [128, 128], ta: false, tb: false },
  { a: [300, 64], b: [64, 200], ta: false, tb: false },
  { a: [4, 256], b: [256, 1200], ta: false, tb: false },
  { a: [64, 300], b: [64, 200], ta: true, tb: false },
  { a: [300, 64], b: [200, 64], ta: false, tb: true },
  { a: [64, 300], b: [200, 64], ta: true, tb: true },
  { a: [1, 7], b: [7, 1], ta: false, tb: false },
  { a: [3, 17, 33], b: [3, 33, 9], ta: false, tb: false },
  { a: [3, 33, 17], b: [3, 9, 33], ta: true, tb: true },
  { a: [2, 3, 17, 33], b: [33, 9], ta: false, tb: false },
  { a: [17, 33], b: [2, 3, 33, 9], ta: false, tb: false },
  { a: [1, 17, 33], b: [4, 33, 9], ta: false, tb: false },
  { a: [2, 3, 33, 17], b: [3, 33, 9], ta: true, tb: false },
  { a: [5, 0], b: [0, 4], ta: false, tb: false },
];

native('BatchMatMul matches cpu (transposes, batch broadcasting)', async () => {
  for (const [i, m] of MATS.entries()) {
    await same(
      `matMul ${JSON.stringify(m)}`,
      () => {
        const a = tf.tensor(randn(size(m.a), 500 + i), m.a);
        const b = tf.tensor(randn(size(m.b), 600 + i), m.b);
        return tf.matMul(a, b, m.ta, m.tb);
      },
      [tf.BatchMatMul],
    );
  }
  await same(
    'matMul int32',
    () =>
      tf.matMul(
        tf.tensor2d([1, 2, 3, 4, 5, 6], [2, 3], 'int32'),
        tf.tensor2d([1, 0, 2, 1, 0, 3], [3, 2], 'int32'),
      ),
    [tf.BatchMatMul],
    'fallback',
  );
});

native('_FusedMatMul (bias, activations) matches cpu', async () => {
  const acts: tf.fused.Activation[] = ['linear', 'relu', 'sigmoid', 'elu', 'relu6', 'leakyrelu', 'prelu'];
  for (const [i, m] of MATS.slice(0, 10).entries()) {
    for (const [j, activation] of acts.entries()) {
      const seed = 700 + 10 * i + j;
      await same(
        `fused.matMul ${JSON.stringify(m)} ${activation}`,
        () => {
          const a = tf.tensor(randn(size(m.a), seed), m.a);
          const b = tf.tensor(randn(size(m.b), seed + 1), m.b);
          const n = m.tb ? (m.b[m.b.length - 2] as number) : (m.b[m.b.length - 1] as number);
          const rows = m.ta ? (m.a[m.a.length - 1] as number) : (m.a[m.a.length - 2] as number);
          // Alternate per-column, scalar and per-row (JS fallback) biases.
          const bias = [
            tf.tensor1d(randn(n, seed + 2)),
            tf.scalar(-0.25),
            tf.tensor2d(randn(rows, seed + 2), [rows, 1]),
          ][j % 3];
          const preluActivationWeights =
            activation === 'prelu' ? tf.tensor1d(randn(n, seed + 3, 0.2)) : undefined;
          return tf.fused.matMul({
            a,
            b,
            transposeA: m.ta,
            transposeB: m.tb,
            bias,
            activation,
            leakyreluAlpha: 0.1,
            preluActivationWeights,
          });
        },
        [tf._FusedMatMul],
        // A [rows, 1] bias with rows > 1 is per-row: the addon declines it.
        j % 3 === 2 && (m.ta ? m.a[m.a.length - 1] : m.a[m.a.length - 2]) !== 1 ? 'fallback' : 'native',
      );
    }
  }
});

native('gradients through conv2d, fused conv2d and fused matMul on cpu-native equal cpu', async () => {
  const cases = [CONVS[1], CONVS[2], CONVS[4], CONVS[7]] as ConvCase[];
  for (const [i, c] of cases.entries()) {
    await same(
      `grad conv2d ${label(c)}`,
      () => {
        const { x, w } = convTensors(c, 800 + i);
        const bias = tf.tensor1d(randn(c.cout, 850 + i));
        const loss = (xx: tf.Tensor, ww: tf.Tensor, bb: tf.Tensor) => {
          // A linear fused conv keeps the FusedConv2D kernel under gradients; relu does not fuse.
          const y = tf.fused.conv2d({
            x: xx as tf.Tensor4D,
            filter: ww as tf.Tensor4D,
            strides: c.stride,
            pad: c.pad,
            bias: bb,
          });
          const z = tf.relu(tf.conv2d(xx as tf.Tensor4D, ww as tf.Tensor4D, c.stride, c.pad));
          return tf.add(y.square().mean(), z.sin().sum());
        };
        return tf.grads(loss)([x, w, bias]);
      },
      [tf.FusedConv2D, tf.Conv2D, tf.Conv2DBackpropInput, tf.Conv2DBackpropFilter],
    );
  }
  await same(
    'grad fused matMul',
    () => {
      const a = tf.tensor2d(randn(8 * 32, 900), [8, 32]);
      const b = tf.tensor2d(randn(32 * 128, 901), [32, 128]);
      const bias = tf.tensor1d(randn(128, 902));
      const loss = (aa: tf.Tensor, bb: tf.Tensor, cc: tf.Tensor) =>
        tf.fused
          .matMul({ a: aa as tf.Tensor2D, b: bb as tf.Tensor2D, bias: cc })
          .tanh()
          .sum();
      return tf.grads(loss)([a, b, bias]);
    },
    [tf._FusedMatMul, tf.BatchMatMul],
  );
});

native('NCHW convolutions fall back to the JS kernels', async () => {
  await same(
    'conv2d NCHW',
    () => {
      const x = tf.tensor4d(randn(2 * 4 * 6 * 6, 950), [2, 4, 6, 6]);
      const w = tf.tensor4d(randn(3 * 3 * 4 * 5, 951), [3, 3, 4, 5]);
      return tf.conv2d(x, w, 1, 'same', 'NCHW');
    },
    [tf.Conv2D],
    'fallback',
  );
});

native('results do not depend on the thread count and repeat bit for bit', async () => {
  const c: ConvCase = { x: [4, 16, 16, 32], k: [3, 3], cout: 64, stride: 1, pad: 'same' };
  const f = () => {
    const { x, w } = convTensors(c, 990);
    const y = tf.conv2d(x, w, 1, 'same');
    return tf
      .grads((xx: tf.Tensor, ww: tf.Tensor) =>
        tf
          .conv2d(xx as tf.Tensor4D, ww as tf.Tensor4D, 2, 'same')
          .square()
          .sum(),
      )([x, w])
      .concat(y);
  };
  const threads = status.threads;
  try {
    const a = await on('cpu-native', f);
    const b = await on('cpu-native', f);
    a.forEach((o, k) => assert.deepEqual(o.data, (b[k] as Out).data, `repeat, output ${k}`));
    setNativeThreads(1);
    assertClose(await on('cpu-native', f), a, 'one thread vs default');
  } finally {
    setNativeThreads(threads);
  }
});

native('broadcast binary ops match cpu', async () => {
  const pairs: Array<[number[], number[]]> = [
    [
      [2, 8, 8, 32],
      [2, 8, 8, 32],
    ],
    [
      [2, 8, 8, 4, 8],
      [2, 1, 1, 4, 1],
    ],
    [
      [2, 1, 1, 4, 1],
      [2, 8, 8, 4, 8],
    ],
    [[2, 8, 8, 32], [32]],
    [
      [2, 8, 8, 32],
      [2, 1, 1, 32],
    ],
    [
      [3, 1],
      [1, 4],
    ],
    [[4], [2, 3, 4]],
    [[2, 3, 4], []],
    [[], [5]],
    [[0, 3], [3]],
    [
      [64, 300],
      [64, 300],
    ],
  ];
  const ops: Array<[string, (a: tf.Tensor, b: tf.Tensor) => tf.Tensor]> = [
    [tf.Add, tf.add],
    [tf.Sub, tf.sub],
    [tf.Multiply, tf.mul],
    [tf.RealDiv, tf.div],
    [tf.SquaredDifference, tf.squaredDifference],
  ];
  for (const [i, [as, bs]] of pairs.entries()) {
    for (const [name, op] of ops) {
      await same(
        `${name} ${JSON.stringify(as)} ${JSON.stringify(bs)}`,
        () => op(tf.tensor(randn(size(as), 1000 + i), as), tf.tensor(randn(size(bs), 1100 + i), bs)),
        [name],
      );
    }
  }
});

native('Sum and Mean match cpu over any axes', async () => {
  const cases: Array<[number[], number | number[] | undefined, boolean]> = [
    [[2, 8, 8, 4, 8], [1, 2, 4], true],
    [[2, 8, 8, 32], [0, 1, 2], false],
    [[2, 8, 8, 32], -1, false],
    [[2, 8, 8, 32], undefined, false],
    [[2, 8, 8, 32], [0, 3], true],
    [[40, 1, 300], [0], false],
    [[5, 7], 1, true],
  ];
  for (const [i, [shape, axis, keepDims]] of cases.entries()) {
    const x = () => tf.tensor(randn(size(shape), 1200 + i), shape);
    const what = `${JSON.stringify(shape)} axis ${JSON.stringify(axis)} keepDims ${keepDims}`;
    await same(`sum ${what}`, () => tf.sum(x(), axis, keepDims), [tf.Sum]);
    await same(`mean ${what}`, () => tf.mean(x(), axis, keepDims), [tf.Mean]);
  }
});

native('Slice, SplitV, Tile and PadV2 match cpu', async () => {
  const x = () => tf.tensor4d(randn(2 * 5 * 6 * 7, 1300), [2, 5, 6, 7]);
  await same('slice', () => tf.slice(x(), [0, 1, 2, 3], [2, 3, 3, 4]), [tf.Slice]);
  await same('slice of last axis', () => tf.slice(x(), [1, 0, 0, 2], [1, -1, -1, 3]), [tf.Slice]);
  await same('split on channels', () => tf.split(x(), [3, 4], 3), [tf.SplitV]);
  await same('split on rows', () => tf.split(x(), [2, 3], 1), [tf.SplitV]);
  // A contiguous slice is a view into its input's buffer (byte offset ≠ 0) that kernels must honour.
  await same('ops on a sliced view', () => tf.mul(tf.slice(x(), [1, 0, 0, 0], [1, 5, 6, 7]), tf.scalar(2)), [
    tf.Multiply,
  ]);
  await same('tile', () => tf.tile(x(), [1, 2, 1, 3]), [tf.Tile]);
  await same('tile 1-D', () => tf.tile(tf.tensor1d([1, 2, 3]), [4]), [tf.Tile]);
  await same(
    'pad',
    () =>
      tf.pad(
        x(),
        [
          [0, 0],
          [1, 2],
          [0, 1],
          [0, 0],
        ],
        0.5,
      ),
    [tf.PadV2],
  );
});

native('Sigmoid and Square match cpu, including non-finite inputs', async () => {
  const data = Float32Array.from([
    ...randn(1000, 1400, 10),
    0,
    -0,
    88,
    -88,
    100,
    -100,
    Infinity,
    -Infinity,
    NaN,
  ]);
  await same('sigmoid', () => tf.sigmoid(tf.tensor1d(data)), [tf.Sigmoid]);
  await same('square', () => tf.square(tf.tensor1d(data)), [tf.Square]);
});

native('unary ops match cpu on ordinary and non-finite inputs', async () => {
  // 70k elements: several tasks of the addon's pool.
  const wide = randn(70_000, 1410, 3);
  const special = Float32Array.from([
    0, -0, 1e-30, -1e-30, 1, -1, 88, 88.7, 89, -87, -104, -110, 1e30, -1e30,
  ]);
  const nonFinite = Float32Array.from([Infinity, -Infinity, NaN, 0, -0, 5, -5]);
  const cases: Array<[string, string, (x: tf.Tensor) => tf.Tensor]> = [
    ['sqrt', tf.Sqrt, (x) => tf.sqrt(x)],
    ['rsqrt', tf.Rsqrt, (x) => tf.rsqrt(x)],
    ['neg', tf.Neg, (x) => tf.neg(x)],
    ['relu', tf.Relu, (x) => tf.relu(x)],
    ['exp', tf.Exp, (x) => tf.exp(x)],
    ['step', tf.Step, (x) => tf.step(x, 0.25)],
    ['abs', tf.Abs, (x) => tf.abs(x)],
    ['reciprocal', tf.Reciprocal, (x) => tf.reciprocal(x)],
    ['sigmoid', tf.Sigmoid, (x) => tf.sigmoid(x)],
    ['square', tf.Square, (x) => tf.square(x)],
    ['tanh', tf.Tanh, (x) => tf.tanh(x)],
  ];
  for (const [name, kernel, op] of cases) {
    // Separately, so that an infinity or a huge value does not set the tolerance of the rest.
    for (const [what, data] of [
      ['wide', wide],
      ['special', special],
      ['non-finite', nonFinite],
    ] as const) {
      await same(`${name} ${what}`, () => op(tf.tensor1d(data)), [kernel]);
    }
  }
  // exp over its whole finite range, element by element relative to the value itself.
  const xs = Float32Array.from({ length: 2001 }, (_, i) => -100 + (188.7 * i) / 2000);
  const [ref] = await on('cpu', () => tf.exp(tf.tensor1d(xs)));
  const [got] = await on('cpu-native', () => tf.exp(tf.tensor1d(xs)));
  (ref as Out).data.forEach((e, i) => {
    const a = (got as Out).data[i] as number;
    assert.ok(Math.abs(a - e) <= 1e-6 * Math.abs(e) + 1e-37, `exp(${xs[i]}): ${a} vs ${e}`);
  });
});

native('Maximum and Minimum match cpu, NaN included', async () => {
  const a = Float32Array.from([...randn(3 * 40 * 8, 1420), NaN, 1, -Infinity]);
  for (const [name, op] of [
    [tf.Maximum, tf.maximum],
    [tf.Minimum, tf.minimum],
  ] as const) {
    await same(
      `${name} broadcast`,
      () => op(tf.tensor(randn(3 * 40 * 8, 1421), [3, 40, 8]), tf.tensor(randn(8, 1422), [8])),
      [name],
    );
    await same(`${name} NaN`, () => op(tf.tensor1d(a), tf.scalar(0.5)), [name]);
  }
});

native('Concat and Transpose match cpu, gradients included', async () => {
  const t = (shape: number[], seed: number) => tf.tensor(randn(size(shape), seed), shape);
  for (const axis of [0, 1, 2, 3, -1]) {
    await same(
      `concat axis ${axis}`,
      () => {
        const shapes = [
          [2, 3, 4, 5],
          [2, 3, 4, 5],
          [2, 3, 4, 5],
        ];
        const ax = axis < 0 ? 3 : axis;
        shapes[1]![ax] = 2;
        shapes[2]![ax] = 1;
        return tf.concat(
          shapes.map((sh, i) => t(sh, 1430 + i)),
          axis,
        );
      },
      [tf.Concat],
    );
  }
  await same(
    'concat with an empty part',
    () => tf.concat([t([3, 4], 1440), t([3, 0], 1441), t([3, 2], 1442)], 1),
    [tf.Concat],
  );
  await same('concat 1-D', () => tf.concat([t([5], 1443), t([7], 1444)]), [tf.Concat]);
  await same(
    'concat of skip connections and its gradient',
    () => {
      const a = t([4, 16, 16, 32], 1445);
      const b = t([4, 16, 16, 16], 1446);
      const w = t([4, 16, 16, 48], 1447);
      return tf.grads((x: tf.Tensor, y: tf.Tensor) => tf.sum(tf.mul(tf.concat([x, y], 3), w)))([a, b]);
    },
    [tf.Concat, tf.SplitV],
  );
  const perms: Array<[number[], number[]]> = [
    [
      [7, 9],
      [1, 0],
    ],
    [
      [4, 5, 6],
      [0, 2, 1],
    ],
    [
      [4, 5, 6],
      [2, 0, 1],
    ],
    [
      [2, 8, 3, 16],
      [0, 2, 1, 3],
    ],
    [
      [2, 3, 4, 5],
      [3, 2, 1, 0],
    ],
    [
      [2, 3, 1, 5, 2],
      [4, 0, 3, 2, 1],
    ],
    [
      [3, 4],
      [0, 1],
    ],
    [
      [64, 40, 30],
      [1, 2, 0],
    ],
  ];
  for (const [i, [shape, perm]] of perms.entries()) {
    await same(
      `transpose ${JSON.stringify(shape)} ${JSON.stringify(perm)}`,
      () => tf.transpose(t(shape, 1450 + i), perm),
      [tf.Transpose],
    );
  }
});

native('Sum and Mean: every reduction layout, large enough to split, independent of threads', async () => {
  // Each shape exceeds the addon's 64k-element grain, so the work is split into chunks (with
  // private partials where chunks share outputs).
  const cases: Array<[number[], number[]]> = [
    [[300_000], [0]],
    [[4096, 32], [0]],
    [
      [32, 1024, 8, 4],
      [1, 3],
    ],
    [
      [32, 32, 32, 16],
      [1, 2],
    ],
    [
      [8, 16, 32, 4, 8],
      [0, 2, 4],
    ],
    [
      [64, 2, 16, 2, 32],
      [1, 3],
    ],
    [[16, 5000], [1]],
    [
      [7, 3, 5000],
      [0, 2],
    ],
  ];
  for (const [i, [shape, axes]] of cases.entries()) {
    const x = () => tf.tensor(randn(size(shape), 1460 + i), shape);
    const what = `${JSON.stringify(shape)} axes ${JSON.stringify(axes)}`;
    await same(`sum ${what}`, () => tf.sum(x(), axes), [tf.Sum]);
    await same(`mean ${what}`, () => tf.mean(x(), axes, true), [tf.Mean]);
    const threads = status.threads;
    try {
      setNativeThreads(1);
      const one = await on('cpu-native', () => tf.sum(x(), axes));
      setNativeThreads(2);
      const two = await on('cpu-native', () => tf.sum(x(), axes));
      assert.deepEqual((one[0] as Out).data, (two[0] as Out).data, `${what}: 1 vs 2 threads`);
    } finally {
      setNativeThreads(threads);
    }
  }
});

/** The layer definitions that nn.ts writes with explicit gradients, by plain autodiff. */
function groupNormReference(x: tf.Tensor4D, gamma: tf.Tensor, beta: tf.Tensor, groups: number): tf.Tensor {
  const [b, h, w, c] = x.shape;
  const xr = tf.reshape(x, [b, h, w, groups, c / groups]);
  const { mean, variance } = tf.moments(xr, [1, 2, 4], true);
  const xn = tf.reshape(tf.mul(tf.sub(xr, mean), tf.rsqrt(tf.add(variance, 1e-5))), [b, h, w, c]);
  return tf.add(tf.mul(xn, gamma), beta);
}

native(
  "nn.ts's GroupNorm, SiLU and upsampling equal their autodiff definitions, values and gradients",
  async () => {
    for (const [shape, groups, offset] of [
      [[3, 8, 8, 32], 8, 0],
      [[2, 4, 6, 12], 3, 2.5], // a non-zero mean: the shifted formula must not lose precision
      [[2, 5, 5, 8], 8, -1],
    ] as Array<[[number, number, number, number], number, number]>) {
      const c = shape[3];
      const inputs = () => {
        const x = tf.add(tf.tensor4d(randn(size(shape), 1500 + c), shape), offset) as tf.Tensor4D;
        return {
          x,
          gamma: tf.tensor1d(randn(c, 1501 + c, 0.5)).add(1),
          beta: tf.tensor1d(randn(c, 1502 + c, 0.5)),
          dy: tf.tensor4d(randn(size(shape), 1503 + c), shape),
        };
      };
      const custom = () => {
        const { x, gamma, beta, dy } = inputs();
        const f = (xx: tf.Tensor, g: tf.Tensor, bb: tf.Tensor) => {
          const p: Params = new Map([
            ['n.gamma', g],
            ['n.beta', bb],
          ]);
          return tf.sum(tf.mul(silu(groupNorm(p, 'n', xx as tf.Tensor4D, groups)), dy));
        };
        const { value, grads } = tf.valueAndGrads(f)([x, gamma, beta]);
        return [value, ...grads];
      };
      const reference = () => {
        const { x, gamma, beta, dy } = inputs();
        const f = (xx: tf.Tensor, g: tf.Tensor, bb: tf.Tensor) => {
          const h = groupNormReference(xx as tf.Tensor4D, g, bb, groups);
          return tf.sum(tf.mul(tf.mul(h, tf.sigmoid(h)), dy));
        };
        const { value, grads } = tf.valueAndGrads(f)([x, gamma, beta]);
        return [value, ...grads];
      };
      const what = `groupNorm+silu ${JSON.stringify(shape)} groups ${groups} offset ${offset}`;
      const expected = await on('cpu', reference);
      assertClose(await on('cpu', custom), expected, `${what} (cpu)`);
      assertClose(await on('cpu-native', custom), expected, `${what} (cpu-native)`);
    }
    const up = (fn: (x: tf.Tensor4D) => tf.Tensor) => () => {
      const x = tf.tensor4d(randn(2 * 5 * 6 * 3, 1510), [2, 5, 6, 3]);
      const dy = tf.tensor4d(randn(2 * 10 * 12 * 3, 1511), [2, 10, 12, 3]);
      const { value, grads } = tf.valueAndGrads((xx: tf.Tensor) => tf.sum(tf.mul(fn(xx as tf.Tensor4D), dy)))(
        [x],
      );
      return [value, ...grads];
    };
    // The previous definition: two tiles (their gradient is a sum of slices).
    const tiled = up((x) => {
      const [b, h, w, c] = x.shape;
      const cols = tf.tile(tf.reshape(x, [b * h, w, 1, c]), [1, 1, 2, 1]);
      return tf.reshape(tf.tile(tf.reshape(cols, [b * h, 1, 2 * w * c]), [1, 2, 1]), [b, 2 * h, 2 * w, c]);
    });
    const ours = up(upsampleNearest2x);
    const expected = await on('cpu', tiled);
    assertClose(await on('cpu', ours), expected, 'upsample (cpu)');
    assertClose(await on('cpu-native', ours), expected, 'upsample (cpu-native)');
  },
);

native('recycled output buffers: views, escaped arrays and reuse stay correct', async () => {
  assert.ok(await tf.setBackend('cpu-native'));
  const n = 64 * 1024; // above the pool's minimum size
  const a = tf.tensor1d(randn(n, 1600));
  const b = tf.tensor1d(randn(n, 1601));
  const expectSum = Float32Array.from(a.dataSync(), (v, i) => v + (b.dataSync()[i] as number));
  // A contiguous slice is a view into its input's buffer: it must keep the buffer from reuse.
  const s = tf.tidy(() => tf.slice(tf.add(a, b), [1000], [5000]));
  const sliced = Float32Array.from(expectSum.subarray(1000, 6000));
  // Also a view far smaller than the pool's minimum buffer size.
  const small = tf.tidy(() => tf.slice(tf.add(a, b), [20], [3]));
  // Ops of the same size with other values: they would land in a wrongly recycled buffer.
  for (let i = 0; i < 5; i++) tf.tidy(() => tf.mul(tf.sub(a, b), tf.sub(b, a)));
  assert.deepEqual(Float32Array.from(s.dataSync()), sliced, 'slice view after its source was disposed');
  assert.deepEqual(Float32Array.from(small.dataSync()), expectSum.subarray(20, 23), 'small slice view');
  // dataSync() hands out the backing array: it must not be overwritten after disposal.
  const t = tf.add(a, b);
  const held = t.dataSync();
  t.dispose();
  for (let i = 0; i < 5; i++) tf.tidy(() => tf.mul(tf.sub(a, b), tf.sub(b, a)));
  assert.deepEqual(Float32Array.from(held), expectSum, 'array returned by dataSync after dispose');
  // Reused buffers are fully overwritten (no stale values leak into results).
  const before = nativeBufferStats();
  const r1 = tf.tidy(() => tf.add(a, b).dataSync().slice());
  const r2 = tf.tidy(() => tf.add(a, b).dataSync().slice());
  assert.deepEqual(r1, r2);
  assert.deepEqual(Float32Array.from(r1), expectSum);
  const after = nativeBufferStats();
  assert.ok(before && after && after.reused > before.reused, 'outputs come from the pool');
  tf.dispose([a, b, s, small]);
});

native('training-like steps on cpu-native: tensors flat, pool bounded, memory released on trim', async () => {
  assert.ok(await tf.setBackend('cpu-native'));
  const x = tf.tensor4d(randn(8 * 16 * 16 * 16, 1700), [8, 16, 16, 16]);
  const w = tf.tensor4d(randn(3 * 3 * 16 * 16, 1701, 0.1), [3, 3, 16, 16]);
  const p: Params = new Map([
    ['n.gamma', tf.ones([16])],
    ['n.beta', tf.zeros([16])],
  ]);
  const step = () =>
    tf.tidy(() => {
      const f = (xx: tf.Tensor, ww: tf.Tensor) => {
        const h = silu(groupNorm(p, 'n', xx as tf.Tensor4D, 4));
        const y = tf.conv2d(tf.concat([h, h], 3), tf.concat([ww, ww], 2) as tf.Tensor4D, 1, 'same');
        return tf.mean(tf.square(upsampleNearest2x(y)));
      };
      const { value, grads } = tf.valueAndGrads(f)([x, w]);
      value.dataSync();
      grads.forEach((g) => g.dataSync());
    });
  for (let i = 0; i < 10; i++) step();
  const tensors = tf.memory().numTensors;
  const idle0 = nativeBufferStats()?.idleBytes ?? 0;
  global.gc?.();
  const rss0 = process.memoryUsage().rss;
  for (let i = 0; i < 150; i++) {
    step();
    assert.equal(tf.memory().numTensors, tensors, `tensor count changed at step ${i}`);
  }
  global.gc?.();
  const grown = process.memoryUsage().rss - rss0;
  const st = nativeBufferStats();
  assert.ok(st, 'pool stats');
  assert.equal(st.idleBytes, idle0, 'the pool holds the same free buffers step after step');
  assert.ok(grown < 40 * 2 ** 20, `RSS grew by ${(grown / 2 ** 20).toFixed(1)} MiB over 150 steps`);
  trimNativeBuffers();
  assert.equal(nativeBufferStats()?.idleBytes, 0, 'trim releases every free buffer');
  tf.dispose([x, w, ...p.values()]);
});

native('a GroupNorm + SiLU + upsample + concat block and its gradients match cpu', async () => {
  await same(
    'groupnorm block grads',
    () => {
      const x = tf.tensor4d(randn(2 * 8 * 8 * 32, 1500), [2, 8, 8, 32]);
      const skip = tf.tensor4d(randn(2 * 16 * 16 * 16, 1501), [2, 16, 16, 16]);
      const gamma = tf.tensor1d(randn(32, 1502));
      const beta = tf.tensor1d(randn(32, 1503));
      const f = (xx: tf.Tensor, g: tf.Tensor, b: tf.Tensor, s: tf.Tensor) => {
        const xr = tf.reshape(xx, [2, 8, 8, 8, 4]);
        const { mean, variance } = tf.moments(xr, [1, 2, 4], true);
        const xn = tf.reshape(tf.mul(tf.sub(xr, mean), tf.rsqrt(tf.add(variance, 1e-5))), [2, 8, 8, 32]);
        const h = tf.add(tf.mul(xn, g), b);
        const act = tf.mul(h, tf.sigmoid(h));
        // Tile's gradient exists up to rank 4 only, so this is a 2×2 tiling, not nearest-neighbour.
        const up = tf.tile(act, [1, 2, 2, 1]);
        const cat = tf.concat([up, s], 3);
        const padded = tf.pad(cat, [
          [0, 0],
          [1, 1],
          [1, 1],
          [0, 0],
        ]);
        return tf.sum(tf.square(tf.slice(padded, [0, 1, 1, 0], [2, 16, 16, 48])));
      };
      return tf.grads(f)([x, gamma, beta, skip]);
    },
    [tf.Multiply, tf.Sub, tf.Mean, tf.Sum, tf.Sigmoid, tf.Tile, tf.PadV2, tf.Slice],
  );
});

test('RINGDIFF_THREADS is parsed strictly', () => {
  assert.equal(nativeThreads({ RINGDIFF_THREADS: '3' }), 3);
  assert.ok(nativeThreads({}) >= 1);
  assert.throws(() => nativeThreads({ RINGDIFF_THREADS: '0' }), /positive integer/);
  assert.throws(() => nativeThreads({ RINGDIFF_THREADS: 'two' }), /positive integer/);
});
