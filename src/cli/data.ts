/** `ringdiff data inspect <spec>`: what a dataset holds and what the model will see of it. */
import { DataSchema } from '../config/schema.js';
import type { Dataset } from '../data/dataset.js';
import { writeSamplesPng } from '../data/image.js';
import { imageDataset, type Source } from '../data/preprocess.js';
import { openDataset, openSource, parseSpec } from '../data/spec.js';

/** Examples whose preprocessed values are scanned for min/max/mean. */
const VALUE_SAMPLE = 2000;
const GRID = 64;

/** The report of `inspectData`, as printed with --json. */
export interface DataReport {
  spec: string;
  count: number;
  source: { shape: number[]; shape_varies: boolean; dtype: string };
  shape: number[];
  num_classes: number;
  /** Examples per label 0…num_classes−1; unlabelled examples are counted in `unlabelled`. */
  label_histogram: number[];
  unlabelled: number;
  values: { sampled: number; of: number; min: number; max: number; mean: number };
  grid: string | null;
}

const fmt = (v: number) => (Number.isInteger(v) ? String(v) : v.toFixed(4));

/** Prints count, shapes, source dtype, label histogram and value range of `spec`; `grid` writes the first 64 examples as a PNG. */
export async function inspectData(
  spec: string,
  opts: { grid?: string; imageSize?: number; channels?: number; json?: boolean } = {},
): Promise<void> {
  const data = DataSchema.parse({
    dataset: spec,
    ...(opts.imageSize !== undefined ? { image_size: opts.imageSize } : {}),
    ...(opts.channels !== undefined ? { channels: opts.channels } : {}),
  });
  let source: Source | null = null;
  let dataset: Dataset;
  if (parseSpec(spec).kind === 'toy') {
    dataset = openDataset(data);
  } else {
    source = openSource(spec);
    dataset = imageDataset(source, { imageSize: data.image_size, channels: data.channels });
  }
  try {
    const n = dataset.size;
    const hist = new Array<number>(dataset.numClasses).fill(0);
    let unlabelled = 0;
    const labelOf = source ? (i: number) => (source as Source).label(i) : (i: number) => dataset.get(i).label;
    for (let i = 0; i < n; i++) {
      const l = labelOf(i);
      if (l >= 0 && l < hist.length) hist[l] = (hist[l] as number) + 1;
      else unlabelled++;
    }
    const sampled = Math.min(n, VALUE_SAMPLE);
    let min = Infinity;
    let max = -Infinity;
    let sum = 0;
    let count = 0;
    for (let k = 0; k < sampled; k++) {
      // Evenly spaced, so datasets stored by class (mnist) are sampled across all classes.
      const { x } = dataset.get(Math.floor((k * n) / sampled));
      for (const v of x) {
        if (v < min) min = v;
        if (v > max) max = v;
        sum += v;
      }
      count += x.length;
    }
    let grid: string | null = null;
    if (opts.grid) {
      const g = Math.min(n, GRID);
      const per = dataset.shape.reduce((a, b) => a * b, 1);
      const buf = new Float32Array(g * per);
      for (let i = 0; i < g; i++) buf.set(dataset.get(i).x, i * per);
      await writeSamplesPng(opts.grid, buf, [g, ...dataset.shape]);
      grid = opts.grid;
    }
    const report: DataReport = {
      spec,
      count: n,
      source: source
        ? { shape: [...source.shape], shape_varies: source.shapeVaries, dtype: source.dtype }
        : { shape: [...dataset.shape], shape_varies: false, dtype: 'float32 (synthetic)' },
      shape: [...dataset.shape],
      num_classes: dataset.numClasses,
      label_histogram: hist,
      unlabelled,
      values: { sampled, of: n, min, max, mean: count > 0 ? sum / count : 0 },
      grid,
    };
    if (opts.json) {
      process.stdout.write(`${JSON.stringify(report)}\n`);
      return;
    }
    const src = report.source;
    const lines = [
      `dataset   ${spec}`,
      `count     ${n}`,
      `source    [${src.shape.join(', ')}] ${src.dtype}${src.shape_varies ? ' (first example; shapes may vary)' : ''}`,
      `model     [${report.shape.join(', ')}] float32`,
      report.num_classes > 0
        ? `labels    ${report.num_classes} classes: ${hist.map((c, i) => `${i}:${c}`).join(' ')}${unlabelled ? ` unlabelled:${unlabelled}` : ''}`
        : 'labels    none',
      `values    min ${fmt(min)} max ${fmt(max)} mean ${fmt(report.values.mean)} (preprocessed, over ${sampled === n ? 'all' : `${sampled} evenly spaced of`} ${n} examples)`,
    ];
    // Float sources are passed through unscaled, so a wrong range shows up only here.
    if (dataset.shape.length === 3 && (min < -1 - 1e-6 || max > 1 + 1e-6))
      lines.push('warning   values outside [-1, 1]: float data is used as stored and should be in [-1, 1]');
    if (grid) lines.push(`grid      ${grid} (first ${Math.min(n, GRID)} examples)`);
    process.stdout.write(`${lines.join('\n')}\n`);
  } finally {
    source?.close();
  }
}
