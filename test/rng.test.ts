import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Purpose, philox4x32, stream } from '../src/model/rng.js';
import { meanVar } from './helpers.js';

test('Philox4x32-10 matches the Random123 known-answer vectors', () => {
  const o = new Uint32Array(4);
  philox4x32(0, 0, 0, 0, 0, 0, o);
  assert.deepEqual([...o], [0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8]);
  const f = 0xffffffff;
  philox4x32(f, f, f, f, f, f, o);
  assert.deepEqual([...o], [0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd]);
  philox4x32(0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344, 0xa4093822, 0x299f31d0, o);
  assert.deepEqual([...o], [0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1]);
});

test('streams are pure functions of their key and differ across keys', () => {
  const a = stream(1, 2, 3, Purpose.noise).normals(new Float32Array(16));
  const b = stream(1, 2, 3, Purpose.noise).normals(new Float32Array(16));
  assert.deepEqual(a, b);
  for (const other of [
    stream(2, 2, 3, Purpose.noise),
    stream(1, 3, 3, Purpose.noise),
    stream(1, 2, 4, Purpose.noise),
    stream(1, 2, 3, Purpose.flip),
  ]) {
    assert.notDeepEqual(other.normals(new Float32Array(16)), a);
  }
  // Large steps and seeds are keyed exactly (no silent wrap-around).
  assert.notDeepEqual(stream(2 ** 40, 0, 0, 0).nextU32(), stream(0, 0, 0, 0).nextU32());
  assert.notEqual(stream(0, 2 ** 33, 0, 0).nextU32(), stream(0, 2 ** 33 + 1, 0, 0).nextU32());
  assert.throws(() => stream(-1, 0, 0, 0), /non-negative/);
});

test('normals have mean 0, variance 1; uniforms are in (0, 1); int is in range and unbiased', () => {
  const x = stream(7, 0, 0, Purpose.noise).normals(new Float32Array(200000));
  const { mean, variance } = meanVar(x);
  assert.ok(Math.abs(mean) < 0.01 && Math.abs(variance - 1) < 0.01, `${mean} ${variance}`);
  const s = stream(7, 0, 0, Purpose.timestep);
  const counts = new Array(7).fill(0);
  for (let i = 0; i < 70000; i++) {
    const u = s.uniform();
    assert.ok(u > 0 && u < 1);
    counts[s.int(7)]++;
  }
  for (const c of counts) assert.ok(Math.abs(c - 10000) < 500, `${counts}`);
});
