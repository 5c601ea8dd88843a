/**
 * Hostile calls to the coordinator's gRPC API (issue 19, items 1, 2 and 4-9), from outside clients
 * over real sockets: callers without the join token, callers with the token acting for a worker id
 * that is not theirs, fields outside their bounds, streams for unknown ids, and raw connections that
 * break HTTP/2 framing. Each case names the status it must get; the last test runs a real job
 * (coordinator and two worker processes) while all of these probes are fired at it, and checks
 * that it ends with the weights of an undisturbed run.
 */
import type { StepRecord } from '../src/telemetry/step-record.js';
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as net from 'node:net';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { ringdiff } from '../src/proto-gen/coordinator.js';
import { CoordinatorServer } from '../src/coordinator/server.js';
import { GenerationLedger } from '../src/coordinator/generation-ledger.js';
import { CoordinatorClient } from '../src/worker/client.js';
import {
  LocalCluster,
  TOKEN,
  checkpointDiff,
  freePort,
  runLaunch,
  runRingdiffCli,
  toyJobYaml,
} from './cluster-harness.js';

import pb = ringdiff.v1;

const S = grpc.status;
const root = fs.mkdtempSync(path.join(tmpdir(), 'ringdiff-hostile-rpc-'));
// Kept when a test failed: every process's log is in there.
process.on('exit', (code) => {
  if (code === 0 && !process.env.RINGDIFF_KEEP_TEST_DIR) fs.rmSync(root, { recursive: true, force: true });
  else process.stderr.write(`hostile-rpc: test directory kept: ${root}\n`);
});

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
/** Resolves with `value` after `ms` without keeping the process alive (for races). */
const deadline = <T>(ms: number, value: T) => new Promise<T>((r) => setTimeout(() => r(value), ms).unref());

/** The gRPC status a call ended with (OK when it succeeded). */
async function code(p: Promise<unknown>): Promise<{ code: number; details: string }> {
  try {
    await p;
    return { code: S.OK, details: '' };
  } catch (e) {
    const err = e as grpc.ServiceError;
    return { code: err.code, details: err.details ?? err.message };
  }
}

/** Asserts a rejection with `want` and a one-line message that starts with `field:`. */
async function rejected(p: Promise<unknown>, want: grpc.status, field: string, what: string): Promise<void> {
  const r = await code(p);
  assert.equal(r.code, want, `${what}: got ${S[r.code]} (${r.details})`);
  assert.ok(r.details.startsWith(`${field}: `), `${what}: '${r.details}' does not name ${field}`);
  assert.ok(!/[\r\n]/.test(r.details), `${what}: message of one line`);
}

/** How a server stream ended within `ms`: its status, or 'open' (then it is cancelled). */
function streamEnd(
  s: grpc.ClientReadableStream<unknown>,
  ms: number,
): Promise<{ code: number; details: string } | 'open'> {
  return new Promise((resolve) => {
    const t = setTimeout(() => {
      s.cancel();
      resolve('open');
    }, ms);
    s.on('data', () => {});
    s.on('error', () => {});
    s.on('status', (st: grpc.StatusObject) => {
      clearTimeout(t);
      resolve({ code: st.code, details: st.details });
    });
  });
}

/** The coordinator's server stream of plans for `workerId`, opened by `client`. */
const plans = (client: CoordinatorClient, workerId: string) =>
  client.plans(workerId) as unknown as grpc.ClientReadableStream<unknown>;

/** FetchState as a race: its status, or 'open' when it has not ended within `ms`. */
async function fetchEnd(
  client: CoordinatorClient,
  workerId: string,
  ms: number,
): Promise<{ code: number; details: string } | 'open'> {
  return Promise.race([code(client.fetchState(workerId, 1)), deadline(ms, 'open' as const)]);
}

const TOTAL_STEPS = 100;
const GLOBAL_BATCH = 60;

/** An in-process coordinator (membership only) on a real port, recording the reports it takes. */
async function start(opts: Partial<ConstructorParameters<typeof CoordinatorServer>[0]> = {}) {
  const fed: StepRecord[] = [];
  const server = new CoordinatorServer({
    jobId: 'hostile-rpc-job',
    token: TOKEN,
    configYaml: 'train:\n  steps: 100\n',
    globalBatch: GLOBAL_BATCH,
    totalSteps: TOTAL_STEPS,
    minWorkers: 2,
    maxWorkers: 8,
    heartbeatTimeoutMs: 4000,
    verifyEvery: 0,
    curve: false,
    events: { onReport: (_w, r) => fed.push(r) },
    ...opts,
  });
  const port = await server.listen('127.0.0.1:0');
  const address = `127.0.0.1:${port}`;
  const clients: CoordinatorClient[] = [];
  const client = (token = TOKEN) => {
    const c = new CoordinatorClient(address, token, undefined, 5000);
    clients.push(c);
    return c;
  };
  const timers: NodeJS.Timeout[] = [];
  return {
    server,
    address,
    port,
    fed,
    client,
    /** Heartbeats every 200 ms for `id` through `c` (its own registration's client). */
    keepAlive(c: CoordinatorClient, id: string) {
      timers.push(setInterval(() => void c.heartbeat({ workerId: id, generation: 0 }).catch(() => {}), 200));
    },
    async close() {
      for (const t of timers) clearInterval(t);
      for (const c of clients) c.close();
      await server.close(500);
    },
  };
}

type Coordinator = Awaited<ReturnType<typeof start>>;

let nextPort = 41000;
const reg = (host = 'h1', endpoint = `tcp://127.0.0.1:${nextPort++}`): pb.IRegisterRequest => ({
  host,
  backend: 'cpu',
  device: 'cpu',
  ringEndpoint: endpoint,
  pid: process.pid,
  hasData: true,
  committedStep: -1,
});

/** Two workers in generation 1, each with its own client and its plan stream open. */
async function ringOfTwo(c: Coordinator) {
  const ca = c.client();
  const cb = c.client();
  const a = await ca.register(reg('h1'));
  const b = await cb.register(reg('h2'));
  c.keepAlive(ca, a.workerId);
  c.keepAlive(cb, b.workerId);
  const first = (s: grpc.ClientReadableStream<pb.Plan>) =>
    new Promise<pb.Plan>((resolve) => s.once('data', (p: pb.Plan) => resolve(p)));
  const sa = ca.plans(a.workerId);
  const sb = cb.plans(b.workerId);
  sa.on('error', () => {});
  sb.on('error', () => {});
  const [pa, pbb] = await Promise.all([first(sa), first(sb)]);
  assert.deepEqual([pa.generation, pbb.generation], [1, 1]);
  return { ca, cb, a, b, sa, sb };
}

describe('coordinator RPCs without the join token', { timeout: 60_000 }, () => {
  test('item 1: Status without a token or with a wrong one is UNAUTHENTICATED and reveals nothing', async () => {
    const c = await start();
    try {
      const ring = await ringOfTwo(c);
      for (const [what, client] of [
        ['no token', c.client('')],
        ['wrong token', c.client('wrong-token-wrong-token-000')],
        ['token with a suffix', c.client(`${TOKEN}x`)],
      ] as const) {
        const r = await code(client.status());
        assert.equal(r.code, S.UNAUTHENTICATED, `${what}: got ${S[r.code]}`);
        for (const secret of ['hostile-rpc-job', ring.a.workerId, ring.b.workerId])
          assert.ok(!r.details.includes(secret), `${what}: the answer names ${secret}`);
      }
      const s = await c.client().status();
      assert.equal(s.jobId, 'hostile-rpc-job', 'with the token, Status answers');
      assert.equal(s.workers.length, 2);
      assert.equal(c.server.counters.rejected.get('Status:UNAUTHENTICATED'), 3);
      // `ringdiff status` works with the join token, and without one says what is missing.
      const args = ['status', '--json', '--coordinator', c.address, '--set', `run.out_dir=${root}/no-job`];
      const [withToken, without] = await Promise.all([
        runRingdiffCli(args, { RINGDIFF_TOKEN: TOKEN }),
        runRingdiffCli(args, { RINGDIFF_TOKEN: '' }),
      ]);
      assert.equal(withToken.code, 0, withToken.err);
      assert.equal((JSON.parse(withToken.out) as { workers: unknown[] }).workers.length, 2);
      assert.notEqual(without.code, 0, 'no token: refused');
      assert.equal(without.err.trim().split('\n').length, 1, without.err);
      assert.match(without.err, /token/);
      assert.doesNotMatch(without.out, /hostile-rpc-job/);
    } finally {
      await c.close();
    }
  });

  test('item 2: Plans and FetchState with a wrong or missing token end at once with UNAUTHENTICATED', async () => {
    const c = await start();
    try {
      const ring = await ringOfTwo(c);
      const bad = [c.client(''), c.client('wrong-token-wrong-token-000')];
      const t0 = performance.now();
      const ends = await Promise.all(
        Array.from({ length: 50 }, (_, i) => {
          const client = bad[i % 2] as CoordinatorClient;
          return i % 2 === 0
            ? streamEnd(plans(client, ring.a.workerId), 3000)
            : fetchEnd(client, ring.b.workerId, 3000);
        }),
      );
      const ms = performance.now() - t0;
      const open = ends.filter((e) => e === 'open').length;
      assert.equal(open, 0, `${open} of 50 streams still open after 3 s`);
      for (const e of ends) assert.ok(e !== 'open' && e.code === S.UNAUTHENTICATED, JSON.stringify(e));
      assert.ok(ms < 2500, `50 refusals took ${ms.toFixed(0)} ms`);
      // The workers' own streams are untouched.
      assert.equal((await c.client().status()).generation, 1);
    } finally {
      await c.close();
    }
  });
});

describe('coordinator RPCs with the token, from a buggy or compromised worker', { timeout: 60_000 }, () => {
  test('item 4: Register bounds every field, refuses another live worker’s endpoint and generations the coordinator never numbered; Status stays small', async () => {
    const c = await start({ maxWorkers: 64 });
    try {
      const g = c.client();
      const MiB = 2 ** 20;
      const cases: Array<[string, pb.IRegisterRequest, string]> = [
        ['port 0', reg('h', 'tcp://127.0.0.1:0'), 'ring_endpoint'],
        ['port 99999', reg('h', 'tcp://127.0.0.1:99999'), 'ring_endpoint'],
        ['wildcard host *', reg('h', 'tcp://*:47100'), 'ring_endpoint'],
        ['wildcard host 0.0.0.0', reg('h', 'tcp://0.0.0.0:47100'), 'ring_endpoint'],
        ['wildcard host [::]', reg('h', 'tcp://[::]:47100'), 'ring_endpoint'],
        ['empty host', reg('h', 'tcp://:47100'), 'ring_endpoint'],
        ['ipc path of 108 bytes', reg('h', `ipc:///tmp/${'p'.repeat(103)}`), 'ring_endpoint'],
        ['1 MiB host', reg('x'.repeat(MiB)), 'host'],
        ['host with a newline', reg('evil\nhost'), 'host'],
        ['5 MiB backend', { ...reg(), backend: 'b'.repeat(5 * MiB) }, 'backend'],
        ['300-byte device', { ...reg(), device: 'd'.repeat(300) }, 'device'],
        ['committed_step −2^63', { ...reg(), committedStep: -(2 ** 63) }, 'committed_step'],
        ['committed_step 2^63−1', { ...reg(), committedStep: 2 ** 63 - 1 }, 'committed_step'],
        ['committed_step past the job', { ...reg(), committedStep: TOTAL_STEPS + 1 }, 'committed_step'],
        ['committed_step −2', { ...reg(), committedStep: -2 }, 'committed_step'],
        ['last_generation 2^31', { ...reg(), lastGeneration: 2 ** 31 }, 'last_generation'],
        ['last_generation 1 before any', { ...reg(), lastGeneration: 1 }, 'last_generation'],
        ['a malformed CURVE key', { ...reg(), curvePublicKey: 'k'.repeat(41) }, 'curve_public_key'],
      ];
      for (const [what, r, field] of cases) await rejected(g.register(r), S.INVALID_ARGUMENT, field, what);

      // After generation 1 nobody can have taken part in generation 2.
      await ringOfTwo(c);
      await rejected(
        c.client().register({ ...reg(), lastGeneration: 2 }),
        S.INVALID_ARGUMENT,
        'last_generation',
        'a generation the coordinator never numbered',
      );
      await c.client().register({ ...reg(), lastGeneration: 1 });

      // Limits hold at their edges: these are valid.
      const ok = c.client();
      await ok.register({
        ...reg('h'.repeat(256), 'tcp://[::1]:47101'),
        backend: 'b'.repeat(256),
        device: 'd'.repeat(256),
        committedStep: TOTAL_STEPS,
      });
      await c.client().register(reg('h', `ipc:///tmp/${'p'.repeat(102)}`));

      // Another live worker's endpoint is refused (naming the field); the worker itself, registering
      // again with its secret (its plan stream broke), gets it back.
      const live = c.client();
      const first = await live.register(reg('h', 'tcp://127.0.0.1:47102'));
      await rejected(
        c.client().register(reg('other', 'tcp://127.0.0.1:47102')),
        S.ALREADY_EXISTS,
        'ring_endpoint',
        'a live worker’s endpoint',
      );
      const again = await live.register(reg('h', 'tcp://127.0.0.1:47102'));
      assert.notEqual(again.workerId, first.workerId);
      assert.equal(c.server.membership.get(first.workerId), undefined, 'the old registration is over');

      // Status with every worker of the job at its longest fields: far below 4 MiB.
      for (let i = c.server.membership.alive().length; i < 64; i++)
        await c.client().register({
          ...reg('h'.repeat(256), `tcp://host-${i}.example:4${String(i).padStart(4, '0')}`),
          backend: 'b'.repeat(256),
          device: 'd'.repeat(256),
        });
      const st = await g.status();
      const bytes = pb.StatusReply.encode(st).finish().length;
      assert.equal(st.workers.length, 64);
      assert.ok(bytes < 2 ** 20, `Status reply of ${bytes} bytes`);
    } finally {
      await c.close();
    }
  });

  test('item 4: the coordinator’s generation counter outlives it in the run directory', () => {
    const dir = fs.mkdtempSync(path.join(root, 'ledger-'));
    const first = GenerationLedger.open(dir);
    assert.equal(first.ceiling, null, 'a new run directory has none');
    first.reserve(1);
    const ceiling = first.ceiling ?? 0;
    assert.ok(ceiling >= 1, 'reserved before generation 1 is published');
    for (let g = 2; g <= ceiling; g++) first.reserve(g);
    assert.equal(first.ceiling, ceiling, 'written once per reservation, not per generation');
    first.reserve(ceiling + 1);
    assert.ok((first.ceiling ?? 0) > ceiling);
    // A restarted coordinator reads it back; a damaged file is ignored.
    assert.equal(GenerationLedger.open(dir).ceiling, first.ceiling);
    fs.writeFileSync(path.join(dir, 'generation'), 'garbage');
    assert.equal(GenerationLedger.open(dir).ceiling, null);
    // A run directory that cannot be written: the job goes on, the ceiling stays where it was.
    const gone = GenerationLedger.open(path.join(dir, 'no-such-dir'));
    gone.reserve(1);
    assert.equal(gone.ceiling, null);
  });

  test('item 5: Heartbeat and Report outside their bounds, for others or from outside the ring are refused and feed nothing', async () => {
    const c = await start();
    try {
      const { ca, a } = await ringOfTwo(c);
      // A registered worker that is not in the ring (rank −1): it never subscribed to plans.
      const cc = c.client();
      const out = await cc.register(reg('h3'));
      c.keepAlive(cc, out.workerId);
      const outsider = c.client();
      const id = a.workerId;

      await rejected(
        ca.heartbeat({ workerId: '', generation: 1, step: 1 }),
        S.INVALID_ARGUMENT,
        'worker_id',
        'empty id',
      );
      await rejected(
        ca.heartbeat({ workerId: id, generation: 1_000_000, step: 1 }),
        S.INVALID_ARGUMENT,
        'generation',
        'a generation far in the future',
      );
      await rejected(
        ca.heartbeat({ workerId: id, generation: 1, step: 2 ** 62 }),
        S.INVALID_ARGUMENT,
        'step',
        'step 2^62',
      );
      await rejected(
        outsider.heartbeat({ workerId: id, generation: 1, step: 1 }),
        S.PERMISSION_DENIED,
        'worker_id',
        'a heartbeat for another worker',
      );
      assert.ok((c.server.membership.get(id)?.lastStep ?? 0) <= 0, 'no heartbeat moved the step');

      const good: pb.IStepReport = {
        workerId: id,
        generation: 1,
        step: 1,
        loss: 0.5,
        examples: 30,
        stepMs: 5,
      };
      await rejected(
        ca.report({ ...good, generation: 99 }),
        S.INVALID_ARGUMENT,
        'generation',
        'a future generation',
      );
      await rejected(
        cc.report({ ...good, workerId: out.workerId, loss: NaN, examples: 1_000_000 }),
        S.FAILED_PRECONDITION,
        'worker_id',
        'a worker with no rank',
      );
      await rejected(ca.report({ ...good, loss: NaN }), S.INVALID_ARGUMENT, 'loss', 'NaN loss');
      await rejected(ca.report({ ...good, loss: Infinity }), S.INVALID_ARGUMENT, 'loss', '∞ loss');
      await rejected(
        ca.report({ ...good, examples: 1_000_000 }),
        S.INVALID_ARGUMENT,
        'examples',
        '10^6 examples',
      );
      await rejected(ca.report({ ...good, step: 2 ** 62 }), S.INVALID_ARGUMENT, 'step', 'step 2^62');
      await rejected(ca.report({ ...good, stepMs: -1 }), S.INVALID_ARGUMENT, 'step_ms', 'negative time');
      await rejected(
        ca.report({ ...good, gradNorm: Infinity }),
        S.INVALID_ARGUMENT,
        'grad_norm',
        '∞ gradient norm',
      );
      await rejected(outsider.report(good), S.PERMISSION_DENIED, 'worker_id', 'a report for another worker');
      assert.equal(c.fed.length, 0, 'no refused report reached metrics or history');
      assert.equal(c.server.step, 0);

      // The worker's own report, within bounds, is taken (NaN quarters: no example in that quarter).
      await ca.report({ ...good, lossQuarters: [0.1, NaN, 0.3, 0.4] });
      assert.equal(c.fed.length, 1);
      assert.equal(c.server.step, 1);
    } finally {
      await c.close();
    }
  });

  test('item 6: ReportFailure from a worker with no rank, for another worker or out of bounds does not re-form the ring', async () => {
    // A short heartbeat timeout: the third worker is gone soon after its probes, and then nothing
    // would keep a ring that a report had marked for re-forming from being re-formed.
    const c = await start({ heartbeatTimeoutMs: 800 });
    try {
      const { ca, a, sa } = await ringOfTwo(c);
      const cc = c.client();
      const out = await cc.register(reg('h3'));
      c.keepAlive(cc, out.workerId);
      let newPlans = 0;
      sa.on('data', () => newPlans++);
      const f: pb.IFailureReport = {
        workerId: out.workerId,
        generation: 1,
        step: 0,
        suspectRank: 0,
        reason: 'x',
      };
      await rejected(cc.reportFailure(f), S.FAILED_PRECONDITION, 'worker_id', 'a worker with no rank');
      await rejected(
        c.client().reportFailure({ ...f, workerId: a.workerId }),
        S.PERMISSION_DENIED,
        'worker_id',
        'a failure reported for another worker',
      );
      await rejected(
        ca.reportFailure({ ...f, workerId: a.workerId, generation: 7 }),
        S.INVALID_ARGUMENT,
        'generation',
        'a future generation',
      );
      await rejected(
        ca.reportFailure({ ...f, workerId: a.workerId, suspectRank: 5 }),
        S.INVALID_ARGUMENT,
        'suspect_rank',
        'a rank beyond the ring',
      );
      await rejected(
        ca.reportFailure({ ...f, workerId: a.workerId, step: 2 ** 62 }),
        S.INVALID_ARGUMENT,
        'step',
        'step 2^62',
      );
      cc.close();
      await sleep(1500);
      assert.equal(c.server.membership.get(out.workerId), undefined, 'the third worker timed out');
      assert.equal(c.server.membership.generation.number, 1, 'still generation 1');
      assert.equal(c.server.counters.generations, 1);
      assert.equal(newPlans, 0, 'no new plan was sent');
    } finally {
      await c.close();
    }
  });

  test('item 7: Plans and FetchState for an unknown or empty worker id end at once', async () => {
    const c = await start();
    try {
      await ringOfTwo(c);
      const g = c.client();
      const unknown = '3b1a6a52-0000-4000-8000-000000000000';
      const ends = await Promise.all([
        streamEnd(plans(g, unknown), 3000),
        streamEnd(plans(g, ''), 3000),
        fetchEnd(g, unknown, 3000),
        fetchEnd(g, '', 3000),
        streamEnd(plans(g, 'x'.repeat(100)), 3000),
      ]);
      assert.deepEqual(
        ends.map((e) => (e === 'open' ? 'open' : S[e.code])),
        ['NOT_FOUND', 'INVALID_ARGUMENT', 'NOT_FOUND', 'INVALID_ARGUMENT', 'INVALID_ARGUMENT'],
      );
      for (const e of ends) assert.ok(e !== 'open' && e.details.startsWith('worker_id: '), JSON.stringify(e));
    } finally {
      await c.close();
    }
  });

  test('item 8: a second Plans stream for a live worker id without its secret is refused and evicts nobody', async () => {
    const c = await start();
    try {
      const { ca, a, sa } = await ringOfTwo(c);
      let ended = false;
      sa.on('status', () => (ended = true));
      for (const token of [TOKEN, '']) {
        const e = await streamEnd(plans(c.client(token), a.workerId), 3000);
        assert.ok(e !== 'open', 'the intruder’s stream ended');
        assert.equal(e.code, token ? S.PERMISSION_DENIED : S.UNAUTHENTICATED, e.details);
      }
      await sleep(500);
      assert.equal(ended, false, 'the worker’s own stream is still open');
      assert.ok(c.server.membership.get(a.workerId), 'the worker is still a member');
      assert.equal(c.server.membership.generation.number, 1);
      // The worker itself (its secret) may take its stream over: the old one ends, the new one gets the plan.
      const again = ca.plans(a.workerId);
      again.on('error', () => {});
      const plan = await new Promise<pb.Plan>((resolve) => again.once('data', resolve));
      assert.equal(plan.generation, 1);
      await sleep(200);
      assert.equal(ended, true, 'the replaced stream ended');
      again.cancel();
    } finally {
      await c.close();
    }
  });
});

// ---------------------------------------------------------------------------------------------
// Real coordinator processes

const PREFACE = Buffer.from('PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n', 'latin1');
const SETTINGS = Buffer.from([0, 0, 0, 4, 0, 0, 0, 0, 0]);
/** Connections that stop in the middle of HTTP/2: each one a preface and a truncated frame. */
const TRUNCATED = [
  // A frame header announcing 16 MiB, more than the maximum frame size (FRAME_SIZE_ERROR).
  Buffer.concat([PREFACE, SETTINGS, Buffer.from([0xff, 0xff, 0xff, 0, 0, 0, 0, 0, 0])]),
  // A HEADERS frame announcing 100 bytes, of which 3 arrive.
  Buffer.concat([PREFACE, SETTINGS, Buffer.from([0, 0, 100, 1, 4, 0, 0, 0, 1, 1, 2, 3])]),
  // Half a frame header.
  Buffer.concat([PREFACE, SETTINGS, Buffer.from([0, 0, 8, 6])]),
];

/** Opens `n` raw connections, writes one of TRUNCATED on each, and closes them after 100 ms. */
async function truncatedConnections(port: number, n: number): Promise<void> {
  await Promise.all(
    Array.from(
      { length: n },
      (_, i) =>
        new Promise<void>((resolve) => {
          const s = net.connect(port, '127.0.0.1');
          s.on('error', () => resolve());
          s.on('close', () => resolve());
          s.on('connect', () => {
            s.write(TRUNCATED[i % TRUNCATED.length] as Buffer);
            setTimeout(() => s.destroy(), 100);
          });
        }),
    ),
  );
}

const openFds = (pid: number) => fs.readdirSync(`/proc/${pid}/fd`).length;

const toy = (name: string, steps: number) => toyJobYaml(root, name, steps);

describe('a real coordinator process', { timeout: 240_000 }, () => {
  test('item 9: ten raw connections that stop inside an HTTP/2 frame leave no descriptor open 3 s after they went', async (t) => {
    const dir = path.join(root, 'fds');
    fs.mkdirSync(dir);
    const cluster = new LocalCluster(dir, toy('fds', 10), ['cluster.min_workers=1']);
    try {
      const coord = await cluster.startCoordinator();
      await cluster.waitFor(() => true, 'the coordinator to answer', 60_000);
      const pid = coord.child.pid as number;
      const port = Number(cluster.address.split(':')[1]);
      await sleep(500);
      const before = openFds(pid);
      for (let round = 0; round < 2; round++) await truncatedConnections(port, 10);
      const during = openFds(pid);
      await sleep(3000);
      const left = openFds(pid) - before;
      t.diagnostic(
        `coordinator descriptors: ${before} before, ${during} right after, ${before + left} 3 s later`,
      );
      assert.ok(left <= 0, `${left} descriptors still open 3 s after the clients went`);
      assert.ok(await cluster.status(), 'the coordinator still answers');
    } finally {
      await cluster.stop();
    }
  });

  test('acceptance: a job under every probe of items 1-9 finishes all its steps with the weights of an undisturbed run', async (t) => {
    const STEPS = 80;
    const cfgFile = (name: string) => {
      const f = path.join(root, `${name}.yaml`);
      fs.writeFileSync(f, toy(name, STEPS));
      return f;
    };
    const calm = runLaunch(root, 'calm', ['--workers', '2', '--config', cfgFile('calm')]);

    const dir = path.join(root, 'probed-job');
    fs.mkdirSync(dir);
    const cluster = new LocalCluster(dir, toy('probed', STEPS), ['cluster.min_workers=2']);
    const clients: CoordinatorClient[] = [];
    const client = (token = TOKEN) => {
      const c = new CoordinatorClient(cluster.address, token, undefined, 3000);
      clients.push(c);
      return c;
    };
    let probing = true;
    const tally = new Map<string, number>();
    const count = (what: string, r: { code: number } | 'open') => {
      const k = `${what} → ${r === 'open' ? 'open' : S[r.code]}`;
      tally.set(k, (tally.get(k) ?? 0) + 1);
    };
    try {
      const coord = await cluster.startCoordinator();
      // The job is short: the harness's Status channel must be up before it starts.
      await cluster.waitFor(() => true, 'the coordinator to answer', 60_000);
      const w0 = cluster.startWorker();
      const w1 = cluster.startWorker();
      const gen1 = await cluster.waitFor((s) => s.generation >= 1 && s.workers.length === 2, 'generation 1');
      const live = gen1.workers.map((w) => w.workerId);
      const port = Number(cluster.address.split(':')[1]);
      // A real worker's ring endpoint, from its log line 'registered'.
      const endpoint = (() => {
        for (const line of fs.readFileSync(w0.log, 'utf8').split('\n')) {
          const m = /"ring":"([^"]+)"/.exec(line);
          if (m) return m[1] as string;
        }
        return 'tcp://127.0.0.1:1';
      })();

      // The prober's own registered worker, which never takes a rank (it never subscribes to plans).
      const own = client();
      const ownId = (await own.register(reg('prober', `tcp://127.0.0.1:${await freePort()}`))).workerId;
      const beat = setInterval(
        () => void own.heartbeat({ workerId: ownId, generation: 0 }).catch(() => {}),
        300,
      );
      const noToken = client('');
      const wrong = client('wrong-token-wrong-token-000');
      const intruder = client();
      const rounds = (async () => {
        let round = 0;
        while (probing) {
          round++;
          const id = live[round % live.length] as string;
          const MiB = 2 ** 20;
          const probes: Array<[string, Promise<{ code: number } | 'open'>]> = [
            ['1 Status without token', code(noToken.status())],
            ['1 Status with a wrong token', code(wrong.status())],
            ['2 Plans without token', streamEnd(plans(noToken, id), 2000)],
            ['2 FetchState with a wrong token', fetchEnd(wrong, id, 2000)],
            ['4 Register port 99999', code(intruder.register(reg('x', 'tcp://127.0.0.1:99999')))],
            ['4 Register wildcard', code(intruder.register(reg('x', 'tcp://*:47100')))],
            ['4 Register long ipc path', code(intruder.register(reg('x', `ipc:///tmp/${'p'.repeat(200)}`)))],
            ['4 Register a live endpoint', code(intruder.register(reg('x', endpoint)))],
            ['4 Register 1 MiB host', code(intruder.register(reg('x'.repeat(MiB))))],
            ['4 Register committed_step 2^63', code(intruder.register({ ...reg(), committedStep: 2 ** 63 }))],
            [
              '4 Register last_generation 2^31',
              code(intruder.register({ ...reg(), lastGeneration: 2 ** 31 })),
            ],
            ['5 Heartbeat empty id', code(intruder.heartbeat({ workerId: '', generation: 1, step: 1 }))],
            [
              '5 Heartbeat of a live worker, step 2^62',
              code(intruder.heartbeat({ workerId: id, generation: 1, step: 2 ** 62 })),
            ],
            [
              '5 Heartbeat, future generation',
              code(own.heartbeat({ workerId: ownId, generation: 9999, step: 1 })),
            ],
            [
              '5 Report of a live worker, future generation',
              code(intruder.report({ workerId: id, generation: 9999, step: 1, loss: 1 })),
            ],
            [
              '5 Report with no rank, NaN loss, 10^6 examples',
              code(own.report({ workerId: ownId, generation: 1, step: 2, loss: NaN, examples: 1e6 })),
            ],
            [
              '6 ReportFailure with no rank',
              code(
                own.reportFailure({
                  workerId: ownId,
                  generation: 1,
                  step: 1,
                  suspectRank: 0,
                  reason: 'probe',
                }),
              ),
            ],
            [
              '6 ReportFailure for a live worker',
              code(
                intruder.reportFailure({
                  workerId: id,
                  generation: 1,
                  step: 1,
                  suspectRank: 0,
                  reason: 'probe',
                }),
              ),
            ],
            ['7 Plans for an unknown id', streamEnd(plans(intruder, 'no-such-worker'), 2000)],
            ['7 Plans for an empty id', streamEnd(plans(intruder, ''), 2000)],
            ['7 FetchState for an unknown id', fetchEnd(intruder, 'no-such-worker', 2000)],
            ['8 Plans for a live worker', streamEnd(plans(intruder, id), 2000)],
            ['9 truncated HTTP/2', truncatedConnections(port, 10).then(() => ({ code: -1 }))],
          ];
          for (const [what, p] of probes) count(what, await p);
          await sleep(100);
        }
        return round;
      })();

      // Undisturbed, the job takes a few seconds here: a job that stalls under the probes fails.
      const exit = await Promise.race([coord.exit, deadline(120_000, 'still running after 120 s')]);
      probing = false;
      clearInterval(beat);
      const rounds_ = await rounds;
      t.diagnostic(`${rounds_} rounds of probes: ${[...tally].map(([k, v]) => `${k} ×${v}`).join('; ')}`);
      assert.equal(exit, 0, `the coordinator failed; see ${coord.log}`);
      assert.equal(await w0.exit, 0, `see ${w0.log}`);
      assert.equal(await w1.exit, 0, `see ${w1.log}`);
      assert.ok(rounds_ >= 2, 'the probes ran while the job did');
      for (const [k] of tally)
        assert.ok(!/→ (OK|open)$/.test(k) || k.startsWith('9 '), `a probe was taken: ${k}`);

      // Every step once, with a finite loss; one generation from start to end.
      const coordLog = fs.readFileSync(coord.log, 'utf8');
      const generations = coordLog.split('\n').filter((l) => l.includes('"msg":"new generation"')).length;
      assert.equal(generations, 1, 'the ring was never re-formed');
      assert.ok(
        (GenerationLedger.open(path.join(root, 'probed')).ceiling ?? 0) >= 1,
        'generation ceiling kept',
      );
      const history = fs
        .readFileSync(path.join(root, 'probed', 'history.jsonl'), 'utf8')
        .split('\n')
        .filter(Boolean)
        .map((l) => JSON.parse(l) as { step: number; loss: number | null });
      const steps = new Set(history.map((h) => h.step));
      for (let s = 1; s <= STEPS; s++) assert.ok(steps.has(s), `step ${s} in history.jsonl`);
      assert.ok(
        history.every((h) => typeof h.loss === 'number' && Number.isFinite(h.loss)),
        'finite losses',
      );

      assert.equal(await calm, 0, `the undisturbed run failed; see ${root}/calm.log`);
      const d = await checkpointDiff(
        path.join(root, 'calm', `ckpt-${STEPS}`),
        path.join(root, 'probed', `ckpt-${STEPS}`),
      );
      t.diagnostic(
        `probed vs undisturbed: max |Δ| model ${d.model.toExponential(2)}, EMA ${d.ema.toExponential(2)}`,
      );
      assert.deepEqual(d.step, [STEPS, STEPS]);
      assert.ok(d.model <= 1e-5 && d.ema <= 1e-5, JSON.stringify(d));
    } finally {
      probing = false;
      for (const c of clients) c.close();
      await cluster.stop();
    }
  });
});
