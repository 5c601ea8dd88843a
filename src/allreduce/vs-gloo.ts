/**
 * The ring all-reduce side by side with PyTorch's Gloo all-reduce on this machine: one procedure
 * for `ringdiff bench allreduce --vs-gloo` and `npm run bench:allreduce:gloo`, so that the two
 * cannot measure different things again (issue 19, item 12: the CLI measured 0.88-1.3x Gloo while
 * the npm bench said 1.6-2.0x).
 *
 * The anchor is `gloo_allreduce.py` (/work/shared/anchors; Debian's python3-torch): N processes,
 * `warmup` untimed then `iters` timed all_reduce(SUM) calls on one float32 tensor, time/call = max
 * over ranks of the mean call time, busbw = bytes/time · 2(N−1)/N — what `runAllreduceBench` does
 * for the ring, with the same warm-up and iteration counts.
 *
 * A shared 2-core host swings 2-3x within minutes (other jobs): two figures taken by hand a few
 * minutes apart say little about each other. So every round runs the ring and Gloo back to back,
 * with a pause before each, ring first in even rounds and Gloo first in odd ones (whichever runs
 * second starts right after the other freed its processes and memory; measured here that made
 * no systematic difference — Gloo right after the ring / after a 3 s pause, 2 ranks, 8 rounds:
 * median 1.02 — but alternating costs nothing), and the summary gives medians over rounds of each
 * busbw and of the per-round ratio ring/Gloo, with its range.
 */
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  formatBytes,
  runAllreduceBench,
  type AllreduceBenchOptions,
  type AllreduceBenchReport,
} from './bench.js';

/** Where the Gloo anchor is and which Python runs it. */
export interface GlooAnchor {
  python: string;
  script: string;
}

/** The anchor of these machines (env RINGDIFF_GLOO_ANCHOR / RINGDIFF_PYTHON override). */
export function defaultGlooAnchor(env: NodeJS.ProcessEnv = process.env): GlooAnchor {
  return {
    python: env.RINGDIFF_PYTHON ?? '/usr/bin/python3',
    script: env.RINGDIFF_GLOO_ANCHOR ?? '/work/shared/anchors/gloo_allreduce.py',
  };
}

/** Why the anchor cannot run here (one line), or null when it can. */
export function glooUnavailable(a: GlooAnchor): string | null {
  if (!existsSync(a.script)) return `Gloo anchor ${a.script} not found`;
  const r = spawnSync(
    a.python,
    ['-c', 'import torch.distributed as d; assert d.is_gloo_available(); print("ok")'],
    { encoding: 'utf8' },
  );
  if (r.status !== 0 || !r.stdout.includes('ok'))
    return `${a.python} cannot run Gloo (python3-torch missing?): ${(r.error?.message ?? r.stderr ?? '').trim().split('\n').pop() ?? ''}`;
  return null;
}

/** One run of the anchor for `ranks` processes: busbw in GB/s (1e9 bytes/s) by size in bytes. */
export function runGloo(
  a: GlooAnchor,
  ranks: number,
  sizes: number[],
  iters: number,
  warmup: number,
): Map<number, number> {
  const dir = mkdtempSync(join(tmpdir(), 'ringdiff-gloo-'));
  try {
    const out = join(dir, 'gloo.jsonl');
    const mib = sizes.map((s) => String(s / (1 << 20)));
    const args = [a.script, '--world-sizes', String(ranks), '--sizes-mib', ...mib];
    args.push('--iters', String(iters), '--warmup', String(warmup), '--out', out);
    const r = spawnSync(a.python, args, { encoding: 'utf8' });
    if (r.status !== 0)
      throw new Error(`Gloo anchor failed: ${(r.stderr || r.error?.message || '').trim().split('\n').pop()}`);
    const rows = readFileSync(out, 'utf8')
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l) as { bytes: number; busbw_GBps: number });
    return new Map(rows.map((x) => [x.bytes, x.busbw_GBps]));
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

/** One way of running the ring (e.g. with or without shared memory), labelled in the summary. */
export interface RingVariant {
  label: string;
  options?: Partial<AllreduceBenchOptions>;
  /** Environment of the ring's processes (e.g. RINGDIFF_RING_KERNELS=js). */
  env?: Record<string, string>;
}

export interface VsGlooOptions {
  /** Ring benchmark options; `ranks` is taken from `ranks` below. */
  bench: AllreduceBenchOptions;
  ranks: number[];
  rounds: number;
  anchor: GlooAnchor;
  /** Default: one, the ring as `bench` says. */
  variants?: RingVariant[];
  /** Pause before each measurement, ms (lets the previous one's processes and memory go). Default 1000. */
  pauseMs?: number;
  log?: (line: string) => void;
}

/** Per variant, world size and buffer size: one value per round. */
export interface VsGlooRow {
  variant: string;
  ranks: number;
  size_bytes: number;
  ring_busbw_GBps: number[];
  gloo_busbw_GBps: number[];
  ratio: number[];
  /** Whether every ring result matched the reference sum. */
  ok: boolean;
}

export interface VsGlooReport {
  rounds: number;
  iters: number;
  warmup: number;
  rows: VsGlooRow[];
  /** The ring's reports, in the order they ran (transport, shared memory, p2p …). */
  ring: AllreduceBenchReport[];
}

function median(xs: number[]): number {
  const s = [...xs].sort((x, y) => x - y);
  const m = s.length >> 1;
  return s.length % 2 ? (s[m] as number) : ((s[m - 1] as number) + (s[m] as number)) / 2;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Runs `rounds` rounds of ring and Gloo, alternating which goes first; see the module comment. */
export async function runVsGloo(o: VsGlooOptions): Promise<VsGlooReport> {
  const log = o.log ?? (() => {});
  const variants = o.variants ?? [{ label: 'ring' }];
  const pause = o.pauseMs ?? 1000;
  const rows = new Map<string, VsGlooRow>();
  const ringReports: AllreduceBenchReport[] = [];
  const row = (variant: string, ranks: number, size: number): VsGlooRow => {
    const key = `${variant}\0${ranks}\0${size}`;
    let r = rows.get(key);
    if (!r)
      rows.set(
        key,
        (r = {
          variant,
          ranks,
          size_bytes: size,
          ring_busbw_GBps: [],
          gloo_busbw_GBps: [],
          ratio: [],
          ok: true,
        }),
      );
    return r;
  };
  for (let round = 0; round < o.rounds; round++) {
    for (const n of o.ranks) {
      const ring = async () => {
        const out: Array<{ label: string; rep: AllreduceBenchReport }> = [];
        for (const v of variants) {
          await sleep(pause);
          const saved = new Map(Object.keys(v.env ?? {}).map((k) => [k, process.env[k]]));
          Object.assign(process.env, v.env ?? {});
          try {
            const rep = await runAllreduceBench({ ...o.bench, ...v.options, ranks: n, log: undefined });
            out.push({ label: v.label, rep });
          } finally {
            for (const [k, x] of saved) {
              if (x === undefined) delete process.env[k];
              else process.env[k] = x;
            }
          }
        }
        return out;
      };
      const gloo = async () => {
        await sleep(pause);
        return runGloo(o.anchor, n, o.bench.sizes, o.bench.iters, o.bench.warmup);
      };
      const ringFirst = round % 2 === 0;
      let reps: Array<{ label: string; rep: AllreduceBenchReport }>;
      let g: Map<number, number>;
      if (ringFirst) {
        reps = await ring();
        g = await gloo();
      } else {
        g = await gloo();
        reps = await ring();
      }
      for (const { label, rep } of reps) {
        ringReports.push(rep);
        for (const res of rep.results) {
          const gb = g.get(res.size_bytes);
          if (gb === undefined) continue;
          const r = row(label, n, res.size_bytes);
          r.ring_busbw_GBps.push(res.busbw_GBps);
          r.gloo_busbw_GBps.push(gb);
          r.ratio.push(res.busbw_GBps / gb);
          r.ok &&= res.ok;
          log(
            `round ${round + 1} (${ringFirst ? 'ring first' : 'Gloo first'}): ${label} ${n} ranks ${formatBytes(res.size_bytes)}: ring ${res.busbw_GBps.toFixed(3)} Gloo ${gb.toFixed(3)} GB/s, ratio ${(res.busbw_GBps / gb).toFixed(2)}${res.ok ? '' : ' MISMATCH'}`,
          );
        }
      }
    }
  }
  return {
    rounds: o.rounds,
    iters: o.bench.iters,
    warmup: o.bench.warmup,
    rows: [...rows.values()],
    ring: ringReports,
  };
}

/** The summary table: medians over rounds, and the range of the per-round ratio. */
export function formatVsGloo(r: VsGlooReport): string {
  const f = (x: number) => x.toFixed(3).padStart(6);
  const lines = [
    `ring vs Gloo all-reduce busbw (GB/s = 1e9 B/s), medians over ${r.rounds} rounds of ${r.warmup} warm-up + ${r.iters} timed calls each (ring and Gloo back to back, alternating which goes first)`,
    `${'ring'.padEnd(12)} ${'ranks'.padStart(5)} ${'size'.padStart(6)} ${'ring'.padStart(6)} ${'Gloo'.padStart(6)}  ring/Gloo (min-max)`,
  ];
  for (const x of r.rows) {
    lines.push(
      `${x.variant.padEnd(12)} ${String(x.ranks).padStart(5)} ${formatBytes(x.size_bytes).padStart(6)} ${f(median(x.ring_busbw_GBps))} ${f(median(x.gloo_busbw_GBps))}  ${median(x.ratio).toFixed(2).padStart(9)} (${Math.min(...x.ratio).toFixed(2)}-${Math.max(...x.ratio).toFixed(2)})${x.ok ? '' : '  MISMATCH'}`,
    );
  }
  return lines.join('\n');
}
