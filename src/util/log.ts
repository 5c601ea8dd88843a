/**
 * Structured logs: pino JSON on every process, with `job` (and, in distributed runs, `rank`,
 * `generation`) bound on the logger and `step` on each step line; `--pretty` for humans.
 */
import { pino, type Logger, type DestinationStream } from 'pino';
import pretty from 'pino-pretty';

export type { Logger };

export interface LogOptions {
  job: string;
  pretty?: boolean;
  level?: string;
  /** Where to write (default stdout). */
  destination?: DestinationStream | NodeJS.WritableStream;
  base?: Record<string, unknown>;
  /** Fields computed for every line (e.g. the current step). */
  mixin?: () => Record<string, unknown>;
}

/** A logger for one process of a job. */
export function createLogger(o: LogOptions): Logger {
  const opts = {
    level: o.level ?? process.env.RINGDIFF_LOG_LEVEL ?? 'info',
    base: { job: o.job, ...o.base },
    ...(o.mixin ? { mixin: o.mixin } : {}),
  };
  if (o.pretty) return pino(opts, pretty({ colorize: false, destination: 1, sync: true }));
  return pino(opts, (o.destination ?? pino.destination({ dest: 1, sync: true })) as DestinationStream);
}
