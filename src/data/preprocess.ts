/**
 * From examples as stored to model space. Readers (idx, cifar, folder, npy, mnist) yield a `Source`
 * of raw examples; `imageDataset` turns it into the trainer's `Dataset`:
 *
 * - values: uint8 v → v/127.5 − 1 ∈ [-1, 1]; float32 is passed through unchanged, so float data
 *   must already be in model space (images in [-1, 1], black = −1);
 * - channels: alpha is dropped (2 → 1, 4 → 3), then grey → RGB replicates and RGB → grey takes the
 *   ITU-R BT.601 luma 0.299 R + 0.587 G + 0.114 B;
 * - size: an image that fits inside `image_size`² is padded, centred, with −1 (black) and never
 *   upsampled (MNIST 28² → 32² adds 2 pixels each side); a larger one is shrunk with an area
 *   (box) filter so that its longer side is `image_size`, keeping the aspect ratio, then padded.
 *   Area averaging is exact for integer factors and does not alias, unlike bilinear sampling.
 *
 * Vector data ([N, D] files) is not an image: only the value conversion applies. Horizontal flips
 * are the trainer's decision (per-example random stream); `flipHorizontal` only performs one.
 */
import type { Dataset, Example } from './dataset.js';

/** One example as stored. */
export interface RawExample {
  /** Row-major values, HWC for images: uint8 0…255 or float32 as is. Callers must not modify it. */
  data: Uint8Array | Float32Array;
  /** [H, W, C] for images, [D] for vectors. */
  shape: readonly number[];
  /** Class label, or -1 when the source has none. */
  label: number;
}

/** A dataset as stored, before preprocessing. */
export interface Source {
  /** Spec or file it was opened from (for messages). */
  readonly name: string;
  readonly size: number;
  /** Shape of one stored example ([H, W, C] or [D]); when `shapeVaries`, the first example's. */
  readonly shape: readonly number[];
  /** True when examples may differ in shape (a folder of PNGs). */
  readonly shapeVaries: boolean;
  /** Stored element type, for people: 'uint8', 'float32', 'png (8-bit)'. */
  readonly dtype: string;
  /** Number of classes (0 = unlabelled). */
  readonly numClasses: number;
  /** Example `index` as stored (0 ≤ index < size). */
  read(index: number): RawExample;
  /** Label of example `index` without decoding its pixels where the format allows (-1 = none). */
  label(index: number): number;
  /** Releases file handles; the source is unusable afterwards. */
  close(): void;
}

/** Target of image preprocessing: square side in pixels and channels (1 grey or 3 RGB). */
export interface ImageOptions {
  imageSize: number;
  channels: number;
}

/** A Dataset that holds file handles until closed. */
export type ClosableDataset = Dataset & { close(): void };

const U8_TO_MODEL = Float32Array.from({ length: 256 }, (_, v) => v / 127.5 - 1);

/** Stored values → float32 model space (uint8 v → v/127.5 − 1; float32 copied unchanged). */
export function toModelSpace(data: Uint8Array | Float32Array): Float32Array {
  if (data instanceof Float32Array) return data.slice();
  const out = new Float32Array(data.length);
  for (let i = 0; i < data.length; i++) out[i] = U8_TO_MODEL[data[i] as number] as number;
  return out;
}

/** Converts [H, W, C] (C = 1…4; 2 and 4 carry alpha, which is dropped) to `channels` = 1 or 3. */
export function convertChannels(x: Float32Array, shape: readonly number[], channels: number): Float32Array {
  const [H = 0, W = 0, C = 0] = shape;
  if (channels !== 1 && channels !== 3)
    throw new Error(`data.channels: images have 1 (grey) or 3 (RGB) channels, got ${channels}`);
  if (C < 1 || C > 4) throw new Error(`image shape [${shape.join(', ')}]: ${C} channels is not 1, 2, 3 or 4`);
  if (C === channels) return x;
  const n = H * W;
  const out = new Float32Array(n * channels);
  const colour = C >= 3;
  for (let p = 0; p < n; p++) {
    const i = p * C;
    if (channels === 1) {
      out[p] = colour
        ? 0.299 * (x[i] as number) + 0.587 * (x[i + 1] as number) + 0.114 * (x[i + 2] as number)
        : (x[i] as number);
    } else if (colour) {
      out[p * 3] = x[i] as number;
      out[p * 3 + 1] = x[i + 1] as number;
      out[p * 3 + 2] = x[i + 2] as number;
    } else {
      const v = x[i] as number;
      out[p * 3] = v;
      out[p * 3 + 1] = v;
      out[p * 3 + 2] = v;
    }
  }
  return out;
}

/** Pads [H, W, C] (H, W ≤ size) to [size, size, C], centred (extra pixel bottom/right), with −1. */
export function padCentred(x: Float32Array, shape: readonly number[], size: number): Float32Array {
  const [H = 0, W = 0, C = 0] = shape;
  if (H > size || W > size) throw new Error(`cannot pad ${H}×${W} to ${size}×${size}`);
  if (H === size && W === size) return x;
  const out = new Float32Array(size * size * C).fill(-1);
  const top = (size - H) >> 1;
  const left = (size - W) >> 1;
  const row = W * C;
  for (let y = 0; y < H; y++) out.set(x.subarray(y * row, (y + 1) * row), ((top + y) * size + left) * C);
  return out;
}

/** For each of m outputs over n inputs: the inputs it covers and their weights (summing to 1). */
interface AxisWeights {
  start: Int32Array;
  /** Weights of inputs start[o], start[o]+1, … for output o, at offset ptr[o]; ptr[m] = total. */
  ptr: Int32Array;
  w: Float32Array;
}

const axisCache = new Map<string, AxisWeights>();

function areaAxis(n: number, m: number): AxisWeights {
  const key = `${n}:${m}`;
  const hit = axisCache.get(key);
  if (hit) return hit;
  const start = new Int32Array(m);
  const ptr = new Int32Array(m + 1);
  const ws: number[] = [];
  const scale = n / m;
  for (let o = 0; o < m; o++) {
    const a = o * scale;
    const b = (o + 1) * scale;
    const j0 = Math.floor(a);
    const j1 = Math.min(n, Math.ceil(b));
    start[o] = j0;
    ptr[o] = ws.length;
    for (let j = j0; j < j1; j++) ws.push((Math.min(b, j + 1) - Math.max(a, j)) / scale);
  }
  ptr[m] = ws.length;
  const r = { start, ptr, w: Float32Array.from(ws) };
  // Folders of odd-sized photos would otherwise grow this without bound.
  if (axisCache.size > 256) axisCache.clear();
  axisCache.set(key, r);
  return r;
}

/** Area (box-filter) resize of [H, W, C] to [outH, outW, C]; meant for shrinking (each output averages its footprint). */
export function resizeArea(
  x: Float32Array,
  shape: readonly number[],
  outH: number,
  outW: number,
): Float32Array {
  const [H = 0, W = 0, C = 0] = shape;
  if (H === outH && W === outW) return x;
  const ax = areaAxis(W, outW);
  const ay = areaAxis(H, outH);
  // Separable: rows first into [H, outW, C], then columns.
  const tmp = new Float32Array(H * outW * C);
  for (let y = 0; y < H; y++) {
    for (let o = 0; o < outW; o++) {
      const s = ax.start[o] as number;
      const p0 = ax.ptr[o] as number;
      const p1 = ax.ptr[o + 1] as number;
      for (let c = 0; c < C; c++) {
        let acc = 0;
        for (let p = p0; p < p1; p++)
          acc += (ax.w[p] as number) * (x[(y * W + s + p - p0) * C + c] as number);
        tmp[(y * outW + o) * C + c] = acc;
      }
    }
  }
  const out = new Float32Array(outH * outW * C);
  const row = outW * C;
  for (let o = 0; o < outH; o++) {
    const s = ay.start[o] as number;
    const p0 = ay.ptr[o] as number;
    const p1 = ay.ptr[o + 1] as number;
    for (let i = 0; i < row; i++) {
      let acc = 0;
      for (let p = p0; p < p1; p++) acc += (ay.w[p] as number) * (tmp[(s + p - p0) * row + i] as number);
      out[o * row + i] = acc;
    }
  }
  return out;
}

/** Mirrors [H, W, C] left-right into a new array. */
export function flipHorizontal(x: Float32Array, shape: readonly [number, number, number]): Float32Array {
  const [H, W, C] = shape;
  const out = new Float32Array(x.length);
  for (let y = 0; y < H; y++) {
    const row = y * W;
    for (let i = 0; i < W; i++) {
      const src = (row + i) * C;
      const dst = (row + W - 1 - i) * C;
      for (let c = 0; c < C; c++) out[dst + c] = x[src + c] as number;
    }
  }
  return out;
}

/** The common case (MNIST 28 → 32) in one pass and one allocation: it dominates data loading time. */
function convertAndPad(
  data: Uint8Array | Float32Array,
  H: number,
  W: number,
  C: number,
  S: number,
): Float32Array {
  const out = new Float32Array(S * S * C);
  if (H !== S || W !== S) out.fill(-1);
  const top = (S - H) >> 1;
  const left = (S - W) >> 1;
  const row = W * C;
  const u8 = data instanceof Uint8Array;
  for (let y = 0; y < H; y++) {
    const src = y * row;
    const dst = ((top + y) * S + left) * C;
    if (u8) for (let i = 0; i < row; i++) out[dst + i] = U8_TO_MODEL[data[src + i] as number] as number;
    else out.set(data.subarray(src, src + row), dst);
  }
  return out;
}

/** Stored image [H, W, C] → model space [imageSize, imageSize, channels] (see the module doc). */
export function preprocessImage(
  data: Uint8Array | Float32Array,
  shape: readonly number[],
  opts: ImageOptions,
): Float32Array {
  const [H = 0, W = 0, C = 0] = shape;
  const S = opts.imageSize;
  if (C === opts.channels && H <= S && W <= S) return convertAndPad(data, H, W, C, S);
  let x = toModelSpace(data);
  // Fewer channels first (less to resize), replication last.
  const early = Math.min(opts.channels, C >= 3 ? 3 : 1);
  x = convertChannels(x, shape, early);
  if (H > S || W > S) {
    const k = S / Math.max(H, W);
    const h = Math.max(1, Math.min(S, Math.round(H * k)));
    const w = Math.max(1, Math.min(S, Math.round(W * k)));
    x = resizeArea(x, [H, W, early], h, w);
    x = padCentred(x, [h, w, early], S);
  } else {
    x = padCentred(x, [H, W, early], S);
  }
  return convertChannels(x, [S, S, early], opts.channels);
}

/**
 * The trainer's view of a source: images as [imageSize, imageSize, channels] in [-1, 1],
 * vectors ([D]) converted to float32 only.
 */
export function imageDataset(source: Source, opts: ImageOptions): ClosableDataset {
  const { name, size } = source;
  const vector = source.shape.length === 1;
  if (!vector) {
    if (source.shape.length !== 3)
      throw new Error(`${name}: example shape [${source.shape.join(', ')}] is not [H, W, C] or [D]`);
    if (opts.channels !== 1 && opts.channels !== 3)
      throw new Error(`data.channels: images have 1 (grey) or 3 (RGB) channels, got ${opts.channels}`);
    const C = source.shape[2] as number;
    if (C < 1 || C > 4)
      throw new Error(`${name}: ${C} channels per pixel; images need 1, 2, 3 or 4 (grey/RGB, ± alpha)`);
  }
  const shape = vector ? [...source.shape] : [opts.imageSize, opts.imageSize, opts.channels];
  return {
    spec: name,
    size,
    shape,
    numClasses: source.numClasses,
    get(index: number): Example {
      if (!Number.isInteger(index) || index < 0 || index >= size)
        throw new Error(`${name}: index ${index} out of range [0, ${size})`);
      const raw = source.read(index);
      if (vector) return { x: toModelSpace(raw.data), label: raw.label };
      if (raw.shape.length !== 3)
        throw new Error(`${name}: example ${index} has shape [${raw.shape.join(', ')}], not [H, W, C]`);
      return { x: preprocessImage(raw.data, raw.shape, opts), label: raw.label };
    },
    close: () => source.close(),
  };
}
