/**
 * The run's history: one JSON line per committed step in `<out_dir>/history.jsonl` (step, loss,
 * loss per timestep quarter, learning rate, gradient norm, samples/s, wall time). Written by
 * `train` and by the coordinator; read by the run report. Evaluations during training (eval.*) add
 * lines of their own, `{"step", "t", "eval": {name: value}}`, read by `readEvalHistory`. Appends are
 * line-buffered and a torn last line (a crash mid-write) is skipped on reading.
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

/** The metrics of one evaluation during training (fid_mnistcnn, nll_bpd, …) after step `step`. */
export interface EvalEntry {
  step: number;
  /** Unix time, ms. */
  t: number;
  eval: Record<string, number>;
}

/** The history line of an evaluation. */
export function evalLine(e: EvalEntry): string {
  return `${JSON.stringify({ step: e.step, t: e.t, eval: e.eval })}\n`;
}

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

  /** Records an evaluation (its own line: a step has one step entry and at most one evaluation). */
  addEval(e: EvalEntry): void {
    appendFileSync(this.file, evalLine(e));
  }
}

function historyLines(outDir: string): unknown[] {
  let text: string;
  try {
    text = readFileSync(path.join(outDir, HISTORY_FILE), 'utf8');
  } catch {
    return [];
  }
  const out: unknown[] = [];
  for (const line of text.split('\n')) {
    if (!line.trim()) continue;
    try {
      out.push(JSON.parse(line));
    } catch {
      // A line torn by a crash: the rest of the history is still good.
    }
  }
  return out;
}

function isEval(e: unknown): e is EvalEntry {
  return typeof e === 'object' && e !== null && 'eval' in e && typeof e.eval === 'object' && e.eval !== null;
}

/** The evaluations of a run, ordered by step; a step evaluated twice (a resumed run) keeps the newest. */
export function readEvalHistory(outDir: string): EvalEntry[] {
  const byStep = new Map<number, EvalEntry>();
  for (const e of historyLines(outDir)) if (isEval(e) && Number.isInteger(e.step)) byStep.set(e.step, e);
  return [...byStep.values()].sort((a, b) => a.step - b.step);
}

/** The history of a run, ordered by step; a resumed run's repeated steps keep their newest entry. */
export function readHistory(outDir: string): HistoryEntry[] {
  const byStep = new Map<number, HistoryEntry>();
  for (const e of historyLines(outDir)) {
    if (typeof e !== 'object' || e === null || isEval(e)) continue;
    const h = e as HistoryEntry;
    if (Number.isInteger(h.step)) byStep.set(h.step, h);
  }
  return [...byStep.values()].sort((a, b) => a.step - b.step);
}
