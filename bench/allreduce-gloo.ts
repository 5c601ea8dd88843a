/**
 * The ring all-reduce side by side with PyTorch's Gloo all-reduce on this machine (issue 5).
 *
 *   node dist/bench/allreduce-gloo.js [--ranks 2,4] [--sizes 16M,64M] [--rounds 3] [--iters 10]
 *       [--warmup 5] [--chunk 1M] [--kernels native,js] [--shm auto,off] [--python /usr/bin/python3]
 *       [--gloo /work/shared/anchors/gloo_allreduce.py]
 *
 * The procedure is `runVsGloo` (src/allreduce/vs-gloo.ts), the one `ringdiff bench allreduce
 * --vs-gloo` runs, with the same defaults: rounds of ring and Gloo back to back, alternating which
 * goes first; medians over rounds of each busbw and of the per-round ratio. This script only adds
 * ring variants run in every round: `--kernels native,js` (RINGDIFF_RING_KERNELS in the ring's
 * processes; `js` is the ring without the addon) and `--shm auto,off` (the shared-memory payload
 * path, the default, or every payload through the ipc:// sockets).
 */
import { DEFAULT_BENCH_OPTIONS, parseSize, parseSizes } from '../src/allreduce/bench.js';
import {
  defaultGlooAnchor,
  formatVsGloo,
  glooUnavailable,
  runVsGloo,
  type RingVariant,
} from '../src/allreduce/vs-gloo.js';

interface Args {
  ranks: number[];
  sizes: number[];
  rounds: number;
  iters: number;
  warmup: number;
  chunkBytes: number;
  python: string;
  gloo: string;
  kernels: string[];
  shm: Array<'auto' | 'off'>;
}

function parseArgs(argv: string[]): Args {
  const anchor = defaultGlooAnchor();
  const a: Args = {
    ranks: [2, 4],
    sizes: [16 << 20, 64 << 20],
    rounds: 3,
    iters: DEFAULT_BENCH_OPTIONS.iters,
    warmup: DEFAULT_BENCH_OPTIONS.warmup,
    chunkBytes: DEFAULT_BENCH_OPTIONS.chunkBytes,
    python: anchor.python,
    gloo: anchor.script,
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
    else if (k === '--warmup') a.warmup = Number(v);
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

async function main(): Promise<void> {
  const a = parseArgs(process.argv.slice(2));
  const anchor = { python: a.python, script: a.gloo };
  const why = glooUnavailable(anchor);
  if (why) throw new Error(why);
  const variants: RingVariant[] = [];
  for (const k of a.kernels)
    for (const shm of a.shm)
      variants.push({
        // 'native+shm' / 'js+shm': the shared-memory path; 'native' / 'js': the sockets only.
        label: shm === 'auto' ? `${k}+shm` : k,
        options: { sharedMemory: shm },
        env: { RINGDIFF_RING_KERNELS: k },
      });
  const report = await runVsGloo({
    bench: {
      ...DEFAULT_BENCH_OPTIONS,
      sizes: a.sizes,
      iters: a.iters,
      warmup: a.warmup,
      chunkBytes: a.chunkBytes,
    },
    ranks: a.ranks,
    rounds: a.rounds,
    anchor,
    variants,
    log: (line) => process.stderr.write(`${line}\n`),
  });
  console.log(formatVsGloo(report));
  // The label promises shared memory: say so when it was not in use (e.g. no addon).
  for (const r of report.ring)
    if (r.ranks > 1 && !r.shared_memory && r.shared_memory_reason !== "sharedMemory 'off'")
      console.log(`note: a '+shm' run had shared memory off: ${r.shared_memory_reason}`);
  if (!report.rows.every((r) => r.ok)) process.exitCode = 1;
}

main().catch((e: unknown) => {
  console.error(e);
  process.exit(1);
});
