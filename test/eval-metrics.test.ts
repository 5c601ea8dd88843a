/**
 * Sample-quality metrics (src/eval/): closed-form checks of FID, KID, IS and precision/recall, the
 * sufficient statistics, the clean-fid resize against Pillow, the graph-model loader with a
 * random-weight network written here, the built-in feature network, and `ringdiff eval` end to end.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import {
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import * as tf from '@tensorflow/tfjs';
import { unzipSync } from 'fflate';
import { memoryBytes } from '../src/data/idx.js';
import { encodeNpy, readNpyHeader } from '../src/data/npy.js';
import { imageDataset } from '../src/data/preprocess.js';
import { openSource } from '../src/data/spec.js';
import { Purpose, stream } from '../src/model/rng.js';
import { disposeParams } from '../src/model/params.js';
import { initBackend } from '../src/model/backend/index.js';
import { encodeNpyFloat64, encodeNpz } from '../src/eval/export.js';
import { trainFeatureNet } from '../src/eval/features.js';
import { frechetDistance } from '../src/eval/frechet.js';
import {
  bicubicKernel,
  cleanFidInput,
  INCEPTION_SIZE,
  loadInception,
  resizeBicubicPil,
} from '../src/eval/inception.js';
import { inceptionScore } from '../src/eval/inception-score.js';
import { kid, mmd2Subset } from '../src/eval/kid.js';
import { precisionRecall } from '../src/eval/precision-recall.js';
import { combineStats, statsOf, toGaussian, type Gaussian } from '../src/eval/stats.js';

// The best backend that loads (cpu-native after npm ci): the feature network trains in seconds there.
await initBackend(undefined, { quiet: true });

const HERE = path.dirname(fileURLToPath(import.meta.url));
const BIN = path.resolve(HERE, '../../bin/ringdiff.js');
const FIXTURES = path.resolve(HERE, '../../test/fixtures');
const dir = mkdtempSync(path.join(tmpdir(), 'ringdiff-eval-'));
process.on('exit', () => rmSync(dir, { recursive: true, force: true }));

/** n draws of N(mu, L·Lᵀ) in d dims (L lower-triangular, row-major), from stream `seed`. */
function gaussianSamples(n: number, mu: number[], L: number[], seed: number): Float32Array {
  const d = mu.length;
  const s = stream(seed, 0, 0, Purpose.oracle);
  const out = new Float32Array(n * d);
  const z = new Float64Array(d);
  for (let r = 0; r < n; r++) {
    for (let i = 0; i < d; i++) z[i] = s.normal();
    for (let i = 0; i < d; i++) {
      let v = mu[i] as number;
      for (let j = 0; j <= i; j++) v += (L[i * d + j] as number) * (z[j] as number);
      out[r * d + i] = v;
    }
  }
  return out;
}

function gaussian(mu: number[], sigma: number[]): Gaussian {
  return { dim: mu.length, mu: Float64Array.from(mu), sigma: Float64Array.from(sigma) };
}

// ------------------------------------------------------------------------------------------------
// Fréchet distance and sufficient statistics

test('FID of a set with itself is 0, and its statistics add up across parts', () => {
  const d = 6;
  const L = [
    1, 0, 0, 0, 0, 0, 0.5, 2, 0, 0, 0, 0, 0.1, -0.3, 0.7, 0, 0, 0, 0, 0, 0, 1.5, 0, 0, 0.2, 0, 0, 0, 0.01, 0,
  ];
  L.push(0, 0, 0, 0, 0, 3); // a nearly singular direction (0.01) and a zero-variance one
  const x = gaussianSamples(3000, [1, -2, 0, 5, 0.5, 0], L.slice(0, 36), 1);
  const whole = statsOf(x, d);
  const g = toGaussian(whole);
  const self = frechetDistance(g, g);
  let tr = 0;
  for (let i = 0; i < d; i++) tr += g.sigma[i * d + i] as number;
  assert.ok(Math.abs(self) < 1e-9 * tr, `FID(x, x) = ${self}`);
  // Three unequal parts, combined in a different order, give the same μ and Σ.
  const parts = [x.subarray(0, 700 * d), x.subarray(700 * d, 2900 * d), x.subarray(2900 * d)];
  const combined = combineStats(
    combineStats(statsOf(parts[2]!, d), statsOf(parts[0]!, d)),
    statsOf(parts[1]!, d),
  );
  assert.equal(combined.count, 3000);
  const gc = toGaussian(combined);
  for (let i = 0; i < d; i++) assert.ok(Math.abs((gc.mu[i] as number) - (g.mu[i] as number)) < 1e-12);
  for (let i = 0; i < d * d; i++)
    assert.ok(Math.abs((gc.sigma[i] as number) - (g.sigma[i] as number)) < 1e-10 * tr, `Σ[${i}]`);
  // Σ is numpy's np.cov (divisor n − 1): check one entry by hand.
  let m0 = 0;
  let m1 = 0;
  for (let r = 0; r < 3000; r++) {
    m0 += x[r * d] as number;
    m1 += x[r * d + 1] as number;
  }
  m0 /= 3000;
  m1 /= 3000;
  let c01 = 0;
  for (let r = 0; r < 3000; r++) c01 += ((x[r * d] as number) - m0) * ((x[r * d + 1] as number) - m1);
  assert.ok(Math.abs(c01 / 2999 - (g.sigma[1] as number)) < 1e-9);
});

test('FID of two Gaussians equals the closed form', () => {
  // Commuting (diagonal) covariances: ‖Δμ‖² + Σ (√a − √b)².
  const a = gaussian([0, 0, 0], [4, 0, 0, 0, 1, 0, 0, 0, 9]);
  const b = gaussian([1, 2, 0], [1, 0, 0, 0, 1, 0, 0, 0, 0.25]);
  const diag = 1 + 4 + (2 - 1) ** 2 + 0 + (3 - 0.5) ** 2;
  assert.ok(Math.abs(frechetDistance(a, b) - diag) < 1e-10 * diag, `${frechetDistance(a, b)} vs ${diag}`);
  // Non-commuting 2×2: tr √M = √(tr M + 2√det M) for M = Σ1Σ2 with positive eigenvalues.
  const s1 = [2, 1, 1, 3];
  const s2 = [1, -0.4, -0.4, 0.5];
  const M = [s1[0]! * s2[0]! + s1[1]! * s2[2]!, 0, 0, s1[2]! * s2[1]! + s1[3]! * s2[3]!];
  const detM = (s1[0]! * s1[3]! - s1[1]! * s1[2]!) * (s2[0]! * s2[3]! - s2[1]! * s2[2]!);
  const trSqrt = Math.sqrt(M[0]! + M[3]! + 2 * Math.sqrt(detM));
  const closed = 0.5 ** 2 + 1 + (s1[0]! + s1[3]!) + (s2[0]! + s2[3]!) - 2 * trSqrt;
  const got = frechetDistance(gaussian([0.5, 1], s1), gaussian([0, 0], s2));
  assert.ok(Math.abs(got - closed) < 1e-10 * closed, `${got} vs ${closed}`);
  // Symmetric in its arguments.
  const back = frechetDistance(gaussian([0, 0], s2), gaussian([0.5, 1], s1));
  assert.ok(Math.abs(back - closed) < 1e-10 * closed);

  // From samples: within sampling tolerance of the formula (N = 20 000, bias O(d/N)).
  const La = [2, 0, 0, 0, 1, 0, 0, 0, 3];
  const Lb = [1, 0, 0, 0, 1, 0, 0, 0, 0.5];
  const fa = toGaussian(statsOf(gaussianSamples(20000, [0, 0, 0], La, 2), 3));
  const fb = toGaussian(statsOf(gaussianSamples(20000, [1, 2, 0], Lb, 3), 3));
  const sampled = frechetDistance(fa, fb);
  assert.ok(Math.abs(sampled - diag) < 0.03 * diag, `sampled FID ${sampled} vs ${diag}`);
});

// ------------------------------------------------------------------------------------------------
// KID

/** k(x, y) = (xᵀy/d + 1)³. */
function poly(x: ArrayLike<number>, xi: number, y: ArrayLike<number>, yi: number, d: number): number {
  let s = 0;
  for (let k = 0; k < d; k++) s += (x[xi * d + k] as number) * (y[yi * d + k] as number);
  return (s / d + 1) ** 3;
}

/** m rows drawn uniformly with replacement from the rows of `pts`. */
function drawRows(pts: Float32Array, d: number, m: number, seed: number, which: number): Float32Array {
  const s = stream(seed, which, 1, Purpose.oracle);
  const n = pts.length / d;
  const out = new Float32Array(m * d);
  for (let r = 0; r < m; r++) {
    const k = s.int(n);
    out.set(pts.subarray(k * d, (k + 1) * d), r * d);
  }
  return out;
}

test('KID is unbiased: 0 on average for one distribution, the population MMD² for two', () => {
  const d = 4;
  const m = 40;
  const R = 150;
  const A = Float32Array.from([0, 0, 0, 0, 1, 0, 1, 0, 0, 2, 0, 1, -1, 1, 0, 0, 2, 2, 1, 1]);
  const B = Float32Array.from([0.5, 0, 0, 0, 1, 1, 1, 0, 0, 2, -1, 1, -1, 1, 1, 0, 2, 1, 1, 1]);
  const nA = A.length / d;
  const nB = B.length / d;
  let kaa = 0;
  let kbb = 0;
  let kab = 0;
  for (let i = 0; i < nA; i++) for (let j = 0; j < nA; j++) kaa += poly(A, i, A, j, d) / (nA * nA);
  for (let i = 0; i < nB; i++) for (let j = 0; j < nB; j++) kbb += poly(B, i, B, j, d) / (nB * nB);
  for (let i = 0; i < nA; i++) for (let j = 0; j < nB; j++) kab += poly(A, i, B, j, d) / (nA * nB);
  const population = kaa + kbb - 2 * kab;
  assert.ok(population > 0.1, `population MMD² ${population}`);
  for (const [label, other, target] of [
    ['same distribution', A, 0],
    ['two distributions', B, population],
  ] as const) {
    const values: number[] = [];
    let variance = 0;
    for (let r = 0; r < R; r++) {
      const res = mmd2Subset(drawRows(A, d, m, 10, 2 * r), drawRows(other, d, m, 10, 2 * r + 1), m, d);
      values.push(res.mmd2);
      variance += res.variance / R;
    }
    const mean = values.reduce((s, v) => s + v, 0) / R;
    const empSd = Math.sqrt(values.reduce((s, v) => s + (v - mean) ** 2, 0) / (R - 1));
    const se = empSd / Math.sqrt(R);
    assert.ok(Math.abs(mean - target) < 4 * se, `${label}: mean ${mean} vs ${target} (SE ${se})`);
    // The per-estimate standard error that `kid` reports matches the spread of the estimates.
    const ratio = Math.sqrt(variance) / empSd;
    assert.ok(ratio > 0.7 && ratio < 1.6, `${label}: predicted SE / observed SD = ${ratio}`);
  }
  // The biased (V-statistic) estimate would fail the first check: it is > 0 for equal distributions.
  const x = drawRows(A, d, m, 11, 0);
  const y = drawRows(A, d, m, 11, 1);
  let vxx = 0;
  let vyy = 0;
  let vxy = 0;
  let uxx = 0;
  let uyy = 0;
  for (let i = 0; i < m; i++)
    for (let j = 0; j < m; j++) {
      vxx += poly(x, i, x, j, d);
      vyy += poly(y, i, y, j, d);
      vxy += poly(x, i, y, j, d);
      if (i !== j) {
        uxx += poly(x, i, x, j, d);
        uyy += poly(y, i, y, j, d);
      }
    }
  const byHand = (uxx + uyy) / (m * (m - 1)) - (2 * vxy) / (m * m);
  assert.ok(Math.abs(mmd2Subset(x, y, m, d).mmd2 - byHand) < 1e-9 * (vxx / (m * m)));
  assert.ok((vxx + vyy - 2 * vxy) / (m * m) > byHand);
});

test('KID over subsets: deterministic per seed, near 0 for one distribution, large for two', () => {
  const d = 8;
  const L = Array.from({ length: d * d }, (_, i) => (i % (d + 1) === 0 ? 1 : 0));
  const x = gaussianSamples(600, Array(d).fill(0), L, 20);
  const y = gaussianSamples(600, Array(d).fill(0), L, 21);
  const z = gaussianSamples(600, Array(d).fill(0.5), L, 22);
  const same = kid(x, y, d, { subsets: 10, subsetSize: 200, seed: 1 });
  const again = kid(x, y, d, { subsets: 10, subsetSize: 200, seed: 1 });
  assert.equal(same.kid, again.kid);
  assert.equal(same.subsetSize, 200);
  assert.ok(same.se > 0 && Math.abs(same.kid) < 4 * same.se, `same: ${same.kid} ± ${same.se}`);
  const diff = kid(x, z, d, { subsets: 10, subsetSize: 200, seed: 1 });
  assert.ok(diff.kid > 10 * diff.se, `different: ${diff.kid} ± ${diff.se}`);
});

// ------------------------------------------------------------------------------------------------
// Inception Score, precision/recall

test('IS is 1 for uniform predictions and K for confident balanced ones', () => {
  const K = 7;
  const N = 70;
  const uniformLogits = new Float32Array(N * K).fill(3);
  const u = inceptionScore(uniformLogits, K, 5);
  assert.ok(Math.abs(u.mean - 1) < 1e-12 && u.std < 1e-12, `uniform: ${u.mean}`);
  const oneHot = new Float32Array(N * K).fill(-60);
  for (let r = 0; r < N; r++) oneHot[r * K + (r % K)] = 60;
  // One part: exactly K; ten parts of a random 7 rows each: less (a part's p(y) is not uniform).
  const o = inceptionScore(oneHot, K, 1);
  assert.ok(Math.abs(o.mean - K) < 1e-9, `one-hot: ${o.mean}`);
  // Confident but all one class: p(y) = p(y|x), KL = 0.
  const collapsed = new Float32Array(N * K).fill(-60);
  for (let r = 0; r < N; r++) collapsed[r * K] = 60;
  assert.ok(Math.abs(inceptionScore(collapsed, K, 1).mean - 1) < 1e-9);
  assert.throws(() => inceptionScore(oneHot, K, 0), /splits/);
  // Sorted by class (as datasets are) and cycling with the number of parts (as class-cycled
  // samples are): every part still sees all classes in about equal shares.
  const M = 7000;
  const sorted = new Float32Array(M * K).fill(-60);
  for (let r = 0; r < M; r++) sorted[r * K + Math.floor(r / (M / K))] = 60;
  const cycled = new Float32Array(M * 10).fill(-60);
  for (let r = 0; r < M; r++) cycled[r * 10 + (r % 10)] = 60;
  for (const [what, x, k] of [
    ['sorted', sorted, K],
    ['cycled', cycled, 10],
  ] as const) {
    const is = inceptionScore(x, k, 10).mean;
    assert.ok(is > 0.97 * k, `${what}: ${is}`);
  }
});

test('precision/recall: equal sets (1, 1), disjoint sets (0, 0), half inside (0.5, ·)', () => {
  const d = 5;
  const L = Array.from({ length: d * d }, (_, i) => (i % (d + 1) === 0 ? 1 : 0));
  const real = gaussianSamples(300, Array(d).fill(0), L, 30);
  const equal = precisionRecall(real, real.slice(), d);
  assert.deepEqual([equal.precision, equal.recall, equal.k], [1, 1, 3]);
  const far = gaussianSamples(200, Array(d).fill(100), L, 31);
  const disjoint = precisionRecall(real, far, d);
  assert.deepEqual([disjoint.precision, disjoint.recall], [0, 0]);
  const half = new Float32Array(200 * d);
  half.set(real.subarray(0, 100 * d));
  half.set(far.subarray(0, 100 * d), 100 * d);
  const pr = precisionRecall(real, half, d);
  assert.equal(pr.precision, 0.5);
  assert.ok(pr.recall > 0.2 && pr.recall < 1, `recall ${pr.recall}`);
});

// ------------------------------------------------------------------------------------------------
// clean-fid preprocessing and the graph-model loader

/** The fixture's input image (same formula as test/fixtures/pil-bicubic.py). */
function pilInput(h: number, w: number): Float32Array {
  const x = new Float32Array(h * w);
  for (let i = 0; i < h; i++)
    for (let j = 0; j < w; j++) x[i * w + j] = ((i * 37 + j * 101 + 13) % 256) + 0.25 * ((i + j) % 4);
  return x;
}

test("bicubic resize equals Pillow's (fixture) and reproduces analytic cases", () => {
  assert.equal(bicubicKernel(0), 1);
  assert.ok(bicubicKernel(1) === 0);
  assert.equal(bicubicKernel(-2), 0);
  assert.equal(bicubicKernel(0.5), 0.5625); // Keys, a = −0.5: 1.5·t³ − 2.5·t² + 1
  const fixture = JSON.parse(readFileSync(path.join(FIXTURES, 'pil-bicubic.json'), 'utf8')) as {
    cases: {
      in: [number, number];
      out: [number, number];
      rows: number[];
      cols: number[];
      values: number[][];
    }[];
  };
  assert.ok(fixture.cases.length >= 3);
  for (const c of fixture.cases) {
    const [h, w] = c.in;
    const [oh, ow] = c.out;
    const y = resizeBicubicPil(pilInput(h, w), h, w, oh, ow);
    let worst = 0;
    c.rows.forEach((r, ri) =>
      c.cols.forEach((col, ci) => {
        worst = Math.max(worst, Math.abs((y[r * ow + col] as number) - (c.values[ri]![ci] as number)));
      }),
    );
    assert.ok(worst < 1e-4, `${h}×${w} → ${oh}×${ow}: max |ours − Pillow| = ${worst}`);
  }
  // A constant stays constant; a linear ramp is kept exactly away from the edges (cubic convolution
  // reproduces polynomials up to degree 2 in the interior).
  const flat = resizeBicubicPil(new Float32Array(28 * 28).fill(77), 28, 28, 299, 299);
  assert.ok(flat.every((v) => Math.abs(v - 77) < 1e-4));
  const ramp = Float32Array.from({ length: 20 * 20 }, (_, i) => 3 * (i % 20));
  const up = resizeBicubicPil(ramp, 20, 20, 50, 50);
  for (let o = 10; o < 40; o++) {
    const expected = 3 * ((o + 0.5) * (20 / 50) - 0.5);
    assert.ok(Math.abs((up[25 * 50 + o] as number) - expected) < 1e-4, `ramp at ${o}`);
  }
});

const b64 = (s: string) => Buffer.from(s).toString('base64');
const fl = { type: 'DT_FLOAT' };
const shapeAttr = (dims: number[]) => ({ dim: dims.map((s) => ({ size: String(s) })) });
const constNode = (name: string, dims: number[], dtype = 'DT_FLOAT') => ({
  name,
  op: 'Const',
  attr: { dtype: { type: dtype }, value: { tensor: { dtype, tensorShape: shapeAttr(dims) } } },
});

/**
 * A random-weight graph model with the Inception interface: [N, 299, 299, 3] → conv 3×3/4 (8) →
 * ReLU → mean → features [N, 16] and logits [N, 10]. Returns its directory and weights.
 */
function writeGraphModel(
  where: string,
  seed: number,
): { kernel: Float32Array; fc: Float32Array; head: Float32Array } {
  const s = stream(seed, 0, 0, Purpose.init);
  const rand = (n: number) => Float32Array.from({ length: n }, () => s.normal() * 0.3);
  const kernel = rand(3 * 3 * 3 * 8);
  const fc = rand(8 * 16);
  const head = rand(16 * 10);
  const axes = Int32Array.from([1, 2]);
  const topology = {
    node: [
      {
        name: 'input',
        op: 'Placeholder',
        attr: { dtype: fl, shape: { shape: shapeAttr([-1, INCEPTION_SIZE, INCEPTION_SIZE, 3]) } },
      },
      constNode('conv/kernel', [3, 3, 3, 8]),
      {
        name: 'conv',
        op: 'Conv2D',
        input: ['input', 'conv/kernel'],
        attr: {
          T: fl,
          strides: { list: { i: ['1', '4', '4', '1'] } },
          padding: { s: b64('VALID') },
          data_format: { s: b64('NHWC') },
          dilations: { list: { i: ['1', '1', '1', '1'] } },
        },
      },
      { name: 'relu', op: 'Relu', input: ['conv'], attr: { T: fl } },
      constNode('pool/axes', [2], 'DT_INT32'),
      {
        name: 'pool',
        op: 'Mean',
        input: ['relu', 'pool/axes'],
        attr: { T: fl, Tidx: { type: 'DT_INT32' }, keep_dims: { b: false } },
      },
      constNode('fc/w', [8, 16]),
      {
        name: 'features',
        op: 'MatMul',
        input: ['pool', 'fc/w'],
        attr: { T: fl, transpose_a: { b: false }, transpose_b: { b: false } },
      },
      constNode('head/w', [16, 10]),
      {
        name: 'logits',
        op: 'MatMul',
        input: ['features', 'head/w'],
        attr: { T: fl, transpose_a: { b: false }, transpose_b: { b: false } },
      },
    ],
    versions: { producer: 1 },
  };
  const tensorInfo = (name: string, dims: number[]) => ({
    name,
    dtype: 'DT_FLOAT',
    tensorShape: shapeAttr(dims),
  });
  const model = {
    format: 'graph-model',
    generatedBy: 'test/eval-metrics.test.ts',
    convertedBy: null,
    modelTopology: topology,
    signature: {
      inputs: { input: tensorInfo('input:0', [-1, INCEPTION_SIZE, INCEPTION_SIZE, 3]) },
      outputs: { features: tensorInfo('features:0', [-1, 16]), logits: tensorInfo('logits:0', [-1, 10]) },
    },
    weightsManifest: [
      {
        paths: ['group1-shard1of2.bin', 'group1-shard2of2.bin'],
        weights: [
          { name: 'conv/kernel', shape: [3, 3, 3, 8], dtype: 'float32' },
          { name: 'pool/axes', shape: [2], dtype: 'int32' },
          { name: 'fc/w', shape: [8, 16], dtype: 'float32' },
          { name: 'head/w', shape: [16, 10], dtype: 'float32' },
        ],
      },
    ],
  };
  mkdirSync(where, { recursive: true });
  writeFileSync(path.join(where, 'model.json'), JSON.stringify(model));
  const bytes = Buffer.concat([kernel, axes, fc, head].map((a) => Buffer.from(a.buffer)));
  // Two shards, split mid-tensor, as the converter does for large weights.
  writeFileSync(path.join(where, 'group1-shard1of2.bin'), bytes.subarray(0, 100));
  writeFileSync(path.join(where, 'group1-shard2of2.bin'), bytes.subarray(100));
  return { kernel, fc, head };
}

const graphDir = path.join(dir, 'inception-random');
const graphWeights = writeGraphModel(graphDir, 5);

test('graph-model loader: a random-weight Inception-shaped net gives the same features as direct ops', async () => {
  const net = await loadInception(graphDir);
  try {
    assert.equal(net.dim, 16);
    assert.equal(net.classes, 10);
    assert.equal(net.standard, false);
    assert.match(net.id, /^inception:sha256=[0-9a-f]{64}:pre=clean-fid/);
    const imgs = [0, 1, 2].map((k) => ({
      data: Uint8Array.from({ length: 28 * 28 }, (_, i) => (i * (k + 3) * 7) % 256),
      shape: [28, 28, 1] as const,
      label: -1,
    }));
    const { features, logits } = net.extract(imgs);
    const x = new Float32Array(3 * INCEPTION_SIZE * INCEPTION_SIZE * 3);
    imgs.forEach((im, i) => x.set(cleanFidInput(im), i * INCEPTION_SIZE * INCEPTION_SIZE * 3));
    // Grey replicated to RGB, normalised (x − 128)/128 into [−1, 0.9921875].
    assert.ok(x.every((v) => v >= -1 && v <= 127 / 128));
    const [f, l] = tf.tidy(() => {
      const conv = tf.relu(
        tf.conv2d(
          tf.tensor4d(x, [3, INCEPTION_SIZE, INCEPTION_SIZE, 3]),
          tf.tensor4d(graphWeights.kernel, [3, 3, 3, 8]),
          4,
          'valid',
        ),
      );
      const feat = tf.matMul(tf.mean(conv, [1, 2]) as tf.Tensor2D, tf.tensor2d(graphWeights.fc, [8, 16]));
      return [feat.dataSync(), tf.matMul(feat, tf.tensor2d(graphWeights.head, [16, 10])).dataSync()];
    });
    for (let i = 0; i < f!.length; i++) assert.ok(Math.abs(features[i]! - f![i]!) < 1e-4, `feature ${i}`);
    for (let i = 0; i < l!.length; i++) assert.ok(Math.abs(logits![i]! - l![i]!) < 1e-4, `logit ${i}`);
    // A float image in [−1, 1] is quantised as its PNG export would be: the same features.
    const asFloat = {
      data: Float32Array.from(imgs[0]!.data, (v) => v / 127.5 - 1),
      shape: [28, 28, 1],
      label: -1,
    };
    const fromFloat = net.extract([asFloat]).features;
    for (let i = 0; i < 16; i++) assert.ok(Math.abs(fromFloat[i]! - features[i]!) < 1e-5);
  } finally {
    net.dispose();
  }
  await assert.rejects(
    loadInception(path.join(dir, 'nowhere')),
    /model\.json: cannot read the graph model \(no such file\)/,
  );
});

// ------------------------------------------------------------------------------------------------
// The built-in feature network

test('mnistcnn: a few training steps lower the loss', async () => {
  const ds = imageDataset(openSource('mnist:train'), { imageSize: 32, channels: 1 });
  try {
    const t = await trainFeatureNet(ds, {
      epochs: 1,
      steps: 80,
      batch: 32,
      lr: 2e-3,
      seed: 3,
      valFraction: 0.02,
    });
    try {
      const first = t.losses.slice(0, 5).reduce((a, b) => a + b, 0) / 5;
      const last = t.losses.slice(-5).reduce((a, b) => a + b, 0) / 5;
      assert.equal(t.losses.length, 80);
      assert.ok(first > 2 && last < 0.85 * first, `loss ${first} → ${last}`);
      assert.ok(t.valAccuracy > 0.3, `held-out accuracy ${t.valAccuracy}`);
    } finally {
      disposeParams(t.params);
    }
  } finally {
    ds.close();
  }
});

// ------------------------------------------------------------------------------------------------
// CLI

function run(args: string[]) {
  const r = spawnSync(process.execPath, [BIN, ...args], {
    encoding: 'utf8',
    env: { ...process.env, RINGDIFF_CACHE_DIR: path.join(dir, 'cache') },
    timeout: 120_000,
  });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

function failsWithOneLine(args: string[], re: RegExp): void {
  const r = run(args);
  assert.notEqual(r.code, 0, `expected failure: ${args.join(' ')}`);
  const lines = r.stderr.trim().split('\n');
  assert.equal(lines.length, 1, `expected one line, got:\n${r.stderr}`);
  assert.match(lines[0]!, re);
}

/** 120 mnist:test digits as ringdiff sample writes them: float32 [N, 32, 32, 1] in [−1, 1], optionally noised. */
function writeSamples(file: string, noise: number): void {
  const ds = imageDataset(openSource('mnist:test'), { imageSize: 32, channels: 1 });
  const n = 120;
  const data = new Float32Array(n * 32 * 32);
  const s = stream(9, 0, 0, Purpose.oracle);
  for (let i = 0; i < n; i++) data.set(ds.get(i * 7).x, i * 32 * 32);
  for (let i = 0; i < data.length; i++) data[i] = Math.max(-1, Math.min(1, data[i]! + noise * s.normal()));
  ds.close();
  writeFileSync(file, encodeNpy(data, [n, 32, 32, 1]));
}

const weights = path.join(dir, 'nets', 'mnistcnn.safetensors');
let weightsReady: Promise<void> | undefined;
function trainedWeights(): Promise<void> {
  weightsReady ??= (async () => {
    const r = run([
      'eval',
      'train-features',
      '--data',
      'mnist:train',
      '--out',
      weights,
      '--steps',
      '60',
      '--json',
    ]);
    assert.equal(r.code, 0, r.stderr);
    const j = JSON.parse(r.stdout) as { steps: number; final_loss: number; first_loss: number };
    assert.equal(j.steps, 60);
    assert.ok(j.final_loss < j.first_loss);
  })();
  return weightsReady;
}

test('eval fid end to end: --json metrics, cached reference, exports, noise scores worse', async () => {
  await trainedWeights();
  const clean = path.join(dir, 'clean.npy');
  const noisy = path.join(dir, 'noisy.npy');
  writeSamples(clean, 0);
  writeSamples(noisy, 0.5);
  const args = (samples: string) => [
    'eval',
    'fid',
    '--samples',
    samples,
    '--ref',
    'mnist:train',
    '--ref-count',
    '300',
    '--net',
    `mnistcnn=${weights}`,
    '--kid-subsets',
    '5',
    '--kid-subset-size',
    '100',
    '--json',
  ];
  const npz = path.join(dir, 'out', 'samples.npz');
  const pngs = path.join(dir, 'out', 'pngs');
  const r1 = run([...args(clean), '--export-npz', npz, '--export-png', pngs]);
  assert.equal(r1.code, 0, r1.stderr);
  const j1 = JSON.parse(r1.stdout) as { metrics: Record<string, number>; ref_cached: boolean; count: number };
  assert.equal(j1.count, 120);
  assert.equal(j1.ref_cached, false);
  for (const k of ['fid', 'kid', 'kid_%_se', 'is', 'is_%_std', 'precision', 'recall']) {
    const key = k.includes('%') ? k.replace('%', 'mnistcnn') : `${k}_mnistcnn`;
    assert.ok(Number.isFinite(j1.metrics[key]), `${key} = ${j1.metrics[key]}`);
  }
  assert.equal(
    Object.keys(j1.metrics).some((k) => k === 'fid'),
    false,
  );
  const r2 = run(args(clean));
  const j2 = JSON.parse(r2.stdout) as { metrics: Record<string, number>; ref_cached: boolean };
  assert.equal(j2.ref_cached, true);
  assert.deepEqual(j2.metrics, j1.metrics);
  const r3 = run(args(noisy));
  const j3 = JSON.parse(r3.stdout) as { metrics: Record<string, number> };
  assert.ok(
    j3.metrics.fid_mnistcnn! > j1.metrics.fid_mnistcnn!,
    `noisy ${j3.metrics.fid_mnistcnn} vs clean ${j1.metrics.fid_mnistcnn}`,
  );
  assert.ok(j3.metrics.kid_mnistcnn! > j1.metrics.kid_mnistcnn!);
  // guided-diffusion's layout: arr_0, uint8 [N, H, W, C].
  const members = unzipSync(readFileSync(npz));
  assert.deepEqual(Object.keys(members), ['arr_0.npy']);
  const h = readNpyHeader(memoryBytes('arr_0', members['arr_0.npy']!));
  assert.equal(h.descr, '|u1');
  assert.deepEqual(h.shape, [120, 32, 32, 1]);
  assert.equal(readdirSync(pngs).filter((f) => f.endsWith('.png')).length, 120);
  // The exports read back as samples give the same features (up to quantisation).
  const r4 = run([...args(npz)]);
  const j4 = JSON.parse(r4.stdout) as { metrics: Record<string, number> };
  const r5 = run([...args(pngs)]);
  const j5 = JSON.parse(r5.stdout) as { metrics: Record<string, number> };
  assert.ok(
    Math.abs(j4.metrics.fid_mnistcnn! - j5.metrics.fid_mnistcnn!) < 1e-6 * (1 + j4.metrics.fid_mnistcnn!),
  );
  assert.ok(
    Math.abs(j4.metrics.fid_mnistcnn! - j1.metrics.fid_mnistcnn!) < 0.05 * j1.metrics.fid_mnistcnn! + 1e-3,
  );
  // The table for people names the metrics after the network.
  const table = run(args(clean).filter((a) => a !== '--json'));
  assert.equal(table.code, 0, table.stderr);
  assert.match(table.stdout, /fid_mnistcnn\s+\d/);
  assert.match(table.stdout, /kid_mnistcnn\s+-?\d\.\d+e[+-]\d+ ± /);
});

test('eval fid with --inception (random-weight graph model) and pytorch-fid stats refused for it', async () => {
  const samples = path.join(dir, 'tiny.npz');
  const imgs = Uint8Array.from({ length: 6 * 20 * 20 * 3 }, (_, i) => (i * 31) % 256);
  writeFileSync(samples, encodeNpz({ arr_0: encodeNpy(imgs, [6, 20, 20, 3]) }));
  const base = ['eval', 'fid', '--samples', samples, '--ref', 'mnist:test', '--ref-count', '6'];
  const r = run([...base, '--inception', graphDir, '--is-splits', '2', '--kid-subsets', '2', '--json']);
  assert.equal(r.code, 0, r.stderr);
  const j = JSON.parse(r.stdout) as { net: string; metrics: Record<string, number> };
  assert.equal(j.net, 'inception');
  assert.ok(Number.isFinite(j.metrics.fid_inception) && Number.isFinite(j.metrics.is_inception));
  const stats = path.join(dir, 'stats.npz');
  failsWithOneLine(
    [...base, '--inception', graphDir, '--is-splits', '2', '--export-stats', stats],
    /not the standard 2048-feature Inception/,
  );
  assert.equal(existsSync(stats), false);
  failsWithOneLine(
    [...base, '--net', `mnistcnn=${weights}`, '--export-stats', stats],
    /only statistics of the standard Inception/,
  );
  // The pytorch-fid layout itself: mu [D], sigma [D, D], float64.
  const f64 = encodeNpyFloat64(Float64Array.from([1.5, -2]), [2]);
  const hh = readNpyHeader(memoryBytes('mu', f64));
  assert.equal(hh.descr, '<f8');
  assert.deepEqual(hh.shape, [2]);
  assert.equal(new Float64Array(Uint8Array.from(f64.subarray(hh.dataOffset)).buffer)[1], -2);
});

test('eval fid: bad input is one line naming what is wrong, and writes nothing', async () => {
  await trainedWeights();
  const samples = path.join(dir, 'clean.npy');
  if (!existsSync(samples)) writeSamples(samples, 0);
  const out = path.join(dir, 'never.npz');
  const base = ['eval', 'fid', '--ref', 'mnist:test', '--export-npz', out];
  failsWithOneLine(
    [...base, '--samples', path.join(dir, 'missing.npy'), '--net', `mnistcnn=${weights}`],
    /--samples .*missing\.npy: no such file/,
  );
  const noArr = path.join(dir, 'noarr.npz');
  const arr = encodeNpy(new Uint8Array(16), [1, 4, 4, 1]);
  writeFileSync(noArr, encodeNpz({ images: arr, labels: arr }));
  failsWithOneLine(
    [...base, '--samples', noArr, '--net', `mnistcnn=${weights}`],
    /noarr\.npz: has no array 'arr_0' \(arrays: images, labels\)/,
  );
  failsWithOneLine(
    [...base, '--samples', samples, '--net', 'resnet=x'],
    /--net resnet=x: expected mnistcnn=<weights/,
  );
  failsWithOneLine(
    [...base, '--samples', samples, '--net', `mnistcnn=${weights}`, '--inception', graphDir],
    /give one feature network/,
  );
  failsWithOneLine([...base, '--samples', samples], /give one feature network/);
  failsWithOneLine(
    [...base, '--samples', samples, '--net', `mnistcnn=${weights}`, '--count', '5000'],
    /--count 5000: .* holds only 120/,
  );
  failsWithOneLine(
    ['eval', 'fid', '--samples', samples, '--ref', 'imagenet', '--net', `mnistcnn=${weights}`],
    /--ref imagenet: .*unknown dataset kind 'imagenet'/,
  );
  // A safetensors file that is not a feature network: named, with the field.
  const notNet = path.join(dir, 'not-a-net.safetensors');
  writeFileSync(notNet, Buffer.from(encodeNpy(new Uint8Array(1), [1])));
  failsWithOneLine(
    [...base, '--samples', samples, '--net', `mnistcnn=${notNet}`],
    /--net: .*not-a-net\.safetensors/,
  );
  const { encodeSafetensors } = await import('../src/model/safetensors.js');
  writeFileSync(
    notNet,
    encodeSafetensors(new Map([['w', { shape: [1], data: new Float32Array(1) }]]), { arch: 'x' }),
  );
  failsWithOneLine(
    [...base, '--samples', samples, '--net', `mnistcnn=${notNet}`],
    /not-a-net\.safetensors: metadata 'ringdiff_feature_net' is null/,
  );
  assert.equal(existsSync(out), false);
  failsWithOneLine(
    ['eval', 'train-features', '--data', 'mnist:test', '--out', path.join(dir, 'w.bin')],
    /--out .*w\.bin: .*\.safetensors/,
  );
  failsWithOneLine(
    ['eval', 'train-features', '--data', 'toy:8gaussians', '--out', path.join(dir, 'w.safetensors')],
    /--data toy:8gaussians/,
  );
});
