/**
 * Kernel throughput of `cpu-native` against TF.js's pure-JS `cpu`, side by side in one process
 * (the machine is noisy: only same-run ratios mean anything).
 *
 *   node dist/bench/kernels.js [--quick] [--threads N] [--no-cpu]
 *
 * Prints GFLOP/s of conv forward / backprop-input / backprop-filter at the anchor U-Net's shapes,
 * then the time of a training-like forward+backward of a small conv stack on both backends.
 */
import * as tf from '@tensorflow/tfjs';
import { registerCpuNative, setNativeThreads } from '../src/model/backend/native.js';

interface ConvCase {
  name: string;
  x: [number, number, number, number];
  k: number;
  cout: number;
  stride: number;
}

// Batch 8 at the anchor's resolutions: conv_in, enc0, down0, enc1, enc1 skip, dec1, up0, out.
const CASES: ConvCase[] = [
  { name: 'conv_in 1→32 @32', x: [8, 32, 32, 1], k: 3, cout: 32, stride: 1 },
  { name: 'enc0 32→32 @32', x: [8, 32, 32, 32], k: 3, cout: 32, stride: 1 },
  { name: 'down0 32→32 s2', x: [8, 32, 32, 32], k: 3, cout: 32, stride: 2 },
  { name: 'enc1 32→64 @16', x: [8, 16, 16, 32], k: 3, cout: 64, stride: 1 },
  { name: 'skip 1x1 32→64 @16', x: [8, 16, 16, 32], k: 1, cout: 64, stride: 1 },
  { name: 'enc2 64→128 @8', x: [8, 8, 8, 64], k: 3, cout: 128, stride: 1 },
  { name: 'dec1 128→64 @16', x: [8, 16, 16, 128], k: 3, cout: 64, stride: 1 },
  { name: 'dec0 64→32 @32', x: [8, 32, 32, 64], k: 3, cout: 32, stride: 1 },
];

function timeIt(fn: () => void, minMs: number, maxIters: number): number {
  // Warm-up (scratch buffers, lazy init) only where runs are cheap: the JS backend needs none.
  if (maxIters > 2) fn();
  const times: number[] = [];
  const start = performance.now();
  while (times.length < maxIters && (times.length < 2 || performance.now() - start < minMs)) {
    const t0 = performance.now();
    fn();
    times.push(performance.now() - t0);
  }
  times.sort((a, b) => a - b);
  return times[Math.floor(times.length / 2)] as number;
}

function convFlops(c: ConvCase): number {
  const [n, h, w, cin] = c.x;
  const oh = Math.ceil(h / c.stride);
  const ow = Math.ceil(w / c.stride);
  return 2 * n * oh * ow * c.k * c.k * cin * c.cout;
}

/** Median ms of conv forward, backprop-input and backprop-filter on the current backend. */
function convTimes(c: ConvCase, minMs: number, maxIters: number): [number, number, number] {
  const x = tf.randomNormal(c.x, 0, 1, 'float32', 1);
  const w = tf.randomNormal([c.k, c.k, c.x[3], c.cout], 0, 0.1, 'float32', 2);
  const y = tf.conv2d(x as tf.Tensor4D, w as tf.Tensor4D, c.stride, 'same');
  const dy = tf.randomNormal(y.shape, 0, 1, 'float32', 3) as tf.Tensor4D;
  // Returning the typed array from tidy would make TF.js scan every element for tensors.
  const run = (f: () => tf.Tensor) => () =>
    tf.tidy(() => {
      f().dataSync();
    });
  const attrs = { strides: c.stride, pad: 'same', dataFormat: 'NHWC' };
  const kernel = (name: string, inputs: tf.NamedTensorMap, extra: tf.NamedAttrMap) =>
    run(() => tf.engine().runKernel(name, inputs, { ...attrs, ...extra }) as tf.Tensor);
  const fwd = timeIt(
    run(() => tf.conv2d(x as tf.Tensor4D, w as tf.Tensor4D, c.stride, 'same')),
    minMs,
    maxIters,
  );
  const bin = timeIt(kernel(tf.Conv2DBackpropInput, { dy, filter: w }, { inputShape: c.x }), minMs, maxIters);
  const bfil = timeIt(kernel(tf.Conv2DBackpropFilter, { x, dy }, { filterShape: w.shape }), minMs, maxIters);
  tf.dispose([x, w, y, dy]);
  return [fwd, bin, bfil];
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

async function main(): Promise<void> {
  const argv = process.argv.slice(2);
  const quick = argv.includes('--quick');
  const withCpu = !argv.includes('--no-cpu');
  const ti = argv.indexOf('--threads');
  tf.enableProdMode();
  const st = registerCpuNative();
  if (!st.ok) {
    console.error(`cpu-native unavailable: ${st.reason}`);
    process.exit(1);
  }
  if (ti >= 0) setNativeThreads(Number(argv[ti + 1]));
  const threads = registerCpuNative().threads;
  console.log(`cpu-native: ${st.blas}, ${threads} thread(s); tfjs ${tf.version.tfjs}`);
  const minMs = quick ? 300 : 1500;

  console.log(
    '\nGFLOP/s (median)            fwd native / cpu    bwd-input native / cpu   bwd-filter native / cpu',
  );
  for (const c of CASES) {
    const gf = convFlops(c) / 1e9;
    await tf.setBackend('cpu-native');
    const n = convTimes(c, minMs, 200);
    let cpu: [number, number, number] | null = null;
    if (withCpu && !quick) {
      await tf.setBackend('cpu');
      cpu = convTimes(c, 0, 1); // one run: the JS backprop-filter takes tens of seconds here
    }
    const fmt = (i: 0 | 1 | 2) =>
      `${(gf / (n[i] / 1e3)).toFixed(1).padStart(7)} / ${cpu ? (gf / (cpu[i] / 1e3)).toFixed(2).padStart(5) : '    -'}`;
    console.log(`${c.name.padEnd(24)} ${fmt(0)}        ${fmt(1)}            ${fmt(2)}`);
  }

  console.log('\nconv stack fwd+bwd (3× 3x3 conv 32→64→64→32 + relu, 32×32, batch 8):');
  await tf.setBackend('cpu-native');
  const nativeMs = timeIt(convStackStep(), quick ? 500 : 3000, 50);
  console.log(
    `  cpu-native ${nativeMs.toFixed(1)} ms/step (${(STACK_FLOPS / nativeMs / 1e6).toFixed(1)} GFLOP/s)`,
  );
  if (withCpu) {
    await tf.setBackend('cpu');
    const cpuMs = timeIt(convStackStep(), 0, 1); // one run: minutes on the JS backend
    console.log(
      `  cpu        ${cpuMs.toFixed(1)} ms/step (${(STACK_FLOPS / cpuMs / 1e6).toFixed(2)} GFLOP/s)`,
    );
    console.log(`  speed-up   ${(cpuMs / nativeMs).toFixed(0)}×`);
  }
}

await main();
