/**
 * deploy/slurm/ringdiff.sbatch on a real one-node Slurm (test/slurm-harness.ts): a 2-worker job
 * run to the end; the time-limit path (`scancel --batch --signal=TERM`); plain `scancel` (SIGTERM
 * to every process at once, as preemption); `scontrol requeue`. Each stop must leave a checkpoint
 * of the step reached (nothing lost beyond the step in flight) and no process of the job, and
 * submitting again must finish with weights identical, bit for bit, to an undisturbed run.
 * Needs root, slurm-wlm and munge (`.ci/run` installs them); elsewhere it skips with the reason.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import { freePort } from '../src/util/net.js';
import { checkpointDiff } from './cluster-harness.js';
import { OneNodeSlurm, slurmUnavailable } from './slurm-harness.js';

const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const SCRIPT = path.join(REPO, 'deploy', 'slurm', 'ringdiff.sbatch');
const STEPS = 300;
// A job whose steps take some milliseconds, so that a signal lands mid-run.
const JOB = [
  'data.dataset=toy:8gaussians',
  'model.kind=mlp',
  'model.hidden=256',
  'train.global_batch=256',
  `train.steps=${STEPS}`,
  'train.checkpoint_every=100',
  'sample.count=0',
];

const skip = slurmUnavailable();
let slurm: OneNodeSlurm | null = null;
let root = '';
let reference = '';

before(async () => {
  if (skip) return;
  root = mkdtempSync(path.join(tmpdir(), 'ringdiff-slurm-'));
  slurm = await OneNodeSlurm.start(path.join(root, 'slurm'));
});

after(async () => {
  await slurm?.stop();
  if (root && !process.exitCode) rmSync(root, { recursive: true, force: true });
});

/** Submits the sbatch script for a run directory; the job id and the coordinator's port. */
async function submit(out: string, port?: number): Promise<{ id: number; port: number }> {
  const s = slurm as OneNodeSlurm;
  const p = port ?? (await freePort());
  const env = {
    RINGDIFF_BIN: `${process.execPath} ${path.join(REPO, 'bin', 'ringdiff.js')}`,
    RINGDIFF_PORT: String(p),
    RINGDIFF_METRICS: '',
  };
  const args = ['--nodes=1', '--ntasks-per-node=2', '--gpus-per-node=0', '--cpus-per-task=1'];
  args.push(
    `--output=${out}.slurm-%j.out`,
    SCRIPT,
    ...JOB.flatMap((k) => ['--set', k]),
    '--set',
    `run.out_dir=${out}`,
  );
  return { id: s.sbatch(args, env, root), port: p };
}

/** The newest step a worker logged. */
function stepNow(out: string): number {
  try {
    const m = [...readFileSync(path.join(out, 'logs', 'worker-0.log'), 'utf8').matchAll(/"step":(\d+)/g)];
    return m.length > 0 ? Number(m.at(-1)?.[1]) : 0;
  } catch {
    return 0;
  }
}

async function untilStep(out: string, step: number, timeoutMs = 120_000): Promise<number> {
  const until = Date.now() + timeoutMs;
  while (stepNow(out) < step) {
    if (Date.now() > until) assert.fail(`no step ${step} in ${out} after ${timeoutMs} ms`);
    await sleep(100);
  }
  return stepNow(out);
}

const checkpoints = (out: string): number[] =>
  readdirSync(out)
    .filter((f) => /^ckpt-\d+$/.test(f))
    .map((f) => Number(f.slice(5)))
    .sort((a, b) => a - b);

/** Process ids the job's processes logged (`"pid":N`), and which of them still run. */
function survivors(out: string): number[] {
  const pids = new Set<number>();
  for (const f of readdirSync(path.join(out, 'logs'))) {
    for (const m of readFileSync(path.join(out, 'logs', f), 'utf8').matchAll(/"pid":(\d+)/g))
      pids.add(Number(m[1]));
  }
  assert.ok(pids.size >= 3, `the coordinator and both workers logged their pids (${[...pids].join(', ')})`);
  return [...pids].filter((pid) => {
    try {
      process.kill(pid, 0);
      return true;
    } catch {
      return false;
    }
  });
}

async function portFree(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const srv = createServer();
    srv.once('error', () => resolve(false));
    srv.listen(port, '0.0.0.0', () => srv.close(() => resolve(true)));
  });
}

/** The job's final checkpoint equals the undisturbed run's, bit for bit. */
async function assertSameAsReference(out: string, what: string): Promise<void> {
  const d = await checkpointDiff(path.join(reference, `ckpt-${STEPS}`), path.join(out, `ckpt-${STEPS}`));
  assert.deepEqual(
    d,
    { model: 0, ema: 0, step: [STEPS, STEPS] },
    `${what}: final weights vs the undisturbed run`,
  );
}

test('sbatch runs a 2-worker job to the end', { skip: skip || false }, async () => {
  const s = slurm as OneNodeSlurm;
  reference = path.join(root, 'reference');
  const { id } = await submit(reference);
  const j = await s.waitFor(id, ['COMPLETED', 'FAILED', 'CANCELLED'], 180_000);
  assert.equal(j.state, 'COMPLETED', `${readFileSync(`${reference}.slurm-${id}.out`, 'utf8')}\n${s.logs()}`);
  assert.deepEqual(checkpoints(reference), [100, 200, STEPS]);
});

test(
  'the time limit (TERM to the batch script): a final checkpoint, then a resubmission resumes exactly',
  { skip: skip || false },
  async () => {
    const s = slurm as OneNodeSlurm;
    const out = path.join(root, 'batch-term');
    const { id } = await submit(out);
    const n = await untilStep(out, 130);
    s.run('scancel', ['--batch', '--signal=TERM', String(id)]);
    await s.waitFor(id, ['COMPLETED', 'CANCELLED', 'FAILED'], 60_000);
    const last = checkpoints(out).at(-1) ?? 0;
    assert.ok(last >= n - 1 && last < STEPS, `final checkpoint ${last}, signalled at step ${n}`);
    const again = await submit(out);
    assert.equal(
      (await s.waitFor(again.id, ['COMPLETED', 'FAILED', 'CANCELLED'], 180_000)).state,
      'COMPLETED',
    );
    await assertSameAsReference(out, 'resumed after the time-limit stop');
  },
);

test(
  'plain scancel: a checkpoint of the step reached, no process left, the port free; resubmitting resumes exactly',
  { skip: skip || false },
  async (t) => {
    const s = slurm as OneNodeSlurm;
    const out = path.join(root, 'scancel');
    const { id, port } = await submit(out);
    const n = await untilStep(out, 130);
    const t0 = Date.now();
    s.run('scancel', [String(id)]);
    await s.waitFor(id, ['CANCELLED', 'COMPLETED', 'FAILED'], 60_000);
    const last = checkpoints(out).at(-1) ?? 0;
    // Nothing lost beyond the step in flight: the checkpoint is of step n − 1 at worst.
    t.diagnostic(`scancel at step ${n}: final checkpoint ${last}, job ended ${Date.now() - t0} ms later`);
    assert.ok(last >= n - 1 && last < STEPS, `final checkpoint ${last}, cancelled at step ${n}`);
    // Every process of the job is gone (Slurm reports the job cancelled when its batch step ends).
    const until = Date.now() + 10_000;
    while (survivors(out).length > 0 && Date.now() < until) await sleep(200);
    assert.deepEqual(survivors(out), [], 'processes of the job still running');
    assert.ok(await portFree(port), `the coordinator's port ${port} is free`);
    assert.ok(Date.now() - t0 < 30_000, 'done within KillWait');
    const again = await submit(out, port);
    assert.equal(
      (await s.waitFor(again.id, ['COMPLETED', 'FAILED', 'CANCELLED'], 180_000)).state,
      'COMPLETED',
    );
    await assertSameAsReference(out, 'resumed after scancel');
  },
);

test(
  'scontrol requeue: the job checkpoints, starts again and resumes exactly',
  { skip: skip || false },
  async (t) => {
    const s = slurm as OneNodeSlurm;
    const out = path.join(root, 'requeue');
    const { id } = await submit(out);
    const n = await untilStep(out, 130);
    s.run('scontrol', ['requeue', String(id)]);
    const requeuedAt = Date.now();
    // Slurm holds a requeued job back for a while (its begin time moves on): start it now. But not
    // within the second of the requeue: slurmd revokes the job's credential then and compares
    // credential times in whole seconds, so a restart in the same second is killed as "Job
    // credential revoked" (seen once the job's stop got fast enough).
    await s.waitFor(id, ['PENDING'], 60_000);
    await sleep(Math.max(0, requeuedAt + 2000 - Date.now()));
    s.run('scontrol', ['update', `JobId=${id}`, 'StartTime=now']);
    const j = await s.waitFor(id, ['COMPLETED', 'FAILED', 'CANCELLED'], 180_000);
    assert.equal(j.state, 'COMPLETED', readFileSync(`${out}.slurm-${id}.out`, 'utf8'));
    assert.equal(j.restarts, 1, 'started twice');
    const resumed =
      readFileSync(path.join(out, 'logs', 'coordinator.log'), 'utf8').match(/"resume_step":-?\d+/g) ?? [];
    assert.equal(resumed.length, 2, 'two coordinator starts');
    const second = Number(resumed[1]?.split(':')[1]);
    t.diagnostic(`requeue at step ${n}: the second start resumed from step ${second}`);
    assert.ok(second >= n - 1, `the second start resumed from step ${second}, requeued at step ${n}`);
    assert.ok(existsSync(path.join(out, `ckpt-${STEPS}`)));
    await assertSameAsReference(out, 'resumed after requeue');
  },
);
