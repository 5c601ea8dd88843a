import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { deflateSync, gunzipSync, gzipSync } from 'node:zlib';
import { PNG } from 'pngjs';
import { openIdx } from '../src/data/idx.js';
import { openCifar10, CIFAR_RECORD } from '../src/data/cifar.js';
import { openFolder } from '../src/data/folder.js';
import { encodeNpy, openNpy } from '../src/data/npy.js';
import { FASHION_MNIST_DIR, openFashionMnist, openMnist } from '../src/data/mnist.js';
import { openDataset, openSource } from '../src/data/spec.js';
import {
  convertChannels,
  flipHorizontal,
  imageDataset,
  padCentred,
  preprocessImage,
  resizeArea,
  type Source,
} from '../src/data/preprocess.js';
import { DataSchema } from '../src/config/schema.js';
import { missingFile, skipUnless } from './requirements.js';

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ringdiff-data-'));
after(() => fs.rmSync(dir, { recursive: true, force: true }));
const at = (...p: string[]) => path.join(dir, ...p);

/** IDX bytes: magic 00 00 dtype ndim, big-endian dims, values (ubyte only here). */
function idx(dims: number[], values: Uint8Array, dtype = 0x08): Buffer {
  const head = Buffer.alloc(4 + 4 * dims.length);
  head[2] = dtype;
  head[3] = dims.length;
  dims.forEach((d, i) => head.writeUInt32BE(d, 4 + 4 * i));
  return Buffer.concat([head, values]);
}

/** Asserts that `fn` throws a one-line error matching `re` that names `file`. */
function throwsNaming(fn: () => unknown, file: string, re: RegExp): void {
  assert.throws(fn, (e: unknown) => {
    assert.ok(e instanceof Error);
    assert.ok(!e.message.includes('\n'), `multi-line error: ${e.message}`);
    assert.ok(
      e.message.includes(path.basename(file)),
      `error does not name ${path.basename(file)}: ${e.message}`,
    );
    assert.match(e.message, re);
    return true;
  });
}

/** Reads every example of a source (and closes it). */
function readAll(s: Source): { data: number[][]; labels: number[] } {
  const data: number[][] = [];
  const labels: number[] = [];
  for (let i = 0; i < s.size; i++) {
    const r = s.read(i);
    data.push([...r.data]);
    labels.push(r.label);
    assert.equal(s.label(i), r.label);
  }
  s.close();
  return { data, labels };
}

// 3 images of 2×3: pixel value = 10·image + position.
const IMGS = Uint8Array.from({ length: 18 }, (_, i) => 10 * Math.floor(i / 6) + (i % 6));
const LABELS = Uint8Array.of(2, 0, 1);

test('IDX raw and gzip: values, labels, shape; read by offset agrees with gzip in memory', () => {
  fs.writeFileSync(at('img.idx'), idx([3, 2, 3], IMGS));
  fs.writeFileSync(at('lab.idx'), idx([3], LABELS));
  fs.writeFileSync(at('img.idx.gz'), gzipSync(idx([3, 2, 3], IMGS)));
  fs.writeFileSync(at('lab.idx.gz'), gzipSync(idx([3], LABELS)));
  for (const [i, l] of [
    ['img.idx', 'lab.idx'],
    ['img.idx.gz', 'lab.idx.gz'],
  ] as const) {
    const s = openIdx(at(i), at(l));
    assert.deepEqual([s.size, s.numClasses, s.dtype], [3, 3, 'uint8']);
    assert.deepEqual(s.shape, [2, 3, 1]);
    const { data, labels } = readAll(s);
    assert.deepEqual(data[1], [10, 11, 12, 13, 14, 15]);
    assert.deepEqual(labels, [2, 0, 1]);
  }
  const d = openSource(`idx:${at('img.idx')}`);
  assert.equal(d.numClasses, 0);
  assert.equal(d.read(2).label, -1);
  d.close();
});

test('IDX errors: bad magic, truncated, trailing bytes, label count, labels file as images', () => {
  const bad = Buffer.from(idx([3, 2, 3], IMGS));
  bad[2] = 0x0a;
  fs.writeFileSync(at('train-images-idx3-ubyte'), bad);
  throwsNaming(
    () => openIdx(at('train-images-idx3-ubyte')),
    'train-images-idx3-ubyte',
    /bad magic 0x00000a03 at offset 0/,
  );
  fs.writeFileSync(at('notidx'), Buffer.from('hello world'));
  throwsNaming(() => openIdx(at('notidx')), 'notidx', /bad magic 0x68656c6c at offset 0/);
  fs.writeFileSync(at('short.idx'), idx([3, 2, 3], IMGS).subarray(0, 30));
  throwsNaming(() => openIdx(at('short.idx')), 'short.idx', /truncated: 30 bytes, expected 34/);
  fs.writeFileSync(at('short.idx.gz'), gzipSync(idx([3, 2, 3], IMGS).subarray(0, 30)));
  throwsNaming(() => openIdx(at('short.idx.gz')), 'short.idx.gz', /truncated/);
  fs.writeFileSync(at('long.idx'), Buffer.concat([idx([3, 2, 3], IMGS), Buffer.of(0, 0)]));
  throwsNaming(() => openIdx(at('long.idx')), 'long.idx', /2 trailing bytes after offset 34/);
  fs.writeFileSync(at('badgz.idx.gz'), gzipSync(idx([3, 2, 3], IMGS)).subarray(0, 20));
  throwsNaming(() => openIdx(at('badgz.idx.gz')), 'badgz.idx.gz', /corrupt gzip/);
  fs.writeFileSync(at('img.idx'), idx([3, 2, 3], IMGS));
  fs.writeFileSync(at('lab2.idx'), idx([2], LABELS.subarray(0, 2)));
  throwsNaming(
    () => openIdx(at('img.idx'), at('lab2.idx')),
    'lab2.idx',
    /2 labels for 3 images in .*img\.idx/,
  );
  fs.writeFileSync(at('lab.idx'), idx([3], LABELS));
  throwsNaming(() => openIdx(at('lab.idx')), 'lab.idx', /not \[N, H, W\]/);
  throwsNaming(() => openIdx(at('missing.idx')), 'missing.idx', /no such file/);
});

test('CIFAR-10 binary: planar CHW records become HWC; labels; train batches 1–5 and test', () => {
  const cdir = at('cifar');
  fs.mkdirSync(cdir);
  const record = (label: number, seed: number) => {
    const r = new Uint8Array(CIFAR_RECORD);
    r[0] = label;
    for (let i = 1; i < CIFAR_RECORD; i++) r[i] = (seed * 7 + i) & 0xff;
    return r;
  };
  for (let b = 1; b <= 5; b++)
    fs.writeFileSync(
      path.join(cdir, `data_batch_${b}.bin`),
      Buffer.concat([record(b, b), record(9, 10 + b)]),
    );
  fs.writeFileSync(path.join(cdir, 'test_batch.bin'), record(3, 99));
  const s = openSource(`cifar10:${cdir}`);
  assert.deepEqual([s.size, s.numClasses, [...s.shape]], [10, 10, [32, 32, 3]]);
  const ex = s.read(4); // data_batch_3.bin, record 0
  assert.equal(ex.label, 3);
  const rec = record(3, 3);
  // Pixel (y=1, x=2), channel G: planar offset 1 + 1024 + 32 + 2.
  assert.equal(ex.data[(32 + 2) * 3 + 1], rec[1 + 1024 + 32 + 2]);
  assert.equal(ex.data[(32 + 2) * 3 + 2], rec[1 + 2048 + 32 + 2]);
  assert.deepEqual(
    Array.from({ length: 10 }, (_, i) => s.label(i)),
    [1, 9, 2, 9, 3, 9, 4, 9, 5, 9],
  );
  s.close();
  const t = openSource(`cifar10:${cdir}:test`);
  assert.deepEqual([t.size, t.read(0).label], [1, 3]);
  t.close();
  fs.writeFileSync(path.join(cdir, 'data_batch_1.bin'), Buffer.alloc(30000));
  throwsNaming(
    () => openCifar10(cdir),
    'data_batch_1.bin',
    /size 30000 is not a multiple of 3073-byte records/,
  );
  fs.rmSync(path.join(cdir, 'data_batch_1.bin'));
  throwsNaming(() => openCifar10(cdir), 'data_batch_1.bin', /missing/);
});

const CRC_TABLE = Uint32Array.from({ length: 256 }, (_, n) => {
  let c = n;
  for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
  return c >>> 0;
});
function crc32(b: Uint8Array): number {
  let c = 0xffffffff;
  for (const v of b) c = (CRC_TABLE[(c ^ v) & 0xff] as number) ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}

/** A palette PNG (colour type 3, which pngjs cannot write), 8-bit indices. */
function palettePng(
  w: number,
  h: number,
  palette: number[][],
  index: (x: number, y: number) => number,
): Buffer {
  const chunk = (type: string, data: Buffer) => {
    const len = Buffer.alloc(4);
    len.writeUInt32BE(data.length);
    const td = Buffer.concat([Buffer.from(type, 'latin1'), data]);
    const crc = Buffer.alloc(4);
    crc.writeUInt32BE(crc32(td));
    return Buffer.concat([len, td, crc]);
  };
  const ihdr = Buffer.alloc(13);
  ihdr.writeUInt32BE(w, 0);
  ihdr.writeUInt32BE(h, 4);
  ihdr[8] = 8;
  ihdr[9] = 3;
  const raw = Buffer.alloc(h * (w + 1));
  for (let y = 0; y < h; y++) for (let x = 0; x < w; x++) raw[y * (w + 1) + 1 + x] = index(x, y);
  return Buffer.concat([
    Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]),
    chunk('IHDR', ihdr),
    chunk('PLTE', Buffer.from(palette.flat())),
    chunk('IDAT', deflateSync(raw)),
    chunk('IEND', Buffer.alloc(0)),
  ]);
}

function writePng(
  file: string,
  w: number,
  h: number,
  colorType: 0 | 2 | 4 | 6,
  px: (x: number, y: number) => number[],
): void {
  const png = new PNG({ width: w, height: h });
  for (let y = 0; y < h; y++)
    for (let x = 0; x < w; x++) {
      const [r = 0, g = r, b = r, a = 255] = px(x, y);
      png.data.set([r, g, b, a], (y * w + x) * 4);
    }
  const alpha = colorType === 4 || colorType === 6;
  fs.writeFileSync(
    file,
    PNG.sync.write(png, {
      colorType,
      inputHasAlpha: true,
      ...(alpha ? {} : { bgColor: { red: 0, green: 0, blue: 0 } }),
    }),
  );
}

test('PNG folder: classes by sorted sub-folder; grey, RGB, RGBA and palette decode, alpha dropped', () => {
  const f = at('pngs');
  fs.mkdirSync(path.join(f, 'cat'), { recursive: true });
  fs.mkdirSync(path.join(f, 'ant'));
  fs.writeFileSync(path.join(f, 'ant', 'notes.txt'), 'ignored');
  writePng(path.join(f, 'ant', 'b.png'), 4, 3, 0, (x, y) => [10 * y + x]);
  writePng(path.join(f, 'ant', 'a.png'), 4, 3, 2, (x) => [x, 100, 200]);
  writePng(path.join(f, 'cat', 'c.png'), 2, 2, 6, () => [50, 60, 70, 0]);
  fs.writeFileSync(
    path.join(f, 'cat', 'd.png'),
    palettePng(
      3,
      1,
      [
        [255, 0, 0],
        [0, 0, 255],
      ],
      (x) => x % 2,
    ),
  );
  const s = openSource(`folder:${f}`);
  assert.deepEqual([s.size, s.numClasses, s.shapeVaries], [4, 2, true]);
  const a = s.read(0);
  assert.deepEqual(
    [[...a.shape], a.label, [...a.data.subarray(0, 6)]],
    [[3, 4, 3], 0, [0, 100, 200, 1, 100, 200]],
  );
  const b = s.read(1);
  assert.deepEqual([[...b.shape], b.label, b.data[2 * 4 + 3]], [[3, 4, 1], 0, 23]);
  const c = s.read(2);
  assert.deepEqual([[...c.shape], c.label, [...c.data.subarray(0, 3)]], [[2, 2, 3], 1, [50, 60, 70]]);
  const d = s.read(3);
  assert.deepEqual(
    [[...d.shape], [...d.data]],
    [
      [1, 3, 3],
      [255, 0, 0, 0, 0, 255, 255, 0, 0],
    ],
  );
  // Through the dataset: mixed sizes all come out [8, 8, 1].
  const ds = imageDataset(s, { imageSize: 8, channels: 1 });
  for (let i = 0; i < 4; i++) assert.equal(ds.get(i).x.length, 64);
  fs.writeFileSync(path.join(f, 'cat', 'broken.png'), Buffer.from('not a png'));
  const s2 = openFolder(f);
  throwsNaming(() => s2.read(2), 'broken.png', /not a readable PNG/);
  fs.mkdirSync(path.join(f, 'empty'));
  throwsNaming(() => openFolder(f), 'empty', /holds no \.png files/);
});

test('npy: uint8 [N,H,W] with |u1 labels, float32 [N,H,W,3] with <i8 labels, [N,D] vectors', () => {
  fs.writeFileSync(at('u8.npy'), encodeNpy(IMGS, [3, 2, 3]));
  fs.writeFileSync(at('l8.npy'), encodeNpy(LABELS, [3]));
  const s = openNpy(at('u8.npy'), at('l8.npy'));
  assert.deepEqual([s.dtype, [...s.shape], s.numClasses], ['uint8', [2, 3, 1], 3]);
  const u = readAll(s);
  assert.deepEqual(
    [u.data[2], u.labels],
    [
      [20, 21, 22, 23, 24, 25],
      [2, 0, 1],
    ],
  );
  const f32 = Float32Array.from({ length: 2 * 2 * 2 * 3 }, (_, i) => i / 24 - 0.5);
  fs.writeFileSync(at('f4.npy'), encodeNpy(f32, [2, 2, 2, 3]));
  fs.writeFileSync(at('i8.npy'), encodeNpy(BigInt64Array.of(7n, 4n), [2]));
  const g = openSource(`npy:${at('f4.npy')},${at('i8.npy')}`);
  assert.deepEqual([[...g.shape], g.numClasses, g.read(1).label], [[2, 2, 3], 8, 4]);
  assert.deepEqual([...g.read(1).data], [...f32.subarray(12)]);
  // Float data is passed through unscaled.
  const ds = imageDataset(g, { imageSize: 2, channels: 3 });
  assert.deepEqual([...ds.get(0).x], [...f32.subarray(0, 12)]);
  ds.close();
  fs.writeFileSync(at('vec.npy'), encodeNpy(Float32Array.of(1, 2, 3, 4), [2, 2]));
  const v = openDataset(DataSchema.parse({ dataset: `npy:${at('vec.npy')}` }));
  assert.deepEqual([[...v.shape], [...v.get(1).x]], [[2], [3, 4]]);
});

test('npy errors: bad magic, fortran order, dtype, truncated, trailing, label count', () => {
  const good = encodeNpy(IMGS, [3, 2, 3]);
  const bad = Buffer.from(good);
  bad[1] = 0x41;
  fs.writeFileSync(at('bad.npy'), bad);
  throwsNaming(() => openNpy(at('bad.npy')), 'bad.npy', /bad magic 0x9341554d5059 at offset 0/);
  fs.writeFileSync(
    at('fortran.npy'),
    Buffer.from(good.toString('latin1').replace('False', 'True '), 'latin1'),
  );
  throwsNaming(() => openNpy(at('fortran.npy')), 'fortran.npy', /fortran_order True/);
  fs.writeFileSync(
    at('f8.npy'),
    Buffer.from(encodeNpy(Float32Array.of(0, 0), [1, 2]).toString('latin1').replace('<f4', '<f8'), 'latin1'),
  );
  throwsNaming(() => openNpy(at('f8.npy')), 'f8.npy', /truncated/);
  fs.writeFileSync(at('i4.npy'), encodeNpy(Int32Array.of(1, 2), [1, 2]));
  throwsNaming(() => openNpy(at('i4.npy')), 'i4.npy', /dtype '<i4'.*not supported/);
  fs.writeFileSync(at('be.npy'), Buffer.from(good.toString('latin1').replace('|u1', '>f4'), 'latin1'));
  throwsNaming(() => openNpy(at('be.npy')), 'be.npy', /dtype '>f4'.*not supported/);
  fs.writeFileSync(at('trunc.npy'), good.subarray(0, good.length - 1));
  throwsNaming(() => openNpy(at('trunc.npy')), 'trunc.npy', /truncated: 145 bytes, expected 146/);
  fs.writeFileSync(at('trail.npy'), Buffer.concat([good, Buffer.of(1)]));
  throwsNaming(() => openNpy(at('trail.npy')), 'trail.npy', /1 trailing bytes after offset 146/);
  fs.writeFileSync(at('images.npy'), encodeNpy(new Uint8Array(10 * 4), [10, 2, 2]));
  fs.writeFileSync(at('labels.npy'), encodeNpy(new Uint8Array(9), [9]));
  throwsNaming(
    () => openNpy(at('images.npy'), at('labels.npy')),
    'labels.npy',
    /labels\.npy: 9 labels for 10 images in .*images\.npy$/,
  );
  fs.writeFileSync(at('flabels.npy'), encodeNpy(new Float32Array(10), [10]));
  throwsNaming(() => openNpy(at('images.npy'), at('flabels.npy')), 'flabels.npy', /integer type/);
});

test('preprocess: uint8 → [-1, 1], pad 28 → 32 with −1, area downscale, channels, flip twice = identity', () => {
  const img = Uint8Array.from({ length: 28 * 28 }, (_, i) => i % 256);
  const x = preprocessImage(img, [28, 28, 1], { imageSize: 32, channels: 1 });
  assert.equal(x.length, 32 * 32);
  assert.equal(Math.min(...x), -1);
  assert.ok(Math.max(...x) <= 1);
  assert.equal(x[0], -1); // padding
  assert.equal(x[2 * 32 + 2], -1); // pixel (0, 0) = 0 → −1
  assert.ok(Math.abs((x[2 * 32 + 3] as number) - (1 / 127.5 - 1)) < 1e-6);
  assert.equal(x[31 * 32 + 31], -1);
  assert.ok(
    Math.abs(
      (preprocessImage(Uint8Array.of(255), [1, 1, 1], { imageSize: 1, channels: 1 })[0] as number) - 1,
    ) < 1e-6,
  );
  // 4×4 → 2×2 averages 2×2 blocks exactly.
  const big = Float32Array.from({ length: 16 }, (_, i) => i);
  assert.deepEqual([...resizeArea(big, [4, 4, 1], 2, 2)], [2.5, 4.5, 10.5, 12.5]);
  // 6×3 (taller) → fits 4: 4×2, padded left/right.
  const tall = preprocessImage(new Float32Array(18).fill(0.5), [6, 3, 1], { imageSize: 4, channels: 1 });
  assert.deepEqual([...tall], [-1, 0.5, 0.5, -1, -1, 0.5, 0.5, -1, -1, 0.5, 0.5, -1, -1, 0.5, 0.5, -1]);
  assert.deepEqual([...padCentred(Float32Array.of(1), [1, 1, 1], 2)], [1, -1, -1, -1]);
  // Channels: grey → RGB replicates, RGB → grey is BT.601 luma, RGBA drops alpha.
  assert.deepEqual([...convertChannels(Float32Array.of(0.25), [1, 1, 1], 3)], [0.25, 0.25, 0.25]);
  const luma = convertChannels(Float32Array.of(1, 0, -1), [1, 1, 3], 1)[0] as number;
  assert.ok(Math.abs(luma - (0.299 - 0.114)) < 1e-6);
  assert.deepEqual([...convertChannels(Float32Array.of(0.5, 0, 1, -1), [1, 1, 4], 3)], [0.5, 0, 1]);
  const rgb = preprocessImage(Uint8Array.of(0, 255, 0), [1, 1, 3], { imageSize: 3, channels: 1 });
  assert.ok(Math.abs((rgb[4] as number) - (0.587 * 2 - 1)) < 1e-6);
  // Flip: mirror of columns; twice is the identity.
  const f = Float32Array.from({ length: 2 * 3 * 2 }, (_, i) => i);
  assert.deepEqual([...flipHorizontal(f, [2, 3, 2])], [4, 5, 2, 3, 0, 1, 10, 11, 8, 9, 6, 7]);
  assert.deepEqual(flipHorizontal(flipHorizontal(f, [2, 3, 2]), [2, 3, 2]), f);
  assert.throws(() => openDataset(DataSchema.parse({ dataset: 'mnist', channels: 2 })), /data\.channels/);
});

test('specs: unknown kinds list the known ones; toy unchanged', () => {
  assert.throws(
    () => openDataset(DataSchema.parse({ dataset: 'imagenet:/x' })),
    /unknown dataset kind 'imagenet'.*mnist.*fashion-mnist.*idx:.*cifar10:.*folder:.*npy:.*toy:/,
  );
  const toy = openDataset(DataSchema.parse({ dataset: 'toy:swissroll', size: 10 }));
  assert.deepEqual([toy.size, [...toy.shape]], [10, [2]]);
});

test('mnist: the embedded digits, 10 000 with 10 classes, preprocessed to [32, 32, 1]', () => {
  const s = openMnist();
  assert.equal(s.size, 10000);
  assert.equal(s.numClasses, 10);
  const hist = new Array<number>(10).fill(0);
  for (let i = 0; i < s.size; i++) hist[s.label(i)]! += 1;
  assert.deepEqual(hist, [1001, 1127, 991, 1032, 980, 863, 1014, 1070, 944, 978]);
  const ds = openDataset(DataSchema.parse({ dataset: 'mnist', image_size: 32 }));
  assert.deepEqual([...ds.shape], [32, 32, 1]);
  const x = ds.get(5000).x;
  assert.equal(Math.min(...x), -1);
  assert.equal(Math.max(...x), 1);
});

test('mnist:train / mnist:test: a fixed 9:1 split per class, disjoint, together the whole set', () => {
  const all = openMnist();
  const train = openSource('mnist:train');
  const test = openSource('mnist:test');
  assert.equal(train.size + test.size, all.size);
  // Every 10th digit of a class: ⌊n_c/10⌋ of class c in the test split.
  const perClass = [1001, 1127, 991, 1032, 980, 863, 1014, 1070, 944, 978];
  const hist = new Array<number>(10).fill(0);
  for (let i = 0; i < test.size; i++) hist[test.label(i)]! += 1;
  assert.deepEqual(
    hist,
    perClass.map((n) => Math.floor(n / 10)),
  );
  // Disjoint: no test digit's pixels equal the train digit at the same class position it replaced.
  const key = (s: ReturnType<typeof openSource>, i: number) => Buffer.from(s.read(i).data).toString('base64');
  const trainKeys = new Set(Array.from({ length: train.size }, (_, i) => key(train, i)));
  const allKeys = Array.from({ length: all.size }, (_, i) => key(all, i));
  const dupInAll = allKeys.length - new Set(allKeys).size;
  let leaked = 0;
  for (let i = 0; i < test.size; i++) if (trainKeys.has(key(test, i))) leaked++;
  // Identical images occurring twice in the package may land on both sides; nothing else may.
  assert.ok(
    leaked <= dupInAll,
    `${leaked} test digits also in train (${dupInAll} duplicates in the package)`,
  );
  assert.equal(test.read(0).label, 0);
  assert.deepEqual(Buffer.from(test.read(0).data), Buffer.from(all.read(9).data));
  assert.throws(
    () => openSource('mnist:val'),
    /data\.dataset: 'mnist:val' is not mnist, mnist:train or mnist:test/,
  );
});

const fashionImages = path.join(FASHION_MNIST_DIR, 'train-images-idx3-ubyte.gz');
test(
  'fashion-mnist from the Debian package: 60 000 training images, 6 000 per class',
  { skip: skipUnless(missingFile(fashionImages, 'dataset-fashion-mnist')) },
  () => {
    const s = openFashionMnist();
    assert.deepEqual([s.size, s.numClasses, [...s.shape]], [60000, 10, [28, 28, 1]]);
    const hist = new Array<number>(10).fill(0);
    for (let i = 0; i < s.size; i++) hist[s.label(i)]! += 1;
    assert.deepEqual(hist, new Array(10).fill(6000));
    // Compare with an independent decode of the file: example 12 345 at 16 + 12 345·784.
    const raw = gunzipSync(fs.readFileSync(fashionImages));
    const off = 16 + 12345 * 784;
    assert.deepEqual([...s.read(12345).data], [...raw.subarray(off, off + 784)]);
    assert.equal(s.label(0), 9); // the first training image is an ankle boot
    s.close();
  },
);
