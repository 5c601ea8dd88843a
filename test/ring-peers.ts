/**
 * Ring peers for the all-reduce tests: each rank is a child process (fixtures/ring-peer.ts) driven
 * over the IPC channel, so that a test can SIGKILL one mid-call like a real worker.
 */
import assert from 'node:assert/strict';
import { fork, type ChildProcess } from 'node:child_process';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { after } from 'node:test';
import type { RingOptions } from '../src/allreduce/ring.js';

const PEER = fileURLToPath(new URL('./fixtures/ring-peer.js', import.meta.url));

export type Reply = {
  ok: boolean;
  error?: { name: string; code: string; message: string };
  [k: string]: unknown;
};

/** One rank's process and its request/reply channel. */
export class Peer {
  private id = 0;
  private pending = new Map<number, (r: Reply) => void>();
  exited: Promise<void>;
  /** performance.now() at exit. */
  exitedAt = 0;
  constructor(readonly proc: ChildProcess) {
    proc.on('message', (raw: unknown) => {
      const m = raw as Reply & { id?: number };
      if (m.id === undefined) return;
      const p = this.pending.get(m.id);
      this.pending.delete(m.id);
      p?.(m);
    });
    this.exited = new Promise((resolve) =>
      proc.on('exit', () => {
        this.exitedAt = performance.now();
        for (const p of this.pending.values())
          p({ ok: false, error: { name: 'Exit', code: 'EXIT', message: 'peer exited' } });
        this.pending.clear();
        resolve();
      }),
    );
  }
  call(cmd: string, args: Record<string, unknown> = {}): Promise<Reply> {
    const id = ++this.id;
    return new Promise((resolve) => {
      this.pending.set(id, resolve);
      this.proc.send({ id, cmd, ...args });
    });
  }
  async ok(cmd: string, args: Record<string, unknown> = {}): Promise<Reply> {
    const r = await this.call(cmd, args);
    if (!r.ok) assert.fail(`${cmd} failed: ${r.error?.name}: ${r.error?.message}`);
    return r;
  }
  /** The ring's counters (`Ring.stats()`), typed by the caller. */
  async stats<T>(): Promise<T> {
    return (await this.ok('stats')).stats as T;
  }
}

const allPeers: Peer[] = [];
after(() => {
  for (const p of allPeers) p.proc.kill('SIGKILL');
});

/** Starts `n` peer processes (killed when the test file ends). */
export async function startPeers(n: number, env: NodeJS.ProcessEnv = {}): Promise<Peer[]> {
  return Promise.all(
    Array.from({ length: n }, () => {
      const proc = fork(PEER, [], {
        env: { ...process.env, RINGDIFF_RING_PEER: '1', ...env },
        stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
      });
      const peer = new Peer(proc);
      allPeers.push(peer);
      return new Promise<Peer>((resolve, reject) => {
        proc.once('message', () => resolve(peer));
        proc.once('error', reject);
      });
    }),
  );
}

/** Asks every live peer to exit and waits for all of them. */
export async function stopPeers(peers: Peer[]): Promise<void> {
  await Promise.all(
    peers.map((p) => (p.proc.exitCode === null && p.proc.signalCode === null ? p.call('exit') : null)),
  );
  await Promise.all(peers.map((p) => p.exited));
}

/** Fresh ipc:// addresses in `dir`, one per rank (never reused: see ring.ts on reusing an address). */
export function ipcAddresses(dir: string): (n: number) => string[] {
  let seq = 0;
  return (n) => {
    const g = ++seq;
    return Array.from({ length: n }, (_, r) => `ipc://${path.join(dir, `g${g}-r${r}.sock`)}`);
  };
}

/** Options of rank `r` of a ring over `addrs` (job 'test-job', generation 1, 20 s timeout) plus `extra`. */
export function ringOpts(addrs: string[], r: number, extra: Partial<RingOptions> = {}): RingOptions {
  const n = addrs.length;
  return {
    jobId: 'test-job',
    rank: r,
    worldSize: n,
    generation: 1,
    bindAddress: addrs[r] as string,
    successorAddress: addrs[(r + 1) % n] as string,
    timeoutMs: 20_000,
    ...extra,
  };
}

/** Opens the ring on every peer (rank = index), with `extra` options (or per rank). */
export async function openRing(
  peers: Peer[],
  addrs: string[],
  extra: Partial<RingOptions> | ((r: number) => Partial<RingOptions>) = {},
): Promise<void> {
  await Promise.all(
    peers.map((p, r) =>
      p.ok('open', { opts: ringOpts(addrs, r, typeof extra === 'function' ? extra(r) : extra) }),
    ),
  );
}

/** Runs one all-reduce on every peer; checks tolerance and that all ranks hold the same bits; the hash. */
export async function allReduceAll(
  peers: Peer[],
  length: number,
  op: 'sum' | 'mean',
  seed: number,
): Promise<number> {
  const rs = await Promise.all(peers.map((p) => p.ok('allreduce', { length, op, seed })));
  const hashes = new Set(rs.map((r) => r.hash));
  assert.equal(hashes.size, 1, `ranks disagree (N=${peers.length}, length ${length}, ${op})`);
  for (const r of rs)
    assert.ok(
      (r.worst as number) <= 1,
      `error ${r.maxErr} beyond tolerance (ratio ${r.worst}) N=${peers.length} length ${length} ${op}`,
    );
  return rs[0]?.hash as number;
}
