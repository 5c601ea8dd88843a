/**
 * The safetensors file format (https://github.com/huggingface/safetensors), so that checkpoints
 * can be opened by any other tool: an 8-byte little-endian header length N, N bytes of UTF-8 JSON
 * `{name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__"?: {key: string}}` padded with
 * spaces to a multiple of 8, then the raw little-endian tensor bytes, offsets relative to the data
 * section. Decoding validates as strictly as the reference implementation (contiguous, no gaps, no
 * overlaps, no trailing bytes), because a checkpoint that loads wrongly is worse than one that fails.
 */
import { endianness } from 'node:os';

/** Element types this module reads and writes. */
export type SafeDtype = 'F32' | 'F64' | 'I32' | 'U8';

/** Typed array matching one of the supported dtypes. */
export type TypedData = Float32Array | Float64Array | Int32Array | Uint8Array;

/** What `encodeSafetensors` accepts; `HostTensor` is one. */
export interface TensorLike {
  shape: number[];
  data: TypedData;
}

/** A decoded tensor: its dtype is explicit because the data may be any supported typed array. */
export interface SafeTensor {
  dtype: SafeDtype;
  shape: number[];
  data: TypedData;
}

/** Result of `decodeSafetensors`; tensors in sorted name order. */
export interface DecodedSafetensors {
  tensors: Map<string, SafeTensor>;
  metadata: Record<string, string> | undefined;
}

/** A malformed file or argument; the message is one line naming the file and, if any, the tensor. */
export class SafetensorsError extends Error {
  override name = 'SafetensorsError';
}

const METADATA_KEY = '__metadata__';
/** The reference implementation refuses larger headers; so do we, so that a bogus length fails fast. */
const MAX_HEADER_BYTES = 100_000_000;
const LITTLE_ENDIAN_HOST = endianness() === 'LE';

interface DtypeInfo {
  size: number;
  make(buffer: ArrayBufferLike, byteOffset: number, length: number): TypedData;
}

const DTYPES: Record<SafeDtype, DtypeInfo> = {
  F32: { size: 4, make: (b, o, n) => new Float32Array(b, o, n) },
  F64: { size: 8, make: (b, o, n) => new Float64Array(b, o, n) },
  I32: { size: 4, make: (b, o, n) => new Int32Array(b, o, n) },
  U8: { size: 1, make: (b, o, n) => new Uint8Array(b, o, n) },
};

/** Valid safetensors dtypes this module does not handle: reported as unsupported rather than unknown. */
const OTHER_KNOWN_DTYPES = new Set([
  'BOOL',
  'I8',
  'I16',
  'U16',
  'U32',
  'I64',
  'U64',
  'F16',
  'BF16',
  'F8_E5M2',
  'F8_E4M3',
]);

function isSafeDtype(s: string): s is SafeDtype {
  return Object.hasOwn(DTYPES, s);
}

/** dtype of a typed array, or undefined for types safetensors cannot hold here. */
export function dtypeOf(data: unknown): SafeDtype | undefined {
  if (data instanceof Float32Array) return 'F32';
  if (data instanceof Float64Array) return 'F64';
  if (data instanceof Int32Array) return 'I32';
  // Uint8ClampedArray and Buffer are Uint8Arrays of the same bytes; both encode fine as U8.
  if (data instanceof Uint8Array) return 'U8';
  return undefined;
}

/** Byte size of one element of `dtype`. */
export function dtypeSize(dtype: SafeDtype): number {
  return DTYPES[dtype].size;
}

/** `[3,3,1,32]`: compact so that error messages stay on one short line. */
export function formatShape(shape: readonly number[]): string {
  return `[${shape.join(',')}]`;
}

function oneLine(s: string): string {
  return s.replace(/\s*[\r\n]+\s*/g, ' ');
}

/** Number of elements of `shape`, or undefined when not a valid shape or too large to address. */
function elementCount(shape: unknown): number | undefined {
  if (!Array.isArray(shape)) return undefined;
  let n = 1;
  for (const d of shape) {
    if (typeof d !== 'number' || !Number.isSafeInteger(d) || d < 0) return undefined;
    n *= d;
  }
  return Number.isSafeInteger(n) ? n : undefined;
}

/** Sort key identical to byte-wise UTF-8 order (what the reference implementation sorts by). */
function compareNames(a: string, b: string): number {
  return Buffer.compare(Buffer.from(a, 'utf8'), Buffer.from(b, 'utf8'));
}

/** Serializes `tensors` (in sorted name order) and optional string metadata into one buffer. */
export function encodeSafetensors(
  tensors: ReadonlyMap<string, TensorLike>,
  metadata?: Readonly<Record<string, string>>,
): Buffer {
  const names = [...tensors.keys()].sort(compareNames);
  const parts: string[] = [];
  if (metadata !== undefined) {
    // Sorted so that the bytes (and thus checkpoint hashes) do not depend on insertion order.
    const entries = Object.entries(metadata).sort(([a], [b]) => compareNames(a, b));
    for (const [k, v] of entries) {
      if (typeof v !== 'string') {
        throw new SafetensorsError(`encodeSafetensors: metadata '${k}' is a ${typeof v}, must be a string`);
      }
    }
    // Built by hand: JSON.stringify of an object would put integer-like keys first.
    const body = entries.map(([k, v]) => `${JSON.stringify(k)}:${JSON.stringify(v)}`).join(',');
    parts.push(`${JSON.stringify(METADATA_KEY)}:{${body}}`);
  }
  const layout: { data: TypedData; begin: number }[] = [];
  let offset = 0;
  for (const name of names) {
    const t = tensors.get(name) as TensorLike;
    const where = `encodeSafetensors: tensor '${name}'`;
    if (name === METADATA_KEY) throw new SafetensorsError(`${where}: name is reserved`);
    const dtype = dtypeOf(t.data);
    if (dtype === undefined) {
      throw new SafetensorsError(
        `${where}: data must be a Float32Array, Float64Array, Int32Array or Uint8Array`,
      );
    }
    const count = elementCount(t.shape);
    if (count === undefined) throw new SafetensorsError(`${where}: invalid shape ${JSON.stringify(t.shape)}`);
    if (count !== t.data.length) {
      throw new SafetensorsError(
        `${where}: shape ${formatShape(t.shape)} needs ${count} elements, data has ${t.data.length}`,
      );
    }
    const end = offset + t.data.byteLength;
    parts.push(
      `${JSON.stringify(name)}:{"dtype":"${dtype}","shape":${formatShape(t.shape)},"data_offsets":[${offset},${end}]}`,
    );
    layout.push({ data: t.data, begin: offset });
    offset = end;
  }
  const json = Buffer.from(`{${parts.join(',')}}`, 'utf8');
  const headerLen = Math.ceil(json.length / 8) * 8;
  const out = Buffer.allocUnsafe(8 + headerLen + offset);
  out.writeBigUInt64LE(BigInt(headerLen), 0);
  json.copy(out, 8);
  out.fill(0x20, 8 + json.length, 8 + headerLen);
  const dataStart = 8 + headerLen;
  for (const { data, begin } of layout) {
    writeLittleEndian(out, dataStart + begin, data);
  }
  return out;
}

/** Copies the bytes of `data` into `out` at `pos` in little-endian order, whatever the host's. */
function writeLittleEndian(out: Buffer, pos: number, data: TypedData): void {
  if (LITTLE_ENDIAN_HOST || data instanceof Uint8Array) {
    out.set(new Uint8Array(data.buffer, data.byteOffset, data.byteLength), pos);
    return;
  }
  // Byte swaps rather than number round trips, which could canonicalize NaN payloads.
  const size = data.BYTES_PER_ELEMENT;
  const src = new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
  for (let i = 0; i < src.length; i += size) {
    for (let j = 0; j < size; j++) out[pos + i + j] = src[i + size - 1 - j] as number;
  }
}

interface RawEntry {
  name: string;
  dtype: SafeDtype;
  shape: number[];
  begin: number;
  end: number;
}

/** Parses and validates `buf`; tensors are views on `buf` when aligned, copies otherwise. */
export function decodeSafetensors(buf: Buffer, fileLabel: string): DecodedSafetensors {
  const fail = (msg: string): never => {
    throw new SafetensorsError(oneLine(`${fileLabel}: ${msg}`));
  };
  if (buf.length < 8) fail(`${buf.length} bytes, too short to hold the 8-byte header length`);
  const headerLen64 = buf.readBigUInt64LE(0);
  if (headerLen64 > BigInt(buf.length - 8)) {
    fail(`header length ${headerLen64} exceeds the ${buf.length - 8} bytes after the length field`);
  }
  const headerLen = Number(headerLen64);
  if (headerLen > MAX_HEADER_BYTES)
    fail(`header length ${headerLen} exceeds the limit of ${MAX_HEADER_BYTES}`);

  let headerText: string;
  try {
    headerText = new TextDecoder('utf-8', { fatal: true }).decode(buf.subarray(8, 8 + headerLen));
  } catch {
    return fail('header is not valid UTF-8');
  }
  let header: unknown;
  try {
    header = JSON.parse(headerText);
  } catch (e) {
    return fail(`header is not valid JSON: ${(e as Error).message}`);
  }
  if (typeof header !== 'object' || header === null || Array.isArray(header)) {
    return fail('header is not a JSON object');
  }

  const dataStart = 8 + headerLen;
  const dataLen = buf.length - dataStart;
  let metadata: Record<string, string> | undefined;
  const entries: RawEntry[] = [];
  for (const [name, info] of Object.entries(header)) {
    if (name === METADATA_KEY) {
      metadata = parseMetadata(info, fail);
      continue;
    }
    entries.push(parseEntry(name, info, dataLen, fail));
  }

  // The data section must be exactly the concatenation of all tensors, in offset order.
  const byOffset = [...entries].sort((a, b) => a.begin - b.begin || a.end - b.end);
  let cursor = 0;
  let prev: RawEntry | undefined;
  for (const e of byOffset) {
    if (e.begin < cursor && prev !== undefined) {
      fail(
        `tensor '${e.name}': data_offsets [${e.begin}, ${e.end}] overlap tensor '${prev.name}' [${prev.begin}, ${prev.end}]`,
      );
    }
    if (e.begin > cursor) {
      const after =
        prev === undefined ? 'the start of the data section' : `tensor '${prev.name}' ends at ${cursor}`;
      fail(
        `tensor '${e.name}': data_offsets [${e.begin}, ${e.end}] leave a gap of ${e.begin - cursor} bytes (${after})`,
      );
    }
    cursor = e.end;
    prev = e;
  }
  if (cursor !== dataLen) {
    fail(
      `${dataLen - cursor} trailing bytes after the last tensor (tensor data ends at ${cursor} of ${dataLen})`,
    );
  }

  const tensors = new Map<string, SafeTensor>();
  for (const e of entries.sort((a, b) => compareNames(a.name, b.name))) {
    tensors.set(e.name, { dtype: e.dtype, shape: e.shape, data: viewOrCopy(buf, dataStart + e.begin, e) });
  }
  return { tensors, metadata };
}

function parseMetadata(info: unknown, fail: (msg: string) => never): Record<string, string> | undefined {
  // The reference implementation writes `null` when there is no metadata.
  if (info === null) return undefined;
  if (typeof info !== 'object' || Array.isArray(info)) return fail(`${METADATA_KEY} is not an object`);
  const entries = Object.entries(info);
  for (const [k, v] of entries) {
    if (typeof v !== 'string') fail(`${METADATA_KEY} entry '${k}' is not a string`);
  }
  // fromEntries defines own properties, so a key like "__proto__" stays data.
  return Object.fromEntries(entries) as Record<string, string>;
}

function parseEntry(name: string, info: unknown, dataLen: number, fail: (msg: string) => never): RawEntry {
  const where = `tensor '${name}'`;
  if (typeof info !== 'object' || info === null || Array.isArray(info))
    return fail(`${where}: entry is not an object`);
  const { dtype, shape, data_offsets: offsets } = info as Record<string, unknown>;
  if (typeof dtype !== 'string') return fail(`${where}: dtype is missing or not a string`);
  if (!isSafeDtype(dtype)) {
    return fail(
      OTHER_KNOWN_DTYPES.has(dtype)
        ? `${where}: dtype '${dtype}' is not supported (supported: ${Object.keys(DTYPES).join(', ')})`
        : `${where}: unknown dtype '${dtype}'`,
    );
  }
  const count = elementCount(shape);
  if (count === undefined) return fail(`${where}: invalid shape ${JSON.stringify(shape)}`);
  const validShape = shape as number[];
  if (
    !Array.isArray(offsets) ||
    offsets.length !== 2 ||
    !offsets.every((o: unknown) => typeof o === 'number' && Number.isSafeInteger(o) && o >= 0)
  ) {
    return fail(`${where}: invalid data_offsets ${JSON.stringify(offsets)}`);
  }
  const [begin, end] = offsets as [number, number];
  if (end < begin) return fail(`${where}: data_offsets [${begin}, ${end}] end before they begin`);
  if (end > dataLen) {
    return fail(`${where}: data_offsets [${begin}, ${end}] exceed the data section of ${dataLen} bytes`);
  }
  const need = count * DTYPES[dtype].size;
  if (end - begin !== need) {
    fail(
      `${where}: data_offsets [${begin}, ${end}] hold ${end - begin} bytes, shape ${formatShape(validShape)} needs ${need}`,
    );
  }
  return { name, dtype, shape: [...validShape], begin, end };
}

function viewOrCopy(buf: Buffer, start: number, e: RawEntry): TypedData {
  const { size } = DTYPES[e.dtype];
  const count = (e.end - e.begin) / size;
  const absolute = buf.byteOffset + start;
  if (absolute % size === 0 && (LITTLE_ENDIAN_HOST || size === 1)) {
    return DTYPES[e.dtype].make(buf.buffer, absolute, count);
  }
  const bytes = new Uint8Array(e.end - e.begin);
  if (LITTLE_ENDIAN_HOST) {
    bytes.set(buf.subarray(start, start + bytes.length));
  } else {
    for (let i = 0; i < bytes.length; i += size) {
      for (let j = 0; j < size; j++) bytes[i + j] = buf[start + i + size - 1 - j] as number;
    }
  }
  return DTYPES[e.dtype].make(bytes.buffer, 0, count);
}
