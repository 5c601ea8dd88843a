/**
 * Hostile input, generated from fixed seeds so that every case is reproducible:
 *
 * - the coordinator's gRPC port (a real `ringdiff coordinator` process): random bytes and seeded
 *   mutations of valid HTTP/2 + gRPC connections over raw TCP, HTTP/2 abuse (rapid reset,
 *   CONTINUATION/PING/SETTINGS floods, idle and half-open connections), hostile gRPC requests over
 *   a well-behaved HTTP/2 client (mutated protobuf, lying length prefixes, a gzip bomb, bad
 *   metadata), an oversized message; afterwards the coordinator still runs a job to completion;
 * - a ring's ZeroMQ PULL port while two in-process ranks all-reduce: random and mutated frames
 *   from ZeroMQ PUSH sockets (each counted in `dropped` exactly), raw TCP garbage and mutated
 *   ZMTP streams, oversized frames;
 * - checkpoints (mutated, resealed, truncated, deleted files), datasets (IDX, gzip, npy) and job
 *   configs (YAML): each either loads or fails with one line naming the file, and nothing on disk
 *   changes.
 */
import { after, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as http2 from 'node:http2';
import * as net from 'node:net';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { gzipSync } from 'node:zlib';
import * as grpc from '@grpc/grpc-js';
import * as zmq from 'zeromq';
import { ringdiff } from '../src/proto-gen/coordinator.js';
import { CoordinatorClient } from '../src/worker/client.js';
import { CoordinatorServer } from '../src/coordinator/server.js';
import { Ring } from '../src/allreduce/ring.js';
import { Encoding, Phase, decodeMessage, encodeHeader, type FrameHeader } from '../src/allreduce/frame.js';
import {
  CheckpointError,
  latestValidCheckpoint,
  loadCheckpoint,
  writeCheckpoint,
} from '../src/model/checkpoint.js';
import type { HostTensor } from '../src/model/params.js';
import { openIdx } from '../src/data/idx.js';
import { encodeNpy, openNpy } from '../src/data/npy.js';
import type { Source } from '../src/data/preprocess.js';
import { ConfigError, loadConfig } from '../src/config/load.js';
import {
  LocalCluster,
  TOKEN,
  freePort,
  runRingdiffCli,
  spawnRingdiff,
  toyJobYaml,
} from './cluster-harness.js';

import pb = ringdiff.v1;

const root = fs.mkdtempSync(path.join(tmpdir(), 'ringdiff-hostile-'));
after(() => fs.rmSync(root, { recursive: true, force: true }));

// ---------------------------------------------------------------------------------------------
// Seeded randomness and mutations

/** mulberry32: a small seeded generator; every hostile input below comes from one. */
class Rng {
  private s: number;
  constructor(seed: number) {
    this.s = seed >>> 0;
  }
  u32(): number {
    let t = (this.s = (this.s + 0x6d2b79f5) >>> 0);
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return (t ^ (t >>> 14)) >>> 0;
  }
  float(): number {
    return this.u32() / 2 ** 32;
  }
  int(n: number): number {
    return Math.floor(this.float() * n);
  }
  pick<T>(a: readonly T[]): T {
    return a[this.int(a.length)] as T;
  }
  bytes(n: number): Buffer {
    const b = Buffer.alloc(n);
    for (let i = 0; i < n; i++) b[i] = this.u32() & 255;
    return b;
  }
}

const INTERESTING = [0x00, 0x01, 0x7f, 0x80, 0xff, 0x0a, 0x0d, 0x22, 0x27, 0x2c, 0x3a, 0x5b, 0x7d];

/** One seeded mutation of `b`: bit flips, random or boundary bytes, truncation, insertion, deletion, duplication. */
function mutate(r: Rng, b: Buffer): { kind: string; bytes: Buffer } {
  const out = Buffer.from(b);
  const at = () => r.int(Math.max(1, out.length));
  switch (r.int(7)) {
    case 0: {
      const n = 1 + r.int(4);
      for (let i = 0; i < n && out.length > 0; i++) {
        const p = at();
        out[p] = (out[p] as number) ^ (1 << r.int(8));
      }
      return { kind: 'bit flips', bytes: out };
    }
    case 1: {
      const n = 1 + r.int(8);
      for (let i = 0; i < n && out.length > 0; i++) out[at()] = r.int(256);
      return { kind: 'random bytes', bytes: out };
    }
    case 2:
      if (out.length > 0) out[at()] = r.pick(INTERESTING);
      return { kind: 'boundary byte', bytes: out };
    case 3:
      return { kind: 'truncation', bytes: out.subarray(0, r.int(out.length)) };
    case 4: {
      const p = at();
      return {
        kind: 'insertion',
        bytes: Buffer.concat([out.subarray(0, p), r.bytes(1 + r.int(16)), out.subarray(p)]),
      };
    }
    case 5: {
      const p = at();
      return {
        kind: 'deletion',
        bytes: Buffer.concat([out.subarray(0, p), out.subarray(p + 1 + r.int(16))]),
      };
    }
    default: {
      const p = at();
      const q = Math.min(out.length, p + 1 + r.int(64));
      return {
        kind: 'duplication',
        bytes: Buffer.concat([out.subarray(0, q), out.subarray(p, q), out.subarray(q)]),
      };
    }
  }
}

/** Counts of each key (for diagnostics). */
function tally(xs: readonly string[]): string {
  const m = new Map<string, number>();
  for (const x of xs) m.set(x, (m.get(x) ?? 0) + 1);
  return [...m]
    .sort((a, b) => b[1] - a[1])
    .map(([k, v]) => `${k} ${v}`)
    .join(', ');
}

/** sha256 of every file under `dir` (relative path → digest). */
function fileDigests(dir: string): Map<string, string> {
  const out = new Map<string, string>();
  for (const rel of fs.readdirSync(dir, { recursive: true }) as string[]) {
    const f = path.join(dir, rel);
    if (fs.statSync(f).isFile()) out.set(rel, createHash('sha256').update(fs.readFileSync(f)).digest('hex'));
  }
  return out;
}

/** Asserts that `e` is an Error of one line that names `name`; returns its message. */
function oneLine(e: unknown, name: string, what: string): string {
  assert.ok(e instanceof Error, `${what}: threw a non-Error ${String(e)}`);
  assert.ok(!/[\r\n]/.test(e.message), `${what}: multi-line error: ${JSON.stringify(e.message)}`);
  assert.ok(e.message.includes(name), `${what}: error does not name ${name}: ${e.message}`);
  return e.message;
}

/** Runs `fn` over `items` with at most `n` in flight. */
async function pool<T>(
  items: readonly T[],
  n: number,
  fn: (x: T, i: number) => Promise<void>,
): Promise<void> {
  let next = 0;
  await Promise.all(
    Array.from({ length: n }, async () => {
      while (next < items.length) {
        const i = next++;
        await fn(items[i] as T, i);
      }
    }),
  );
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
/** Resolves with `value` after `ms` without keeping the process alive (for races). */
const deadline = <T>(ms: number, value: T) => new Promise<T>((r) => setTimeout(() => r(value), ms).unref());

/**
 * Opens a TCP connection, writes `chunks` (with `gapMs` between them; with `lockstep`, chunk k ≥ 1
 * waits, up to 300 ms, until the peer has sent `lockstep[k − 1]` bytes), collects what comes back
 * until the peer closes or `waitMs` passed, then destroys the socket.
 */
function tcpExchange(
  port: number,
  chunks: readonly Buffer[],
  waitMs: number,
  opts: { gapMs?: number; lockstep?: readonly number[] } = {},
): Promise<{ received: Buffer; closedByPeer: boolean }> {
  return new Promise((resolve) => {
    const got: Buffer[] = [];
    let gotBytes = 0;
    let wake: (() => void) | null = null;
    let closedByPeer = false;
    let done = false;
    const s = net.connect(port, '127.0.0.1');
    const finish = () => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      s.destroy();
      wake?.();
      resolve({ received: Buffer.concat(got), closedByPeer });
    };
    const timer = setTimeout(finish, waitMs);
    s.on('data', (d: Buffer) => {
      got.push(d);
      gotBytes += d.length;
      wake?.();
    });
    s.on('error', () => {
      closedByPeer = true;
      finish();
    });
    s.on('end', () => {
      closedByPeer = true;
      finish();
    });
    s.on('close', finish);
    s.on('connect', () => {
      void (async () => {
        for (let k = 0; k < chunks.length; k++) {
          const need = k > 0 ? opts.lockstep?.[k - 1] : undefined;
          const until = performance.now() + 300;
          while (need !== undefined && gotBytes < need && !done && performance.now() < until)
            await new Promise<void>((r) => {
              wake = r;
              setTimeout(r, 20);
            });
          if (done) return;
          s.write(chunks[k] as Buffer);
          if (opts.gapMs) await sleep(opts.gapMs);
        }
      })();
    });
  });
}

// ---------------------------------------------------------------------------------------------
// HTTP/2 and gRPC on the wire

const PREFACE = Buffer.from('PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n', 'latin1');
const H2 = { DATA: 0, HEADERS: 1, RST_STREAM: 3, SETTINGS: 4, PING: 6, GOAWAY: 7, CONTINUATION: 9 };

function h2frame(type: number, flags: number, stream: number, payload: Buffer = Buffer.alloc(0)): Buffer {
  const h = Buffer.alloc(9);
  h.writeUIntBE(payload.length, 0, 3);
  h[3] = type;
  h[4] = flags;
  h.writeUInt32BE(stream >>> 0, 5);
  return Buffer.concat([h, payload]);
}

/** HPACK integer with an n-bit prefix (RFC 7541 §5.1). */
function hpackInt(v: number, bits: number): number[] {
  const max = (1 << bits) - 1;
  if (v < max) return [v];
  const out = [max];
  v -= max;
  while (v >= 128) {
    out.push((v % 128) + 128);
    v = Math.floor(v / 128);
  }
  out.push(v);
  return out;
}

/** Headers as HPACK "literal without indexing, new name" fields (no Huffman, no dynamic table). */
function hpack(headers: ReadonlyArray<readonly [string, string]>): Buffer {
  const parts: Buffer[] = [];
  for (const [k, v] of headers) {
    const kb = Buffer.from(k, 'latin1');
    const vb = Buffer.from(v, 'latin1');
    parts.push(Buffer.from([0, ...hpackInt(kb.length, 7)]), kb, Buffer.from(hpackInt(vb.length, 7)), vb);
  }
  return Buffer.concat(parts);
}

/** A gRPC length-prefixed message. */
function grpcMessage(body: Uint8Array, compressed = 0, declared = body.length): Buffer {
  const h = Buffer.alloc(5);
  h[0] = compressed;
  h.writeUInt32BE(declared >>> 0, 1);
  return Buffer.concat([h, body]);
}

interface Call {
  method: string;
  body: Uint8Array;
  token: string;
}

function requestHeaders(c: Call, authority: string): Array<[string, string]> {
  const h: Array<[string, string]> = [
    [':method', 'POST'],
    [':scheme', 'http'],
    [':path', `/ringdiff.v1.Coordinator/${c.method}`],
    [':authority', authority],
    ['content-type', 'application/grpc'],
    ['te', 'trailers'],
  ];
  if (c.token) h.push(['authorization', `Bearer ${c.token}`]);
  return h;
}

/** One gRPC call as HTTP/2 frames on `stream`: HEADERS, then DATA with END_STREAM. */
function callFrames(c: Call, stream: number, authority: string): Buffer {
  return Buffer.concat([
    h2frame(H2.HEADERS, 0x4, stream, hpack(requestHeaders(c, authority))),
    h2frame(H2.DATA, 0x1, stream, grpcMessage(c.body)),
  ]);
}

function parseFrames(b: Buffer): Array<{ type: number; flags: number; stream: number; length: number }> {
  const out = [];
  for (let p = 0; p + 9 <= b.length;) {
    const length = b.readUIntBE(p, 3);
    out.push({ type: b[p + 3] as number, flags: b[p + 4] as number, stream: b.readUInt32BE(p + 5), length });
    p += 9 + length;
  }
  return out;
}

/** Calls whose mutations cannot change the job: no valid token on the one that could (Register). */
function sampleCalls(): Call[] {
  const id = 'no-such-worker';
  return [
    { method: 'Status', body: pb.StatusRequest.encode({}).finish(), token: TOKEN },
    {
      method: 'Heartbeat',
      body: pb.HeartbeatRequest.encode({ workerId: id, generation: 3, step: 7 }).finish(),
      token: TOKEN,
    },
    {
      method: 'Register',
      body: pb.RegisterRequest.encode({
        host: 'evil-host',
        backend: 'cpu',
        device: 'x',
        ringEndpoint: 'tcp://127.0.0.1:9',
        pid: 4242,
        hasData: true,
        committedStep: 12,
        weightsChecksum: 'ab'.repeat(32),
      }).finish(),
      token: 'wrong-token-wrong-token-00',
    },
    {
      method: 'Report',
      body: pb.StepReport.encode({
        workerId: id,
        generation: 1,
        step: 5,
        loss: 0.5,
        lossQuarters: [1, 2, 3, 4],
        stepMs: 12,
        examples: 30,
      }).finish(),
      token: TOKEN,
    },
    {
      method: 'FetchShard',
      body: pb.ShardRequest.encode({ workerId: id, generation: 1, step: 0, from: 0, to: 10 }).finish(),
      token: TOKEN,
    },
    {
      method: 'PushState',
      body: pb.StateChunk.encode({
        workerId: id,
        generation: 1,
        step: 20,
        part: pb.StatePart.SNAPSHOT,
        offset: 0,
        total: 4,
        data: Buffer.from([1, 2, 3, 4]),
        reason: 'checkpoint',
      }).finish(),
      token: TOKEN,
    },
    {
      method: 'FetchState',
      body: pb.FetchStateRequest.encode({
        workerId: id,
        generation: 1,
        parts: [pb.StatePart.SNAPSHOT],
      }).finish(),
      token: TOKEN,
    },
    { method: 'Plans', body: pb.PlansRequest.encode({ workerId: id }).finish(), token: TOKEN },
  ];
}

/** Raw HTTP/2 connections: random bytes and seeded mutations of valid gRPC connections. */
function rawConnections(
  seed: number,
  count: number,
  authority: string,
): Array<{ kind: string; bytes: Buffer }> {
  const r = new Rng(seed);
  const calls = sampleCalls();
  const settings = h2frame(H2.SETTINGS, 0, 0);
  const out: Array<{ kind: string; bytes: Buffer }> = [];
  for (let i = 0; i < count; i++) {
    const c = r.pick(calls);
    const valid = Buffer.concat([PREFACE, settings, callFrames(c, 1, authority)]);
    const head = PREFACE.length + settings.length;
    switch (r.int(6)) {
      case 0:
        out.push({ kind: 'random bytes', bytes: r.bytes(1 + r.int(4096)) });
        break;
      case 1:
        out.push({
          kind: 'preface + random bytes',
          bytes: Buffer.concat([PREFACE, r.bytes(1 + r.int(2048))]),
        });
        break;
      case 2: {
        const frames = [PREFACE, settings];
        for (let k = 1 + r.int(20); k > 0; k--) {
          const stream = r.pick([0, 1, 3, 2, 0x7fffffff, r.u32()]);
          const f = h2frame(r.int(13), r.int(256), stream, r.bytes(r.int(300)));
          // Now and then a frame header that claims far more than follows.
          if (r.int(20) === 0) f.writeUIntBE(r.int(1 << 24), 0, 3);
          frames.push(f);
        }
        out.push({ kind: 'preface + random frames', bytes: Buffer.concat(frames) });
        break;
      }
      case 3: {
        let b: Buffer = valid;
        const kinds = [];
        for (let k = 1 + r.int(3); k > 0; k--) {
          const m = mutate(r, b);
          b = m.bytes;
          kinds.push(m.kind);
        }
        out.push({ kind: `mutated connection (${kinds.join('+')})`, bytes: b });
        break;
      }
      default: {
        // Mutations behind a valid preface and SETTINGS: they reach HPACK, gRPC framing and protobuf.
        const m = mutate(r, valid.subarray(head));
        out.push({
          kind: `mutated request (${m.kind})`,
          bytes: Buffer.concat([valid.subarray(0, head), m.bytes]),
        });
      }
    }
  }
  return out;
}

/** One request over a real HTTP/2 client; resolves with the HTTP status and grpc-status. */
function h2Request(
  session: http2.ClientHttp2Session,
  headers: http2.OutgoingHttpHeaders,
  body: Buffer,
  timeoutMs = 10_000,
): Promise<{ http: number; grpc: number | null; message: string }> {
  return new Promise((resolve) => {
    let http = 0;
    let status: number | null = null;
    let message = '';
    const take = (h: http2.IncomingHttpHeaders) => {
      if (h['grpc-status'] !== undefined) status = Number(h['grpc-status']);
      if (typeof h['grpc-message'] === 'string') message = decodeURIComponent(h['grpc-message']);
    };
    let req: http2.ClientHttp2Stream;
    try {
      req = session.request(headers);
    } catch (e) {
      resolve({ http: -1, grpc: null, message: (e as Error).message });
      return;
    }
    const timer = setTimeout(() => req.close(http2.constants.NGHTTP2_CANCEL), timeoutMs);
    req.on('response', (h) => {
      http = Number(h[':status']);
      take(h);
    });
    req.on('trailers', take);
    req.on('data', () => {});
    req.on('error', (e: Error) => {
      if (!message) message = e.message;
    });
    req.on('close', () => {
      clearTimeout(timer);
      resolve({ http, grpc: status, message });
    });
    req.end(body);
  });
}

// ---------------------------------------------------------------------------------------------
// The coordinator

const toy = (name: string, steps: number) => toyJobYaml(root, name, steps);

interface LogLine {
  msg?: string;
  error?: string;
  dir?: string;
  step?: number;
}

function logLines(file: string): LogLine[] {
  const out: LogLine[] = [];
  for (const line of fs.readFileSync(file, 'utf8').split('\n')) {
    try {
      out.push(JSON.parse(line) as LogLine);
    } catch {
      // not JSON (a stray line): ignored
    }
  }
  return out;
}

describe('the coordinator under hostile input', { timeout: 300_000 }, () => {
  test('connections Node leaves open after an HTTP/2 protocol error are reaped; close() is bounded', async (t) => {
    const server = new CoordinatorServer({
      jobId: 'j',
      token: TOKEN,
      configYaml: '',
      globalBatch: 1,
      totalSteps: 1,
      minWorkers: 1,
      maxWorkers: 4,
      heartbeatTimeoutMs: 3000,
      verifyEvery: 0,
      curve: false,
      keepaliveMs: { time: 1000, timeout: 1000 },
    });
    const port = await server.listen('127.0.0.1:0');
    let closed = false;
    t.after(() => (closed ? undefined : server.close(100)));
    const fds = () => fs.readdirSync('/proc/self/fd').length;
    // A complete call, then a frame header announcing 16 MiB (FRAME_SIZE_ERROR), then the peer leaves.
    const status = sampleCalls()[0] as Call;
    const poison = Buffer.concat([
      PREFACE,
      h2frame(H2.SETTINGS, 0, 0),
      callFrames(status, 1, `127.0.0.1:${port}`),
      Buffer.from([0xff, 0xff, 0xff, 0, 0, 0, 0, 0, 0]),
    ]);
    const before = fds();
    await pool(Array.from({ length: 50 }), 10, async () => void (await tcpExchange(port, [poison], 100)));
    await sleep(200);
    const leaked = fds() - before;
    const t0 = performance.now();
    while (fds() - before > 2 && performance.now() - t0 < 6000) await sleep(100);
    t.diagnostic(
      `50 poisoned connections: ${leaked} descriptors still open after the peers left; ` +
        `${fds() - before} after ${((performance.now() - t0) / 1000).toFixed(1)} s of keepalive`,
    );
    assert.ok(fds() - before <= 2, `${fds() - before} descriptors still open`);
    // With fresh ones open, close() still returns (after its grace period).
    await pool(Array.from({ length: 5 }), 5, async () => void (await tcpExchange(port, [poison], 100)));
    const t1 = performance.now();
    closed = await Promise.race([server.close(1000).then(() => true), deadline(5000, false)]);
    assert.ok(closed, 'close() returned');
    assert.ok(performance.now() - t1 < 3000, `close() took ${performance.now() - t1} ms`);
  });

  test('resumes past a corrupt checkpoint; survives raw-TCP/HTTP/2/gRPC garbage; then runs a job to the end', async (t) => {
    // A run directory with two checkpoints (steps 20 and 40) from a single-process run.
    const cfgFile = path.join(root, 'phoenix.yaml');
    fs.writeFileSync(cfgFile, toy('phoenix', 60));
    const train = spawnRingdiff(root, 'train', ['train', '--config', cfgFile, '--set', 'train.steps=40']);
    assert.equal(await train.exit, 0, `train failed; see ${train.log}`);
    const runDir = path.join(root, 'phoenix');
    // The newest one is damaged: one byte of its model weights flipped.
    const victim = path.join(runDir, 'ckpt-40', 'model.safetensors');
    const bytes = fs.readFileSync(victim);
    const at = bytes.length - 17;
    bytes[at] = (bytes[at] as number) ^ 0x40;
    fs.writeFileSync(victim, bytes);
    const before = fileDigests(runDir);

    const dir = path.join(root, 'coord');
    fs.mkdirSync(dir);
    const cluster = new LocalCluster(dir, toy('phoenix', 60), ['cluster.min_workers=1']);
    const idle: net.Socket[] = [];
    try {
      const coord = await cluster.startCoordinator();
      await cluster.waitFor(() => true, 'the coordinator to answer', 60_000);
      const port = Number(cluster.address.split(':')[1]);
      const alive = async (what: string) => {
        assert.equal(coord.child.exitCode, null, `the coordinator exited (${what}); see ${coord.log}`);
        assert.ok(await cluster.status(), `Status answers after ${what}`);
      };

      // Start-up: the damaged checkpoint is skipped with a one-line error, ckpt-20 is resumed from,
      // and nothing on disk changed.
      const lines = logLines(coord.log);
      const skip = lines.find((l) => l.msg === 'skipping unusable checkpoint');
      assert.ok(skip?.error && skip.dir?.endsWith('ckpt-40'), 'the damaged checkpoint is reported');
      assert.ok(!/[\r\n]/.test(skip.error), 'its error is one line');
      assert.match(skip.error, /ckpt-40\/model\.safetensors: sha256 [0-9a-f]{64} does not match state\.json/);
      assert.equal(lines.find((l) => l.msg === 'resuming from checkpoint')?.step, 20);
      assert.deepEqual(fileDigests(runDir), before, 'the run directory is untouched');
      t.diagnostic(`start-up: skipped: ${skip.error}`);

      // Sanity: the hand-built HTTP/2 connection is a valid gRPC call (a Status reply comes back).
      const status = sampleCalls()[0] as Call;
      const ok = await tcpExchange(
        port,
        [Buffer.concat([PREFACE, h2frame(H2.SETTINGS, 0, 0), callFrames(status, 1, cluster.address)])],
        2000,
      );
      const reply = parseFrames(ok.received);
      assert.ok(
        reply.some((f) => f.type === H2.DATA && f.stream === 1 && f.length > 5),
        'the unmutated connection gets a Status reply',
      );

      // 1. Raw TCP: 600 connections of random bytes and mutated valid connections, 24 at a time,
      //    while 100 connections sit idle after the preface and 20 stop half-way through it.
      for (let i = 0; i < 120; i++) {
        const s = net.connect(port, '127.0.0.1');
        s.on('error', () => {});
        s.on('connect', () =>
          s.write(i < 100 ? Buffer.concat([PREFACE, h2frame(H2.SETTINGS, 0, 0)]) : PREFACE.subarray(0, 7)),
        );
        idle.push(s);
      }
      const raw = rawConnections(0x5eed01, 600, cluster.address);
      let answered = 0;
      let closed = 0;
      await pool(raw, 24, async (c) => {
        const x = await tcpExchange(port, [c.bytes], 150);
        if (x.received.length > 0) answered++;
        if (x.closedByPeer) closed++;
      });
      t.diagnostic(
        `raw TCP: ${raw.length} connections (${tally(raw.map((c) => c.kind.replace(/ \(.*$/, '')))}); ` +
          `${answered} got bytes back, ${closed} closed by the server`,
      );
      await alive('the raw TCP fuzz');

      // 2. HTTP/2 abuse on single connections.
      const settings = h2frame(H2.SETTINGS, 0, 0);
      const request = hpack(requestHeaders(status, cluster.address));
      const resetFrames: Buffer[] = [PREFACE, settings];
      for (let s = 1; s < 2000; s += 2) {
        resetFrames.push(h2frame(H2.HEADERS, 0x4, s, request));
        resetFrames.push(h2frame(H2.RST_STREAM, 0, s, Buffer.from([0, 0, 0, 8])));
      }
      const openFrames: Buffer[] = [PREFACE, settings];
      for (let s = 1; s < 4000; s += 2) openFrames.push(h2frame(H2.HEADERS, 0x4, s, request));
      const continuation: Buffer[] = [PREFACE, settings, h2frame(H2.HEADERS, 0, 1, request)];
      for (let i = 0; i < 20_000; i++)
        continuation.push(h2frame(H2.CONTINUATION, 0, 1, Buffer.from([0x40, 1, 0x78, 1, 0x79])));
      const pings: Buffer[] = [PREFACE, settings];
      for (let i = 0; i < 20_000; i++) pings.push(h2frame(H2.PING, 0, 0, Buffer.alloc(8, i & 255)));
      const settingsFlood: Buffer[] = [PREFACE];
      for (let i = 0; i < 20_000; i++)
        settingsFlood.push(h2frame(H2.SETTINGS, 0, 0, Buffer.from([0, 3, 0, 0, 0, 100])));
      const bigHeader = hpack([...requestHeaders(status, cluster.address), ['x-junk', 'j'.repeat(1 << 20)]]);
      const bigHeaders: Buffer[] = [
        PREFACE,
        settings,
        h2frame(H2.HEADERS, 0, 1, bigHeader.subarray(0, 16_000)),
      ];
      for (let p = 16_000; p < bigHeader.length; p += 16_000) {
        const last = p + 16_000 >= bigHeader.length;
        bigHeaders.push(h2frame(H2.CONTINUATION, last ? 0x4 : 0, 1, bigHeader.subarray(p, p + 16_000)));
      }
      const abuse: Array<[string, Buffer[]]> = [
        ['rapid reset: 1000 streams opened and cancelled', resetFrames],
        ['2000 streams opened and never finished', openFrames],
        ['CONTINUATION flood (20 000 frames, no END_HEADERS)', continuation],
        ['PING flood (20 000)', pings],
        ['SETTINGS flood (20 000)', settingsFlood],
        ['1 MiB header in CONTINUATION frames', bigHeaders],
        [
          'frame header announcing 16 MiB, then silence',
          [PREFACE, settings, Buffer.from([0xff, 0xff, 0xff, 0, 0, 0, 0, 0, 1])],
        ],
        [
          'GOAWAY then a request',
          [
            PREFACE,
            settings,
            h2frame(H2.GOAWAY, 0, 0, Buffer.alloc(8)),
            callFrames(status, 1, cluster.address),
          ],
        ],
        [
          'request on stream 0 and on an even stream',
          [PREFACE, settings, callFrames(status, 0, cluster.address), callFrames(status, 2, cluster.address)],
        ],
      ];
      for (const [what, chunks] of abuse) {
        const x = await tcpExchange(port, [Buffer.concat(chunks)], 1000);
        t.diagnostic(
          `HTTP/2 abuse: ${what}: ${x.received.length} bytes back, ${x.closedByPeer ? 'closed by the server' : 'left open'}`,
        );
        await alive(what);
      }

      // 3. Hostile gRPC over a well-behaved HTTP/2 client: every request ends with a status.
      const connect = () => {
        const s = http2.connect(`http://${cluster.address}`);
        s.on('error', () => {});
        return s;
      };
      const base = (c: Call): http2.OutgoingHttpHeaders => ({
        ':method': 'POST',
        ':path': `/ringdiff.v1.Coordinator/${c.method}`,
        'content-type': 'application/grpc',
        te: 'trailers',
        ...(c.token ? { authorization: `Bearer ${c.token}` } : {}),
      });
      const heartbeat = sampleCalls()[1] as Call;
      const expectCode = async (
        what: string,
        headers: http2.OutgoingHttpHeaders,
        body: Buffer,
        want: { grpc?: number; http?: number },
      ) => {
        const session = connect();
        const r = await h2Request(session, headers, body);
        session.destroy();
        t.diagnostic(`gRPC: ${what}: HTTP ${r.http}, grpc-status ${r.grpc ?? '-'} ${r.message}`);
        if (want.grpc !== undefined) assert.equal(r.grpc, want.grpc, `${what}: ${JSON.stringify(r)}`);
        if (want.http !== undefined) assert.equal(r.http, want.http, `${what}: ${JSON.stringify(r)}`);
      };
      const S = grpc.status;
      const hb = (extra: http2.OutgoingHttpHeaders = {}) => ({ ...base(heartbeat), ...extra });
      const body = grpcMessage(heartbeat.body);
      await expectCode('length prefix claims 2 GiB', hb(), grpcMessage(heartbeat.body, 0, 0x7fffffff), {
        grpc: S.RESOURCE_EXHAUSTED,
      });
      await expectCode('compressed flag without grpc-encoding', hb(), grpcMessage(heartbeat.body, 1), {});
      const bomb = gzipSync(Buffer.alloc(128 * 2 ** 20));
      await expectCode(
        `gzip bomb (${(bomb.length / 1024).toFixed(0)} KiB → 128 MiB)`,
        hb({ 'grpc-encoding': 'gzip' }),
        grpcMessage(bomb, 1),
        { grpc: S.RESOURCE_EXHAUSTED },
      );
      await expectCode(
        'garbage gzip',
        hb({ 'grpc-encoding': 'gzip' }),
        grpcMessage(Buffer.from('not gzip'), 1),
        {},
      );
      await expectCode(
        'unknown grpc-encoding',
        hb({ 'grpc-encoding': 'zstd-9000' }),
        grpcMessage(heartbeat.body, 1),
        {},
      );
      await expectCode(
        'invalid protobuf',
        hb(),
        grpcMessage(Buffer.from([0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f])),
        {
          grpc: S.INTERNAL,
        },
      );
      await expectCode(
        'truncated message',
        hb(),
        grpcMessage(heartbeat.body, 0, heartbeat.body.length + 10),
        {},
      );
      await expectCode('unknown method', hb({ ':path': '/ringdiff.v1.Coordinator/Nope' }), body, {
        grpc: S.UNIMPLEMENTED,
      });
      await expectCode('text/plain content-type', hb({ 'content-type': 'text/plain' }), body, { http: 415 });
      await expectCode('GET', hb({ ':method': 'GET' }), Buffer.alloc(0), {});
      await expectCode('grpc-timeout "99999999999H"', hb({ 'grpc-timeout': '99999999999H' }), body, {});
      await expectCode('grpc-timeout "abc"', hb({ 'grpc-timeout': 'abc' }), body, {});
      await expectCode('100 KiB token', hb({ authorization: `Bearer ${'t'.repeat(100_000)}` }), body, {});
      await expectCode('"Bearer" with no token', hb({ authorization: 'Bearer' }), body, {
        grpc: S.UNAUTHENTICATED,
      });
      const many: http2.OutgoingHttpHeaders = hb();
      for (let i = 0; i < 2000; i++) many[`x-m-${i}`] = 'v';
      await expectCode('2000 metadata entries', many, body, {});
      // Seeded mutations of the gRPC message of every method (400 requests, 16 at a time).
      const rg = new Rng(0x5eed02);
      const calls = sampleCalls();
      const mutated = Array.from({ length: 400 }, () => {
        const c = rg.pick(calls);
        const m = mutate(rg, rg.int(2) ? grpcMessage(c.body) : Buffer.from(c.body));
        return { c, body: m.bytes.length >= 5 && rg.int(2) ? m.bytes : grpcMessage(m.bytes) };
      });
      const codes: string[] = [];
      const sessions = Array.from({ length: 16 }, connect);
      await pool(mutated, 16, async ({ c, body }, i) => {
        let session = sessions[i % 16] as http2.ClientHttp2Session;
        if (session.closed || session.destroyed) session = sessions[i % 16] = connect();
        const r = await h2Request(session, base(c), body);
        assert.ok(r.http !== -1, `could not send a mutated ${c.method}: ${r.message}`);
        assert.ok(
          r.grpc !== null || r.http !== 200,
          `a mutated ${c.method} got no status: ${JSON.stringify(r)}`,
        );
        codes.push(r.grpc === null ? `HTTP ${r.http || 'reset'}` : (S[r.grpc] ?? String(r.grpc)));
      });
      t.diagnostic(`gRPC: 400 mutated messages → ${tally(codes)}`);
      for (const x of sessions) x.destroy();
      await alive('hostile gRPC requests');

      // 4. A message beyond the server's 64 MiB limit from a real client, with the right token.
      const big = new CoordinatorClient(cluster.address, TOKEN, undefined, 60_000);
      await assert.rejects(
        big.register({ host: 'x'.repeat(65 * 2 ** 20), ringEndpoint: 'tcp://127.0.0.1:9' }),
        (e: grpc.ServiceError) => e.code === S.RESOURCE_EXHAUSTED,
      );
      big.close();
      await alive('an oversized message');
      for (const s of idle) s.destroy();

      // Nothing of the above registered anybody; the metrics endpoint answers; a real job runs.
      const st = await cluster.status();
      assert.equal(st?.workers.length, 0, 'no worker was registered by the garbage');
      const m = await fetch(`http://${cluster.metricsAddress}/metrics`);
      assert.equal(m.status, 200);
      const rejected = (await m.text())
        .split('\n')
        .filter((l) => l.startsWith('ringdiff_rpc_rejected_total{'))
        .join('; ');
      t.diagnostic(`rejected RPCs counted: ${rejected}`);
      const worker = cluster.startWorker();
      const exit = await Promise.race([coord.exit, deadline(120_000, 'still running after 120 s')]);
      assert.equal(exit, 0, `the job did not finish; see ${coord.log}`);
      assert.equal(await worker.exit, 0, `see ${worker.log}`);
      const end = await loadCheckpoint(path.join(runDir, 'ckpt-60'));
      assert.equal(end.step, 60);
      const after = fileDigests(runDir);
      for (const [f, d] of before) {
        if (f.startsWith('ckpt-20')) assert.equal(after.get(f), d, `${f} is untouched`);
      }
      // The damaged ckpt-40 was replaced by the job's own checkpoint of step 40.
      assert.equal((await loadCheckpoint(path.join(runDir, 'ckpt-40'))).step, 40);
    } finally {
      for (const s of idle) s.destroy();
      await cluster.stop();
    }
  });
});

// ---------------------------------------------------------------------------------------------
// The ring

const JOB = 'hostile-ring-job';
const GEN = 7;
type DropKind = 'malformed' | 'foreignJob' | 'staleGeneration' | 'futureGeneration';

/** What the ring must do with `parts` (the wire format's rules, frame.ts): which counter, or accept. */
function verdict(parts: Buffer[]): DropKind | 'accepted' {
  const d = decodeMessage(parts);
  if (!d.ok) return 'malformed';
  if (d.frame.header.jobId !== JOB) return 'foreignJob';
  if (d.frame.header.generation < GEN) return 'staleGeneration';
  if (d.frame.header.generation > GEN) return 'futureGeneration';
  return 'accepted';
}

function randomHeader(r: Rng, jobId: string, generation: number): { header: FrameHeader; payload: Buffer } {
  const phase = r.pick(Object.values(Phase));
  const encoding = r.pick(Object.values(Encoding));
  const count = r.int(64);
  const payload =
    phase === Phase.ABORT
      ? Buffer.from(`rank 1 gave up: ${'x'.repeat(r.int(100))}`)
      : Buffer.alloc(count * ([4, 2, 1][encoding] as number), r.int(256));
  return {
    header: {
      jobId,
      generation,
      seq: r.int(100),
      step: r.int(4),
      phase,
      chunk: r.int(3),
      sender: r.int(2),
      encoding,
      count: phase === Phase.ABORT ? payload.length : count,
      length: r.int(100_000),
      chunks: 1 + r.int(3),
      root: r.int(2),
    },
    payload,
  };
}

/** A seeded hostile message for the PUSH socket (never one the ring would accept). */
function hostileMessage(r: Rng): { kind: string; parts: Buffer[] } {
  for (;;) {
    let kind: string;
    let parts: Buffer[];
    const k = r.int(6);
    if (k === 0) {
      kind = 'random parts';
      parts = Array.from({ length: 1 + r.int(4) }, () => r.bytes(r.int(10) === 0 ? 65_536 : r.int(512)));
    } else {
      const [what, jobId, generation] =
        k === 1
          ? ['foreign job', r.pick(['zz-other-run-0001', 'another-job', 'x']), GEN]
          : k === 2 || k === 3
            ? ['stale generation', JOB, r.int(GEN)]
            : k === 4
              ? ['future generation', JOB, GEN + 1 + r.int(1000)]
              : ['foreign job, stale generation', 'zz-other-run-0001', r.int(GEN)];
      const { header, payload } = randomHeader(r, jobId as string, generation as number);
      parts = [encodeHeader(header), payload];
      kind = `${what}${header.phase === Phase.ABORT ? ' (ABORT)' : ''}`;
      switch (r.int(6)) {
        case 0:
          break;
        case 1:
        case 2: {
          const m = mutate(r, parts[0] as Buffer);
          parts[0] = m.bytes;
          kind += `, header ${m.kind}`;
          break;
        }
        case 3: {
          const m = mutate(r, parts[1] as Buffer);
          parts[1] = m.bytes;
          kind += `, payload ${m.kind}`;
          break;
        }
        case 4:
          parts = r.int(2) ? [parts[0] as Buffer] : [...parts, r.bytes(r.int(64))];
          kind += ', wrong number of parts';
          break;
        default:
          parts = [parts[0] as Buffer, Buffer.alloc(0)];
          kind += ', empty payload';
      }
    }
    if (verdict(parts) !== 'accepted') return { kind, parts };
  }
}

/** ZMTP 3.0 greeting (RFC 23/ZMTP): signature, version, mechanism, as-server, filler. */
function zmtpGreeting(mechanism = 'NULL', major = 3): Buffer {
  const g = Buffer.alloc(64);
  g[0] = 0xff;
  g[9] = 0x7f;
  g[10] = major;
  g.write(mechanism, 12, 'latin1');
  return g;
}

function zmtpReady(socketType: string): Buffer {
  const name = Buffer.from('READY');
  const key = Buffer.from('Socket-Type');
  const value = Buffer.from(socketType);
  const len = Buffer.alloc(4);
  len.writeUInt32BE(value.length);
  const body = Buffer.concat([Buffer.from([name.length]), name, Buffer.from([key.length]), key, len, value]);
  return Buffer.concat([Buffer.from([0x04, body.length]), body]);
}

function zmtpFrame(body: Buffer, more: boolean, declared?: bigint): Buffer {
  const size = declared ?? BigInt(body.length);
  if (size < 256n) return Buffer.concat([Buffer.from([more ? 1 : 0, Number(size)]), body]);
  const h = Buffer.alloc(9);
  h[0] = 0x02 | (more ? 1 : 0);
  h.writeBigUInt64BE(size, 1);
  return Buffer.concat([h, body]);
}

function zmtpMessage(parts: Buffer[]): Buffer {
  return Buffer.concat(parts.map((p, i) => zmtpFrame(p, i < parts.length - 1)));
}

/**
 * A ZMTP byte stream cut where libzmq wants the greeting exchanged in lock-step (signature, major
 * version, rest of the greeting), with the peer's byte counts to wait for before each next piece.
 */
function zmtpSteps(stream: Buffer): { chunks: Buffer[]; lockstep: number[] } {
  const cuts = [10, 11, 64].filter((c) => c < stream.length);
  const chunks = [0, ...cuts].map((c, i) => stream.subarray(c, cuts[i] ?? stream.length));
  return { chunks, lockstep: cuts };
}

describe('a ring under hostile input', { timeout: 300_000 }, () => {
  test('garbage from PUSH sockets and raw TCP on the PULL ports: results exact, garbage dropped and counted', async (t) => {
    const ports = [await freePort(), await freePort()];
    const addr = ports.map((p) => `tcp://127.0.0.1:${p}`);
    const chunkBytes = 4096;
    const rings = await Promise.all(
      [0, 1].map((r) =>
        Ring.open({
          jobId: JOB,
          rank: r,
          worldSize: 2,
          generation: GEN,
          bindAddress: addr[r] as string,
          successorAddress: addr[1 - r] as string,
          chunkBytes,
          timeoutMs: 20_000,
        }),
      ),
    );
    const [a, b] = rings as [Ring, Ring];
    const rv = new Rng(0x5eed10);
    let calls = 0;
    /** `n` all-reduces of seeded lengths and values; every result must be the exact float32 sum. */
    const allReduces = async (n: number) => {
      for (let i = 0; i < n; i++) {
        const len = rv.int(5) === 0 ? rv.int(4) : 1 + rv.int(30_000);
        const x = Float32Array.from({ length: len }, () => (rv.float() - 0.5) * 2 ** rv.int(20));
        const y = Float32Array.from({ length: len }, () => (rv.float() - 0.5) * 2 ** rv.int(20));
        const want = Float32Array.from(x, (v, j) => Math.fround(v + (y[j] as number)));
        await Promise.all([a.allReduce(x), b.allReduce(y)]);
        calls++;
        const bits = (f: Float32Array) => Buffer.from(f.buffer, f.byteOffset, f.byteLength);
        assert.ok(bits(x).equals(bits(want)), `all-reduce #${calls} (length ${len}) wrong on rank 0`);
        assert.ok(bits(y).equals(bits(want)), `all-reduce #${calls} (length ${len}) wrong on rank 1`);
      }
    };
    const zero = { foreignJob: 0, staleGeneration: 0, futureGeneration: 0, malformed: 0, unexpected: 0 };

    try {
      // Phase 1: 2000 hostile messages from four PUSH sockets (two per rank) during 60 all-reduces;
      // the expected counter of each is known, so the totals must match exactly.
      const rm = new Rng(0x5eed11);
      const msgs = Array.from({ length: 2000 }, () => ({ rank: rm.int(2), ...hostileMessage(rm) }));
      const expected = [{ ...zero }, { ...zero }];
      for (const m of msgs) {
        const e = expected[m.rank] as Record<string, number>;
        const v = verdict(m.parts);
        e[v] = (e[v] ?? 0) + 1;
      }
      const rogues = [0, 1, 2, 3].map((i) => {
        const s = new zmq.Push({ linger: 2000 });
        s.connect(addr[i % 2] as string);
        return s;
      });
      const send = async () => {
        for (let i = 0; i < msgs.length; i++) {
          const m = msgs[i] as (typeof msgs)[number];
          await (rogues[m.rank + 2 * (i % 2)] as zmq.Push).send(m.parts);
          if (i % 50 === 0) await sleep(5);
        }
      };
      await Promise.all([allReduces(60), send()]);
      const dropped = () => [a.stats().dropped, b.stats().dropped];
      const total = () =>
        dropped().reduce((n, d) => n + Object.values(d).reduce((x: number, y: number) => x + y, 0), 0);
      for (let i = 0; i < 200 && total() < msgs.length; i++) await sleep(50);
      assert.deepEqual(dropped(), expected, 'every hostile message dropped and counted under its reason');
      t.diagnostic(`PUSH fuzz: 2000 messages (${tally(msgs.map((m) => m.kind.replace(/, .*$/, '')))})`);
      t.diagnostic(
        `PUSH fuzz: rank 0 dropped ${JSON.stringify(expected[0])}, rank 1 ${JSON.stringify(expected[1])}`,
      );
      for (const s of rogues) s.close();

      // Phase 2: raw TCP on the ZeroMQ ports during 40 more all-reduces.
      const before = dropped();
      const rt = new Rng(0x5eed12);
      const foreign = encodeHeader({
        ...randomHeader(rt, 'zz-other-run-0001', GEN).header,
        phase: Phase.BROADCAST,
        encoding: Encoding.BYTES,
        count: 4,
      });
      const validStream = Buffer.concat([
        zmtpGreeting(),
        zmtpReady('PUSH'),
        zmtpMessage([foreign, Buffer.from('abcd')]),
      ]);
      type Conn = {
        kind: string;
        rank: number;
        chunks: Buffer[];
        gapMs?: number;
        waitMs?: number;
        lockstep?: number[];
      };
      const tcp: Conn[] = [];
      const zmtp = (kind: string, rank: number, stream: Buffer, waitMs = 200): Conn => ({
        kind,
        rank,
        ...zmtpSteps(stream),
        waitMs,
      });
      for (let i = 0; i < 150; i++)
        tcp.push({ kind: 'random bytes', rank: rt.int(2), chunks: [rt.bytes(1 + rt.int(3000))] });
      for (let i = 0; i < 200; i++) {
        const m = mutate(rt, validStream);
        tcp.push(zmtp('mutated ZMTP stream', rt.int(2), m.bytes));
      }
      for (const type of ['REQ', 'PUB', 'PULL', 'ROUTER', 'NOPE', '']) {
        const msg = zmtpMessage([foreign, Buffer.from('abcd')]);
        const s = Buffer.concat([zmtpGreeting(), zmtpReady(type), msg]);
        tcp.push(zmtp(`READY as ${type || '(empty)'}`, rt.int(2), s));
      }
      for (const mech of ['CURVE', 'PLAIN', 'GSSAPI', 'XXXX'])
        tcp.push(zmtp(`${mech} greeting`, rt.int(2), zmtpGreeting(mech)));
      for (const major of [1, 2, 4, 255])
        tcp.push(
          zmtp(
            `ZMTP version ${major}`,
            rt.int(2),
            Buffer.concat([zmtpGreeting('NULL', major), rt.bytes(100)]),
          ),
        );
      for (let i = 0; i < 30; i++) {
        const g = Buffer.concat([zmtpGreeting(), zmtpReady('PUSH')]);
        tcp.push({
          kind: 'slow handshake (a byte every 20 ms)',
          rank: i % 2,
          chunks: [...g.subarray(0, 40)].map((x) => Buffer.from([x])),
          gapMs: 20,
          waitMs: 1000,
        });
      }
      for (let i = 0; i < 100; i++)
        tcp.push({ kind: 'idle connection', rank: i % 2, chunks: [], waitMs: 1500 });
      // One valid stream that delivers 100 foreign-job messages: the hand-built ZMTP is real ZMTP.
      const hundred = Buffer.concat(
        Array.from({ length: 100 }, () => zmtpMessage([foreign, Buffer.from('abcd')])),
      );
      tcp.push(zmtp('valid ZMTP, 100 foreign-job messages', 0, Buffer.concat([validStream, hundred]), 1000));

      /** A frame that announces `size` bytes and then streams zeros: the peer must hang up early. */
      const flood = async (rank: number, size: bigint): Promise<number> => {
        const s = net.connect(ports[rank] as number, '127.0.0.1');
        let sent = 0;
        let received = 0;
        let closed = false;
        s.on('data', (d: Buffer) => (received += d.length));
        s.on('error', () => (closed = true));
        s.on('close', () => (closed = true));
        await new Promise((r) => s.once('connect', r));
        const { chunks, lockstep } = zmtpSteps(
          Buffer.concat([zmtpGreeting(), zmtpReady('PUSH'), zmtpFrame(Buffer.alloc(0), false, size)]),
        );
        for (let k = 0; k < chunks.length; k++) {
          for (let w = 0; k > 0 && received < (lockstep[k - 1] as number) && w < 50; w++) await sleep(10);
          s.write(chunks[k] as Buffer);
        }
        const mib = Buffer.alloc(1 << 20);
        const until = performance.now() + 10_000;
        while (!closed && sent < 256 * 2 ** 20 && performance.now() < until) {
          sent += mib.length;
          if (!s.write(mib)) await Promise.race([new Promise((r) => s.once('drain', r)), sleep(200)]);
        }
        s.destroy();
        return closed ? sent : Infinity;
      };

      const results: string[] = [];
      let floods: number[] = [];
      await Promise.all([
        allReduces(40),
        pool(tcp, 32, async (c) => {
          const x = await tcpExchange(ports[c.rank] as number, c.chunks, c.waitMs ?? 100, {
            gapMs: c.gapMs ?? 0,
            lockstep: c.lockstep ?? [],
          });
          results.push(`${c.kind}: ${x.closedByPeer ? 'closed by the ring' : 'still open'}`);
        }),
        (async () => {
          floods = await Promise.all([flood(0, 2n ** 30n), flood(1, 2n ** 33n), flood(0, 2n ** 62n)]);
        })(),
      ]);
      t.diagnostic(`raw TCP: ${tcp.length} connections: ${tally(results)}`);
      t.diagnostic(
        `frames announcing 1 GiB / 8 GiB / 2^62 B: hung up after ${floods.map((x) => `${x / 2 ** 20} MiB`).join(' / ')}`,
      );
      for (const f of floods)
        assert.ok(f <= 32 * 2 ** 20, `a huge frame was buffered (${f} bytes sent before the ring hung up)`);

      // An oversized frame from a PUSH socket: that peer is disconnected, nothing else happens.
      const big = new zmq.Push({ linger: 0 });
      big.connect(addr[1] as string);
      await big.send([foreign, Buffer.alloc(chunkBytes + 2 * 2 ** 20)]);
      await sleep(300);
      big.close();
      await allReduces(5);

      const after = dropped();
      const gained = [0, 1].map((r) => {
        const x = after[r] as Record<string, number>;
        const y = before[r] as Record<string, number>;
        return Object.fromEntries(Object.keys(x).map((k) => [k, (x[k] as number) - (y[k] as number)]));
      });
      t.diagnostic(
        `raw TCP: counters gained: rank 0 ${JSON.stringify(gained[0])}, rank 1 ${JSON.stringify(gained[1])}`,
      );
      assert.ok(
        (gained[0]?.foreignJob ?? 0) >= 100,
        'the 100 messages of the valid stream arrived and were dropped',
      );
      for (const g of gained) {
        assert.equal(g.unexpected, 0);
        assert.equal(g.staleGeneration, 0);
        assert.equal(g.futureGeneration, 0);
      }
      assert.equal(a.failure, null, 'the generation is healthy');
      assert.equal(a.stats().completed, calls);
      assert.equal(b.stats().completed, calls);
      t.diagnostic(`${calls} all-reduces, all exact on both ranks`);
    } finally {
      await Promise.all([a.close(), b.close()]);
    }
  });
});

// ---------------------------------------------------------------------------------------------
// Checkpoints, datasets, configs

describe('files on disk under hostile mutation', () => {
  test('checkpoints: 200 seeded mutations → loads or one-line CheckpointError; the previous one is resumed; nothing changes', async (t) => {
    const dir = path.join(root, 'ckpt');
    const tensor = (shape: number[], k: number): HostTensor => ({
      shape,
      data: Float32Array.from({ length: shape.reduce((x, y) => x * y, 1) }, (_, i) => Math.sin(i + k)),
    });
    const shapes = new Map<string, number[]>([
      ['net.0.weight', [8, 4]],
      ['net.0.bias', [8]],
      ['out.weight', [2, 8]],
    ]);
    const parts = (k: number) => {
      const model = new Map([...shapes].map(([n, s], i) => [n, tensor(s, k + i)]));
      const optimizer = new Map<string, HostTensor>();
      for (const [n, s] of shapes) {
        optimizer.set(`m.${n}`, tensor(s, k + 10));
        optimizer.set(`v.${n}`, tensor(s, k + 20));
      }
      return { model, ema: new Map([...model].map(([n, x]) => [n, tensor(x.shape, k + 30)])), optimizer };
    };
    const pristine = path.join(dir, 'pristine');
    for (const step of [10, 20])
      await writeCheckpoint(pristine, step, parts(step), { sampler: null, cursor: step }, 5);
    const expect = { model: shapes };
    const files = ['model.safetensors', 'ema.safetensors', 'optimizer.safetensors', 'state.json'];
    const r = new Rng(0x5eed20);
    const outcomes: string[] = [];
    for (let i = 0; i < 200; i++) {
      const run = path.join(dir, `m${i}`);
      fs.cpSync(pristine, run, { recursive: true });
      const ck = path.join(run, 'ckpt-20');
      const file = r.pick(files);
      const f = path.join(ck, file);
      const original = fs.readFileSync(f);
      const mode = r.pick(['mutate', 'mutate', 'reseal', 'reseal', 'delete', 'empty']);
      let what = `${mode} ${file}`;
      let mustFail = true;
      if (mode === 'delete') fs.rmSync(f);
      else if (mode === 'empty') fs.writeFileSync(f, '');
      else {
        const m = mutate(r, original);
        what += ` (${m.kind})`;
        fs.writeFileSync(f, m.bytes);
        if (m.bytes.equals(original)) mustFail = false;
        if (file === 'state.json')
          mustFail = false; // may still be a valid state (say, another cursor)
        else if (mode === 'reseal') {
          // state.json made to agree with the damaged file: the safetensors decoder must catch it.
          const st = JSON.parse(fs.readFileSync(path.join(ck, 'state.json'), 'utf8')) as {
            files: Record<string, { sha256: string; bytes: number }>;
          };
          st.files[file] = {
            sha256: createHash('sha256').update(m.bytes).digest('hex'),
            bytes: m.bytes.length,
          };
          fs.writeFileSync(path.join(ck, 'state.json'), JSON.stringify(st));
          mustFail = false; // a flipped data byte is a valid (different) checkpoint
        }
      }
      const digests = fileDigests(run);
      let error: string | null = null;
      try {
        await loadCheckpoint(ck, expect);
      } catch (e) {
        assert.ok(e instanceof CheckpointError, `${what}: ${String(e)}`);
        error = oneLine(e, 'ckpt-20', what);
      }
      if (mustFail) assert.ok(error, `${what}: loaded`);
      const latest = await latestValidCheckpoint(run, expect);
      if (error) {
        assert.equal(latest.checkpoint?.step, 10, `${what}: the previous checkpoint is resumed`);
        assert.deepEqual(latest.skipped, [{ dir: ck, error }]);
      } else assert.equal(latest.checkpoint?.step, 20);
      assert.deepEqual(fileDigests(run), digests, `${what}: files changed`);
      outcomes.push(error ? `${mode}: rejected` : `${mode}: loaded`);
      fs.rmSync(run, { recursive: true });
    }
    t.diagnostic(`checkpoints: ${tally(outcomes)}`);
  });

  test('datasets: seeded mutations of IDX (raw, gzip, labels) and npy files load well-shaped data or throw one line', (t) => {
    const dir = path.join(root, 'data');
    fs.mkdirSync(dir);
    const idx = (dims: number[], values: Uint8Array, dtype = 0x08) => {
      const head = Buffer.alloc(4 + 4 * dims.length);
      head[2] = dtype;
      head[3] = dims.length;
      dims.forEach((d, i) => head.writeUInt32BE(d, 4 + 4 * i));
      return Buffer.concat([head, values]);
    };
    const images = Uint8Array.from({ length: 4 * 5 * 6 }, (_, i) => (i * 7) & 255);
    const floats = Buffer.alloc(3 * 4 * 2 * 4);
    for (let i = 0; i < 24; i++) floats.writeFloatBE(i / 24 - 0.5, 4 * i);
    const imagesFile = path.join(dir, 'images.idx');
    fs.writeFileSync(imagesFile, idx([4, 5, 6], images));
    const npyImages = path.join(dir, 'images.npy');
    fs.writeFileSync(npyImages, encodeNpy(images, [4, 5, 6]));
    type Case = { name: string; bytes: Buffer; open: (f: string) => Source };
    const bases: Case[] = [
      { name: 'images.idx', bytes: idx([4, 5, 6], images), open: (f) => openIdx(f) },
      { name: 'floats.idx', bytes: idx([3, 4, 2], floats, 0x0d), open: (f) => openIdx(f) },
      { name: 'images.idx.gz', bytes: gzipSync(idx([4, 5, 6], images)), open: (f) => openIdx(f) },
      { name: 'labels.idx', bytes: idx([4], Uint8Array.of(3, 1, 4, 1)), open: (f) => openIdx(imagesFile, f) },
      { name: 'u8.npy', bytes: encodeNpy(images, [4, 5, 6]), open: (f) => openNpy(f) },
      {
        name: 'f4.npy',
        bytes: encodeNpy(
          Float32Array.from({ length: 24 }, (_, i) => i / 24),
          [4, 6],
        ),
        open: (f) => openNpy(f),
      },
      {
        name: 'labels.npy',
        bytes: encodeNpy(BigInt64Array.of(3n, 1n, 4n, 1n), [4]),
        open: (f) => openNpy(npyImages, f),
      },
    ];
    // Headers that lie about sizes.
    const npyText = encodeNpy(images, [4, 5, 6]).toString('latin1');
    const hostile: Case[] = [
      {
        name: 'huge-dims.idx',
        bytes: idx([0xffffffff, 0xffffffff, 0xffffffff], images),
        open: (f) => openIdx(f),
      },
      { name: 'zero-dim.idx', bytes: idx([4, 0, 6], new Uint8Array(0)), open: (f) => openIdx(f) },
      {
        name: 'ndim-255.idx',
        bytes: Buffer.concat([Buffer.from([0, 0, 8, 255]), Buffer.alloc(1020, 0xff)]),
        open: (f) => openIdx(f),
      },
      {
        name: 'huge-shape.npy',
        bytes: Buffer.from(npyText.replace('(4, 5, 6)', '(99999999999999999999, 5)'), 'latin1'),
        open: (f) => openNpy(f),
      },
      {
        name: 'header-4GB.npy',
        bytes: Buffer.concat([
          Buffer.from('\x93NUMPY\x02\x00', 'latin1'),
          Buffer.from([0xff, 0xff, 0xff, 0xff]),
          Buffer.from("{'descr': '|u1'"),
        ]),
        open: (f) => openNpy(f),
      },
      {
        name: 'newline-header.npy',
        bytes: Buffer.from(npyText.replace("'shape'", "'sha\npe'"), 'latin1'),
        open: (f) => openNpy(f),
      },
    ];
    const r = new Rng(0x5eed30);
    const cases: Array<Case & { what: string }> = hostile.map((h) => ({ ...h, what: 'hand-made' }));
    for (const base of bases)
      for (let i = 0; i < 200; i++) {
        const m = mutate(r, base.bytes);
        cases.push({ name: `m${i}-${base.name}`, what: m.kind, bytes: m.bytes, open: base.open });
      }
    const outcomes: string[] = [];
    let withOffset = 0;
    for (const c of cases) {
      const f = path.join(dir, c.name);
      fs.writeFileSync(f, c.bytes);
      const t0 = performance.now();
      try {
        const s = c.open(f);
        const values = s.shape.reduce((x, y) => x * y, 1);
        for (let i = 0; i < s.size; i++) {
          const ex = s.read(i);
          assert.equal(ex.data.length, values, `${c.name}: example ${i} has ${ex.data.length} values`);
          assert.ok(
            Number.isInteger(ex.label) && ex.label >= -1 && ex.label < 2 ** 31,
            `${c.name}: label ${ex.label}`,
          );
        }
        s.close();
        outcomes.push('loaded');
      } catch (e) {
        const msg = oneLine(e, c.name, `${c.name} (${c.what})`);
        if (/offset \d+/.test(msg)) withOffset++;
        outcomes.push('one-line error');
        if (c.what === 'hand-made')
          t.diagnostic(`${c.name}: ${msg.slice(msg.indexOf(c.name)).slice(0, 300)}`);
      }
      assert.ok(performance.now() - t0 < 2000, `${c.name}: took ${performance.now() - t0} ms`);
      fs.rmSync(f);
    }
    t.diagnostic(`datasets: ${cases.length} files: ${tally(outcomes)}; ${withOffset} errors name an offset`);
  });

  const goodConfig = `# a job
run:
  name: hostile-config
  seed: 7
  out_dir: /tmp/ringdiff-never-written
data:
  dataset: "toy:swissroll"
  size: 2048
  random_flip: false
model:
  kind: mlp
  channels: [16, 32]
  hidden: 64
  layers: 2
diffusion: { timesteps: 100, schedule: cosine, timestep_sampler: loss-second-moment }
train:
  steps: 300
  global_batch: 64
  lr: 1.0e-3
  checkpoint_every: 100
sample: { count: 16, sampler: ddim, steps: 20 }
cluster:
  min_workers: 2
  heartbeat_timeout_ms: 5000
  allreduce: { compression: fp16, chunk_bytes: 65536 }
`;

  /** Seeded mutations of YAML text: byte-level, and line-level (delete, duplicate, swap, re-indent, retype). */
  function mutateYaml(r: Rng, text: string): { kind: string; text: string } {
    const lines = text.split('\n');
    const i = r.int(lines.length);
    const j = r.int(lines.length);
    const tokens = [
      '-1',
      '1e999',
      'null',
      '~',
      '[]',
      '{}',
      'yes',
      '"x"',
      '&a',
      '*a',
      '!!binary',
      '0x10',
      '.nan',
      '|',
      '>',
      '? x',
      ':',
      '- ',
      '#',
      '\t',
      '{',
      '[',
      '"',
      "'",
      '%YAML 1.1',
      '---',
      '...',
      '<<: *a',
      '!!str',
      '2e3',
    ];
    switch (r.int(6)) {
      case 0: {
        const m = mutate(r, Buffer.from(text));
        return { kind: `bytes: ${m.kind}`, text: m.bytes.toString('latin1') };
      }
      case 1:
        lines.splice(i, 1);
        return { kind: 'line deleted', text: lines.join('\n') };
      case 2:
        lines.splice(i, 0, lines[i] ?? '');
        return { kind: 'line duplicated', text: lines.join('\n') };
      case 3: {
        const x = lines[i] ?? '';
        lines[i] = lines[j] ?? '';
        lines[j] = x;
        return { kind: 'lines swapped', text: lines.join('\n') };
      }
      case 4:
        lines[i] = r.int(2) ? `  ${lines[i] ?? ''}` : (lines[i] ?? '').replace(/^ {1,2}/, '');
        return { kind: 'indentation changed', text: lines.join('\n') };
      default: {
        const line = lines[i] ?? '';
        const c = line.indexOf(':');
        lines[i] = c >= 0 ? `${line.slice(0, c + 1)} ${r.pick(tokens)}` : `${line}${r.pick(tokens)}`;
        return { kind: 'value replaced', text: lines.join('\n') };
      }
    }
  }

  /** Asserts the one-line ConfigError convention for `file`; returns 'valid' or the kind of error. */
  function checkConfig(file: string, what: string): string {
    try {
      loadConfig(file);
      return 'valid';
    } catch (e) {
      assert.ok(
        e instanceof ConfigError,
        `${what}: ${e instanceof Error ? `${e.name}: ${e.message}` : String(e)}`,
      );
      const msg = oneLine(e, file, what);
      assert.ok(msg.startsWith(`${file}: `), `${what}: ${msg}`);
      const rest = msg.slice(file.length + 2);
      if (/^(invalid YAML|the top level|cannot read)/.test(rest)) return 'YAML error';
      // A schema error names the key path.
      assert.match(
        rest,
        /^(unknown keys? [^\s,]+|[A-Za-z_][\w]*(\.[\w]+)*: )/,
        `${what}: no key path: ${msg}`,
      );
      return 'schema error';
    }
  }

  test('configs: 1000 seeded mutations of a job config → valid or a one-line ConfigError naming the file and key', (t) => {
    const dir = path.join(root, 'configs');
    fs.mkdirSync(dir, { recursive: true });
    const good = path.join(dir, 'good.yaml');
    fs.writeFileSync(good, goodConfig);
    assert.equal(checkConfig(good, 'the unmutated config'), 'valid');
    const r = new Rng(0x5eed40);
    const outcomes: string[] = [];
    for (let i = 0; i < 1000; i++) {
      const m = mutateYaml(r, goodConfig);
      const f = path.join(dir, `m${i}.yaml`);
      fs.writeFileSync(f, m.text, 'latin1');
      outcomes.push(checkConfig(f, `mutation ${i} (${m.kind})`));
    }
    t.diagnostic(`configs: 1000 mutations: ${tally(outcomes)}`);
  });

  test('configs through the CLI: `ringdiff config --print` exits 1 with exactly one stderr line, or 0', async (t) => {
    const dir = path.join(root, 'configs-cli');
    fs.mkdirSync(dir, { recursive: true });
    const aliases = ['b', 'c', 'd', 'e', 'f', 'g']
      .map((k, i) => `${k}: &${k} [${Array(10).fill(`*${'abcdefg'[i]}`).join(', ')}]`)
      .join('\n');
    const cases: Array<{ name: string; text: string | null }> = [
      { name: 'alias-bomb.yaml', text: `a: &a [x, x, x, x, x, x, x, x, x, x]\n${aliases}\n` },
      { name: 'deep-nesting.yaml', text: `run: ${'['.repeat(50_000)}${']'.repeat(50_000)}\n` },
      { name: 'key-with-newline.yaml', text: 'run:\n  "name\\nx: y": 1\n' },
      { name: 'collection-key.yaml', text: 'run:\n  ? [a, b]\n  : 1\n' },
      { name: 'bom.yaml', text: '\ufeffrun: { name: x }\n' },
      { name: 'binary.yaml', text: '\u0000\u0001\u00ff\u00fe garbage \u0080' },
      { name: 'empty.yaml', text: '' },
      { name: 'nul-in-value.yaml', text: 'run: { name: "a\\0b" }\n' },
      { name: 'long-line.yaml', text: `run: { name: ${'n'.repeat(2_000_000)} }\n` },
      { name: 'not-a-file.yaml', text: null },
      { name: 'top-level-list.yaml', text: '- run\n- data\n' },
      { name: 'tabs.yaml', text: 'run:\n\tname: x\n' },
      { name: 'duplicate-section.yaml', text: 'run: {}\nrun: {}\n' },
      { name: 'proto.yaml', text: '__proto__: { polluted: true }\nconstructor: { prototype: { x: 1 } }\n' },
    ];
    const r = new Rng(0x5eed41);
    for (let i = 0; i < 24; i++) cases.push({ name: `m${i}.yaml`, text: mutateYaml(r, goodConfig).text });
    const outcomes: string[] = [];
    await pool(cases, 4, async (c) => {
      const f = path.join(dir, c.name);
      if (c.text === null) fs.mkdirSync(f);
      else fs.writeFileSync(f, c.text, c.name.startsWith('m') ? 'latin1' : 'utf8');
      const inProcess = checkConfig(f, c.name);
      const res = await runRingdiffCli(['config', '--print', '--config', f]);
      if (inProcess === 'valid') {
        assert.equal(res.code, 0, `${c.name}: ${res.err}`);
        assert.equal(res.err, '', `${c.name}: stderr on success`);
        assert.match(res.out, /^run:/);
      } else {
        assert.equal(res.code, 1, `${c.name}: exit ${res.code}`);
        assert.equal(res.out, '', `${c.name}: stdout on failure`);
        assert.ok(
          res.err.endsWith('\n') && res.err.indexOf('\n') === res.err.length - 1,
          `${c.name}: stderr is not one line: ${JSON.stringify(res.err.slice(0, 500))}`,
        );
        assert.ok(res.err.startsWith(`ringdiff: ${f}`), `${c.name}: ${res.err}`);
      }
      if (!c.name.startsWith('m'))
        t.diagnostic(`${c.name}: exit ${res.code} ${res.err.trim().slice(0, 160)}`);
      outcomes.push(`exit ${res.code}`);
    });
    t.diagnostic(`config CLI: ${cases.length} files: ${tally(outcomes)}`);
  });
});
