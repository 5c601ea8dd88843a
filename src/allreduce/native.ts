/**
 * Native ring kernels: the SIMD (AVX2, F16C) versions of the kernels of `reduce.ts`, from the
 * N-API addon in native/ (native/src/ring.cc), plus `release`, which frees a received frame at
 * once instead of at V8's next garbage collection; and the shared-memory segment functions of
 * native/src/shm.cc (`loadShmAddon`, used by shm.ts).
 *
 * Importing `ring.ts` installs them (`installNativeKernels`) when the addon is built, unless
 * RINGDIFF_RING_KERNELS=js; without the addon the ring runs on the pure-JS kernels, with the
 * same results bit for bit (test/allreduce.test.ts checks both sets against each other).
 *
 * The addon is loaded here directly rather than through src/model/backend/native.ts, which
 * would pull TF.js into every process that runs a ring (benchmarks, test peers).
 */
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { setKernels, type RingKernels } from './reduce.js';

const ADDON_PATH = join('native', 'build', 'Release', 'ringdiff_native.node');

/** The ring part of the addon's exports (native/src/ring.cc). */
interface RingAddon {
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

/** What `loadNativeKernels` found. */
export interface NativeKernelsStatus {
  ok: boolean;
  /** Why they are unavailable (addon not built, too old, failed to load). */
  reason: string | null;
  /** Instruction set the kernels use: 'avx2+f16c', 'avx2' or 'scalar'. */
  simd: string | null;
}

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

/** The addon module, required once (null with the reason when it is missing or fails to load). */
let addon: { module: Record<string, unknown> | null; reason: string | null } | undefined;

function requireAddon(): { module: Record<string, unknown> | null; reason: string | null } {
  if (addon) return addon;
  const path = findAddon();
  if (!path)
    return (addon = {
      module: null,
      reason: `native addon not built (${ADDON_PATH} missing; run npm run build:native)`,
    });
  try {
    return (addon = {
      module: createRequire(import.meta.url)(path) as Record<string, unknown>,
      reason: null,
    });
  } catch (err) {
    const msg = err instanceof Error ? err.message : String(err);
    return (addon = { module: null, reason: `native addon failed to load: ${msg.split('\n')[0] ?? msg}` });
  }
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

/** The addon's shared-memory functions, or null with the reason (then the ring uses sockets only). */
export function loadShmAddon(): { shm: ShmAddon | null; reason: string | null } {
  const { module: m, reason } = requireAddon();
  if (!m) return { shm: null, reason };
  if (
    typeof m.shmCreate !== 'function' ||
    typeof m.shmOpen !== 'function' ||
    typeof m.shmUnmap !== 'function' ||
    typeof m.shmUnlink !== 'function'
  )
    return { shm: null, reason: 'native addon predates shared memory (run npm run build:native)' };
  return { shm: m as unknown as ShmAddon, reason: null };
}

let loaded: { kernels: RingKernels | null; status: NativeKernelsStatus } | undefined;

/** The native kernel set, loaded once (null with the reason when unavailable). */
export function loadNativeKernels(): { kernels: RingKernels | null; status: NativeKernelsStatus } {
  if (loaded) return loaded;
  const fail = (reason: string) => (loaded = { kernels: null, status: { ok: false, reason, simd: null } });
  const { module: mod, reason } = requireAddon();
  if (!mod) return fail(reason ?? 'native addon unavailable');
  const a = mod as Partial<RingAddon>;
  if (typeof a.ringAdd3 !== 'function' || typeof a.ringRelease !== 'function' || !a.ringInfo)
    return fail('native addon predates the ring kernels (run npm run build:native)');
  const r = a as RingAddon;
  const k: RingKernels = {
    add: (dst, src) => r.ringAdd(dst, src),
    add3: (out, x, y) => r.ringAdd3(out, x, y),
    addDiv: (dst, src, divisor) => r.ringAddDiv(dst, src, divisor),
    scale: (x, divisor) => r.ringScale(x, divisor),
    // A typed-array copy is a memcpy already.
    copy: (dst, src) => dst.set(src),
    toHalf: (src, dst) => r.ringToHalf(src, dst),
    fromHalf: (src, dst) => r.ringFromHalf(src, dst),
    addHalf: (half, local) => r.ringAddHalf(half, half, local),
    addHalfTo: (out, half, local) => r.ringAddHalf(out, half, local),
    addHalfFinal: (half, local, divisor) => r.ringAddHalfFinal(half, local, divisor),
    release: (bytes) => r.ringRelease(bytes),
  };
  loaded = { kernels: k, status: { ok: true, reason: null, simd: r.ringInfo().simd } };
  return loaded;
}

/**
 * Makes the ring use the native kernels when they are available and RINGDIFF_RING_KERNELS is not
 * 'js'; returns what it found (status.ok false: the JS kernels stay).
 */
export function installNativeKernels(env: NodeJS.ProcessEnv = process.env): NativeKernelsStatus {
  if ((env.RINGDIFF_RING_KERNELS ?? '').toLowerCase() === 'js')
    return { ok: false, reason: 'RINGDIFF_RING_KERNELS=js', simd: null };
  const { kernels, status } = loadNativeKernels();
  if (kernels) setKernels(kernels);
  return status;
}
