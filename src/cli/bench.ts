/**
 * `ringdiff bench allreduce`: the ring all-reduce benchmark on loopback (see src/allreduce/bench.ts).
 *
 * Options (commander names; values may arrive as strings):
 *   --ranks <n>            processes (default 2; with --vs-gloo a list such as 2,4)
 *   --sizes <list>         e.g. 1M,4M,16M,64M (K/M/G are powers of 1024; default 1M,4M,16M,64M)
 *   --iters <k>            timed calls per size (default 10)
 *   --warmup <k>           untimed calls per size (default 5)
 *   --compression <c>      none | fp16 (default none)
 *   --encryption <e>       none | curve (default none)
 *   --transport <t>        auto | ipc | tcp (default auto = ipc on one host)
 *   --chunk <size>         bytes per pipelined chunk (default 1M)
 *   --timeout <ms>         ring timeout (default 60000)
 *   --no-p2p               skip the raw point-to-point measurement
 *   --no-check             skip the check against the reference sum
 *   --json                 print one JSON document instead of the table
 *   --vs-gloo              run PyTorch's Gloo all-reduce side by side (src/allreduce/vs-gloo.ts)
 *   --rounds <r>           rounds of ring and Gloo (default 3)
 *   --python, --gloo-anchor  where the anchor's Python and gloo_allreduce.py are
 *
 * The defaults are those of `DEFAULT_BENCH_OPTIONS`, shared with `npm run bench:allreduce:gloo`
 * (this command once warmed up with 2 calls where that one used 3 — and a ring's first calls
 * after it opens are its slowest, see bench.ts).
 */
import { UsageError } from './common.js';
import {
  DEFAULT_BENCH_OPTIONS,
  formatReport,
  parseSize,
  parseSizes,
  runAllreduceBench,
  type AllreduceBenchOptions,
  type AllreduceBenchReport,
} from '../allreduce/bench.js';
import {
  defaultGlooAnchor,
  formatVsGloo,
  glooUnavailable,
  runVsGloo,
  type VsGlooReport,
} from '../allreduce/vs-gloo.js';

export interface BenchAllreduceCliOptions {
  ranks?: string | number;
  sizes?: string;
  iters?: string | number;
  warmup?: string | number;
  compression?: string;
  encryption?: string;
  transport?: string;
  chunk?: string | number;
  timeout?: string | number;
  p2p?: boolean;
  check?: boolean;
  json?: boolean;
  vsGloo?: boolean;
  rounds?: string | number;
  python?: string;
  glooAnchor?: string;
}

function int(name: string, v: string | number | undefined, dflt: number, min: number): number {
  if (v === undefined) return dflt;
  const n = Number(v);
  if (!Number.isInteger(n) || n < min)
    throw new UsageError(`${name} must be an integer ≥ ${min}, got '${v}'`);
  return n;
}

function oneOf<T extends string>(name: string, v: string | undefined, allowed: readonly T[], dflt: T): T {
  if (v === undefined) return dflt;
  if (!(allowed as readonly string[]).includes(v))
    throw new UsageError(`${name} must be one of ${allowed.join(', ')}, got '${v}'`);
  return v as T;
}

/** `--ranks`: one world size, or with --vs-gloo a comma-separated list of them. */
function ranksFromCli(o: BenchAllreduceCliOptions): number[] {
  const parts = String(o.ranks ?? DEFAULT_BENCH_OPTIONS.ranks).split(',');
  if (parts.length > 1 && !o.vsGloo) throw new UsageError('--ranks: a list needs --vs-gloo');
  return parts.map((p) => {
    const n = int('--ranks', p.trim(), DEFAULT_BENCH_OPTIONS.ranks, 1);
    if (n > 64) throw new UsageError(`--ranks must be ≤ 64, got ${n}`);
    return n;
  });
}

/** Turns CLI options into benchmark options (throws UsageError naming the bad option). */
export function benchOptionsFromCli(o: BenchAllreduceCliOptions): AllreduceBenchOptions {
  const d = DEFAULT_BENCH_OPTIONS;
  let sizes = d.sizes;
  let chunkBytes = d.chunkBytes;
  try {
    if (o.sizes !== undefined) sizes = parseSizes(String(o.sizes));
    if (o.chunk !== undefined) chunkBytes = parseSize(String(o.chunk));
  } catch (e) {
    throw new UsageError(`${o.sizes !== undefined ? '--sizes/--chunk' : '--chunk'}: ${(e as Error).message}`);
  }
  const ranks = ranksFromCli(o)[0] as number;
  return {
    ranks,
    sizes,
    iters: int('--iters', o.iters, d.iters, 1),
    warmup: int('--warmup', o.warmup, d.warmup, 0),
    compression: oneOf('--compression', o.compression, ['none', 'fp16'] as const, d.compression),
    encryption: oneOf('--encryption', o.encryption, ['none', 'curve'] as const, d.encryption),
    transport: oneOf('--transport', o.transport, ['auto', 'ipc', 'tcp'] as const, d.transport),
    chunkBytes,
    timeoutMs: int('--timeout', o.timeout, d.timeoutMs, 1),
    p2p: o.p2p ?? d.p2p,
    check: o.check ?? d.check,
  };
}

/**
 * Runs the benchmark and prints the table (or, with --json, one JSON document). Exits with
 * code 1 if a result did not match the reference sum.
 */
export async function benchAllreduce(
  o: BenchAllreduceCliOptions,
): Promise<AllreduceBenchReport | VsGlooReport> {
  const opts = benchOptionsFromCli(o);
  if (o.vsGloo) return benchVsGloo(o, opts);
  const report = await runAllreduceBench({
    ...opts,
    log: o.json ? undefined : (line) => process.stderr.write(`${line}\n`),
  });
  process.stdout.write(o.json ? `${JSON.stringify(report, null, 2)}\n` : `${formatReport(report)}\n`);
  if (!report.results.every((r) => r.ok)) {
    process.exitCode = 1;
  }
  return report;
}

/** `--vs-gloo`: rounds of ring and Gloo side by side; the summary (or JSON) on stdout. */
async function benchVsGloo(o: BenchAllreduceCliOptions, opts: AllreduceBenchOptions): Promise<VsGlooReport> {
  const rounds = int('--rounds', o.rounds, 3, 1);
  const ranks = ranksFromCli(o);
  if (ranks.includes(1)) throw new UsageError('--vs-gloo needs --ranks of at least 2');
  const d = defaultGlooAnchor();
  const anchor = { python: o.python ?? d.python, script: o.glooAnchor ?? d.script };
  const why = glooUnavailable(anchor);
  if (why) throw new UsageError(`--vs-gloo: ${why} (--python, --gloo-anchor)`);
  const report = await runVsGloo({
    bench: opts,
    ranks,
    rounds,
    anchor,
    log: o.json ? undefined : (line) => process.stderr.write(`${line}\n`),
  });
  process.stdout.write(o.json ? `${JSON.stringify(report, null, 2)}\n` : `${formatVsGloo(report)}\n`);
  if (!report.rows.every((r) => r.ok)) process.exitCode = 1;
  return report;
}
