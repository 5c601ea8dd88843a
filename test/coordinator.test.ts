import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as grpc from '@grpc/grpc-js';
import { CoordinatorServer } from '../src/coordinator/server.js';
import { CoordinatorClient } from '../src/worker/client.js';
import type { ringdiff } from '../src/proto-gen/coordinator.js';

type Plan = ringdiff.v1.Plan;

async function start(opts: Partial<ConstructorParameters<typeof CoordinatorServer>[0]> = {}) {
  const server = new CoordinatorServer({
    jobId: 'job-1',
    token: 'secret-token',
    configYaml: 'train:\n  steps: 10\n',
    globalBatch: 10,
    totalSteps: 10,
    minWorkers: 2,
    maxWorkers: 4,
    heartbeatTimeoutMs: 400,
    verifyEvery: 0,
    curve: false,
    ...opts,
  });
  const port = await server.listen('127.0.0.1:0');
  return { server, address: `127.0.0.1:${port}` };
}

const reg = (host: string, port: number) => ({
  host,
  backend: 'cpu',
  device: 'cpu',
  ringEndpoint: `tcp://127.0.0.1:${port}`,
  pid: process.pid,
  hasData: true,
  committedStep: -1,
});

/** Collects plans from a stream; `next()` resolves with the next one. */
function planQueue(stream: grpc.ClientReadableStream<Plan>) {
  const got: Plan[] = [];
  const waiting: ((p: Plan) => void)[] = [];
  stream.on('data', (p: Plan) => {
    const w = waiting.shift();
    if (w) w(p);
    else got.push(p);
  });
  stream.on('error', () => {});
  return {
    next: (timeoutMs = 3000) =>
      new Promise<Plan>((resolve, reject) => {
        const p = got.shift();
        if (p) return resolve(p);
        const t = setTimeout(() => reject(new Error('no plan in time')), timeoutMs);
        waiting.push((x) => {
          clearTimeout(t);
          resolve(x);
        });
      }),
  };
}

test('wrong or missing token → UNAUTHENTICATED, counted; malformed fields → INVALID_ARGUMENT naming the field', async () => {
  const { server, address } = await start();
  const bad = new CoordinatorClient(address, 'wrong');
  const none = new CoordinatorClient(address, '');
  const good = new CoordinatorClient(address, 'secret-token');
  try {
    await assert.rejects(
      bad.register(reg('a', 1)),
      (e: grpc.ServiceError) => e.code === grpc.status.UNAUTHENTICATED,
    );
    await assert.rejects(
      none.heartbeat({ workerId: 'x' }),
      (e: grpc.ServiceError) => e.code === grpc.status.UNAUTHENTICATED,
    );
    assert.equal(server.counters.rejected.get('Register:UNAUTHENTICATED'), 1);
    assert.equal(server.counters.rejected.get('Heartbeat:UNAUTHENTICATED'), 1);
    await assert.rejects(
      good.register({ ...reg('a', 1), ringEndpoint: 'http://x' }),
      (e: grpc.ServiceError) => e.code === grpc.status.INVALID_ARGUMENT && /ring_endpoint/.test(e.details),
    );
    await assert.rejects(
      good.register({ ...reg('', 1) }),
      (e: grpc.ServiceError) => e.code === grpc.status.INVALID_ARGUMENT && /^host: required/.test(e.details),
    );
    await assert.rejects(
      good.register({ ...reg('a', 1), lastGeneration: 2 ** 32 - 1 }),
      (e: grpc.ServiceError) =>
        e.code === grpc.status.INVALID_ARGUMENT &&
        /^last_generation: 4294967295 is too large$/.test(e.details),
    );
    await assert.rejects(
      good.report({ workerId: 'nobody', generation: 1, step: 1 }),
      (e: grpc.ServiceError) => e.code === grpc.status.NOT_FOUND && /worker_id/.test(e.details),
    );
    // The server is still up and serving.
    const s = await good.status();
    assert.equal(s.state, 'rendezvous');
  } finally {
    for (const c of [bad, none, good]) c.close();
    await server.close();
  }
});

test('rendezvous → generation 1 for three workers; a silent one is declared dead → generation 2; old generations fenced', async () => {
  const { server, address } = await start({ heartbeatTimeoutMs: 1000 });
  const a = new CoordinatorClient(address, 'secret-token');
  const b = new CoordinatorClient(address, 'secret-token');
  const c = new CoordinatorClient(address, 'secret-token');
  let hb: NodeJS.Timeout | undefined;
  try {
    const ra = await a.register(reg('h1', 5001));
    const rb = await b.register(reg('h2', 5002));
    const rc = await c.register(reg('h1', 5003));
    // a and c heartbeat from the start; b never does and is declared dead after the timeout.
    // (Generation 0: a heartbeat may not name a generation the coordinator has not numbered yet.)
    hb = setInterval(() => {
      void a.heartbeat({ workerId: ra.workerId, generation: 0 }).catch(() => {});
      void c.heartbeat({ workerId: rc.workerId, generation: 0 }).catch(() => {});
    }, 100);
    assert.equal(ra.jobId, 'job-1');
    assert.match(ra.configYaml, /steps: 10/);
    const qa = planQueue(a.plans(ra.workerId));
    const qb = planQueue(b.plans(rb.workerId));
    const qc = planQueue(c.plans(rc.workerId));
    const [pa, pb, pc] = [await qa.next(), await qb.next(), await qc.next()];
    assert.deepEqual([pa.generation, pb.generation, pc.generation], [1, 1, 1]);
    assert.equal(pa.worldSize, 3);
    // Workers of host h1 are adjacent in the ring: a, c, then b.
    assert.deepEqual([pa.rank, pc.rank, pb.rank], [0, 1, 2]);
    assert.deepEqual(
      pa.shards.map((s) => [s.rank, s.from, s.to]),
      [
        [0, 0, 4],
        [1, 4, 7],
        [2, 7, 10],
      ],
    );
    assert.equal(pa.peers[pb.rank]?.ringEndpoint, 'tcp://127.0.0.1:5002');
    const p2 = await qa.next(5000);
    assert.equal(p2.generation, 2);
    assert.equal(p2.worldSize, 2);
    assert.deepEqual(
      p2.shards.map((s) => [s.from, s.to]),
      [
        [0, 5],
        [5, 10],
      ],
    );
    assert.equal((await qc.next()).generation, 2);
    const back = await b.heartbeat({ workerId: rb.workerId, generation: 1 });
    assert.equal(back.member, false, 'the silent worker learns it was fenced');
    await assert.rejects(
      a.report({ workerId: ra.workerId, generation: 1, step: 3 }),
      (e: grpc.ServiceError) =>
        e.code === grpc.status.FAILED_PRECONDITION && /generation: 1 is older/.test(e.details),
    );
    await a.report({ workerId: ra.workerId, generation: 2, step: 3, loss: 0.5 });
    const st = await a.status();
    assert.equal(st.generation, 2);
    assert.equal(st.workers.length, 2);
    assert.equal(st.step, 3);
  } finally {
    clearInterval(hb);
    a.close();
    b.close();
    c.close();
    await server.close();
  }
});
