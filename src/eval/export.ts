/**
 * Samples and statistics in the formats standard evaluators read, so that the standard FID can be
 * computed elsewhere: a uint8 NHWC `.npz` with `arr_0` (guided-diffusion's evaluator), a folder of
 * PNGs (clean-fid, pytorch-fid), and μ/Σ as pytorch-fid's `.npz` (`mu`, `sigma`, float64) — the
 * latter only from the standard Inception network, because statistics of any other network in
 * that layout would be silently compared with Inception statistics.
 */
import { mkdir } from 'node:fs/promises';
import { dirname, resolve } from 'node:path';
import { zipSync } from 'fflate';
import { PNG } from 'pngjs';
import { encodeNpy } from '../data/npy.js';
import type { Source } from '../data/preprocess.js';
import { writeDirAtomic, writeFileAtomic } from '../util/atomic.js';
import type { FeatureNet } from './net.js';
import type { Gaussian } from './stats.js';

/** A model-space value in [−1, 1] as the byte a PNG holds (round((v + 1)·127.5), clipped), as `ringdiff sample` pictures. */
export function toByte(v: number): number {
  return Math.min(255, Math.max(0, Math.round((v + 1) * 127.5)));
}

/** Every image of `src` as uint8 [N, H, W, C] (all must share one shape). */
export function samplesToUint8(src: Source): { data: Uint8Array; shape: [number, number, number, number] } {
  const [H = 0, W = 0, C = 0] = src.shape;
  const per = H * W * C;
  const data = new Uint8Array(src.size * per);
  for (let i = 0; i < src.size; i++) {
    const ex = src.read(i);
    if (ex.shape.join(',') !== src.shape.join(','))
      throw new Error(
        `${src.name}: image ${i} is [${ex.shape.join(', ')}], not [${src.shape.join(', ')}] like the first; .npz needs one shape`,
      );
    if (ex.data instanceof Uint8Array) data.set(ex.data, i * per);
    else for (let k = 0; k < per; k++) data[i * per + k] = toByte(ex.data[k] as number);
  }
  return { data, shape: [src.size, H, W, C] };
}

/** Writes `data` to `file` atomically, creating its directory first. */
async function writeOut(file: string, data: Uint8Array): Promise<void> {
  await mkdir(dirname(resolve(file)), { recursive: true });
  await writeFileAtomic(file, data);
}

/** A .npz (stored zip, as np.savez) holding the given .npy members. */
export function encodeNpz(arrays: Record<string, Uint8Array>): Uint8Array {
  const files: Record<string, [Uint8Array, { level: 0 }]> = {};
  for (const [k, v] of Object.entries(arrays)) files[`${k}.npy`] = [v, { level: 0 }];
  // fflate writes no ZIP64 records: a member must stay below 4 GiB.
  for (const [k, v] of Object.entries(arrays))
    if (v.length >= 2 ** 32 - 1)
      throw new Error(`.npz member '${k}' is ${v.length} bytes; 4 GiB is the limit without ZIP64`);
  return zipSync(files);
}

/** float64 .npy bytes (<f8, C order), for pytorch-fid's mu/sigma. */
export function encodeNpyFloat64(data: Float64Array, shape: readonly number[]): Uint8Array {
  return encodeNpy(data, shape);
}

/** Writes samples as guided-diffusion's evaluator reads them: `arr_0`, uint8 [N, H, W, C]. */
export async function exportNpz(file: string, src: Source): Promise<void> {
  const { data, shape } = samplesToUint8(src);
  await writeOut(file, encodeNpz({ arr_0: encodeNpy(data, shape) }));
}

/** PNG bytes of one uint8 image [H, W, C] (C = 1 grey, 3 RGB; 2/4 lose their alpha). */
export function encodePng(img: Uint8Array, H: number, W: number, C: number): Buffer {
  const png = new PNG({ width: W, height: H });
  const grey = C < 3;
  for (let p = 0; p < H * W; p++) {
    for (let c = 0; c < 3; c++) png.data[p * 4 + c] = img[p * C + (grey ? 0 : c)] as number;
    png.data[p * 4 + 3] = 255;
  }
  return PNG.sync.write(png, { colorType: grey ? 0 : 2 });
}

/** Writes every sample as `<index>.png` (zero-padded) into `dir`, replacing it atomically. */
export async function exportPngDir(dir: string, src: Source): Promise<void> {
  const { data, shape } = samplesToUint8(src);
  const [N, H, W, C] = shape;
  const digits = Math.max(6, String(N - 1).length);
  const files = new Map<string, Uint8Array>();
  for (let i = 0; i < N; i++)
    files.set(
      `${String(i).padStart(digits, '0')}.png`,
      encodePng(data.subarray(i * H * W * C, (i + 1) * H * W * C), H, W, C),
    );
  await writeDirAtomic(dir, files);
}

/** pytorch-fid's statistics file: `mu` [D] and `sigma` [D, D], float64; refused for any net but the standard Inception. */
export async function exportFidStats(file: string, g: Gaussian, net: FeatureNet): Promise<void> {
  if (!net.standard)
    throw new Error(
      `--export-stats ${file}: statistics of ${net.name} (${net.dim} features) are not comparable with pytorch-fid's; only the standard 2048-feature Inception (--inception) is exported`,
    );
  await writeOut(
    file,
    encodeNpz({ mu: encodeNpyFloat64(g.mu, [g.dim]), sigma: encodeNpyFloat64(g.sigma, [g.dim, g.dim]) }),
  );
}
