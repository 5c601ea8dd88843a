/** Pictures for people: image grids and 2-D scatter plots as PNG (pngjs). */
import { PNG } from 'pngjs';
import { writeFileAtomic } from '../util/atomic.js';

/**
 * Encodes N images [N, H, W, C] (C = 1 or 3, values in [-1, 1]) as a PNG grid, `cols` per row,
 * with a 2-pixel border.
 */
export function encodeGrid(data: Float32Array, shape: readonly number[], cols?: number): Buffer {
  const [N = 0, H = 0, W = 0, C = 0] = shape;
  if (shape.length !== 4 || (C !== 1 && C !== 3))
    throw new Error(`image grid needs [N, H, W, 1|3], got [${shape.join(', ')}]`);
  const nc = cols ?? Math.max(1, Math.ceil(Math.sqrt(N)));
  const nr = Math.max(1, Math.ceil(N / nc));
  const pad = 2;
  const png = new PNG({ width: nc * (W + pad) + pad, height: nr * (H + pad) + pad });
  png.data.fill(255);
  for (let n = 0; n < N; n++) {
    const ox = pad + (n % nc) * (W + pad);
    const oy = pad + Math.floor(n / nc) * (H + pad);
    for (let y = 0; y < H; y++) {
      for (let x = 0; x < W; x++) {
        const o = ((oy + y) * png.width + ox + x) * 4;
        for (let c = 0; c < 3; c++) {
          const v = data[((n * H + y) * W + x) * C + (C === 1 ? 0 : c)] as number;
          png.data[o + c] = Math.round(Math.min(1, Math.max(0, (v + 1) / 2)) * 255);
        }
        png.data[o + 3] = 255;
      }
    }
  }
  return PNG.sync.write(png);
}

/** A size×size PNG scatter plot of 2-D points [N, 2] over [-range, range]², with axes. */
export function encodeScatter(points: Float32Array, range = 4, size = 512): Buffer {
  const png = new PNG({ width: size, height: size });
  png.data.fill(255);
  const put = (px: number, py: number, r: number, g: number, b: number) => {
    if (px < 0 || py < 0 || px >= size || py >= size) return;
    const o = (py * size + px) * 4;
    png.data[o] = r;
    png.data[o + 1] = g;
    png.data[o + 2] = b;
    png.data[o + 3] = 255;
  };
  const toPix = (v: number) => Math.round(((v + range) / (2 * range)) * (size - 1));
  for (let i = 0; i < size; i++) {
    put(i, toPix(0), 200, 200, 200);
    put(toPix(0), i, 200, 200, 200);
  }
  for (let i = 0; i + 1 < points.length; i += 2) {
    const px = toPix(points[i] as number);
    const py = size - 1 - toPix(points[i + 1] as number);
    for (let dy = -1; dy <= 1; dy++) for (let dx = -1; dx <= 1; dx++) put(px + dx, py + dy, 20, 60, 200);
  }
  return PNG.sync.write(png);
}

/** Writes samples as a picture: a grid for images, a scatter plot for 2-D points. */
export async function writeSamplesPng(
  path: string,
  data: Float32Array,
  shape: readonly number[],
): Promise<void> {
  const buf = shape.length === 2 && shape[1] === 2 ? encodeScatter(data) : encodeGrid(data, shape);
  await writeFileAtomic(path, buf);
}
