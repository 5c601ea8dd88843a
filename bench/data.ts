/**
 * `node dist/bench/data.js [--batch B --seconds S --image-size N --channels C --json]`: examples/s of
 * reading, preprocessing and randomly flipping batches of examples in random-access order, as the
 * trainer does, for `mnist` and `fashion-mnist` (skipped when the Debian package is absent).
 */
import { Command } from 'commander';
import { performance } from 'node:perf_hooks';
import { intOption, numberOption } from '../src/cli/common.js';
import { imageDataset, flipHorizontal } from '../src/data/preprocess.js';
import { openSource } from '../src/data/spec.js';
import { Purpose, stream } from '../src/model/rng.js';

const o = new Command('bench:data')
  .option('--batch <b>', 'examples per batch', intOption('--batch', 1), 128)
  .option('--seconds <s>', 'timed seconds per dataset', numberOption('--seconds'), 1.5)
  .option('--image-size <n>', 'data.image_size', intOption('--image-size', 1), 32)
  .option('--channels <c>', 'data.channels', intOption('--channels', 1), 1)
  .option('--json', 'print one JSON object')
  .parse(process.argv)
  .opts<{ batch: number; seconds: number; imageSize: number; channels: number; json?: boolean }>();

interface Result {
  examples?: number;
  source?: string;
  shape?: number[];
  open_ms?: number;
  batches?: number;
  examples_per_s?: number;
  skipped?: string;
}

function bench(spec: string): Result {
  const t0 = performance.now();
  let source;
  try {
    source = openSource(spec);
  } catch (e) {
    return { skipped: (e as Error).message };
  }
  const ds = imageDataset(source, { imageSize: o.imageSize, channels: o.channels });
  const openMs = performance.now() - t0;
  const per = ds.shape.reduce((a, b) => a * b, 1);
  const shape = ds.shape as [number, number, number];
  const batch = new Float32Array(o.batch * per);
  const run = (step: number, seed = 1) => {
    const order = stream(seed, step, 0, Purpose.permutation);
    for (let j = 0; j < o.batch; j++) {
      const { x } = ds.get(order.int(ds.size));
      const flip = stream(seed, step, j, Purpose.flip).uniform() < 0.5;
      batch.set(flip ? flipHorizontal(x, shape) : x, j * per);
    }
  };
  // Warm-up batches (JIT) from another seed, so the timed ones are not already cached.
  for (let s = 0; s < 3; s++) run(s, 2);
  let batches = 0;
  const start = performance.now();
  while (performance.now() - start < o.seconds * 1000) run(batches++);
  const secs = (performance.now() - start) / 1000;
  ds.close();
  return {
    examples: ds.size,
    source: `[${source.shape.join(', ')}] ${source.dtype}`,
    shape: [...ds.shape],
    open_ms: Math.round(openMs),
    batches,
    examples_per_s: Math.round((batches * o.batch) / secs),
  };
}

const results: Record<string, Result> = {};
for (const spec of ['mnist', 'fashion-mnist']) {
  const r = bench(spec);
  results[spec] = r;
  if (o.json) continue;
  if (r.skipped) {
    console.log(`${spec.padEnd(14)} skipped: ${r.skipped}`);
    continue;
  }
  console.log(
    `${spec.padEnd(14)} ${String(r.examples).padStart(6)} × ${r.source} → [${r.shape?.join(', ')}]  open ${r.open_ms} ms  ` +
      `${r.examples_per_s?.toLocaleString('en-US')} examples/s (B=${o.batch}, random order, read+preprocess+flip)`,
  );
}
if (o.json) console.log(JSON.stringify({ batch: o.batch, seconds: o.seconds, datasets: results }));
