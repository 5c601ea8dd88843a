/**
 * `ringdiff eval fid`: sample-quality metrics of generated images against a reference dataset, on
 * a feature network — the built-in `mnistcnn` (weights from `eval train-features`) or the standard
 * InceptionV3 from a local graph model — reported under the network's name (fid_mnistcnn, …).
 * Optionally exports the samples for the standard evaluators.
 */
import { openSource } from '../data/spec.js';
import type { Source } from '../data/preprocess.js';
import { initBackend } from '../model/backend/index.js';
import { exportFidStats, exportNpz, exportPngDir } from '../eval/export.js';
import { loadFeatureNet, MNISTCNN } from '../eval/features.js';
import { loadInception } from '../eval/inception.js';
import { qualityMetrics } from '../eval/metrics.js';
import type { FeatureNet } from '../eval/net.js';
import { cachedReference, extractFeatures, spreadIndices } from '../eval/reference.js';
import { openSamples } from '../eval/samples.js';
import { toGaussian } from '../eval/stats.js';
import { UsageError } from './common.js';

/** Options of `ringdiff eval fid` (commander names). */
export interface EvalFidOptions {
  samples: string;
  ref: string;
  net?: string;
  inception?: string;
  count?: number;
  refCount?: number;
  kidSubsets: number;
  kidSubsetSize: number;
  isSplits: number;
  k: number;
  seed: number;
  batch: number;
  json?: boolean;
  exportNpz?: string;
  exportPng?: string;
  exportStats?: string;
  cacheDir?: string;
  cache: boolean;
  backend?: string;
}

/** The metrics of one evaluation, keyed `<metric>_<net>`, and what they were computed from. */
export interface EvalFidResult {
  net: string;
  net_id: string;
  samples: string;
  ref: string;
  count: number;
  ref_count: number;
  ref_cached: boolean;
  metrics: Record<string, number>;
}

/** `--net mnistcnn=<file>` → the weights file. */
function parseNet(spec: string): string {
  const eq = spec.indexOf('=');
  const name = eq < 0 ? spec : spec.slice(0, eq);
  if (name !== MNISTCNN || eq < 0 || spec.slice(eq + 1) === '')
    throw new UsageError(
      `--net ${spec}: expected ${MNISTCNN}=<weights.safetensors> (written by ringdiff eval train-features)`,
    );
  return spec.slice(eq + 1);
}

function usage(e: unknown, what: string): UsageError {
  return new UsageError(`${what}: ${(e as Error).message}`);
}

/** Computes every metric of `samples` against `ref`; prints a table or (--json) one JSON object. */
export async function evalFid(o: EvalFidOptions): Promise<EvalFidResult> {
  if ((o.net === undefined) === (o.inception === undefined))
    throw new UsageError(
      'eval fid: give one feature network: --net mnistcnn=<weights> or --inception <graph model dir>',
    );
  const weights = o.net !== undefined ? parseNet(o.net) : undefined;
  if (o.exportStats !== undefined && o.inception === undefined)
    throw new UsageError(
      `--export-stats ${o.exportStats}: only statistics of the standard Inception (--inception) are exported in pytorch-fid's layout`,
    );
  let samples: Source;
  try {
    samples = openSamples(o.samples);
  } catch (e) {
    throw new UsageError(
      (e as Error).message.startsWith('--samples')
        ? (e as Error).message
        : `--samples: ${(e as Error).message}`,
    );
  }
  let ref: Source | undefined;
  let net: FeatureNet | undefined;
  try {
    try {
      ref = openSource(o.ref);
    } catch (e) {
      throw usage(e, `--ref ${o.ref}`);
    }
    if (ref.shape.length !== 3)
      throw new UsageError(`--ref ${o.ref}: examples are [${ref.shape.join(', ')}], not images`);
    const count = o.count ?? samples.size;
    if (count > samples.size)
      throw new UsageError(`--count ${count}: ${o.samples} holds only ${samples.size} images`);
    const refCount = o.refCount ?? ref.size;
    if (refCount > ref.size)
      throw new UsageError(`--ref-count ${refCount}: ${o.ref} holds only ${ref.size} examples`);
    const minimum = Math.max(o.k + 1, 4, o.isSplits);
    if (count < minimum || refCount < minimum)
      throw new UsageError(
        `eval fid: needs at least ${minimum} samples and reference images, got ${count} and ${refCount}`,
      );
    await initBackend(o.backend, { quiet: true });
    try {
      net = weights !== undefined ? loadFeatureNet(weights) : await loadInception(o.inception as string);
    } catch (e) {
      throw usage(e, weights !== undefined ? '--net' : '--inception');
    }
    if (o.exportStats !== undefined && !net.standard)
      throw new UsageError(`--export-stats: ${net.describe} is not the standard 2048-feature Inception`);
    if (o.exportNpz !== undefined) await exportNpz(o.exportNpz, samples);
    if (o.exportPng !== undefined) await exportPngDir(o.exportPng, samples);
    const gen = extractFeatures(net, samples, spreadIndices(samples.size, count), o.batch);
    const { set: real, cached } = await cachedReference(net, ref, o.ref, refCount, o);
    if (o.exportStats !== undefined) await exportFidStats(o.exportStats, toGaussian(gen.stats), net);
    const n = net.name;
    const metrics = qualityMetrics(n, net.classes, gen, real, o);
    const result: EvalFidResult = {
      net: n,
      net_id: net.id,
      samples: o.samples,
      ref: o.ref,
      count,
      ref_count: refCount,
      ref_cached: cached,
      metrics,
    };
    if (o.json) process.stdout.write(`${JSON.stringify(result)}\n`);
    else process.stdout.write(formatTable(result, net.describe));
    return result;
  } finally {
    net?.dispose();
    ref?.close();
    samples.close();
  }
}

/** The table for people: one row per metric. */
function formatTable(r: EvalFidResult, describe: string): string {
  const m = r.metrics;
  const n = r.net;
  const rows: [string, string][] = [[`fid_${n}`, (m[`fid_${n}`] as number).toFixed(4)]];
  rows.push([
    `kid_${n}`,
    `${(m[`kid_${n}`] as number).toExponential(3)} ± ${(m[`kid_${n}_se`] as number).toExponential(2)}`,
  ]);
  if (m[`is_${n}`] !== undefined)
    rows.push([
      `is_${n}`,
      `${(m[`is_${n}`] as number).toFixed(3)} ± ${(m[`is_${n}_std`] as number).toFixed(3)}`,
    ]);
  rows.push([`precision_${n}`, (m[`precision_${n}`] as number).toFixed(4)]);
  rows.push([`recall_${n}`, (m[`recall_${n}`] as number).toFixed(4)]);
  const w = Math.max(...rows.map(([k]) => k.length));
  return [
    `${r.count} samples (${r.samples}) vs ${r.ref_count} reference images (${r.ref}${r.ref_cached ? ', cached features' : ''})`,
    `network: ${describe}`,
    ...rows.map(([k, v]) => `  ${k.padEnd(w)}  ${v}`),
    '',
  ].join('\n');
}
