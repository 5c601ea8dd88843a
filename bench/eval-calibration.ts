/**
 * `node dist/bench/eval-calibration.js --net <mnistcnn.safetensors> [--out-dir DIR] [--count N]`:
 * calibrates a feature network's metrics on degraded real images. Against the reference
 * `mnist:train` it scores held-out digits (mnist:test), digits with added Gaussian noise, blurred
 * digits, and pure noise; each set is also written as a float32 .npy under --out-dir, so that any
 * row can be reproduced with `ringdiff eval fid --samples DIR/<set>.npy --ref mnist:train --net
 * mnistcnn=<file>`. A usable network orders them: held-out best, each degradation worse as it grows.
 */
import { Command } from 'commander';
import { mkdirSync } from 'node:fs';
import * as path from 'node:path';
import { intOption } from '../src/cli/common.js';
import { writeNpyFloat32 } from '../src/data/npy.js';
import { imageDataset } from '../src/data/preprocess.js';
import type { Source } from '../src/data/preprocess.js';
import { openSource } from '../src/data/spec.js';
import { initBackend } from '../src/model/backend/index.js';
import { Purpose, stream } from '../src/model/rng.js';
import { loadFeatureNet } from '../src/eval/features.js';
import { DEFAULT_METRIC_OPTIONS, qualityMetrics } from '../src/eval/metrics.js';
import { cachedReference, extractFeatures, spreadIndices } from '../src/eval/reference.js';

const o = new Command('eval-calibration')
  .requiredOption('--net <file>', 'mnistcnn weights (ringdiff eval train-features)')
  .option('--out-dir <dir>', 'where the degraded sets are written', 'eval-calibration')
  .option('--count <n>', 'images per set', intOption('--count', 10), 1000)
  .option('--ref <spec>', 'reference dataset', 'mnist:train')
  .option('--held-out <spec>', 'held-out real images', 'mnist:test')
  .option('--json', 'print one JSON object')
  .parse(process.argv)
  .opts<{ net: string; outDir: string; count: number; ref: string; heldOut: string; json?: boolean }>();

const S = 32;

/** Gaussian blur of one [S, S] image with standard deviation `sigma` pixels (separable, edges clamped). */
function blur(x: Float32Array, sigma: number): Float32Array {
  const r = Math.ceil(3 * sigma);
  const w = Array.from({ length: 2 * r + 1 }, (_, i) => Math.exp(-((i - r) ** 2) / (2 * sigma * sigma)));
  const z = w.reduce((a, b) => a + b, 0);
  const k = w.map((v) => v / z);
  const at = (v: number) => Math.min(S - 1, Math.max(0, v));
  const tmp = new Float32Array(S * S);
  const out = new Float32Array(S * S);
  for (let y = 0; y < S; y++)
    for (let c = 0; c < S; c++) {
      let a = 0;
      for (let i = -r; i <= r; i++) a += (k[i + r] as number) * (x[y * S + at(c + i)] as number);
      tmp[y * S + c] = a;
    }
  for (let y = 0; y < S; y++)
    for (let c = 0; c < S; c++) {
      let a = 0;
      for (let i = -r; i <= r; i++) a += (k[i + r] as number) * (tmp[at(y + i) * S + c] as number);
      out[y * S + c] = a;
    }
  return out;
}

/** A float32 [N, 32, 32, 1] set in model space as a Source. */
function memorySource(name: string, data: Float32Array, n: number): Source {
  const shape = [S, S, 1];
  return {
    name,
    size: n,
    shape,
    shapeVaries: false,
    dtype: 'float32',
    numClasses: 0,
    read: (i) => ({ data: data.subarray(i * S * S, (i + 1) * S * S), shape, label: -1 }),
    label: () => -1,
    close: () => undefined,
  };
}

await initBackend(undefined, { quiet: true });
const net = loadFeatureNet(o.net);
const refSrc = openSource(o.ref);
const { set: real } = await cachedReference(net, refSrc, o.ref, refSrc.size, { cache: true, batch: 128 });
const held = imageDataset(openSource(o.heldOut), { imageSize: S, channels: 1 });
const n = Math.min(o.count, held.size);
const base = new Float32Array(n * S * S);
spreadIndices(held.size, n).forEach((idx, i) => base.set(held.get(idx).x, i * S * S));
const clip = (v: number) => Math.min(1, Math.max(-1, v));
const noisy = (sd: number, seed: number) => {
  const s = stream(seed, 0, 0, Purpose.oracle);
  return base.map((v) => clip(v + sd * s.normal()));
};
const blurred = (sd: number) => {
  const out = new Float32Array(base.length);
  for (let i = 0; i < n; i++) out.set(blur(base.subarray(i * S * S, (i + 1) * S * S), sd), i * S * S);
  return out;
};
const pure = () => {
  const s = stream(99, 0, 0, Purpose.oracle);
  return base.map(() => clip(s.normal()));
};
const sets: [string, string, Float32Array][] = [
  ['heldout', `real held-out (${o.heldOut})`, base],
  ['noise-0.1', 'held-out + N(0, 0.1²) noise', noisy(0.1, 1)],
  ['noise-0.2', 'held-out + N(0, 0.2²) noise', noisy(0.2, 2)],
  ['noise-0.4', 'held-out + N(0, 0.4²) noise', noisy(0.4, 3)],
  ['blur-0.5', 'held-out, Gaussian blur σ = 0.5 px', blurred(0.5)],
  ['blur-1', 'held-out, Gaussian blur σ = 1 px', blurred(1)],
  ['blur-2', 'held-out, Gaussian blur σ = 2 px', blurred(2)],
  ['pure-noise', 'pure noise N(0, 1), clipped', pure()],
];
mkdirSync(o.outDir, { recursive: true });
const rows: { set: string; what: string; metrics: Record<string, number> }[] = [];
for (const [id, what, data] of sets) {
  await writeNpyFloat32(path.join(o.outDir, `${id}.npy`), data, [n, S, S, 1]);
  const gen = extractFeatures(net, memorySource(id, data, n), spreadIndices(n, n), 128);
  rows.push({
    set: id,
    what,
    metrics: qualityMetrics(net.name, net.classes, gen, real, DEFAULT_METRIC_OPTIONS),
  });
}
const fid = (id: string) => rows.find((r) => r.set === id)?.metrics[`fid_${net.name}`] ?? NaN;
const chain = (ids: string[]) => ids.every((id, i) => i === 0 || fid(ids[i - 1] as string) < fid(id));
const ordered =
  chain(['heldout', 'noise-0.1', 'noise-0.2', 'noise-0.4', 'pure-noise']) &&
  chain(['heldout', 'blur-0.5', 'blur-1', 'blur-2']);
if (o.json) {
  process.stdout.write(
    `${JSON.stringify({ net: net.describe, ref: o.ref, ref_count: refSrc.size, count: n, ordered, rows })}\n`,
  );
} else {
  const m = (r: (typeof rows)[number], k: string) => r.metrics[`${k}_${net.name}`] as number;
  process.stdout.write(
    `network: ${net.describe}\nreference: ${o.ref} (${refSrc.size} images); ${n} images per set\n`,
  );
  process.stdout.write(
    `| set | fid_${net.name} | kid_${net.name} ± se | is_${net.name} | precision | recall |\n|---|---|---|---|---|---|\n`,
  );
  for (const r of rows)
    process.stdout.write(
      `| ${r.what} | ${m(r, 'fid').toFixed(3)} | ${m(r, 'kid').toExponential(2)} ± ${r.metrics[`kid_${net.name}_se`]?.toExponential(1)} | ${m(r, 'is').toFixed(2)} | ${m(r, 'precision').toFixed(3)} | ${m(r, 'recall').toFixed(3)} |\n`,
    );
  process.stdout.write(
    `ordered (FID: held-out < noise 0.1 < 0.2 < 0.4 < pure noise; held-out < blur 0.5 < 1 < 2): ${ordered ? 'yes' : 'NO'}\n`,
  );
}
net.dispose();
refSrc.close();
held.close();
