/**
 * Checkpoints of a training run: `<out_dir>/ckpt-<step>/` holding `model.safetensors`,
 * `ema.safetensors`, `optimizer.safetensors` and `state.json` (the caller's state plus the size and
 * sha256 of each tensor file). A checkpoint directory appears atomically and complete, and loading
 * verifies everything it can, so that resuming never silently starts from damaged weights.
 */
import { createHash } from 'node:crypto';
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { performance } from 'node:perf_hooks';

import type { HostTensor } from './params.js';
import { decodeSafetensors, encodeSafetensors, formatShape, type SafeTensor } from './safetensors.js';
import { removeDirAtomic, removeStaleTemps, writeDirAtomic } from '../util/atomic.js';

/** Value of `state.json`'s `format` field; bump when the layout changes incompatibly. */
export const CHECKPOINT_FORMAT = 'ringdiff-checkpoint-v1';

/** The tensor files of a checkpoint, by part. */
export const CHECKPOINT_FILES = {
  model: 'model.safetensors',
  ema: 'ema.safetensors',
  optimizer: 'optimizer.safetensors',
} as const;

const STATE_FILE = 'state.json';
const PARTS = ['model', 'ema', 'optimizer'] as const;
type Part = (typeof PARTS)[number];
const DIR_RE = /^ckpt-(0|[1-9][0-9]*)$/;

/** The tensors of a checkpoint. Optimizer tensors are `m.<param>` / `v.<param>` plus anything else. */
export type CheckpointParts = Record<Part, Map<string, HostTensor>>;

/** A checkpoint directory found on disk. */
export interface CheckpointEntry {
  step: number;
  dir: string;
}

/** A loaded, verified checkpoint. `state` is the caller's state as written (with `step`). */
export interface LoadedCheckpoint extends CheckpointParts {
  step: number;
  dir: string;
  state: Record<string, unknown>;
}

/** What a checkpoint must contain: parameter name → shape (checked for model, ema and optimizer m./v.). */
export interface CheckpointExpect {
  model?: ReadonlyMap<string, readonly number[]>;
}

/** Result of `writeCheckpoint`. `removed` lists pruned checkpoints and stale temp dirs. */
export interface WriteResult {
  dir: string;
  bytes: number;
  ms: number;
  removed: string[];
}

/** A checkpoint that cannot be used; the message is one line naming the file and tensor at fault. */
export class CheckpointError extends Error {
  override name = 'CheckpointError';
}

interface FileRecord {
  sha256: string;
  bytes: number;
}

/** Directory name of the checkpoint of `step`. */
export function checkpointDirName(step: number): string {
  return `ckpt-${step}`;
}

function isStep(n: unknown): n is number {
  return typeof n === 'number' && Number.isSafeInteger(n) && n >= 0;
}

function sha256(buf: Uint8Array): string {
  return createHash('sha256').update(buf).digest('hex');
}

function hasCode(e: unknown, code: string): boolean {
  return typeof e === 'object' && e !== null && (e as NodeJS.ErrnoException).code === code;
}

function oneLine(s: string): string {
  return s.replace(/\s*[\r\n]+\s*/g, ' ');
}

/**
 * Writes checkpoint `step` under `outDir` atomically, then keeps only the newest `keep` checkpoints
 * (the one just written always survives) and removes temp dirs left by dead writers.
 */
export async function writeCheckpoint(
  outDir: string,
  step: number,
  parts: CheckpointParts,
  state: Record<string, unknown>,
  keep: number,
): Promise<WriteResult> {
  const t0 = performance.now();
  if (!isStep(step)) throw new CheckpointError(`writeCheckpoint: step ${step} is not a non-negative integer`);
  if (!(keep === Infinity || (Number.isSafeInteger(keep) && keep >= 1))) {
    throw new CheckpointError(`writeCheckpoint: keep ${keep} must be a positive integer or Infinity`);
  }
  for (const key of ['format', 'files']) {
    if (Object.hasOwn(state, key))
      throw new CheckpointError(`writeCheckpoint: state key '${key}' is reserved`);
  }
  if (Object.hasOwn(state, 'step') && state.step !== step) {
    throw new CheckpointError(`writeCheckpoint: state.step ${String(state.step)} differs from step ${step}`);
  }

  const contents = new Map<string, Buffer>();
  const files: Record<string, FileRecord> = {};
  for (const part of PARTS) {
    const buf = encodeSafetensors(parts[part], { format: CHECKPOINT_FORMAT, part, step: String(step) });
    contents.set(CHECKPOINT_FILES[part], buf);
    files[CHECKPOINT_FILES[part]] = { sha256: sha256(buf), bytes: buf.length };
  }
  const { step: _ignored, ...rest } = state;
  const stateJson = Buffer.from(
    `${JSON.stringify({ format: CHECKPOINT_FORMAT, step, ...rest, files }, null, 2)}\n`,
    'utf8',
  );
  contents.set(STATE_FILE, stateJson);

  const isCheckpointName = (name: string): boolean => DIR_RE.test(name);
  const removed: string[] = [];
  // Before writing: a dead writer may have left a moved-aside checkpoint that must be restored first.
  removed.push(...(await removeStaleTemps(outDir, isCheckpointName)).removed);
  const dir = path.join(outDir, checkpointDirName(step));
  await writeDirAtomic(dir, contents);

  const newestFirst = (await listCheckpoints(outDir)).reverse();
  const survivors = new Set(newestFirst.slice(0, keep).map((c) => c.step));
  survivors.add(step);
  for (const c of newestFirst) {
    if (survivors.has(c.step)) continue;
    await removeDirAtomic(c.dir);
    removed.push(c.dir);
  }
  removed.push(...(await removeStaleTemps(outDir, isCheckpointName)).removed);

  let bytes = 0;
  for (const buf of contents.values()) bytes += buf.length;
  return { dir, bytes, ms: performance.now() - t0, removed };
}

/** Checkpoint directories under `outDir`, oldest step first; temp dirs and other names are ignored. */
export async function listCheckpoints(outDir: string): Promise<CheckpointEntry[]> {
  let entries;
  try {
    entries = await fs.readdir(outDir, { withFileTypes: true });
  } catch (e) {
    if (hasCode(e, 'ENOENT')) return [];
    throw e;
  }
  const out: CheckpointEntry[] = [];
  for (const ent of entries) {
    const m = DIR_RE.exec(ent.name);
    if (m === null || !ent.isDirectory()) continue;
    const step = Number(m[1]);
    if (Number.isSafeInteger(step)) out.push({ step, dir: path.join(outDir, ent.name) });
  }
  return out.sort((a, b) => a.step - b.step);
}

/**
 * Loads checkpoint directory `dir`, verifying state.json, each file's size and sha256, the
 * safetensors structure, F32 dtypes, and (given `expect`) exact tensor names and shapes.
 */
export async function loadCheckpoint(dir: string, expect?: CheckpointExpect): Promise<LoadedCheckpoint> {
  const abs = path.resolve(dir);
  const label = path.basename(abs);
  const fail = (msg: string): never => {
    throw new CheckpointError(oneLine(msg));
  };
  let st;
  try {
    st = await fs.stat(abs);
  } catch (e) {
    if (hasCode(e, 'ENOENT')) return fail(`checkpoint ${label} not found at ${abs}`);
    throw e;
  }
  if (!st.isDirectory()) fail(`checkpoint ${label} at ${abs} is not a directory`);

  const stateLabel = `${label}/${STATE_FILE}`;
  let stateText: string;
  try {
    stateText = await fs.readFile(path.join(abs, STATE_FILE), 'utf8');
  } catch (e) {
    if (hasCode(e, 'ENOENT')) return fail(`${stateLabel}: missing`);
    throw e;
  }
  let parsed: unknown;
  try {
    parsed = JSON.parse(stateText);
  } catch (e) {
    return fail(`${stateLabel}: invalid JSON: ${(e as Error).message}`);
  }
  if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) {
    return fail(`${stateLabel}: not a JSON object`);
  }
  const { format, files, ...state } = parsed as Record<string, unknown>;
  if (format !== CHECKPOINT_FORMAT) {
    fail(`${stateLabel}: format is ${JSON.stringify(format)}, expected '${CHECKPOINT_FORMAT}'`);
  }
  const step = state.step;
  if (!isStep(step)) return fail(`${stateLabel}: step ${JSON.stringify(step)} is not a non-negative integer`);
  const dirMatch = DIR_RE.exec(label);
  if (dirMatch !== null && Number(dirMatch[1]) !== step) {
    fail(`${stateLabel}: step ${step} does not match the directory name`);
  }
  if (typeof files !== 'object' || files === null || Array.isArray(files)) {
    return fail(`${stateLabel}: 'files' is missing or not an object`);
  }

  const loaded = {} as CheckpointParts;
  for (const part of PARTS) {
    const file = CHECKPOINT_FILES[part];
    const fileLabel = `${label}/${file}`;
    const rec = (files as Record<string, unknown>)[file];
    if (!isFileRecord(rec)) return fail(`${stateLabel}: files['${file}'] is missing or malformed`);
    let buf: Buffer;
    try {
      buf = await fs.readFile(path.join(abs, file));
    } catch (e) {
      if (hasCode(e, 'ENOENT')) return fail(`${fileLabel}: missing`);
      throw e;
    }
    if (buf.length !== rec.bytes) {
      fail(`${fileLabel}: ${buf.length} bytes, ${STATE_FILE} records ${rec.bytes} (truncated or replaced)`);
    }
    const digest = sha256(buf);
    if (digest !== rec.sha256)
      fail(`${fileLabel}: sha256 ${digest} does not match ${STATE_FILE} (${rec.sha256})`);
    let tensors: Map<string, SafeTensor>;
    try {
      tensors = decodeSafetensors(buf, fileLabel).tensors;
    } catch (e) {
      return fail((e as Error).message);
    }
    loaded[part] = toHost(tensors, fileLabel, fail);
  }

  if (expect?.model !== undefined) {
    const want = expect.model;
    checkExact(loaded.model, want, `${label}/${CHECKPOINT_FILES.model}`, fail);
    checkExact(loaded.ema, want, `${label}/${CHECKPOINT_FILES.ema}`, fail);
    checkOptimizer(loaded.optimizer, want, `${label}/${CHECKPOINT_FILES.optimizer}`, fail);
  }
  return { step, dir: abs, ...loaded, state };
}

function isFileRecord(r: unknown): r is FileRecord {
  if (typeof r !== 'object' || r === null) return false;
  const { sha256: h, bytes } = r as Record<string, unknown>;
  return typeof h === 'string' && /^[0-9a-f]{64}$/.test(h) && isStep(bytes);
}

function toHost(
  tensors: Map<string, SafeTensor>,
  fileLabel: string,
  fail: (msg: string) => never,
): Map<string, HostTensor> {
  const out = new Map<string, HostTensor>();
  for (const [name, t] of tensors) {
    if (t.dtype !== 'F32' || !(t.data instanceof Float32Array)) {
      fail(`${fileLabel}: tensor '${name}' has dtype ${t.dtype}, expected F32`);
    }
    out.set(name, { shape: t.shape, data: t.data as Float32Array });
  }
  return out;
}

function sameShape(a: readonly number[], b: readonly number[]): boolean {
  return a.length === b.length && a.every((d, i) => d === b[i]);
}

function checkTensor(
  got: HostTensor | undefined,
  want: readonly number[],
  name: string,
  fileLabel: string,
  fail: (msg: string) => never,
): void {
  if (got === undefined)
    fail(`${fileLabel}: tensor '${name}' is missing (expected shape ${formatShape(want)})`);
  else if (!sameShape(got.shape, want)) {
    fail(`${fileLabel}: tensor '${name}' has shape ${formatShape(got.shape)}, expected ${formatShape(want)}`);
  }
}

function checkExact(
  got: Map<string, HostTensor>,
  want: ReadonlyMap<string, readonly number[]>,
  fileLabel: string,
  fail: (msg: string) => never,
): void {
  for (const name of [...want.keys()].sort()) {
    checkTensor(got.get(name), want.get(name) as readonly number[], name, fileLabel, fail);
  }
  for (const name of got.keys()) {
    if (!want.has(name)) fail(`${fileLabel}: unexpected tensor '${name}' (not a model parameter)`);
  }
}

/** Moments must mirror the model exactly; other optimizer tensors are the caller's business. */
function checkOptimizer(
  got: Map<string, HostTensor>,
  want: ReadonlyMap<string, readonly number[]>,
  fileLabel: string,
  fail: (msg: string) => never,
): void {
  for (const name of [...want.keys()].sort()) {
    const shape = want.get(name) as readonly number[];
    for (const moment of ['m', 'v'])
      checkTensor(got.get(`${moment}.${name}`), shape, `${moment}.${name}`, fileLabel, fail);
  }
  for (const name of got.keys()) {
    const m = /^[mv]\.(.*)$/s.exec(name);
    if (m !== null && !want.has(m[1] as string)) {
      fail(`${fileLabel}: unexpected tensor '${name}' (not a moment of a model parameter)`);
    }
  }
}

/**
 * The newest checkpoint under `outDir` that loads and verifies, or null; `skipped` lists the newer
 * ones that did not, with their one-line errors, so the caller can report them.
 */
export async function latestValidCheckpoint(
  outDir: string,
  expect?: CheckpointExpect,
): Promise<{ checkpoint: LoadedCheckpoint | null; skipped: { dir: string; error: string }[] }> {
  const skipped: { dir: string; error: string }[] = [];
  for (const c of (await listCheckpoints(outDir)).reverse()) {
    try {
      return { checkpoint: await loadCheckpoint(c.dir, expect), skipped };
    } catch (e) {
      // Only verified damage is skipped: an I/O error (EACCES, EIO, ...) must not silently rewind the run.
      if (!(e instanceof CheckpointError)) throw e;
      skipped.push({ dir: c.dir, error: e.message });
    }
  }
  return { checkpoint: null, skipped };
}
