/**
 * Generation start over real ZeroMQ rings: a rank that missed the commit of the last step rolls
 * forward from a peer's reduced buffer, and a joining rank receives the whole state; afterwards
 * every rank is bit-identical to the ranks that never stopped.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { cpuBackend } from './helpers.js';
import { loadConfig } from '../src/config/load.js';
import { closeJob, loadShard, openJob, type Job } from '../src/job/job.js';
import { restoreSnapshot, snapshot } from '../src/job/snapshot.js';
import { fusedStep } from '../src/job/step.js';
import { syncGeneration, type Kept } from '../src/worker/sync.js';
import { shardPlan } from '../src/data/shard.js';
import { Ring } from '../src/allreduce/ring.js';
import { sortedNames } from '../src/model/params.js';

await cpuBackend();

const SETS = [
  'data.dataset=toy:8gaussians',
  'model.kind=mlp',
  'model.num_classes=0',
  'model.hidden=16',
  'model.time_embed_dim=16',
  'train.global_batch=12',
  'diffusion.timesteps=30',
  'diffusion.timestep_sampler=loss-second-moment',
  'diffusion.history_per_term=1',
];

async function rings(n: number, generation: number, port: number): Promise<Ring[]> {
  const addr = (r: number) => `tcp://127.0.0.1:${port + r}`;
  return Promise.all(
    Array.from({ length: n }, (_, r) =>
      Ring.open({
        jobId: 'sync',
        rank: r,
        worldSize: n,
        generation,
        bindAddress: addr(r),
        successorAddress: addr((r + 1) % n),
        timeoutMs: 20000,
      }),
    ),
  );
}

/** One step on every job over `ring`s; returns what each rank keeps. */
async function step(jobs: Job[], rs: Ring[]): Promise<Kept[]> {
  const plan = shardPlan(jobs[0]?.cfg.train.global_batch as number, jobs.length);
  return Promise.all(
    jobs.map(async (job, r) => {
      const s = job.state.step;
      const range = plan[r] as { from: number; to: number };
      const rep = await fusedStep(job, loadShard(job, s, range.from, range.to), (b) =>
        (rs[r] as Ring).allReduce(b),
      );
      return { step: s, reduced: rep.reduced };
    }),
  );
}

function assertSameState(a: Job, b: Job, what: string): void {
  assert.equal(b.state.step, a.state.step, `${what}: step`);
  for (const k of ['params', 'ema', 'm', 'v'] as const) {
    for (const n of sortedNames(a.state[k])) {
      assert.deepEqual(b.state[k].get(n)?.dataSync(), a.state[k].get(n)?.dataSync(), `${what}: ${k} ${n}`);
    }
  }
  assert.deepEqual(b.sampler.state(), a.sampler.state(), `${what}: sampler table`);
}

test('roll forward of a missed commit, and a joiner receiving the state, leave every rank identical', async () => {
  const dir = mkdtempSync(path.join(tmpdir(), 'ringdiff-sync-'));
  const open = (name: string) =>
    openJob(loadConfig(undefined, [...SETS, `run.out_dir=${path.join(dir, name)}`]));
  const jobs = [await open('a'), await open('b'), await open('c')];
  const g1 = await rings(3, 1, 23300);
  try {
    let kept: Kept[] = [];
    for (let i = 0; i < 3; i++) kept = await step(jobs, g1);
    // Step 3: rank 2 takes part in the all-reduce but dies before committing (its state rewinds).
    const before = await snapshot(jobs[2] as Job);
    kept = await step(jobs, g1);
    restoreSnapshot(jobs[2] as Job, before);
    assert.equal(jobs[2]?.state.step, 3);
    assert.equal(jobs[0]?.state.step, 4);
    await Promise.all(g1.map((r) => r.close()));

    // Generation 2: ranks 0–2 again plus a fresh joiner at step 0.
    const joiner = await open('d');
    const all = [...jobs, joiner];
    const g2 = await rings(4, 2, 23310);
    try {
      const keptBy: (Kept | null)[] = [kept[0] ?? null, kept[1] ?? null, null, null];
      const res = await Promise.all(
        all.map((job, r) => syncGeneration(job, g2[r] as Ring, keptBy[r] ?? null)),
      );
      assert.deepEqual(
        res.map((x) => [x.step, x.root, x.rolledForward, x.receivedState]),
        [
          [4, 0, false, false],
          [4, 0, false, false],
          [4, 0, true, false],
          [4, 0, false, true],
        ],
      );
      for (const r of [1, 2, 3]) assertSameState(all[0] as Job, all[r] as Job, `rank ${r} after sync`);
      // And they keep training in lockstep.
      await step(all, g2);
      for (const r of [1, 2, 3]) assertSameState(all[0] as Job, all[r] as Job, `rank ${r} after a step`);
    } finally {
      await Promise.all(g2.map((r) => r.close()));
      closeJob(joiner);
    }
  } finally {
    jobs.forEach(closeJob);
    rmSync(dir, { recursive: true, force: true });
  }
});
