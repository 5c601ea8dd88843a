/**
 * Reading a set of images to evaluate: a float32 .npy of `ringdiff sample` ([N, H, W, C] in
 * [−1, 1]), a uint8 NHWC `.npz` with `arr_0` as guided-diffusion's evaluator reads, or a folder of
 * PNGs (class sub-folders allowed) as clean-fid reads.
 */
import { readFileSync, statSync } from 'node:fs';
import { unzipSync } from 'fflate';
import { memoryBytes } from '../data/idx.js';
import { openFolder } from '../data/folder.js';
import { openNpy, readNpyHeader } from '../data/npy.js';
import type { RawExample, Source } from '../data/preprocess.js';

function imageShape(file: string, dims: readonly number[]): number[] {
  if (dims.length === 3) return [dims[1] as number, dims[2] as number, 1];
  if (dims.length === 4 && (dims[3] as number) >= 1 && (dims[3] as number) <= 4) return dims.slice(1);
  throw new Error(`${file}: shape [${dims.join(', ')}] is not images [N, H, W] or [N, H, W, C] (C = 1…4)`);
}

/** The images of an .npz file's `arr_0` (or its only array): uint8 0…255 or float32 in [−1, 1]. */
export function openNpz(file: string): Source {
  let entries: Record<string, Uint8Array>;
  try {
    entries = unzipSync(readFileSync(file));
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    throw new Error(
      `${file}: ${code === 'ENOENT' ? 'no such file' : `not a readable .npz (zip) file (${(e as Error).message})`}`,
    );
  }
  const names = Object.keys(entries).filter((n) => n.endsWith('.npy'));
  const name = names.includes('arr_0.npy') ? 'arr_0.npy' : names.length === 1 ? names[0] : undefined;
  if (name === undefined)
    throw new Error(
      `${file}: has no array 'arr_0'${names.length > 0 ? ` (arrays: ${names.map((n) => n.slice(0, -4)).join(', ')})` : ''}`,
    );
  const buf = entries[name] as Uint8Array;
  const label = `${file}:${name.slice(0, -4)}`;
  const h = readNpyHeader(memoryBytes(label, buf));
  const u8 = h.descr === '|u1' || h.descr === '<u1';
  if (!u8 && h.descr !== '<f4')
    throw new Error(
      `${label}: dtype '${h.descr}' (header field 'descr') is not uint8 (|u1) or float32 (<f4)`,
    );
  const n = h.shape[0] as number;
  if (n === 0) throw new Error(`${label}: holds no images`);
  const shape = imageShape(label, h.shape);
  const values = shape.reduce((a, b) => a * b, 1);
  const bytes = buf.slice(h.dataOffset);
  const all = u8 ? bytes : new Float32Array(bytes.buffer, bytes.byteOffset, n * values);
  return {
    name: file,
    size: n,
    shape,
    shapeVaries: false,
    dtype: u8 ? 'uint8' : 'float32',
    numClasses: 0,
    read: (i: number): RawExample => ({ data: all.subarray(i * values, (i + 1) * values), shape, label: -1 }),
    label: () => -1,
    close: () => undefined,
  };
}

/** Opens samples from `p`: a directory of PNGs, a .npy or an .npz file (see the module doc). */
export function openSamples(p: string): Source {
  let dir: boolean;
  try {
    dir = statSync(p).isDirectory();
  } catch {
    throw new Error(`--samples ${p}: no such file or directory`);
  }
  if (dir) return openFolder(p, p);
  const lower = p.toLowerCase();
  if (lower.endsWith('.npz')) return openNpz(p);
  if (lower.endsWith('.npy')) {
    const src = openNpy(p, undefined, p);
    try {
      imageShape(p, [src.size, ...src.shape]);
    } catch (e) {
      src.close();
      throw e;
    }
    return src;
  }
  throw new Error(`--samples ${p}: not a directory, .npy or .npz file`);
}
