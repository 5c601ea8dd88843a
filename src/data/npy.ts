/**
 * NumPy `.npy` files. The writer emits format 1.0, little-endian, C order; the reader accepts
 * versions 1–3 and reads one example per file read (by offset), so memory does not grow with N.
 */
import { writeFileAtomic } from '../util/atomic.js';
import { classCount, openBytes, readLabelsFile, type Bytes } from './idx.js';
import type { RawExample, Source } from './preprocess.js';

const LITTLE_ENDIAN = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;

/** Typed arrays the writer knows, with their numpy dtype strings. */
export type NpyArray = Float32Array | Float64Array | Uint8Array | Int32Array | BigInt64Array;

function descrOf(data: NpyArray): string {
  if (data instanceof Float32Array) return '<f4';
  if (data instanceof Float64Array) return '<f8';
  if (data instanceof Uint8Array) return '|u1';
  if (data instanceof Int32Array) return '<i4';
  return '<i8';
}

/** Encodes a typed array of `shape` as .npy bytes (float32 <f4, float64 <f8, uint8 |u1, int32 <i4, int64 <i8). */
export function encodeNpy(data: NpyArray, shape: readonly number[]): Buffer {
  const n = shape.reduce((a, b) => a * b, 1);
  if (n !== data.length)
    throw new Error(`npy: shape [${shape.join(', ')}] needs ${n} values, got ${data.length}`);
  const shapeStr = shape.length === 1 ? `(${shape[0]},)` : `(${shape.join(', ')})`;
  let header = `{'descr': '${descrOf(data)}', 'fortran_order': False, 'shape': ${shapeStr}, }`;
  // Magic (6) + version (2) + length (2) + header + '\n' is padded to a multiple of 64 bytes.
  const total = Math.ceil((10 + header.length + 1) / 64) * 64;
  header = header.padEnd(total - 10 - 1, ' ') + '\n';
  const buf = Buffer.alloc(total + data.byteLength);
  buf.write('\x93NUMPY', 0, 'latin1');
  buf[6] = 1;
  buf[7] = 0;
  buf.writeUInt16LE(header.length, 8);
  buf.write(header, 10, 'latin1');
  const bytes = Buffer.from(data.buffer, data.byteOffset, data.byteLength);
  if (!LITTLE_ENDIAN) throw new Error('npy: big-endian hosts are not supported');
  bytes.copy(buf, total);
  return buf;
}

/** Encodes a float32 array of `shape` as .npy bytes. */
export function encodeNpyFloat32(data: Float32Array, shape: readonly number[]): Buffer {
  return encodeNpy(data, shape);
}

/** Writes a float32 .npy file atomically. */
export async function writeNpyFloat32(
  path: string,
  data: Float32Array,
  shape: readonly number[],
): Promise<void> {
  await writeFileAtomic(path, encodeNpyFloat32(data, shape));
}

/** A parsed .npy header. */
export interface NpyHeader {
  descr: string;
  shape: number[];
  /** Offset of the first value. */
  dataOffset: number;
}

/** Bytes per element of the dtypes the reader accepts, by descr. */
const ITEM_BYTES: Record<string, number> = {
  '|u1': 1,
  '<u1': 1,
  '|i1': 1,
  '<i1': 1,
  '<u2': 2,
  '<i2': 2,
  '<u4': 4,
  '<i4': 4,
  '<u8': 8,
  '<i8': 8,
  '<f4': 4,
  '<f8': 8,
};

/**
 * Header text as quoted in an error message: control characters escaped (a damaged header may hold
 * line breaks and binary bytes; a message is one line), at most 160 characters.
 */
function shown(s: string): string {
  const t = JSON.stringify(s).slice(1, -1);
  return t.length > 160 ? `${t.slice(0, 160)}...` : t;
}

/** Parses and checks a .npy header: magic, version, descr, C order, shape and exact file size. */
export function readNpyHeader(bytes: Bytes): NpyHeader {
  const { file, size } = bytes;
  if (size < 10) throw new Error(`${file}: truncated: ${size} bytes, a .npy header needs at least 10`);
  const pre = Buffer.from(bytes.read(0, 12 <= size ? 12 : 10));
  if (pre.toString('latin1', 0, 6) !== '\x93NUMPY')
    throw new Error(
      `${file}: bad magic 0x${pre.toString('hex', 0, 6)} at offset 0 (expected 0x934e554d5059, '\\x93NUMPY'); not a .npy file`,
    );
  const major = pre[6] as number;
  if (major < 1 || major > 3)
    throw new Error(`${file}: unsupported .npy format version ${major}.${pre[7]} at offset 6 (1, 2 or 3)`);
  const start = major === 1 ? 10 : 12;
  if (size < start)
    throw new Error(`${file}: truncated: ${size} bytes, a version ${major} .npy header needs ${start}`);
  const len = major === 1 ? pre.readUInt16LE(8) : pre.readUInt32LE(8);
  const dataOffset = start + len;
  if (size < dataOffset)
    throw new Error(`${file}: truncated: ${size} bytes, the header length at offset 8 says ${dataOffset}`);
  const text = Buffer.from(bytes.read(start, len)).toString(major === 3 ? 'utf8' : 'latin1');
  const field = (key: string, re: RegExp): string => {
    const m = re.exec(text);
    if (!m?.[1])
      throw new Error(
        `${file}: header field '${key}' missing or malformed at offset ${start}: ${shown(text.trim())}`,
      );
    return m[1];
  };
  const descr = field('descr', /'descr'\s*:\s*'([^']*)'/);
  const fortran = field('fortran_order', /'fortran_order'\s*:\s*(True|False)/);
  const shapeText = /'shape'\s*:\s*\(([^)]*)\)/.exec(text)?.[1];
  if (shapeText === undefined)
    throw new Error(
      `${file}: header field 'shape' missing or malformed at offset ${start}: ${shown(text.trim())}`,
    );
  if (fortran === 'True')
    throw new Error(
      `${file}: fortran_order True (header at offset ${start}) is not supported; save a C-order array (np.ascontiguousarray)`,
    );
  const parts = shapeText
    .split(',')
    .map((s) => s.trim())
    .filter((s) => s !== '');
  const shape = parts.map((s) => Number(s));
  if (shape.some((d) => !Number.isSafeInteger(d) || d < 0))
    throw new Error(
      `${file}: header field 'shape' (${shown(shapeText)}) at offset ${start} is not a tuple of sizes`,
    );
  const item = ITEM_BYTES[descr];
  if (item === undefined)
    throw new Error(
      `${file}: dtype '${shown(descr)}' (header field 'descr' at offset ${start}) is not supported (little-endian ints, <f4, <f8)`,
    );
  const expected = dataOffset + shape.reduce((a, b) => a * b, 1) * item;
  const layout = `${dataOffset}-byte header + [${shape.join(', ')}] × ${item} byte${item > 1 ? 's' : ''}`;
  if (size < expected) throw new Error(`${file}: truncated: ${size} bytes, expected ${expected} (${layout})`);
  if (size > expected)
    throw new Error(
      `${file}: ${size - expected} trailing bytes after offset ${expected} (expected ${expected}: ${layout})`,
    );
  return { descr, shape, dataOffset };
}

const INT_DESCRS = ['|u1', '<u1', '|i1', '<i1', '<u2', '<i2', '<u4', '<i4', '<u8', '<i8'];

/** All labels of a 1-D integer .npy file (|u1, <i4, <i8, …), checked 0 ≤ label < 2^31. */
export function readNpyLabels(bytes: Bytes): Int32Array {
  const { file } = bytes;
  const h = readNpyHeader(bytes);
  if (!INT_DESCRS.includes(h.descr))
    throw new Error(
      `${file}: labels have dtype '${h.descr}' (header field 'descr'), expected an integer type (|u1, <i4, <i8)`,
    );
  if (h.shape.length !== 1)
    throw new Error(
      `${file}: labels have shape [${h.shape.join(', ')}] (header field 'shape'), expected [N]`,
    );
  const n = h.shape[0] as number;
  const item = ITEM_BYTES[h.descr] as number;
  const raw = bytes.read(h.dataOffset, n * item);
  const view = new DataView(raw.buffer, raw.byteOffset, raw.byteLength);
  const signed = h.descr.includes('i');
  const out = new Int32Array(n);
  for (let i = 0; i < n; i++) {
    const o = i * item;
    let v: number;
    if (item === 1) v = signed ? view.getInt8(o) : view.getUint8(o);
    else if (item === 2) v = signed ? view.getInt16(o, true) : view.getUint16(o, true);
    else if (item === 4) v = signed ? view.getInt32(o, true) : view.getUint32(o, true);
    else v = Number(signed ? view.getBigInt64(o, true) : view.getBigUint64(o, true));
    if (v < 0 || v >= 2 ** 31)
      throw new Error(
        `${file}: label ${v} of example ${i} at offset ${h.dataOffset + o} is not in [0, 2^31)`,
      );
    out[i] = v;
  }
  return out;
}

/**
 * `npy:<file>[,<labels>]`: uint8 (|u1, scaled to [-1, 1]) or float32 (<f4, passed through: it must
 * already be in model space) of shape [N, H, W], [N, H, W, C] or [N, D]; optional integer labels [N].
 */
export function openNpy(file: string, labelsFile?: string, name = `npy:${file}`): Source {
  const bytes = openBytes(file);
  try {
    const h = readNpyHeader(bytes);
    const u8 = h.descr === '|u1' || h.descr === '<u1';
    if (!u8 && h.descr !== '<f4')
      throw new Error(
        `${file}: dtype '${h.descr}' (header field 'descr') is not supported for data (|u1 or <f4; convert with .astype(np.float32))`,
      );
    if (!u8 && !LITTLE_ENDIAN) throw new Error('npy: big-endian hosts are not supported');
    const dims = h.shape;
    if (dims.length < 2 || dims.length > 4)
      throw new Error(
        `${file}: shape [${dims.join(', ')}] (header field 'shape') is not [N, H, W], [N, H, W, C] or [N, D]`,
      );
    const n = dims[0] as number;
    if (n === 0) throw new Error(`${file}: holds no examples (shape [${dims.join(', ')}])`);
    const shape = dims.length === 3 ? [dims[1] as number, dims[2] as number, 1] : dims.slice(1);
    const labels = labelsFile === undefined ? null : readLabelsFile(labelsFile, readNpyLabels, n, file);
    const values = shape.reduce((a, b) => a * b, 1);
    const exBytes = values * (u8 ? 1 : 4);
    const labelOf = (i: number) => (labels ? (labels[i] as number) : -1);
    return {
      name,
      size: n,
      shape,
      shapeVaries: false,
      dtype: u8 ? 'uint8' : 'float32 (unscaled)',
      numClasses: classCount(labels),
      read(index: number): RawExample {
        // A fresh read starts at byteOffset 0, so the float view is aligned.
        const raw = bytes.read(h.dataOffset + index * exBytes, exBytes);
        const data = u8 ? raw : new Float32Array(raw.buffer, raw.byteOffset, values);
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
