import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Membership, ringOrder, type WorkerInfo } from '../src/coordinator/membership.js';

const info = (host: string): WorkerInfo => ({
  host,
  backend: 'cpu',
  device: 'cpu',
  ringEndpoint: `tcp://127.0.0.1:0`,
  curvePublicKey: '',
  pid: 1,
  hasData: true,
  committedStep: -1,
  weightsChecksum: '',
});

function make(min = 2, max = 4, timeout = 1000) {
  let n = 0;
  return new Membership({ minWorkers: min, maxWorkers: max, heartbeatTimeoutMs: timeout }, () => `w${n++}`);
}

test('a restarted coordinator numbers its generations above those its workers report', () => {
  const m = make(2);
  m.noteGeneration(7);
  m.register(info('a'), 0);
  m.noteGeneration(9);
  m.noteGeneration(3);
  m.register(info('b'), 0);
  assert.equal(m.nextGeneration().number, 10);
  m.noteGeneration(4); // a worker of the old coordinator, late: no effect
  assert.equal(m.nextGeneration().number, 11);
});

test('rendezvous waits for min_workers, then forms generation 1 with every live worker', () => {
  const m = make(2);
  m.register(info('a'), 0);
  assert.equal(m.needsNewGeneration(), false);
  m.register(info('b'), 0);
  assert.equal(m.needsNewGeneration(), true);
  const g = m.nextGeneration();
  assert.equal(g.number, 1);
  assert.deepEqual(
    g.ring.map((x) => x.id),
    ['w0', 'w1'],
  );
  assert.equal(m.needsNewGeneration(), false);
});

test('max_workers is enforced', () => {
  const m = make(1, 2);
  m.register(info('a'), 0);
  m.register(info('a'), 0);
  assert.throws(() => m.register(info('a'), 0), /max_workers = 2/);
});

test('a silent worker expires after the heartbeat timeout; the ring is broken; a new generation forms', () => {
  const m = make(2, 4, 1000);
  m.register(info('a'), 0);
  m.register(info('b'), 0);
  m.register(info('c'), 0);
  m.nextGeneration();
  assert.deepEqual(m.expire(900), []);
  m.heartbeat('w0', 900);
  m.heartbeat('w2', 900);
  assert.deepEqual(m.expire(1500), ['w1']);
  assert.equal(m.heartbeat('w1', 1500), false, 'a fenced worker is no longer a member');
  assert.ok(m.ringBroken());
  assert.ok(m.needsNewGeneration());
  const g = m.nextGeneration();
  assert.equal(g.number, 2);
  assert.deepEqual(
    g.ring.map((x) => x.id),
    ['w0', 'w2'],
  );
  assert.deepEqual(m.deaths, [{ id: 'w1', reason: 'heartbeat-timeout', generation: 1 }]);
});

test('a joining worker triggers a new generation; after the rendezvous the job goes on with fewer than min_workers', () => {
  const m = make(2);
  m.register(info('a'), 0);
  assert.equal(m.needsNewGeneration(), false, 'the rendezvous waits for min_workers = 2');
  m.register(info('b'), 0);
  m.nextGeneration();
  m.register(info('c'), 10);
  assert.ok(m.needsNewGeneration());
  assert.equal(m.nextGeneration().ring.length, 3);
  m.remove('w0', 'ring-failure');
  m.remove('w1', 'left');
  assert.ok(m.needsNewGeneration(), 'one survivor below min_workers = 2 still trains');
  assert.deepEqual(
    m.nextGeneration().ring.map((x) => x.id),
    ['w2'],
  );
  assert.equal(m.needsNewGeneration(), false);
  m.invalidate();
  assert.ok(m.needsNewGeneration(), 'an invalidated ring is re-formed with the same members');
  assert.equal(m.nextGeneration().number, 4);
  m.remove('w2', 'left');
  assert.equal(m.needsNewGeneration(), false, 'nobody left: nothing runs');
});

test('ring order keeps the workers of a host adjacent', () => {
  const m = make(1, 8);
  for (const h of ['h1', 'h2', 'h1', 'h3', 'h2', 'h1']) m.register(info(h), 0);
  const order = ringOrder(m.alive()).map((x) => `${x.host}:${x.id}`);
  assert.deepEqual(order, ['h1:w0', 'h1:w2', 'h1:w5', 'h2:w1', 'h2:w4', 'h3:w3']);
});
