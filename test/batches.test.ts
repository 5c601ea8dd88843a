import { test } from 'node:test';
import assert from 'node:assert/strict';
import { GlobalBatches, epochPermutation } from '../src/data/batches.js';
import { toyDataset, EIGHT_GAUSSIAN_CENTRES } from '../src/data/toy.js';

test('epoch permutations are permutations, differ by epoch and seed, and are reproducible', () => {
  const p = epochPermutation(1000, 1, 0);
  assert.deepEqual(
    [...p].sort((a, b) => a - b),
    Array.from({ length: 1000 }, (_, i) => i),
  );
  assert.deepEqual(epochPermutation(1000, 1, 0), p);
  assert.notDeepEqual(epochPermutation(1000, 1, 1), p);
  assert.notDeepEqual(epochPermutation(1000, 2, 0), p);
});

test('drop_last: each epoch visits floor(N/B)·B distinct examples; shards of a batch are its slices', () => {
  const g = new GlobalBatches(103, 10, 5, true);
  assert.equal(g.batchesPerEpoch, 10);
  for (const epoch of [0, 1]) {
    const seen = new Set<number>();
    for (let s = epoch * 10; s < epoch * 10 + 10; s++) for (const i of g.indices(s)) seen.add(i);
    assert.equal(seen.size, 100);
  }
  const whole = [...g.indices(13)];
  assert.deepEqual([...g.indices(13, 0, 4), ...g.indices(13, 4, 10)], whole);
  assert.deepEqual(g.cursor(13), { epoch: 1, position: 3, step: 13 });
  assert.throws(() => new GlobalBatches(5, 10, 0, true), /global_batch/);
});

test('wrap: the tail of an epoch continues into the next; every example once per epoch', () => {
  const g = new GlobalBatches(25, 10, 5, false);
  const stream = [0, 1, 2, 3, 4].flatMap((s) => [...g.indices(s)]);
  assert.deepEqual(
    [...stream.slice(0, 25)].sort((a, b) => a - b),
    Array.from({ length: 25 }, (_, i) => i),
  );
  assert.deepEqual(
    [...stream.slice(25, 50)].sort((a, b) => a - b),
    Array.from({ length: 25 }, (_, i) => i),
  );
  assert.deepEqual(g.cursor(3), { epoch: 1, position: 5, step: 3 });
});

test('toy:8gaussians points lie near their centres and are a pure function of the index', () => {
  const d = toyDataset('8gaussians', 5000, 7);
  let far = 0;
  for (let i = 0; i < 5000; i++) {
    const { x, label } = d.get(i);
    const c = EIGHT_GAUSSIAN_CENTRES[label] as readonly [number, number];
    if (Math.hypot((x[0] as number) - c[0], (x[1] as number) - c[1]) > 0.4) far++;
  }
  assert.ok(far < 5, `${far} points beyond 4σ`);
  assert.deepEqual(d.get(17), d.get(17));
  assert.throws(() => d.get(5000), /out of range/);
  assert.throws(() => toyDataset('moons', 10, 0), /unknown toy dataset/);
  const roll = toyDataset('swissroll', 100, 0);
  assert.equal(roll.get(3).x.length, 2);
});
