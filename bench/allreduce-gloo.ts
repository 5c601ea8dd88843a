/**
 * The ring all-reduce side by side with PyTorch's Gloo all-reduce on this machine (issue 5).
 *
 *   node dist/bench/allreduce-gloo.js [--ranks 2,4] [--sizes 16M,64M] [--rounds 3] [--iters 10]
 *       [--chunk 1M] [--kernels native,js] [--shm auto,off] [--python /usr/bin/python3]
 *       [--gloo /work/shared/anchors/gloo_allreduce.py]
 *
 * A shared, noisy host swings 2-3x from minute to minute, so a lone figure means little: every
 * round runs the ring bench (`runAllreduceBench`, with its raw point-to-point measurement) and then
 * the Gloo anchor (`gloo_allreduce.py`) for each world size, back to back, and the summary gives,
 * per world size and buffer size, the median over rounds of each busbw and of the per-round ratio
 * ring/Gloo. `--kernels native,js` runs the ring once per kernel set (RINGDIFF_RING_KERNELS in the
 * children's environment; `js` is the ring without the addon) in every round. `--shm auto,off`
 * likewise runs the ring with its shared-memory payload path ('auto', the default) and without it
 * ('off': every payload through the ipc:// sockets), side by side in every round.
 */
import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  DEFAULT_BENCH_OPTIONS,
  formatBytes,
  parseSize,
  parseSizes,
  runAllreduceBench,
} from '../src/allreduce/bench.js';

interface Args {
  ranks: number[];
  sizes: number[];
  rounds: number;
  iters: number;
  chunkBytes: number;
  python: string;
  gloo: string;
  kernels: string[];
  shm: Array<'auto' | 'off'>;
}

function parseArgs(argv: string[]): Args {
  const a: Args = {
    ranks: [2, 4],
    sizes: [16 << 20, 64 << 20],
    rounds: 3,
    iters: 10,
    chunkBytes: DEFAULT_BENCH_OPTIONS.chunkBytes,
    python: '/usr/bin/python3',
    gloo: '/work/shared/anchors/gloo_allreduce.py',
    kernels: ['native'],
    shm: ['auto'],
  };
  for (let i = 0; i < argv.length; i += 2) {
    const k = argv[i];
    const v = argv[i + 1];
    if (v === undefined) throw new Error(`${k}: missing value`);
    if (k === '--ranks') a.ranks = v.split(',').map(Number);
    else if (k === '--sizes') a.sizes = parseSizes(v);
    else if (k === '--rounds') a.rounds = Number(v);
    else if (k === '--iters') a.iters = Number(v);
    else if (k === '--chunk') a.chunkBytes = parseSize(v);
    else if (k === '--python') a.python = v;
    else if (k === '--gloo') a.gloo = v;
    else if (k === '--kernels') a.kernels = v.split(',');
    else if (k === '--shm') {
      a.shm = v.split(',').map((x) => {
        if (x !== 'auto' && x !== 'off') throw new Error(`--shm: expected auto and/or off, got ${x}`);
        return x;
      });
    } else throw new Error(`unknown option ${k}`);
  }
  return a;
}

function median(xs: number[]): number {
  const s = [...xs].sort((x, y) => x - y);
  const m = s.length >> 1;
  return s.length % 2 ? (s[m] as number) : ((s[m - 1] as number) + (s[m] as number)) / 2;
}

/** Gloo busbw (GB/s) per size in bytes, from one run of the anchor. */
function runGloo(a: Args, ranks: number): Map<number, number> {
  const out = join(tmpdir(), `ringdiff-gloo-${process.pid}.jsonl`);
  const mib = a.sizes.map((s) => String(s / (1 << 20)));
  const r = spawnSync(
    a.python,
    [a.gloo, '--world-sizes', String(ranks), '--sizes-mib', ...mib, '--iters', String(a.iters), '--out', out],
    { encoding: 'utf8' },
  );
  if (r.status !== 0) throw new Error(`gloo anchor failed: ${r.stderr || r.error?.message}`);
  const rows = readFileSync(out, 'utf8')
    .trim()
    .split('\n')
    .map((l) => JSON.parse(l) as { bytes: number; busbw_GBps: number });
  return new Map(rows.map((x) => [x.bytes, x.busbw_GBps]));
}

async function main(): Promise<void> {
  const a = parseArgs(process.argv.slice(2));
  type Row = { ring: number[]; gloo: number[]; ratio: number[]; p2p: number[] };
  const rows = new Map<string, Row>();
  const row = (kernels: string, n: number, size: number) => {
    const key = `${kernels} ${n} ${size}`;
    let r = rows.get(key);
    if (!r) rows.set(key, (r = { ring: [], gloo: [], ratio: [], p2p: [] }));
    return r;
  };
  for (let round = 0; round < a.rounds; round++) {
    for (const n of a.ranks) {
      const reports = [];
      for (const k of a.kernels) {
        for (const shm of a.shm) {
          process.env.RINGDIFF_RING_KERNELS = k;
          const rep = await runAllreduceBench({
            ...DEFAULT_BENCH_OPTIONS,
            ranks: n,
            sizes: a.sizes,
            iters: a.iters,
            chunkBytes: a.chunkBytes,
            sharedMemory: shm,
          });
          // The label says what ran: 'native+shm', or 'native' for the socket path.
          reports.push({ kernels: rep.shared_memory ? `${k}+shm` : k, rep });
        }
      }
      const gloo = runGloo(a, n);
      for (const { kernels, rep } of reports) {
        for (const res of rep.results) {
          const g = gloo.get(res.size_bytes);
          if (g === undefined) continue;
          const r = row(kernels, n, res.size_bytes);
          r.ring.push(res.busbw_GBps);
          r.gloo.push(g);
          r.ratio.push(res.busbw_GBps / g);
          if (rep.p2p_GBps !== null) r.p2p.push(rep.p2p_GBps);
          process.stderr.write(
            `round ${round + 1}: ${kernels} ${n} ranks ${formatBytes(res.size_bytes)}: ring ${res.busbw_GBps.toFixed(3)} gloo ${g.toFixed(3)} ratio ${(res.busbw_GBps / g).toFixed(2)} p2p ${rep.p2p_GBps?.toFixed(3) ?? '-'}${res.ok ? '' : ' MISMATCH'}\n`,
          );
        }
      }
    }
  }
  const f = (x: number) => x.toFixed(3);
  console.log(`ring vs Gloo busbw (GB/s), medians over ${a.rounds} rounds, ${a.iters} calls each`);
  console.log('path       ranks     size   ring   gloo  ring/gloo (min-max)    p2p  ring/p2p');
  for (const [key, r] of rows) {
    const [kernels, nStr, sizeStr] = key.split(' ') as [string, string, string];
    const n = Number(nStr);
    const size = Number(sizeStr);
    const p2p = r.p2p.length ? median(r.p2p) : NaN;
    console.log(
      `${kernels.padEnd(10)} ${String(n).padStart(5)} ${formatBytes(size).padStart(8)} ${f(median(r.ring))} ${f(median(r.gloo))}  ${median(r.ratio).toFixed(2).padStart(9)} (${Math.min(...r.ratio).toFixed(2)}-${Math.max(...r.ratio).toFixed(2)})  ${f(p2p)}  ${(median(r.ring) / p2p).toFixed(2).padStart(8)}`,
    );
  }
}

main().catch((e: unknown) => {
  console.error(e);
  process.exit(1);
});
