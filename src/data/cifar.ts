/**
 * CIFAR-10 binary batches (cifar-10-binary.tar.gz from https://www.cs.toronto.edu/~kriz/cifar.html):
 * records of 1 label byte + 3072 pixel bytes, channel-planar (1024 R, 1024 G, 1024 B, rows of 32).
 * Read one record per example by offset and converted to HWC.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { openBytes, type Bytes } from './idx.js';
import type { RawExample, Source } from './preprocess.js';

/** Bytes per record: label + 32·32·3 pixels. */
export const CIFAR_RECORD = 3073;
export const CIFAR_TRAIN_FILES = [1, 2, 3, 4, 5].map((i) => `data_batch_${i}.bin`);
export const CIFAR_TEST_FILES = ['test_batch.bin'];

const SHAPE = [32, 32, 3] as const;
const PLANE = 32 * 32;

/** Record bytes (label + planar CHW) → HWC pixels. */
export function cifarRecordToHwc(rec: Uint8Array): Uint8Array {
  const out = new Uint8Array(PLANE * 3);
  for (let p = 0; p < PLANE; p++) {
    out[p * 3] = rec[1 + p] as number;
    out[p * 3 + 1] = rec[1 + PLANE + p] as number;
    out[p * 3 + 2] = rec[1 + 2 * PLANE + p] as number;
  }
  return out;
}

/**
 * `cifar10:<dir>[:test]`: the five training batches (50 000 images) or the test batch, [32, 32, 3]
 * uint8, labels 0–9. `dir` may also be the folder that holds `cifar-10-batches-bin/`.
 */
export function openCifar10(dir: string, split: 'train' | 'test' = 'train', name = `cifar10:${dir}`): Source {
  const names = split === 'train' ? CIFAR_TRAIN_FILES : CIFAR_TEST_FILES;
  const first = names[0] as string;
  let base = dir;
  if (!fs.existsSync(path.join(dir, first)) && fs.existsSync(path.join(dir, 'cifar-10-batches-bin', first)))
    base = path.join(dir, 'cifar-10-batches-bin');
  for (const f of names) {
    if (!fs.existsSync(path.join(base, f)))
      throw new Error(
        `${name}: missing ${path.join(base, f)} (expected ${names.join(', ')} from cifar-10-binary.tar.gz)`,
      );
  }
  const files: Bytes[] = [];
  try {
    for (const f of names) {
      const b = openBytes(path.join(base, f));
      files.push(b);
      if (b.size === 0 || b.size % CIFAR_RECORD !== 0)
        throw new Error(`${b.file}: size ${b.size} is not a multiple of ${CIFAR_RECORD}-byte records`);
    }
  } catch (e) {
    for (const b of files) b.close();
    throw e;
  }
  // ends[k] = examples in files 0…k.
  const ends: number[] = [];
  let total = 0;
  for (const b of files) ends.push((total += b.size / CIFAR_RECORD));
  const locate = (index: number): { bytes: Bytes; pos: number } => {
    let k = 0;
    while (index >= (ends[k] as number)) k++;
    const bytes = files[k] as Bytes;
    return { bytes, pos: (index - (k === 0 ? 0 : (ends[k - 1] as number))) * CIFAR_RECORD };
  };
  const checkLabel = (b: Bytes, pos: number, label: number): number => {
    if (label > 9) throw new Error(`${b.file}: label ${label} at offset ${pos} is not a CIFAR-10 class 0…9`);
    return label;
  };
  return {
    name,
    size: total,
    shape: SHAPE,
    shapeVaries: false,
    dtype: 'uint8',
    numClasses: 10,
    read(index: number): RawExample {
      const { bytes, pos } = locate(index);
      const rec = bytes.read(pos, CIFAR_RECORD);
      return { data: cifarRecordToHwc(rec), shape: SHAPE, label: checkLabel(bytes, pos, rec[0] as number) };
    },
    label(index: number): number {
      const { bytes, pos } = locate(index);
      return checkLabel(bytes, pos, bytes.read(pos, 1)[0] as number);
    },
    close(): void {
      for (const b of files) b.close();
    },
  };
}
