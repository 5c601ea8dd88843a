/**
 * `ringdiff bench allreduce`: the ring all-reduce benchmark on loopback (see src/allreduce/bench.ts).
 *
 * Options (commander names; values may arrive as strings):
 *   --ranks <n>            processes (default 2)
 *   --sizes <list>         e.g. 1M,4M,16M,64M (K/M/G are powers of 1024; default 1M,4M,16M,64M)
 *   --iters <k>            timed calls per size (default 10)
 *   --warmup <k>           untimed calls per size (default 3)
 *   --compression <c>      none | fp16 (default none)
 *   --encryption <e>       none | curve (default none)
 *   --transport <t>        auto | ipc | tcp (default auto = ipc on one host)
 *   --chunk <size>         bytes per pipelined chunk (default 1M)
 *   --timeout <ms>         ring timeout (default 60000)
 *   --no-p2p               skip the raw point-to-point measurement
 *   --no-check             skip the check against the reference sum
 *   --json                 print one JSON document instead of the table
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
  const ranks = int('--ranks', o.ranks, d.ranks, 1);
  if (ranks > 64) throw new UsageError(`--ranks must be ≤ 64, got ${ranks}`);
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
export async function benchAllreduce(o: BenchAllreduceCliOptions): Promise<AllreduceBenchReport> {
  const opts = benchOptionsFromCli(o);
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
