/**
 * Ring collectives (src/allreduce/): wire format, fp16, and real multi-process rings of 1…6 ranks
 * (test/fixtures/ring-peer.ts children over ipc:// and tcp:// on this machine only), failures
 * (SIGKILL mid-operation, a new generation among the survivors), dropped frames and CURVE.
 */
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import * as zmq from 'zeromq';
import {
  Encoding,
  Phase,
  decodeHeader,
  decodeMessage,
  encodeHeader,
  type FrameHeader,
} from '../src/allreduce/frame.js';
import { bitsToHalf, halfTable, toHalf, encodeF16, decodeF16 } from '../src/allreduce/fp16.js';
import { Ring, pickAddress, z85Encode, type RingOptions } from '../src/allreduce/ring.js';
import { RingConfigError } from '../src/allreduce/errors.js';
import { parseSizes } from '../src/allreduce/bench.js';
import { jsKernels, kernels, resetKernels, setKernels, type RingKernels } from '../src/allreduce/reduce.js';
import { loadNativeKernels } from '../src/allreduce/native.js';
import { freePort } from '../src/util/net.js';
import {
  allReduceAll,
  ipcAddresses,
  openRing,
  ringOpts,
  startPeers,
  stopPeers,
  type Peer,
  type Reply,
} from './ring-peers.js';

const dir = mkdtempSync(path.join(tmpdir(), 'ringdiff-ring-'));
process.on('exit', () => rmSync(dir, { recursive: true, force: true }));

// ---------------------------------------------------------------------------------------------
// Peer processes

const ipcAddrs = ipcAddresses(dir);

// ---------------------------------------------------------------------------------------------
// Units

describe('frame', () => {
  const h: FrameHeader = {
    jobId: 'job-α',
    generation: 7,
    seq: 3,
    step: 5,
    phase: Phase.ALL_GATHER,
    chunk: 11,
    sender: 2,
    encoding: Encoding.F16,
    count: 4,
    length: 123456789,
    chunks: 13,
    root: 1,
  };
  test('header round trip', () => {
    assert.deepEqual(decodeHeader(encodeHeader(h)), h);
  });
  test('malformed messages are rejected, never thrown', () => {
    const hb = encodeHeader(h);
    assert.equal(decodeMessage([hb, Buffer.alloc(8)]).ok, true);
    assert.deepEqual(decodeMessage([hb]), { ok: false, reason: 'parts' });
    assert.deepEqual(decodeMessage([hb, Buffer.alloc(8), Buffer.alloc(1)]), { ok: false, reason: 'parts' });
    assert.deepEqual(decodeMessage([hb, Buffer.alloc(7)]), { ok: false, reason: 'payload' });
    assert.deepEqual(decodeMessage([hb.subarray(0, 5), Buffer.alloc(8)]), { ok: false, reason: 'header' });
    assert.deepEqual(
      decodeMessage([Buffer.from('garbage, not protobuf \xff\xff\xff'), Buffer.alloc(8)]).ok,
      false,
    );
    for (let i = 0; i < 2000; i++) {
      const junk = Buffer.from(Array.from({ length: (i % 40) + 1 }, (_, j) => (i * 131 + j * 71) & 255));
      decodeMessage([junk, Buffer.alloc(i % 9)]); // must not throw
    }
    assert.equal(decodeHeader(encodeHeader({ ...h, jobId: '' })), null);
  });
});

describe('fp16', () => {
  test('every finite half round-trips; NaN stays NaN', () => {
    const t = halfTable();
    for (let hb = 0; hb < 65536; hb++) {
      const v = t[hb] as number;
      if (Number.isNaN(v)) assert.ok(Number.isNaN(t[toHalf(v)] as number));
      else assert.equal(toHalf(v), hb, `half 0x${hb.toString(16)}`);
    }
  });
  test('round to nearest even, against an exhaustive reference', () => {
    const t = halfTable();
    // Finite non-negative halves in increasing order: patterns 0 … 0x7c00 (inf).
    const ref = (x: number): number => {
      const sign = x < 0 || Object.is(x, -0) ? 0x8000 : 0;
      const a = Math.abs(x);
      if (a >= 65520) return sign | 0x7c00;
      let lo = 0;
      let hi = 0x7bff;
      while (lo < hi) {
        const mid = (lo + hi + 1) >> 1;
        if ((t[mid] as number) <= a) lo = mid;
        else hi = mid - 1;
      }
      const below = t[lo] as number;
      if (below === a) return sign | lo;
      const above = t[lo + 1] as number;
      const d1 = a - below;
      const d2 = above - a;
      if (d1 < d2) return sign | lo;
      if (d2 < d1) return sign | (lo + 1);
      return sign | (lo % 2 === 0 ? lo : lo + 1);
    };
    const f = new Float32Array(1);
    const u = new Uint32Array(f.buffer);
    let s = 12345;
    for (let i = 0; i < 200_000; i++) {
      s = (Math.imul(s, 1103515245) + 12345) >>> 0;
      // exponents around the fp16 range, including subnormals and overflow
      u[0] =
        ((s & 0x80000000) | ((((s >>> 8) % 50) + 97) << 23) | (Math.imul(s, 2654435761) & 0x7fffff)) >>> 0;
      assert.equal(bitsToHalf(u[0] as number), ref(f[0] as number), `x = ${f[0]}`);
    }
    // Exact midpoints between neighbouring halves (ties).
    for (let hb = 0; hb < 0x7bff; hb += 7) {
      const mid = ((t[hb] as number) + (t[hb + 1] as number)) / 2;
      f[0] = mid;
      if (f[0] !== mid) continue;
      assert.equal(toHalf(mid), ref(mid));
      assert.equal(toHalf(-mid), ref(-mid));
    }
    assert.equal(toHalf(65519), 0x7bff);
    assert.equal(toHalf(65520), 0x7c00);
    assert.equal(toHalf(-Infinity), 0xfc00);
    assert.equal(toHalf(2 ** -25), 0);
    assert.equal(toHalf(2 ** -25 * 1.0000001), 1);
  });
  test('array codecs', () => {
    const x = new Float32Array([0, -0, 1, -2.5, 65504, 1e-8, 3.14159]);
    const h = new Uint16Array(x.length);
    encodeF16(x, h);
    const y = new Float32Array(x.length);
    decodeF16(h, y);
    assert.deepEqual(Array.from(y), [0, -0, 1, -2.5, 65504, 0, 3.140625]);
  });
});

describe('helpers', () => {
  test('z85 matches the RFC 32 test vector', () => {
    assert.equal(z85Encode(Uint8Array.from([0x86, 0x4f, 0xd2, 0x6f, 0xb5, 0x59, 0xf7, 0x5b])), 'HelloWorld');
  });
  test('pickAddress prefers ipc on one host', () => {
    const peer = { hostId: 'a', tcp: 'tcp://127.0.0.1:1', ipc: 'ipc:///tmp/x' };
    assert.equal(pickAddress('a', peer), 'ipc:///tmp/x');
    assert.equal(pickAddress('b', peer), 'tcp://127.0.0.1:1');
  });
  test('bench sizes', () => {
    assert.deepEqual(parseSizes('1M,4K,64'), [1 << 20, 4096, 64]);
    assert.throws(() => parseSizes('3'));
  });
  test('kernels can be swapped', () => {
    let calls = 0;
    const prev = setKernels({ add: (d, s) => (calls++, prev.add(d, s)) });
    const a = new Float32Array([1, 2]);
    kernels.add(a, new Float32Array([3, 4]));
    resetKernels();
    assert.equal(calls, 1);
    assert.deepEqual(Array.from(a), [4, 6]);
  });
});

// ---------------------------------------------------------------------------------------------
// Native kernels (native/src/ring.cc) against the JavaScript ones: identical bits

/** Deterministic float32 bits: mixed magnitudes plus the special values (±0, subnormals, ±Inf,
 * NaNs with payloads, fp16 rounding ties and overflow edges). */
function specialFloats(n: number, seed: number): Float32Array {
  const a = new Float32Array(n);
  const u = new Uint32Array(a.buffer);
  const special = [
    0x00000000, 0x80000000, 0x00000001, 0x807fffff, 0x7f800000, 0xff800000, 0x7fc00000, 0xffc00000,
    0x7f800001, 0x7fc12345, 0x477fe000, 0x477ff000, 0x477fefff, 0xc77ff000, 0x33000000, 0x33000001,
    0x38800000, 0x387fffff, 0x38801000, 0x3f801000, 0x3f803000, 0x3f800fff, 0x3f801001, 0x4b7fffff,
  ];
  let x = (seed * 0x9e3779b1) >>> 0 || 1;
  for (let i = 0; i < n; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    const pick = x % 16;
    if (pick === 0) u[i] = special[(x >>> 4) % special.length] as number;
    else if (pick === 1)
      u[i] = x; // any bit pattern (NaNs, Infs, subnormals included)
    else a[i] = ((x >>> 8) / 16777216 - 0.5) * 2 ** ((x & 31) - 16);
  }
  return a;
}

/**
 * Identical bits, element by element — except that any NaN matches any NaN: when both operands of
 * an addition are NaNs, which one propagates is up to the machine code (V8's own tiers included).
 */
function sameBits(a: ArrayBufferView, b: ArrayBufferView, what: string): void {
  assert.equal(a.constructor, b.constructor, `${what}: types differ`);
  const half = a instanceof Uint16Array;
  const x = half ? (a as Uint16Array) : new Uint32Array(a.buffer, a.byteOffset, a.byteLength / 4);
  const y = half ? (b as Uint16Array) : new Uint32Array(b.buffer, b.byteOffset, b.byteLength / 4);
  assert.equal(x.length, y.length, `${what}: lengths differ`);
  const isNaN = half
    ? (v: number) => (v & 0x7c00) === 0x7c00 && (v & 0x3ff) !== 0
    : (v: number) => (v & 0x7f800000) === 0x7f800000 && (v & 0x7fffff) !== 0;
  for (let i = 0; i < x.length; i++) {
    const p = x[i] as number;
    const q = y[i] as number;
    if (p !== q && !(isNaN(p) && isNaN(q)))
      assert.fail(`${what}: first difference at element ${i} (0x${p.toString(16)} vs 0x${q.toString(16)})`);
  }
}

describe('native ring kernels', () => {
  const native = loadNativeKernels();
  const skip = native.kernels ? false : `native addon unavailable: ${native.status.reason}`;
  // Lengths around the SIMD widths (8, 16, 32 lanes) and the scalar tails.
  const lengths = [0, 1, 7, 8, 9, 15, 16, 17, 31, 32, 33, 63, 100, 1000, 4099];

  /** Runs `f` on the JS and the native set with copies of the same inputs; compares every output. */
  function both(
    name: string,
    make: (n: number, seed: number) => ArrayBufferView[],
    f: (k: RingKernels, args: ArrayBufferView[]) => void,
  ): void {
    const js = jsKernels();
    const nk = native.kernels as RingKernels;
    for (const n of lengths) {
      for (const seed of [1, 2, 3]) {
        const a = make(n, seed);
        const b = a.map((v) => (v instanceof Float32Array ? v.slice() : (v as Uint16Array).slice()));
        f(js, a);
        f(nk, b);
        a.forEach((v, i) => sameBits(v, b[i] as ArrayBufferView, `${name} n=${n} seed=${seed} arg ${i}`));
      }
    }
  }

  const halves = (n: number, seed: number) => {
    const h = new Uint16Array(n);
    encodeF16(specialFloats(n, seed + 100), h);
    // Some raw patterns too (fp16 NaNs with payloads, subnormals).
    for (let i = 0; i < n; i += 5) h[i] = (Math.imul(i + 1, 0x9e37 + seed) >>> 3) & 0xffff;
    return h;
  };

  test('add, add3, addDiv and scale give the bits of the JS kernels', { skip }, () => {
    both(
      'add',
      (n, s) => [specialFloats(n, s), specialFloats(n, s + 7)],
      (k, [d, x]) => k.add(d as Float32Array, x as Float32Array),
    );
    both(
      'add3',
      (n, s) => [new Float32Array(n), specialFloats(n, s), specialFloats(n, s + 7)],
      (k, [o, x, y]) => k.add3(o as Float32Array, x as Float32Array, y as Float32Array),
    );
    for (const divisor of [1, 2, 3, 7, 64])
      both(
        `addDiv/${divisor}`,
        (n, s) => [specialFloats(n, s), specialFloats(n, s + 7)],
        (k, [d, x]) => k.addDiv(d as Float32Array, x as Float32Array, divisor),
      );
    for (const divisor of [1, 3, 6])
      both(
        `scale/${divisor}`,
        (n, s) => [specialFloats(n, s)],
        (k, [x]) => k.scale(x as Float32Array, divisor),
      );
  });

  test('fp16 conversions and fused adds give the bits of the JS kernels', { skip }, () => {
    both(
      'toHalf',
      (n, s) => [specialFloats(n, s), new Uint16Array(n)],
      (k, [x, h]) => k.toHalf(x as Float32Array, h as Uint16Array),
    );
    both(
      'fromHalf',
      (n, s) => [halves(n, s), new Float32Array(n)],
      (k, [h, x]) => k.fromHalf(h as Uint16Array, x as Float32Array),
    );
    both(
      'addHalf',
      (n, s) => [halves(n, s), specialFloats(n, s)],
      (k, [h, x]) => k.addHalf(h as Uint16Array, x as Float32Array),
    );
    both(
      'addHalfTo',
      (n, s) => [new Uint16Array(n), halves(n, s), specialFloats(n, s)],
      (k, [o, h, x]) => k.addHalfTo(o as Uint16Array, h as Uint16Array, x as Float32Array),
    );
    for (const divisor of [1, 3, 4])
      both(
        `addHalfFinal/${divisor}`,
        (n, s) => [halves(n, s), specialFloats(n, s)],
        (k, [h, x]) => k.addHalfFinal(h as Uint16Array, x as Float32Array, divisor),
      );
    // Every fp16 pattern decodes alike.
    const all = Uint16Array.from({ length: 65536 }, (_, i) => i);
    const x1 = new Float32Array(65536);
    const x2 = new Float32Array(65536);
    jsKernels().fromHalf(all, x1);
    (native.kernels as RingKernels).fromHalf(all, x2);
    sameBits(x1, x2, 'fromHalf over all 65536 patterns');
  });

  test('bad arguments throw instead of touching memory', { skip }, () => {
    const nk = native.kernels as RingKernels;
    assert.throws(() => nk.add(new Float32Array(4), new Float32Array(3)), RangeError);
    assert.throws(() => nk.add3(new Float32Array(4), new Float32Array(4), new Float32Array(2)), RangeError);
    assert.throws(() => nk.toHalf(new Float32Array(4), new Uint16Array(3)), RangeError);
    assert.throws(() => nk.addDiv(new Float32Array(1), new Float32Array(1), 0.5), RangeError);
    assert.throws(
      () => nk.add(new Float64Array(1) as unknown as Float32Array, new Float32Array(1)),
      TypeError,
    );
  });

  test('release detaches a whole buffer and nothing else', { skip }, () => {
    const release = (native.kernels as RingKernels).release as (b: Uint8Array) => boolean;
    const whole = Buffer.from(new ArrayBuffer(4096));
    assert.equal(release(whole.subarray(8)), false);
    assert.equal(whole.buffer.byteLength, 4096);
    assert.equal(release(whole), true);
    assert.equal(whole.buffer.byteLength, 0);
    assert.equal(release(Buffer.alloc(0)), false);
  });
});

describe('ring in one process', () => {
  test('N = 1: every collective is local', async () => {
    const ring = await Ring.open({
      jobId: 'j',
      rank: 0,
      worldSize: 1,
      generation: 0,
      bindAddress: 'unused',
      successorAddress: '',
    });
    const a = new Float32Array([1, 2, 3]);
    await ring.allReduce(a, { op: 'sum' });
    assert.deepEqual(Array.from(a), [1, 2, 3]);
    await ring.allReduce(a, { op: 'mean' });
    assert.deepEqual(Array.from(a), [1, 2, 3]);
    await ring.allReduce(new Float32Array(0));
    await ring.broadcast(a, 0);
    const g = await ring.allGather(new Float32Array([5]));
    assert.deepEqual(
      g.map((x) => Array.from(x)),
      [[5]],
    );
    assert.equal(ring.stats().completed, 5);
    await ring.close();
    await assert.rejects(ring.allReduce(a), { code: 'RING_CLOSED' });
  });
  test('bad options are RingConfigErrors', async () => {
    const base = {
      jobId: 'j',
      rank: 0,
      worldSize: 2,
      generation: 0,
      bindAddress: 'ipc:///tmp/none',
      successorAddress: 'ipc:///tmp/none2',
    };
    await assert.rejects(Ring.open({ ...base, rank: 2 }), RingConfigError);
    await assert.rejects(Ring.open({ ...base, jobId: '' }), RingConfigError);
    await assert.rejects(Ring.open({ ...base, chunkBytes: 2 }), RingConfigError);
    await assert.rejects(Ring.open({ ...base, encryption: 'curve' }), RingConfigError);
    await assert.rejects(Ring.open({ ...base, bindAddress: 'nonsense://x' }), RingConfigError);
  });
  test('two rings in this process; timeout when the peer never comes', async () => {
    const addrs = ipcAddrs(2);
    const a = await Ring.open({ ...ringOpts(addrs, 0), timeoutMs: 5000 });
    const b = await Ring.open({ ...ringOpts(addrs, 1), timeoutMs: 5000 });
    const x = new Float32Array([1, 2, 3, 4, 5]);
    const y = new Float32Array([10, 20, 30, 40, 50]);
    await Promise.all([a.allReduce(x), b.allReduce(y)]);
    assert.deepEqual(Array.from(x), [11, 22, 33, 44, 55]);
    assert.deepEqual(Array.from(y), [11, 22, 33, 44, 55]);
    await Promise.all([a.close(), b.close()]);
    const lonely = await Ring.open({ ...ringOpts(ipcAddrs(2), 0), timeoutMs: 300 });
    const t0 = performance.now();
    await assert.rejects(lonely.allReduce(new Float32Array(10)), { name: 'RingTimeoutError' });
    assert.ok(performance.now() - t0 < 2000);
    await assert.rejects(lonely.allReduce(new Float32Array(10)), { name: 'RingBrokenError' });
    await lonely.close();
  });
});

// ---------------------------------------------------------------------------------------------
// Multi-process rings

describe('all-reduce across processes', { timeout: 600_000 }, () => {
  for (let n = 1; n <= 6; n++) {
    test(`N = ${n}: lengths × ops match the reference; repeat is bit-identical`, async () => {
      const peers = await startPeers(n);
      // Odd chunk sizes: segments are not multiples of the chunk, and (for N > 2) not of 4 bytes·2^k.
      const chunkBytes = n % 2 ? 4100 : 16384;
      const addrs =
        n === 3
          ? await Promise.all(Array.from({ length: n }, async () => `tcp://127.0.0.1:${await freePort()}`))
          : ipcAddrs(n);
      await openRing(peers, addrs, { chunkBytes });
      const lengths = [...new Set([0, 1, Math.max(0, n - 1), n + 1, 2, 7, 97, 1009, 65537, 1_000_003])];
      let seed = 1;
      for (const length of lengths) {
        for (const op of ['sum', 'mean'] as const) {
          const h1 = await allReduceAll(peers, length, op, seed);
          const h2 = await allReduceAll(peers, length, op, seed);
          assert.equal(h1, h2, `not bit-reproducible: N=${n} length ${length} ${op}`);
          seed++;
        }
      }
      await stopPeers(peers);
    });
  }

  test('fp16 on the wire: within fp16 tolerance, identical on every rank', async () => {
    const peers = await startPeers(3);
    await openRing(peers, ipcAddrs(3), { compression: 'fp16', chunkBytes: 8192 });
    for (const length of [0, 1, 2, 1009, 300_007]) {
      for (const op of ['sum', 'mean'] as const) {
        const h1 = await allReduceAll(peers, length, op, length + 1);
        assert.equal(await allReduceAll(peers, length, op, length + 1), h1);
      }
    }
    await stopPeers(peers);
  });

  test('native and JS kernels: the same bits through the whole ring (f32 and fp16)', async (t) => {
    if (!loadNativeKernels().kernels) return t.skip('native addon unavailable');
    const hashes: Record<string, number[]> = {};
    for (const kind of ['js', 'native']) {
      const peers = await startPeers(4, { RINGDIFF_RING_KERNELS: kind === 'js' ? 'js' : 'native' });
      for (const compression of ['none', 'fp16'] as const) {
        await openRing(peers, ipcAddrs(4), { compression, chunkBytes: 4100 });
        for (const [length, op] of [
          [3, 'sum'],
          [1009, 'mean'],
          [300_007, 'sum'],
          [300_007, 'mean'],
        ] as const)
          (hashes[`${compression} ${length} ${op}`] ??= []).push(await allReduceAll(peers, length, op, 5));
        await Promise.all(peers.map((p) => p.ok('close')));
      }
      await stopPeers(peers);
    }
    for (const [k, [js, nat]] of Object.entries(hashes))
      assert.equal(js, nat, `JS and native rings differ: ${k}`);
  });

  test('broadcast and variable-length all-gather', async () => {
    const peers = await startPeers(4);
    await openRing(peers, ipcAddrs(4), { chunkBytes: 4096 });
    for (const root of [0, 3, 1]) {
      for (const length of [0, 1, 100_003]) {
        const rs = await Promise.all(peers.map((p) => p.ok('broadcast', { length, root, seed: 9 + root })));
        for (const r of rs) assert.equal(r.equal, true, `broadcast root ${root} length ${length}`);
      }
    }
    for (const lengths of [
      [3, 0, 5000, 1],
      [0, 0, 0, 0],
      [2049, 2048, 2047, 1],
    ]) {
      const rs = await Promise.all(peers.map((p) => p.ok('allgather', { lengths, seed: 4 })));
      for (const r of rs) assert.equal(r.equal, true, `allGather ${lengths.join(',')}`);
    }
    // Mixed with all-reduces on the same ring.
    await allReduceAll(peers, 12345, 'sum', 77);
    await stopPeers(peers);
  });

  test('ranks that close and exit right after their last call leave no one waiting', async () => {
    for (let round = 0; round < 3; round++) {
      const peers = await startPeers(4);
      await openRing(peers, ipcAddrs(4), { chunkBytes: 1 << 20, timeoutMs: 10_000 });
      const rs = await Promise.all(
        peers.map((p) => p.call('allreduce', { length: 4 << 20, op: 'sum', seed: round, exitAfter: true })),
      );
      for (const r of rs) assert.equal(r.ok, true, r.error?.message);
      assert.equal(new Set(rs.map((r) => r.hash)).size, 1);
      await Promise.all(peers.map((p) => p.exited));
    }
  });

  test('ranks called with different lengths: every rank rejects with a typed error', async () => {
    const peers = await startPeers(2);
    await openRing(peers, ipcAddrs(2), { timeoutMs: 3000 });
    const rs = await Promise.all(
      peers.map((p, r) => p.call('allreduce', { length: 100 + r, op: 'sum', seed: 1 })),
    );
    for (const r of rs) {
      assert.equal(r.ok, false);
      assert.ok(['RING_PROTOCOL', 'RING_ABORTED'].includes(r.error?.code as string), r.error?.message);
    }
    await stopPeers(peers);
  });
});

describe('back-to-back calls', { timeout: 120_000 }, () => {
  /**
   * Each rank runs its own sequence of all-reduces without waiting for the others between calls
   * (in one process, so that ranks interleave frame by frame): calls that skip the DONE round
   * (every payload through shared memory) must never write over what another rank still reads,
   * whatever the lengths. Small integers: every sum is exact, whatever the order.
   */
  async function sequence(n: number, extra: (r: number) => Partial<RingOptions>, lengths: number[]) {
    const addrs = ipcAddrs(n);
    const rings = await Promise.all(
      addrs.map((_, r) => Ring.open({ ...ringOpts(addrs, r), chunkBytes: 8192, ...extra(r) })),
    );
    const input = (call: number, r: number, len: number) =>
      Float32Array.from({ length: len }, (_, i) => ((i * 31 + r * 17 + call * 7) % 199) - 99);
    try {
      const results = await Promise.all(
        rings.map(async (ring, r) => {
          // One buffer per length, overwritten by the next call at once (as training reuses its
          // gradient buffer): a send still reading it would carry the next call's input.
          const bufs = new Map<number, Float32Array>();
          const out: Float32Array[] = [];
          for (const [call, len] of lengths.entries()) {
            let x = bufs.get(len);
            if (!x) bufs.set(len, (x = new Float32Array(len)));
            x.set(input(call, r, len));
            await ring.allReduce(x);
            out.push(x.slice());
          }
          return out;
        }),
      );
      for (const [call, len] of lengths.entries()) {
        const want = new Float32Array(len);
        for (let r = 0; r < n; r++) {
          const x = input(call, r, len);
          for (let i = 0; i < len; i++) want[i] = (want[i] as number) + (x[i] as number);
        }
        for (let r = 0; r < n; r++)
          assert.deepEqual(results[r]?.[call], want, `rank ${r}, call ${call} (length ${len}) is wrong`);
      }
      return rings.map((x) => x.stats());
    } finally {
      await Promise.all(rings.map((x) => x.close()));
    }
  }

  const lengths = [100_000, 3, 100_000, 100_000, 1, 250_000, 7, 7, 40_000, 250_000, 250_000, 5, 100_000];

  test('through shared memory, lengths changing from call to call: every result exact', async (t) => {
    if (!loadNativeKernels().kernels) return t.skip('native addon unavailable (no shared memory)');
    for (const n of [2, 3, 4]) {
      const st = await sequence(n, () => ({}), lengths);
      for (const s of st) assert.ok(s.shm.active && s.shm.framesSent > 0, 'shared memory in use');
    }
  });

  test('one rank without shared memory (the DONE round for everyone): every result exact', async () => {
    for (const n of [2, 4]) await sequence(n, (r) => (r === 1 ? { sharedMemory: 'off' } : {}), lengths);
  });
});

describe('failures', { timeout: 120_000 }, () => {
  test('SIGKILL mid-operation: survivors reject within the timeout, then a new generation works', async () => {
    const n = 4;
    const victim = 2;
    const timeoutMs = 1500;
    const peers = await startPeers(n);
    const addrs = ipcAddrs(n);
    // The victim kills itself (SIGKILL) on its 40th accepted frame: inside the second call (one
    // chunk per frame also through shared memory, which otherwise sends several per frame).
    await Promise.all(
      peers.map((p, r) =>
        p.ok('open', {
          opts: ringOpts(addrs, r, { timeoutMs, chunkBytes: 4096, sharedMemoryFrameBytes: 4096 }),
          killAtFrame: r === victim ? 40 : undefined,
        }),
      ),
    );
    await allReduceAll(peers, 1000, 'sum', 1); // healthy first (6 frames per rank)
    const calls = peers.map((p) => p.call('allreduce', { length: 1_000_000, op: 'sum', seed: 2 }));
    await peers[victim]?.exited;
    const killedAt = peers[victim]?.exitedAt as number;
    const survivors = [0, 1, 3];
    const results = await Promise.all(
      survivors.map(async (r) => ({ r, reply: (await calls[r]) as Reply, at: performance.now() })),
    );
    for (const { r, reply, at } of results) {
      assert.equal(reply.ok, false, `rank ${r} should have failed`);
      assert.ok(
        ['RING_TIMEOUT', 'RING_ABORTED'].includes(reply.error?.code as string),
        `rank ${r}: ${reply.error?.code} ${reply.error?.message}`,
      );
      assert.ok(
        at - killedAt <= timeoutMs + 1500,
        `rank ${r} rejected ${Math.round(at - killedAt)} ms after the kill`,
      );
    }
    // New generation among the survivors, same addresses (re-bound), renumbered ranks.
    const live = survivors.map((r) => peers[r] as Peer);
    for (const p of live) await p.ok('close');
    const addrs2 = survivors.map((r) => addrs[r] as string);
    await Promise.all(
      live.map((p, r) =>
        p.ok('open', { opts: ringOpts(addrs2, r, { generation: 2, timeoutMs: 10_000, chunkBytes: 4096 }) }),
      ),
    );
    await allReduceAll(live, 1_000_003, 'sum', 3);
    await allReduceAll(live, 5, 'mean', 4);
    await stopPeers(live);
  });

  test('stale-generation, foreign-job, truncated and garbage frames are dropped and counted', async () => {
    const peers = await startPeers(2);
    const addrs = ipcAddrs(2);
    await openRing(peers, addrs, { generation: 5 });
    const rogue = new zmq.Push({ linger: 1000 });
    rogue.connect(addrs[0] as string);
    const hdr = (over: Partial<FrameHeader>) =>
      encodeHeader({
        jobId: 'test-job',
        generation: 5,
        seq: 0,
        step: 0,
        phase: Phase.REDUCE_SCATTER,
        chunk: 0,
        sender: 1,
        encoding: Encoding.F32,
        count: 2,
        length: 4,
        chunks: 1,
        root: 0,
        ...over,
      });
    const payload = Buffer.from(new Float32Array([1e6, 1e6]).buffer);
    await rogue.send([hdr({ generation: 4 }), payload]); // stale
    await rogue.send([hdr({ generation: 6 }), payload]); // future
    await rogue.send([hdr({ jobId: 'other-job' }), payload]); // foreign
    await rogue.send([hdr({}).subarray(0, 5), payload]); // truncated header
    await rogue.send([hdr({}), payload.subarray(0, 6)]); // truncated payload
    await rogue.send(Buffer.from('garbage')); // one frame
    await rogue.send([Buffer.from([0xff, 0xff, 0xff, 0xff, 0x0f]), payload]); // garbage header
    await rogue.send([hdr({}), payload, payload]); // three frames
    let st: Record<string, Record<string, number>> = {};
    for (let i = 0; i < 100; i++) {
      st = (await peers[0]?.ok('stats'))?.stats as typeof st;
      const d = st.dropped as Record<string, number>;
      if (
        (d.malformed as number) >= 5 &&
        d.staleGeneration === 1 &&
        d.futureGeneration === 1 &&
        d.foreignJob === 1
      )
        break;
      await new Promise((r) => setTimeout(r, 50));
    }
    assert.deepEqual(st.dropped, {
      foreignJob: 1,
      staleGeneration: 1,
      futureGeneration: 1,
      malformed: 5,
      unexpected: 0,
    });
    // The process is alive and the ring is intact.
    await allReduceAll(peers, 4, 'sum', 1);
    await allReduceAll(peers, 100_000, 'mean', 2);
    rogue.close();
    await stopPeers(peers);
  });

  test('CURVE: a peer without an allowed key cannot inject data', async () => {
    const peers = await startPeers(3);
    const addrs = ipcAddrs(3);
    const keys = [zmq.curveKeyPair(), zmq.curveKeyPair(), zmq.curveKeyPair()];
    await openRing(peers, addrs, (r) => ({
      encryption: 'curve',
      curve: {
        publicKey: keys[r]?.publicKey as string,
        secretKey: keys[r]?.secretKey as string,
        successorPublicKey: keys[(r + 1) % 3]?.publicKey as string,
        allowedClientKeys: keys[(r + 2) % 3]?.publicKey as string,
      },
    }));
    await allReduceAll(peers, 50_000, 'sum', 1);
    // A rogue that knows rank 0's public key but has its own key pair sends a frame that would be
    // accepted as the next collective's first frame (and corrupt it).
    const mine = zmq.curveKeyPair();
    const rogue = new zmq.Push({
      linger: 1000,
      curveServerKey: keys[0]?.publicKey as string,
      curvePublicKey: mine.publicKey,
      curveSecretKey: mine.secretKey,
    });
    rogue.connect(addrs[0] as string);
    const plain = new zmq.Push({ linger: 1000 });
    plain.connect(addrs[0] as string);
    const forged = [
      encodeHeader({
        jobId: 'test-job',
        generation: 1,
        seq: 1,
        step: 0,
        phase: Phase.REDUCE_SCATTER,
        chunk: 0,
        sender: 2,
        encoding: Encoding.F32,
        count: 2,
        length: 4,
        chunks: 1,
        root: 0,
      }),
      Buffer.from(new Float32Array([1e6, 1e6]).buffer),
    ];
    void rogue.send(forged).catch(() => {});
    void plain.send(forged).catch(() => {});
    let st: Record<string, unknown> = {};
    for (let i = 0; i < 100; i++) {
      st = (await peers[0]?.ok('stats'))?.stats as typeof st;
      if ((st.authDenied as number) >= 1) break;
      await new Promise((r) => setTimeout(r, 50));
    }
    assert.ok((st.authDenied as number) >= 1, 'the ZAP handler saw and refused the rogue');
    await new Promise((r) => setTimeout(r, 200));
    await allReduceAll(peers, 4, 'sum', 2); // would be corrupted by the forged frame
    const after = (await peers[0]?.ok('stats'))?.stats as { dropped: Record<string, number> };
    assert.deepEqual(after.dropped, {
      foreignJob: 0,
      staleGeneration: 0,
      futureGeneration: 0,
      malformed: 0,
      unexpected: 0,
    });
    rogue.close();
    plain.close();
    await stopPeers(peers);
  });
});
