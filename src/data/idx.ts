/**
 * IDX files (the MNIST format, http://yann.lecun.com/exdb/mnist/): magic 00 00 <dtype> <ndim>, then
 * ndim big-endian uint32 dimensions, then the values, big-endian. Raw files are read by offset, one
 * example per read, so memory does not grow with the dataset; gzip files are decoded into memory once.
 *
 * Also home of `Bytes`, the random-access byte reader that the other binary readers share.
 */
import * as fs from 'node:fs';
import { gunzipSync } from 'node:zlib';
import type { RawExample, Source } from './preprocess.js';

/** Random access to a file's bytes. */
export interface Bytes {
  /** The file, as given (for messages). */
  readonly file: string;
  /** Size in bytes (decoded size for gzip files). */
  readonly size: number;
  /** A fresh copy of bytes [pos, pos + length); throws naming the file if they are not all there. */
  read(pos: number, length: number): Uint8Array;
  close(): void;
}

function errCode(e: unknown): string {
  return typeof e === 'object' && e !== null && 'code' in e ? String((e as NodeJS.ErrnoException).code) : '';
}

/** Opens `file` for random access; gzip content (magic 1f 8b) is decoded into memory, the rest is read by offset. */
export function openBytes(file: string): Bytes {
  let fd: number;
  try {
    fd = fs.openSync(file, 'r');
  } catch (e) {
    const code = errCode(e);
    throw new Error(
      code === 'ENOENT'
        ? `${file}: no such file`
        : code === 'EISDIR'
          ? `${file}: is a directory, not a file`
          : `${file}: cannot open (${code || (e as Error).message})`,
    );
  }
  const size = fs.fstatSync(fd).size;
  const head = new Uint8Array(2);
  if (size >= 2) fs.readSync(fd, head, 0, 2, 0);
  if (head[0] === 0x1f && head[1] === 0x8b) {
    const packed = fs.readFileSync(fd);
    fs.closeSync(fd);
    let buf: Buffer;
    try {
      buf = gunzipSync(packed);
    } catch (e) {
      throw new Error(`${file}: corrupt gzip data (${(e as Error).message})`);
    }
    return memoryBytes(file, buf);
  }
  let open = true;
  return {
    file,
    size,
    read(pos: number, length: number): Uint8Array {
      if (!open) throw new Error(`${file}: read after close`);
      if (pos < 0 || pos + length > size)
        throw new Error(`${file}: read of ${length} bytes at offset ${pos} is past the end (${size} bytes)`);
      const out = new Uint8Array(length);
      let done = 0;
      while (done < length) {
        const n = fs.readSync(fd, out, done, length - done, pos + done);
        if (n === 0)
          throw new Error(`${file}: unexpected end of file at offset ${pos + done} (file shrank?)`);
        done += n;
      }
      return out;
    },
    close(): void {
      if (open) fs.closeSync(fd);
      open = false;
    },
  };
}

/** `Bytes` over a buffer already in memory. */
export function memoryBytes(file: string, buf: Uint8Array): Bytes {
  return {
    file,
    size: buf.length,
    read(pos: number, length: number): Uint8Array {
      if (pos < 0 || pos + length > buf.length)
        throw new Error(
          `${file}: read of ${length} bytes at offset ${pos} is past the end (${buf.length} bytes)`,
        );
      const out = new Uint8Array(length);
      out.set(buf.subarray(pos, pos + length));
      return out;
    },
    close(): void {},
  };
}

/** IDX element types by their dtype byte. */
export const IDX_DTYPES: ReadonlyMap<number, { name: string; bytes: number }> = new Map([
  [0x08, { name: 'ubyte', bytes: 1 }],
  [0x09, { name: 'byte', bytes: 1 }],
  [0x0b, { name: 'short', bytes: 2 }],
  [0x0c, { name: 'int', bytes: 4 }],
  [0x0d, { name: 'float', bytes: 4 }],
  [0x0e, { name: 'double', bytes: 8 }],
]);

/** A parsed IDX header. */
export interface IdxHeader {
  dtype: number;
  dtypeName: string;
  itemBytes: number;
  dims: number[];
  /** Offset of the first value: 4 + 4·ndim. */
  dataOffset: number;
}

const hex = (v: number, digits: number) => `0x${v.toString(16).padStart(digits, '0')}`;

/**
 * Parses and checks the header of an IDX file: magic, dimensions, and exact file size.
 * `role` words the hint of a bad magic ('images' expects 3-D ubyte, 'labels' 1-D ubyte).
 */
export function readIdxHeader(bytes: Bytes, role: 'images' | 'labels'): IdxHeader {
  const { file, size } = bytes;
  const example = role === 'images' ? '0x00000803 for 3-D ubyte images' : '0x00000801 for 1-D ubyte labels';
  if (size < 4) throw new Error(`${file}: truncated: ${size} bytes, an IDX header needs at least 4`);
  const m = bytes.read(0, 4);
  const magic =
    ((m[0] as number) * 2 ** 24 + ((m[1] as number) << 16) + ((m[2] as number) << 8) + (m[3] as number)) >>>
    0;
  const dtype = m[2] as number;
  const ndim = m[3] as number;
  const type = IDX_DTYPES.get(dtype);
  if (m[0] !== 0 || m[1] !== 0)
    throw new Error(
      `${file}: bad magic ${hex(magic, 8)} at offset 0 (expected 0x0000, a dtype byte and ndim, e.g. ${example}); not an IDX file`,
    );
  if (!type)
    throw new Error(
      `${file}: bad magic ${hex(magic, 8)} at offset 0 (dtype byte ${hex(dtype, 2)} at offset 2 is none of 08 ubyte, 09 byte, 0b short, 0c int, 0d float, 0e double; e.g. ${example})`,
    );
  if (ndim === 0)
    throw new Error(
      `${file}: bad magic ${hex(magic, 8)} at offset 0 (ndim byte at offset 3 is 0; e.g. ${example})`,
    );
  const dataOffset = 4 + 4 * ndim;
  if (size < dataOffset)
    throw new Error(
      `${file}: truncated: ${size} bytes, the header of a ${ndim}-D IDX file needs ${dataOffset}`,
    );
  const d = bytes.read(4, 4 * ndim);
  const view = new DataView(d.buffer, d.byteOffset, d.byteLength);
  const dims = Array.from({ length: ndim }, (_, i) => view.getUint32(4 * i, false));
  const count = dims.reduce((a, b) => a * b, 1);
  const expected = dataOffset + count * type.bytes;
  // A damaged ndim byte can announce 255 dimensions: keep the message one readable line.
  const shown =
    dims.length > 8 ? `${dims.slice(0, 8).join('×')}×... (${dims.length} dimensions)` : dims.join('×');
  const layout = `${dataOffset}-byte header + ${shown} ${type.name} values of ${type.bytes} byte${type.bytes > 1 ? 's' : ''}`;
  if (!Number.isSafeInteger(expected))
    throw new Error(`${file}: dimensions ${shown} at offset 4 are too large`);
  if (size < expected) throw new Error(`${file}: truncated: ${size} bytes, expected ${expected} (${layout})`);
  if (size > expected)
    throw new Error(
      `${file}: ${size - expected} trailing bytes after offset ${expected} (expected ${expected}: ${layout})`,
    );
  return { dtype, dtypeName: type.name, itemBytes: type.bytes, dims, dataOffset };
}

/** Labels from `file` (read with `read`), checked to number exactly `n` for `imagesFile`. */
export function readLabelsFile(
  file: string,
  read: (b: Bytes) => Int32Array,
  n: number,
  imagesFile: string,
): Int32Array {
  const lb = openBytes(file);
  let labels: Int32Array;
  try {
    labels = read(lb);
  } finally {
    lb.close();
  }
  if (labels.length !== n)
    throw new Error(`${file}: ${labels.length} labels for ${n} images in ${imagesFile}`);
  return labels;
}

/** All values of an integer IDX labels file (1-D ubyte/byte/short/int), checked ≥ 0. */
export function readIdxLabels(bytes: Bytes): Int32Array {
  const h = readIdxHeader(bytes, 'labels');
  const { file } = bytes;
  if (h.dims.length !== 1)
    throw new Error(
      `${file}: labels file has ${h.dims.length} dimensions [${h.dims.join(', ')}] (ndim byte at offset 3), expected 1`,
    );
  if (h.dtype === 0x0d || h.dtype === 0x0e)
    throw new Error(`${file}: labels have dtype ${h.dtypeName} (byte at offset 2), expected an integer type`);
  const n = h.dims[0] as number;
  const raw = bytes.read(h.dataOffset, n * h.itemBytes);
  const view = new DataView(raw.buffer, raw.byteOffset, raw.byteLength);
  const out = new Int32Array(n);
  for (let i = 0; i < n; i++) {
    const o = i * h.itemBytes;
    const v =
      h.dtype === 0x08
        ? view.getUint8(o)
        : h.dtype === 0x09
          ? view.getInt8(o)
          : h.dtype === 0x0b
            ? view.getInt16(o, false)
            : view.getInt32(o, false);
    if (v < 0)
      throw new Error(`${file}: label ${v} of example ${i} at offset ${h.dataOffset + o} is negative`);
    out[i] = v;
  }
  return out;
}

/** Largest label + 1 (0 for no labels). */
export function classCount(labels: Int32Array | null): number {
  if (!labels) return 0;
  let max = -1;
  for (const v of labels) if (v > max) max = v;
  return max + 1;
}

/** Shape of one example from the per-file dims after N: [H, W] → [H, W, 1], [H, W, C], or [D]. */
export function exampleShape(file: string, dims: readonly number[]): number[] {
  const rest = dims.slice(1);
  if (rest.length === 2) return [rest[0] as number, rest[1] as number, 1];
  if (rest.length === 3 || rest.length === 1) return rest;
  throw new Error(
    `${file}: shape [${dims.join(', ')}] is not [N, H, W], [N, H, W, C] or [N, D] (a ${dims.length}-D file${dims.length === 1 ? '; a labels file?' : ''})`,
  );
}

/** `idx:<images>[,<labels>]`: IDX images (ubyte, or float/double passed through) and optional integer labels. */
export function openIdx(imagesFile: string, labelsFile?: string, name = `idx:${imagesFile}`): Source {
  const bytes = openBytes(imagesFile);
  try {
    const h = readIdxHeader(bytes, 'images');
    const shape = exampleShape(imagesFile, h.dims);
    if (h.dtype !== 0x08 && h.dtype !== 0x0d && h.dtype !== 0x0e)
      throw new Error(
        `${imagesFile}: dtype ${h.dtypeName} (byte at offset 2) is not supported for images (ubyte, float or double)`,
      );
    const n = h.dims[0] as number;
    if (n === 0) throw new Error(`${imagesFile}: holds no examples (first dimension at offset 4 is 0)`);
    const labels = labelsFile === undefined ? null : readLabelsFile(labelsFile, readIdxLabels, n, imagesFile);
    const values = shape.reduce((a, b) => a * b, 1);
    const exBytes = values * h.itemBytes;
    const labelOf = (i: number) => (labels ? (labels[i] as number) : -1);
    return {
      name,
      size: n,
      shape,
      shapeVaries: false,
      dtype:
        h.dtype === 0x08
          ? 'uint8'
          : `${h.dtypeName === 'float' ? 'float32' : 'float64'} (as float32, unscaled)`,
      numClasses: classCount(labels),
      read(index: number): RawExample {
        const raw = bytes.read(h.dataOffset + index * exBytes, exBytes);
        if (h.dtype === 0x08) return { data: raw, shape, label: labelOf(index) };
        const view = new DataView(raw.buffer, raw.byteOffset, raw.byteLength);
        const data = new Float32Array(values);
        for (let i = 0; i < values; i++)
          data[i] = h.dtype === 0x0d ? view.getFloat32(4 * i, false) : view.getFloat64(8 * i, false);
        return { data, shape, label: labelOf(index) };
      },
      label: labelOf,
      close: () => bytes.close(),
    };
  } catch (e) {
    bytes.close();
    throw e;
  }
}
