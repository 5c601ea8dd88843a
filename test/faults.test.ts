/**
 * Fault injection on an emulated multi-host cluster (network namespaces, see netns-harness.ts):
 * every test runs the same small job (toy MLP, 150 steps, 3 workers on 3 hosts) through one
 * fault and checks that it completes all its steps, that history.jsonl has every step, and that
 * its final weights and EMA match an undisturbed 3-worker run — bit-identical where the world size
 * never changed, within the orchestrator tests' 1e-5 otherwise. Needs root and iproute2; skipped
 * elsewhere.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  existsSync,
  mkdtempSync,
  readFileSync,
  readdirSync,
  rmSync,
  unlinkSync,
  writeFileSync,
  writeSync,
  openSync,
  closeSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { checkpointDiff, runLaunch } from './cluster-harness.js';
import { NetnsCluster, netnsUnavailable, type NetStatus, type NetProc } from './netns-harness.js';
import { loadCheckpoint } from '../src/model/checkpoint.js';
import { readHistory } from '../src/telemetry/history.js';

const why = netnsUnavailable();
const root = mkdtempSync(path.join(tmpdir(), 'ringdiff-faults-'));
// Kept when a test failed (the process logs are in <root>/<test>-logs/).
process.on('exit', (code) => {
  if (code === 0 && !process.env.RINGDIFF_KEEP_TEST_DIR) rmSync(root, { recursive: true, force: true });
  else process.stderr.write(`faults: test directory kept: ${root}\n`);
});

const STEPS = 150;
const TOL = 1e-5;
const HB_MS = 3000;

/** The job: only run-defining keys matter for the comparison; cluster.* and checkpoints may differ. */
function job(name: string, outDir = path.join(root, name), cluster = ''): string {
  return `
run: { name: ${name}, out_dir: ${outDir} }
data: { dataset: "toy:8gaussians", size: 4096 }
model: { kind: mlp, hidden: 64, layers: 2, num_classes: 0 }
diffusion: { timesteps: 100, timestep_sampler: loss-second-moment }
train: { steps: ${STEPS}, global_batch: 60, warmup_steps: 5, checkpoint_every: 50, ema_sync_every: 10, log_every: 10 }
sample: { count: 0 }
cluster: { min_workers: 3, heartbeat_timeout_ms: ${HB_MS}, verify_every: 10, ring_timeout_ms: 20000${cluster} }
`;
}

let reference: Promise<string> | null = null;
/** The undisturbed 3-worker run (loopback, `launch`), computed once. */
function referenceRun(): Promise<string> {
  reference ??= (async () => {
    const f = path.join(root, 'reference.yaml');
    writeFileSync(f, job('reference'));
    const code = await runLaunch(root, 'reference', ['--workers', '3', '--config', f]);
    assert.equal(code, 0, `the reference run failed; see ${root}/reference.log`);
    return path.join(root, 'reference', `ckpt-${STEPS}`);
  })();
  return reference;
}

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

interface Run {
  c: NetnsCluster;
  outDir: string;
  t0: number;
}

/** Builds the cluster, runs `body`, always tears the cluster down. */
async function withCluster(
  name: string,
  opts: { relays?: boolean; cluster?: string; outDir?: string },
  body: (r: Run) => Promise<void>,
): Promise<void> {
  const outDir = opts.outDir ?? path.join(root, name);
  const c = new NetnsCluster({
    dir: path.join(root, `${name}-logs`),
    configYaml: job(name, outDir, opts.cluster ?? ''),
    hosts: 3,
    relays: opts.relays ?? false,
  }).up();
  try {
    await body({ c, outDir, t0: Date.now() });
  } finally {
    await c.stop();
  }
}

/** Starts the coordinator and one worker per host. */
async function start(c: NetnsCluster): Promise<{ coord: NetProc; workers: NetProc[] }> {
  const coord = await c.startCoordinator();
  const workers: NetProc[] = [];
  for (let i = 0; i < 3; i++) workers.push(await c.startWorker(i));
  return { coord, workers };
}

/** The worker process whose host has rank `rank` in the current generation. */
function workerOfRank(c: NetnsCluster, s: NetStatus, rank: number): NetProc {
  const host = s.workers.find((w) => w.rank === rank)?.host;
  const p = c.workers().find((w) => w.ns === host);
  if (!p) throw new Error(`no running worker for rank ${rank} (host ${host})`);
  return p;
}

/** Waits for training to resume after a fault: a newer generation, and the step past `step`. */
async function recovered(c: NetnsCluster, g0: number, step: number, workers?: number): Promise<NetStatus> {
  return c.waitFor(
    (s) =>
      s.generation > g0 &&
      s.step > step &&
      s.state === 'training' &&
      (workers === undefined || s.workers.length === workers),
    `recovery past step ${step} (generation > ${g0}${workers ? `, ${workers} workers` : ''})`,
  );
}

/** The job must end by itself: coordinator and every worker exit 0. */
async function finished(c: NetnsCluster, coord: NetProc): Promise<void> {
  assert.equal(await coord.exit, 0, `the coordinator failed; see ${coord.log}`);
  const alive = c.procs.filter((p) => p.role === 'worker' && !p.exited);
  const codes = await Promise.race([Promise.all(alive.map((p) => p.exit)), sleep(20000).then(() => null)]);
  assert.ok(codes, 'the workers exit after the job finished');
  codes.forEach((code, i) => assert.equal(code, 0, `${alive[i]?.name} exit code; see ${alive[i]?.log}`));
}

/** Every step 1…STEPS in history.jsonl, the final checkpoint verified, weights vs the reference. */
async function checkResult(
  t: { diagnostic(s: string): void },
  outDir: string,
  exact: boolean,
): Promise<{ model: number; ema: number }> {
  const steps = new Set(readHistory(outDir).map((e) => e.step));
  const missing = [];
  for (let s = 1; s <= STEPS; s++) if (!steps.has(s)) missing.push(s);
  assert.deepEqual(missing, [], 'history.jsonl has every step');
  const ckpt = path.join(outDir, `ckpt-${STEPS}`);
  await loadCheckpoint(ckpt);
  const d = await checkpointDiff(await referenceRun(), ckpt);
  t.diagnostic(
    `final weights vs undisturbed: max |Δ| model ${d.model.toExponential(2)}, EMA ${d.ema.toExponential(2)}`,
  );
  if (exact) {
    assert.equal(d.model, 0, 'model bit-identical');
    assert.equal(d.ema, 0, 'EMA bit-identical');
  } else assert.ok(d.model <= TOL && d.ema <= TOL, `differs by ${d.model} / ${d.ema}`);
  return d;
}

/** Log lines of a file matching `re`. */
function lines(file: string, re: RegExp): string[] {
  try {
    return readFileSync(file, 'utf8')
      .split('\n')
      .filter((l) => re.test(l));
  } catch {
    return [];
  }
}

const opts = { skip: why ?? false, timeout: 240_000 };

test('reference: the undisturbed 3-worker run', { skip: why ?? false, timeout: 120_000 }, async () => {
  assert.ok(existsSync(path.join(await referenceRun(), 'state.json')));
});

test('SIGKILL during the all-reduce, three times, each time a worker joins', opts, async (t) => {
  // 8 Mbit/s worker links and small ring chunks: the all-reduce is most of a step, so a kill at a
  // random moment almost always lands inside it (the share is measured below).
  await withCluster('kill-ar', { cluster: ', allreduce: { chunk_bytes: 4096 }' }, async ({ c, outDir }) => {
    for (let i = 0; i < 3; i++) await c.shape(i, { rate: '8mbit' });
    const { coord } = await start(c);
    await c.waitFor((s) => s.step >= 10, 'step 10');
    let seed = 12345;
    const rand = () => (seed = (seed * 1103515245 + 12345) % 2 ** 31) / 2 ** 31;
    for (let round = 0; round < 3; round++) {
      await sleep(Math.floor(rand() * 500));
      const victims = c.workers();
      const victim = victims[Math.floor(rand() * victims.length)] as NetProc;
      const before = c.status as NetStatus;
      const tKill = Date.now();
      c.signal(victim, 'SIGKILL');
      const r = await recovered(c, before.generation, before.step, 2);
      const recoveryMs = Date.now() - tKill;
      await c.startWorker(c.hostIndex(victim.ns), `joiner-${round}`);
      const j = await c.waitFor((s) => s.workers.length === 3 && s.generation > r.generation, 'the joiner');
      t.diagnostic(
        `round ${round}: killed ${victim.name} at step ${before.step}; training again at step ${r.step} after ${recoveryMs} ms; joiner in at step ${j.step} (${Date.now() - tKill} ms)`,
      );
      assert.ok(j.step < STEPS, 'the rounds fit in the job');
    }
    await finished(c, coord);
    // A kill in the all-gather leaves survivors at different steps: one rolls the other forward.
    const rolled = c.procs.flatMap((p) => lines(p.log, /"rolled_forward":true/)).length;
    const share = c.procs.flatMap((p) =>
      lines(p.log, /"msg":"step"/).map(
        (l) =>
          Number(/"allreduce_ms":([\d.]+)/.exec(l)?.[1] ?? 0) /
          Number(/"step_ms":([\d.]+)/.exec(l)?.[1] ?? 1),
      ),
    );
    t.diagnostic(
      `all-reduce share of a step: ${((100 * share.reduce((a, b) => a + b, 0)) / Math.max(1, share.length)).toFixed(0)} %; generations that rolled a survivor forward: ${rolled}`,
    );
    await checkResult(t, outDir, false);
  });
});

test('SIGKILL of rank 0 while it pushes a checkpoint', opts, async (t) => {
  await withCluster('kill-push', {}, async ({ c, outDir }) => {
    const { coord } = await start(c);
    // A slow coordinator link (1 Mbit/s) makes the push of step 50 (model, EMA, moments) last
    // seconds, while the ring between the worker hosts runs at full speed.
    const s = await c.waitFor((x) => x.step >= 30 && x.workers.length === 3, 'step 30');
    await c.shape('coordinator', { rate: '1mbit' });
    const rank0 = workerOfRank(c, s, 0);
    await c.waitForLog(rank0, /"msg":"step"[^\n]*"step":50\b|"step":50\b[^\n]*"msg":"step"/);
    const before = c.status as NetStatus;
    const tKill = Date.now();
    c.signal(rank0, 'SIGKILL');
    await c.shape('coordinator', {});
    // The survivors' steps take ~35 ms: a slower ring link keeps the job going while the joiner
    // starts (a process start takes seconds here), so that it joins before the last step.
    const home = c.hostIndex(rank0.ns);
    const slowed = (home + 1) % 3;
    await c.shape(slowed, { rate: '20mbit' });
    const r = await recovered(c, before.generation, before.step, 2);
    t.diagnostic(
      `rank 0 killed after step 50; training again at step ${r.step} after ${Date.now() - tKill} ms`,
    );
    await c.startWorker(home, 'joiner');
    await c.waitFor((x) => x.workers.length === 3, 'the joiner to register');
    await c.shape(slowed, {});
    await finished(c, coord);
    const written = lines(coord.log, /checkpoint written/).map((l) => Number(/"step":(\d+)/.exec(l)?.[1]));
    t.diagnostic(
      `checkpoints written: ${written.join(', ')}; the push of step 50 ${written.includes(50) ? 'completed before the kill' : 'was cut off by the kill'}`,
    );
    assert.ok(!written.includes(50), 'the kill landed during the push of step 50');
    await checkResult(t, outDir, false);
  });
});

test('SIGKILL during rendezvous (before generation 1)', opts, async (t) => {
  await withCluster('kill-rdv', {}, async ({ c, outDir }) => {
    const coord = await c.startCoordinator();
    const w0 = await c.startWorker(0);
    const w1 = await c.startWorker(1);
    // One dies before it even registered, one after registering while the job waits for a third.
    const early = await c.startWorker(2, 'early');
    await sleep(200);
    c.signal(early, 'SIGKILL');
    await c.waitFor((s) => s.workers.length === 2 && s.generation === 0, 'two registered workers');
    c.signal(w1, 'SIGKILL');
    await c.waitFor((s) => s.workers.length === 1 && s.generation === 0, 'the dead worker removed');
    await c.startWorker(1, 'replacement-1');
    await c.startWorker(2, 'replacement-2');
    const g = await c.waitFor((s) => s.generation >= 1, 'generation 1');
    t.diagnostic(`generation ${g.generation} started with ${g.workers.length} workers`);
    assert.equal(g.generation, 1);
    assert.ok(!w0.exited);
    await finished(c, coord);
    // Removed when its plan stream closed, or (killed before it subscribed) by the heartbeat timeout.
    assert.match(readFileSync(coord.log, 'utf8'), /worker left \(plan stream closed\)|declared dead/);
    await checkResult(t, outDir, true);
  });
});

test(
  'SIGSTOP past the heartbeat timeout, then SIGCONT: fenced, state discarded, rejoins',
  opts,
  async (t) => {
    await withCluster('sigstop', {}, async ({ c, outDir }) => {
      // 8 Mbit/s worker links slow the steps down so that the job outlasts the fault.
      for (let i = 0; i < 3; i++) await c.shape(i, { rate: '8mbit' });
      const { coord } = await start(c);
      await c.waitFor((s) => s.step >= 10, 'step 10');
      const frozen = c.workers()[1] as NetProc;
      const before = c.status as NetStatus;
      const t0 = Date.now();
      c.signal(frozen, 'SIGSTOP');
      const r = await recovered(c, before.generation, before.step, 2);
      const outMs = Date.now() - t0;
      await sleep(Math.max(0, HB_MS + 2000 - (Date.now() - t0)));
      c.signal(frozen, 'SIGCONT');
      const tCont = Date.now();
      await c.waitForLog(frozen, /discarding state/, 30000);
      const j = await c.waitFor((s) => s.workers.length === 3 && s.generation > r.generation, 'the rejoin');
      t.diagnostic(
        `frozen at step ${before.step}: out of the ring after ${outMs} ms (training again at step ${r.step}); SIGCONT after ${tCont - t0} ms; back in at step ${j.step} ${Date.now() - tCont} ms later`,
      );
      await finished(c, coord);
      assert.match(readFileSync(coord.log, 'utf8'), /declared dead \(heartbeat timeout\)/);
      const log = readFileSync(frozen.log, 'utf8');
      assert.match(log, /discarding state/);
      assert.match(log, /"received_state":true/, 'it got the job state back from a peer');
      await checkResult(t, outDir, false);
    });
  },
);

test('a host cut off (link down) and restored', opts, async (t) => {
  await withCluster('linkdown', {}, async ({ c, outDir }) => {
    // 8 Mbit/s worker links slow the steps down so that the job outlasts the fault.
    for (let i = 0; i < 3; i++) await c.shape(i, { rate: '8mbit' });
    const { coord } = await start(c);
    await c.waitFor((s) => s.step >= 10, 'step 10');
    const cut = c.workers()[2] as NetProc;
    const host = c.hostIndex(cut.ns);
    const before = c.status as NetStatus;
    const t0 = Date.now();
    c.link(host, false);
    const r = await recovered(c, before.generation, before.step, 2);
    const outMs = Date.now() - t0;
    await sleep(Math.max(0, HB_MS + 3000 - (Date.now() - t0)));
    c.link(host, true);
    const tUp = Date.now();
    const j = await c.waitFor(
      (s) => s.workers.length === 3 && s.generation > r.generation,
      'the rejoin',
      60000,
    );
    t.diagnostic(
      `link down at step ${before.step}: ring re-formed without it after ${outMs} ms (step ${r.step}); link up after ${tUp - t0} ms; back in at step ${j.step} ${Date.now() - tUp} ms later`,
    );
    await finished(c, coord);
    assert.match(readFileSync(cut.log, 'utf8'), /discarding state/);
    await checkResult(t, outDir, false);
  });
});

test('the coordinator killed and restarted on its run directory, links delayed', opts, async (t) => {
  await withCluster('coord-restart', { relays: true }, async ({ c, outDir }) => {
    await c.shape('coordinator', { delayMs: 20 });
    for (let i = 0; i < 3; i++) await c.shape(i, { delayMs: 5 });
    const { coord } = await start(c);
    await c.waitFor((s) => s.step >= 60, 'step 60');
    const before = c.status as NetStatus;
    const t0 = Date.now();
    c.signal(coord, 'SIGKILL');
    await coord.exit;
    await sleep(1000);
    const second = await c.startCoordinator('coordinator-2');
    const r = await c.waitFor(
      (s) => s.generation >= 1 && s.workers.length === 3 && s.step > before.step,
      'the workers back at work',
    );
    t.diagnostic(
      `coordinator killed at step ~${before.step}; restarted after 1 s; training again at step ${r.step} ${Date.now() - t0} ms after the kill`,
    );
    await finished(c, second);
    const discarded = c.procs.filter((p) => lines(p.log, /discarding state/).length > 0);
    assert.deepEqual(
      discarded.map((p) => p.name),
      [],
      'workers kept their state (adopted by the restarted coordinator)',
    );
    await checkResult(t, outDir, true);
  });
});

test('packet loss and delay on every link (1 %, 10 ms)', opts, async (t) => {
  await withCluster('lossy', { relays: true }, async ({ c, outDir }) => {
    for (const h of ['coordinator', 0, 1, 2] as const) await c.shape(h, { delayMs: 10, lossPct: 1 });
    const t0 = Date.now();
    const { coord } = await start(c);
    await finished(c, coord);
    const gens = lines(coord.log, /"msg":"new generation"/).length;
    t.diagnostic(
      `${STEPS} steps with 1 % loss and 10 ms delay in ${Date.now() - t0} ms; ${gens} generation(s)`,
    );
    assert.equal(gens, 1, 'no membership change');
    await checkResult(t, outDir, true);
  });
});

test(
  'disk full, then read-only run directory while checkpointing: one-line error, previous checkpoint intact, the job goes on',
  opts,
  async (t) => {
    const outDir = path.join(root, 'diskfull-run');
    await withCluster('diskfull', { outDir }, async ({ c }) => {
      c.mountTmpfs(outDir, '3m');
      const { coord } = await start(c);
      await c.waitForLog(
        coord,
        /"msg":"checkpoint written"[^\n]*"step":50|"step":50[^\n]*"msg":"checkpoint written"/,
      );
      // Fill the file system.
      const filler = path.join(outDir, 'filler');
      const fd = openSync(filler, 'w');
      const block = Buffer.alloc(64 * 1024, 1);
      try {
        for (;;) writeSync(fd, block);
      } catch (e) {
        assert.equal((e as NodeJS.ErrnoException).code, 'ENOSPC');
      } finally {
        closeSync(fd);
      }
      const full = await c.waitForLog(coord, /[^\n]*ckpt-100 not written[^\n]*/);
      const line = JSON.parse(full[0]) as { msg: string; level: number };
      t.diagnostic(`disk full: ${line.msg}`);
      assert.equal(line.level, 50, 'logged as an error');
      assert.match(line.msg, /ENOSPC/);
      const ck = await loadCheckpoint(path.join(outDir, 'ckpt-50'));
      assert.equal(ck.step, 50, 'ckpt-50 intact');
      assert.ok(!existsSync(path.join(outDir, 'ckpt-100')));
      assert.deepEqual(
        readdirSync(outDir).filter((n) => n.startsWith('.')),
        [],
        'no temp dirs left',
      );
      unlinkSync(filler);
      // Read-only for the final checkpoint: rank 0 retries it until the directory is writable again.
      c.remount(outDir, true);
      const ro = await c.waitForLog(coord, /[^\n]*ckpt-150 not written[^\n]*/);
      t.diagnostic(`read-only: ${(JSON.parse(ro[0]) as { msg: string }).msg}`);
      await sleep(1500);
      assert.equal(coord.exited, false, 'the coordinator waits for the final checkpoint');
      assert.equal((await loadCheckpoint(path.join(outDir, 'ckpt-50'))).step, 50);
      c.remount(outDir, false);
      await finished(c, coord);
      const retries = c.procs.flatMap((p) => lines(p.log, /final state not checkpointed yet/)).length;
      t.diagnostic(`final push retried ${retries} time(s) by rank 0`);
      assert.ok(retries >= 1);
      await checkResult(t, outDir, true);
    });
  },
);
