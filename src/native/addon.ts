/**
 * The N-API addon of native/ (one `ringdiff_native.node`): where it is found, and its whole typed
 * interface — the training kernels of the `cpu-native` backend, the ring's reduce kernels and the
 * shared-memory segments. The only place that loads it. It imports no TF.js, so processes that run
 * only a ring (benchmarks, test peers) stay light.
 *
 * Every part is optional at run time: an addon built from older sources may lack a part, and
 * callers check the functions they need (`hasFunctions`) and fall back with the reason.
 */
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

/** Path of the built addon relative to the package root. */
export const ADDON_PATH = join('native', 'build', 'Release', 'ringdiff_native.node');

/** Float32 buffers the kernels read and write in place. */
export type Floats = Float32Array;
/** Activation codes shared with native/src/kernels.h (Act). */
export type Act = 0 | 1 | 2 | 3 | 4 | 5 | 6;

/** The training kernels (native/src/addon.cc, kernels.cc, conv.cc, norm.cc, optim.cc, elementwise.cc). */
export interface KernelAddon {
  conv2d(
    x: Floats,
    filter: Floats,
    y: Floats,
    geom: Int32Array,
    bias: Floats | null,
    act: Act,
    alpha: number,
    prelu: Floats | null,
  ): void;
  conv2dBackpropInput(dy: Floats, filter: Floats, dx: Floats, geom: Int32Array): void;
  conv2dBackpropFilter(x: Floats, dy: Floats, dw: Floats, geom: Int32Array): void;
  matmul(
    a: Floats,
    b: Floats,
    out: Floats,
    dims: Int32Array,
    aIdx: Int32Array,
    bIdx: Int32Array,
    bias: Floats | null,
    act: Act,
    alpha: number,
    prelu: Floats | null,
  ): void;
  binary(
    op: number,
    a: Floats,
    aShape: Int32Array,
    b: Floats,
    bShape: Int32Array,
    out: Floats,
    outShape: Int32Array,
  ): void;
  reduceSum(x: Floats, shape: Int32Array, reduceMask: Int32Array, out: Floats, scale: number): void;
  slice(x: Floats, shape: Int32Array, begin: Int32Array, size: Int32Array, out: Floats): void;
  tile(x: Floats, shape: Int32Array, reps: Int32Array, out: Floats): void;
  unary(op: number, x: Floats, out: Floats, alpha: number): void;
  concat(xs: Floats[], inner: Int32Array, outer: number, out: Floats): void;
  transpose(x: Floats, shape: Int32Array, perm: Int32Array, out: Floats): void;
  pad(x: Floats, shape: Int32Array, before: Int32Array, after: Int32Array, value: number, out: Floats): void;
  groupNorm(
    x: Floats,
    gamma: Floats,
    beta: Floats,
    y: Floats,
    mean: Floats,
    rstd: Floats,
    dims: Int32Array,
    eps: number,
    silu: boolean,
  ): void;
  groupNormGrad(
    x: Floats,
    gamma: Floats,
    beta: Floats,
    mean: Floats,
    rstd: Floats,
    dy: Floats,
    dx: Floats,
    dgamma: Floats,
    dbeta: Floats,
    dims: Int32Array,
    eps: number,
    silu: boolean,
  ): void;
  adam(
    p: Floats,
    m: Floats,
    v: Floats,
    g: Floats,
    pOut: Floats,
    mOut: Floats,
    vOut: Floats,
    consts: Floats,
  ): void;
  ema(e: Floats, w: Floats, out: Floats, d: number, omd: number): void;
  setThreads(pool: number): void;
  /** 'auto', 'avx512', 'avx2', 'generic' or 'openblas'; false (nothing changed) if it cannot run here. */
  setGemm(name: string): boolean;
  gemmCalibrate(): { oursMs: number; openblasMs: number };
  info(): {
    gemm: string;
    kernels: string;
    tile: string;
    openblas: boolean;
    matmulOnOpenblas: boolean;
    threads: number;
  };
}

/** The ring part of the addon's exports (native/src/ring.cc). */
export interface RingAddon {
  ringAdd(dst: Float32Array, src: Float32Array): void;
  ringAdd3(out: Float32Array, a: Float32Array, b: Float32Array): void;
  ringAddDiv(dst: Float32Array, src: Float32Array, divisor: number): void;
  ringScale(x: Float32Array, divisor: number): void;
  ringToHalf(src: Float32Array, dst: Uint16Array): void;
  ringFromHalf(src: Uint16Array, dst: Float32Array): void;
  ringAddHalf(out: Uint16Array, half: Uint16Array, local: Float32Array): void;
  ringAddHalfFinal(half: Uint16Array, local: Float32Array, divisor: number): void;
  ringRelease(bytes: Uint8Array): boolean;
  ringInfo(): { simd: string };
}

/** The shared-memory part of the addon's exports (native/src/shm.cc); see shm.ts. */
export interface ShmAddon {
  /** Creates /dev/shm/<name> (0600, exclusive, pages allocated) of `bytes` bytes; a read-write mapping. */
  shmCreate(name: string, bytes: number): ArrayBuffer;
  /** Maps /dev/shm/<name> read-only (own regular 0600 file of 1 … maxBytes bytes). */
  shmOpen(name: string, maxBytes: number): ArrayBuffer;
  /** Detaches a mapping's ArrayBuffer (its views become empty) and unmaps it; false if it was not one. */
  shmUnmap(mapping: ArrayBuffer): boolean;
  /** Removes /dev/shm/<name>; false if it did not exist. */
  shmUnlink(name: string): boolean;
}

/** Everything the addon exports. */
export type Addon = KernelAddon & RingAddon & ShmAddon;

/** Finds the built addon above this module: it runs from src/ (tsx) and from dist/src/ (tsc). */
function findAddon(): string | null {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (let i = 0; i < 6; i++) {
    const candidate = join(dir, ADDON_PATH);
    if (existsSync(candidate)) return candidate;
    const up = dirname(dir);
    if (up === dir) break;
    dir = up;
  }
  return null;
}

let loaded: { addon: Partial<Addon> | null; reason: string | null } | undefined;

/** The addon, required once; null with a one-line reason (and what to do) when missing or broken. */
export function loadAddon(): { addon: Partial<Addon> | null; reason: string | null } {
  if (loaded) return loaded;
  const path = findAddon();
  if (!path)
    return (loaded = {
      addon: null,
      reason: `native addon not built (${ADDON_PATH} missing; run npm run build:native)`,
    });
  try {
    return (loaded = { addon: createRequire(import.meta.url)(path) as Partial<Addon>, reason: null });
  } catch (err) {
    const msg = err instanceof Error ? err.message : String(err);
    return (loaded = { addon: null, reason: `native addon failed to load: ${msg.split('\n')[0] ?? msg}` });
  }
}

/** Whether `addon` exports every function in `names` (an addon built from older sources may not). */
export function hasFunctions<K extends keyof Addon>(
  addon: Partial<Addon>,
  names: readonly K[],
): addon is Partial<Addon> & Pick<Addon, K> {
  return names.every((n) => typeof addon[n] === 'function');
}
