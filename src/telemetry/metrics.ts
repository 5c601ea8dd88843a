/**
 * Prometheus metrics of the coordinator and the workers (prom-client). Each instance owns its own
 * `Registry` (never the global default one), so several can live in one process. Every metric is
 * named `ringdiff_*` and carries a constant `job` label (workers: also `worker`); durations are in
 * seconds, sizes in bytes, bandwidths in GB/s (1 GB = 1e9 bytes). `serveMetrics` exposes a registry
 * over HTTP at GET /metrics (and GET /healthz).
 */
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics, exponentialBuckets } from 'prom-client';
import type { StepRecord } from './step-record.js';

export type { Registry };

/** A worker as the coordinator knows it. */
export interface WorkerRef {
  id: string;
  host: string;
  /** Rank in the ring, -1 = not in the ring. */
  rank: number;
}

/** One step of one worker, as the worker reports it (times in ms, sizes in bytes). */
/** Reasons for which a worker leaves the job (others are accepted too). */
export const DEATH_REASONS = ['heartbeat-timeout', 'ring-failure', 'left', 'stream-closed'] as const;
/** A reason for which a worker leaves the job. */
export type DeathReason = (typeof DEATH_REASONS)[number];

const PREFIX = 'ringdiff_';
/** Window over which the total samples/s is estimated. */
const RATE_WINDOW_MS = 10_000;
const PHASES = ['data_wait', 'forward_backward', 'allreduce', 'optimizer', 'total'] as const;
type Phase = (typeof PHASES)[number];
const STEP_BUCKETS = exponentialBuckets(0.005, 2, 16); // 5 ms … ~164 s
/**
 * prom-client default metrics that are gauges named `*_total`: `promtool check metrics` rejects them
 * (exit 3, "non-counter metrics should not have _total suffix"). Their values are the sums of the
 * per-type gauges of the same name without `_total`, which stay.
 */
const DROPPED_DEFAULT_METRICS = [
  'nodejs_active_handles_total',
  'nodejs_active_requests_total',
  'nodejs_active_resources_total',
];

/** The per-phase durations of a report, in seconds. */
function phaseSeconds(r: StepRecord): Record<Phase, number> {
  return {
    data_wait: r.dataWaitMs / 1000,
    forward_backward: r.forwardBackwardMs / 1000,
    allreduce: r.allreduceMs / 1000,
    optimizer: r.optimizerMs / 1000,
    total: r.stepMs / 1000,
  };
}

/** A non-negative finite increment (counters reject anything else). */
function increment(v: number): number {
  return Number.isFinite(v) && v > 0 ? v : 0;
}

/**
 * A new registry with the `ringdiff_` default process metrics (minus `DROPPED_DEFAULT_METRICS`) and
 * the given constant labels.
 */
function newRegistry(labels: Record<string, string>): Registry {
  const register = new Registry();
  register.setDefaultLabels(labels);
  collectDefaultMetrics({ register, prefix: PREFIX });
  for (const name of DROPPED_DEFAULT_METRICS) register.removeSingleMetric(PREFIX + name);
  return register;
}

/** Per-step bookkeeping for the samples/s estimate. */
interface StepTally {
  /** Sum of `examples` over the reports of this step. */
  examples: number;
  /** Time of the last report of this step (ms). */
  lastMs: number;
}

/** Metrics of the coordinator: the job as a whole and every worker as it reports. */
export class CoordinatorMetrics {
  readonly registry: Registry;

  private readonly step: Gauge;
  private readonly loss: Gauge;
  private readonly lossQuarter: Gauge<'quarter'>;
  private readonly gradNorm: Gauge;
  private readonly lr: Gauge;
  private readonly samplesPerSecond: Gauge;
  private readonly workerSamplesPerSecond: Gauge<'worker' | 'host'>;
  private readonly workerStepSeconds: Gauge<'worker' | 'host' | 'phase'>;
  private readonly stepDuration: Histogram;
  private readonly allreduceBytes: Counter<'worker'>;
  private readonly busbw: Gauge<'worker'>;
  private readonly workersAlive: Gauge;
  private readonly generation: Gauge;
  private readonly generationChanges: Counter;
  private readonly worldSize: Gauge;
  private readonly deaths: Counter<'reason'>;
  private readonly heartbeatAge: Gauge<'worker' | 'host'>;
  private readonly rejected: Counter<'method' | 'code'>;
  private readonly ckptStep: Gauge;
  private readonly ckptDuration: Gauge;
  private readonly ckptBytes: Gauge;
  private readonly ckptTimestamp: Gauge;
  private readonly ckpts: Counter;
  private readonly emaStep: Gauge;
  private readonly emaLag: Gauge;
  private readonly samplingWeight: Gauge<'bucket' | 't_from'>;
  private readonly evalMetric: Gauge<'name'>;
  private readonly evalStep: Gauge;
  /** Step of the newest evaluation exported (a late report of an older one is ignored). */
  private lastEvalStep = -1;

  /** Highest step reported since the last generation change (-1 = none yet). */
  private lastStep = -1;
  /** Time of the last report of `lastStep` (ms). */
  private lastStepMs = -Infinity;
  private lastEmaStep = -1;
  private currentGeneration: number | undefined;
  /** Host last seen per worker id (the label sets to remove when it goes). */
  private readonly hosts = new Map<string, string>();
  /** Newest step reported per worker id. */
  private readonly workerStep = new Map<string, number>();
  /** Steps in the samples/s window, by step number. */
  private readonly steps = new Map<number, StepTally>();

  /** `job`: the value of the constant `job` label. */
  constructor(job: string) {
    this.registry = newRegistry({ job });
    const registers = [this.registry];
    const gauge = <L extends string = never>(name: string, help: string, labelNames: L[] = []): Gauge<L> =>
      new Gauge<L>({ name: PREFIX + name, help, labelNames, registers });
    const counter = <L extends string = never>(
      name: string,
      help: string,
      labelNames: L[] = [],
    ): Counter<L> => new Counter<L>({ name: PREFIX + name, help, labelNames, registers });

    this.step = gauge('step', 'Last committed global step.');
    this.loss = gauge('loss', 'Training loss of the last report.');
    this.lossQuarter = gauge('loss_quarter', 'Loss per quarter of the timestep range (0 = t near 0).', [
      'quarter',
    ]);
    this.gradNorm = gauge('grad_norm', 'Global gradient norm of the last report.');
    this.lr = gauge('learning_rate', 'Learning rate of the last report.');
    this.samplesPerSecond = gauge(
      'samples_per_second',
      `Training examples per second over all workers (step advance rate x examples per step, ~${RATE_WINDOW_MS / 1000} s window).`,
    );
    this.workerSamplesPerSecond = gauge('worker_samples_per_second', 'Examples per second of one worker.', [
      'worker',
      'host',
    ]);
    this.workerStepSeconds = gauge('worker_step_seconds', 'Step time of one worker by phase (seconds).', [
      'worker',
      'host',
      'phase',
    ]);
    this.stepDuration = new Histogram({
      name: PREFIX + 'step_duration_seconds',
      help: 'Step time of every worker report (seconds).',
      buckets: STEP_BUCKETS,
      registers,
    });
    this.allreduceBytes = counter('allreduce_bytes_total', 'Bytes all-reduced by one worker.', ['worker']);
    this.busbw = gauge('allreduce_busbw_gbps', 'All-reduce bus bandwidth of one worker (GB/s, 1e9 B).', [
      'worker',
    ]);
    this.workersAlive = gauge('workers_alive', 'Workers registered and alive.');
    this.generation = gauge('generation', 'Current generation of the ring.');
    this.generationChanges = counter('generation_changes_total', 'Generations started (the first included).');
    this.worldSize = gauge('world_size', 'World size of the current generation.');
    this.deaths = counter('worker_deaths_total', 'Workers that left the job, by reason.', ['reason']);
    for (const reason of DEATH_REASONS) this.deaths.inc({ reason }, 0); // series exist from the start
    this.heartbeatAge = gauge(
      'heartbeat_age_seconds',
      'Time since the last heartbeat of a worker (seconds).',
      ['worker', 'host'],
    );
    this.rejected = counter('rpc_rejected_total', 'RPCs rejected, by method and status code.', [
      'method',
      'code',
    ]);
    this.ckptStep = gauge('checkpoint_last_step', 'Step of the last checkpoint written.');
    this.ckptDuration = gauge('checkpoint_duration_seconds', 'Time to write the last checkpoint (seconds).');
    this.ckptBytes = gauge('checkpoint_bytes', 'Size of the last checkpoint (bytes).');
    this.ckptTimestamp = gauge('checkpoint_timestamp_seconds', 'Unix time of the last checkpoint (seconds).');
    this.ckpts = counter('checkpoints_total', 'Checkpoints written.');
    this.emaStep = gauge('ema_step', 'Step of the EMA weights last received by the coordinator.');
    this.emaLag = gauge('ema_sync_lag_steps', 'Last step minus the step of the last EMA weights received.');
    this.samplingWeight = gauge(
      'sampling_weight',
      'Timestep-sampling probability mass per bucket of timesteps (t_from = first t of the bucket).',
      ['bucket', 't_from'],
    );
    this.evalMetric = gauge(
      'eval_metric',
      'Metric of the last evaluation during training (eval.*), by name: fid_mnistcnn, kid_mnistcnn, is_mnistcnn, precision_mnistcnn, recall_mnistcnn, nll_bpd, ...',
      ['name'],
    );
    this.evalStep = gauge('eval_step', 'Step of the last evaluation during training.');
  }

  /** The metrics of the evaluation after step `step` (rank 0's report). */
  onEval(step: number, metrics: Record<string, number>): void {
    if (step < this.lastEvalStep) return;
    this.lastEvalStep = step;
    this.evalStep.set(step);
    for (const [name, v] of Object.entries(metrics)) this.evalMetric.set({ name }, v);
  }

  /** A worker's report of one step; `nowMs`: receive time (ms, any fixed epoch). */
  onReport(w: WorkerRef, r: StepRecord, nowMs: number): void {
    this.trackHost(w);
    // A lower step after a window without progress: training restarted from an older checkpoint.
    if (r.step < this.lastStep && nowMs - this.lastStepMs > RATE_WINDOW_MS) {
      this.restartSteps();
      this.workerStep.clear();
    }
    const sec = phaseSeconds(r);
    if (Number.isFinite(sec.total) && sec.total >= 0) this.stepDuration.observe(sec.total);
    this.allreduceBytes.inc({ worker: w.id }, increment(r.allreduceBytes));
    // Per-worker last values: a late report of an older step does not overwrite newer ones.
    if (r.step >= (this.workerStep.get(w.id) ?? -Infinity)) {
      this.workerStep.set(w.id, r.step);
      const labels = { worker: w.id, host: w.host };
      for (const phase of PHASES) this.workerStepSeconds.set({ ...labels, phase }, sec[phase]);
      if (r.stepMs > 0) this.workerSamplesPerSecond.set(labels, r.examples / sec.total);
      this.busbw.set({ worker: w.id }, r.allreduceBusbwGbps);
    }

    // Job-wide values: take them from the newest step only (late reports of older steps are ignored).
    if (r.step >= this.lastStep) {
      this.lastStep = r.step;
      this.lastStepMs = nowMs;
      this.step.set(r.step);
      this.loss.set(r.loss);
      r.lossQuarters.forEach((v, q) => {
        if (Number.isFinite(v)) this.lossQuarter.set({ quarter: String(q) }, v);
      });
      this.gradNorm.set(r.gradNorm);
      this.lr.set(r.lr);
      this.updateEmaLag();
    }
    this.recordExamples(r.step, r.examples, nowMs);
    this.updateRate(nowMs);
  }

  /** A new generation started with `worldSize` ranks. */
  onGeneration(generation: number, worldSize: number): void {
    if (generation !== this.currentGeneration) {
      this.currentGeneration = generation;
      this.generationChanges.inc();
      // A new generation may resume from a checkpoint at an older step.
      this.restartSteps();
      this.workerStep.clear();
    }
    this.generation.set(generation);
    this.worldSize.set(worldSize);
  }

  /** A worker left the job; `reason`: 'heartbeat-timeout' | 'ring-failure' | 'left' | 'stream-closed'. */
  onWorkerDeath(reason: string): void {
    this.deaths.inc({ reason });
  }

  /** An RPC was rejected; `method` e.g. 'Register', `code` e.g. 'UNAUTHENTICATED'. */
  onRejected(method: string, code: string): void {
    this.rejected.inc({ method, code });
  }

  /** A checkpoint of `step` was written in `ms` milliseconds, `bytes` bytes, at unix time `nowMs` (ms). */
  onCheckpoint(step: number, ms: number, bytes: number, nowMs: number): void {
    this.ckptStep.set(step);
    this.ckptDuration.set(ms / 1000);
    this.ckptBytes.set(bytes);
    this.ckptTimestamp.set(nowMs / 1000);
    this.ckpts.inc();
  }

  /** The coordinator received the EMA weights of step `emaStep`. */
  onEmaSync(emaStep: number): void {
    this.lastEmaStep = emaStep;
    this.emaStep.set(emaStep);
    this.updateEmaLag();
  }

  /**
   * Call before each scrape with the workers alive (heartbeat age in ms) and the time (ms, same
   * epoch as `onReport`): sets the alive count and heartbeat ages, removes every per-worker series
   * of workers no longer listed, and lets samples/s fall to 0 when steps stop.
   */
  setLiveness(workers: Array<WorkerRef & { heartbeatAgeMs: number }>, nowMs: number): void {
    const alive = new Set(workers.map((w) => w.id));
    for (const id of [...this.hosts.keys()]) if (!alive.has(id)) this.forgetWorker(id);
    for (const w of workers) {
      this.trackHost(w);
      this.heartbeatAge.set({ worker: w.id, host: w.host }, w.heartbeatAgeMs / 1000);
    }
    this.workersAlive.set(workers.length);
    this.updateRate(nowMs);
  }

  /**
   * Timestep-sampling probabilities p(t), t = 0..T-1: exported as the sum of p over each of `buckets`
   * contiguous ranges of ~T/buckets timesteps (fewer buckets when T < buckets).
   */
  setSamplingWeights(p: ArrayLike<number>, buckets = 20): void {
    const T = p.length;
    const n = Math.max(1, Math.min(Math.floor(buckets), T));
    const width = String(n - 1).length;
    this.samplingWeight.reset();
    if (T === 0) return;
    for (let b = 0; b < n; b++) {
      const from = Math.floor((b * T) / n);
      const to = Math.floor(((b + 1) * T) / n);
      let sum = 0;
      for (let t = from; t < to; t++) sum += p[t] ?? 0;
      this.samplingWeight.set({ bucket: String(b).padStart(width, '0'), t_from: String(from) }, sum);
    }
  }

  /** Remembers the host of a worker; a changed host drops the series of the old one. */
  private trackHost(w: WorkerRef): void {
    const old = this.hosts.get(w.id);
    if (old !== undefined && old !== w.host) this.forgetWorker(w.id);
    this.hosts.set(w.id, w.host);
  }

  /** Removes every per-worker series of worker `id`. */
  private forgetWorker(id: string): void {
    const host = this.hosts.get(id);
    if (host === undefined) return;
    const labels = { worker: id, host };
    this.heartbeatAge.remove(labels);
    this.workerSamplesPerSecond.remove(labels);
    for (const phase of PHASES) this.workerStepSeconds.remove({ ...labels, phase });
    this.allreduceBytes.remove({ worker: id });
    this.busbw.remove({ worker: id });
    this.hosts.delete(id);
    this.workerStep.delete(id);
  }

  /** Forgets the step history (the next report's step is taken as the current one). */
  private restartSteps(): void {
    this.lastStep = -1;
    this.lastEvalStep = -1;
    this.lastStepMs = -Infinity;
    this.steps.clear();
  }

  /** ema_sync_lag_steps = last step − EMA step, once both are known. */
  private updateEmaLag(): void {
    if (this.lastStep >= 0 && this.lastEmaStep >= 0) this.emaLag.set(this.lastStep - this.lastEmaStep);
  }

  /**
   * Adds a report's examples to its step's record. The time of a step is that of its last report
   * before a newer step began (its commit); late reports of steps no longer (or never) tracked are dropped.
   */
  private recordExamples(step: number, examples: number, nowMs: number): void {
    let newest = -Infinity;
    for (const k of this.steps.keys()) newest = Math.max(newest, k);
    let rec = this.steps.get(step);
    if (rec === undefined) {
      if (step < newest) return; // a late report of a step already pruned (or never seen)
      rec = { examples: 0, lastMs: nowMs };
      this.steps.set(step, rec);
    }
    rec.examples += increment(examples);
    if (step >= newest) rec.lastMs = Math.max(rec.lastMs, nowMs);
  }

  /**
   * samples/s = Σ examples of steps (a, b] / (t_b − t_a): b = newest complete step (a newer one has
   * started), a = newest step at least the window before b (else the oldest known); 0 once no step
   * completed for a window. Keeps the previous value while fewer than two steps are complete.
   */
  private updateRate(nowMs: number): void {
    const keys = [...this.steps.keys()].sort((x, y) => x - y);
    const complete = keys.slice(0, -1); // the newest step may still miss reports
    const b = complete[complete.length - 1];
    const newest = keys[keys.length - 1];
    const newestRec = newest === undefined ? undefined : this.steps.get(newest);
    if (newestRec !== undefined && nowMs - newestRec.lastMs > RATE_WINDOW_MS) {
      this.samplesPerSecond.set(0);
      return;
    }
    if (b === undefined || complete.length < 2) return;
    const tb = this.steps.get(b)?.lastMs ?? 0;
    let ai = 0;
    for (let i = complete.length - 2; i >= 0; i--) {
      const ta = this.steps.get(complete[i] ?? -1)?.lastMs ?? tb;
      if (tb - ta >= RATE_WINDOW_MS) {
        ai = i;
        break;
      }
    }
    // Prune what precedes the anchor step a.
    for (let i = 0; i < ai; i++) this.steps.delete(complete[i] ?? -1);
    const a = complete[ai] ?? b;
    const ta = this.steps.get(a)?.lastMs ?? tb;
    if (tb <= ta) return;
    let examples = 0;
    for (let i = ai + 1; i < complete.length; i++)
      examples += this.steps.get(complete[i] ?? -1)?.examples ?? 0;
    this.samplesPerSecond.set((examples * 1000) / (tb - ta));
  }
}

/** Cumulative ring counters as the ring reports them (since the ring was created). */
export interface RingCounters {
  bytesSent: number;
  bytesReceived: number;
  /** Frames dropped, by reason. */
  dropped: Record<string, number>;
}

/** Metrics of one worker process. */
export class WorkerMetrics {
  readonly registry: Registry;

  private readonly step: Gauge;
  private readonly loss: Gauge;
  private readonly gradNorm: Gauge;
  private readonly lr: Gauge;
  private readonly stepSeconds: Gauge<'phase'>;
  private readonly stepDuration: Histogram;
  private readonly samplesPerSecond: Gauge;
  private readonly examples: Counter;
  private readonly allreduceBytes: Counter;
  private readonly busbw: Gauge;
  private readonly generation: Gauge;
  private readonly rank: Gauge;
  private readonly worldSize: Gauge;
  private readonly bytesSent: Counter;
  private readonly bytesReceived: Counter;
  private readonly dropped: Counter<'reason'>;

  /** Last cumulative values seen from the ring (to turn them into counter increments). */
  private prev: { bytesSent: number; bytesReceived: number; dropped: Map<string, number> } = {
    bytesSent: 0,
    bytesReceived: 0,
    dropped: new Map(),
  };

  /** `job`, `workerId`: values of the constant `job` and `worker` labels. */
  constructor(job: string, workerId: string) {
    this.registry = newRegistry({ job, worker: workerId });
    const registers = [this.registry];
    const gauge = <L extends string = never>(name: string, help: string, labelNames: L[] = []): Gauge<L> =>
      new Gauge<L>({ name: PREFIX + name, help, labelNames, registers });
    const counter = <L extends string = never>(
      name: string,
      help: string,
      labelNames: L[] = [],
    ): Counter<L> => new Counter<L>({ name: PREFIX + name, help, labelNames, registers });

    this.step = gauge('local_step', 'Last step this worker completed.');
    this.loss = gauge('local_loss', 'Loss of the last step.');
    this.gradNorm = gauge('local_grad_norm', 'Gradient norm of the last step.');
    this.lr = gauge('local_learning_rate', 'Learning rate of the last step.');
    this.stepSeconds = gauge('local_step_seconds', 'Time of the last step by phase (seconds).', ['phase']);
    this.stepDuration = new Histogram({
      name: PREFIX + 'local_step_duration_seconds',
      help: 'Step time (seconds).',
      buckets: STEP_BUCKETS,
      registers,
    });
    this.samplesPerSecond = gauge('local_samples_per_second', 'Examples per second of the last step.');
    this.examples = counter('local_examples_total', 'Examples trained on.');
    this.allreduceBytes = counter('local_allreduce_bytes_total', 'Bytes all-reduced.');
    this.busbw = gauge('local_allreduce_busbw_gbps', 'All-reduce bus bandwidth of the last step (GB/s).');
    this.generation = gauge('local_generation', 'Generation of the ring this worker is in.');
    this.rank = gauge('local_rank', 'Rank of this worker in the ring.');
    this.worldSize = gauge('local_world_size', 'World size of the ring this worker is in.');
    this.bytesSent = counter('local_ring_bytes_sent_total', 'Bytes sent on the ring.');
    this.bytesReceived = counter('local_ring_bytes_received_total', 'Bytes received on the ring.');
    this.dropped = counter('local_ring_dropped_frames_total', 'Ring frames dropped, by reason.', ['reason']);
  }

  /** One completed step of this worker (times in ms, as reported to the coordinator). */
  /** Relabels this worker's series with the job and worker id the coordinator gave at registration. */
  identify(job: string, workerId: string): void {
    this.registry.setDefaultLabels({ job, worker: workerId });
  }

  onStep(r: StepRecord): void {
    const sec = phaseSeconds(r);
    this.step.set(r.step);
    this.loss.set(r.loss);
    this.gradNorm.set(r.gradNorm);
    this.lr.set(r.lr);
    for (const phase of PHASES) this.stepSeconds.set({ phase }, sec[phase]);
    if (Number.isFinite(sec.total) && sec.total >= 0) this.stepDuration.observe(sec.total);
    if (r.stepMs > 0) this.samplesPerSecond.set(r.examples / sec.total);
    this.examples.inc(increment(r.examples));
    this.allreduceBytes.inc(increment(r.allreduceBytes));
    this.busbw.set(r.allreduceBusbwGbps);
    this.generation.set(r.generation);
    this.rank.set(r.rank);
    this.worldSize.set(r.worldSize);
  }

  /**
   * Cumulative counters of the ring (bytes, dropped frames by reason). A value lower than the last
   * one means a new ring (counting from 0 again): its whole value is added.
   */
  onRingCounters(c: RingCounters): void {
    const delta = (now: number, before: number): number => increment(now >= before ? now - before : now);
    this.bytesSent.inc(delta(c.bytesSent, this.prev.bytesSent));
    this.bytesReceived.inc(delta(c.bytesReceived, this.prev.bytesReceived));
    const dropped = new Map<string, number>();
    for (const [reason, n] of Object.entries(c.dropped)) {
      this.dropped.inc({ reason }, delta(n, this.prev.dropped.get(reason) ?? 0));
      dropped.set(reason, n);
    }
    this.prev = { bytesSent: c.bytesSent, bytesReceived: c.bytesReceived, dropped };
  }
}

/** An HTTP server of `registry`; `port`: the port it listens on; `close()` stops it. */
export interface MetricsServer {
  port: number;
  close(): Promise<void>;
}

/** Splits "host:port" (IPv6 hosts in brackets: "[::1]:9464"; port 0 = any free port). */
function parseListen(listen: string): { host: string; port: number } {
  const i = listen.lastIndexOf(':');
  if (i < 0) throw new Error(`metrics listen address "${listen}" is not host:port`);
  const host = listen.slice(0, i).replace(/^\[(.*)\]$/, '$1');
  const portText = listen.slice(i + 1);
  const port = Number(portText);
  if (portText === '' || !Number.isInteger(port) || port < 0 || port > 65535)
    throw new Error(`metrics listen address "${listen}" has no valid port`);
  return { host: host === '' ? '0.0.0.0' : host, port };
}

/**
 * Serves `registry` over HTTP on `listen` ("host:port", port 0 = any): GET /metrics (exposition
 * text), GET /healthz ("ok"), 404 otherwise. Resolves once listening.
 */
export async function serveMetrics(registry: Registry, listen: string): Promise<MetricsServer> {
  const { host, port } = parseListen(listen);
  const handle = async (req: IncomingMessage, res: ServerResponse): Promise<void> => {
    const path = (req.url ?? '/').split('?')[0];
    const get = req.method === 'GET' || req.method === 'HEAD';
    if (get && path === '/metrics') {
      try {
        const body = await registry.metrics();
        res.writeHead(200, { 'Content-Type': registry.contentType }).end(body);
      } catch (e) {
        res.writeHead(500, { 'Content-Type': 'text/plain' }).end(`${String(e)}\n`);
      }
    } else if (get && path === '/healthz') {
      res.writeHead(200, { 'Content-Type': 'text/plain' }).end('ok');
    } else {
      res.writeHead(404, { 'Content-Type': 'text/plain' }).end('not found\n');
    }
  };
  const server = createServer((req, res) => void handle(req, res));
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => {
      server.off('error', reject);
      resolve();
    });
  });
  return {
    port: (server.address() as AddressInfo).port,
    close: () =>
      new Promise<void>((resolve, reject) => {
        server.close((err) => (err ? reject(err) : resolve()));
        server.closeAllConnections();
      }),
  };
}
