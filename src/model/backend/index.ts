/**
 * Compute backend selection. This is the only module that knows which TF.js backends exist;
 * everything else codes against the portable `@tensorflow/tfjs` API.
 *
 * Order of preference: tensorflow on GPU (`@tensorflow/tfjs-node-gpu`), tensorflow on CPU
 * (`@tensorflow/tfjs-node`), `cpu-native` (TF.js's `cpu` backend with convolutions and matmuls in
 * ringdiff's own native addon, `native/`), then TF.js's pure-JavaScript `cpu` backend, which
 * always loads.
 */
import * as tf from '@tensorflow/tfjs';
import { CPU_NATIVE, registerCpuNative } from './native.js';

export type BackendName = 'tensorflow-gpu' | 'tensorflow' | 'cpu-native' | 'cpu';
export const BACKEND_NAMES: readonly BackendName[] = ['tensorflow-gpu', 'tensorflow', 'cpu-native', 'cpu'];

/** State of the native addon behind `cpu-native`. */
export interface NativeReport {
  /** The addon (native/build/Release/ringdiff_native.node) was built and loads. */
  built: boolean;
  /** Why not, when it did not. */
  reason: string | null;
  /** The GEMM the kernels use and why (own micro-kernels for this CPU; OpenBLAS if present and faster). */
  gemm: string | null;
  /** Threads the native kernels use (RINGDIFF_THREADS, else all available cores). */
  threads: number | null;
}

export interface CandidateReport {
  name: BackendName;
  /** npm package that provides it, if any. */
  package: string | null;
  loaded: boolean;
  /** Why it did not load (missing package, missing shared library named by the loader, ...). */
  reason: string | null;
  /** Only for `cpu-native`, when it was tried or probed. */
  native?: NativeReport;
}

export interface BackendReport {
  chosen: BackendName;
  /** Name registered with TF.js (`tensorflow` or `cpu`). */
  tfBackend: string;
  tfjsVersion: string;
  forcedBy: 'flag' | 'env' | null;
  candidates: CandidateReport[];
  /** The native addon, or null when `cpu-native` was not tried (a faster backend loaded first). */
  native: NativeReport | null;
}

interface Candidate {
  name: BackendName;
  package: string | null;
  tfBackend: string;
  load: () => Promise<void>;
}

const CANDIDATES: Candidate[] = [
  {
    name: 'tensorflow-gpu',
    package: '@tensorflow/tfjs-node-gpu',
    tfBackend: 'tensorflow',
    load: async () => {
      await import(/* optional */ '@tensorflow/tfjs-node-gpu' as string);
    },
  },
  {
    name: 'tensorflow',
    package: '@tensorflow/tfjs-node',
    tfBackend: 'tensorflow',
    load: async () => {
      await import(/* optional */ '@tensorflow/tfjs-node' as string);
    },
  },
  {
    name: 'cpu-native',
    package: null,
    tfBackend: CPU_NATIVE,
    load: async () => {
      const st = registerCpuNative();
      if (!st.ok) throw new Error(st.reason ?? 'native addon unavailable');
    },
  },
  { name: 'cpu', package: null, tfBackend: 'cpu', load: async () => {} },
];

/** The addon's state as the reports show it (registering is idempotent and switches nothing). */
function nativeReport(): NativeReport {
  const st = registerCpuNative();
  return { built: st.ok, reason: st.reason, gemm: st.gemm, threads: st.ok ? st.threads : null };
}

/** Turns a module-load failure into one line a user can act on. */
export function explainLoadError(pkg: string, err: unknown): string {
  const msg = err instanceof Error ? err.message : String(err);
  const code = (err as { code?: string } | null)?.code;
  if (code === 'ERR_MODULE_NOT_FOUND' || code === 'MODULE_NOT_FOUND') {
    if (msg.includes(pkg)) return `package ${pkg} is not installed`;
  }
  const lib = /(lib[\w+.-]+\.so(?:\.[\w.]+)?)/.exec(msg);
  if (lib) {
    const cuda = /cud|cublas|cufft|curand|cusolver|cusparse/i.test(lib[1] ?? '');
    return `shared library ${lib[1]} could not be loaded${cuda ? ' (CUDA 11.2 / cuDNN 8.1 are required)' : ''}`;
  }
  return msg.split('\n')[0] ?? 'unknown error';
}

let current: BackendReport | null = null;

/**
 * Selects and initialises the backend once per process. `requested` (or RINGDIFF_BACKEND)
 * forces one: failing to load a forced backend is an error, not a fallback. Falling back from
 * `cpu-native` to `cpu` prints one warning line on stderr unless `quiet`.
 */
export async function initBackend(
  requested?: string,
  opts: { quiet?: boolean } = {},
): Promise<BackendReport> {
  if (current) {
    if (requested && requested !== current.chosen) {
      throw new Error(`backend already initialised as ${current.chosen}, cannot switch to ${requested}`);
    }
    return current;
  }
  const fromEnv = process.env.RINGDIFF_BACKEND;
  const forced = requested ?? (fromEnv && fromEnv.length > 0 ? fromEnv : undefined);
  const forcedBy = requested ? 'flag' : forced ? 'env' : null;
  if (forced && !BACKEND_NAMES.includes(forced as BackendName)) {
    throw new Error(
      `unknown backend '${forced}' (from ${forcedBy === 'flag' ? '--backend' : 'RINGDIFF_BACKEND'}); choose one of ${BACKEND_NAMES.join(', ')}`,
    );
  }
  tf.enableProdMode();
  const candidates: CandidateReport[] = [];
  let chosen: Candidate | null = null;
  for (const c of CANDIDATES) {
    if (forced && c.name !== forced) {
      candidates.push({
        name: c.name,
        package: c.package,
        loaded: false,
        reason: `not tried: ${forced} was forced`,
      });
      continue;
    }
    if (chosen) {
      candidates.push({
        name: c.name,
        package: c.package,
        loaded: false,
        reason: `not tried: ${chosen.name} was chosen`,
      });
      continue;
    }
    try {
      await c.load();
      const ok = await tf.setBackend(c.tfBackend);
      if (!ok) throw new Error(`tf.setBackend('${c.tfBackend}') failed`);
      await tf.ready();
      const native = c.name === 'cpu-native' ? { native: nativeReport() } : {};
      candidates.push({ name: c.name, package: c.package, loaded: true, reason: null, ...native });
      chosen = c;
    } catch (err) {
      const native = c.name === 'cpu-native' ? { native: nativeReport() } : {};
      candidates.push({
        name: c.name,
        package: c.package,
        loaded: false,
        reason: explainLoadError(c.package ?? c.name, err),
        ...native,
      });
      if (forced)
        throw new Error(
          `backend ${forced} could not be loaded: ${explainLoadError(c.package ?? c.name, err)}`,
        );
    }
  }
  if (!chosen) throw new Error('no TF.js backend could be loaded');
  const native = candidates.find((c) => c.name === 'cpu-native')?.native ?? null;
  if (chosen.name === 'cpu' && native && !native.built && !opts.quiet) {
    // One line, not a log record: it must show even before logging is configured.
    process.stderr.write(
      `ringdiff: warning: ${native.reason}; falling back to the pure-JS cpu backend (training is 10-1000x slower)\n`,
    );
  }
  current = {
    chosen: chosen.name,
    tfBackend: chosen.tfBackend,
    tfjsVersion: tf.version.tfjs,
    forcedBy,
    candidates,
    native,
  };
  return current;
}

/** Probes every candidate without committing to one (for `ringdiff doctor`). */
export async function probeBackends(requested?: string): Promise<BackendReport> {
  const report = await initBackend(requested, { quiet: true });
  // initBackend stops at the first that loads; report the rest too, without switching to them.
  const out: CandidateReport[] = [];
  for (const c of report.candidates) {
    if (c.name === 'cpu-native' && !c.native) {
      const native = nativeReport();
      const state = native.built ? `addon built (${native.gemm}, ${native.threads} threads)` : native.reason;
      out.push({ ...c, reason: c.reason ? `${c.reason}; ${state}` : state, native });
      continue;
    }
    if (c.loaded || c.package === null || !c.reason?.startsWith('not tried')) {
      out.push(c);
      continue;
    }
    const cand = CANDIDATES.find((x) => x.name === c.name);
    try {
      await import.meta.resolve?.(cand?.package ?? '');
      out.push({ ...c, reason: `${c.reason}; package is installed` });
    } catch (err) {
      out.push({ ...c, reason: `${c.reason}; ${explainLoadError(cand?.package ?? c.name, err)}` });
    }
  }
  return { ...report, candidates: out, native: out.find((c) => c.name === 'cpu-native')?.native ?? null };
}
