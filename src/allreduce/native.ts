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
 * The addon is loaded by src/native/addon.ts, which imports no TF.js: every process that runs a
 * ring (benchmarks, test peers) stays light.
 */
import { hasFunctions, loadAddon, type RingAddon, type ShmAddon } from '../native/addon.js';
import { setKernels, type RingKernels } from './reduce.js';

export type { ShmAddon };

/** What `loadNativeKernels` found. */
export interface NativeKernelsStatus {
  ok: boolean;
  /** Why they are unavailable (addon not built, too old, failed to load). */
  reason: string | null;
  /** Instruction set the kernels use: 'avx2+f16c', 'avx2' or 'scalar'. */
  simd: string | null;
}

/** The addon's shared-memory functions, or null with the reason (then the ring uses sockets only). */
export function loadShmAddon(): { shm: ShmAddon | null; reason: string | null } {
  const { addon: m, reason } = loadAddon();
  if (!m) return { shm: null, reason };
  if (!hasFunctions(m, ['shmCreate', 'shmOpen', 'shmUnmap', 'shmUnlink']))
    return { shm: null, reason: 'native addon predates shared memory (run npm run build:native)' };
  return { shm: m, reason: null };
}

let loaded: { kernels: RingKernels | null; status: NativeKernelsStatus } | undefined;

/** The native kernel set, loaded once (null with the reason when unavailable). */
export function loadNativeKernels(): { kernels: RingKernels | null; status: NativeKernelsStatus } {
  if (loaded) return loaded;
  const fail = (reason: string) => (loaded = { kernels: null, status: { ok: false, reason, simd: null } });
  const { addon: a, reason } = loadAddon();
  if (!a) return fail(reason ?? 'native addon unavailable');
  const ringFns = [
    'ringAdd',
    'ringAdd3',
    'ringAddDiv',
    'ringScale',
    'ringToHalf',
    'ringFromHalf',
    'ringAddHalf',
    'ringAddHalfFinal',
    'ringRelease',
    'ringInfo',
  ] as const;
  if (!hasFunctions(a, ringFns))
    return fail('native addon predates the ring kernels (run npm run build:native)');
  const r: RingAddon = a;
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
