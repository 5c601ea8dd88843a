/**
 * The worker's report queue and state pusher, each against a real gRPC server on loopback that
 * answers as a coordinator would in the situations they exist for: unreachable, moved to a newer
 * generation, a disk that refuses writes for a while, pushes slower than steps.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { PassThrough } from 'node:stream';
import * as grpc from '@grpc/grpc-js';
import { CoordinatorService } from '../src/proto-gen/coordinator-grpc.js';
import { ringdiff } from '../src/proto-gen/coordinator.js';
import { CoordinatorClient } from '../src/worker/client.js';
import { ReportQueue, StepAverages } from '../src/worker/reports.js';
import { StatePusher, type PusherHost } from '../src/worker/push.js';
import { ChunkAssembler, decodeSnapshot } from '../src/job/transfer.js';
import type { Snapshot } from '../src/job/snapshot.js';
import type { StepRecord } from '../src/telemetry/step-record.js';
import { createLogger } from '../src/util/log.js';

import pb = ringdiff.v1;

const log = createLogger({ job: 'test', level: 'silent', destination: new PassThrough() });

interface Received {
  reports: pb.StepReport[];
  pushes: { reason: string; step: number; generation: number; bytes: number }[];
}

/** A coordinator stand-in whose Report and PushState answers a test scripts, call by call. */
async function scriptedServer(answer: {
  report?: (r: pb.StepReport, n: number) => grpc.status;
  push?: (head: { reason: string; step: number; generation: number }, n: number) => Promise<grpc.status>;
}): Promise<{ address: string; got: Received; close: () => Promise<void> }> {
  const got: Received = { reports: [], pushes: [] };
  const server = new grpc.Server();
  const fail = (code: grpc.status) => ({ code, details: `scripted ${grpc.status[code]}` });
  server.addService(CoordinatorService, {
    report: (
      call: grpc.ServerUnaryCall<pb.StepReport, pb.IReportReply>,
      cb: grpc.sendUnaryData<pb.IReportReply>,
    ) => {
      const code = answer.report?.(call.request, got.reports.length) ?? grpc.status.OK;
      if (code !== grpc.status.OK) return cb(fail(code));
      got.reports.push(call.request);
      cb(null, {});
    },
    pushState: (
      call: grpc.ServerReadableStream<pb.StateChunk, pb.IPushStateReply>,
      cb: grpc.sendUnaryData<pb.IPushStateReply>,
    ) => {
      let head: { reason: string; step: number; generation: number } | null = null;
      const asm = new ChunkAssembler('push', 2 ** 30);
      call.on('data', (c: pb.StateChunk) => {
        head ??= { reason: c.reason, step: Number(c.step), generation: c.generation };
        asm.add({ ...c, total: Number(c.total), offset: Number(c.offset) });
      });
      call.on('end', () => {
        const h = head as { reason: string; step: number; generation: number };
        void (async () => {
          const code = (await answer.push?.(h, got.pushes.length)) ?? grpc.status.OK;
          if (code !== grpc.status.OK) return cb(fail(code));
          const buf = asm.finish();
          decodeSnapshot(buf, 'pushed snapshot'); // a whole, valid snapshot arrived
          got.pushes.push({ ...h, bytes: buf.length });
          cb(null, { step: h.step });
        })();
      });
    },
  });
  const port = await new Promise<number>((res, rej) =>
    server.bindAsync('127.0.0.1:0', grpc.ServerCredentials.createInsecure(), (e, p) => (e ? rej(e) : res(p))),
  );
  return {
    address: `127.0.0.1:${port}`,
    got,
    close: () => new Promise((r) => server.tryShutdown(() => r())),
  };
}

function snap(step: number): Snapshot {
  const w = { data: new Float32Array([step, 1, 2]), shape: [3], dtype: 'float32' as const };
  return {
    parts: { model: new Map([['w', w]]), ema: new Map([['w', w]]), optimizer: new Map() },
    state: { step },
  };
}

function host(over: Partial<{ workerId: string; generation: number; fenced: boolean }> = {}) {
  const h = { workerId: 'w1', generation: 1, fenced: false, interrupted: false, ...over };
  const view: PusherHost = {
    workerId: () => h.workerId,
    generation: () => h.generation,
    fenced: () => h.fenced,
    interrupted: () => h.interrupted,
  };
  return { h, view };
}

test('ReportQueue: reports refused as unreachable or superseded are sent again, oldest first, in the new generation', async () => {
  let refuse = true;
  const s = await scriptedServer({
    report: () => (refuse ? grpc.status.FAILED_PRECONDITION : grpc.status.OK),
  });
  const client = new CoordinatorClient(s.address, 'token');
  try {
    const q = new ReportQueue((r) => client.report(r), log);
    for (const step of [3, 1, 2]) q.post({ workerId: 'w1', generation: 1, step, loss: step });
    // Resent while the coordinator still refuses: nothing gets through, and they are given up.
    await q.resend('w1', 1, () => false);
    assert.equal(s.got.reports.length, 0);
    refuse = false;
    for (const step of [3, 1, 2]) q.post({ workerId: 'w1', generation: 1, step, loss: step });
    await q.resend('w1', 1, () => false);
    assert.deepEqual(
      s.got.reports.map((r) => Number(r.step)),
      [3, 1, 2],
      'sent at once when accepted',
    );
    s.got.reports.length = 0;
    refuse = true;
    for (const step of [6, 4, 5]) q.post({ workerId: 'w1', generation: 1, step, loss: step });
    await new Promise((r) => setTimeout(r, 200));
    assert.equal(q.size, 3, 'kept');
    refuse = false;
    await q.resend('w9', 2, () => false);
    assert.deepEqual(
      s.got.reports.map((r) => [Number(r.step), r.workerId, r.generation]),
      [
        [4, 'w9', 2],
        [5, 'w9', 2],
        [6, 'w9', 2],
      ],
    );
    assert.equal(q.size, 0);
  } finally {
    client.close();
    await s.close();
  }
});

test('ReportQueue: a fenced worker forgets its kept reports; an interrupted resend stops', async () => {
  const s = await scriptedServer({ report: () => grpc.status.UNAVAILABLE });
  const client = new CoordinatorClient(s.address, 'token');
  try {
    const q = new ReportQueue((r) => client.report(r), log);
    for (const step of [1, 2]) q.post({ workerId: 'w1', generation: 1, step });
    await new Promise((r) => setTimeout(r, 200));
    assert.equal(q.size, 2);
    q.clear();
    assert.equal(q.size, 0);
    for (const step of [1, 2]) q.post({ workerId: 'w1', generation: 1, step });
    await new Promise((r) => setTimeout(r, 200));
    await q.resend('w1', 2, () => true);
    assert.equal(s.got.reports.length, 0, 'nothing sent once the generation is over');
  } finally {
    client.close();
    await s.close();
  }
});

test('StepAverages: means since the last flush and samples/s, then starts over', () => {
  const a = new StepAverages();
  const rec = (stepMs: number, examples: number): StepRecord => ({
    step: 1,
    generation: 1,
    rank: 0,
    worldSize: 1,
    loss: 1,
    lossQuarters: [],
    gradNorm: 1,
    lr: 1,
    dataWaitMs: 1,
    forwardBackwardMs: stepMs / 2,
    allreduceMs: 2,
    optimizerMs: 3,
    stepMs,
    allreduceBytes: 0,
    allreduceBusbwGbps: 0,
    examples,
  });
  a.add(rec(100, 10));
  a.add(rec(300, 30));
  const f = a.flush();
  assert.equal(f.steps, 2);
  assert.equal(f.step_ms, 200);
  assert.equal(f.forward_backward_ms, 100);
  assert.equal(f.samples_per_s, 100); // 40 examples in 400 ms
  assert.equal(a.flush().steps, 0);
});

test('StatePusher: pushes slower than steps keep only the newest checkpoint and EMA sync', async () => {
  let release: () => void = () => {};
  const gate = new Promise<void>((r) => (release = r));
  const s = await scriptedServer({
    push: async (_h, n) => {
      if (n === 0) await gate; // the first push stalls while steps go on
      return grpc.status.OK;
    },
  });
  const client = new CoordinatorClient(s.address, 'token');
  try {
    const { view } = host();
    const p = new StatePusher(client, view, log);
    p.enqueue('checkpoint', snap(10), 1);
    await new Promise((r) => setTimeout(r, 100));
    p.enqueue('ema-sync', snap(11), 1);
    p.enqueue('checkpoint', snap(20), 1); // supersedes the EMA sync of step 11
    p.enqueue('ema-sync', snap(21), 1);
    p.enqueue('ema-sync', snap(22), 1);
    release();
    await p.idle();
    assert.deepEqual(
      s.got.pushes.map((x) => [x.reason, x.step]),
      [
        ['checkpoint', 10],
        ['checkpoint', 20],
        ['ema-sync', 22],
      ],
    );
  } finally {
    client.close();
    await s.close();
  }
});

test('StatePusher: a push refused by a newer generation is made again in it; a fenced worker drops it', async () => {
  let release: () => void = () => {};
  const gate = new Promise<void>((r) => (release = r));
  const s = await scriptedServer({
    push: async (h) => {
      if (h.step === 6) await gate;
      return h.generation < 2 ? grpc.status.FAILED_PRECONDITION : grpc.status.OK;
    },
  });
  const client = new CoordinatorClient(s.address, 'token');
  try {
    const { h, view } = host();
    const p = new StatePusher(client, view, log);
    p.enqueue('checkpoint', snap(5), 1);
    setTimeout(() => (h.generation = 2), 200);
    await p.idle();
    assert.deepEqual(
      s.got.pushes.map((x) => [x.step, x.generation]),
      [[5, 2]],
    );
    // A push in flight stalls; the next one waits behind it; meanwhile the worker is fenced and
    // registers again (its state discarded): the waiting snapshot is not pushed.
    p.enqueue('checkpoint', snap(6), 2);
    p.enqueue('ema-sync', snap(7), 2);
    h.workerId = 'w2';
    release();
    await p.idle();
    assert.deepEqual(
      s.got.pushes.map((x) => x.step),
      [5, 6],
    );
  } finally {
    client.close();
    await s.close();
  }
});

test('StatePusher: the final state is retried until the coordinator can write it; stops when the generation ends', async () => {
  let n = 0;
  const s = await scriptedServer({
    push: async () => (n++ < 2 ? grpc.status.UNAVAILABLE : grpc.status.OK),
  });
  let calls = 0;
  const never = await scriptedServer({
    push: async () => {
      calls++;
      return grpc.status.UNAVAILABLE;
    },
  });
  const client = new CoordinatorClient(s.address, 'token');
  const client2 = new CoordinatorClient(never.address, 'token');
  try {
    const t0 = Date.now();
    await new StatePusher(client, host().view, log).pushFinal(snap(9), 1);
    assert.deepEqual(
      s.got.pushes.map((x) => [x.reason, x.step]),
      [['final', 9]],
    );
    assert.equal(n, 3, 'two refusals, then written');
    assert.ok(Date.now() - t0 >= 1400, 'backed off between attempts (0.5 s, then 1 s)');
    // A generation that ends meanwhile: the next rank 0 pushes it, this one gives up.
    const { h, view } = host();
    setTimeout(() => (h.interrupted = true), 300);
    await new StatePusher(client2, view, log).pushFinal(snap(9), 1);
    assert.ok(calls >= 1 && calls <= 2, `${calls} attempts before the generation ended`);
  } finally {
    client.close();
    client2.close();
    await s.close();
    await never.close();
  }
});
