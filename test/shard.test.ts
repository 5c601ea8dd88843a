import { test } from 'node:test';
import assert from 'node:assert/strict';
import { shardPlan } from '../src/data/shard.js';
import { GlobalBatches } from '../src/data/batches.js';
import { Prefetcher, readShard } from '../src/data/prefetch.js';
import { loadConfig } from '../src/config/load.js';
import { toyDataset } from '../src/data/toy.js';
import { SLOW_MS } from './fixtures/slow-dataset.js';

test('shard plans: contiguous, sizes differ by ≤ 1, union is the batch, for world sizes 1…8', () => {
  for (const B of [0, 1, 5, 7, 32, 33]) {
    for (let W = 1; W <= 8; W++) {
      const plan = shardPlan(B, W);
      assert.equal(plan.length, W);
      let next = 0;
      for (const r of plan) {
        assert.equal(r.from, next);
        next = r.to;
      }
      assert.equal(next, B);
      const sizes = plan.map((r) => r.to - r.from);
      assert.ok(Math.max(...sizes) - Math.min(...sizes) <= 1);
    }
  }
  assert.throws(() => shardPlan(4, 0), /world size/);
});

test('changing the world size at every step loses and repeats nothing over an epoch', () => {
  const N = 240;
  const B = 24;
  const g = new GlobalBatches(N, B, 3, true);
  for (const worlds of [
    [1, 2, 3, 4, 5, 6, 7, 8, 3, 2],
    [7, 7, 1, 8, 2, 5, 5, 3, 6, 4],
  ]) {
    const seen: number[] = [];
    worlds.forEach((W, step) => {
      const whole = [...g.indices(step)];
      const union = shardPlan(B, W).flatMap((r) => [...g.indices(step, r.from, r.to)]);
      assert.deepEqual(union, whole, `step ${step}, world ${W}`);
      seen.push(...union);
    });
    assert.equal(seen.length, N);
    assert.equal(new Set(seen).size, N);
  }
});

test('random flip is drawn per example position, independent of the sharding', () => {
  const data = loadConfig(undefined, ['data.random_flip=true']).data;
  // 2-D toy data is never flipped; check the shard/position keying on the toy set.
  const ds = toyDataset('8gaussians', 100, 0);
  const init = { data, seed: 4, globalBatch: 10 };
  const batches = () => new GlobalBatches(ds.size, 10, 4, data.drop_last);
  const whole = readShard(ds, init, { step: 2, from: 0, to: 10 }, batches());
  const a = readShard(ds, init, { step: 2, from: 0, to: 4 }, batches());
  const b = readShard(ds, init, { step: 2, from: 4, to: 10 }, batches());
  assert.deepEqual([...a.x0, ...b.x0], [...whole.x0]);
});

test('prefetch overlaps: with a slow reader the step does not wait once warmed up', async () => {
  const data = loadConfig(undefined, ['data.dataset=toy:8gaussians', 'data.size=4096']).data;
  const B = 16;
  const readMs = B * SLOW_MS;
  const loader = new Prefetcher({
    data,
    seed: 1,
    globalBatch: B,
    module: new URL('./fixtures/slow-dataset.js', import.meta.url).href,
  });
  try {
    const waits: number[] = [];
    for (let step = 0; step < 8; step++) {
      const shard = await loader.get(step, 0, B);
      assert.equal(shard.n, B);
      waits.push(loader.lastWaitMs);
      loader.request(step + 1, 0, B);
      // A "training step" that takes longer than reading a batch.
      const end = Date.now() + 8 * readMs;
      while (Date.now() < end) {
        // compute
      }
    }
    const warm = waits.slice(2);
    assert.ok((waits[0] as number) >= readMs * 0.8, `first batch is read on demand: waited ${waits[0]} ms`);
    assert.ok(
      Math.max(...warm) < readMs / 2,
      `warm waits ${warm.map((w) => w.toFixed(1)).join(', ')} ms vs read ${readMs} ms`,
    );
  } finally {
    await loader.close();
  }
});
