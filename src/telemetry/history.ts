/**
 * The run's history: one JSON line per committed step in `<out_dir>/history.jsonl` (step, loss,
 * loss per timestep quarter, learning rate, gradient norm, samples/s, wall time). Written by
 * `train` and by the coordinator; read by the run report. Appends are line-buffered and a torn
 * last line (a crash mid-write) is skipped on reading.
 */
import { appendFileSync, mkdirSync, readFileSync } from 'node:fs';
import * as path from 'node:path';

export interface HistoryEntry {
  step: number;
  /** Unix time, ms. */
  t: number;
  loss: number;
  loss_q: number[];
  lr: number;
  grad_norm: number;
  samples_per_s: number;
}

export const HISTORY_FILE = 'history.jsonl';

/** Appends entries to a run's history, at most once per step (the first report of a step wins). */
export class HistoryWriter {
  private readonly file: string;
  private last = -1;

  constructor(outDir: string) {
    mkdirSync(outDir, { recursive: true });
    this.file = path.join(outDir, HISTORY_FILE);
  }

  /** Records step `e.step` unless it is not newer than the last one recorded. */
  add(e: HistoryEntry): void {
    if (e.step <= this.last) return;
    this.last = e.step;
    const q = e.loss_q.map((x) => (Number.isFinite(x) ? x : null));
    appendFileSync(this.file, `${JSON.stringify({ ...e, loss_q: q })}\n`);
  }
}

/** The history of a run, ordered by step; a resumed run's repeated steps keep their newest entry. */
export function readHistory(outDir: string): HistoryEntry[] {
  let text: string;
  try {
    text = readFileSync(path.join(outDir, HISTORY_FILE), 'utf8');
  } catch {
    return [];
  }
  const byStep = new Map<number, HistoryEntry>();
  for (const line of text.split('\n')) {
    if (!line.trim()) continue;
    try {
      const e = JSON.parse(line) as HistoryEntry;
      if (Number.isInteger(e.step)) byStep.set(e.step, e);
    } catch {
      // A line torn by a crash: the rest of the history is still good.
    }
  }
  return [...byStep.values()].sort((a, b) => a.step - b.step);
}
