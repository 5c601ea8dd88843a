import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { cpuBackend } from './helpers.js';
import { loadConfig } from '../src/config/load.js';
import { closeJob, openJob } from '../src/job/job.js';
import { restoreSnapshot, snapshot } from '../src/job/snapshot.js';
import { trainStep } from '../src/job/step.js';
import { decodeSnapshot, encodeSnapshot } from '../src/job/transfer.js';
import { sortedNames } from '../src/model/params.js';

await cpuBackend();

const SETS = [
  'data.dataset=toy:8gaussians',
  'model.kind=mlp',
  'model.num_classes=0',
  'model.hidden=16',
  'model.time_embed_dim=16',
  'train.global_batch=8',
  'diffusion.timesteps=30',
  'diffusion.timestep_sampler=loss-second-moment',
  'diffusion.history_per_term=2',
];

test('a state snapshot moved through one buffer makes a fresh worker continue bit-identically', async () => {
  const dir = mkdtempSync(path.join(tmpdir(), 'ringdiff-transfer-'));
  try {
    const a = await openJob(
      loadConfig(undefined, [...SETS, `run.out_dir=${path.join(dir, 'a')}`, 'run.seed=5']),
    );
    for (let i = 0; i < 5; i++) await trainStep(a);
    const buf = encodeSnapshot(await snapshot(a));
    // A worker that starts from another seed and step receives the state and then matches exactly.
    const b = await openJob(
      loadConfig(undefined, [...SETS, `run.out_dir=${path.join(dir, 'b')}`, 'run.seed=5']),
    );
    await trainStep(b);
    restoreSnapshot(b, decodeSnapshot(buf, 'test'));
    assert.equal(b.state.step, 5);
    for (let i = 0; i < 3; i++) {
      await trainStep(a);
      await trainStep(b);
    }
    for (const k of ['params', 'ema', 'm', 'v'] as const) {
      for (const n of sortedNames(a.state[k]))
        assert.deepEqual(b.state[k].get(n)?.dataSync(), a.state[k].get(n)?.dataSync());
    }
    assert.deepEqual(b.sampler.state(), a.sampler.state());
    assert.throws(
      () => decodeSnapshot(buf.subarray(0, buf.length - 3), 'peer 2'),
      /peer 2: optimizer section .* overruns/,
    );
    assert.throws(() => decodeSnapshot(Buffer.from('nonsense'), 'peer 2'), /bad magic/);
    closeJob(a);
    closeJob(b);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
