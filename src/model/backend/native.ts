/**
 * The `cpu-native` TF.js backend: TF.js's own `cpu` backend (same tensor storage, every kernel
 * copied) with the kernels that dominate training replaced by the N-API addon in `native/`:
 * convolutions and matrix products (ringdiff's own SGEMM micro-kernels, AVX-512, AVX2/FMA or
 * portable, chosen from the CPU at run time; convolutions without an im2col matrix; OpenBLAS only
 * for plain products, and only where it is installed and measured faster), and the memory-bound kernels whose JS versions index element by element or call
 * a closure per element (broadcast binary ops, Sum/Mean, Slice/SplitV, Concat, Transpose, Tile,
 * PadV2, and the unary ops of training: Sigmoid, Square, Sqrt, Rsqrt, Neg, Relu, Step, Exp, Abs,
 * Reciprocal, Tanh). All run on a thread pool sized by RINGDIFF_THREADS.
 *
 * Kernel outputs come from a pool of recycled buffers (`BufferPool`): allocating a fresh
 * zero-filled Float32Array per kernel cost more than many kernels themselves, and kept V8's
 * garbage collector busy.
 *
 * Each override falls back to the original `cpu` kernel for what the addon does not handle
 * (non-float32 dtypes, NCHW, exotic bias broadcasts), so the backend is always complete.
 */
import { availableParallelism } from 'node:os';
import * as tf from '@tensorflow/tfjs';
import { MathBackendCPU } from '@tensorflow/tfjs-backend-cpu';
import { hasFunctions, loadAddon, type Act, type KernelAddon } from '../../native/addon.js';

export const CPU_NATIVE = 'cpu-native';

/** What `registerCpuNative` found. */
export interface NativeStatus {
  ok: boolean;
  /** Why the backend is unavailable (addon not built, failed to load, ...). */
  reason: string | null;
  /** The GEMM in use and why, e.g. `ringdiff avx512 kernels (8x32 tiles; best this CPU runs); OpenBLAS not present`. */
  gemm: string | null;
  /** Threads the kernels use (RINGDIFF_THREADS, else the host's available parallelism). */
  threads: number;
}

// Operation codes shared with native/src (Act in kernels.h, BinaryOp/UnaryOp in elementwise.h).
const BINARY = { add: 0, sub: 1, mul: 2, div: 3, squaredDifference: 4, maximum: 5, minimum: 6 } as const;
const UNARY = {
  sigmoid: 0,
  square: 1,
  sqrt: 2,
  rsqrt: 3,
  neg: 4,
  relu: 5,
  exp: 6,
  step: 7,
  abs: 8,
  reciprocal: 9,
  tanh: 10,
} as const;

let addon: KernelAddon | null = null;

/** The addon's training kernels, once; null with the reason when missing, broken or too old. */
function loadKernels(): { addon: KernelAddon | null; reason: string | null } {
  if (addon) return { addon, reason: null };
  const { addon: a, reason } = loadAddon();
  if (!a) return { addon: null, reason };
  const names = [
    'conv2d',
    'conv2dBackpropInput',
    'conv2dBackpropFilter',
    'matmul',
    'binary',
    'reduceSum',
    'slice',
    'tile',
    'unary',
    'concat',
    'transpose',
    'pad',
    'groupNorm',
    'groupNormGrad',
    'adam',
    'ema',
    'setThreads',
    'setGemm',
    'gemmCalibrate',
    'info',
  ] as const;
  if (!hasFunctions(a, names))
    return { addon: null, reason: 'native addon predates these kernels (run npm run build:native)' };
  addon = a;
  return { addon, reason: null };
}

/** RINGDIFF_THREADS if set to a positive integer, else every core this process may use. */
export function nativeThreads(env: NodeJS.ProcessEnv = process.env): number {
  const raw = env.RINGDIFF_THREADS;
  if (raw !== undefined && raw.trim() !== '') {
    const n = Number(raw);
    if (Number.isInteger(n) && n >= 1) return Math.min(n, 256);
    throw new Error(`RINGDIFF_THREADS must be a positive integer, got '${raw}'`);
  }
  return availableParallelism();
}

/** Values of RINGDIFF_GEMM: the micro-kernels to use, or OpenBLAS for plain products. */
export const GEMM_CHOICES = ['auto', 'avx512', 'avx2', 'generic', 'openblas'] as const;
export type GemmChoice = (typeof GEMM_CHOICES)[number];

/** RINGDIFF_GEMM checked (the addon reads it itself); throws a one-line error for other values. */
export function gemmChoice(env: NodeJS.ProcessEnv = process.env): GemmChoice {
  const raw = (env.RINGDIFF_GEMM ?? '').trim();
  if (raw === '') return 'auto';
  if ((GEMM_CHOICES as readonly string[]).includes(raw)) return raw as GemmChoice;
  throw new Error(`RINGDIFF_GEMM must be one of ${GEMM_CHOICES.join(', ')}, got '${raw}'`);
}

/**
 * Switches the GEMM (for tests and benchmarks); false, changing nothing, when this CPU or machine
 * cannot run it (no AVX-512, OpenBLAS not installed) or the addon is not loaded.
 */
export function setNativeGemm(name: GemmChoice): boolean {
  if (!addon || !addon.setGemm(name)) return false;
  if (status?.ok) status = { ...status, gemm: addon.info().gemm };
  return true;
}

/** The micro-kernels in use ('avx512', 'avx2', 'generic') and whether plain products go to OpenBLAS. */
export function nativeGemmInfo(): {
  kernels: string;
  tile: string;
  openblas: boolean;
  matmulOnOpenblas: boolean;
} | null {
  if (!addon) return null;
  const i = addon.info();
  return { kernels: i.kernels, tile: i.tile, openblas: i.openblas, matmulOnOpenblas: i.matmulOnOpenblas };
}

/**
 * Our kernels and OpenBLAS (when installed) timed on three matrix products, one thread each, in
 * ms (openblasMs null without OpenBLAS). For `doctor`: the choice itself is a fixed rule.
 */
export function nativeGemmCalibration(): { oursMs: number; openblasMs: number | null } | null {
  if (!addon) return null;
  const c = addon.gemmCalibrate();
  return { oursMs: c.oursMs, openblasMs: c.openblasMs < 0 ? null : c.openblasMs };
}

/** Sets the kernels' thread count (e.g. for benchmarks); no-op when the addon is not loaded. */
export function setNativeThreads(threads: number): void {
  addon?.setThreads(Math.max(1, Math.floor(threads)));
  if (status?.ok) status = { ...status, threads: addon?.info().threads ?? status.threads };
}

const sizeOf = (shape: readonly number[]): number => shape.reduce((p, d) => p * d, 1);
/** An Int32Array copy of a shape (Int32Array.from goes through the iterator protocol: slow). */
function i32(xs: readonly number[]): Int32Array {
  const out = new Int32Array(xs.length);
  for (let i = 0; i < xs.length; i++) out[i] = xs[i] as number;
  return out;
}

// ---------------------------------------------------------------------------------------------
// Output buffers

/**
 * Recycles the Float32Arrays the native kernels write their outputs to. A fresh `Float32Array`
 * of a few MiB costs more than the kernel that fills it (the kernel zero-fills it, then page-faults
 * on every 4 KiB page), and the external memory it adds makes V8 run a mark-compact GC every few
 * dozen kernels. A training step allocates the same sizes step after step, so buffers whose last
 * tensor was disposed go back to an exact-size free list and are handed out again.
 *
 * Safety: a buffer is reused only when no tensor refers to it any more (every `write`/`move` of a
 * tensor whose values live in it counts a reference, every deletion in `disposeData` drops one:
 * zero-copy views such as contiguous slices count too) and it never escaped: `readSync` (behind
 * `dataSync()`, `data()`, `array()`, `bufferSync()`) hands the backing array itself to the caller,
 * who may keep it after disposing the tensor, so such buffers are left to the garbage collector.
 *
 * Memory: free buffers are bounded (`POOL_MAX_FREE_BYTES`) and dropped once unused for a few
 * seconds (an unref'd timer, so it never keeps the process alive), and all of them when the
 * backend is disposed or `trimNativeBuffers()` is called.
 */
class BufferPool {
  /** Below this a JS allocation is cheap (and V8 may keep it on the heap): not pooled. */
  static readonly MIN_BYTES = 16 * 1024;
  /** Buffers of this pool, live or free: references from tensor data. */
  private readonly refs = new WeakMap<ArrayBuffer, number>();
  /** Free buffers by byte length, most recently freed last. */
  private readonly free = new Map<number, ArrayBuffer[]>();
  /** Free lists used since the last sweep (kept), by byte length. */
  private readonly touched = new Set<number>();
  private freeBytes = 0;
  private timer: NodeJS.Timeout | null = null;
  /** Counters for tests and benchmarks. */
  readonly stats = { allocs: 0, reused: 0, released: 0, escaped: 0, dropped: 0 };

  constructor(
    private readonly maxFreeBytes: number,
    private readonly idleMs: number,
  ) {}

  /** An uninitialised-by-contract Float32Array of n elements: the kernel writes every element. */
  alloc(n: number): Float32Array {
    const bytes = n * 4;
    if (bytes < BufferPool.MIN_BYTES) return new Float32Array(n);
    this.stats.allocs++;
    const list = this.free.get(bytes);
    let buf = list?.pop();
    if (buf) {
      this.stats.reused++;
      this.freeBytes -= bytes;
      this.touched.add(bytes);
    } else {
      buf = new ArrayBuffer(bytes);
    }
    this.refs.set(buf, 0);
    return new Float32Array(buf);
  }

  /** A tensor's data now refers to `values`. */
  retain(values: unknown): void {
    const buf = bufferOf(values);
    if (!buf) return;
    const r = this.refs.get(buf);
    if (r !== undefined) this.refs.set(buf, r + 1);
  }

  /** A tensor's data referring to `values` was deleted. */
  release(values: unknown): void {
    const buf = bufferOf(values);
    if (!buf) return;
    const r = this.refs.get(buf);
    if (r === undefined) return;
    if (r > 1) {
      this.refs.set(buf, r - 1);
      return;
    }
    this.refs.delete(buf);
    const bytes = buf.byteLength;
    if (this.freeBytes + bytes > this.maxFreeBytes) {
      this.stats.dropped++;
      return;
    }
    this.stats.released++;
    let list = this.free.get(bytes);
    if (!list) {
      list = [];
      this.free.set(bytes, list);
    }
    list.push(buf);
    this.refs.set(buf, 0);
    this.freeBytes += bytes;
    this.touched.add(bytes);
    this.schedule();
  }

  /** `values` was handed out of the backend: never reuse its buffer. */
  escape(values: unknown): void {
    const buf = bufferOf(values);
    if (buf && this.refs.delete(buf)) this.stats.escaped++;
  }

  /** Bytes held in free lists. */
  get idleBytes(): number {
    return this.freeBytes;
  }

  /** Drops every free buffer (the garbage collector then returns the memory). */
  trim(): void {
    for (const list of this.free.values()) for (const b of list) this.refs.delete(b);
    this.free.clear();
    this.touched.clear();
    this.freeBytes = 0;
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
  }

  /** Drops free lists of sizes not used since the previous sweep. */
  private sweep(): void {
    for (const [bytes, list] of this.free) {
      if (this.touched.has(bytes)) continue;
      for (const b of list) this.refs.delete(b);
      this.freeBytes -= bytes * list.length;
      this.stats.dropped += list.length;
      this.free.delete(bytes);
    }
    this.touched.clear();
    if (this.free.size === 0 && this.timer) {
      clearInterval(this.timer);
      this.timer = null;
    }
  }

  private schedule(): void {
    if (this.timer || this.idleMs <= 0) return;
    this.timer = setInterval(() => this.sweep(), this.idleMs);
    this.timer.unref();
  }
}

/** The ArrayBuffer under `values` if it may be one of the pool's (views of any size count). */
function bufferOf(values: unknown): ArrayBuffer | null {
  if (!(values instanceof Float32Array)) return null;
  const buf = values.buffer as ArrayBuffer;
  return buf.byteLength >= BufferPool.MIN_BYTES ? buf : null;
}

/** Free buffers kept for reuse at most (beyond it, freed buffers go to the garbage collector). */
const POOL_MAX_FREE_BYTES = 1024 * 2 ** 20;
/** A free-list size unused for one to two sweep periods is dropped. */
const POOL_IDLE_MS = 5000;

type DataId = object;

/** TF.js's cpu backend whose kernel outputs come from (and return to) a `BufferPool`. */
class NativeBackend extends MathBackendCPU {
  readonly pool = new BufferPool(POOL_MAX_FREE_BYTES, POOL_IDLE_MS);

  override write(values: tf.backend_util.BackendValues, shape: number[], dtype: tf.DataType): DataId {
    const id = super.write(values, shape, dtype);
    this.pool.retain(values);
    return id;
  }

  override move(
    dataId: DataId,
    values: tf.backend_util.BackendValues,
    shape: number[],
    dtype: tf.DataType,
    refCount: number,
  ): void {
    // A move replaces any data under this id (TF.js moves only ids this backend does not hold).
    if (this.data.has(dataId)) this.pool.release(this.data.get(dataId).values);
    super.move(dataId, values, shape, dtype, refCount);
    this.pool.retain(values);
  }

  override disposeData(dataId: DataId, force = false): boolean {
    const values = this.data.has(dataId) ? this.data.get(dataId).values : undefined;
    const gone = super.disposeData(dataId, force);
    if (gone && values !== undefined && !this.data.has(dataId)) this.pool.release(values);
    return gone;
  }

  override readSync(dataId: DataId): tf.backend_util.BackendValues {
    const values = super.readSync(dataId);
    this.pool.escape(values);
    return values;
  }

  override dispose(): void {
    this.pool.trim();
    super.dispose();
  }
}

/** The current `cpu-native` backend instance, if it was created. */
function nativeBackend(): NativeBackend | null {
  try {
    const b = tf.findBackend(CPU_NATIVE);
    return b instanceof NativeBackend ? b : null;
  } catch {
    return null;
  }
}

/** Drops the free output buffers of `cpu-native` (their memory then goes back to the GC). */
export function trimNativeBuffers(): void {
  nativeBackend()?.pool.trim();
}

/** Output-buffer pool counters of `cpu-native` (for tests and benchmarks). */
export function nativeBufferStats(): {
  allocs: number;
  reused: number;
  released: number;
  escaped: number;
  dropped: number;
  idleBytes: number;
} | null {
  const b = nativeBackend();
  return b ? { ...b.pool.stats, idleBytes: b.pool.idleBytes } : null;
}

/** A float32 output of n elements for a native kernel of `backend`. */
function output(backend: MathBackendCPU, n: number): Float32Array {
  return backend instanceof NativeBackend ? backend.pool.alloc(n) : new Float32Array(n);
}

// ---------------------------------------------------------------------------------------------
// Kernels

type KernelArgs = Parameters<tf.KernelFunc>[0];

function values(backend: MathBackendCPU, t: tf.TensorInfo): Float32Array | null {
  if (t.dtype !== 'float32') return null;
  const v = backend.data.get(t.dataId).values;
  return v instanceof Float32Array ? v : null;
}

const ACTS: Record<string, Act> = {
  linear: 0,
  relu: 1,
  relu6: 2,
  elu: 3,
  leakyrelu: 4,
  sigmoid: 5,
  prelu: 6,
};

/**
 * A tensor broadcast along the last axis of an output of rank `outRank` whose last dimension is
 * `cols`: every other dimension 1, last `cols` or 1. Anything else goes to the JS fallback.
 */
function channelVector(
  backend: MathBackendCPU,
  t: tf.TensorInfo | undefined,
  outRank: number,
  cols: number,
): Float32Array | null | undefined {
  if (!t) return null;
  const r = t.shape.length;
  if (r > outRank) return undefined;
  const last = r === 0 ? 1 : (t.shape[r - 1] as number);
  if (last !== cols && last !== 1) return undefined;
  for (let i = 0; i < r - 1; i++) if (t.shape[i] !== 1) return undefined;
  return values(backend, t) ?? undefined;
}

interface Fused {
  bias: Float32Array | null;
  act: Act;
  alpha: number;
  prelu: Float32Array | null;
}

/** Bias/activation the addon can fuse, or null when the JS kernel must do it. */
function fusedEpilogue(
  backend: MathBackendCPU,
  inputs: KernelArgs['inputs'],
  attrs: KernelArgs['attrs'],
  outRank: number,
  cols: number,
): Fused | null {
  const act = ACTS[(attrs?.activation as string | undefined) ?? 'linear'];
  if (act === undefined) return null;
  const bias = channelVector(backend, inputs.bias, outRank, cols);
  if (bias === undefined) return null;
  let prelu: Float32Array | null = null;
  if (act === ACTS.prelu) {
    const p = channelVector(backend, inputs.preluActivationWeights, outRank, cols);
    if (!p) return null;
    prelu = p;
  }
  const alpha = (attrs?.leakyreluAlpha as number | undefined) ?? 0.2;
  return { bias, act, alpha, prelu };
}

function convGeom(info: tf.backend_util.Conv2DInfo): Int32Array {
  return Int32Array.from([
    info.batchSize,
    info.inHeight,
    info.inWidth,
    info.inChannels,
    info.filterHeight,
    info.filterWidth,
    info.outChannels,
    info.outHeight,
    info.outWidth,
    info.strideHeight,
    info.strideWidth,
    info.dilationHeight,
    info.dilationWidth,
    info.padInfo.top,
    info.padInfo.left,
  ]);
}

type Shape4 = [number, number, number, number];
type Pad = 'same' | 'valid' | number | tf.backend_util.ExplicitPadding;

function convInfo(
  inShape: number[],
  filterShape: number[],
  attrs: KernelArgs['attrs'],
  withDilations: boolean,
): tf.backend_util.Conv2DInfo | null {
  const a = attrs ?? {};
  const dataFormat = (a.dataFormat as string | undefined) ?? 'NHWC';
  if (dataFormat !== 'NHWC' || inShape.length !== 4 || filterShape.length !== 4) return null;
  return tf.backend_util.computeConv2DInfo(
    inShape as Shape4,
    filterShape as Shape4,
    a.strides as number | [number, number],
    withDilations ? ((a.dilations as number | [number, number] | undefined) ?? 1) : 1,
    a.pad as Pad,
    a.dimRoundingMode as 'floor' | 'round' | 'ceil' | undefined,
    false,
    'channelsLast',
  );
}

type Impl = (args: KernelArgs, native: KernelAddon, backend: MathBackendCPU) => tf.TensorInfo | null;

function conv2dImpl(fused: boolean): Impl {
  return (args, native, backend) => {
    const { x, filter } = args.inputs;
    // A bias per image, [N, 1, 1, C] (a U-Net adds its time embedding to the first conv's output
    // this way), with a linear activation.
    const imageBias = (): Fused | null => {
      const b = args.inputs.bias;
      const act = (args.attrs?.activation as string | undefined) ?? 'linear';
      if (!b || !x || act !== 'linear' || b.shape.length !== 4) return null;
      const [n, h, w, c] = b.shape as [number, number, number, number];
      if (n !== x.shape[0] || h !== 1 || w !== 1 || c !== (filter?.shape[3] ?? -1)) return null;
      const bv = values(backend, b);
      return bv ? { bias: bv, act: 0, alpha: 0, prelu: null } : null;
    };
    if (!x || !filter) return null;
    const xv = values(backend, x);
    const wv = values(backend, filter);
    const info = convInfo(x.shape, filter.shape, args.attrs, true);
    if (!xv || !wv || !info) return null;
    const ep = fused
      ? (fusedEpilogue(backend, args.inputs, args.attrs, 4, info.outChannels) ?? imageBias())
      : null;
    if (fused && !ep) return null;
    const y = output(backend, sizeOf(info.outShape));
    native.conv2d(
      xv,
      wv,
      y,
      convGeom(info),
      ep?.bias ?? null,
      ep?.act ?? 0,
      ep?.alpha ?? 0,
      ep?.prelu ?? null,
    );
    return backend.makeTensorInfo(info.outShape, 'float32', y);
  };
}

const conv2dBackpropInputImpl: Impl = (args, native, backend) => {
  const { dy, filter } = args.inputs;
  if (!dy || !filter) return null;
  const dyv = values(backend, dy);
  const wv = values(backend, filter);
  const info = convInfo(args.attrs?.inputShape as number[], filter.shape, args.attrs, false);
  if (!dyv || !wv || !info) return null;
  const dx = output(backend, sizeOf(info.inShape));
  native.conv2dBackpropInput(dyv, wv, dx, convGeom(info));
  return backend.makeTensorInfo(info.inShape, 'float32', dx);
};

const conv2dBackpropFilterImpl: Impl = (args, native, backend) => {
  const { x, dy } = args.inputs;
  if (!x || !dy) return null;
  const xv = values(backend, x);
  const dyv = values(backend, dy);
  const info = convInfo(x.shape, args.attrs?.filterShape as number[], args.attrs, false);
  if (!xv || !dyv || !info) return null;
  const dw = output(backend, sizeOf(info.filterShape));
  native.conv2dBackpropFilter(xv, dyv, dw, convGeom(info));
  return backend.makeTensorInfo(info.filterShape, 'float32', dw);
};

/** Index of each output batch in a broadcast operand's (flattened) batch dimensions. */
function batchIndices(outer: number[], dims: number[]): Int32Array {
  const size = outer.reduce((p, d) => p * d, 1);
  const idx = new Int32Array(size);
  const off = outer.length - dims.length;
  for (let flat = 0; flat < size; flat++) {
    let rem = flat;
    let src = 0;
    let stride = 1;
    for (let i = outer.length - 1; i >= 0; i--) {
      const d = outer[i] as number;
      const coord = rem % d;
      rem = (rem - coord) / d;
      const j = i - off;
      if (j >= 0) {
        const dj = dims[j] as number;
        src += (dj === 1 ? 0 : coord) * stride;
        stride *= dj;
      }
    }
    idx[flat] = src;
  }
  return idx;
}

function matmulImpl(fused: boolean): Impl {
  return (args, native, backend) => {
    const { a, b } = args.inputs;
    if (!a || !b || a.shape.length < 2 || b.shape.length < 2) return null;
    const av = values(backend, a);
    const bv = values(backend, b);
    if (!av || !bv) return null;
    const ta = Boolean(args.attrs?.transposeA);
    const tb = Boolean(args.attrs?.transposeB);
    const ra = a.shape.length;
    const rb = b.shape.length;
    const M = a.shape[ta ? ra - 1 : ra - 2] as number;
    const K = a.shape[ta ? ra - 2 : ra - 1] as number;
    const kb = b.shape[tb ? rb - 1 : rb - 2] as number;
    const N = b.shape[tb ? rb - 2 : rb - 1] as number;
    if (K !== kb) return null; // let the JS kernel raise TF.js's own error
    const outerA = a.shape.slice(0, -2);
    const outerB = b.shape.slice(0, -2);
    const outer = tf.broadcast_util.assertAndGetBroadcastShape(outerA, outerB);
    const outShape = [...outer, M, N];
    const ep = fused ? fusedEpilogue(backend, args.inputs, args.attrs, outShape.length, N) : null;
    if (fused && !ep) return null;
    const batch = outer.reduce((p, d) => p * d, 1);
    const out = output(backend, batch * M * N);
    const dims = Int32Array.from([batch, M, N, K, ta ? 1 : 0, tb ? 1 : 0]);
    native.matmul(
      av,
      bv,
      out,
      dims,
      batchIndices(outer, outerA),
      batchIndices(outer, outerB),
      ep?.bias ?? null,
      ep?.act ?? 0,
      ep?.alpha ?? 0,
      ep?.prelu ?? null,
    );
    return backend.makeTensorInfo(outShape, 'float32', out);
  };
}

// Binary ops whose TF.js versions take a per-element index path whenever shapes differ.
function binaryImpl(op: number): Impl {
  return (args, native, backend) => {
    const { a, b } = args.inputs;
    if (!a || !b) return null;
    const av = values(backend, a);
    const bv = values(backend, b);
    if (!av || !bv) return null;
    const outShape = tf.broadcast_util.assertAndGetBroadcastShape(a.shape, b.shape);
    const out = output(backend, sizeOf(outShape));
    native.binary(op, av, i32(a.shape), bv, i32(b.shape), out, i32(outShape));
    return backend.makeTensorInfo(outShape, 'float32', out);
  };
}

// Sum and Mean: TF.js transposes the reduced axes innermost first, a full strided copy.
function reduceImpl(mean: boolean): Impl {
  return (args, native, backend) => {
    const { x } = args.inputs;
    if (!x) return null;
    const xv = values(backend, x);
    if (!xv) return null;
    const axes = tf.util.parseAxisParam(args.attrs?.axis as number | number[], x.shape);
    const mask = x.shape.map((_, i) => (axes.includes(i) ? 1 : 0));
    const reduceSize = sizeOf(x.shape.filter((_, i) => axes.includes(i)));
    if (mean && reduceSize === 0) return null;
    const outShape = args.attrs?.keepDims
      ? x.shape.map((d, i) => (axes.includes(i) ? 1 : d))
      : x.shape.filter((_, i) => !axes.includes(i));
    const out = output(backend, sizeOf(outShape));
    native.reduceSum(xv, i32(x.shape), i32(mask), out, mean ? 1 / reduceSize : 1);
    return backend.makeTensorInfo(outShape, 'float32', out);
  };
}

/** A slice: TF.js's own (a zero-copy view) when contiguous, else the addon's strided copy. */
function sliceOf(
  native: KernelAddon,
  backend: MathBackendCPU,
  x: tf.TensorInfo,
  begin: number[],
  size: number[],
): tf.TensorInfo | null {
  const xv = values(backend, x);
  if (!xv || tf.slice_util.isSliceContinous(x.shape, begin, size) || sizeOf(size) === 0) return null;
  const out = output(backend, sizeOf(size));
  native.slice(xv, i32(x.shape), i32(begin), i32(size), out);
  return backend.makeTensorInfo(size, 'float32', out);
}

const sliceImpl: Impl = (args, native, backend) => {
  const { x } = args.inputs;
  if (!x) return null;
  const [begin, size] = tf.slice_util.parseSliceParams(
    x,
    args.attrs?.begin as number | number[],
    args.attrs?.size as number | number[],
  ) as [number[], number[]];
  tf.slice_util.assertParamsValid(x, begin, size);
  return sliceOf(native, backend, x, begin, size);
};

// SplitV (the gradient of every skip-connection concat) slices through TF.js's internal slice,
// which the Slice override above never sees.
const splitVImpl = (
  args: KernelArgs,
  native: KernelAddon,
  backend: MathBackendCPU,
): tf.TensorInfo[] | null => {
  const { x } = args.inputs;
  if (!x || !values(backend, x)) return null;
  const axis = tf.util.parseAxisParam(args.attrs?.axis as number, x.shape)[0] as number;
  const sizes = tf.backend_util.prepareSplitSize(x, args.attrs?.numOrSizeSplits as number | number[], axis);
  const begin = x.shape.map(() => 0);
  const jsSlice = tf.getKernel(tf.Slice, 'cpu')?.kernelFunc;
  if (!jsSlice) return null;
  return sizes.map((s) => {
    const size = [...x.shape];
    size[axis] = s;
    const piece =
      sliceOf(native, backend, x, [...begin], size) ??
      (jsSlice({ inputs: { x }, backend, attrs: { begin: [...begin], size } }) as tf.TensorInfo);
    begin[axis] = (begin[axis] as number) + s;
    return piece;
  });
};

const tileImpl: Impl = (args, native, backend) => {
  const { x } = args.inputs;
  if (!x) return null;
  const xv = values(backend, x);
  const reps = args.attrs?.reps as number[] | undefined;
  if (!xv || !reps || reps.length !== x.shape.length) return null;
  const outShape = x.shape.map((d, i) => d * (reps[i] as number));
  const out = output(backend, sizeOf(outShape));
  native.tile(xv, i32(x.shape), i32(reps), out);
  return backend.makeTensorInfo(outShape, 'float32', out);
};

function unaryImpl(op: number): Impl {
  return (args, native, backend) => {
    const { x } = args.inputs;
    if (!x) return null;
    const xv = values(backend, x);
    if (!xv) return null;
    const out = output(backend, xv.length);
    try {
      native.unary(op, xv, out, (args.attrs?.alpha as number | undefined) ?? 0);
    } catch (err) {
      // An addon built before this op existed (git pull without `npm run build:native`): JS runs it.
      if (err instanceof RangeError) return null;
      throw err;
    }
    return backend.makeTensorInfo([...x.shape], 'float32', out);
  };
}

// Concat: TF.js copies element by element through a 2-D view of every input.
const concatImpl: Impl = (args, native, backend) => {
  const inputs = Object.values(args.inputs) as tf.TensorInfo[];
  if (inputs.length === 0) return null;
  const first = inputs[0] as tf.TensorInfo;
  const axis = tf.util.parseAxisParam(args.attrs?.axis as number, first.shape)[0] as number;
  tf.backend_util.assertParamsConsistent(
    inputs.map((t) => t.shape),
    axis,
  );
  const outShape = tf.backend_util.computeOutShape(
    inputs.map((t) => t.shape),
    axis,
  );
  const parts = inputs.filter((t) => sizeOf(t.shape) > 0);
  if (parts.length < 2) return null; // empty result or a single input: TF.js's identity path
  const vals = parts.map((t) => values(backend, t));
  if (vals.some((v) => !v)) return null;
  const outer = sizeOf(first.shape.slice(0, axis));
  const out = output(backend, sizeOf(outShape));
  native.concat(vals as Float32Array[], i32(parts.map((t) => sizeOf(t.shape.slice(axis)))), outer, out);
  return backend.makeTensorInfo(outShape, 'float32', out);
};

const transposeImpl: Impl = (args, native, backend) => {
  const { x } = args.inputs;
  const perm = args.attrs?.perm as number[] | undefined;
  if (!x || !perm || perm.length !== x.shape.length) return null;
  const xv = values(backend, x);
  if (!xv) return null;
  const outShape = perm.map((p) => x.shape[p] as number);
  const out = output(backend, xv.length);
  native.transpose(xv, i32(x.shape), i32(perm), out);
  return backend.makeTensorInfo(outShape, 'float32', out);
};

const padImpl: Impl = (args, native, backend) => {
  const { x } = args.inputs;
  if (!x) return null;
  const xv = values(backend, x);
  const paddings = args.attrs?.paddings as Array<[number, number]> | undefined;
  if (!xv || !paddings || paddings.length !== x.shape.length) return null;
  const outShape = x.shape.map((d, i) => (paddings[i]?.[0] ?? 0) + d + (paddings[i]?.[1] ?? 0));
  const out = output(backend, sizeOf(outShape));
  const before = i32(paddings.map((p) => p[0]));
  const after = i32(paddings.map((p) => p[1]));
  native.pad(xv, i32(x.shape), before, after, (args.attrs?.constantValue as number | undefined) ?? 0, out);
  return backend.makeTensorInfo(outShape, 'float32', out);
};

/** Names of the kernels `cpu-native` adds (no TF.js backend has them; see ./fused.ts). */
export const GROUP_NORM = 'RingdiffGroupNorm';
export const GROUP_NORM_GRAD = 'RingdiffGroupNormGrad';

/** GroupNorm's attributes: groups, ε, and whether SiLU follows. */
interface GroupNormAttrs {
  groups: number;
  eps: number;
  silu: boolean;
}

function groupNormDims(backend: MathBackendCPU, x: tf.TensorInfo, attrs: GroupNormAttrs): Int32Array {
  const [b, h, w, c] = x.shape as [number, number, number, number];
  if (x.shape.length !== 4 || c % attrs.groups !== 0)
    throw new Error(`${GROUP_NORM}: x must be [B, H, W, C] with C divisible by ${attrs.groups} groups`);
  void backend;
  return i32([b, h * w, c, attrs.groups]);
}

// x, γ, β → [y, μ, 1/σ]: y = GroupNorm(x) (then SiLU when attrs.silu); μ and 1/σ are [B, G].
const groupNormImpl = (args: KernelArgs, native: KernelAddon, backend: MathBackendCPU): tf.TensorInfo[] => {
  const { x, gamma, beta } = args.inputs as Record<string, tf.TensorInfo>;
  const attrs = args.attrs as unknown as GroupNormAttrs;
  const dims = groupNormDims(backend, x as tf.TensorInfo, attrs);
  const vals = [x, gamma, beta].map((t) => values(backend, t as tf.TensorInfo));
  if (vals.some((v) => !v)) throw new Error(`${GROUP_NORM}: inputs must be float32`);
  const [xv, gv, bv] = vals as Float32Array[];
  const stats = [dims[0] as number, attrs.groups];
  const y = output(backend, (xv as Float32Array).length);
  const mean = new Float32Array(sizeOf(stats));
  const rstd = new Float32Array(sizeOf(stats));
  native.groupNorm(
    xv as Float32Array,
    gv as Float32Array,
    bv as Float32Array,
    y,
    mean,
    rstd,
    dims,
    attrs.eps,
    attrs.silu,
  );
  return [
    backend.makeTensorInfo([...(x as tf.TensorInfo).shape], 'float32', y),
    backend.makeTensorInfo(stats, 'float32', mean),
    backend.makeTensorInfo(stats, 'float32', rstd),
  ];
};

// x, γ, β, μ, 1/σ, dy → [dx, dγ, dβ].
const groupNormGradImpl = (
  args: KernelArgs,
  native: KernelAddon,
  backend: MathBackendCPU,
): tf.TensorInfo[] => {
  const { x, gamma, beta, mean, rstd, dy } = args.inputs as Record<string, tf.TensorInfo>;
  const attrs = args.attrs as unknown as GroupNormAttrs;
  const dims = groupNormDims(backend, x as tf.TensorInfo, attrs);
  const vals = [x, gamma, beta, mean, rstd, dy].map((t) => values(backend, t as tf.TensorInfo));
  if (vals.some((v) => !v)) throw new Error(`${GROUP_NORM_GRAD}: inputs must be float32`);
  const [xv, gv, bv, mv, rv, dyv] = vals as Float32Array[];
  const c = dims[2] as number;
  const dx = output(backend, (xv as Float32Array).length);
  const dgamma = new Float32Array(c);
  const dbeta = new Float32Array(c);
  native.groupNormGrad(
    xv as Float32Array,
    gv as Float32Array,
    bv as Float32Array,
    mv as Float32Array,
    rv as Float32Array,
    dyv as Float32Array,
    dx,
    dgamma,
    dbeta,
    dims,
    attrs.eps,
    attrs.silu,
  );
  return [
    backend.makeTensorInfo([...(x as tf.TensorInfo).shape], 'float32', dx),
    backend.makeTensorInfo([...(gamma as tf.TensorInfo).shape], 'float32', dgamma),
    backend.makeTensorInfo([...(beta as tf.TensorInfo).shape], 'float32', dbeta),
  ];
};

export const ADAM = 'RingdiffAdam';
export const EMA = 'RingdiffEma';

/** One Adam/AdamW step's scalars, as JS numbers (rounded to float32 by the kernel's caller). */
export interface AdamAttrs {
  scale: number;
  b1: number;
  b2: number;
  bc1: number;
  bc2: number;
  eps: number;
  lr: number;
  lrwd: number;
}

// p, m, v, g → [p', m', v'] (see native/src/optim.h).
const adamImpl = (args: KernelArgs, native: KernelAddon, backend: MathBackendCPU): tf.TensorInfo[] => {
  const { p, m, v, g } = args.inputs as Record<string, tf.TensorInfo>;
  const a = args.attrs as unknown as AdamAttrs;
  const vals = [p, m, v, g].map((t) => values(backend, t as tf.TensorInfo));
  if (vals.some((x) => !x || x.length !== (vals[0] as Float32Array).length))
    throw new Error(`${ADAM}: p, m, v and g must be float32 of one size`);
  const [pv, mv, vv, gv] = vals as Float32Array[];
  const n = (pv as Float32Array).length;
  const outs = [output(backend, n), output(backend, n), output(backend, n)] as const;
  // TF.js turns each JS scalar into a float32 tensor: the same roundings, in the same places.
  const consts = Float32Array.from([
    a.scale,
    a.b1,
    1 - a.b1,
    a.b2,
    1 - a.b2,
    a.bc1,
    a.bc2,
    a.eps,
    a.lr,
    a.lrwd,
  ]);
  native.adam(
    pv as Float32Array,
    mv as Float32Array,
    vv as Float32Array,
    gv as Float32Array,
    outs[0],
    outs[1],
    outs[2],
    consts,
  );
  const shape = [...(p as tf.TensorInfo).shape];
  return outs.map((o) => backend.makeTensorInfo(shape, 'float32', o));
};

// e, w → [d·e + (1 − d)·w].
const emaImpl = (args: KernelArgs, native: KernelAddon, backend: MathBackendCPU): tf.TensorInfo[] => {
  const { e, w } = args.inputs as Record<string, tf.TensorInfo>;
  const d = (args.attrs as unknown as { decay: number }).decay;
  const ev = values(backend, e as tf.TensorInfo);
  const wv = values(backend, w as tf.TensorInfo);
  if (!ev || !wv || ev.length !== wv.length) throw new Error(`${EMA}: e and w must be float32 of one size`);
  const out = output(backend, ev.length);
  native.ema(ev, wv, out, Math.fround(d), Math.fround(1 - d));
  return [backend.makeTensorInfo([...(e as tf.TensorInfo).shape], 'float32', out)];
};

/** Kernels only `cpu-native` has. */
const ADDED: ReadonlyArray<
  [string, (args: KernelArgs, native: KernelAddon, backend: MathBackendCPU) => tf.TensorInfo[]]
> = [
  [GROUP_NORM, groupNormImpl],
  [GROUP_NORM_GRAD, groupNormGradImpl],
  [ADAM, adamImpl],
  [EMA, emaImpl],
];

type MultiImpl = (
  args: KernelArgs,
  native: KernelAddon,
  backend: MathBackendCPU,
) => tf.TensorInfo | tf.TensorInfo[] | null;

const OVERRIDES: ReadonlyArray<[string, MultiImpl]> = [
  [tf.Conv2D, conv2dImpl(false)],
  [tf.FusedConv2D, conv2dImpl(true)],
  [tf.Conv2DBackpropInput, conv2dBackpropInputImpl],
  [tf.Conv2DBackpropFilter, conv2dBackpropFilterImpl],
  [tf.BatchMatMul, matmulImpl(false)],
  [tf._FusedMatMul, matmulImpl(true)],
  [tf.Add, binaryImpl(BINARY.add)],
  [tf.Sub, binaryImpl(BINARY.sub)],
  [tf.Multiply, binaryImpl(BINARY.mul)],
  [tf.RealDiv, binaryImpl(BINARY.div)],
  [tf.SquaredDifference, binaryImpl(BINARY.squaredDifference)],
  [tf.Maximum, binaryImpl(BINARY.maximum)],
  [tf.Minimum, binaryImpl(BINARY.minimum)],
  [tf.Sum, reduceImpl(false)],
  [tf.Mean, reduceImpl(true)],
  [tf.Slice, sliceImpl],
  [tf.SplitV, splitVImpl],
  [tf.Tile, tileImpl],
  [tf.Sigmoid, unaryImpl(UNARY.sigmoid)],
  [tf.Square, unaryImpl(UNARY.square)],
  [tf.Sqrt, unaryImpl(UNARY.sqrt)],
  [tf.Rsqrt, unaryImpl(UNARY.rsqrt)],
  [tf.Neg, unaryImpl(UNARY.neg)],
  [tf.Relu, unaryImpl(UNARY.relu)],
  [tf.Exp, unaryImpl(UNARY.exp)],
  [tf.Step, unaryImpl(UNARY.step)],
  [tf.Abs, unaryImpl(UNARY.abs)],
  [tf.Reciprocal, unaryImpl(UNARY.reciprocal)],
  [tf.Tanh, unaryImpl(UNARY.tanh)],
  [tf.Concat, concatImpl],
  [tf.Transpose, transposeImpl],
  [tf.PadV2, padImpl],
];

// ---------------------------------------------------------------------------------------------

let status: NativeStatus | null = null;
const calls = new Map<string, { native: number; fallback: number }>();

/**
 * How often each overridden kernel ran natively or fell back to JS since registration: a
 * fallback count that grows in training means a shape or attribute the addon does not cover.
 */
export function nativeKernelCalls(): Record<string, { native: number; fallback: number }> {
  return Object.fromEntries([...calls].map(([k, v]) => [k, { ...v }]));
}

/**
 * Registers the `cpu-native` backend (idempotent). Does not switch to it: callers use
 * `tf.setBackend('cpu-native')` when `ok` is true.
 */
export function registerCpuNative(): NativeStatus {
  if (status) return status;
  const loaded = loadKernels();
  const native = loaded.addon;
  if (!native) {
    status = { ok: false, reason: loaded.reason, gemm: null, threads: 0 };
    return status;
  }
  let threads: number;
  try {
    threads = nativeThreads();
    gemmChoice();
  } catch (err) {
    status = { ok: false, reason: err instanceof Error ? err.message : String(err), gemm: null, threads: 0 };
    return status;
  }
  native.setThreads(threads);
  // Priority 0: registering must not change which backend TF.js picks by default.
  tf.registerBackend(
    CPU_NATIVE,
    () => {
      const b = new NativeBackend();
      // Its first-use banner tells Node users to install tfjs-node: misleading for this backend.
      (b as unknown as { firstUse: boolean }).firstUse = false;
      return b;
    },
    0,
  );
  for (const config of tf.getKernelsForBackend('cpu')) {
    tf.registerKernel({ ...config, backendName: CPU_NATIVE });
  }
  for (const [name, impl] of OVERRIDES) {
    const original = tf.getKernel(name, 'cpu');
    if (!original) continue;
    const fallback = original.kernelFunc;
    const count = { native: 0, fallback: 0 };
    calls.set(name, count);
    tf.unregisterKernel(name, CPU_NATIVE);
    tf.registerKernel({
      kernelName: name,
      backendName: CPU_NATIVE,
      kernelFunc: (args) => {
        const out = impl(args, native, args.backend as MathBackendCPU);
        if (out) {
          count.native++;
          return out;
        }
        count.fallback++;
        return fallback(args);
      },
    });
  }
  for (const [name, impl] of ADDED) {
    const count = { native: 0, fallback: 0 };
    calls.set(name, count);
    tf.registerKernel({
      kernelName: name,
      backendName: CPU_NATIVE,
      kernelFunc: (args) => {
        count.native++;
        return impl(args, native, args.backend as MathBackendCPU);
      },
    });
  }
  const info = native.info();
  status = { ok: true, reason: null, gemm: info.gemm, threads: info.threads };
  return status;
}
