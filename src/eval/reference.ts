/**
 * Features of an image set through a feature network, and the cache of a reference set's
 * features and statistics. A cache entry is keyed by everything its numbers depend on — dataset
 * spec and a fingerprint of its files, which examples, the network identity (weights hash,
 * architecture, preprocessing) — so a change of any of them misses rather than reusing stale
 * numbers. Entries are safetensors files written atomically.
 */
import { createHash } from 'node:crypto';
import { readFileSync, statSync } from 'node:fs';
import { homedir } from 'node:os';
import * as path from 'node:path';
import { parseSpec } from '../data/spec.js';
import type { Source } from '../data/preprocess.js';
import { decodeSafetensors, encodeSafetensors, type TensorLike } from '../model/safetensors.js';
import { writeFileAtomic } from '../util/atomic.js';
import type { FeatureNet } from './net.js';
import { accumulate, emptyStats, type FeatureStats } from './stats.js';

/** Features [n, D], logits [n, K] (or null) and their sufficient statistics. */
export interface FeatureSet {
  features: Float32Array;
  logits: Float32Array | null;
  stats: FeatureStats;
}

/** `count` indices of [0, size) spread evenly (datasets are often sorted by class). */
export function spreadIndices(size: number, count: number): Int32Array {
  if (count > size) throw new Error(`cannot take ${count} of ${size} examples`);
  return Int32Array.from({ length: count }, (_, i) => Math.floor((i * size) / count));
}

/** Features of examples `indices` of `src`, `batch` images per network call. */
export function extractFeatures(
  net: FeatureNet,
  src: Source,
  indices: Int32Array,
  batch = 64,
  onBatch?: (done: number) => void,
): FeatureSet {
  const n = indices.length;
  const features = new Float32Array(n * net.dim);
  const logits = net.classes > 0 ? new Float32Array(n * net.classes) : null;
  const stats = emptyStats(net.dim);
  for (let b0 = 0; b0 < n; b0 += batch) {
    const idx = indices.subarray(b0, Math.min(n, b0 + batch));
    const r = net.extract(Array.from(idx, (i) => src.read(i)));
    features.set(r.features, b0 * net.dim);
    if (logits && r.logits) logits.set(r.logits, b0 * net.classes);
    accumulate(stats, r.features);
    onBatch?.(b0 + idx.length);
  }
  return { features, logits, stats };
}

/** The cache directory: `explicit`, else $RINGDIFF_CACHE_DIR, else $XDG_CACHE_HOME/ringdiff, else ~/.cache/ringdiff. */
export function cacheDir(explicit?: string): string {
  if (explicit) return explicit;
  const env = process.env.RINGDIFF_CACHE_DIR;
  if (env) return env;
  const xdg = process.env.XDG_CACHE_HOME;
  return path.join(xdg ? xdg : path.join(homedir(), '.cache'), 'ringdiff');
}

/** Size and mtime of the files a spec names (empty for built-in datasets, whose package pins them). */
function fingerprint(spec: string): string {
  const { kind, arg } = parseSpec(spec);
  if (arg === '' || kind === 'toy' || kind === 'fashion-mnist' || kind === 'mnist') return '';
  const paths = arg.replace(/:(train|test)$/, '').split(',');
  return paths
    .map((p) => {
      try {
        const s = statSync(p);
        return `${p}:${s.size}:${Math.floor(s.mtimeMs)}`;
      } catch {
        return `${p}:?`;
      }
    })
    .join(';');
}

/** What a reference entry depends on. */
export interface RefKey {
  spec: string;
  count: number;
  net: string;
}

function keyJson(k: RefKey): string {
  return JSON.stringify({ v: 1, spec: k.spec, files: fingerprint(k.spec), count: k.count, net: k.net });
}

/** Path of the cache entry of `key` under `dir`. */
export function cachePath(dir: string, key: RefKey): string {
  const h = createHash('sha256').update(keyJson(key)).digest('hex').slice(0, 32);
  return path.join(dir, 'eval', `ref-${h}.safetensors`);
}

/** A cached reference set, or null when absent or not for `key` (a damaged entry is a miss, never an error). */
export function readCachedReference(
  file: string,
  key: RefKey,
  dim: number,
  classes: number,
): FeatureSet | null {
  let buf: Buffer;
  try {
    buf = readFileSync(file);
  } catch {
    return null;
  }
  try {
    const { tensors, metadata } = decodeSafetensors(buf, file);
    if (metadata?.key !== keyJson(key)) return null;
    const f = tensors.get('features');
    const s = tensors.get('sum');
    const so = tensors.get('sum_outer');
    const l = tensors.get('logits');
    if (!f || !s || !so || f.shape.join(',') !== `${key.count},${dim}`) return null;
    if (classes > 0 && (!l || l.shape.join(',') !== `${key.count},${classes}`)) return null;
    const stats: FeatureStats = {
      dim,
      count: key.count,
      sum: Float64Array.from(s.data),
      sumOuter: Float64Array.from(so.data),
    };
    return {
      features: Float32Array.from(f.data),
      logits: classes > 0 && l ? Float32Array.from(l.data) : null,
      stats,
    };
  } catch {
    return null;
  }
}

/** Writes a reference set's cache entry atomically. */
export async function writeCachedReference(file: string, key: RefKey, set: FeatureSet): Promise<void> {
  const { mkdir } = await import('node:fs/promises');
  await mkdir(path.dirname(file), { recursive: true });
  const D = set.stats.dim;
  const tensors = new Map<string, TensorLike>([
    ['features', { shape: [key.count, D], data: set.features }],
    ['sum', { shape: [D], data: set.stats.sum }],
    ['sum_outer', { shape: [D, D], data: set.stats.sumOuter }],
  ]);
  if (set.logits)
    tensors.set('logits', { shape: [key.count, set.logits.length / key.count], data: set.logits });
  await writeFileAtomic(file, encodeSafetensors(tensors, { key: keyJson(key) }));
}

/** Features of `count` examples of `src` (opened from `spec`), spread evenly, through `net`; cached per exact inputs. */
export async function cachedReference(
  net: FeatureNet,
  src: Source,
  spec: string,
  count: number,
  o: { cacheDir?: string; cache: boolean; batch: number },
): Promise<{ set: FeatureSet; cached: boolean }> {
  const key = { spec, count, net: net.id };
  const file = cachePath(cacheDir(o.cacheDir), key);
  if (o.cache) {
    const hit = readCachedReference(file, key, net.dim, net.classes);
    if (hit) return { set: hit, cached: true };
  }
  const set = extractFeatures(net, src, spreadIndices(src.size, count), o.batch);
  if (o.cache) await writeCachedReference(file, key, set);
  return { set, cached: false };
}
