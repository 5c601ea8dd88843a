/**
 * `folder:<dir>`: PNG images, one sub-folder per class (class index = position of the sub-folder
 * name in sorted order, as torchvision's ImageFolder), or PNGs directly in `dir` for unlabelled data.
 * Only the file list is read up front; each image is decoded (pngjs) when asked for.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { PNG } from 'pngjs';
import type { RawExample, Source } from './preprocess.js';

const isPng = (f: string) => !f.startsWith('.') && f.toLowerCase().endsWith('.png');
// Code-point order, independent of locale, so every worker numbers classes the same way.
const byName = (a: string, b: string) => (a < b ? -1 : a > b ? 1 : 0);

function listDir(dir: string): string[] {
  try {
    return fs.readdirSync(dir);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    throw new Error(
      `${dir}: ${code === 'ENOENT' ? 'no such directory' : code === 'ENOTDIR' ? 'not a directory' : (e as Error).message}`,
    );
  }
}

/** Decodes a PNG file to HWC uint8: C = 1 for grey (± alpha), 3 for RGB/palette; alpha is dropped. */
export function decodePng(file: string): { data: Uint8Array; shape: [number, number, number] } {
  let png: ReturnType<typeof PNG.sync.read>;
  try {
    png = PNG.sync.read(fs.readFileSync(file));
  } catch (e) {
    throw new Error(`${file}: not a readable PNG (${(e as Error).message.split('\n')[0]})`);
  }
  const { width: W, height: H } = png;
  // pngjs always yields 8-bit RGBA (palette expanded, 16-bit rescaled); `color` is false for grey.
  const C = png.color ? 3 : 1;
  const data = new Uint8Array(H * W * C);
  const rgba = png.data;
  for (let p = 0; p < H * W; p++) for (let c = 0; c < C; c++) data[p * C + c] = rgba[p * 4 + c] as number;
  return { data, shape: [H, W, C] };
}

/** Opens a PNG folder (see the module doc); throws naming the folder if it holds no images. */
export function openFolder(dir: string, name = `folder:${dir}`): Source {
  const entries = listDir(dir)
    .filter((e) => !e.startsWith('.'))
    .sort(byName);
  const classes = entries.filter((e) => fs.statSync(path.join(dir, e)).isDirectory());
  const files: string[] = [];
  const labels: number[] = [];
  if (classes.length > 0) {
    const stray = entries.filter(isPng).filter((e) => !classes.includes(e));
    if (stray.length > 0)
      throw new Error(
        `${dir}: has both class sub-folders and loose PNG files (${stray[0]}); use one or the other`,
      );
    classes.forEach((cls, k) => {
      const sub = path.join(dir, cls);
      const pngs = listDir(sub).filter(isPng).sort(byName);
      if (pngs.length === 0)
        throw new Error(`${sub}: class folder '${cls}' (class ${k}) holds no .png files`);
      for (const f of pngs) {
        files.push(path.join(sub, f));
        labels.push(k);
      }
    });
  } else {
    for (const f of entries.filter(isPng)) {
      files.push(path.join(dir, f));
      labels.push(-1);
    }
    if (files.length === 0) throw new Error(`${dir}: no class sub-folders and no .png files`);
  }
  const first = decodePng(files[0] as string);
  return {
    name,
    size: files.length,
    shape: first.shape,
    shapeVaries: true,
    dtype: 'uint8 (png)',
    numClasses: classes.length,
    read(index: number): RawExample {
      const { data, shape } = decodePng(files[index] as string);
      return { data, shape, label: labels[index] as number };
    },
    label: (index: number) => labels[index] as number,
    close(): void {},
  };
}
