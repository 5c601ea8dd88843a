/**
 * Kernel throughput of `cpu-native` against TF.js's pure-JS `cpu`, side by side in one process
 * (the machine is noisy: only same-run ratios mean anything).
 *
 *   node dist/bench/kernels.js [--quick] [--threads N] [--batch B] [--no-cpu]
 *
 * 1. GFLOP/s of conv forward / backprop-input / backprop-filter for every convolution of the
 *    anchor U-Net (../shared/anchors/ddp_ddpm.py) at batch B (default 32), with totals: the
 *    time a training step spends in convolutions.
 * 2. ns per element of the memory-bound kernels a U-Net step runs (binary ops with the
 *    broadcasts GroupNorm uses, reductions, SiLU's sigmoid, concat, slices), native and JS.
 * 3. The time of a training-like forward+backward of a small conv stack on both backends.
 *
 * Timings are the minimum over repeats: with other jobs on the machine, the minimum is the
 * least disturbed run.
 */
import * as tf from '@tensorflow/tfjs';
import { registerCpuNative, setNativeThreads } from '../src/model/backend/native.js';

interface ConvCase {
  name: string;
  /** Input height = width (before the explicit padding of stride-2 convs), channels in/out. */
  h: number;
  cin: number;
  cout: number;
  k: number;
  stride: 1 | 2;
}

// Every convolution of the anchor U-Net, in forward order.
const CASES: ConvCase[] = [
  { name: 'conv_in', h: 32, cin: 1, cout: 32, k: 3, stride: 1 },
  { name: 'enc0.c1', h: 32, cin: 32, cout: 32, k: 3, stride: 1 },
  { name: 'enc0.c2', h: 32, cin: 32, cout: 32, k: 3, stride: 1 },
  { name: 'down0', h: 32, cin: 32, cout: 32, k: 3, stride: 2 },
  { name: 'enc1.c1', h: 16, cin: 32, cout: 64, k: 3, stride: 1 },
  { name: 'enc1.c2', h: 16, cin: 64, cout: 64, k: 3, stride: 1 },
  { name: 'enc1.skip', h: 16, cin: 32, cout: 64, k: 1, stride: 1 },
  { name: 'down1', h: 16, cin: 64, cout: 64, k: 3, stride: 2 },
  { name: 'enc2.c1', h: 8, cin: 64, cout: 128, k: 3, stride: 1 },
  { name: 'enc2.c2', h: 8, cin: 128, cout: 128, k: 3, stride: 1 },
  { name: 'enc2.skip', h: 8, cin: 64, cout: 128, k: 1, stride: 1 },
  { name: 'up1', h: 16, cin: 128, cout: 64, k: 3, stride: 1 },
  { name: 'dec1.c1', h: 16, cin: 128, cout: 64, k: 3, stride: 1 },
  { name: 'dec1.c2', h: 16, cin: 64, cout: 64, k: 3, stride: 1 },
  { name: 'dec1.skip', h: 16, cin: 128, cout: 64, k: 1, stride: 1 },
  { name: 'up0', h: 32, cin: 64, cout: 32, k: 3, stride: 1 },
  { name: 'dec0.c1', h: 32, cin: 64, cout: 32, k: 3, stride: 1 },
  { name: 'dec0.c2', h: 32, cin: 32, cout: 32, k: 3, stride: 1 },
  { name: 'dec0.skip', h: 32, cin: 64, cout: 32, k: 1, stride: 1 },
  { name: 'out', h: 32, cin: 32, cout: 1, k: 3, stride: 1 },
];

/** Minimum ms of fn over up to maxIters runs lasting at least minMs in all (one warm-up run first). */
function timeIt(fn: () => void, minMs: number, maxIters: number): number {
  // Warm-up (scratch buffers, the output pool, lazy init) only where runs are cheap.
  if (maxIters > 2) fn();
  let best = Infinity;
  let n = 0;
  const start = performance.now();
  while (n < maxIters && (n < 2 || performance.now() - start < minMs)) {
    const t0 = performance.now();
    fn();
    best = Math.min(best, performance.now() - t0);
    n++;
  }
  return best;
}

// Returning the typed array from tidy would make TF.js scan every element for tensors.
const run = (f: () => tf.Tensor) => () =>
  tf.tidy(() => {
    f().dataSync();
  });

/** Min ms of conv forward, backprop-input and backprop-filter at batch b on the current backend. */
function convTimes(c: ConvCase, b: number, minMs: number, maxIters: number): [number, number, number] {
  // Stride-2 convs run 'valid' on an input padded by one pixel, as nn.ts does.
  const hin = c.stride === 2 ? c.h + 2 : c.h;
  const pad = c.stride === 2 ? 'valid' : 'same';
  const xShape: [number, number, number, number] = [b, hin, hin, c.cin];
  const x = tf.randomNormal(xShape, 0, 1, 'float32', 1) as tf.Tensor4D;
  const w = tf.randomNormal([c.k, c.k, c.cin, c.cout], 0, 0.1, 'float32', 2) as tf.Tensor4D;
  const y = tf.conv2d(x, w, c.stride, pad);
  const dy = tf.randomNormal(y.shape, 0, 1, 'float32', 3) as tf.Tensor4D;
  const attrs = { strides: c.stride, pad, dataFormat: 'NHWC' };
  const kernel = (name: string, inputs: tf.NamedTensorMap, extra: tf.NamedAttrMap) =>
    run(() => tf.engine().runKernel(name, inputs, { ...attrs, ...extra }) as tf.Tensor);
  const fwd = timeIt(
    run(() => tf.conv2d(x, w, c.stride, pad)),
    minMs,
    maxIters,
  );
  const bin = timeIt(
    kernel(tf.Conv2DBackpropInput, { dy, filter: w }, { inputShape: xShape }),
    minMs,
    maxIters,
  );
  const bfil = timeIt(kernel(tf.Conv2DBackpropFilter, { x, dy }, { filterShape: w.shape }), minMs, maxIters);
  tf.dispose([x, w, y, dy]);
  return [fwd, bin, bfil];
}

function convFlops(c: ConvCase, b: number): number {
  const oh = c.h / c.stride;
  return 2 * b * oh * oh * c.k * c.k * c.cin * c.cout;
}

interface EwCase {
  name: string;
  /** Elements the kernel writes (or reads, for reductions): the ns/element denominator. */
  elems: number;
  make: () => tf.Tensor[];
  op: (t: tf.Tensor[]) => tf.Tensor;
}

// The memory-bound kernels of a step at the anchor's largest activation, [32, 32, 32, 32].
const S: [number, number, number, number] = [32, 32, 32, 32];
const N = S.reduce((p, d) => p * d, 1);
const rnd = (shape: number[], seed: number) => () => tf.randomNormal(shape, 0, 1, 'float32', seed);
const EW: EwCase[] = [
  { name: 'mul x·y', elems: N, make: () => [rnd(S, 1)(), rnd(S, 2)()], op: ([a, b]) => tf.mul(a!, b!) },
  {
    name: 'add x + [B,1,1,C]',
    elems: N,
    make: () => [rnd(S, 1)(), rnd([32, 1, 1, 32], 2)()],
    op: ([a, b]) => tf.add(a!, b!),
  },
  { name: 'sub 1 − x', elems: N, make: () => [rnd(S, 1)()], op: ([a]) => tf.sub(1, a!) },
  { name: 'sigmoid', elems: N, make: () => [rnd(S, 1)()], op: ([a]) => tf.sigmoid(a!) },
  { name: 'sqrt |x|', elems: N, make: () => [tf.abs(rnd(S, 1)())], op: ([a]) => tf.sqrt(a!) },
  {
    name: 'sum over H,W (GN bwd)',
    elems: N,
    make: () => [rnd(S, 1)()],
    op: ([a]) => tf.sum(a!, [1, 2]),
  },
  {
    name: 'sum over B,H,W (bias grad)',
    elems: N,
    make: () => [rnd(S, 1)()],
    op: ([a]) => tf.sum(a!, [0, 1, 2]),
  },
  {
    name: 'mean [B,HW,G,C/G] (GN stats)',
    elems: N,
    make: () => [tf.reshape(rnd(S, 1)(), [32, 1024, 8, 4])],
    op: ([a]) => tf.mean(a!, [1, 3], true),
  },
  {
    name: 'concat on channels',
    elems: 2 * N,
    make: () => [rnd(S, 1)(), rnd(S, 2)()],
    op: ([a, b]) => tf.concat([a!, b!], 3),
  },
  {
    name: 'slice half the channels',
    elems: N / 2,
    make: () => [rnd(S, 1)()],
    op: ([a]) => tf.slice(a!, [0, 0, 0, 0], [32, 32, 32, 16]),
  },
  {
    name: 'nearest ×2 (broadcast add)',
    elems: 4 * N,
    make: () => [tf.reshape(rnd(S, 1)(), [32 * 32, 1, 32, 1, 32]), tf.zeros([1, 2, 1, 2, 1])],
    op: ([a, b]) => tf.add(a!, b!),
  },
];

function ewTime(c: EwCase, minMs: number, maxIters: number): number {
  const inputs = c.make();
  const ms = timeIt(
    run(() => c.op(inputs)),
    minMs,
    maxIters,
  );
  tf.dispose(inputs);
  return ms;
}

/** Three 3×3 convs (32→64→64→32) with relu at 32×32, batch 8: loss, grads of filters and input. */
function convStackStep(): () => void {
  const x = tf.randomNormal([8, 32, 32, 32], 0, 1, 'float32', 11) as tf.Tensor4D;
  const ws = [
    tf.randomNormal([3, 3, 32, 64], 0, 0.06, 'float32', 12),
    tf.randomNormal([3, 3, 64, 64], 0, 0.04, 'float32', 13),
    tf.randomNormal([3, 3, 64, 32], 0, 0.04, 'float32', 14),
  ] as tf.Tensor4D[];
  const f = (xx: tf.Tensor, w0: tf.Tensor, w1: tf.Tensor, w2: tf.Tensor) => {
    let h = tf.relu(tf.conv2d(xx as tf.Tensor4D, w0 as tf.Tensor4D, 1, 'same'));
    h = tf.relu(tf.conv2d(h, w1 as tf.Tensor4D, 1, 'same'));
    return tf
      .conv2d(h, w2 as tf.Tensor4D, 1, 'same')
      .square()
      .mean();
  };
  const g = tf.grads(f);
  return () =>
    tf.tidy(() => {
      for (const t of g([x, ...ws])) t.dataSync();
    });
}

const STACK_FLOPS = 3 * 2 * 8 * 32 * 32 * 9 * (32 * 64 + 64 * 64 + 64 * 32);

function argValue(argv: string[], flag: string): number | undefined {
  const i = argv.indexOf(flag);
  if (i < 0) return undefined;
  const v = Number(argv[i + 1]);
  if (!Number.isInteger(v) || v < 1) throw new Error(`${flag} needs a positive integer`);
  return v;
}

async function main(): Promise<void> {
  const argv = process.argv.slice(2);
  const quick = argv.includes('--quick');
  const withCpu = !argv.includes('--no-cpu');
  const batch = argValue(argv, '--batch') ?? 32;
  const threadsArg = argValue(argv, '--threads');
  tf.enableProdMode();
  const st = registerCpuNative();
  if (!st.ok) {
    console.error(`cpu-native unavailable: ${st.reason}`);
    process.exit(1);
  }
  if (threadsArg !== undefined) setNativeThreads(threadsArg);
  const threads = registerCpuNative().threads;
  console.log(`cpu-native: ${st.gemm}, ${threads} thread(s); tfjs ${tf.version.tfjs}`);
  const minMs = quick ? 200 : 1000;

  console.log(`\nanchor U-Net convolutions, batch ${batch}, cpu-native (min ms and GFLOP/s)`);
  console.log('                   forward              backprop-input       backprop-filter');
  await tf.setBackend('cpu-native');
  const total = [0, 0, 0];
  let flops = 0;
  for (const c of CASES) {
    const t = convTimes(c, batch, minMs, quick ? 5 : 20);
    const f = convFlops(c, batch);
    flops += f;
    t.forEach((ms, i) => (total[i] = (total[i] as number) + ms));
    const cell = (ms: number) => `${ms.toFixed(2).padStart(7)} ms ${(f / ms / 1e6).toFixed(1).padStart(5)}`;
    console.log(`${c.name.padEnd(12)} ${t.map(cell).join('   ')}`);
  }
  const [tf0, tb0, tw0] = total as [number, number, number];
  console.log(
    `${'total'.padEnd(12)} ${[tf0, tb0, tw0]
      .map((ms) => `${ms.toFixed(1).padStart(7)} ms ${(flops / ms / 1e6).toFixed(1).padStart(5)}`)
      .join('   ')}`,
  );
  console.log(
    `  ${((3 * flops) / 1e9).toFixed(2)} GFLOP per training step in ${(tf0 + tb0 + tw0).toFixed(0)} ms: ` +
      `${((3 * flops) / (tf0 + tb0 + tw0) / 1e6).toFixed(1)} GFLOP/s`,
  );

  console.log('\nmemory-bound kernels on [32, 32, 32, 32] (ns per element, min)   native      cpu');
  for (const c of EW) {
    await tf.setBackend('cpu-native');
    const n = ewTime(c, minMs / 4, 30);
    let cpu: number | null = null;
    if (withCpu) {
      await tf.setBackend('cpu');
      cpu = ewTime(c, 0, quick ? 1 : 3);
    }
    const ns = (ms: number) => ((ms * 1e6) / c.elems).toFixed(2).padStart(8);
    console.log(`  ${c.name.padEnd(34)} ${ns(n)} ${cpu === null ? '       -' : ns(cpu)}`);
  }

  console.log('\nconv stack fwd+bwd (3× 3x3 conv 32→64→64→32 + relu, 32×32, batch 8):');
  await tf.setBackend('cpu-native');
  const nativeMs = timeIt(convStackStep(), quick ? 500 : 3000, 50);
  console.log(
    `  cpu-native ${nativeMs.toFixed(1)} ms/step (${(STACK_FLOPS / nativeMs / 1e6).toFixed(1)} GFLOP/s)`,
  );
  if (withCpu && !quick) {
    await tf.setBackend('cpu');
    const cpuMs = timeIt(convStackStep(), 0, 1); // one run: minutes on the JS backend
    console.log(
      `  cpu        ${cpuMs.toFixed(1)} ms/step (${(STACK_FLOPS / cpuMs / 1e6).toFixed(2)} GFLOP/s)`,
    );
    console.log(`  speed-up   ${(cpuMs / nativeMs).toFixed(0)}×`);
  }
}

await main();
