/** `ringdiff worker`: one training process of a distributed job (see src/worker/worker.ts). */
import { hostname, cpus } from 'node:os';
import { loadConfig } from '../config/load.js';
import { initBackend } from '../model/backend/index.js';
import { Worker, FatalWorkerError } from '../worker/worker.js';
import { WorkerMetrics, serveMetrics, type MetricsServer } from '../telemetry/metrics.js';
import { createLogger } from '../util/log.js';
import { clientTls, joinToken } from './coordinator.js';

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
  let stopping = false;
  const onSignal = () => {
    if (stopping) process.exit(130);
    stopping = true;
    log.warn('signal: leaving the job (the coordinator re-forms the ring without this worker)');
    process.exit(143);
  };
  process.on('SIGTERM', onSignal);
  process.on('SIGINT', () =>
    log.info('SIGINT ignored: the coordinator stops the job (launch forwards Ctrl-C to it)'),
  );
  try {
    const outcome = await worker.run();
    log.info({ outcome }, 'worker done');
    return 0;
  } catch (e) {
    if (e instanceof FatalWorkerError) {
      log.error({ error: e.message }, 'worker failed');
      throw e;
    }
    throw e;
  } finally {
    await metricsServer?.close();
  }
}
