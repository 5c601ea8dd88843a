/**
 * All-reduce benchmark driver (`ringdiff bench allreduce`, `npm run bench:allreduce:netns`).
 *
 * The parent spawns N child processes of this very module (env RINGDIFF_BENCH_CHILD=1, an IPC
 * channel for control), each opens a {@link Ring} (ipc:// or tcp:// on loopback, or the address of
 * an emulated host), and for every size runs `warmup` untimed and `iters` timed all-reduces (SUM):
 * like the Gloo anchor, one barrier and then back-to-back calls on the evolving buffer, each call
 * timed on every rank (with fp16 compression, which would overflow, the input is restored and the
 * ranks pass a barrier before every call instead; neither is timed). Like nccl-tests and the Gloo
 * anchor: time/call = max over ranks of the mean call time, algbw = bytes / time, busbw = algbw · 2(N−1)/N (GB = 1e9 bytes); min /
 * median / max are over iterations of the slowest rank's time. Every result is checked against a
 * float64 reference sum of all ranks' inputs (`ok`).
 *
 * What a job does: the ring's options are a worker's (frames authenticated with a generation
 * secret, shared memory between ranks of one host, the native kernels when built; the report
 * says which ran). Warm-up: a ring's first all-reduce of a size creates and maps the
 * shared-memory segments (here 30-100x a steady call) and the second is still up to 2-4x slower
 * at 64 MiB; a job pays that once per generation, so the default warm-up (5) keeps it out of the
 * timed calls. Timing is noisy on shared hosts: `--vs-gloo` (vs-gloo.ts) runs the anchor side
 * by side.
 *
 * It also measures the raw point-to-point throughput of the same transport (same socket options,
 * the same two-frame messages of `chunkBytes`, CURVE if enabled) between two of the processes,
 * one direction, and reports busbw as a fraction of it.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import * as zmq from 'zeromq';
import { Encoding, Phase, encodeHeader } from './frame.js';
import { Ring, ringContext, ringKernelStatus, type RingOptions } from './ring.js';
import { freePort } from '../util/net.js';

type KeyPair = { publicKey: string; secretKey: string };

// ---------------------------------------------------------------------------------------------
// Deterministic test data (shared with the tests)

function mix32(x: number): number {
  x = Math.imul(x ^ (x >>> 16), 0x85ebca6b);
  x = Math.imul(x ^ (x >>> 13), 0xc2b2ae35);
  return (x ^ (x >>> 16)) >>> 0;
}

const SCALES = Array.from({ length: 16 }, (_, e) => 2 ** (e - 7));

/** Fills `buf` with pseudo-random values of mixed magnitudes (±2^-8 … ±2^7), a function of (seed, rank, i). */
export function fillInput(buf: Float32Array, seed: number, rank: number): void {
  const k = mix32((seed * 0x9e3779b1) ^ mix32(rank + 0x632be5ab));
  for (let i = 0; i < buf.length; i++) {
    const h = mix32((i + k) | 0);
    buf[i] = ((h >>> 8) / 16777216 - 0.5) * (SCALES[h & 15] as number);
  }
}

/** A 32-bit hash of the bits of a float32 array (for bit-identity checks). */
export function hashF32(a: Float32Array): number {
  const u = new Uint32Array(a.buffer, a.byteOffset, a.length);
  let h = 0x811c9dc5 ^ a.length;
  for (let i = 0; i < u.length; i++) h = Math.imul(h ^ (u[i] as number), 0x01000193);
  return h >>> 0;
}

// ---------------------------------------------------------------------------------------------
// Options and results

export interface BenchHost {
  /** Command prefix that runs a process on this host, e.g. ['ip', 'netns', 'exec', 'rd0']. */
  exec: string[];
  /** IP address of this host (tcp transport). */
  ip: string;
}

export interface AllreduceBenchOptions {
  ranks: number;
  /** Buffer sizes in bytes (multiples of 4). */
  sizes: number[];
  iters: number;
  warmup: number;
  compression: 'none' | 'fp16';
  encryption: 'none' | 'curve';
  /** auto: ipc:// between processes of one host, tcp:// between hosts. */
  transport: 'auto' | 'ipc' | 'tcp';
  /**
   * The ring's `sharedMemory` option (payloads through /dev/shm between ranks of one host over
   * ipc://). Default 'auto'; RINGDIFF_RING_SHM=off in the environment also turns it off.
   */
  sharedMemory?: 'auto' | 'off';
  chunkBytes: number;
  timeoutMs: number;
  /** Measure raw point-to-point throughput too. */
  p2p: boolean;
  /** Check every result against the reference sum. */
  check: boolean;
  /**
   * Frames carry a MAC under a generation secret, as in a job (the coordinator issues one per
   * generation). Default true.
   */
  authenticate?: boolean;
  /** Emulated hosts (one per rank); default: all ranks on this host, loopback. */
  hosts?: BenchHost[];
  /** First TCP port on emulated hosts. Default 29500. */
  basePort?: number;
  /** Progress lines go here (e.g. process.stderr); nothing if undefined. */
  log?: (line: string) => void;
}

export interface SizeResult {
  size_bytes: number;
  time_ms: number;
  min_ms: number;
  median_ms: number;
  max_ms: number;
  /** Each timed call's time on its slowest rank, ms, in call order. */
  call_ms: number[];
  algbw_GBps: number;
  busbw_GBps: number;
  /** busbw / raw point-to-point throughput (null when not measured). */
  busbw_over_p2p: number | null;
  ok: boolean;
  /** Largest |result − reference| / tolerance over all ranks and iterations (≤ 1 is ok). */
  worst_error_ratio: number;
  /** CPU time (all threads of the process, ZeroMQ's I/O thread included) per call, mean over ranks. */
  cpu_ms_per_rank: number;
}

export interface AllreduceBenchReport {
  ranks: number;
  transport: string;
  /** Whether rank 0 sent its all-reduce payloads through shared memory (else: why not). */
  shared_memory: boolean;
  shared_memory_reason: string | null;
  /** The reduce kernels rank 0 ran: 'native <simd>' or 'js (why)' (the JS ones are several times slower). */
  kernels: string;
  /** Whether frames carried a MAC under a generation secret, as in a job. */
  authenticated: boolean;
  chunk_bytes: number;
  compression: string;
  encryption: string;
  iters: number;
  warmup: number;
  /** Raw one-direction throughput between two processes over the same transport, GB/s (median). */
  p2p_GBps: number | null;
  results: SizeResult[];
}

export const DEFAULT_BENCH_OPTIONS: AllreduceBenchOptions = {
  ranks: 2,
  sizes: [1 << 20, 4 << 20, 16 << 20, 64 << 20],
  iters: 10,
  warmup: 5,
  compression: 'none',
  encryption: 'none',
  transport: 'auto',
  chunkBytes: 1 << 20,
  timeoutMs: 60_000,
  p2p: true,
  check: true,
};

/** "1M,4M,64M" → bytes (K = 2^10, M = 2^20, G = 2^30; a plain number is bytes). */
export function parseSizes(s: string): number[] {
  return s.split(',').map((t) => parseSize(t.trim()));
}

export function parseSize(t: string): number {
  const m = /^(\d+(?:\.\d+)?)\s*([kKmMgG]?)(i?[bB])?$/.exec(t);
  if (!m) throw new Error(`bad size '${t}' (examples: 4096, 64K, 16M, 1G)`);
  const mult = { '': 1, k: 1024, m: 1024 ** 2, g: 1024 ** 3 }[(m[2] ?? '').toLowerCase()] as number;
  const v = Math.floor(Number(m[1]) * mult);
  if (v < 4 || v % 4 !== 0) throw new Error(`size '${t}' must be a positive multiple of 4 bytes`);
  return v;
}

export function formatBytes(b: number): string {
  if (b >= 1024 ** 3 && b % 1024 ** 3 === 0) return `${b / 1024 ** 3}G`;
  if (b >= 1024 ** 2 && b % 1024 ** 2 === 0) return `${b / 1024 ** 2}M`;
  if (b >= 1024 && b % 1024 === 0) return `${b / 1024}K`;
  return `${b}B`;
}

// ---------------------------------------------------------------------------------------------
// Parent

interface Child {
  proc: ChildProcess;
  rank: number;
  pending: Map<number, { resolve(v: Record<string, unknown>): void; reject(e: Error): void }>;
  exited: boolean;
}

/**
 * glibc malloc settings for processes that run a ring: ZeroMQ allocates every received frame
 * (≥ 128 KiB) with malloc; by default glibc may serve such blocks with a fresh mmap, or trim the
 * heap after a burst of frees, and then every page of every frame costs a page fault (measured
 * here: ~60 % more CPU per all-reduce). These keep the blocks in a heap that is reused. Workers
 * that run a Ring should be started with them too (the environment is read at process start).
 * The bench children get them unless RINGDIFF_BENCH_MALLOC=default or the caller set them.
 */
export const RING_MALLOC_ENV: Readonly<Record<string, string>> = {
  MALLOC_MMAP_THRESHOLD_: String(256 << 20),
  MALLOC_TRIM_THRESHOLD_: String(1 << 30),
};

let msgId = 0;

function call(c: Child, cmd: string, args: Record<string, unknown> = {}): Promise<Record<string, unknown>> {
  const id = ++msgId;
  return new Promise((resolve, reject) => {
    if (c.exited) return reject(new Error(`bench rank ${c.rank} exited`));
    c.pending.set(id, { resolve, reject });
    c.proc.send({ id, cmd, ...args });
  }).then((r) => {
    const m = r as Record<string, unknown>;
    if (!m.ok)
      throw new Error(
        `bench rank ${c.rank}: ${cmd} failed: ${String((m.error as { message?: string })?.message ?? m.error)}`,
      );
    return m;
  });
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? (s[m] as number) : ((s[m - 1] as number) + (s[m] as number)) / 2;
}

function spawnChild(rank: number, host: BenchHost | undefined): Promise<Child> {
  const script = fileURLToPath(import.meta.url);
  const env: NodeJS.ProcessEnv = { ...process.env, RINGDIFF_BENCH_CHILD: '1' };
  if (process.env.RINGDIFF_BENCH_MALLOC !== 'default') Object.assign(env, RING_MALLOC_ENV, process.env);
  // Extra node flags for the children (profiling: e.g. "--cpu-prof --trace-gc").
  const nodeArgs = (process.env.RINGDIFF_BENCH_NODE_ARGS ?? '').split(/\s+/).filter(Boolean);
  const [cmd, ...args] = host
    ? [...host.exec, process.execPath, ...nodeArgs, script]
    : [process.execPath, ...nodeArgs, script];
  const proc = spawn(cmd as string, args, { stdio: ['ignore', 'inherit', 'inherit', 'ipc'], env });
  const child: Child = { proc, rank, pending: new Map(), exited: false };
  return new Promise((resolve, reject) => {
    proc.on('message', (raw: unknown) => {
      const m = raw as Record<string, unknown>;
      if (m.ready) return resolve(child);
      const p = child.pending.get(m.id as number);
      if (p) {
        child.pending.delete(m.id as number);
        p.resolve(m);
      }
    });
    proc.on('error', reject);
    proc.on('exit', (code, sig) => {
      child.exited = true;
      const e = new Error(`bench rank ${rank} exited (${sig ?? code})`);
      for (const p of child.pending.values()) p.reject(e);
      child.pending.clear();
      reject(e);
    });
  });
}

/** Runs the benchmark; resolves with the report (the caller prints it). */
export async function runAllreduceBench(o: AllreduceBenchOptions): Promise<AllreduceBenchReport> {
  const n = o.ranks;
  if (!Number.isInteger(n) || n < 1 || n > 64) throw new Error('--ranks must be an integer in [1, 64]');
  if (o.hosts && o.hosts.length !== n) throw new Error('one host per rank');
  const log = o.log ?? (() => {});
  const transport = o.transport === 'auto' ? (o.hosts ? 'tcp' : 'ipc') : o.transport;
  if (o.hosts && transport === 'ipc') throw new Error('ipc:// cannot cross emulated hosts');

  // Addresses.
  const tag = `${process.pid}-${Date.now().toString(36)}`;
  const addr: string[] = [];
  const p2pAddr: string[] = [];
  for (let r = 0; r < n; r++) {
    if (transport === 'ipc') {
      addr.push(`ipc://${path.join(tmpdir(), `ringdiff-bench-${tag}-${r}.sock`)}`);
      p2pAddr.push(`ipc://${path.join(tmpdir(), `ringdiff-bench-${tag}-${r}-p2p.sock`)}`);
    } else if (o.hosts) {
      const base = o.basePort ?? 29500;
      addr.push(`tcp://${(o.hosts[r] as BenchHost).ip}:${base + 2 * r}`);
      p2pAddr.push(`tcp://${(o.hosts[r] as BenchHost).ip}:${base + 2 * r + 1}`);
    } else {
      addr.push(`tcp://127.0.0.1:${await freePort()}`);
      p2pAddr.push(`tcp://127.0.0.1:${await freePort()}`);
    }
  }
  const keys = o.encryption === 'curve' ? Array.from({ length: n }, () => zmq.curveKeyPair()) : [];
  // Hex: the options travel to the children as JSON.
  const secret = o.authenticate === false ? undefined : randomBytes(16).toString('hex');

  const children: Child[] = [];
  try {
    for (let r = 0; r < n; r++) children.push(await spawnChild(r, o.hosts?.[r]));
    const ringOpts = (r: number): Omit<RingOptions, 'onFrame'> => ({
      jobId: `bench-${tag}`,
      rank: r,
      worldSize: n,
      generation: 1,
      bindAddress: addr[r] as string,
      successorAddress: addr[(r + 1) % n] as string,
      chunkBytes: o.chunkBytes,
      timeoutMs: o.timeoutMs,
      compression: o.compression,
      encryption: o.encryption,
      sharedMemory: o.sharedMemory ?? 'auto',
      curve:
        o.encryption === 'curve'
          ? {
              publicKey: (keys[r] as { publicKey: string }).publicKey,
              secretKey: (keys[r] as { secretKey: string }).secretKey,
              successorPublicKey: (keys[(r + 1) % n] as { publicKey: string }).publicKey,
              allowedClientKeys: (keys[(r + n - 1) % n] as { publicKey: string }).publicKey,
            }
          : undefined,
    });

    // Raw point-to-point throughput: rank 0 → rank 1 (or to itself when N = 1: skipped).
    let p2p: number | null = null;
    if (o.p2p && n >= 2) {
      const rx = children[1] as Child;
      const tx = children[0] as Child;
      const curve =
        o.encryption === 'curve' ? { server: keys[1] as KeyPair, client: keys[0] as KeyPair } : undefined;
      await call(rx, 'p2p-bind', { addr: p2pAddr[1], curve });
      await call(tx, 'p2p-connect', { addr: p2pAddr[1], curve });
      const total = Math.max(64 << 20, o.chunkBytes * 16);
      const rates: number[] = [];
      for (let rep = 0; rep < 6; rep++) {
        const got = call(rx, 'p2p-recv', { bytes: total, chunkBytes: o.chunkBytes });
        await call(tx, 'p2p-send', { bytes: total, chunkBytes: o.chunkBytes });
        const r = await got;
        if (rep > 0) rates.push(r.GBps as number); // first round: warm-up
      }
      await call(rx, 'p2p-close');
      await call(tx, 'p2p-close');
      p2p = median(rates);
      log(
        `p2p raw ${transport}: ${p2p.toFixed(3)} GB/s (median of ${rates.length}: ${rates.map((x) => x.toFixed(2)).join(' ')})`,
      );
    }

    await Promise.all(children.map((c) => call(c, 'open', { opts: ringOpts(c.rank), secret })));
    const results: SizeResult[] = [];
    for (const size of o.sizes) {
      const per = await Promise.all(
        children.map((c) =>
          call(c, 'bench', {
            size,
            iters: o.iters,
            warmup: o.warmup,
            check: o.check,
            seed: size,
            compression: o.compression,
          }),
        ),
      );
      const times = per.map((p) => p.times as number[]);
      const meanPerRank = times.map((t) => t.reduce((a, b) => a + b, 0) / t.length);
      const perIter = Array.from({ length: o.iters }, (_, i) =>
        Math.max(...times.map((t) => t[i] as number)),
      );
      const timeMs = Math.max(...meanPerRank);
      const algbw = size / (timeMs / 1e3) / 1e9;
      const busbw = n > 1 ? (algbw * 2 * (n - 1)) / n : 0;
      const res: SizeResult = {
        size_bytes: size,
        time_ms: timeMs,
        min_ms: Math.min(...perIter),
        median_ms: median(perIter),
        max_ms: Math.max(...perIter),
        call_ms: perIter,
        algbw_GBps: algbw,
        busbw_GBps: busbw,
        busbw_over_p2p: p2p ? busbw / p2p : null,
        ok: per.every((p) => p.okAll === true),
        worst_error_ratio: Math.max(...per.map((p) => p.worst as number)),
        cpu_ms_per_rank: per.reduce((a, p) => a + (p.cpuMs as number), 0) / n,
      };
      results.push(res);
      log(
        `${formatBytes(size)}: ${timeMs.toFixed(2)} ms, busbw ${busbw.toFixed(3)} GB/s, cpu/rank ${res.cpu_ms_per_rank.toFixed(1)} ms${res.ok ? '' : ' MISMATCH'}`,
      );
    }
    const st = await call(children[0] as Child, 'stats');
    const shm = n > 1 ? (st.shm as { active: boolean; reason: string | null }) : null;
    const k = st.kernels as { ok: boolean; reason: string | null; simd: string | null };
    await Promise.all(children.map((c) => call(c, 'close')));
    return {
      ranks: n,
      transport,
      shared_memory: shm?.active ?? false,
      shared_memory_reason: shm ? shm.reason : 'worldSize 1',
      kernels: k.ok ? `native ${k.simd ?? ''}`.trim() : `js (${k.reason ?? 'native kernels unavailable'})`,
      authenticated: o.authenticate !== false,
      chunk_bytes: o.chunkBytes,
      compression: o.compression,
      encryption: o.encryption,
      iters: o.iters,
      warmup: o.warmup,
      p2p_GBps: p2p,
      results,
    };
  } finally {
    for (const c of children) {
      if (!c.exited) {
        try {
          c.proc.send({ id: ++msgId, cmd: 'exit' });
        } catch {
          /* gone */
        }
      }
    }
    await Promise.all(
      children.map(
        (c) =>
          new Promise<void>((resolve) => {
            if (c.exited) return resolve();
            const t = setTimeout(() => {
              c.proc.kill('SIGKILL');
              resolve();
            }, 5000);
            c.proc.once('exit', () => {
              clearTimeout(t);
              resolve();
            });
          }),
      ),
    );
  }
}

/** The report as a table (one line per size). */
export function formatReport(r: AllreduceBenchReport): string {
  const lines: string[] = [];
  lines.push(
    `ring all-reduce: ${r.ranks} ranks, ${r.transport}${r.shared_memory ? ' + shared memory' : ` (shared memory off: ${r.shared_memory_reason})`}, ${r.kernels} kernels, chunk ${formatBytes(r.chunk_bytes)}, compression ${r.compression}, encryption ${r.encryption}${r.authenticated ? ', frames authenticated' : ''}, ${r.warmup} warm-up + ${r.iters} timed calls per size`,
  );
  if (r.p2p_GBps !== null)
    lines.push(
      `raw point-to-point (same transport, 2 processes, one direction): ${r.p2p_GBps.toFixed(3)} GB/s`,
    );
  const hdr = `${'size'.padStart(8)} ${'time/call ms'.padStart(13)} ${'algbw GB/s'.padStart(11)} ${'busbw GB/s'.padStart(11)} ${'busbw/p2p'.padStart(10)}  ${'min/median/max ms'.padEnd(26)} ok`;
  lines.push(hdr, '-'.repeat(hdr.length));
  for (const x of r.results) {
    lines.push(
      `${formatBytes(x.size_bytes).padStart(8)} ${x.time_ms.toFixed(3).padStart(13)} ${x.algbw_GBps.toFixed(3).padStart(11)} ${x.busbw_GBps.toFixed(3).padStart(11)} ${(x.busbw_over_p2p === null ? '-' : `${(100 * x.busbw_over_p2p).toFixed(0)}%`).padStart(10)}  ${`${x.min_ms.toFixed(2)}/${x.median_ms.toFixed(2)}/${x.max_ms.toFixed(2)}`.padEnd(26)} ${x.ok ? 'yes' : 'NO'}`,
    );
  }
  lines.push('(GB = 1e9 bytes; time/call = max over ranks of the mean call time; busbw = algbw·2(N−1)/N)');
  return lines.join('\n');
}

// ---------------------------------------------------------------------------------------------
// Child

async function childMain(): Promise<void> {
  let ring: Ring | null = null;
  let rank = 0;
  let n = 1;
  let p2pSock: zmq.Push | zmq.Pull | null = null;
  const reply = (m: Record<string, unknown>) => process.send?.(m);

  const p2pHeader = (chunk: number, count: number) =>
    encodeHeader({
      jobId: 'p2p',
      generation: 1,
      seq: 0,
      step: 0,
      phase: Phase.REDUCE_SCATTER,
      chunk,
      sender: 0,
      encoding: Encoding.F32,
      count,
      length: 0,
      chunks: 0,
      root: 0,
    });

  const handlers: Record<string, (m: Record<string, unknown>) => Promise<Record<string, unknown>>> = {
    async open(m) {
      const opts = m.opts as RingOptions;
      rank = opts.rank;
      n = opts.worldSize;
      const secret = typeof m.secret === 'string' ? { secret: Buffer.from(m.secret, 'hex') } : {};
      ring = await Ring.open({ ...opts, ...secret });
      return {};
    },
    async bench(m) {
      const r = ring as Ring;
      const size = m.size as number;
      const len = size / 4;
      const iters = m.iters as number;
      const warmup = m.warmup as number;
      const check = m.check as boolean;
      const seed = m.seed as number;
      const input = new Float32Array(len);
      fillInput(input, seed, rank);
      const buf = new Float32Array(len);
      let ref: Float64Array | null = null;
      let mag: Float64Array | null = null;
      if (check) {
        ref = new Float64Array(len);
        mag = new Float64Array(len);
        const tmp = new Float32Array(len);
        for (let q = 0; q < n; q++) {
          fillInput(tmp, seed, q);
          for (let i = 0; i < len; i++) {
            ref[i] = (ref[i] as number) + (tmp[i] as number);
            mag[i] = (mag[i] as number) + Math.abs(tmp[i] as number);
          }
        }
      }
      const fp16 = m.compression === 'fp16';
      let worst = 0;
      let okAll = true;
      /** Checks buf = scale · reference within `calls` roundings of N-term sums. */
      const verify = (scale: number, calls: number) => {
        if (!ref || !mag) return;
        const rel = calls * n * (fp16 ? 2 ** -10 : 2 ** -23);
        for (let i = 0; i < len; i++) {
          const e =
            Math.abs((buf[i] as number) - scale * (ref[i] as number)) /
            (scale * rel * (mag[i] as number) + 2 ** -24);
          if (e > worst) worst = e;
        }
        if (!(worst <= 1)) okAll = false;
      };
      for (let i = 0; i < warmup; i++) {
        buf.set(input);
        await r.allReduce(buf);
        verify(1, 1);
      }
      const times: number[] = [];
      let cpu = 0;
      const timed = async () => {
        const c0 = process.cpuUsage();
        const t0 = performance.now();
        await r.allReduce(buf);
        times.push(performance.now() - t0);
        const c1 = process.cpuUsage(c0);
        cpu += (c1.user + c1.system) / 1e3;
      };
      if (!fp16) {
        // Like the Gloo anchor: one barrier, then back-to-back calls on the evolving buffer
        // (call k returns N^(k-1) times the reference sum), checked at the end.
        buf.set(input);
        await r.barrier();
        for (let i = 0; i < iters; i++) await timed();
        await r.barrier();
        verify(n ** (iters - 1), iters);
      } else {
        // fp16 would overflow on an evolving buffer: restore the input and pass a barrier before
        // every call (neither timed), check after every call.
        for (let i = 0; i < iters; i++) {
          buf.set(input);
          await r.barrier();
          await timed();
          await r.barrier();
          verify(1, 1);
        }
      }
      return { times, okAll, worst, cpuMs: cpu / iters };
    },
    async stats() {
      return { shm: ring?.stats().shm ?? null, kernels: ringKernelStatus };
    },
    async close() {
      await ring?.close();
      ring = null;
      return {};
    },
    async 'p2p-bind'(m) {
      const s = new zmq.Pull({ context: ringContext(), linger: 0, receiveHighWaterMark: 0 });
      const curve = m.curve as { server: KeyPair } | undefined;
      if (curve) {
        s.curveServer = true;
        s.curveSecretKey = curve.server.secretKey;
      }
      await s.bind(m.addr as string);
      p2pSock = s;
      return {};
    },
    async 'p2p-connect'(m) {
      const s = new zmq.Push({ context: ringContext(), linger: 0, sendHighWaterMark: 0 });
      const curve = m.curve as { server: KeyPair; client: KeyPair } | undefined;
      if (curve) {
        s.curveServerKey = curve.server.publicKey;
        s.curvePublicKey = curve.client.publicKey;
        s.curveSecretKey = curve.client.secretKey;
      }
      s.connect(m.addr as string);
      p2pSock = s;
      return {};
    },
    async 'p2p-send'(m) {
      const s = p2pSock as zmq.Push;
      const total = m.bytes as number;
      const cb = m.chunkBytes as number;
      const payload = Buffer.alloc(cb, 1);
      for (let off = 0, c = 0; off < total; off += cb, c++) {
        const p = off + cb <= total ? payload : payload.subarray(0, total - off);
        await s.send([p2pHeader(c, p.length / 4), p]);
      }
      return {};
    },
    async 'p2p-recv'(m) {
      const s = p2pSock as zmq.Pull;
      const total = m.bytes as number;
      let got = 0;
      let first = 0;
      let t0 = 0;
      while (got < total) {
        const parts = await s.receive();
        const p = parts[1];
        if (t0 === 0) {
          t0 = performance.now();
          first = p?.length ?? 0;
        }
        got += p?.length ?? 0;
      }
      const dt = (performance.now() - t0) / 1e3;
      return { GBps: (got - first) / dt / 1e9 };
    },
    async 'p2p-close'() {
      p2pSock?.close();
      p2pSock = null;
      return {};
    },
  };

  process.on('message', (raw: unknown) => {
    const m = raw as Record<string, unknown>;
    if (m.cmd === 'exit') {
      void (async () => {
        try {
          await ring?.close();
        } finally {
          process.exit(0);
        }
      })();
      return;
    }
    const h = handlers[m.cmd as string];
    if (!h) return reply({ id: m.id, ok: false, error: { message: `unknown command ${String(m.cmd)}` } });
    h(m).then(
      (r) => reply({ id: m.id, ok: true, ...r }),
      (e: unknown) => reply({ id: m.id, ok: false, error: { message: (e as Error)?.message ?? String(e) } }),
    );
  });
  process.on('disconnect', () => process.exit(0));
  reply({ ready: true });
}

if (
  process.env.RINGDIFF_BENCH_CHILD === '1' &&
  typeof process.send === 'function' &&
  process.argv[1] === fileURLToPath(import.meta.url)
)
  void childMain();
