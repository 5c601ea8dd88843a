import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { promises as fs } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { after, before, describe, it } from 'node:test';

import {
  CHECKPOINT_FORMAT,
  latestValidCheckpoint,
  listCheckpoints,
  loadCheckpoint,
  writeCheckpoint,
  type CheckpointParts,
} from '../src/model/checkpoint.js';
import type { HostTensor } from '../src/model/params.js';
import {
  decodeSafetensors,
  encodeSafetensors,
  SafetensorsError,
  type TensorLike,
  type TypedData,
} from '../src/model/safetensors.js';
import { removeStaleTemps, writeDirAtomic, writeFileAtomic } from '../src/util/atomic.js';

let root: string;
let counter = 0;

before(async () => {
  root = await fs.mkdtemp(path.join(os.tmpdir(), 'ringdiff-ckpt-test-'));
});
after(async () => {
  await fs.rm(root, { recursive: true, force: true });
});

async function freshDir(): Promise<string> {
  const d = path.join(root, `t${counter++}`);
  await fs.mkdir(d);
  return d;
}

function bytesOf(d: TypedData): Buffer {
  return Buffer.from(d.buffer, d.byteOffset, d.byteLength);
}

/** Float32 data with NaN payloads, ±0, denormals, infinities and ordinary values, set bit by bit. */
function trickyF32(n: number, salt: number): Float32Array {
  const bits = new Uint32Array(n);
  const special = [
    0x7fc00001, 0xffa00123, 0x7f800001, 0x80000000, 0x00000001, 0x807fffff, 0x7f800000, 0xff800000,
  ];
  for (let i = 0; i < n; i++) {
    bits[i] =
      i < special.length ? (special[(i + salt) % special.length] as number) : (i * 2654435761 + salt) >>> 0;
  }
  return new Float32Array(bits.buffer);
}

function trickyF64(n: number): Float64Array {
  const bits = new BigUint64Array(n);
  const special = [0x7ff8000000000001n, 0xfff4000000000abcn, 0x8000000000000000n, 1n, 0x800fffffffffffffn];
  for (let i = 0; i < n; i++) {
    bits[i] = i < special.length ? (special[i] as bigint) : (BigInt(i) * 0x9e3779b97f4a7c15n) % 2n ** 64n;
  }
  return new Float64Array(bits.buffer);
}

function assertSameTensors(
  got: ReadonlyMap<string, TensorLike>,
  want: ReadonlyMap<string, TensorLike>,
): void {
  assert.deepEqual([...got.keys()].sort(), [...want.keys()].sort());
  for (const [name, w] of want) {
    const g = got.get(name);
    assert.ok(g, name);
    assert.deepEqual(g.shape, w.shape, name);
    assert.equal(g.data.constructor, w.data.constructor, name);
    assert.ok(bytesOf(g.data).equals(bytesOf(w.data)), `${name}: bytes differ`);
  }
}

/** Splits a safetensors buffer by hand, independently of the decoder under test. */
function parseByHand(buf: Buffer): { headerLen: number; rawHeader: string; header: Record<string, unknown> } {
  const headerLen = Number(buf.readBigUInt64LE(0));
  const rawHeader = buf.subarray(8, 8 + headerLen).toString('utf8');
  return { headerLen, rawHeader, header: JSON.parse(rawHeader) as Record<string, unknown> };
}

/** Builds a file from a literal header and data section, to feed the decoder malformed input. */
function rawFile(header: unknown, dataBytes: number): Buffer {
  const json = Buffer.from(JSON.stringify(header), 'utf8');
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(json.length));
  return Buffer.concat([len, json, Buffer.alloc(dataBytes)]);
}

function assertOneLineError(fn: () => unknown, ...parts: (string | RegExp)[]): void {
  assert.throws(fn, (e: unknown) => {
    assert.ok(e instanceof Error);
    assert.ok(!e.message.includes('\n'), `multi-line message: ${e.message}`);
    for (const p of parts) {
      if (typeof p === 'string') assert.ok(e.message.includes(p), `'${e.message}' lacks '${p}'`);
      else assert.match(e.message, p);
    }
    return true;
  });
}

async function assertRejectsOneLine(p: Promise<unknown>, ...parts: string[]): Promise<void> {
  await assert.rejects(p, (e: unknown) => {
    assert.ok(e instanceof Error);
    assert.ok(!e.message.includes('\n'), `multi-line message: ${e.message}`);
    for (const s of parts) assert.ok(e.message.includes(s), `'${e.message}' lacks '${s}'`);
    return true;
  });
}

describe('safetensors', () => {
  const tensors = new Map<string, TensorLike>([
    ['b.f32', { shape: [3, 5], data: trickyF32(15, 1) }],
    ['a.f64', { shape: [7], data: trickyF64(7) }],
    ['c.i32', { shape: [2, 2], data: new Int32Array([-2147483648, 2147483647, -1, 0]) }],
    ['d.u8', { shape: [3], data: new Uint8Array([0, 255, 7]) }],
    ['e.scalar', { shape: [], data: new Float32Array([-0]) }],
    ['f.empty', { shape: [0, 4], data: new Float32Array(0) }],
    ['g.view', { shape: [6], data: trickyF32(20, 3).subarray(3, 9) }],
  ]);

  it('round-trips bit-exactly for F32, F64, I32, U8, scalars and empty tensors', () => {
    const meta = { format: 'pt', '12': 'integer-like key', note: 'ünïcödé' };
    const buf = encodeSafetensors(tensors, meta);
    const { tensors: got, metadata } = decodeSafetensors(buf, 'x.safetensors');
    assertSameTensors(got, tensors);
    assert.deepEqual(metadata, meta);
    assert.deepEqual([...got.keys()], [...tensors.keys()].sort());
    assert.equal(got.get('a.f64')?.dtype, 'F64');
    // Encoding what was decoded gives the identical file.
    assert.ok(encodeSafetensors(got, meta).equals(buf));
    // Metadata order does not change the bytes (checkpoint hashes must be reproducible).
    const reordered = Object.fromEntries(Object.entries(meta).reverse());
    assert.ok(encodeSafetensors(tensors, reordered).equals(buf));
  });

  it('writes a conforming header: u64 LE length, space padding to 8, sorted contiguous offsets', () => {
    const buf = encodeSafetensors(tensors, { format: 'pt' });
    const { headerLen, rawHeader, header } = parseByHand(buf);
    assert.equal(headerLen % 8, 0);
    const json = rawHeader.trimEnd();
    assert.ok(headerLen - Buffer.byteLength(json) < 8);
    assert.match(rawHeader.slice(json.length), /^ *$/);
    // Compact JSON, metadata first, then tensors in name order, as the reference implementation writes.
    assert.ok(json.startsWith('{"__metadata__":{"format":"pt"},"a.f64":{"dtype":"F64","shape":[7],'));
    const keys = Object.keys(header).filter((k) => k !== '__metadata__');
    assert.deepEqual(
      keys,
      [...tensors.keys()].sort(),
      'order of keys (no integer-like names here, so object order is text order)',
    );
    let cursor = 0;
    for (const name of keys) {
      const info = header[name] as { dtype: string; shape: number[]; data_offsets: [number, number] };
      const t = tensors.get(name) as TensorLike;
      assert.deepEqual(info.shape, t.shape);
      assert.deepEqual(info.data_offsets, [cursor, cursor + t.data.byteLength]);
      assert.ok(
        buf.subarray(8 + headerLen + cursor, 8 + headerLen + info.data_offsets[1]).equals(bytesOf(t.data)),
      );
      cursor = info.data_offsets[1];
    }
    assert.equal(buf.length, 8 + headerLen + cursor);
  });

  it('matches the reference byte layout for a tiny file', () => {
    const buf = encodeSafetensors(new Map([['a', { shape: [2], data: new Float32Array([1, 2]) }]]));
    const json = '{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}';
    const padded = json.padEnd(Math.ceil(json.length / 8) * 8, ' ');
    const len = Buffer.alloc(8);
    len.writeBigUInt64LE(BigInt(padded.length));
    const want = Buffer.concat([len, Buffer.from(padded), bytesOf(new Float32Array([1, 2]))]);
    assert.ok(buf.equals(want));
  });

  it('decodes zero-copy when aligned and copies when not', () => {
    const buf = encodeSafetensors(tensors);
    const aligned = decodeSafetensors(buf, 'x').tensors.get('b.f32');
    assert.equal(aligned?.data.buffer, buf.buffer);
    const shifted = Buffer.alloc(buf.length + 1);
    buf.copy(shifted, 1);
    const odd = shifted.subarray(1);
    const got = decodeSafetensors(odd, 'x').tensors;
    assert.notEqual(got.get('b.f32')?.data.buffer, odd.buffer);
    assertSameTensors(got, tensors);
  });

  it('accepts foreign headers: unpadded, null metadata, tensors not in name order', () => {
    const data = bytesOf(new Float32Array([1, 2, 3]));
    const buf = rawFile(
      {
        __metadata__: null,
        z: { dtype: 'F32', shape: [1], data_offsets: [0, 4] },
        a: { dtype: 'F32', shape: [2], data_offsets: [4, 12] },
      },
      0,
    );
    const { tensors: got, metadata } = decodeSafetensors(Buffer.concat([buf, data]), 'x');
    assert.equal(metadata, undefined);
    assert.deepEqual([...got.keys()], ['a', 'z']);
    assert.deepEqual([...(got.get('a')?.data ?? [])], [2, 3]);
  });

  it('rejects malformed files with one-line errors naming file and tensor', () => {
    const f = 'ckpt-100/model.safetensors';
    const t = (shape: number[], data_offsets: number[], dtype = 'F32') => ({ dtype, shape, data_offsets });
    assertOneLineError(() => decodeSafetensors(Buffer.alloc(5), f), f, 'too short');
    const huge = Buffer.alloc(16);
    huge.writeBigUInt64LE(1000n);
    assertOneLineError(() => decodeSafetensors(huge, f), f, 'header length 1000 exceeds');
    const bad = rawFile({ a: t([1], [0, 4]) }, 4);
    bad[9] = 0x21; // the opening quote of the first key
    assertOneLineError(() => decodeSafetensors(bad, f), f, 'not valid JSON');
    assertOneLineError(() => decodeSafetensors(rawFile([1, 2], 0), f), f, 'not a JSON object');
    assertOneLineError(
      () => decodeSafetensors(rawFile({ a: t([1], [0, 4], 'Q7') }, 4), f),
      `${f}: tensor 'a': unknown dtype 'Q7'`,
    );
    assertOneLineError(
      () => decodeSafetensors(rawFile({ a: t([1], [0, 2], 'BF16') }, 2), f),
      `${f}: tensor 'a': dtype 'BF16' is not supported`,
    );
    assertOneLineError(
      () => decodeSafetensors(rawFile({ 'down.0.conv.kernel': t([3, 3, 1, 32], [0, 100]) }, 100), f),
      `${f}: tensor 'down.0.conv.kernel': data_offsets [0, 100] hold 100 bytes, shape [3,3,1,32] needs 1152`,
    );
    assertOneLineError(
      () => decodeSafetensors(rawFile({ a: t([2], [0, 8]), b: t([2], [4, 12]) }, 12), f),
      `${f}: tensor 'b': data_offsets [4, 12] overlap tensor 'a' [0, 8]`,
    );
    assertOneLineError(
      () => decodeSafetensors(rawFile({ a: t([2], [0, 8]), b: t([1], [8, 12]) }, 10), f),
      `${f}: tensor 'b': data_offsets [8, 12] exceed the data section of 10 bytes`,
    );
    assertOneLineError(
      () => decodeSafetensors(rawFile({ a: t([1], [0, 4]), b: t([1], [8, 12]) }, 12), f),
      `${f}: tensor 'b': data_offsets [8, 12] leave a gap of 4 bytes`,
    );
    assertOneLineError(
      () => decodeSafetensors(rawFile({ a: t([1], [4, 8]) }, 8), f),
      `${f}: tensor 'a'`,
      'gap of 4 bytes',
    );
    assertOneLineError(
      () => decodeSafetensors(rawFile({ a: t([1], [0, 4]) }, 7), f),
      `${f}: 3 trailing bytes after the last tensor`,
    );
    assertOneLineError(
      () => decodeSafetensors(rawFile({ a: t([1], [8, 4]) }, 8), f),
      `${f}: tensor 'a': data_offsets [8, 4] end before they begin`,
    );
    assertOneLineError(
      () => decodeSafetensors(rawFile({ a: t([-1], [0, 0]) }, 0), f),
      `${f}: tensor 'a': invalid shape [-1]`,
    );
    assertOneLineError(
      () => decodeSafetensors(rawFile({ __metadata__: { k: 1 } }, 0), f),
      `${f}: __metadata__ entry 'k' is not a string`,
    );
    assert.throws(() => decodeSafetensors(Buffer.alloc(5), f), SafetensorsError);
  });

  it('refuses to encode inconsistent tensors', () => {
    assertOneLineError(
      () => encodeSafetensors(new Map([['w', { shape: [2, 2], data: new Float32Array(3) }]])),
      "tensor 'w': shape [2,2] needs 4 elements, data has 3",
    );
    assertOneLineError(
      () => encodeSafetensors(new Map([['__metadata__', { shape: [1], data: new Float32Array(1) }]])),
      'reserved',
    );
  });
});

/** A small model: parameter name → shape. */
const SHAPES = new Map<string, number[]>([
  ['down.0.conv.kernel', [3, 3, 1, 4]],
  ['down.0.conv.bias', [4]],
  ['out.conv.kernel', [3, 3, 4, 1]],
  ['temb.scale', []],
]);

function makeParts(seed: number, shapes: ReadonlyMap<string, number[]> = SHAPES): CheckpointParts {
  const gen = (salt: number): Map<string, HostTensor> => {
    const m = new Map<string, HostTensor>();
    let i = 0;
    for (const [name, shape] of shapes) {
      const n = shape.reduce((a, b) => a * b, 1);
      m.set(name, { shape: [...shape], data: trickyF32(n, seed * 31 + salt * 7 + i++) });
    }
    return m;
  };
  const model = gen(1);
  const ema = gen(2);
  const optimizer = new Map<string, HostTensor>();
  for (const [name, t] of gen(3)) optimizer.set(`m.${name}`, t);
  for (const [name, t] of gen(4)) optimizer.set(`v.${name}`, t);
  optimizer.set('adam.beta_powers', { shape: [2], data: new Float32Array([0.9, 0.999]) });
  return { model, ema, optimizer };
}

const baseState = (step: number): Record<string, unknown> => ({
  step,
  config: { lr: 1e-4, model: { channels: [4] } },
  sampler: { table: [0.5, 0.25, 0.125] },
  data: { epoch: 1, cursor: 17 },
});

async function readState(dir: string): Promise<Record<string, unknown>> {
  return JSON.parse(await fs.readFile(path.join(dir, 'state.json'), 'utf8')) as Record<string, unknown>;
}

/** Rewrites state.json's record of `file` to match its current content, so only later checks can fail. */
async function resealFile(dir: string, file: string): Promise<void> {
  const { createHash } = await import('node:crypto');
  const buf = await fs.readFile(path.join(dir, file));
  const state = await readState(dir);
  const files = state.files as Record<string, { sha256: string; bytes: number }>;
  files[file] = { sha256: createHash('sha256').update(buf).digest('hex'), bytes: buf.length };
  await fs.writeFile(path.join(dir, 'state.json'), JSON.stringify(state));
}

/** The pid of a process that has exited. */
function deadPid(): number {
  const r = spawnSync(process.execPath, ['-e', '0']);
  assert.ok(r.pid !== undefined && r.pid > 0);
  return r.pid;
}

describe('checkpoints', () => {
  it('round-trips tensors bit-exactly and state as written', async () => {
    const out = path.join(await freshDir(), 'runs', 'a'); // created on demand
    const parts = makeParts(1);
    const res = await writeCheckpoint(out, 100, parts, baseState(100), 3);
    assert.equal(res.dir, path.join(out, 'ckpt-100'));
    assert.ok(res.ms >= 0);
    const entries = (await fs.readdir(res.dir)).sort();
    assert.deepEqual(entries, [
      'ema.safetensors',
      'model.safetensors',
      'optimizer.safetensors',
      'state.json',
    ]);
    let total = 0;
    for (const e of entries) total += (await fs.stat(path.join(res.dir, e))).size;
    assert.equal(res.bytes, total);

    const onDisk = await readState(res.dir);
    assert.equal(onDisk.format, CHECKPOINT_FORMAT);
    assert.equal(onDisk.step, 100);
    const files = onDisk.files as Record<string, { sha256: string; bytes: number }>;
    assert.deepEqual(
      Object.keys(files).sort(),
      entries.filter((e) => e.endsWith('.safetensors')),
    );

    const ck = await loadCheckpoint(res.dir, { model: SHAPES });
    assert.equal(ck.step, 100);
    assert.equal(ck.dir, path.resolve(res.dir));
    assertSameTensors(ck.model, parts.model);
    assertSameTensors(ck.ema, parts.ema);
    assertSameTensors(ck.optimizer, parts.optimizer);
    assert.deepEqual(ck.state, baseState(100));
    // The files are plain safetensors that other tools can open.
    const model = decodeSafetensors(await fs.readFile(path.join(res.dir, 'model.safetensors')), 'm');
    assert.equal(model.metadata?.format, CHECKPOINT_FORMAT);
  });

  it('rejects a flipped data byte via sha256, naming the file', async () => {
    const out = await freshDir();
    const { dir } = await writeCheckpoint(out, 7, makeParts(2), baseState(7), 3);
    const file = path.join(dir, 'model.safetensors');
    const buf = await fs.readFile(file);
    const idx = buf.length - 3;
    buf[idx] = (buf[idx] as number) ^ 0x10;
    await fs.writeFile(file, buf);
    await assertRejectsOneLine(loadCheckpoint(dir), 'ckpt-7/model.safetensors', 'sha256');
  });

  it('rejects a corrupt header even when state.json was resealed, naming the file', async () => {
    const out = await freshDir();
    const { dir } = await writeCheckpoint(out, 7, makeParts(3), baseState(7), 3);
    const file = path.join(dir, 'ema.safetensors');
    const buf = await fs.readFile(file);
    const i = buf.indexOf('"dtype"');
    buf[i] = 0x27; // ' is not valid JSON
    await fs.writeFile(file, buf);
    await resealFile(dir, 'ema.safetensors');
    await assertRejectsOneLine(loadCheckpoint(dir), 'ckpt-7/ema.safetensors', 'not valid JSON');

    // A resealed shape change in the header is caught by the byte-length check, naming the tensor.
    const mfile = path.join(dir, 'model.safetensors');
    const mbuf = await fs.readFile(mfile);
    const j = mbuf.indexOf('"shape":[3,3,4,1]');
    assert.ok(j > 0);
    mbuf.write('"shape":[3,3,4,2]', j);
    await fs.writeFile(mfile, mbuf);
    await resealFile(dir, 'model.safetensors');
    await assertRejectsOneLine(
      loadCheckpoint(dir),
      "ckpt-7/model.safetensors: tensor 'out.conv.kernel': data_offsets",
      'shape [3,3,4,2] needs',
    );
  });

  it('checks names and shapes against expect, naming file and tensor', async () => {
    const out = await freshDir();
    const parts = makeParts(4);
    parts.ema.set('out.conv.kernel', { shape: [3, 3, 4, 2], data: new Float32Array(72) });
    const { dir } = await writeCheckpoint(out, 7, parts, baseState(7), 3);
    await loadCheckpoint(dir); // structurally fine without expectations
    await assertRejectsOneLine(
      loadCheckpoint(dir, { model: SHAPES }),
      "ckpt-7/ema.safetensors: tensor 'out.conv.kernel' has shape [3,3,4,2], expected [3,3,4,1]",
    );

    const more = new Map(SHAPES).set('extra.bias', [4]);
    await assertRejectsOneLine(
      loadCheckpoint(dir, { model: more }),
      "ckpt-7/model.safetensors: tensor 'extra.bias' is missing",
    );
    const fewer = new Map(SHAPES);
    fewer.delete('temb.scale');
    await assertRejectsOneLine(
      loadCheckpoint(dir, { model: fewer }),
      "ckpt-7/model.safetensors: unexpected tensor 'temb.scale'",
    );

    const out2 = await freshDir();
    const p2 = makeParts(5);
    p2.optimizer.delete('v.temb.scale');
    const { dir: dir2 } = await writeCheckpoint(out2, 9, p2, baseState(9), 3);
    await assertRejectsOneLine(
      loadCheckpoint(dir2, { model: SHAPES }),
      "ckpt-9/optimizer.safetensors: tensor 'v.temb.scale' is missing",
    );
  });

  it('rejects truncated files, a missing state.json, a missing file and a missing directory', async () => {
    const out = await freshDir();
    const { dir } = await writeCheckpoint(out, 7, makeParts(6), baseState(7), 3);
    const file = path.join(dir, 'optimizer.safetensors');
    const full = await fs.readFile(file);
    await fs.writeFile(file, full.subarray(0, full.length - 10));
    await assertRejectsOneLine(loadCheckpoint(dir), 'ckpt-7/optimizer.safetensors', 'truncated');
    await resealFile(dir, 'optimizer.safetensors');
    await assertRejectsOneLine(loadCheckpoint(dir), 'ckpt-7/optimizer.safetensors: tensor ', 'exceed');

    await fs.rm(file);
    await assertRejectsOneLine(loadCheckpoint(dir), 'ckpt-7/optimizer.safetensors: missing');

    await fs.writeFile(path.join(dir, 'state.json'), '{"format": ');
    await assertRejectsOneLine(loadCheckpoint(dir), 'ckpt-7/state.json: invalid JSON');
    await fs.rm(path.join(dir, 'state.json'));
    await assertRejectsOneLine(loadCheckpoint(dir), 'ckpt-7/state.json: missing');

    const gone = path.join(out, 'ckpt-8');
    await assertRejectsOneLine(loadCheckpoint(gone), `checkpoint ckpt-8 not found at ${gone}`);
  });

  it('keeps only the newest K checkpoints', async () => {
    const out = await freshDir();
    await fs.writeFile(path.join(out, 'notes.txt'), 'unrelated');
    await fs.mkdir(path.join(out, 'ckpt-old'));
    for (const step of [10, 20, 30, 40, 50]) {
      await writeCheckpoint(out, step, makeParts(step), baseState(step), 2);
    }
    assert.deepEqual(
      (await listCheckpoints(out)).map((c) => c.step),
      [40, 50],
    );
    // Unrelated names are neither listed nor touched.
    assert.deepEqual((await fs.readdir(out)).sort(), ['ckpt-40', 'ckpt-50', 'ckpt-old', 'notes.txt']);
    // Rewriting a step replaces it atomically and keeps counting.
    const parts = makeParts(99);
    await writeCheckpoint(out, 50, parts, baseState(50), 2);
    assertSameTensors((await loadCheckpoint(path.join(out, 'ckpt-50'))).model, parts.model);
    // Numeric, not lexical, order.
    await writeCheckpoint(out, 100, makeParts(100), baseState(100), 2);
    assert.deepEqual(
      (await listCheckpoints(out)).map((c) => c.step),
      [50, 100],
    );
  });

  it("ignores a crashed writer's temp dir and removes it on the next write", async () => {
    const out = await freshDir();
    await writeCheckpoint(out, 1, makeParts(1), baseState(1), 5);
    const pid = deadPid();
    const stale = path.join(out, `.ckpt-2.tmp-${pid}-0123abcd`);
    await fs.mkdir(stale);
    await fs.writeFile(path.join(stale, 'model.safetensors'), 'half-written');
    // A directory moved aside by a writer that died before its replacement arrived is restored.
    const aside = path.join(out, `.ckpt-1.old-${pid}-4567ef01`);
    await fs.rename(path.join(out, 'ckpt-1'), aside);
    // A temp dir of a live writer (here: a parent process) must survive.
    const live = path.join(out, `.ckpt-3.tmp-${process.ppid}-89abcdef`);
    await fs.mkdir(live);

    assert.deepEqual(await listCheckpoints(out), []);
    assert.equal((await latestValidCheckpoint(out)).checkpoint, null);

    await writeCheckpoint(out, 2, makeParts(2), baseState(2), 5);
    const names = (await fs.readdir(out)).sort();
    assert.deepEqual(names, [path.basename(live), 'ckpt-1', 'ckpt-2']);
    assert.equal((await loadCheckpoint(path.join(out, 'ckpt-1'))).step, 1);
  });

  it('latestValidCheckpoint skips a corrupt newest checkpoint and reports it', async () => {
    const out = await freshDir();
    const parts = makeParts(8);
    await writeCheckpoint(out, 10, parts, baseState(10), 5);
    const { dir } = await writeCheckpoint(out, 20, makeParts(9), baseState(20), 5);
    const file = path.join(dir, 'model.safetensors');
    const buf = await fs.readFile(file);
    await fs.writeFile(file, buf.subarray(0, 100));
    const { checkpoint, skipped } = await latestValidCheckpoint(out, { model: SHAPES });
    assert.equal(checkpoint?.step, 10);
    assertSameTensors(checkpoint?.model ?? new Map(), parts.model);
    assert.equal(skipped.length, 1);
    assert.equal(skipped[0]?.dir, dir);
    assert.match(skipped[0]?.error ?? '', /^ckpt-20\/model\.safetensors: /);
    assert.deepEqual(await latestValidCheckpoint(await freshDir()), { checkpoint: null, skipped: [] });
  });

  it('validates arguments', async () => {
    const out = await freshDir();
    await assert.rejects(writeCheckpoint(out, 3, makeParts(1), { step: 4 }, 1), /state.step 4 differs/);
    await assert.rejects(writeCheckpoint(out, 3, makeParts(1), { files: 1 }, 1), /'files' is reserved/);
    await assert.rejects(writeCheckpoint(out, -1, makeParts(1), {}, 1), /step -1/);
    await assert.rejects(writeCheckpoint(out, 3, makeParts(1), {}, 0), /keep 0/);
    assert.deepEqual(await fs.readdir(out), []);
  });
});

describe('atomic writes', () => {
  it('writeFileAtomic replaces a file and leaves no temp behind', async () => {
    const d = await freshDir();
    const f = path.join(d, 'a.json');
    await writeFileAtomic(f, 'one');
    await writeFileAtomic(f, Buffer.from('two'));
    assert.equal(await fs.readFile(f, 'utf8'), 'two');
    assert.deepEqual(await fs.readdir(d), ['a.json']);
  });

  it('writeDirAtomic replaces a directory, and on failure keeps the old one and cleans up', async () => {
    const d = await freshDir();
    const target = path.join(d, 'x');
    await writeDirAtomic(target, new Map([['a', 'A1']]));
    await writeDirAtomic(target, new Map([['b', Buffer.from('B2')]]));
    assert.deepEqual(await fs.readdir(target), ['b']);
    // A name the file system refuses makes the write fail midway.
    const tooLong = 'n'.repeat(300);
    await assert.rejects(
      writeDirAtomic(
        target,
        new Map([
          ['c', 'C'],
          [tooLong, 'X'],
        ]),
      ),
      /ENAMETOOLONG/,
    );
    assert.deepEqual(await fs.readdir(d), ['x']);
    assert.deepEqual(await fs.readdir(target), ['b']);
    await assert.rejects(writeDirAtomic(target, new Map([['../evil', 'X']])), /invalid file name/);
    assert.deepEqual(await fs.readdir(d), ['x']);
    assert.deepEqual(await removeStaleTemps(d), { removed: [], restored: [] });
  });
});
