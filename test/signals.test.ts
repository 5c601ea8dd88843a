/**
 * Signals during a step (issue 13): Ctrl-C or SIGTERM sent while a step computes is acted on as
 * soon as that step is done — the step in progress may finish and is checkpointed, no further
 * step starts — for `ringdiff train` on each CPU backend, for `ringdiff launch` and for a plain
 * `ringdiff worker`. Real processes; the steps are made slow (about a second) by the batch size.
 */
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { performance } from 'node:perf_hooks';
import { listCheckpoints } from '../src/model/checkpoint.js';
import { registerCpuNative } from '../src/model/backend/native.js';
import { LocalCluster, spawnRingdiff, type Proc } from './cluster-harness.js';

const root = mkdtempSync(path.join(tmpdir(), 'ringdiff-signals-'));
process.on('exit', () => rmSync(root, { recursive: true, force: true }));

const native = registerCpuNative();

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
async function waitForStep(p: Proc, file: string, step: number, timeoutMs = 60000): Promise<void> {
  let exited = false;
  void p.exit.then(() => (exited = true));
  const end = Date.now() + timeoutMs;
  while (!stepsDone(file).includes(step)) {
    if (exited) throw new Error(`${p.name} exited before step ${step}; see ${p.log}`);
    if (Date.now() > end) throw new Error(`no step ${step} within ${timeoutMs} ms; see ${file}`);
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

test('ringdiff launch --workers 2: Ctrl-C (SIGINT) during a step stops with a checkpoint, exit 0', async (t) => {
  const name = 'launch';
  const p = spawnRingdiff(root, name, [
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

test('ringdiff worker, alone in its ring: SIGTERM during a step exits 143 without starting another', async (t) => {
  // A world of one: nothing in a step waits for the network, so only the turns of the event loop
  // between steps let the signal in. (The worker leaves at once, as before: a cooperative stop on
  // SIGTERM is another issue.)
  const name = 'worker';
  const c = new LocalCluster(root, 'run: { name: signals-worker }\n', [
    ...jobKeys(name, 'cpu'),
    'cluster.min_workers=1',
  ]);
  try {
    await c.startCoordinator();
    const w = c.startWorker('worker-0', ['--backend', 'cpu']);
    await waitForStep(w, w.log, 1);
    await new Promise((r) => setTimeout(r, 250));
    const inProgress = Math.max(...stepsDone(w.log)) + 1;
    const t0 = performance.now();
    w.child.kill('SIGTERM');
    const code = await w.exit;
    const seconds = (performance.now() - t0) / 1000;
    const logged = Math.max(...stepsDone(w.log));
    t.diagnostic(
      `SIGTERM during step ${inProgress}: exit ${code} after ${seconds.toFixed(1)} s, last step logged ${logged}`,
    );
    assert.equal(code, 143, `exit code; see ${w.log}`);
    assert.ok(logged <= inProgress, `step ${logged} ran after a signal during step ${inProgress}`);
    assert.ok(seconds < 15, `exit ${seconds.toFixed(1)} s after the signal`);
  } finally {
    await c.stop();
  }
});
