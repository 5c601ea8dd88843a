/**
 * World-size invariance of the fused step over real ZeroMQ rings: the same job run by 1, 2 and 3
 * workers (each with its own state and its own ring socket, in one process) ends with the same
 * weights and EMA, up to float summation order.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { cpuBackend, relErr } from './helpers.js';
import { loadConfig } from '../src/config/load.js';
import { closeJob, loadShard, openJob, type Job } from '../src/job/job.js';
import { fusedStep } from '../src/job/step.js';
import { shardPlan } from '../src/data/shard.js';
import { Ring } from '../src/allreduce/ring.js';
import { sortedNames } from '../src/model/params.js';

await cpuBackend();

const STEPS = 8;
const SETS = [
  'data.dataset=toy:8gaussians',
  'model.kind=mlp',
  'model.num_classes=0',
  'model.hidden=32',
  'model.time_embed_dim=16',
  'model.num_classes=0',
  'train.global_batch=21',
  'diffusion.timesteps=40',
  'diffusion.timestep_sampler=loss-second-moment',
  'diffusion.history_per_term=1',
  'train.warmup_steps=2',
  'train.lr=0.01',
];

/** Trains STEPS steps with `world` workers; returns rank 0's job (all ranks hold the same state). */
async function run(world: number, dir: string, port: number): Promise<Job> {
  const jobs = await Promise.all(
    Array.from({ length: world }, (_, r) =>
      openJob(loadConfig(undefined, [...SETS, `run.out_dir=${path.join(dir, `w${world}r${r}`)}`])),
    ),
  );
  const addr = (r: number) => `tcp://127.0.0.1:${port + r}`;
  const rings = await Promise.all(
    jobs.map((_, r) =>
      Ring.open({
        jobId: 'inv',
        rank: r,
        worldSize: world,
        generation: 1,
        bindAddress: addr(r),
        successorAddress: addr((r + 1) % world),
        timeoutMs: 20000,
      }),
    ),
  );
  try {
    const B = jobs[0]?.cfg.train.global_batch as number;
    const plan = shardPlan(B, world);
    for (let s = 0; s < STEPS; s++) {
      // Each worker computes its gradient (synchronously), then all wait in the all-reduce together.
      await Promise.all(
        jobs.map((job, r) => {
          const range = plan[r] as { from: number; to: number };
          const shard = loadShard(job, s, range.from, range.to);
          return fusedStep(job, shard, (buf) => (rings[r] as Ring).allReduce(buf));
        }),
      );
    }
    const [first, ...rest] = jobs as [Job, ...Job[]];
    // Inside one world the ring makes every rank bit-identical.
    for (const other of rest) {
      for (const n of sortedNames(first.state.params)) {
        assert.deepEqual(other.state.params.get(n)?.dataSync(), first.state.params.get(n)?.dataSync());
      }
    }
    rest.forEach(closeJob);
    return first;
  } finally {
    await Promise.all(rings.map((r) => r.close()));
  }
}

test('1, 2 and 3 workers end with the same weights and EMA (fused ring step)', async () => {
  const dir = mkdtempSync(path.join(tmpdir(), 'ringdiff-inv-'));
  try {
    const one = await run(1, dir, 23100);
    // The importance table warmed up during the run, so the later steps drew from a non-uniform p.
    assert.ok(one.sampler.state().counts?.every((c) => c === 1));
    for (const world of [2, 3]) {
      const many = await run(world, dir, 23100 + 10 * world);
      let worst = 0;
      for (const k of ['params', 'ema'] as const) {
        for (const n of sortedNames(one.state[k])) {
          const e = relErr(
            many.state[k].get(n)?.dataSync() as Float32Array,
            one.state[k].get(n)?.dataSync() as Float32Array,
          );
          worst = Math.max(worst, e);
        }
      }
      assert.deepEqual(many.sampler.state().counts, one.sampler.state().counts);
      console.log(
        `world ${world}: max relative difference of weights/EMA vs 1 worker after ${STEPS} steps: ${worst.toExponential(2)}`,
      );
      assert.ok(worst < 1e-4, `world ${world}: relative difference ${worst}`);
      closeJob(many);
    }
    closeJob(one);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
