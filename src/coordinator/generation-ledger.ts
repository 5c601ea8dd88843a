/**
 * The coordinator's own generation counter, kept across restarts in `<out_dir>/generation`: a
 * ceiling that every generation number a coordinator of the job has published stays at or below.
 * A restarted coordinator numbers its generations above it (frames of an earlier ring are always
 * stale) without having to believe the numbers workers report, and a worker that reports a
 * generation above it is refused: no client can move the job's numbering.
 *
 * The ceiling is reserved ahead (STRIDE generations at a time), so the file is written once per
 * STRIDE generations, not at each one.
 */
import { closeSync, fsyncSync, openSync, readFileSync, renameSync, unlinkSync, writeSync } from 'node:fs';
import * as path from 'node:path';
import type { Logger } from '../util/log.js';

/** Generations reserved per write of the file. */
export const STRIDE = 1024;
/** Generations are uint32 on the wire; leave room for a long job's worth above any ceiling. */
const MAX_CEILING = 2 ** 31;

/** The persisted ceiling of a job's generation numbers. */
export class GenerationLedger {
  private stored: number | null;

  private constructor(
    readonly file: string,
    stored: number | null,
    private readonly log?: Logger,
  ) {
    this.stored = stored;
  }

  /** Reads `<dir>/generation`; a missing or unreadable file means no ceiling is known yet. */
  static open(dir: string, log?: Logger): GenerationLedger {
    const file = path.join(dir, 'generation');
    let stored: number | null = null;
    try {
      const v = Number(readFileSync(file, 'utf8').trim());
      if (Number.isSafeInteger(v) && v > 0 && v <= MAX_CEILING) stored = v;
      else log?.warn({ file }, 'generation ceiling unreadable: ignored');
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'ENOENT')
        log?.warn({ file, error: (e as Error).message }, 'generation ceiling unreadable: ignored');
    }
    return new GenerationLedger(file, stored, log);
  }

  /** The ceiling on disk (null: none, as in a run directory of an older version). */
  get ceiling(): number | null {
    return this.stored;
  }

  /**
   * Called before generation `n` is published: raises the ceiling on disk when `n` is above it.
   * A write that fails (full or read-only disk) is logged and the job goes on; the ceiling then
   * stays where it was.
   */
  reserve(n: number): void {
    if (this.stored !== null && n <= this.stored) return;
    const next = Math.min(MAX_CEILING, n + STRIDE);
    const tmp = `${this.file}.tmp`;
    try {
      const fd = openSync(tmp, 'w', 0o644);
      try {
        writeSync(fd, `${next}\n`);
        fsyncSync(fd);
      } finally {
        closeSync(fd);
      }
      renameSync(tmp, this.file);
      this.stored = next;
    } catch (e) {
      try {
        unlinkSync(tmp);
      } catch {
        // nothing was created
      }
      this.log?.error(
        { file: this.file, error: (e as Error).message, code: (e as NodeJS.ErrnoException).code },
        `generation ceiling ${this.file} not written`,
      );
    }
  }
}
