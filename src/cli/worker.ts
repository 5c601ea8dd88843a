/** `ringdiff worker`: one training process of a distributed job (see src/worker/worker.ts). */
import { hostname, cpus } from 'node:os';
import { loadConfig } from '../config/load.js';
import { initBackend } from '../model/backend/index.js';
import { Worker, FatalWorkerError } from '../worker/worker.js';
import { WorkerMetrics, serveMetrics, type MetricsServer } from '../telemetry/metrics.js';
import { createLogger } from '../util/log.js';
import { watchParent } from '../util/parent.js';
import { clientTls, joinToken } from '../config/credentials.js';

export interface WorkerCliOptions {
  coordinator: string;
  config?: string;
  set?: string[];
  dataRoot?: string;
  fetchShards?: boolean;
  ringBind: string;
  ringAdvertise?: string;
  host?: string;
  metrics?: string;
  backend?: string;
  pretty?: boolean;
  retryFor: number;
  exitWithParent?: boolean;
}

/** Runs a worker until its job finishes or is stopped; the exit code. */
export async function runWorker(o: WorkerCliOptions): Promise<number> {
  // The job config comes from the coordinator; the local config only supplies the token and TLS.
  const local = loadConfig(o.config, o.set ?? []);
  const token = joinToken(local);
  const tls = clientTls(local);
  let worker: Worker | null = null;
  const log = createLogger({
    job: local.run.name,
    pretty: o.pretty ?? false,
    base: { role: 'worker', pid: process.pid },
    mixin: () => (worker ? { step: worker.step, ...worker.info } : {}),
  });
  const backend = await initBackend(o.backend, { quiet: true });
  const host = o.host ?? hostname();
  let metrics: WorkerMetrics | null = null;
  let metricsServer: MetricsServer | null = null;
  worker = new Worker({
    coordinator: o.coordinator,
    token,
    tls,
    ringBind: o.ringBind,
    ...(o.ringAdvertise ? { ringAdvertise: o.ringAdvertise } : {}),
    host,
    ...(o.dataRoot ? { dataRoot: o.dataRoot } : {}),
    fetchShards: o.fetchShards ?? false,
    backend: backend.chosen,
    device: `${cpus()[0]?.model ?? 'cpu'} (${backend.chosen})`,
    log,
    retryForMs: o.retryFor * 1000,
    events: {
      onRegistered: (job, id) => metrics?.identify(job, id),
      onStep: (r) => metrics?.onStep(r),
      onRing: (ring) => metrics?.onRingCounters(ring.stats()),
    },
  });
  if (o.metrics) {
    metrics = new WorkerMetrics(local.run.name, `${host}:${process.pid}`);
    metricsServer = await serveMetrics(metrics.registry, o.metrics);
  }
  // SIGTERM (scancel, a pod's termination, systemd, the parent's exit): leave cooperatively. The
  // coordinator stops the job with a final checkpoint when the others cannot go on without this
  // worker (every process of a cancelled job gets SIGTERM at once), else releases it at once. The
  // worker keeps its part until then, and exits at the latest after cluster.stop_grace_s.
  let stopping = false;
  const onSignal = (why: string) => {
    if (stopping) {
      log.info({ signal: why }, 'already leaving');
      return;
    }
    stopping = true;
    const grace = worker?.stopGraceS ?? local.cluster.stop_grace_s;
    log.warn({ signal: why, grace_s: grace }, 'asked to stop: leaving the job once the coordinator allows');
    setTimeout(() => {
      log.warn({ grace_s: grace }, 'grace period over: leaving the job now');
      process.exit(143);
    }, grace * 1000).unref();
    worker?.leave(why).then(
      (jobStops) =>
        log.info(jobStops ? 'the job stops: waiting for its STOP' : 'released: the ring re-forms without us'),
      (e: unknown) =>
        log.warn(
          { error: (e as Error).message },
          'could not tell the coordinator; leaving at the grace deadline',
        ),
    );
  };
  const onSigterm = () => onSignal('SIGTERM');
  process.on('SIGTERM', onSigterm);
  const unwatch = o.exitWithParent ? watchParent(() => onSignal('parent exited')) : () => {};
  process.on('SIGINT', () =>
    log.info('SIGINT ignored: the coordinator stops the job (launch forwards Ctrl-C to it)'),
  );
  try {
    const outcome = await worker.run();
    log.info({ outcome }, 'worker done');
    // Released from a running job on request: it goes on without us (shell convention for SIGTERM).
    return outcome === 'left' ? 143 : 0;
  } catch (e) {
    if (e instanceof FatalWorkerError) {
      log.error({ error: e.message }, 'worker failed');
      throw e;
    }
    throw e;
  } finally {
    unwatch();
    process.off('SIGTERM', onSigterm);
    await metricsServer?.close();
  }
}
