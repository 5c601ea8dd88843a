/**
 * The ring's shared-memory payload path (src/allreduce/shm.ts, "Shared memory" in ring.ts):
 * results bit-identical to the socket path (world sizes 1…5, random lengths, sum/mean, fp16, JS
 * and native kernels, a segment too small for the call), a peer SIGKILLed mid-call, segment files
 * removed on close, and forged shared-memory headers dropped and counted. Real processes
 * (test/fixtures/ring-peer.ts) over ipc:// on this machine.
 */
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import {
  chmodSync,
  mkdtempSync,
  readdirSync,
  rmSync,
  statSync,
  symlinkSync,
  unlinkSync,
  writeFileSync,
} from 'node:fs';
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
import { Ring, type RingOptions } from '../src/allreduce/ring.js';
import { freePort } from '../src/util/net.js';
import { jobTag, segmentName, shmApi, shmWanted, SHM_DIR } from '../src/allreduce/shm.js';
import {
  allReduceAll,
  ipcAddresses,
  openRing,
  ringOpts,
  startPeers as startRingPeers,
  stopPeers,
  type Peer,
  type Reply,
} from './ring-peers.js';
import { missingMountNamespace } from './requirements.js';

const dir = mkdtempSync(path.join(tmpdir(), 'ringdiff-shm-'));
process.on('exit', () => rmSync(dir, { recursive: true, force: true }));
const noShm = shmApi() === null ? 'native addon unavailable (no shared memory)' : false;

// ---------------------------------------------------------------------------------------------
// Peer processes (as in allreduce.test.ts)

type ShmStats = { active: boolean; framesSent: number; framesReceived: number; overflowFrames: number };
type Stats = { dropped: Record<string, number>; shm: ShmStats };

const ipcAddrs = ipcAddresses(dir);

/** Ring peers with shared memory on (whatever the environment of the test run says). */
function startPeers(n: number, env: NodeJS.ProcessEnv = {}): Promise<Peer[]> {
  return startRingPeers(n, { RINGDIFF_RING_SHM: 'auto', ...env });
}

let jobSeq = 0;
/** A job id of its own per ring, so that its segments can be told apart in /dev/shm. */
function newJob(): string {
  return `shm-test-${process.pid}-${++jobSeq}`;
}

/** Rank `r`'s options for a ring of job `job` (see ring-peers.ts). */
function jobRingOpts(job: string, addrs: string[], r: number, extra: Partial<RingOptions> = {}): RingOptions {
  return ringOpts(addrs, r, { jobId: job, ...extra });
}

/** Opens a ring of job `job` on every peer. */
function openJobRing(
  peers: Peer[],
  job: string,
  addrs: string[],
  extra: Partial<RingOptions> | ((r: number) => Partial<RingOptions>) = {},
): Promise<void> {
  return openRing(peers, addrs, (r) => ({ jobId: job, ...(typeof extra === 'function' ? extra(r) : extra) }));
}

/** The segment files of a job in /dev/shm. */
function segmentsOf(job: string): string[] {
  const prefix = `ringdiff-${jobTag(job)}-`;
  return readdirSync(SHM_DIR).filter((f) => f.startsWith(prefix));
}

/** Waits until `cond` holds (polling every 50 ms, up to `ms`). */
async function eventually(cond: () => boolean | Promise<boolean>, ms = 5000): Promise<boolean> {
  const until = performance.now() + ms;
  for (;;) {
    if (await cond()) return true;
    if (performance.now() > until) return false;
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** Deterministic pseudo-random integers (xorshift32). */
function rng(seed: number): (lo: number, hi: number) => number {
  let x = seed >>> 0 || 1;
  return (lo, hi) => {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    return lo + (x % (hi - lo + 1));
  };
}

// ---------------------------------------------------------------------------------------------
// Units

const baseHeader: FrameHeader = {
  jobId: 'job',
  generation: 3,
  seq: 0,
  step: 0,
  phase: Phase.REDUCE_SCATTER,
  chunk: 0,
  sender: 1,
  encoding: Encoding.F32,
  count: 4,
  length: 8,
  chunks: 1,
  root: 0,
};
const goodName = segmentName('job', 3, 1);

describe('shared-memory frames', () => {
  test('header round trip with and without the segment fields', () => {
    assert.deepEqual(decodeHeader(encodeHeader(baseHeader)), baseHeader);
    const h = { ...baseHeader, shmSegment: goodName, shmOffset: 2 ** 40 + 64 };
    assert.deepEqual(decodeHeader(encodeHeader(h)), h);
    assert.equal(decodeMessage([encodeHeader(h), Buffer.alloc(0)]).ok, true);
  });
  test('bad names, offsets, phases and non-empty payloads are malformed', () => {
    const bad = (over: Partial<FrameHeader>, payload = Buffer.alloc(0)) =>
      decodeMessage([encodeHeader({ ...baseHeader, shmSegment: goodName, shmOffset: 0, ...over }), payload])
        .ok;
    assert.equal(bad({}), true);
    assert.equal(bad({}, Buffer.alloc(16)), false); // payload both inline and in shared memory
    for (const name of [
      '../../etc/passwd',
      '/etc/passwd',
      `${goodName}/../../etc/passwd`,
      `../${goodName}`,
      goodName.replace('ringdiff-', 'ringdiff-..'),
      `${goodName}x`,
      'ringdiff-job-g3-r1-p1-0123456789abcdef', // no job hash
      `${goodName}`.replace(/-[0-9a-f]{16}$/, '-0123'),
      'x'.repeat(300),
    ])
      assert.equal(bad({ shmSegment: name }), false, name);
    assert.equal(bad({ shmOffset: -64 }), false);
    assert.equal(bad({ shmOffset: 0.5 }), false);
    assert.equal(bad({ shmOffset: 2 }), false); // not a multiple of 4 (float32)
    assert.equal(bad({ shmOffset: 2, encoding: Encoding.F16 }), true);
    assert.equal(bad({ shmOffset: 2 ** 60 }), false); // beyond 2^53
    assert.equal(bad({ phase: Phase.DONE }), false);
    assert.equal(bad({ phase: Phase.BROADCAST }), false);
    assert.equal(bad({ encoding: Encoding.BYTES }), false);
  });
  test('the environment can force the socket path', () => {
    assert.equal(shmWanted('auto', {}), true);
    assert.equal(shmWanted('off', {}), false);
    assert.equal(shmWanted('auto', { RINGDIFF_RING_SHM: 'off' }), false);
    assert.equal(shmWanted('auto', { RINGDIFF_RING_SHM: 'OFF' }), false);
  });
});

describe('segments (native addon)', { skip: noShm }, () => {
  test('only this user\u2019s regular 0600 files directly in /dev/shm are opened', () => {
    const api = shmApi();
    if (!api) return;
    const name = segmentName(newJob(), 1, 0);
    const ab = api.shmCreate(name, 1 << 16);
    try {
      assert.equal(statSync(`${SHM_DIR}/${name}`).mode & 0o777, 0o600);
      new Uint8Array(ab)[7] = 42;
      const ro = api.shmOpen(name, 1 << 20);
      assert.equal(new Uint8Array(ro)[7], 42);
      assert.equal(api.shmUnmap(ro), true);
      assert.equal(ro.byteLength, 0); // detached: no view can reach the pages any more
      assert.throws(() => api.shmOpen(name, 100)); // larger than allowed
      assert.throws(() => api.shmCreate(name, 4096)); // exists already
    } finally {
      api.shmUnlink(name);
      api.shmUnmap(ab);
    }
    for (const n of ['../etc/passwd', '.hidden', 'a/b', '', 'x'.repeat(201)])
      assert.throws(() => api.shmOpen(n, 1 << 20), /invalid segment name/, n);
    const link = segmentName(newJob(), 1, 0);
    symlinkSync('/etc/passwd', `${SHM_DIR}/${link}`);
    const open = segmentName(newJob(), 1, 0);
    writeFileSync(`${SHM_DIR}/${open}`, Buffer.alloc(4096));
    chmodSync(`${SHM_DIR}/${open}`, 0o644);
    const fifo = segmentName(newJob(), 1, 0);
    execFileSync('mkfifo', ['-m', '600', `${SHM_DIR}/${fifo}`]);
    try {
      assert.throws(() => api.shmOpen(link, 1 << 30)); // symlink: O_NOFOLLOW
      assert.throws(() => api.shmOpen(open, 1 << 30), /accessible to other users/);
      assert.throws(() => api.shmOpen(fifo, 1 << 30), /not a regular file/); // and does not block
    } finally {
      for (const f of [link, open, fifo]) unlinkSync(`${SHM_DIR}/${f}`);
    }
  });
});

// ---------------------------------------------------------------------------------------------
// Multi-process rings

describe('shared memory across processes', { skip: noShm, timeout: 600_000 }, () => {
  for (let n = 1; n <= 5; n++) {
    test(`N = ${n}: bit-identical to the socket path (random lengths, sum/mean, fp16)`, async () => {
      const peers = await startPeers(n);
      const rand = rng(1000 + n);
      const lengths = [
        ...new Set([0, 1, n - 1, n + 1, 97, rand(2, 50), rand(100, 5000), rand(5000, 300_000), 1_000_003]),
      ];
      const chunkBytes = n % 2 ? 4100 : 65536;
      const hashes: Record<string, number[]> = {};
      let generation = 1;
      for (const sharedMemory of ['auto', 'off'] as const) {
        for (const compression of ['none', 'fp16'] as const) {
          const job = newJob();
          // Frames of 3 chunks (several frames per step, a shorter last one) and of the default
          // 8 MiB (one frame per step here).
          const sharedMemoryFrameBytes = compression === 'none' ? 3 * chunkBytes + 5 : undefined;
          // Fresh addresses: a PUSH that connects while a closed PULL of the same path is still
          // being torn down could lose frames to it.
          await openJobRing(peers, job, ipcAddrs(n), {
            generation: generation++,
            chunkBytes,
            compression,
            sharedMemory,
            sharedMemoryFrameBytes,
          });
          let seed = 1;
          for (const length of lengths)
            for (const op of ['sum', 'mean'] as const)
              (hashes[`${compression} ${length} ${op}`] ??= []).push(
                await allReduceAll(peers, length, op, seed++),
              );
          const st = await Promise.all(peers.map((p) => p.stats<Stats>()));
          for (const s of st) {
            assert.equal(s.shm.active, sharedMemory === 'auto' && n > 1);
            assert.equal(s.shm.framesSent > 0, sharedMemory === 'auto' && n > 1);
            assert.equal(s.shm.overflowFrames, 0);
            assert.equal(s.dropped.malformed, 0);
          }
          await Promise.all(peers.map((p) => p.ok('close')));
          assert.deepEqual(segmentsOf(job), [], 'segments removed on close');
        }
      }
      for (const [k, [shm, sock]] of Object.entries(hashes))
        assert.equal(shm, sock, `shared memory and socket paths differ: N=${n} ${k}`);
      await stopPeers(peers);
    });
  }

  test('JS kernels, mixed ranks, a segment too small for the call: still the same bits', async () => {
    const hashes: Record<string, number[]> = {};
    const cases: Array<{ env: NodeJS.ProcessEnv; extra: (r: number) => Partial<RingOptions> }> = [
      { env: {}, extra: () => ({ sharedMemory: 'off' }) },
      // Ranks that send through shared memory and ranks that do not, in one ring.
      {
        env: {},
        extra: (r) => ({ sharedMemory: r % 2 ? 'off' : 'auto', sharedMemoryFrameBytes: 3 * 65536 }),
      },
      { env: { RINGDIFF_RING_KERNELS: 'js' }, extra: () => ({}) },
      // A 1 MiB segment: the 4 MB calls overflow to the socket from some step on (frames of
      // several chunks are then split into chunk frames).
      { env: {}, extra: () => ({ sharedMemoryBytes: 1 << 20, sharedMemoryFrameBytes: 5 * 65536 }) },
      { env: { RINGDIFF_RING_SHM: 'off' }, extra: () => ({}) },
    ];
    let overflowed = 0;
    for (const [i, { env, extra }] of cases.entries()) {
      const peers = await startPeers(4, env);
      for (const compression of ['none', 'fp16'] as const) {
        const job = newJob();
        await openJobRing(peers, job, ipcAddrs(4), (r) => ({ chunkBytes: 65536, compression, ...extra(r) }));
        for (const [length, op] of [
          [3, 'sum'],
          [1009, 'mean'],
          [1_000_003, 'sum'],
          [300_007, 'mean'],
        ] as const)
          (hashes[`${compression} ${length} ${op}`] ??= []).push(await allReduceAll(peers, length, op, 5));
        const s = await peers[0]?.stats<Stats>();
        if (i === 3) overflowed += s?.shm.overflowFrames ?? 0;
        if (i === 4) assert.equal(s?.shm.active, false);
        await Promise.all(peers.map((p) => p.ok('close')));
      }
      await stopPeers(peers);
    }
    assert.ok(overflowed > 0, 'the 1 MiB segment overflowed to the socket');
    for (const [k, hs] of Object.entries(hashes)) assert.equal(new Set(hs).size, 1, `paths differ: ${k}`);
  });

  test('segments exist only while the ring is open, mode 0600, and are removed on close', async () => {
    const peers = await startPeers(3);
    const job = newJob();
    await openJobRing(peers, job, ipcAddrs(3));
    assert.deepEqual(segmentsOf(job), [], 'created by the first all-reduce, not by open');
    await allReduceAll(peers, 100_000, 'sum', 1);
    await allReduceAll(peers, 3_000_000, 'sum', 2); // larger: every rank replaces its segment
    const files = segmentsOf(job);
    assert.equal(files.length, 3, files.join(' '));
    for (const f of files) assert.equal(statSync(`${SHM_DIR}/${f}`).mode & 0o777, 0o600);
    await Promise.all(peers.map((p) => p.ok('close')));
    assert.deepEqual(segmentsOf(job), []);
    // A rank that exits without closing (process.exit) removes its segment too.
    const job2 = newJob();
    await openJobRing(peers, job2, ipcAddrs(3));
    const rs = await Promise.all(
      peers.map((p) => p.call('allreduce', { length: 50_000, op: 'sum', seed: 3, exitAfter: true })),
    );
    for (const r of rs) assert.equal(r.ok, true, r.error?.message);
    await Promise.all(peers.map((p) => p.exited));
    assert.deepEqual(segmentsOf(job2), []);
  });

  test('SIGKILL mid-call: survivors reject within the timeout, a new generation works, no files left', async () => {
    const n = 4;
    const victim = 2;
    const timeoutMs = 1500;
    const peers = await startPeers(n);
    const addrs = ipcAddrs(n);
    const job = newJob();
    await Promise.all(
      peers.map((p, r) =>
        p.ok('open', {
          // One chunk per frame, so that the 40th frame falls inside the second call.
          opts: jobRingOpts(job, addrs, r, { timeoutMs, chunkBytes: 4096, sharedMemoryFrameBytes: 4096 }),
          killAtFrame: r === victim ? 40 : undefined,
        }),
      ),
    );
    await allReduceAll(peers, 1000, 'sum', 1);
    const calls = peers.map((p) => p.call('allreduce', { length: 1_000_000, op: 'sum', seed: 2 }));
    const died = await Promise.race([
      peers[victim]?.exited.then(() => true),
      new Promise<boolean>((r) => setTimeout(() => r(false), 60_000).unref()),
    ]);
    assert.ok(died, 'the victim killed itself during the second call');
    const killedAt = peers[victim]?.exitedAt as number;
    const survivors = [0, 1, 3];
    for (const r of survivors) {
      const reply = (await calls[r]) as Reply;
      const at = performance.now();
      assert.equal(reply.ok, false, `rank ${r} should have failed`);
      assert.ok(['RING_TIMEOUT', 'RING_ABORTED'].includes(reply.error?.code as string), reply.error?.message);
      assert.ok(
        at - killedAt <= timeoutMs + 1500,
        `rank ${r} rejected ${Math.round(at - killedAt)} ms after the kill`,
      );
    }
    const live = survivors.map((r) => peers[r] as Peer);
    for (const p of live) await p.ok('close');
    // The victim's segment was removed by the ranks that had mapped it.
    assert.deepEqual(segmentsOf(job), []);
    const addrs2 = survivors.map((r) => addrs[r] as string);
    await Promise.all(
      live.map((p, r) =>
        p.ok('open', { opts: jobRingOpts(job, addrs2, r, { generation: 2, chunkBytes: 4096 }) }),
      ),
    );
    await allReduceAll(live, 1_000_003, 'sum', 3);
    await allReduceAll(live, 5, 'mean', 4);
    const st = await live[0]?.stats<Stats>();
    assert.ok((st?.shm.framesReceived ?? 0) > 0);
    await stopPeers(live);
    assert.deepEqual(segmentsOf(job), []);
  });

  test('forged shared-memory headers are dropped and counted, the ring stays intact', async () => {
    const peers = await startPeers(2);
    const addrs = ipcAddrs(2);
    const job = newJob();
    const generation = 5;
    await openJobRing(peers, job, addrs, { generation });
    await allReduceAll(peers, 100_000, 'sum', 1); // rank 1 now has a segment (its successor: rank 0)
    const real = segmentsOf(job).find((f) => f.includes(`-g${generation}-r1-`));
    assert.ok(real, 'rank 1 segment exists');
    const realBytes = statSync(`${SHM_DIR}/${real}`).size;

    // Local files a hostile process could prepare, with names of the accepted form.
    const fake = (suffix: string) => segmentName(job, generation, 1).replace(/-[0-9a-f]{16}$/, `-${suffix}`);
    const link = fake('00000000000000aa');
    symlinkSync('/etc/passwd', `${SHM_DIR}/${link}`);
    const world = fake('00000000000000bb');
    writeFileSync(`${SHM_DIR}/${world}`, Buffer.alloc(4096));
    chmodSync(`${SHM_DIR}/${world}`, 0o666);
    const fifo = fake('00000000000000cc');
    execFileSync('mkfifo', ['-m', '600', `${SHM_DIR}/${fifo}`]);

    const rogue = new zmq.Push({ linger: 1000 });
    rogue.connect(addrs[0] as string);
    const send = (over: Partial<FrameHeader>, payload = Buffer.alloc(0)) =>
      rogue.send([
        encodeHeader({
          jobId: job,
          generation,
          seq: 0, // an old call: a frame that got through would be counted 'unexpected'
          step: 0,
          phase: Phase.REDUCE_SCATTER,
          chunk: 0,
          sender: 1,
          encoding: Encoding.F32,
          count: 2,
          length: 4,
          chunks: 1,
          root: 0,
          shmSegment: real,
          shmOffset: 0,
          ...over,
        }),
        payload,
      ]);
    const forged: Array<Partial<FrameHeader>> = [
      { shmSegment: '../../../etc/passwd' }, // path traversal (frame decoder)
      { shmSegment: `${real}/../../etc/passwd` },
      { shmSegment: '/etc/shadow' },
      { shmOffset: realBytes }, // out of bounds
      { shmOffset: realBytes - 4 }, // starts inside, ends outside
      { shmOffset: 2 ** 52 },
      { count: 2 ** 31 }, // huge length
      { shmSegment: link }, // symlink to /etc/passwd
      { shmSegment: world }, // readable by others
      { shmSegment: fifo }, // a FIFO (opening must not block)
      { shmSegment: fake('00000000000000dd') }, // does not exist
      { shmSegment: segmentName(job, generation, 0) }, // rank 0's own name
      { shmSegment: segmentName(`${job}-other`, generation, 1) }, // another job's name
      { shmSegment: segmentName(job, generation + 1, 1) }, // another generation's name
      { sender: 0 }, // not from the predecessor
      { phase: Phase.DONE }, // not a data phase
    ];
    for (const f of forged) await send(f);
    await send({}, Buffer.alloc(8)); // payload inline and in shared memory
    const want = forged.length + 1;
    let st: Stats | undefined;
    await eventually(async () => {
      st = await peers[0]?.stats<Stats>();
      return (st?.dropped.malformed ?? 0) >= want;
    });
    assert.deepEqual(st?.dropped, {
      foreignJob: 0,
      staleGeneration: 0,
      futureGeneration: 0,
      malformed: want,
      unexpected: 0,
    });
    for (const f of [link, world, fifo]) unlinkSync(`${SHM_DIR}/${f}`);
    // Alive, and the ring is intact.
    await allReduceAll(peers, 4, 'sum', 2);
    await allReduceAll(peers, 200_000, 'mean', 3);
    rogue.close();
    await stopPeers(peers);
    assert.deepEqual(segmentsOf(job), []);
  });

  test('a /dev/shm too small for the segment: the ring falls back to the socket, results exact', async (t) => {
    // Its own mount namespace with a 1 MiB tmpfs on /dev/shm (root and util-linux's unshare).
    const why = missingMountNamespace();
    if (why) return t.skip(why);
    const fixture = fileURLToPath(new URL('./fixtures/shm-full.js', import.meta.url));
    const r = spawnSync(
      'unshare',
      [
        '-m',
        'sh',
        '-c',
        'mount -t tmpfs -o size=1m tmpfs /dev/shm && exec "$0" "$1"',
        process.execPath,
        fixture,
      ],
      { encoding: 'utf8', env: { ...process.env, RINGDIFF_SHM_FULL: '1' }, timeout: 60_000 },
    );
    assert.equal(r.status, 0, r.stderr);
    const out = JSON.parse(r.stdout) as {
      exact: boolean;
      stats: { active: boolean; reason: string | null; framesSent: number }[];
    };
    assert.ok(out.exact, 'all-reduce results exact');
    for (const s of out.stats) {
      assert.equal(s.active, false);
      assert.match(s.reason ?? '', /cannot create a segment/);
      assert.equal(s.framesSent, 0);
    }
    t.diagnostic(`fallback reason: ${out.stats[0]?.reason}`);
  });

  test('not used over tcp:// or with CURVE', async () => {
    const ring = await Ring.open({
      jobId: newJob(),
      rank: 0,
      worldSize: 2,
      generation: 1,
      bindAddress: `tcp://127.0.0.1:${await freePort()}`,
      successorAddress: `tcp://127.0.0.1:${await freePort()}`,
      closeLingerMs: 0,
    });
    assert.equal(ring.stats().shm.active, false);
    assert.match(ring.stats().shm.reason ?? '', /ipc/);
    await ring.close();
    const k = zmq.curveKeyPair();
    const addrs = ipcAddrs(2);
    const curve = await Ring.open({
      jobId: newJob(),
      rank: 0,
      worldSize: 2,
      generation: 1,
      bindAddress: addrs[0] as string,
      successorAddress: addrs[1] as string,
      closeLingerMs: 0,
      encryption: 'curve',
      curve: { ...k, successorPublicKey: k.publicKey, allowedClientKeys: k.publicKey },
    });
    assert.equal(curve.stats().shm.active, false);
    assert.match(curve.stats().shm.reason ?? '', /curve/);
    await curve.close();
  });
});
