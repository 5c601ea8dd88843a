/**
 * The orchestrator with real processes: a coordinator and workers of the `ringdiff` binary over
 * real gRPC and real ZeroMQ rings on loopback.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { CoordinatorClient } from '../src/worker/client.js';
import {
  LocalCluster,
  TOKEN,
  checkpointDiff,
  makeCertificates,
  runLaunch,
  runRingdiffCli,
} from './cluster-harness.js';
import { missingCommand, skipUnless } from './requirements.js';

const root = mkdtempSync(path.join(tmpdir(), 'ringdiff-cluster-'));
// Kept when a test failed: every process's log is in there (<root>/<job>/logs/, <root>/<name>.log).
process.on('exit', (code) => {
  if (code === 0 && !process.env.RINGDIFF_KEEP_TEST_DIR) rmSync(root, { recursive: true, force: true });
  else process.stderr.write(`cluster: test directory kept: ${root}\n`);
});

/** A small job whose steps take tens of ms: the orchestration, not the model, is under test. */
const toy = (name: string, steps: number) => `
run: { name: ${name}, out_dir: ${path.join(root, name)} }
data: { dataset: "toy:8gaussians", size: 4096 }
model: { kind: mlp, hidden: 64, layers: 2 }
diffusion: { timesteps: 100, timestep_sampler: loss-second-moment }
train: { steps: ${steps}, global_batch: 60, warmup_steps: 5, checkpoint_every: 50, ema_sync_every: 10, log_every: 10 }
sample: { count: 0 }
cluster: { heartbeat_timeout_ms: 4000, verify_every: 10, ring_timeout_ms: 20000 }
`;

function config(name: string, steps: number): string {
  const f = path.join(root, `${name}.yaml`);
  writeFileSync(f, toy(name, steps));
  return f;
}

const ckpt = (name: string, step: number) => path.join(root, name, `ckpt-${step}`);

/** Largest float difference allowed between runs whose only difference is the summation order. */
const TOL = 1e-5;

test('world-size invariance: 1, 2 and 3 workers end with the same weights and EMA', async (t) => {
  for (const n of [1, 2, 3]) {
    const code = await runLaunch(root, `inv${n}`, [
      '--workers',
      String(n),
      '--config',
      config(`inv${n}`, 60),
    ]);
    assert.equal(code, 0, `launch with ${n} workers failed; see ${root}/inv${n}.log`);
    assert.ok(existsSync(path.join(ckpt(`inv${n}`, 60), 'state.json')));
  }
  for (const n of [2, 3]) {
    const d = await checkpointDiff(ckpt('inv1', 60), ckpt(`inv${n}`, 60));
    t.diagnostic(
      `1 vs ${n} workers: max |Δ| model ${d.model.toExponential(2)}, EMA ${d.ema.toExponential(2)}`,
    );
    assert.ok(d.model <= TOL && d.ema <= TOL, `1 vs ${n} workers differ by ${d.model} / ${d.ema}`);
  }
});

test('Ctrl-C stops with a checkpoint; resuming ends bit-identical to an uninterrupted run', async (t) => {
  const cfgA = config('whole', 120);
  assert.equal(await runLaunch(root, 'whole', ['--workers', '2', '--config', cfgA]), 0);
  // The interrupted run: SIGINT to the coordinator once the job is under way.
  const c = new LocalCluster(root, toy('cut', 120), ['cluster.min_workers=2']);
  try {
    const coord = await c.startCoordinator();
    c.startWorker();
    c.startWorker();
    await c.waitFor((s) => Number(s.step) >= 30, 'step 30');
    coord.child.kill('SIGINT');
    assert.equal(await coord.exit, 0, 'the coordinator stops cleanly');
    const codes = await Promise.all(c.workers.map((w) => w.exit));
    assert.deepEqual(codes, [0, 0], 'workers exit 0 on STOP');
  } finally {
    await c.stop();
  }
  const { listCheckpoints } = await import('../src/model/checkpoint.js');
  const stopped = (await listCheckpoints(path.join(root, 'cut'))).at(-1);
  assert.ok(
    stopped && stopped.step >= 30 && stopped.step < 120,
    `a stop checkpoint exists (${stopped?.step})`,
  );
  t.diagnostic(`stopped at step ${stopped.step}`);
  // Resume: fresh workers fetch the state from the coordinator.
  assert.equal(await runLaunch(root, 'cut-resume', ['--workers', '2', '--config', config('cut', 120)]), 0);
  const d = await checkpointDiff(ckpt('whole', 120), ckpt('cut', 120));
  assert.equal(d.model, 0, 'model bit-identical');
  assert.equal(d.ema, 0, 'EMA bit-identical');
});

test('the coordinator killed and restarted on its run directory: workers rejoin, the run ends bit-identical', async (t) => {
  // Reference: the uninterrupted 2-worker run of the previous test ('whole', 120 steps).
  assert.ok(existsSync(ckpt('whole', 120)), 'needs the previous test');
  const c = new LocalCluster(root, toy('phoenix', 120), ['cluster.min_workers=2']);
  try {
    const first = await c.startCoordinator('coordinator-1');
    c.startWorker();
    c.startWorker();
    const before = await c.waitFor((s) => Number(s.step) >= 60, 'step 60');
    first.child.kill('SIGKILL');
    await first.exit;
    const second = await c.startCoordinator('coordinator-2');
    const s = await c.waitFor((x) => x.generation >= 1 && x.workers.length === 2, 'the workers to rejoin');
    t.diagnostic(
      `restarted coordinator: workers back at step ${s.step}, generation ${s.generation} (was ${before.generation})`,
    );
    // Generation numbers never go back: the new coordinator numbers above what its workers saw.
    assert.ok(s.generation > before.generation, `generation ${s.generation} after ${before.generation}`);
    assert.equal(await second.exit, 0);
    assert.deepEqual(await Promise.all(c.workers.map((w) => w.exit)), [0, 0]);
  } finally {
    await c.stop();
  }
  const d = await checkpointDiff(ckpt('whole', 120), ckpt('phoenix', 120));
  assert.equal(d.model, 0, 'model bit-identical');
  assert.equal(d.ema, 0, 'EMA bit-identical');
});

test('elasticity: SIGKILL one of 3 workers, then a worker joins; the job ends as if undisturbed', async (t) => {
  // 400 steps: a joiner's start-up (seconds, on 2 busy cores) and the checks below must fit in the job.
  assert.equal(await runLaunch(root, 'calm', ['--workers', '3', '--config', config('calm', 400)]), 0);
  const c = new LocalCluster(root, toy('rough', 400), ['cluster.min_workers=3']);
  try {
    const coord = await c.startCoordinator();
    for (let i = 0; i < 3; i++) c.startWorker();
    await c.waitFor((s) => Number(s.step) >= 40, 'step 40');
    c.workers[1]?.child.kill('SIGKILL');
    const after = await c.waitFor((s) => s.generation >= 2 && s.workers.length === 2, 'a generation of 2');
    t.diagnostic(`worker killed; generation ${after.generation} with 2 workers at step ${after.step}`);

    // Hostile calls while the job runs: rejected, counted, and the job goes on.
    const bad = new CoordinatorClient(c.address, 'wrong-token-wrong-token', undefined, 2000);
    const good = new CoordinatorClient(c.address, TOKEN, undefined, 2000);
    const code = async (p: Promise<unknown>) => {
      try {
        await p;
        return 0;
      } catch (e) {
        return (e as grpc.ServiceError).code;
      }
    };
    const reg = { host: 'h', ringEndpoint: 'tcp://127.0.0.1:1', curvePublicKey: '' };
    assert.equal(await code(bad.register(reg)), grpc.status.UNAUTHENTICATED);
    assert.equal(
      await code(good.register({ ...reg, ringEndpoint: 'not an endpoint' })),
      grpc.status.INVALID_ARGUMENT,
    );
    const live = after.workers[0]?.workerId ?? '';
    assert.equal(
      await code(good.report({ workerId: live, generation: 1, step: 5 })),
      grpc.status.FAILED_PRECONDITION,
      'a report of an old generation is fenced',
    );
    bad.close();
    good.close();

    const joiner = c.startWorker('joiner');
    const joined = await c.waitFor(
      (s) => s.workers.length === 3 && s.generation > after.generation,
      'the joiner',
    );
    t.diagnostic(`joiner in at generation ${joined.generation}, step ${joined.step}`);
    await c.waitFor((s) => Number(s.step) > Number(joined.step) + 20, 'steps with the joiner');
    // (Not spawnSync: it would stop the harness's own event loop for the CLI's start-up.)
    const st = await runRingdiffCli(['status', '--coordinator', c.address, '--json'], {
      RINGDIFF_TOKEN: TOKEN,
    });
    assert.equal(st.code, 0, st.err);
    const status = JSON.parse(st.out) as {
      state: string;
      workers: { rank: number; samples_per_s: number }[];
    };
    assert.equal(status.state, 'training');
    assert.deepEqual(
      status.workers.map((w) => w.rank).sort(),
      [0, 1, 2],
      '`ringdiff status` lists the 3 ranks',
    );
    assert.ok(status.workers.every((w) => w.samples_per_s > 0));

    const text = await (await fetch(`http://${c.metricsAddress}/metrics`)).text();
    const value = (re: RegExp) => Number(re.exec(text)?.[1] ?? NaN);
    assert.ok(value(/^ringdiff_step\{[^}]*\} (\d+)/m) > 40, 'ringdiff_step');
    assert.ok(value(/^ringdiff_loss\{[^}]*\} ([\d.e+-]+)/m) > 0, 'ringdiff_loss');
    assert.equal(value(/^ringdiff_workers_alive\{[^}]*\} (\d+)/m), 3);
    assert.ok(value(/^ringdiff_generation_changes_total\{[^}]*\} (\d+)/m) >= 3);
    assert.equal(value(/^ringdiff_rpc_rejected_total\{[^}]*code="UNAUTHENTICATED"[^}]*\} (\d+)/m), 1);
    assert.ok(value(/^ringdiff_rpc_rejected_total\{[^}]*code="INVALID_ARGUMENT"[^}]*\} (\d+)/m) >= 1);
    assert.ok(value(/^ringdiff_rpc_rejected_total\{[^}]*code="FAILED_PRECONDITION"[^}]*\} (\d+)/m) >= 1);
    assert.ok(value(/^ringdiff_worker_deaths_total\{[^}]*reason="stream-closed"[^}]*\} (\d+)/m) >= 1);
    assert.ok(value(/^ringdiff_checkpoint_last_step\{[^}]*\} (\d+)/m) >= 50);
    assert.ok(value(/^ringdiff_ema_sync_lag_steps\{[^}]*\} (\d+)/m) <= 20);
    assert.ok(value(/^ringdiff_samples_per_second\{[^}]*\} ([\d.e+-]+)/m) > 0);
    for (const phase of ['forward_backward', 'allreduce', 'optimizer', 'data_wait'])
      assert.match(text, new RegExp(`^ringdiff_worker_step_seconds\\{[^}]*phase="${phase}"`, 'm'));
    assert.match(text, /^ringdiff_heartbeat_age_seconds\{/m);
    assert.match(text, /^ringdiff_allreduce_busbw_gbps\{/m);
    assert.match(text, /^ringdiff_sampling_weight\{/m);
    assert.match(text, /^ringdiff_loss_quarter\{/m);

    assert.equal(await coord.exit, 0, 'the job finishes');
    assert.equal(await joiner.exit, 0);
  } finally {
    await c.stop();
  }
  const d = await checkpointDiff(ckpt('calm', 400), ckpt('rough', 400));
  t.diagnostic(
    `undisturbed vs kill+join: max |Δ| model ${d.model.toExponential(2)}, EMA ${d.ema.toExponential(2)}`,
  );
  assert.ok(d.model <= TOL && d.ema <= TOL, `runs differ by ${d.model} / ${d.ema}`);
});

test('the embedded default job (MNIST U-Net, 2 workers) runs end to end under launch, short form', async () => {
  const out = path.join(root, 'default');
  const code = await runLaunch(
    root,
    'default',
    [
      '--set',
      `run.out_dir=${out}`,
      '--set',
      'train.steps=3',
      '--set',
      'sample.count=4',
      '--set',
      'sample.steps=3',
    ],
    { RINGDIFF_TOKEN: '' },
  );
  assert.equal(code, 0, `see ${root}/default.log`);
  const state = JSON.parse(readFileSync(path.join(out, 'ckpt-3', 'state.json'), 'utf8')) as {
    config: { data: { dataset: string }; model: { kind: string } };
  };
  assert.equal(state.config.data.dataset, 'mnist:train');
  assert.equal(state.config.model.kind, 'unet');
  assert.ok(existsSync(path.join(out, 'samples.png')));
  for (const f of ['coordinator.log', 'worker-0.log', 'worker-1.log'])
    assert.ok(existsSync(path.join(out, 'logs', f)), `logs/${f}`);
  assert.equal(statSync(path.join(out, 'token')).mode & 0o777, 0o600, 'the generated token is private');
  const report = readFileSync(path.join(out, 'report.html'), 'utf8');
  assert.equal(
    (report.match(/<svg/g) ?? []).length,
    4,
    'loss, loss per quarter, samples/s, sampling weights',
  );
  assert.equal(
    (report.match(/data:image\/png;base64/g) ?? []).length,
    2,
    'the checkpoint grid and the final samples',
  );
});

test(
  'mutual TLS for gRPC, CURVE on the ring, and a worker without the dataset reading its shards from the coordinator',
  { skip: skipUnless(missingCommand('openssl', 'openssl', ['version'])) },
  async (t) => {
    const tlsDir = path.join(root, 'tls');
    mkdirSync(tlsDir, { recursive: true });
    const c = makeCertificates(tlsDir);
    assert.equal(await runLaunch(root, 'plain', ['--workers', '2', '--config', config('plain', 40)]), 0);
    const tls = [`cluster.tls.ca=${c.ca}`];
    const cluster = new LocalCluster(root, toy('secure', 40), [
      'cluster.min_workers=2',
      `cluster.tls.cert=${c.cert}`,
      `cluster.tls.key=${c.key}`,
      'cluster.allreduce.encryption=curve',
      ...tls,
    ]);
    cluster.credentials = grpc.credentials.createSsl(
      readFileSync(c.ca),
      readFileSync(c.clientKey),
      readFileSync(c.clientCert),
    );
    cluster.workerArgs = [
      '--set',
      ...tls,
      '--set',
      `cluster.tls.client_cert=${c.clientCert}`,
      '--set',
      `cluster.tls.client_key=${c.clientKey}`,
    ];
    try {
      const coord = await cluster.startCoordinator();
      // Checked while the coordinator waits for its workers (the 40 steps then take seconds, too
      // short to probe reliably): the client certificate is accepted, plaintext and TLS without
      // a client certificate are refused.
      await cluster.waitFor((s) => s.generation === 0, 'the coordinator to answer over mutual TLS');
      const status = (creds: grpc.ChannelCredentials) =>
        new CoordinatorClient(cluster.address, TOKEN, creds, 2000).status();
      await assert.rejects(status(grpc.credentials.createInsecure()));
      await assert.rejects(status(grpc.credentials.createSsl(readFileSync(c.ca))));
      cluster.startWorker();
      const remote = cluster.startWorker('remote', ['--fetch-shards']);
      assert.equal(await coord.exit, 0);
      assert.equal(await remote.exit, 0);
      assert.match(readFileSync(remote.log, 'utf8'), /shards come from the coordinator/);
    } finally {
      await cluster.stop();
    }
    const d = await checkpointDiff(ckpt('plain', 40), ckpt('secure', 40));
    t.diagnostic(`plaintext+local data vs TLS+fetched shards: max |Δ| ${d.model}`);
    assert.equal(d.model, 0, 'same data, same order, same bits');
    assert.equal(d.ema, 0);
  },
);

test('a step longer than the heartbeat timeout does not get a busy worker declared dead', async (t) => {
  // The pure-JS backend makes each step of this U-Net take longer than the 1.5 s timeout: the
  // heartbeats come from their own thread, so the worker must never be declared dead.
  const c = new LocalCluster(
    root,
    `
run: { name: slow, out_dir: ${path.join(root, 'slow')} }
data: { dataset: mnist, image_size: 8 }
model: { kind: unet, channels: [8, 8], groups: 4, time_embed_dim: 16, num_classes: 0 }
train: { steps: 3, global_batch: 96, checkpoint_every: 0, log_every: 1 }
sample: { count: 0 }
cluster: { heartbeat_timeout_ms: 1500, min_workers: 1 }
`,
  );
  try {
    const coord = await c.startCoordinator();
    const w = c.startWorker('slow-worker', ['--backend', 'cpu']);
    assert.equal(await coord.exit, 0);
    assert.equal(await w.exit, 0);
    const log = readFileSync(w.log, 'utf8');
    const ms = [...log.matchAll(/"step_ms":([\d.]+)/g)].map((m) => Number(m[1]));
    t.diagnostic(`step times ${ms.map((x) => Math.round(x)).join(', ')} ms; heartbeat timeout 1500 ms`);
    assert.ok(Math.max(...ms) > 1500, 'a step really outlasted the heartbeat timeout');
    assert.doesNotMatch(readFileSync(coord.log, 'utf8'), /declared dead/);
    assert.doesNotMatch(log, /fenced/);
  } finally {
    await c.stop();
  }
});
