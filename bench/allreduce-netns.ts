/**
 * `npm run bench:allreduce:netns`: the ring all-reduce over N emulated hosts.
 *
 * Each rank runs in its own network namespace with its own address (198.18.0.0/24, the RFC 2544
 * benchmarking range, reachable only inside the namespaces this script creates), linked by a veth
 * pair to a bridge in a further "switch" namespace. Both directions of every link are limited with
 * `tc qdisc … tbf` to `--rate` (default 1gbit), so a rank's upload and download each get the rate.
 * Nothing is added to or changed in the caller's own network namespace; everything is deleted at
 * the end (also on Ctrl-C).
 *
 * Needs root and iproute2 (`ip`, `tc`); elsewhere it prints why it skips and exits 0.
 *
 *   npm run bench:allreduce:netns -- [--ranks 4] [--rate 1gbit] [--sizes 64M] [--iters 5]
 *       [--warmup 2] [--compression none|fp16|none,fp16] [--encryption none|curve] [--chunk 1M]
 *       [--json]
 *
 * Prints, per size and compression, the usual table plus busbw as a fraction of the link rate,
 * and with `--compression none,fp16` the fp16/none time ratio.
 */
import { spawnSync } from 'node:child_process';
import { netnsUnavailable } from '../test/netns-harness.js';
import {
  DEFAULT_BENCH_OPTIONS,
  formatBytes,
  formatReport,
  parseSize,
  parseSizes,
  runAllreduceBench,
  type AllreduceBenchReport,
  type BenchHost,
} from '../src/allreduce/bench.js';

interface Args {
  ranks: number;
  rate: string;
  sizes: number[];
  iters: number;
  warmup: number;
  compressions: Array<'none' | 'fp16'>;
  encryption: 'none' | 'curve';
  chunkBytes: number;
  json: boolean;
}

function parseArgs(argv: string[]): Args {
  const a: Args = {
    ranks: 4,
    rate: '1gbit',
    sizes: [64 << 20],
    iters: 5,
    warmup: 2,
    compressions: ['none'],
    encryption: 'none',
    chunkBytes: DEFAULT_BENCH_OPTIONS.chunkBytes,
    json: false,
  };
  for (let i = 0; i < argv.length; i++) {
    const k = argv[i];
    const v = () => {
      const x = argv[++i];
      if (x === undefined) throw new Error(`${k} needs a value`);
      return x;
    };
    switch (k) {
      case '--ranks':
        a.ranks = Number(v());
        break;
      case '--rate':
        a.rate = v();
        break;
      case '--sizes':
        a.sizes = parseSizes(v());
        break;
      case '--iters':
        a.iters = Number(v());
        break;
      case '--warmup':
        a.warmup = Number(v());
        break;
      case '--compression':
        a.compressions = v().split(',') as Args['compressions'];
        break;
      case '--encryption':
        a.encryption = v() as Args['encryption'];
        break;
      case '--chunk':
        a.chunkBytes = parseSize(v());
        break;
      case '--json':
        a.json = true;
        break;
      default:
        throw new Error(`unknown option ${k}`);
    }
  }
  if (!Number.isInteger(a.ranks) || a.ranks < 2 || a.ranks > 32)
    throw new Error('--ranks must be an integer in [2, 32]');
  if (!a.compressions.every((c) => c === 'none' || c === 'fp16'))
    throw new Error('--compression: none, fp16 or none,fp16');
  if (a.encryption !== 'none' && a.encryption !== 'curve') throw new Error('--encryption: none or curve');
  return a;
}

/** Link rate in bytes per second from a tc rate ("1gbit", "500mbit", "100kbit", "1000000bit"). */
export function rateBytesPerSecond(rate: string): number {
  const m = /^(\d+(?:\.\d+)?)([kmg]?)bit$/i.exec(rate.trim());
  if (!m) throw new Error(`--rate: use a tc rate such as 1gbit, 500mbit, got '${rate}'`);
  const mult = { '': 1, k: 1e3, m: 1e6, g: 1e9 }[(m[2] ?? '').toLowerCase()] as number;
  return (Number(m[1]) * mult) / 8;
}

function sh(cmd: string, args: string[]): void {
  const r = spawnSync(cmd, args, { encoding: 'utf8' });
  if (r.status !== 0)
    throw new Error(`${cmd} ${args.join(' ')}: ${(r.stderr || r.stdout || String(r.error)).trim()}`);
}

class Topology {
  readonly prefix: string;
  readonly sw: string;
  readonly hosts: string[] = [];
  private created: string[] = [];

  constructor(
    readonly n: number,
    readonly rate: string,
  ) {
    this.prefix = `rd${process.pid % 100000}`;
    this.sw = `${this.prefix}sw`;
  }

  ip(i: number): string {
    return `198.18.0.${i + 1}`;
  }

  up(): BenchHost[] {
    const { sw, prefix } = this;
    sh('ip', ['netns', 'add', sw]);
    this.created.push(sw);
    sh('ip', ['-n', sw, 'link', 'add', 'br0', 'type', 'bridge']);
    sh('ip', ['-n', sw, 'link', 'set', 'br0', 'up']);
    const tbf = ['root', 'tbf', 'rate', this.rate, 'burst', '1mb', 'latency', '50ms'];
    for (let i = 0; i < this.n; i++) {
      const h = `${prefix}h${i}`;
      sh('ip', ['netns', 'add', h]);
      this.created.push(h);
      this.hosts.push(h);
      // veth pair created directly inside the two namespaces (nothing appears in ours).
      sh('ip', ['link', 'add', 'eth0', 'netns', h, 'type', 'veth', 'peer', 'name', `p${i}`, 'netns', sw]);
      sh('ip', ['-n', h, 'addr', 'add', `${this.ip(i)}/24`, 'dev', 'eth0']);
      sh('ip', ['-n', h, 'link', 'set', 'lo', 'up']);
      sh('ip', ['-n', h, 'link', 'set', 'eth0', 'up']);
      sh('ip', ['-n', sw, 'link', 'set', `p${i}`, 'master', 'br0']);
      sh('ip', ['-n', sw, 'link', 'set', `p${i}`, 'up']);
      // host → switch (upload) and switch → host (download)
      sh('ip', ['netns', 'exec', h, 'tc', 'qdisc', 'add', 'dev', 'eth0', ...tbf]);
      sh('ip', ['netns', 'exec', sw, 'tc', 'qdisc', 'add', 'dev', `p${i}`, ...tbf]);
    }
    return this.hosts.map((h, i) => ({ exec: ['ip', 'netns', 'exec', h], ip: this.ip(i) }));
  }

  down(): void {
    for (const ns of this.created.reverse()) spawnSync('ip', ['netns', 'del', ns]);
    this.created = [];
  }
}

async function main(): Promise<void> {
  const args = parseArgs(process.argv.slice(2));
  const reason = netnsUnavailable();
  if (reason) {
    process.stdout.write(`bench:allreduce:netns skipped: ${reason}\n`);
    return;
  }
  const linkRate = rateBytesPerSecond(args.rate);
  const topo = new Topology(args.ranks, args.rate);
  const cleanup = () => topo.down();
  process.once('SIGINT', () => {
    cleanup();
    process.exit(130);
  });
  const reports: AllreduceBenchReport[] = [];
  try {
    let hosts: BenchHost[];
    try {
      hosts = topo.up();
    } catch (e) {
      cleanup();
      process.stdout.write(
        `bench:allreduce:netns skipped: cannot build the emulated network: ${(e as Error).message}\n`,
      );
      return;
    }
    for (const compression of args.compressions) {
      const r = await runAllreduceBench({
        ...DEFAULT_BENCH_OPTIONS,
        ranks: args.ranks,
        sizes: args.sizes,
        iters: args.iters,
        warmup: args.warmup,
        compression,
        encryption: args.encryption,
        transport: 'tcp',
        chunkBytes: args.chunkBytes,
        timeoutMs: 120_000,
        hosts,
        log: args.json ? undefined : (l) => process.stderr.write(`${l}\n`),
      });
      reports.push(r);
    }
  } finally {
    cleanup();
  }
  if (args.json) {
    process.stdout.write(
      `${JSON.stringify(
        {
          link_rate: args.rate,
          link_GBps: linkRate / 1e9,
          runs: reports.map((r) => ({
            ...r,
            results: r.results.map((x) => ({ ...x, busbw_over_link: (x.busbw_GBps * 1e9) / linkRate })),
          })),
        },
        null,
        2,
      )}\n`,
    );
    return;
  }
  process.stdout.write(
    `emulated hosts: ${args.ranks} network namespaces, every link ${args.rate} each way (tc tbf) = ${(linkRate / 1e9).toFixed(3)} GB/s\n`,
  );
  for (const r of reports) {
    process.stdout.write(`\n${formatReport(r)}\n`);
    for (const x of r.results)
      process.stdout.write(
        `${formatBytes(x.size_bytes)} ${r.compression}: busbw = ${((100 * x.busbw_GBps * 1e9) / linkRate).toFixed(1)} % of the link rate\n`,
      );
  }
  const none = reports.find((r) => r.compression === 'none');
  const fp16 = reports.find((r) => r.compression === 'fp16');
  if (none && fp16) {
    for (const x of fp16.results) {
      const y = none.results.find((z) => z.size_bytes === x.size_bytes);
      if (y)
        process.stdout.write(
          `${formatBytes(x.size_bytes)}: fp16 time / fp32 time = ${(x.time_ms / y.time_ms).toFixed(2)}\n`,
        );
    }
  }
  if (!reports.every((r) => r.results.every((x) => x.ok))) process.exitCode = 1;
}

main().catch((e: unknown) => {
  process.stderr.write(`bench:allreduce:netns: ${(e as Error).message}\n`);
  process.exit(1);
});
