/**
 * Prometheus metrics (src/telemetry/metrics.ts): events fed into CoordinatorMetrics / WorkerMetrics,
 * served on 127.0.0.1:0, scraped over HTTP, the exposition text parsed and checked against the inputs.
 */
import { test } from 'node:test';
import type { StepRecord } from '../src/telemetry/step-record.js';
import assert from 'node:assert/strict';
import { CoordinatorMetrics, WorkerMetrics, serveMetrics, type WorkerRef } from '../src/telemetry/metrics.js';

interface Sample {
  name: string;
  labels: Record<string, string>;
  value: number;
}

/** Parses Prometheus text exposition (format 0.0.4) into samples. */
function parseExposition(text: string): Sample[] {
  const out: Sample[] = [];
  for (const line of text.split('\n')) {
    if (line === '' || line.startsWith('#')) continue;
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)(?: \d+)?$/.exec(line);
    assert.ok(m, `unparsable exposition line: ${line}`);
    const labels: Record<string, string> = {};
    for (const l of (m[2] ?? '').matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g)) {
      labels[l[1] as string] = (l[2] as string).replace(/\\(.)/g, (_, c: string) => (c === 'n' ? '\n' : c));
    }
    const v = m[3] as string;
    const value = v === '+Inf' ? Infinity : v === '-Inf' ? -Infinity : Number(v);
    out.push({ name: m[1] as string, labels, value });
  }
  return out;
}

/** The samples of `name` whose labels include `labels`. */
function series(samples: Sample[], name: string, labels: Record<string, string> = {}): Sample[] {
  return samples.filter(
    (s) => s.name === name && Object.entries(labels).every(([k, v]) => s.labels[k] === v),
  );
}

/** The value of the one sample of `name` matching `labels`. */
function value(samples: Sample[], name: string, labels: Record<string, string> = {}): number {
  const found = series(samples, name, labels);
  assert.equal(found.length, 1, `${name}${JSON.stringify(labels)}: ${found.length} series`);
  return (found[0] as Sample).value;
}

function near(actual: number, expected: number, rel: number, what: string): void {
  assert.ok(
    Math.abs(actual - expected) <= rel * Math.abs(expected),
    `${what}: ${actual} not within ${rel} of ${expected}`,
  );
}

/** GET http://127.0.0.1:port/path. */
async function get(port: number, path: string): Promise<{ status: number; type: string; body: string }> {
  const res = await fetch(`http://127.0.0.1:${port}${path}`);
  return { status: res.status, type: res.headers.get('content-type') ?? '', body: await res.text() };
}

const WORKERS: WorkerRef[] = [
  { id: 'w0', host: 'hostA', rank: 0 },
  { id: 'w1', host: 'hostB', rank: 1 },
  { id: 'w2', host: 'hostC', rank: 2 },
];
const EXAMPLES = [32, 32, 16];
const STEP_PERIOD_MS = 500;
const STEPS = 60;
const T0 = 1_700_000_000_000;

/** A deterministic report of worker k at step s. */
function report(s: number, k: number): StepRecord {
  const stepMs = 400 + 7 * k + (s % 5);
  return {
    step: s,
    generation: 1,
    rank: k,
    worldSize: EXAMPLES.length,
    loss: 1 / (s + 1) + 0.001 * k,
    lossQuarters: [0.9 / (s + 1), 0.5 / (s + 1), k === 2 && s === STEPS - 1 ? NaN : 0.3 / (s + 1), 0.1],
    gradNorm: 2 + s * 0.01 + k,
    lr: 1e-4 * Math.min(1, (s + 1) / 10),
    dataWaitMs: 5 + k,
    forwardBackwardMs: 300 + s,
    allreduceMs: 60 + 2 * k,
    optimizerMs: 20,
    stepMs,
    allreduceBytes: 1_000_000 + 1000 * s + k,
    allreduceBusbwGbps: 1.5 + 0.25 * k + s * 1e-3,
    examples: EXAMPLES[k] as number,
  };
}

test('CoordinatorMetrics over HTTP: values follow the inputs', async () => {
  const m = new CoordinatorMetrics('test-job');
  const other = new CoordinatorMetrics('other-job'); // a second registry in the same process
  other.onGeneration(9, 9);

  m.onGeneration(1, 2);
  m.onGeneration(2, 3);
  m.onGeneration(2, 3); // the same generation again is no change

  // Synchronous data parallelism: step s committed every STEP_PERIOD_MS, workers report 10 ms apart.
  const at = (s: number, k: number): number => T0 + s * STEP_PERIOD_MS + 10 * k;
  const bytes = [0, 0, 0];
  let reports = 0;
  const lastStep = STEPS - 1;
  const lateStep = lastStep - 3; // w1's report of this step arrives after the last step
  for (let s = 0; s < STEPS; s++) {
    for (let k = 0; k < WORKERS.length; k++) {
      bytes[k] = (bytes[k] as number) + report(s, k).allreduceBytes;
      reports++;
      if (s !== lateStep || k !== 1) m.onReport(WORKERS[k] as WorkerRef, report(s, k), at(s, k));
    }
  }
  const last = report(lastStep, 2);
  // The late report must not move the job-wide values nor w1's last values; its counts do add up.
  const late = { ...report(lateStep, 1), loss: 123, allreduceBusbwGbps: 99, stepMs: 1234 };
  m.onReport(WORKERS[1] as WorkerRef, late, at(lastStep, 2) + 1);

  m.onWorkerDeath('heartbeat-timeout');
  m.onWorkerDeath('heartbeat-timeout');
  m.onWorkerDeath('left');
  for (let i = 0; i < 3; i++) m.onRejected('Register', 'UNAUTHENTICATED');
  m.onRejected('Heartbeat', 'NOT_FOUND');
  m.onCheckpoint(20, 1500, 4_000_000, T0 + 10_000);
  m.onCheckpoint(50, 2250, 4_500_000, T0 + 25_000);
  m.onEmaSync(lastStep - 9);

  const T = 1000;
  const raw = Array.from({ length: T }, (_, t) => Math.sqrt(t + 1));
  const total = raw.reduce((a, b) => a + b, 0);
  const p = Float64Array.from(raw, (x) => x / total);
  m.setSamplingWeights(p);

  const now = at(lastStep, 2) + 100;
  m.setLiveness(
    WORKERS.map((w, k) => ({ ...w, heartbeatAgeMs: 250 * (k + 1) })),
    now,
  );

  const server = await serveMetrics(m.registry, '127.0.0.1:0');
  try {
    assert.ok(server.port > 0);
    const res = await get(server.port, '/metrics');
    assert.equal(res.status, 200);
    assert.match(res.type, /^text\/plain; version=0\.0\.4/);
    let x = parseExposition(res.body);

    // Every series carries the job label, the default process metrics included.
    assert.ok(x.length > 50);
    for (const s of x) assert.equal(s.labels.job, 'test-job', `${s.name} has job=${s.labels.job}`);
    assert.ok(series(x, 'ringdiff_process_cpu_user_seconds_total').length === 1);
    assert.ok(x.every((s) => s.name.startsWith('ringdiff_')));

    // Job-wide values of the last report of the newest step.
    assert.equal(value(x, 'ringdiff_step'), lastStep);
    assert.equal(value(x, 'ringdiff_loss'), last.loss);
    assert.equal(value(x, 'ringdiff_grad_norm'), last.gradNorm);
    assert.equal(value(x, 'ringdiff_learning_rate'), last.lr);
    assert.equal(value(x, 'ringdiff_loss_quarter', { quarter: '0' }), last.lossQuarters[0]);
    assert.equal(value(x, 'ringdiff_loss_quarter', { quarter: '3' }), last.lossQuarters[3]);
    // Quarter 2 of the last report is NaN (no sample there): the previous report's value stays.
    assert.equal(value(x, 'ringdiff_loss_quarter', { quarter: '2' }), report(lastStep, 1).lossQuarters[2]);

    // Total samples/s: examples per step / step period.
    const expectedRate = EXAMPLES.reduce((a, b) => a + b, 0) / (STEP_PERIOD_MS / 1000);
    near(value(x, 'ringdiff_samples_per_second'), expectedRate, 0.01, 'samples/s');

    for (let k = 0; k < WORKERS.length; k++) {
      const w = WORKERS[k] as WorkerRef;
      const r = report(lastStep, k);
      const wl = { worker: w.id, host: w.host };
      assert.equal(value(x, 'ringdiff_worker_samples_per_second', wl), r.examples / (r.stepMs / 1000));
      assert.equal(
        value(x, 'ringdiff_worker_step_seconds', { ...wl, phase: 'data_wait' }),
        r.dataWaitMs / 1000,
      );
      assert.equal(
        value(x, 'ringdiff_worker_step_seconds', { ...wl, phase: 'forward_backward' }),
        r.forwardBackwardMs / 1000,
      );
      assert.equal(
        value(x, 'ringdiff_worker_step_seconds', { ...wl, phase: 'allreduce' }),
        r.allreduceMs / 1000,
      );
      assert.equal(
        value(x, 'ringdiff_worker_step_seconds', { ...wl, phase: 'optimizer' }),
        r.optimizerMs / 1000,
      );
      assert.equal(value(x, 'ringdiff_worker_step_seconds', { ...wl, phase: 'total' }), r.stepMs / 1000);
      assert.equal(value(x, 'ringdiff_heartbeat_age_seconds', wl), (250 * (k + 1)) / 1000);
      assert.equal(value(x, 'ringdiff_allreduce_bytes_total', { worker: w.id }), bytes[k]);
    }
    // busbw: the last value of each worker's newest step (not that of w1's late report).
    for (let k = 0; k < WORKERS.length; k++) {
      const busbw = value(x, 'ringdiff_allreduce_busbw_gbps', { worker: `w${k}` });
      assert.equal(busbw, report(lastStep, k).allreduceBusbwGbps);
    }
    // The step-time histogram sees every report, the late one (with its own stepMs) included.
    assert.equal(value(x, 'ringdiff_step_duration_seconds_count'), reports);
    let stepSeconds = (late.stepMs - report(lateStep, 1).stepMs) / 1000;
    for (let s = 0; s < STEPS; s++) for (let k = 0; k < 3; k++) stepSeconds += report(s, k).stepMs / 1000;
    near(value(x, 'ringdiff_step_duration_seconds_sum'), stepSeconds, 1e-9, 'step seconds sum');
    assert.equal(value(x, 'ringdiff_step_duration_seconds_bucket', { le: '+Inf' }), reports);
    assert.equal(value(x, 'ringdiff_step_duration_seconds_bucket', { le: '0.32' }), 0);
    assert.equal(value(x, 'ringdiff_step_duration_seconds_bucket', { le: '0.64' }), reports - 1);

    // Membership.
    assert.equal(value(x, 'ringdiff_generation'), 2);
    assert.equal(value(x, 'ringdiff_world_size'), 3);
    assert.equal(value(x, 'ringdiff_generation_changes_total'), 2);
    assert.equal(value(x, 'ringdiff_workers_alive'), 3);
    assert.equal(value(x, 'ringdiff_worker_deaths_total', { reason: 'heartbeat-timeout' }), 2);
    assert.equal(value(x, 'ringdiff_worker_deaths_total', { reason: 'left' }), 1);
    assert.equal(value(x, 'ringdiff_worker_deaths_total', { reason: 'ring-failure' }), 0);
    assert.equal(value(x, 'ringdiff_rpc_rejected_total', { method: 'Register', code: 'UNAUTHENTICATED' }), 3);
    assert.equal(value(x, 'ringdiff_rpc_rejected_total', { method: 'Heartbeat', code: 'NOT_FOUND' }), 1);
    assert.equal(series(x, 'ringdiff_rpc_rejected_total').length, 2);

    // Checkpoints and EMA.
    assert.equal(value(x, 'ringdiff_checkpoint_last_step'), 50);
    assert.equal(value(x, 'ringdiff_checkpoint_duration_seconds'), 2.25);
    assert.equal(value(x, 'ringdiff_checkpoint_bytes'), 4_500_000);
    assert.equal(value(x, 'ringdiff_checkpoint_timestamp_seconds'), (T0 + 25_000) / 1000);
    assert.equal(value(x, 'ringdiff_checkpoints_total'), 2);
    assert.equal(value(x, 'ringdiff_ema_step'), lastStep - 9);
    assert.equal(value(x, 'ringdiff_ema_sync_lag_steps'), 9);

    // Sampling weights: 20 buckets of 50 timesteps, each the sum of p over its range; total 1.
    const sw = series(x, 'ringdiff_sampling_weight');
    assert.equal(sw.length, 20);
    near(
      sw.reduce((a, s) => a + s.value, 0),
      1,
      1e-9,
      'sum of sampling weights',
    );
    for (let b = 0; b < 20; b++) {
      const bucket = String(b).padStart(2, '0');
      const expected = p.subarray(b * 50, (b + 1) * 50).reduce((a, v) => a + v, 0);
      near(value(x, 'ringdiff_sampling_weight', { bucket, t_from: String(b * 50) }), expected, 1e-12, bucket);
    }
    assert.ok(
      value(x, 'ringdiff_sampling_weight', { bucket: '19' }) >
        value(x, 'ringdiff_sampling_weight', { bucket: '00' }),
    );

    // A worker leaves: its per-worker series disappear, the others stay.
    m.onWorkerDeath('ring-failure');
    m.setLiveness(
      WORKERS.slice(0, 2).map((w) => ({ ...w, heartbeatAgeMs: 100 })),
      now + 50,
    );
    // Fewer timesteps than buckets, and an uneven split: the label sets are replaced.
    const p2 = Array.from({ length: 30 }, () => 1 / 30);
    m.setSamplingWeights(p2, 8);
    x = parseExposition((await get(server.port, '/metrics')).body);
    assert.equal(value(x, 'ringdiff_workers_alive'), 2);
    assert.equal(series(x, 'ringdiff_heartbeat_age_seconds', { worker: 'w2' }).length, 0);
    assert.equal(series(x, 'ringdiff_worker_step_seconds', { worker: 'w2' }).length, 0);
    assert.equal(series(x, 'ringdiff_worker_samples_per_second', { worker: 'w2' }).length, 0);
    assert.equal(series(x, 'ringdiff_allreduce_busbw_gbps', { worker: 'w2' }).length, 0);
    assert.equal(series(x, 'ringdiff_heartbeat_age_seconds').length, 2);
    assert.equal(value(x, 'ringdiff_heartbeat_age_seconds', { worker: 'w0', host: 'hostA' }), 0.1);
    assert.equal(series(x, 'ringdiff_worker_step_seconds', { worker: 'w0' }).length, 5);
    assert.equal(value(x, 'ringdiff_worker_deaths_total', { reason: 'ring-failure' }), 1);
    const sw2 = series(x, 'ringdiff_sampling_weight');
    assert.equal(sw2.length, 8);
    near(
      sw2.reduce((a, s) => a + s.value, 0),
      1,
      1e-9,
      'sum of 8 sampling weights',
    );
    const froms = sw2.map((s) => Number(s.labels.t_from)).sort((a, b) => a - b);
    assert.deepEqual(
      froms,
      Array.from({ length: 8 }, (_, b) => Math.floor((b * 30) / 8)),
    );
    for (const s of sw2) {
      const b = Number(s.labels.bucket);
      const n = Math.floor(((b + 1) * 30) / 8) - Math.floor((b * 30) / 8);
      near(s.value, n / 30, 1e-12, `bucket ${b}`);
    }

    // No step for longer than the window: samples/s falls to 0.
    m.setLiveness(
      WORKERS.slice(0, 2).map((w) => ({ ...w, heartbeatAgeMs: 30_000 })),
      now + 30_000,
    );
    x = parseExposition((await get(server.port, '/metrics')).body);
    assert.equal(value(x, 'ringdiff_samples_per_second'), 0);

    // A new generation resumes from an older checkpoint: the step follows, the lag too.
    m.onGeneration(3, 2);
    m.onReport(WORKERS[0] as WorkerRef, report(50, 0), now + 40_000);
    x = parseExposition((await get(server.port, '/metrics')).body);
    assert.equal(value(x, 'ringdiff_step'), 50);
    assert.equal(value(x, 'ringdiff_generation'), 3);
    assert.equal(value(x, 'ringdiff_world_size'), 2);
    assert.equal(value(x, 'ringdiff_generation_changes_total'), 3);
    assert.equal(value(x, 'ringdiff_ema_sync_lag_steps'), 50 - (lastStep - 9));

    // The other registry is independent.
    const o = parseExposition(await other.registry.metrics());
    assert.equal(value(o, 'ringdiff_generation'), 9);
    assert.equal(series(o, 'ringdiff_step').length, 1);
    assert.equal(value(o, 'ringdiff_step'), 0);
    assert.ok(o.every((s) => s.labels.job === 'other-job'));

    // The other endpoints.
    const h = await get(server.port, '/healthz');
    assert.equal(h.status, 200);
    assert.equal(h.body, 'ok');
    assert.equal((await get(server.port, '/nope')).status, 404);
    assert.equal((await get(server.port, '/metricsx')).status, 404);
  } finally {
    await server.close();
  }
  await assert.rejects(get(server.port, '/healthz'));
});

test('samples/s follows a change of pace; a restart from an older step', async () => {
  const m = new CoordinatorMetrics('pace');
  const w: WorkerRef = { id: 'only', host: 'h', rank: 0 };
  // 40 steps at 4 steps/s, then 60 steps at 10 steps/s (the window is ~10 s: only the new pace remains).
  let t = T0;
  let s = 0;
  for (; s < 40; s++, t += 250) m.onReport(w, { ...report(s, 0), examples: 8 }, t);
  for (; s < 200; s++, t += 100) m.onReport(w, { ...report(s, 0), examples: 8 }, t);
  const text = await m.registry.metrics();
  near(value(parseExposition(text), 'ringdiff_samples_per_second'), 8 * 10, 1e-9, 'samples/s');
  // A lower step right after the newest one is a late report; after a stall longer than the window
  // it is a restart from an older checkpoint (even without onGeneration).
  m.onReport(w, { ...report(150, 0), loss: 7 }, t);
  let x = parseExposition(await m.registry.metrics());
  assert.equal(value(x, 'ringdiff_step'), 199);
  m.onReport(w, { ...report(150, 0), loss: 7 }, t + 20_000);
  x = parseExposition(await m.registry.metrics());
  assert.equal(value(x, 'ringdiff_step'), 150);
  assert.equal(value(x, 'ringdiff_loss'), 7);
});

test('serveMetrics rejects a bad listen address', async () => {
  const m = new WorkerMetrics('bad', 'w');
  await assert.rejects(serveMetrics(m.registry, 'no-port'));
  await assert.rejects(serveMetrics(m.registry, '127.0.0.1:99999'));
});

test('WorkerMetrics over HTTP', async () => {
  const m = new WorkerMetrics('test-job', 'worker-7');
  const r1 = { ...report(10, 1), generation: 4, rank: 1, worldSize: 3 };
  const r2 = { ...report(11, 1), generation: 5, rank: 0, worldSize: 2 };
  m.onStep(r1);
  m.onStep(r2);
  m.onRingCounters({ bytesSent: 100, bytesReceived: 80, dropped: { stale: 1 } });
  m.onRingCounters({ bytesSent: 250, bytesReceived: 200, dropped: { stale: 3, crc: 1 } });
  // A new ring counts from 0 again: its counts add to the totals.
  m.onRingCounters({ bytesSent: 50, bytesReceived: 40, dropped: { stale: 2, crc: 1 } });

  const server = await serveMetrics(m.registry, '127.0.0.1:0');
  try {
    const res = await get(server.port, '/metrics');
    assert.equal(res.status, 200);
    const x = parseExposition(res.body);
    for (const s of x) {
      assert.equal(s.labels.job, 'test-job');
      assert.equal(s.labels.worker, 'worker-7');
    }
    assert.ok(series(x, 'ringdiff_process_resident_memory_bytes').length === 1);
    assert.equal(value(x, 'ringdiff_local_step'), r2.step);
    assert.equal(value(x, 'ringdiff_local_loss'), r2.loss);
    assert.equal(value(x, 'ringdiff_local_generation'), 5);
    assert.equal(value(x, 'ringdiff_local_rank'), 0);
    assert.equal(value(x, 'ringdiff_local_world_size'), 2);
    assert.equal(value(x, 'ringdiff_local_step_seconds', { phase: 'total' }), r2.stepMs / 1000);
    assert.equal(value(x, 'ringdiff_local_step_seconds', { phase: 'allreduce' }), r2.allreduceMs / 1000);
    assert.equal(value(x, 'ringdiff_local_step_seconds', { phase: 'data_wait' }), r2.dataWaitMs / 1000);
    assert.equal(value(x, 'ringdiff_local_samples_per_second'), r2.examples / (r2.stepMs / 1000));
    assert.equal(value(x, 'ringdiff_local_examples_total'), r1.examples + r2.examples);
    assert.equal(value(x, 'ringdiff_local_allreduce_bytes_total'), r1.allreduceBytes + r2.allreduceBytes);
    assert.equal(value(x, 'ringdiff_local_step_duration_seconds_count'), 2);
    assert.equal(value(x, 'ringdiff_local_ring_bytes_sent_total'), 250 + 50);
    assert.equal(value(x, 'ringdiff_local_ring_bytes_received_total'), 200 + 40);
    assert.equal(value(x, 'ringdiff_local_ring_dropped_frames_total', { reason: 'stale' }), 3 + 2);
    assert.equal(value(x, 'ringdiff_local_ring_dropped_frames_total', { reason: 'crc' }), 1);
  } finally {
    await server.close();
  }
});
