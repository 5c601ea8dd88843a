/**
 * `ringdiff coordinator`: the job's gRPC server (rendezvous, membership, plans, central EMA and
 * checkpoints) and its Prometheus metrics; exits 0 when the job has run all its steps.
 */
import { appendFileSync, mkdirSync } from 'node:fs';
import * as path from 'node:path';
import { loadConfig, configToYaml } from '../config/load.js';
import { watchParent } from '../util/parent.js';
import { resolveForDataset, type ResolvedConfig } from '../config/resolve.js';
import type { Config } from '../config/schema.js';
import { openDataset } from '../data/spec.js';
import { initBackend } from '../model/backend/index.js';
import { jobDenoiser } from '../model/nets/factory.js';
import { disposeParams, paramsFromHost } from '../model/params.js';
import { scheduleOf } from '../model/diffusion/schedule.js';
import { createSampler, type SamplerState } from '../model/diffusion/timesteps.js';
import { CoordinatorServer } from '../coordinator/server.js';
import { CentralState } from '../coordinator/state.js';
import { CoordinatorMetrics, serveMetrics, type MetricsServer } from '../telemetry/metrics.js';
import { createLogger, type Logger } from '../util/log.js';
import { joinToken, serverCredentials } from '../config/credentials.js';
import { reportAtEnd, writeSamplesFrom } from './train.js';
import { evalLine, HISTORY_FILE, type EvalEntry, type HistoryEntry } from '../telemetry/history.js';
import { toHistoryEntry } from '../telemetry/step-record.js';

export interface CoordinatorCliOptions {
  config?: string;
  set?: string[];
  listen: string;
  metrics?: string;
  backend?: string;
  pretty?: boolean;
  exitWithParent?: boolean;
}

/** Runs the coordinator until the job finishes (0) or is stopped by a signal (0 after a checkpoint). */
export async function runCoordinator(o: CoordinatorCliOptions): Promise<number> {
  const loaded = loadConfig(o.config, o.set ?? []);
  const token = joinToken(loaded);
  const credentials = serverCredentials(loaded);
  let server: CoordinatorServer | null = null;
  const log = createLogger({
    job: loaded.run.name,
    pretty: o.pretty ?? false,
    base: { role: 'coordinator', pid: process.pid },
    mixin: () => (server ? { step: server.step, generation: server.membership.generation.number } : {}),
  });
  // One stop per process, whatever asked first: a signal, the parent's exit, a leaving worker.
  let signalled = false;
  function stopJob(why: string): void {
    if (signalled || !server) return;
    signalled = true;
    const srvNow = server;
    log.warn({ signal: why }, 'stopping: asking the workers for a final checkpoint');
    void srvNow.stop(cfg.cluster.stop_grace_s * 1000).then((ok) => {
      if (!ok)
        log.warn(
          { grace_s: cfg.cluster.stop_grace_s },
          'no final state from the workers in time; the newest checkpoint on disk stands',
        );
      finished();
    });
  }
  const backend = await initBackend(o.backend, { quiet: true });
  const dataset = openDataset(loaded.data);
  // Workers receive the resolved config: every process of the job sees numbers, never `auto`.
  const cfg = resolveForDataset(loaded, dataset);
  const state = await CentralState.open(cfg, dataset, log);
  if (state.checkpointStep >= cfg.train.steps) {
    log.info({ step: state.checkpointStep }, 'the job has already run all its steps');
    return 0;
  }
  const metrics = new CoordinatorMetrics(cfg.run.name);
  const history = new CoordinatorHistory(cfg.run.out_dir, cfg.train.steps, log);
  let finished!: () => void;
  const done = new Promise<void>((r) => (finished = r));
  const srv = new CoordinatorServer({
    jobId: cfg.run.name,
    token,
    configYaml: configToYaml(cfg),
    globalBatch: cfg.train.global_batch,
    totalSteps: cfg.train.steps,
    minWorkers: cfg.cluster.min_workers,
    maxWorkers: cfg.cluster.max_workers,
    heartbeatTimeoutMs: cfg.cluster.heartbeat_timeout_ms,
    verifyEvery: cfg.cluster.verify_every,
    curve: cfg.cluster.allreduce.encryption === 'curve',
    log,
    job: { cfg, state, dataset },
    events: {
      onReport: (w, r, now) => {
        metrics.onReport(w, r, now);
        history.add(toHistoryEntry(r, now, server?.samplesPerSecond ?? 0));
        if (r.evalMetrics) {
          metrics.onEval(r.step, r.evalMetrics);
          history.addEval({ step: r.step, t: now, eval: r.evalMetrics });
        }
      },
      onGeneration: (g, n) => metrics.onGeneration(g, n),
      onWorkerDeath: (reason) => metrics.onWorkerDeath(reason),
      onStopRequested: (why) => stopJob(why),
      onRejected: (m, c) => metrics.onRejected(m, c),
      onCheckpoint: (step, ms, bytes, now) => {
        metrics.onCheckpoint(step, ms, bytes, now);
        samplingWeights(cfg, state.sampler, metrics);
      },
      onEmaSync: (step) => {
        metrics.onEmaSync(step);
        samplingWeights(cfg, state.sampler, metrics);
      },
      onFinished: () => finished(),
    },
  });
  server = srv;
  if (state.checkpointStep >= 0) metrics.onCheckpoint(state.checkpointStep, 0, 0, Date.now());
  samplingWeights(cfg, state.sampler, metrics);
  const port = await srv.listen(o.listen, credentials);
  const host = o.listen.slice(0, o.listen.lastIndexOf(':'));
  let metricsServer: MetricsServer | null = null;
  if (o.metrics) metricsServer = await serveMetrics(metrics.registry, o.metrics);
  const liveness = setInterval(() => {
    const now = Date.now();
    const ring = srv.membership.generation.ring;
    metrics.setLiveness(
      srv.membership.alive().map((m) => ({
        id: m.id,
        host: m.host,
        rank: ring.findIndex((x) => x.id === m.id),
        heartbeatAgeMs: now - m.lastHeartbeatMs,
      })),
      now,
    );
  }, 1000);
  log.info(
    {
      listen: `${host}:${port}`,
      metrics: metricsServer
        ? `${o.metrics?.slice(0, o.metrics.lastIndexOf(':'))}:${metricsServer.port}`
        : null,
      backend: backend.chosen,
      tls: cfg.cluster.tls.cert ? (cfg.cluster.tls.ca ? 'mutual' : 'server') : 'off',
      min_workers: cfg.cluster.min_workers,
      resume_step: state.checkpointStep,
    },
    'coordinator listening',
  );
  // A stop asks rank 0 for the final state and waits at most cluster.stop_grace_s: schedulers
  // (Slurm's KillWait, Kubernetes' grace period) send SIGKILL soon after SIGTERM, and a
  // coordinator must never wait without a deadline. SIGTERM often arrives twice (scancel signals
  // every process of the job and the batch script forwards it; systemd and launch likewise): a
  // repeated SIGTERM changes nothing. A second Ctrl-C (SIGINT) at a terminal exits at once.
  const onSignal = (sig: string) => {
    if (signalled) {
      if (sig === 'SIGINT') process.exit(130);
      log.info({ signal: sig }, 'already stopping');
      return;
    }
    stopJob(sig);
  };
  const onSigint = () => onSignal('SIGINT');
  const onSigterm = () => onSignal('SIGTERM');
  process.on('SIGINT', onSigint);
  process.on('SIGTERM', onSigterm);
  const unwatch = o.exitWithParent ? watchParent(() => onSignal('parent exited')) : () => {};
  try {
    await done;
    if (!history.flush()) log.error('history.jsonl: entries could not be written before the end');
    if (srv.isFinished) {
      await finalSamples(cfg, state, dataset.shape, log);
      await reportAtEnd(cfg.run.out_dir, log);
    }
    log.info({ step: state.checkpointStep }, srv.isFinished ? 'done' : 'stopped');
    return 0;
  } finally {
    process.off('SIGINT', onSigint);
    process.off('SIGTERM', onSigterm);
    unwatch();
    clearInterval(liveness);
    await srv.close();
    await metricsServer?.close();
  }
}

/**
 * The coordinator's history.jsonl (same lines as `HistoryWriter`, read by `readHistory`), robust to
 * what a distributed job does to reports:
 * - reports arrive out of order (unary calls race; a worker re-sends the reports a coordinator
 *   missed at the next generation): every step is recorded once per coordinator process, in
 *   arrival order (readers sort by step), not only steps newer than the last one recorded;
 * - a full or read-only run directory: entries that cannot be appended are kept in memory and
 *   appended once there is room (a torn last line is ended first), with one log line per outage.
 */
class CoordinatorHistory {
  private readonly file: string;
  /** Steps recorded (or queued) by this process. */
  private readonly seen: Uint8Array;
  private readonly pending: { step: number; line: string }[] = [];
  private failing = false;

  constructor(
    outDir: string,
    totalSteps: number,
    private readonly log: Logger,
  ) {
    mkdirSync(outDir, { recursive: true });
    this.file = path.join(outDir, HISTORY_FILE);
    this.seen = new Uint8Array(totalSteps + 1);
  }

  add(e: HistoryEntry): void {
    if (!Number.isSafeInteger(e.step) || e.step < 0 || e.step >= this.seen.length || this.seen[e.step])
      return;
    this.seen[e.step] = 1;
    const q = e.loss_q.map((x) => (Number.isFinite(x) ? x : null));
    this.pending.push({ step: e.step, line: `${JSON.stringify({ ...e, loss_q: q })}\n` });
    this.flush();
  }

  /** An evaluation's line (only rank 0's report of a step carries one). */
  addEval(e: EvalEntry): void {
    this.pending.push({ step: e.step, line: evalLine(e) });
    this.flush();
  }

  /** Appends what is pending; false while the run directory refuses it. */
  flush(): boolean {
    while (this.pending.length > 0) {
      const e = this.pending[0] as { step: number; line: string };
      try {
        // After a failure the file may end with a torn line: end it, so the entry parses.
        appendFileSync(this.file, `${this.failing ? '\n' : ''}${e.line}`);
      } catch (err) {
        if (!this.failing)
          this.log.error(
            { error: (err as Error).message, step: e.step },
            'history.jsonl not writable; keeping entries in memory until it is',
          );
        this.failing = true;
        return false;
      }
      this.pending.shift();
      if (this.failing) this.log.info({ step: e.step }, 'history.jsonl writable again');
      this.failing = false;
    }
    return true;
  }
}

/** Exports the sampling weights p(t) of the coordinator's copy of the sampler table. */
function samplingWeights(cfg: Config, table: unknown, metrics: CoordinatorMetrics): void {
  const d = cfg.diffusion;
  const opts = { historyPerTerm: d.history_per_term, uniformProb: d.uniform_prob };
  try {
    const s = createSampler(
      d.timestep_sampler,
      d.timesteps,
      opts,
      (table ?? undefined) as SamplerState | undefined,
    );
    metrics.setSamplingWeights(s.probs());
  } catch {
    // A table from another config was refused when it was pushed; nothing to export.
  }
}

async function finalSamples(
  cfg: ResolvedConfig,
  state: CentralState,
  shape: readonly number[],
  log: Logger,
): Promise<void> {
  if (!state.ema || cfg.sample.count === 0) return;
  const model = jobDenoiser(cfg, [...shape]);
  const ema = paramsFromHost(state.ema);
  try {
    await writeSamplesFrom(cfg, model, ema, scheduleOf(cfg.diffusion), log);
  } finally {
    disposeParams(ema);
  }
}
