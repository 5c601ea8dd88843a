/**
 * A worker's step reports: sent without waiting (a step never blocks on the coordinator), kept when
 * the coordinator could not take them, and sent again at the start of the next generation, so the
 * coordinator's history has every committed step; and the step-time averages of the log lines.
 */
import type { Logger } from '../util/log.js';
import { ringdiff } from '../proto-gen/coordinator.js';
import type { StepRecord } from '../telemetry/step-record.js';

import pb = ringdiff.v1;

/** Reports kept for resending at most: a coordinator gone for that long is not coming back soon. */
const MAX_KEPT = 10000;

/** gRPC codes after which a report is worth sending again (UNAVAILABLE, DEADLINE_EXCEEDED, NOT_FOUND, FAILED_PRECONDITION). */
const RETRIABLE = [14, 4, 5, 9];

/** Step reports of one worker on their way to the coordinator. */
export class ReportQueue {
  private readonly kept = new Map<number, pb.IStepReport>();
  private readonly inFlight = new Set<Promise<void>>();

  constructor(
    private readonly send: (r: pb.IStepReport) => Promise<unknown>,
    private readonly log: Logger,
  ) {}

  /** Reports kept for resending. */
  get size(): number {
    return this.kept.size;
  }

  /**
   * Sends a committed step's report without waiting. One the coordinator did not take because it
   * was unreachable or had moved to a newer generation (the step was committed just before a
   * membership change) is kept for `resend`.
   */
  post(r: pb.IStepReport): void {
    const p = this.send(r).then(
      () => {},
      (e: unknown) => {
        const code = (e as { code?: number }).code ?? -1;
        if (RETRIABLE.includes(code) && this.kept.size < MAX_KEPT) this.kept.set(Number(r.step), r);
      },
    );
    this.inFlight.add(p);
    void p.finally(() => this.inFlight.delete(p));
  }

  /**
   * Sends the kept reports again, oldest first, as `workerId` in `generation` (before that
   * generation's first step); stops early when `interrupted()` says the generation is over.
   */
  async resend(workerId: string, generation: number, interrupted: () => boolean): Promise<void> {
    if (this.inFlight.size > 0)
      await Promise.race([Promise.allSettled([...this.inFlight]), new Promise((r) => setTimeout(r, 2000))]);
    if (this.kept.size === 0) return;
    const pending = [...this.kept.values()].sort((a, b) => Number(a.step) - Number(b.step));
    this.kept.clear();
    let sent = 0;
    for (const r of pending) {
      if (interrupted()) return;
      try {
        await this.send({ ...r, workerId, generation });
        sent++;
      } catch {
        // The coordinator will learn the step from another worker, or not at all.
      }
    }
    this.log.info({ reports: sent, of: pending.length }, 'step reports sent again');
  }

  /** Forgets the kept reports (a fenced worker's steps may be ones the others abandoned and redid). */
  clear(): void {
    this.kept.clear();
  }
}

/** Mean step-time breakdown over the steps since the last log line (what `bench:scaling` reads). */
export class StepAverages {
  private n = 0;
  private sum = {
    data_wait_ms: 0,
    forward_backward_ms: 0,
    allreduce_ms: 0,
    optimizer_ms: 0,
    step_ms: 0,
    examples: 0,
  };

  /** Adds one step. */
  add(r: StepRecord): void {
    this.n++;
    this.sum.data_wait_ms += r.dataWaitMs;
    this.sum.forward_backward_ms += r.forwardBackwardMs;
    this.sum.allreduce_ms += r.allreduceMs;
    this.sum.optimizer_ms += r.optimizerMs;
    this.sum.step_ms += r.stepMs;
    this.sum.examples += r.examples;
  }

  /** Means (ms) and this worker's samples/s since the last flush; then starts over. */
  flush(): Record<string, number> {
    const n = Math.max(1, this.n);
    const out: Record<string, number> = { steps: this.n };
    for (const [k, v] of Object.entries(this.sum))
      if (k !== 'examples') out[k] = Math.round((v / n) * 100) / 100;
    out.samples_per_s =
      this.sum.step_ms > 0 ? Math.round((this.sum.examples * 1e5) / this.sum.step_ms) / 100 : 0;
    this.n = 0;
    for (const k of Object.keys(this.sum) as (keyof typeof this.sum)[]) this.sum[k] = 0;
    return out;
  }
}
