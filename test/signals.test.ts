/**
 * Signals during a step (issues 13 and 21): Ctrl-C or SIGTERM sent while a step computes is acted
 * on as soon as that step is done — the step in progress may finish and is checkpointed, no
 * further step starts — for `ringdiff train` on each CPU backend, for `ringdiff launch` (Ctrl-C,
 * and SIGTERM to every process at once) and for `ringdiff worker` (cooperative: a worker the
 * others cannot do without stops the job with a checkpoint; one they can do without is released).
 * Real processes; the steps are made slow (about a second) by the batch size.
 */
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { performance } from 'node:perf_hooks';
import { listCheckpoints } from '../src/model/checkpoint.js';
import { registerCpuNative } from '../src/model/backend/native.js';
import { LocalCluster, checkpointDiff, spawnRingdiff, type Proc } from './cluster-harness.js';

const root = mkdtempSync(path.join(tmpdir(), 'ringdiff-signals-'));
process.on(
  'exit',
  () => process.env.RINGDIFF_KEEP_TEST_DIR || rmSync(root, { recursive: true, force: true }),
);

const native = registerCpuNative();

/** A directory of its own for one test's processes: their logs must not meet another test's. */
function freshDir(name: string): string {
  const dir = path.join(root, `cluster-${name}`);
  mkdirSync(dir, { recursive: true });
  return dir;
}

/**
 * A 2-D job whose step takes about a second on a loaded 2-core machine: a batch of 4096 through a
 * narrow model on the pure-JS `cpu` backend (narrow, so that the samples of the run report, drawn
 * after the stop, take a second too), a wide one on `cpu-native`. Few steps, so that a signal that
 * is not acted on shows as a run that went on to its end.
 */
function jobKeys(name: string, backend: 'cpu' | 'cpu-native'): string[] {
  return [
    `run.out_dir=${path.join(root, name)}`,
    'data.dataset=toy:8gaussians',
    'data.size=8192',
    `model.hidden=${backend === 'cpu' ? 64 : 1024}`,
    'train.global_batch=4096',
    'model.kind=mlp',
    'model.num_classes=0',
    'model.layers=3',
    'diffusion.timesteps=100',
    'train.steps=6',
    'train.log_every=1',
    'train.checkpoint_every=0',
    'sample.count=0',
  ];
}

const job = (name: string, backend: 'cpu' | 'cpu-native') =>
  jobKeys(name, backend).flatMap((s) => ['--set', s]);

/** The JSON lines of a log file written so far. */
function logLines(file: string): Array<Record<string, unknown>> {
  if (!existsSync(file)) return [];
  const out: Array<Record<string, unknown>> = [];
  for (const line of readFileSync(file, 'utf8').split('\n')) {
    if (!line.startsWith('{')) continue;
    try {
      out.push(JSON.parse(line) as Record<string, unknown>);
    } catch {
      // a line being written
    }
  }
  return out;
}

/** Steps a log reports as done (its `step` lines). */
function stepsDone(file: string): number[] {
  return logLines(file)
    .filter((l) => l.msg === 'step')
    .map((l) => Number(l.step));
}

/** Waits until `file` reports step `step` done; fails if `p` exits first or it takes too long. */
async function waitForStep(
  p: Proc,
  file: string,
  step: number | ((done: number[]) => boolean),
  timeoutMs = 60000,
): Promise<void> {
  let exited = false;
  void p.exit.then(() => (exited = true));
  const end = Date.now() + timeoutMs;
  const reached = typeof step === 'number' ? (done: number[]) => done.includes(step) : step;
  while (!reached(stepsDone(file))) {
    if (exited) throw new Error(`${p.name} exited before step ${String(step)}; see ${p.log}`);
    if (Date.now() > end) throw new Error(`no step ${String(step)} within ${timeoutMs} ms; see ${file}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/**
 * Sends `sig` to `p` in the middle of the step after step 1 (which warms up), waits for the exit and
 * checks: the newest checkpoint is of the step in progress at the signal or the one before it, no
 * later step was logged, the exit code is `code`, and the exit came within `maxSeconds`. Resolves
 * with the time of the exit (Date.now()).
 */
async function signalMidStep(
  t: TestContext,
  p: Proc,
  stepLog: string,
  outDir: string,
  sig: NodeJS.Signals,
  code: number,
  maxSeconds: number,
): Promise<number> {
  await waitForStep(p, stepLog, 1);
  // A moment into the next step (steps take about a second).
  await new Promise((r) => setTimeout(r, 250));
  const inProgress = Math.max(...stepsDone(stepLog)) + 1;
  const t0 = performance.now();
  p.child.kill(sig);
  const exitCode = await p.exit;
  const exitedAt = Date.now();
  const seconds = (performance.now() - t0) / 1000;
  const last = (await listCheckpoints(outDir)).at(-1)?.step;
  const logged = Math.max(...stepsDone(stepLog));
  t.diagnostic(
    `${sig} during step ${inProgress}: exit ${exitCode} after ${seconds.toFixed(1)} s, final checkpoint ${last}, last step logged ${logged}`,
  );
  assert.equal(exitCode, code, `exit code; see ${p.log}`);
  assert.ok(last !== undefined, `a checkpoint was written; see ${p.log}`);
  assert.ok(
    last >= inProgress - 1 && last <= inProgress,
    `final checkpoint at step ${last}, signal during step ${inProgress}; see ${p.log}`,
  );
  assert.ok(logged <= inProgress, `step ${logged} ran after a signal during step ${inProgress}`);
  assert.ok(seconds < maxSeconds, `exit ${seconds.toFixed(1)} s after the signal (limit ${maxSeconds} s)`);
  return exitedAt;
}

for (const backend of ['cpu', 'cpu-native'] as const) {
  test(`ringdiff train --backend ${backend}: SIGTERM during a step stops after it (checkpoint, exit 130)`, async (t) => {
    if (backend === 'cpu-native' && !native.ok) {
      t.skip(`cpu-native unavailable: ${native.reason}`);
      return;
    }
    const name = `train-${backend}`;
    const p = spawnRingdiff(root, name, ['train', '--backend', backend, ...job(name, backend)]);
    try {
      // Not a terminal: the JSON log is the process's output.
      await signalMidStep(t, p, p.log, path.join(root, name), 'SIGTERM', 130, 15);
    } finally {
      p.child.kill('SIGKILL');
    }
  });
}

/** `ringdiff launch` of 2 cpu workers with about a second per step. */
function launch2(name: string): Proc {
  return spawnRingdiff(root, name, [
    'launch',
    '--no-progress',
    '--workers',
    '2',
    '--backend',
    'cpu',
    ...job(name, 'cpu'),
    // Two workers: each computes half of the batch, so the same step time needs twice the batch.
    '--set',
    'train.global_batch=8192',
  ]);
}

test('ringdiff launch --workers 2: Ctrl-C (SIGINT) during a step stops with a checkpoint, exit 0', async (t) => {
  const name = 'launch';
  const p = launch2(name);
  try {
    const logs = path.join(root, name, 'logs');
    const exitedAt = await signalMidStep(
      t,
      p,
      path.join(logs, 'worker-0.log'),
      path.join(root, name),
      'SIGINT',
      0,
      30,
    );
    for (const f of ['coordinator', 'worker-0', 'worker-1']) {
      const lines = logLines(path.join(logs, `${f}.log`));
      assert.ok(
        lines.some((l) => l.msg === 'stopped' || l.msg === 'worker done'),
        `${f} stopped cleanly`,
      );
    }
    // launch follows its coordinator out at once (a pending 10 s timer of its own used to hold it).
    const stopped = logLines(path.join(logs, 'coordinator.log')).find((l) => l.msg === 'stopped');
    const lag = (exitedAt - Number(stopped?.time)) / 1000;
    t.diagnostic(`launch exited ${lag.toFixed(1)} s after its coordinator's 'stopped'`);
    assert.ok(lag < 5, `launch exited ${lag.toFixed(1)} s after its coordinator stopped`);
  } finally {
    p.child.kill('SIGKILL');
  }
});

test('ringdiff worker, alone in its ring: SIGTERM stops the job with a checkpoint of the step reached', async (t) => {
  // A world of one (min_workers 1): the others cannot go on without it, so its Leave makes the
  // coordinator stop the job — STOP, the final state pushed by this worker, the checkpoint — and
  // the worker exits 0. (Nothing in such a step waits for the network: only the event loop's
  // turns between steps let the signal in.)
  const name = 'worker';
  const c = new LocalCluster(freshDir('alone'), 'run: { name: signals-worker }\n', [
    ...jobKeys(name, 'cpu'),
    'cluster.min_workers=1',
  ]);
  try {
    const coord = await c.startCoordinator();
    const w = c.startWorker('worker-0', ['--backend', 'cpu']);
    await signalMidStep(t, w, w.log, path.join(root, name), 'SIGTERM', 0, 15);
    assert.equal(await coord.exit, 0, `the coordinator stopped; see ${coord.log}`);
    assert.ok(
      logLines(coord.log).some((l) => String(l.msg).startsWith('a worker is leaving')),
      'the coordinator stopped the job because of the leaving worker',
    );
  } finally {
    await c.stop();
  }
});

test('one of two workers gets SIGTERM: released at once (exit 143), the other finishes the job', async (t) => {
  const name = 'release';
  const c = new LocalCluster(freshDir('release'), 'run: { name: signals-release }\n', [
    ...jobKeys(name, 'cpu'),
    'train.global_batch=8192',
    'train.steps=5',
    'cluster.min_workers=1',
  ]);
  try {
    const coord = await c.startCoordinator();
    const a = c.startWorker('worker-0', ['--backend', 'cpu']);
    const b = c.startWorker('worker-1', ['--backend', 'cpu']);
    // min_workers 1: the first worker up may train alone for a step or two before the other joins
    // (rolled forward, without logging those steps): wait for the first step worker-0 logs itself.
    await waitForStep(a, a.log, (done) => done.length > 0);
    const t0 = performance.now();
    a.child.kill('SIGTERM');
    assert.equal(await a.exit, 143, `released worker; see ${a.log}`);
    const seconds = (performance.now() - t0) / 1000;
    t.diagnostic(`released ${seconds.toFixed(1)} s after SIGTERM`);
    assert.ok(seconds < 15, `released ${seconds.toFixed(1)} s after the signal`);
    assert.equal(await b.exit, 0, `the other worker finished the job; see ${b.log}`);
    assert.equal(await coord.exit, 0);
    assert.equal((await listCheckpoints(path.join(root, name))).at(-1)?.step, 5, 'all steps done');
    assert.ok(logLines(coord.log).some((l) => l.msg === 'worker leaving: re-forming the ring without it'));
  } finally {
    await c.stop();
  }
});

test('SIGTERM to every process of a launch at once (systemd, Kubernetes): a checkpoint of the step reached, nobody left, and a second launch resumes exactly', async (t) => {
  const launch = launch2;
  const undisturbed = launch('undisturbed');
  const p = launch('all-term');
  const logs = path.join(root, 'all-term', 'logs');
  try {
    await waitForStep(p, path.join(logs, 'worker-0.log'), 1);
    await new Promise((r) => setTimeout(r, 250));
    const inProgress = Math.max(...stepsDone(path.join(logs, 'worker-0.log'))) + 1;
    const pids = [p.child.pid as number];
    for (const f of ['coordinator', 'worker-0', 'worker-1'])
      pids.push(Number(logLines(path.join(logs, `${f}.log`)).find((l) => l.pid !== undefined)?.pid));
    assert.ok(
      pids.every((x) => Number.isInteger(x) && x > 0),
      `pids ${pids.join(', ')}`,
    );
    for (const pid of pids) process.kill(pid, 'SIGTERM');
    assert.equal(await p.exit, 0, `launch; see ${p.log}`);
    const last = (await listCheckpoints(path.join(root, 'all-term'))).at(-1)?.step ?? -1;
    t.diagnostic(
      `SIGTERM to all ${pids.length} processes during step ${inProgress}: final checkpoint ${last}`,
    );
    assert.ok(
      last >= inProgress - 1 && last <= inProgress,
      `checkpoint ${last}, signal in step ${inProgress}`,
    );
    const alive = pids.filter((pid) => {
      try {
        process.kill(pid, 0);
        return true;
      } catch {
        return false;
      }
    });
    assert.deepEqual(alive, [], 'no process of the job is left');
    // The same run directory: resumes and finishes; the result equals an undisturbed run's.
    const again = launch('all-term');
    assert.equal(await again.exit, 0, `second launch; see ${again.log}`);
    assert.equal(await undisturbed.exit, 0);
    const d = await checkpointDiff(
      path.join(root, 'undisturbed', 'ckpt-6'),
      path.join(root, 'all-term', 'ckpt-6'),
    );
    assert.deepEqual(d, { model: 0, ema: 0, step: [6, 6] }, 'bit-identical to the undisturbed run');
  } finally {
    p.child.kill('SIGKILL');
    undisturbed.child.kill('SIGKILL');
  }
});
