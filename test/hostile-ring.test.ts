/**
 * Ring frames from outsiders (issue 19, item 3): real rings in this process over tcp:// on
 * loopback, and a ZeroMQ PUSH socket of nobody's ring that connects to a rank's PULL port — as a
 * client that can reach the port, but holds no plan, would.
 *
 * - With the generation's secret (what workers get in their plans), a frame that does not carry
 *   the secret's MAC is dropped and counted (`unauthenticated`), ABORT included.
 * - Whatever the secret, a frame for a collective that is neither the current nor the next one is
 *   dropped and counted (`unexpected`) at once: it never holds up the frames behind it.
 */
import { after, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import * as zmq from 'zeromq';
import { Encoding, FrameAuth, Phase, encodeHeader, type FrameHeader } from '../src/allreduce/frame.js';
import { Ring, type RingOptions } from '../src/allreduce/ring.js';
import { RingConfigError } from '../src/allreduce/errors.js';
import { CoordinatorServer } from '../src/coordinator/server.js';
import { CoordinatorClient } from '../src/worker/client.js';
import type { ringdiff } from '../src/proto-gen/coordinator.js';
import { freePort } from '../src/util/net.js';
import { LocalCluster, TOKEN } from './cluster-harness.js';

const JOB = 'hostile-ring-test';
let nextGeneration = 40;

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Polls `cond` every 20 ms for up to `ms`; whether it became true. */
async function until(cond: () => boolean, ms: number): Promise<boolean> {
  const end = performance.now() + ms;
  while (!cond()) {
    if (performance.now() > end) return false;
    await sleep(20);
  }
  return true;
}

interface TestRing {
  rings: Ring[];
  addrs: string[];
  generation: number;
  secret: Uint8Array | undefined;
}

/** `n` ranks over tcp:// in this process; `extra` is passed through as it is (secret, curve …). */
async function openRings(
  n: number,
  extra: (rank: number) => Record<string, unknown> = () => ({}),
  secret?: Uint8Array,
  timeoutMs = 10_000,
): Promise<TestRing> {
  const generation = nextGeneration++;
  const addrs = await Promise.all(
    Array.from({ length: n }, async () => `tcp://127.0.0.1:${await freePort()}`),
  );
  const opened = await Promise.allSettled(
    addrs.map((a, r) => {
      // Built as a plain object so that options of newer rings pass through unchecked.
      const opts: Record<string, unknown> = {
        jobId: JOB,
        rank: r,
        worldSize: n,
        generation,
        bindAddress: a,
        successorAddress: addrs[(r + 1) % n] as string,
        chunkBytes: 64 << 10,
        timeoutMs,
        ...(secret ? { secret } : {}),
        ...extra(r),
      };
      return Ring.open(opts as unknown as RingOptions);
    }),
  );
  const rings = opened.flatMap((o) => (o.status === 'fulfilled' ? [o.value] : []));
  const failed = opened.find((o) => o.status === 'rejected');
  if (failed) {
    // Open rings would keep this file's process alive (and the test runner waiting) for ever.
    await Promise.all(rings.map((x) => x.close()));
    throw failed.reason;
  }
  return { rings, addrs, generation, secret };
}

/** One all-reduce (sum) on every rank of small integers (exact in float32); checks every result. */
async function allReduceAll(rings: Ring[], length: number, seed: number): Promise<void> {
  const n = rings.length;
  const inputs = rings.map((_, r) =>
    Float32Array.from({ length }, (_, i) => ((i * 7 + r * 13 + seed) % 101) - 50),
  );
  const want = Float32Array.from({ length }, (_, i) => inputs.reduce((s, x) => s + (x[i] as number), 0));
  await Promise.all(rings.map((ring, r) => ring.allReduce(inputs[r] as Float32Array)));
  for (let r = 0; r < n; r++)
    assert.deepEqual(inputs[r], want, `rank ${r}: wrong all-reduce result (length ${length})`);
}

/** The ring's drop counters by reason (absent reasons read as 0). */
function dropped(ring: Ring): Record<string, number> {
  return ring.stats().dropped as unknown as Record<string, number>;
}

function droppedTotal(ring: Ring): number {
  return Object.values(dropped(ring)).reduce((a, b) => a + b, 0);
}

/** A frame header of this ring; `over` replaces fields. */
function header(t: TestRing, over: Partial<FrameHeader>): FrameHeader {
  return {
    jobId: JOB,
    generation: t.generation,
    seq: 0,
    step: 0,
    phase: Phase.REDUCE_SCATTER,
    chunk: 0,
    sender: t.rings.length - 1, // rank 0's predecessor
    encoding: Encoding.F32,
    count: 2,
    length: 4,
    chunks: 1,
    root: 0,
    ...over,
  };
}

/** A PUSH socket of no ring, connected to `addr` (a rank's PULL port). */
async function outsider(addr: string): Promise<zmq.Push> {
  const s = new zmq.Push({ linger: 0 });
  s.connect(addr);
  return s;
}

const flipLast = (b: Buffer): Buffer => {
  const c = Buffer.from(b);
  c[c.length - 1] = (c[c.length - 1] as number) ^ 1;
  return c;
};

const closeAll = (t: TestRing) => Promise.all(t.rings.map((r) => r.close()));

describe('ring frames from outsiders', { timeout: 120_000 }, () => {
  test("an outsider's ABORT with the right job id and generation is dropped and counted; collectives complete", async () => {
    const t = await openRings(3, undefined, randomBytes(16));
    const [r0] = t.rings as [Ring, Ring, Ring];
    const rogue = await outsider(t.addrs[0] as string);
    try {
      await allReduceAll(t.rings, 1000, 1);
      const abort = (seq: number) => {
        const reason = Buffer.from('rank 2 gave up: forged');
        return [
          encodeHeader(
            header(t, { seq, phase: Phase.ABORT, encoding: Encoding.BYTES, count: reason.length, length: 0 }),
          ),
          reason,
        ];
      };
      // Idle between collectives (the next one is #1), then during a collective in progress.
      const before = droppedTotal(r0);
      await rogue.send(abort(1));
      assert.ok(
        await until(() => droppedTotal(r0) > before || r0.failure !== null, 5000),
        'the forged ABORT was neither dropped nor acted on',
      );
      assert.equal(r0.failure, null, `the generation was aborted: ${r0.failure?.message}`);
      const call = allReduceAll(t.rings, 2_000_000, 2);
      await rogue.send(abort(2));
      await call;
      assert.ok(await until(() => droppedTotal(r0) >= before + 2, 5000), 'the second ABORT was not counted');
      assert.equal(r0.failure, null);
      await allReduceAll(t.rings, 1000, 3);
      assert.equal(dropped(r0).unauthenticated, 2, JSON.stringify(dropped(r0)));
      for (const r of t.rings) assert.equal(r.stats().completed, 3);
    } finally {
      rogue.close();
      await closeAll(t);
    }
  });

  test('a data frame for a far future collective (seq 2^32−1) is dropped at once: no stall', async () => {
    const timeoutMs = 8000;
    const t = await openRings(3, undefined, randomBytes(16), timeoutMs);
    const [r0] = t.rings as [Ring, Ring, Ring];
    const rogue = await outsider(t.addrs[0] as string);
    try {
      await allReduceAll(t.rings, 1000, 1);
      const before = droppedTotal(r0);
      await rogue.send([
        encodeHeader(header(t, { seq: 2 ** 32 - 1, count: 2, length: 1000, chunks: 1 })),
        Buffer.from(new Float32Array([1e6, 1e6]).buffer),
      ]);
      await until(() => droppedTotal(r0) > before, 2000);
      const t0 = performance.now();
      await allReduceAll(t.rings, 1000, 2);
      const ms = performance.now() - t0;
      assert.ok(ms < timeoutMs / 4, `the collective after the frame took ${Math.round(ms)} ms`);
      assert.equal(droppedTotal(r0), before + 1, JSON.stringify(dropped(r0)));
      assert.equal(dropped(r0).unauthenticated, 1);
    } finally {
      rogue.close();
      await closeAll(t);
    }
  });

  test('without a secret: frames for collectives other than the current or next one are dropped at once', async () => {
    const timeoutMs = 8000;
    const t = await openRings(3, undefined, undefined, timeoutMs);
    const [r0] = t.rings as [Ring, Ring, Ring];
    const rogue = await outsider(t.addrs[0] as string);
    try {
      await allReduceAll(t.rings, 1000, 1);
      await allReduceAll(t.rings, 1000, 2); // #0, #1 done: #2 is current, #3 next
      const payload = Buffer.from(new Float32Array([1e6, 1e6]).buffer);
      const data = (seq: number) => [encodeHeader(header(t, { seq, length: 1000 })), payload];
      const reason = Buffer.from('forged');
      const abort = (seq: number) => [
        encodeHeader(
          header(t, { seq, phase: Phase.ABORT, encoding: Encoding.BYTES, count: reason.length, length: 0 }),
        ),
        reason,
      ];
      const before = droppedTotal(r0);
      const forged = [data(2 ** 32 - 1), data(4), data(0), abort(2 ** 32 - 1), abort(9)];
      for (const m of forged) await rogue.send(m);
      await until(() => droppedTotal(r0) >= before + forged.length || r0.failure !== null, 2000);
      assert.equal(r0.failure, null, `acted on: ${r0.failure?.message}`);
      const t0 = performance.now();
      await allReduceAll(t.rings, 1000, 3);
      const ms = performance.now() - t0;
      assert.ok(ms < timeoutMs / 4, `the collective after the frames took ${Math.round(ms)} ms`);
      assert.equal(dropped(r0).unexpected, forged.length, JSON.stringify(dropped(r0)));
    } finally {
      rogue.close();
      await closeAll(t);
    }
  });
});

describe('frames of ring members', { timeout: 120_000 }, () => {
  test('a MAC under another secret or of another message, a replayed link index, no MAC: dropped and counted', async () => {
    const secret = randomBytes(16);
    const t = await openRings(3, undefined, secret);
    const [r0] = t.rings as [Ring, Ring, Ring];
    const rogue = await outsider(t.addrs[0] as string);
    try {
      await allReduceAll(t.rings, 1000, 1);
      const reason = Buffer.from('forged');
      const abortHeader = header(t, {
        seq: 1,
        phase: Phase.ABORT,
        encoding: Encoding.BYTES,
        count: reason.length,
        length: 0,
      });
      // The previous generation's secret (as a fenced member would hold), then the right secret
      // but link index 1, which the predecessor used for its first message (a replay).
      const other = new FrameAuth(randomBytes(16));
      const mine = new FrameAuth(secret);
      const forged = [
        [other.seal(encodeHeader({ ...abortHeader, linkIndex: 1e9 }), reason), reason],
        [mine.seal(encodeHeader({ ...abortHeader, linkIndex: 1 }), reason), reason],
        // A valid MAC of another message: the reason does not match.
        [mine.seal(encodeHeader({ ...abortHeader, linkIndex: 1e9 }), reason), Buffer.from('other')],
        // No MAC, or one with a bit flipped.
        [encodeHeader({ ...abortHeader, linkIndex: 1e9 }), reason],
        [flipLast(mine.seal(encodeHeader({ ...abortHeader, linkIndex: 1e9 }), reason)), reason],
      ];
      for (const m of forged) await rogue.send(m);
      assert.ok(
        await until(() => (dropped(r0).unauthenticated ?? 0) >= forged.length || r0.failure !== null, 5000),
        JSON.stringify(dropped(r0)),
      );
      assert.equal(r0.failure, null);
      await allReduceAll(t.rings, 100_000, 2);
      assert.equal(dropped(r0).unauthenticated, forged.length);
      assert.equal(dropped(r0).unexpected, 0);
    } finally {
      rogue.close();
      await closeAll(t);
    }
  });

  test('CURVE rings take the secret too; a secret of the wrong size is a RingConfigError', async () => {
    const keys = [zmq.curveKeyPair(), zmq.curveKeyPair(), zmq.curveKeyPair()];
    const t = await openRings(
      3,
      (r) => ({
        encryption: 'curve',
        curve: {
          publicKey: keys[r]?.publicKey,
          secretKey: keys[r]?.secretKey,
          successorPublicKey: keys[(r + 1) % 3]?.publicKey,
          allowedClientKeys: keys[(r + 2) % 3]?.publicKey,
        },
      }),
      randomBytes(16),
    );
    try {
      for (let i = 0; i < 3; i++) await allReduceAll(t.rings, 1 + 50_000 * i, i);
      const base = {
        jobId: JOB,
        rank: 0,
        worldSize: 2,
        generation: 1,
        bindAddress: 'tcp://127.0.0.1:1',
        successorAddress: 'tcp://127.0.0.1:2',
      };
      for (const secret of [randomBytes(8), Buffer.alloc(0), randomBytes(65)])
        await assert.rejects(Ring.open({ ...base, secret }), RingConfigError);
    } finally {
      await closeAll(t);
    }
  });
});

describe('the ring secret in plans', { timeout: 300_000 }, () => {
  const root = fs.mkdtempSync(path.join(tmpdir(), 'ringdiff-hostile-ring-'));
  after(() => fs.rmSync(root, { recursive: true, force: true }));

  test('the coordinator issues 16 random bytes per generation, the same to every member', async () => {
    const server = new CoordinatorServer({
      jobId: 'job-s',
      token: TOKEN,
      configYaml: 'train:\n  steps: 10\n',
      globalBatch: 10,
      totalSteps: 10,
      minWorkers: 2,
      maxWorkers: 4,
      heartbeatTimeoutMs: 5000,
      verifyEvery: 0,
      curve: false,
    });
    const address = `127.0.0.1:${await server.listen('127.0.0.1:0')}`;
    const clients = [0, 1, 2].map(() => new CoordinatorClient(address, TOKEN));
    const streams: Array<{ cancel(): void }> = [];
    try {
      const plans = new Map<number, ringdiff.v1.Plan[]>();
      const subscribe = async (i: number) => {
        const c = clients[i] as CoordinatorClient;
        const reg = await c.register({
          host: 'h',
          backend: 'cpu',
          device: 'cpu',
          ringEndpoint: `tcp://127.0.0.1:${6000 + i}`,
          pid: process.pid,
          hasData: true,
          committedStep: -1,
        });
        const s = c.plans(reg.workerId);
        s.on('data', (p: ringdiff.v1.Plan) => {
          let list = plans.get(p.generation);
          if (!list) plans.set(p.generation, (list = []));
          list.push(p);
        });
        s.on('error', () => {});
        streams.push(s);
      };
      await subscribe(0);
      await subscribe(1);
      assert.ok(await until(() => (plans.get(1)?.length ?? 0) === 2, 5000), 'generation 1 plans');
      await subscribe(2); // a joiner: generation 2
      assert.ok(await until(() => (plans.get(2)?.length ?? 0) === 3, 5000), 'generation 2 plans');
      const secretOf = (g: number) => {
        const got = (plans.get(g) ?? []).map((p) => Buffer.from(p.ringSecret).toString('hex'));
        assert.equal(new Set(got).size, 1, `generation ${g}: every member gets the same secret`);
        const hex = got[0] as string;
        assert.equal(hex.length, 32, `generation ${g}: 16 bytes`);
        return hex;
      };
      assert.notEqual(secretOf(1), secretOf(2), 'a new generation has a new secret');
    } finally {
      for (const s of streams) s.cancel();
      for (const c of clients) c.close();
      await server.close();
    }
  });

  test("a live job: outsiders' ABORT and future-collective frames on the workers' ring ports change nothing", async (t) => {
    const dir = path.join(root, 'job');
    fs.mkdirSync(dir);
    const steps = 300;
    const cluster = new LocalCluster(
      dir,
      `
run: { name: probe, out_dir: ${path.join(dir, 'run')} }
data: { dataset: "toy:8gaussians", size: 4096 }
model: { kind: mlp, hidden: 32, layers: 2, num_classes: 0 }
diffusion: { timesteps: 100 }
train: { steps: ${steps}, global_batch: 32, warmup_steps: 5, checkpoint_every: 0, ema_sync_every: 50, log_every: 50 }
sample: { count: 0 }
cluster: { min_workers: 2, heartbeat_timeout_ms: 10000, ring_timeout_ms: 30000 }
`,
    );
    const ports = [await freePort(), await freePort()];
    const metrics = [await freePort(), await freePort()];
    const rogues: zmq.Push[] = [];
    try {
      await cluster.startCoordinator();
      for (let i = 0; i < 2; i++)
        cluster.startWorker(`worker-${i}`, [
          '--ring-bind',
          `tcp://127.0.0.1:${ports[i]}`,
          '--metrics',
          `127.0.0.1:${metrics[i]}`,
        ]);
      const st = await cluster.waitFor((s) => s.generation >= 1 && Number(s.step) >= 5, 'training', 120_000);
      const frames = (seq: number, sender: number): Buffer[][] => {
        const reason = Buffer.from('rank 0 gave up: forged');
        const h: FrameHeader = {
          jobId: st.jobId,
          generation: st.generation,
          seq,
          step: 0,
          phase: Phase.ABORT,
          chunk: 0,
          sender,
          encoding: Encoding.BYTES,
          count: reason.length,
          length: 0,
          chunks: 1,
          root: 0,
        };
        const data = Buffer.alloc(8);
        return [
          [encodeHeader(h), reason],
          [
            encodeHeader({
              ...h,
              seq: 2 ** 32 - 1,
              phase: Phase.REDUCE_SCATTER,
              encoding: Encoding.F32,
              count: 2,
            }),
            data,
          ],
        ];
      };
      for (const p of ports) {
        const s = new zmq.Push({ linger: 0 });
        s.connect(`tcp://127.0.0.1:${p}`);
        rogues.push(s);
      }
      // Every collective number the job can be at, for a few rounds while it trains.
      let sent = 0;
      for (let round = 0; round < 3; round++) {
        const now = Number((await cluster.status())?.step ?? 0);
        for (let seq = 0; seq < 4 * (now + 20); seq += 1 + (seq >> 6))
          for (const [i, s] of rogues.entries())
            for (const m of frames(seq, 1 - i)) {
              await s.send(m);
              sent++;
            }
        await sleep(300);
      }
      const scrape = async (port: number) => {
        const text = await (await fetch(`http://127.0.0.1:${port}/metrics`)).text();
        const m = /ringdiff_local_ring_dropped_frames_total\{[^}]*reason="unauthenticated"[^}]*\} (\d+)/.exec(
          text,
        );
        return Number(m?.[1] ?? 0);
      };
      await cluster.waitFor((s) => Number(s.step) >= Number(st.step) + 20, 'more steps', 120_000);
      const counted = await Promise.all(metrics.map(scrape));
      t.diagnostic(`${sent} forged frames; counted unauthenticated: ${counted.join(', ')}`);
      assert.equal(
        (counted[0] ?? 0) + (counted[1] ?? 0),
        sent,
        'every forged frame dropped as unauthenticated',
      );
      // To the end in the same generation (the coordinator stops answering once it is done).
      let exited = false;
      void Promise.all(cluster.workers.map((w) => w.exit)).then(() => (exited = true));
      while (!exited) {
        const s = await cluster.status();
        if (s) assert.equal(s.generation, st.generation, `a new generation was formed at step ${s.step}`);
        await sleep(200);
      }
      for (const w of cluster.workers) assert.equal(await w.exit, 0, `${w.name} failed; see ${w.log}`);
      assert.equal(await cluster.coordinator?.exit, 0);
    } finally {
      for (const s of rogues) s.close();
      await cluster.stop();
    }
  });
});
