/**
 * ringdiff's own GEMM (native/src/gemm*.cc, conv.cc) against plain float64 loops written here:
 * every micro-kernel set this CPU runs (AVX-512, AVX2/FMA, the portable one; OpenBLAS for the
 * matrix products where it is installed), on 1 and 2
 * threads, for matrix products (odd sizes, transposes, broadcast batches, K, M and N past one
 * cache block, fused bias and activation) and for the three convolution kernels (3×3 and 1×1,
 * strides 1-3, 'same', 'valid' and explicit padding, dilation, one-channel inputs and outputs,
 * sizes that leave partial tiles). Also: a kernel set gives the same bits on 1 and 2 threads.
 *
 * Tolerance: |ours − reference| ≤ 2e-6·Σ|terms| + 1e-30 per element (float32 summation error
 * against the sum of the products' magnitudes, computed alongside the reference).
 */
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import * as tf from '@tensorflow/tfjs';
import { uniform } from './helpers.js';
import {
  nativeGemmInfo,
  registerCpuNative,
  setNativeGemm,
  setNativeThreads,
  type GemmChoice,
} from '../src/model/backend/native.js';

tf.enableProdMode();
const status = registerCpuNative();
const KERNELS: GemmChoice[] = ['avx512', 'avx2', 'generic'];
const THREADS = [1, 2];

/** A reference result: values and, per element, Σ|terms| for the tolerance. */
interface Ref {
  value: Float64Array;
  mag: Float64Array;
}

function assertNear(what: string, got: Float32Array, ref: Ref): void {
  assert.equal(got.length, ref.value.length, `${what}: size`);
  for (let i = 0; i < got.length; i++) {
    const err = Math.abs((got[i] as number) - (ref.value[i] as number));
    const tol = 2e-6 * (ref.mag[i] as number) + 1e-30;
    if (!(err <= tol))
      assert.fail(
        `${what}: element ${i} is ${got[i]}, reference ${ref.value[i]} (error ${err}, tolerance ${tol})`,
      );
  }
}

/** Runs `body` for every kernel set this machine runs and each thread count; skips the others. */
async function eachKernel(
  t: TestContext,
  body: (kind: GemmChoice, threads: number) => void,
  kinds: GemmChoice[] = KERNELS,
): Promise<void> {
  if (!status.ok) {
    t.skip(`cpu-native unavailable: ${status.reason}`);
    return;
  }
  assert.ok(await tf.setBackend('cpu-native'));
  try {
    for (const kind of kinds) {
      await t.test(kind, (tt) => {
        if (!setNativeGemm(kind)) {
          tt.skip(
            kind === 'openblas'
              ? 'OpenBLAS is not installed (optional: apt-get install libopenblas-dev)'
              : `${kind} kernels do not run on this CPU`,
          );
          return;
        }
        if (kind === 'openblas') assert.equal(nativeGemmInfo()?.matmulOnOpenblas, true);
        else assert.equal(nativeGemmInfo()?.kernels, kind);
        for (const threads of THREADS) {
          setNativeThreads(threads);
          body(kind, threads);
        }
      });
    }
  } finally {
    setNativeGemm('auto');
    setNativeThreads(status.threads);
  }
}

// ---- Matrix products ------------------------------------------------------------------------

interface MatCase {
  batchA: number[];
  batchB: number[];
  m: number;
  n: number;
  k: number;
  ta: boolean;
  tb: boolean;
  bias?: boolean;
}

const MATS: MatCase[] = [
  { batchA: [], batchB: [], m: 1, n: 1, k: 1, ta: false, tb: false },
  { batchA: [], batchB: [], m: 7, n: 5, k: 3, ta: false, tb: false },
  { batchA: [], batchB: [], m: 8, n: 32, k: 9, ta: false, tb: false },
  { batchA: [], batchB: [], m: 33, n: 17, k: 65, ta: true, tb: false },
  { batchA: [], batchB: [], m: 19, n: 47, k: 31, ta: false, tb: true },
  { batchA: [], batchB: [], m: 9, n: 40, k: 12, ta: true, tb: true, bias: true },
  // Past one block in every dimension (K blocks of 256, M of 128, N of 256).
  { batchA: [], batchB: [], m: 131, n: 261, k: 300, ta: false, tb: false, bias: true },
  { batchA: [3], batchB: [3], m: 10, n: 21, k: 14, ta: false, tb: false },
  { batchA: [2, 1], batchB: [1, 3], m: 5, n: 18, k: 6, ta: true, tb: true },
];

function matRef(c: MatCase, a: Float32Array, b: Float32Array, bias: Float32Array | null): Ref {
  const outer = c.batchA.map((d, i) => Math.max(d, c.batchB[i] ?? 1));
  const batch = outer.reduce((p, d) => p * d, 1);
  const value = new Float64Array(batch * c.m * c.n);
  const mag = new Float64Array(value.length);
  // Flat batch index of each operand under broadcasting (operands have equal rank here).
  const index = (dims: number[], flat: number) => {
    let rem = flat;
    let idx = 0;
    let stride = 1;
    for (let i = outer.length - 1; i >= 0; i--) {
      const coord = rem % (outer[i] as number);
      rem = Math.floor(rem / (outer[i] as number));
      idx += ((dims[i] as number) === 1 ? 0 : coord) * stride;
      stride *= dims[i] as number;
    }
    return idx;
  };
  for (let bi = 0; bi < batch; bi++) {
    const ao = index(c.batchA, bi) * c.m * c.k;
    const bo = index(c.batchB, bi) * c.k * c.n;
    for (let i = 0; i < c.m; i++)
      for (let j = 0; j < c.n; j++) {
        let s = bias ? (bias[j] as number) : 0;
        let g = Math.abs(s);
        for (let p = 0; p < c.k; p++) {
          const av = a[ao + (c.ta ? p * c.m + i : i * c.k + p)] as number;
          const bv = b[bo + (c.tb ? j * c.k + p : p * c.n + j)] as number;
          s += av * bv;
          g += Math.abs(av * bv);
        }
        // relu, as the fused cases below apply it
        value[(bi * c.m + i) * c.n + j] = bias ? Math.max(0, s) : s;
        mag[(bi * c.m + i) * c.n + j] = g;
      }
  }
  return { value, mag };
}

test('matrix products of every kernel set match a plain reference, on 1 and 2 threads', async (t) => {
  await eachKernel(
    t,
    (kind, threads) => {
      MATS.forEach((c, ci) => {
        const aShape = [...c.batchA, ...(c.ta ? [c.k, c.m] : [c.m, c.k])];
        const bShape = [...c.batchB, ...(c.tb ? [c.n, c.k] : [c.k, c.n])];
        const av = uniform(
          aShape.reduce((p, d) => p * d, 1),
          10 + ci,
        );
        const bv = uniform(
          bShape.reduce((p, d) => p * d, 1),
          20 + ci,
        );
        const biasV = c.bias ? uniform(c.n, 30 + ci) : null;
        const got = tf.tidy(() => {
          const a = tf.tensor(av, aShape);
          const b = tf.tensor(bv, bShape);
          const y = biasV
            ? tf.fused.matMul({
                a,
                b,
                transposeA: c.ta,
                transposeB: c.tb,
                bias: tf.tensor1d(biasV),
                activation: 'relu',
              })
            : tf.matMul(a, b, c.ta, c.tb);
          return y.dataSync().slice();
        }) as Float32Array;
        assertNear(
          `${kind}, ${threads} thread(s), matmul ${JSON.stringify(c)}`,
          got,
          matRef(c, av, bv, biasV),
        );
      });
      // Plain products may also go to OpenBLAS, where it is installed.
    },
    [...KERNELS, 'openblas'],
  );
});

// ---- Convolutions ---------------------------------------------------------------------------

type Pad = 'same' | 'valid' | [[number, number], [number, number], [number, number], [number, number]];

interface ConvCase {
  x: [number, number, number, number];
  k: [number, number];
  cout: number;
  stride: [number, number];
  pad: Pad;
  dilation?: [number, number];
}

const CONVS: ConvCase[] = [
  // The U-Net's own: 3×3 same, stride-2 valid on a padded input, 1×1 skips.
  { x: [2, 16, 16, 32], k: [3, 3], cout: 32, stride: [1, 1], pad: 'same' },
  { x: [2, 18, 18, 32], k: [3, 3], cout: 64, stride: [2, 2], pad: 'valid' },
  { x: [3, 8, 8, 64], k: [1, 1], cout: 128, stride: [1, 1], pad: 'valid' },
  // Partial tiles: rows that are not a multiple of the tile, channels not of the vector width.
  { x: [3, 13, 11, 5], k: [3, 3], cout: 37, stride: [1, 1], pad: 'same' },
  { x: [1, 9, 23, 40], k: [3, 3], cout: 70, stride: [1, 1], pad: 'valid' },
  { x: [2, 10, 9, 12], k: [3, 3], cout: 20, stride: [2, 2], pad: 'same' },
  { x: [2, 11, 10, 6], k: [3, 2], cout: 9, stride: [2, 1], pad: 'valid' },
  { x: [1, 12, 12, 7], k: [3, 3], cout: 11, stride: [3, 3], pad: 'same' },
  { x: [2, 8, 8, 16], k: [1, 1], cout: 8, stride: [2, 2], pad: 'same' },
  {
    x: [1, 9, 9, 3],
    k: [5, 5],
    cout: 4,
    stride: [1, 1],
    pad: [
      [0, 0],
      [2, 2],
      [2, 2],
      [0, 0],
    ],
  },
  {
    x: [2, 7, 8, 8],
    k: [3, 3],
    cout: 17,
    stride: [1, 1],
    pad: [
      [0, 0],
      [1, 2],
      [0, 1],
      [0, 0],
    ],
  },
  { x: [1, 12, 11, 6], k: [3, 3], cout: 10, stride: [1, 1], pad: 'same', dilation: [2, 2] },
  // One input channel (a U-Net's first conv) and one output channel (its last).
  { x: [2, 10, 10, 1], k: [3, 3], cout: 24, stride: [1, 1], pad: 'same' },
  { x: [2, 10, 10, 24], k: [3, 3], cout: 1, stride: [1, 1], pad: 'same' },
  { x: [1, 9, 8, 1], k: [3, 3], cout: 1, stride: [2, 2], pad: 'same' },
];

/** TF.js's padding and output size for a case (NHWC). */
function geometry(c: ConvCase) {
  const [n, h, w, cin] = c.x;
  const info = tf.backend_util.computeConv2DInfo(
    c.x,
    [c.k[0], c.k[1], cin, c.cout],
    c.stride,
    c.dilation ?? [1, 1],
    c.pad,
    undefined,
    false,
    'channelsLast',
  );
  return { n, h, w, cin, oh: info.outHeight, ow: info.outWidth, pt: info.padInfo.top, pl: info.padInfo.left };
}

/** y, dx and dw of a convolution by definition: Σ over (n, oh, ow, kh, kw, c, oc) of x·w·dy. */
function convRef(
  c: ConvCase,
  x: Float32Array,
  w: Float32Array,
  dy: Float32Array,
): { y: Ref; dx: Ref; dw: Ref } {
  const g = geometry(c);
  const [kh, kw] = c.k;
  const [sh, sw] = c.stride;
  const [dh, dw] = c.dilation ?? [1, 1];
  const mk = (n: number): Ref => ({ value: new Float64Array(n), mag: new Float64Array(n) });
  const y = mk(g.n * g.oh * g.ow * c.cout);
  const dx = mk(x.length);
  const dW = mk(w.length);
  for (let n = 0; n < g.n; n++)
    for (let oh = 0; oh < g.oh; oh++)
      for (let ow = 0; ow < g.ow; ow++)
        for (let i = 0; i < kh; i++) {
          const ih = oh * sh - g.pt + i * dh;
          if (ih < 0 || ih >= g.h) continue;
          for (let j = 0; j < kw; j++) {
            const iw = ow * sw - g.pl + j * dw;
            if (iw < 0 || iw >= g.w) continue;
            for (let ci = 0; ci < g.cin; ci++) {
              const xi = ((n * g.h + ih) * g.w + iw) * g.cin + ci;
              const xv = x[xi] as number;
              for (let o = 0; o < c.cout; o++) {
                const wi = ((i * kw + j) * g.cin + ci) * c.cout + o;
                const yi = ((n * g.oh + oh) * g.ow + ow) * c.cout + o;
                const wv = w[wi] as number;
                const dv = dy[yi] as number;
                (y.value[yi] as number) += xv * wv;
                (y.mag[yi] as number) += Math.abs(xv * wv);
                (dx.value[xi] as number) += dv * wv;
                (dx.mag[xi] as number) += Math.abs(dv * wv);
                (dW.value[wi] as number) += xv * dv;
                (dW.mag[wi] as number) += Math.abs(xv * dv);
              }
            }
          }
        }
  return { y, dx, dw: dW };
}

/** A bias per (image, output channel) for case c. */
const imageBias = (c: ConvCase): Float32Array => uniform(c.x[0] * c.cout, 400 + c.cout);

/** The reference output with the per-image bias added. */
function withImageBias(c: ConvCase, y: Ref): Ref {
  const b = imageBias(c);
  const perImage = y.value.length / c.x[0];
  const value = y.value.map((v, i) => v + (b[Math.floor(i / perImage) * c.cout + (i % c.cout)] as number));
  const mag = y.mag.map(
    (m, i) => m + Math.abs(b[Math.floor(i / perImage) * c.cout + (i % c.cout)] as number),
  );
  return { value, mag };
}

test('convolutions (forward, input and filter gradients) of every kernel set match a plain reference', async (t) => {
  const refs = CONVS.map((c, ci) => {
    const g = geometry(c);
    const x = uniform(
      c.x.reduce((p, d) => p * d, 1),
      100 + ci,
    );
    const w = uniform(c.k[0] * c.k[1] * g.cin * c.cout, 200 + ci);
    const dy = uniform(g.n * g.oh * g.ow * c.cout, 300 + ci);
    return { c, x, w, dy, ref: convRef(c, x, w, dy) };
  });
  // Per kernel set: the outputs on one thread, which two threads must reproduce bit for bit.
  const firstRun = new Map<string, Float32Array[]>();
  await eachKernel(t, (kind, threads) => {
    for (const { c, x, w, dy, ref } of refs) {
      const what = `${kind}, ${threads} thread(s), conv x${JSON.stringify(c.x)} k${c.k.join('x')}→${c.cout} s${c.stride.join(',')} pad ${JSON.stringify(c.pad)} d${(c.dilation ?? [1, 1]).join(',')}`;
      const outs = tf.tidy(() => {
        const xt = tf.tensor4d(x, c.x);
        const wt = tf.tensor4d(w, [c.k[0], c.k[1], c.x[3], c.cout]);
        const yt = tf.conv2d(xt, wt, c.stride, c.pad, 'NHWC', c.dilation ?? 1);
        const dyt = tf.tensor(dy, yt.shape);
        const attrs = { strides: c.stride, pad: c.pad, dataFormat: 'NHWC', dilations: c.dilation ?? 1 };
        const e = tf.engine();
        const out: Float32Array[] = [yt.dataSync().slice() as Float32Array];
        // A bias per image ([N, 1, 1, OC], a time embedding) fused into the forward pass.
        const ib = tf.tensor4d(imageBias(c), [c.x[0], 1, 1, c.cout]);
        const yb = tf.fused.conv2d({
          x: xt,
          filter: wt,
          strides: c.stride,
          pad: c.pad,
          dilations: c.dilation ?? 1,
          bias: ib,
        });
        out.push(yb.dataSync().slice() as Float32Array);
        // TF.js's gradient kernels take no dilation.
        if (!c.dilation) {
          const dxt = e.runKernel(tf.Conv2DBackpropInput, { dy: dyt, filter: wt }, {
            ...attrs,
            inputShape: c.x,
          } as unknown as tf.NamedAttrMap) as tf.Tensor;
          const dwt = e.runKernel(tf.Conv2DBackpropFilter, { x: xt, dy: dyt }, {
            ...attrs,
            filterShape: wt.shape,
          } as unknown as tf.NamedAttrMap) as tf.Tensor;
          out.push(dxt.dataSync().slice() as Float32Array, dwt.dataSync().slice() as Float32Array);
        }
        return out;
      }) as unknown as Float32Array[];
      assertNear(`${what}: forward`, outs[0] as Float32Array, ref.y);
      assertNear(`${what}: forward with a bias per image`, outs[1] as Float32Array, withImageBias(c, ref.y));
      if (outs.length > 2) {
        assertNear(`${what}: input gradient`, outs[2] as Float32Array, ref.dx);
        assertNear(`${what}: filter gradient`, outs[3] as Float32Array, ref.dw);
      }
      const key = `${kind} ${what.slice(what.indexOf('conv'))}`;
      const first = firstRun.get(key);
      if (!first) {
        firstRun.set(key, outs);
      } else {
        outs.forEach((o, k) =>
          assert.deepEqual(o, first[k], `${what}: output ${k} differs between 1 and ${threads} threads`),
        );
      }
    }
  });
});

test('RINGDIFF_GEMM: the kernels can be chosen, and an unknown name is refused', async (t) => {
  if (!status.ok) {
    t.skip(`cpu-native unavailable: ${status.reason}`);
    return;
  }
  assert.ok(setNativeGemm('generic'));
  assert.equal(nativeGemmInfo()?.kernels, 'generic');
  assert.ok(setNativeGemm('auto'));
  assert.notEqual(nativeGemmInfo()?.kernels, undefined);
  assert.match(status.gemm ?? '', /ringdiff (avx512|avx2|generic) kernels/);
  // Not a name the addon knows: refused, nothing changes.
  const before = nativeGemmInfo()?.kernels;
  assert.equal(setNativeGemm('sse9' as GemmChoice), false);
  assert.equal(nativeGemmInfo()?.kernels, before);
});
