/**
 * A worker process of a distributed job: registers with the coordinator, heartbeats, follows the
 * stream of plans and, per generation, opens a ring, syncs state with its peers and runs fused
 * data-parallel steps on its shard of each global batch (docs/design.md §3).
 *
 * State is only changed by a completed step's commit (or by a sync at the start of a generation),
 * so any failure — a dead peer, a new plan, a lost coordinator — leaves it at its last commit.
 */
import { createHash } from 'node:crypto';
import { performance } from 'node:perf_hooks';
import * as zmq from 'zeromq';
import { parseConfigText, validateConfig } from '../config/load.js';
import { requireResolved, type ResolvedConfig } from '../config/resolve.js';
import type { Config } from '../config/schema.js';
import type { Dataset } from '../data/dataset.js';
import { openDataset, resolveSpec } from '../data/spec.js';
import { DEFAULT_DATASET_MODULE, Prefetcher, type LoadedShard } from '../data/prefetch.js';
import { Ring } from '../allreduce/ring.js';
import { RingError } from '../allreduce/errors.js';
import { paramsToHost, sortedNames } from '../model/params.js';
import type { Logger } from '../util/log.js';
import { ringdiff } from '../proto-gen/coordinator.js';
import { CoordinatorClient } from './client.js';
import { Heartbeats } from './heartbeat.js';
import { credentialsFrom, type TlsPem } from '../config/credentials.js';
import { createJob, resetJob, type Job } from '../job/job.js';
import { emaSnapshot, restoreSnapshot, snapshot } from '../job/snapshot.js';
import { fusedStep } from '../job/step.js';
import { Evaluation } from '../job/evaluate.js';
import { syncGeneration, type Kept } from './sync.js';
import { decodeSnapshot } from '../job/transfer.js';

import pb = ringdiff.v1;
import { freePort } from '../util/net.js';
import { ReportQueue, StepAverages } from './reports.js';
import { PushRefused, StatePusher } from './push.js';
import { toWireReport, type StepRecord } from '../telemetry/step-record.js';

export interface WorkerOptions {
  /** Coordinator address, host:port. */
  coordinator: string;
  token: string;
  /** TLS material for the coordinator channel (null: plaintext). */
  tls?: TlsPem | null;
  /** Endpoint the ring binds: tcp://HOST:PORT (PORT 0 = a free port) or ipc://PATH. */
  ringBind: string;
  /** Endpoint peers connect to (default: the bound one, with 0.0.0.0 replaced by `host`). */
  ringAdvertise?: string;
  /** Host identity (ring order puts workers of a host next to each other). */
  host: string;
  /** Resolves relative dataset paths of the job config. */
  dataRoot?: string;
  /** Read shards from the coordinator even if the dataset is readable here. */
  fetchShards?: boolean;
  backend: string;
  device: string;
  log: Logger;
  /** Keep retrying a lost coordinator for this long before giving up, ms. */
  retryForMs: number;
  events?: WorkerEvents;
}

/** What a worker tells its observers (its metrics). */
export interface WorkerEvents {
  /** Registered (again): the job's name and this worker's id for the coordinator. */
  onRegistered?(jobId: string, workerId: string): void;
  onStep?(r: StepRecord): void;
  onRing?(ring: Ring): void;
}

/** How a worker's run ended. */
export type WorkerOutcome = 'finished' | 'stopped' | 'left';

/** A problem no retry can fix (bad token, bad config, diverged weights): the worker exits non-zero. */
export class FatalWorkerError extends Error {}

type SessionEnd = WorkerOutcome | 'fenced' | 'lost';

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

/** A dataset this worker cannot read: it knows the shape and size; shards come from FetchShard. */
function remoteDataset(spec: string, shape: number[], size: number, numClasses: number): Dataset {
  return {
    spec,
    size,
    shape,
    numClasses,
    get: () => {
      throw new Error(`${spec}: not readable on this worker (shards come from the coordinator)`);
    },
  };
}

/** A checksum of the weights, as four exact float32 integers (24 bits each) for an all-gather. */
export async function weightsChecksum(job: Job): Promise<{ hex: string; floats: Float32Array }> {
  const h = createHash('sha256');
  const host = await paramsToHost(job.state.params);
  for (const n of sortedNames(job.state.params)) {
    const t = host.get(n);
    if (t) h.update(new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.byteLength));
  }
  const d = h.digest();
  const floats = new Float32Array(4);
  for (let i = 0; i < 4; i++) floats[i] = d.readUIntBE(3 * i, 3);
  return { hex: d.toString('hex'), floats };
}

/** One worker process; `run()` resolves when the job finished or was stopped. */
export class Worker {
  private readonly client: CoordinatorClient;
  private readonly curve = zmq.curveKeyPair();
  private bind = '';
  private advertise = '';
  private workerId = '';
  private jobId = '';
  private cfg: ResolvedConfig | null = null;
  private job: Job | null = null;
  private loader: Prefetcher | null = null;
  private kept: Kept | null = null;
  private ring: Ring | null = null;
  /** Plans not yet acted on (only the newest matters) and who waits for one. */
  private pending: pb.Plan | null = null;
  private streamEnded = false;
  private wake: (() => void) | null = null;
  private fenced = false;
  private readonly pusher: StatePusher;
  private readonly reports: ReportQueue;
  private generation = 0;
  private rank = -1;
  private heartbeats: Heartbeats | null = null;
  /** Set by `leave()`: once out of the ring (released or stopped), run() returns instead of rejoining. */
  private leaving = false;
  /** Loaded once per process at the first plan (eval.every > 0): the feature net, the reference. */
  private evaluation: Evaluation | null = null;
  private readonly log: Logger;

  constructor(private readonly o: WorkerOptions) {
    this.client = new CoordinatorClient(o.coordinator, o.token, credentialsFrom(o.tls ?? null));
    this.log = o.log;
    this.reports = new ReportQueue((r) => this.client.report(r), this.log);
    this.pusher = new StatePusher(
      this.client,
      {
        workerId: () => this.workerId,
        generation: () => this.generation,
        fenced: () => this.fenced,
        interrupted: () => this.interrupted(),
      },
      this.log,
    );
  }

  /** Current step (for log lines). */
  get step(): number {
    return this.job?.state.step ?? -1;
  }

  get info(): { generation: number; rank: number } {
    return { generation: this.generation, rank: this.rank };
  }

  /** The job's cluster.stop_grace_s once registered (the coordinator's config), else null. */
  get stopGraceS(): number | null {
    return this.cfg?.cluster.stop_grace_s ?? null;
  }

  /**
   * Asks to leave the job (SIGTERM): the coordinator either stops the whole job — a STOP plan
   * follows, the step in flight is abandoned, rank 0 (possibly this worker) pushes the final state
   * — or releases this worker at once and re-forms the ring without it. Either way `run()` then
   * returns ('stopped' or 'left') instead of rejoining. Resolves with whether the job stops; throws
   * when the coordinator cannot be told (the caller's grace deadline still bounds the exit).
   */
  async leave(reason: string): Promise<boolean> {
    this.leaving = true;
    if (!this.workerId) throw new Error('not registered yet');
    const r = await this.client.leave({ workerId: this.workerId, reason });
    return r.jobStopping;
  }

  /** Runs until the job finishes or is stopped; throws FatalWorkerError on unrecoverable errors. */
  async run(): Promise<WorkerOutcome> {
    await this.resolveRingEndpoint();
    let lostSince: number | null = null;
    let backoff = 200;
    try {
      for (;;) {
        let end: SessionEnd;
        try {
          end = await this.session();
        } catch (e) {
          if (e instanceof FatalWorkerError) throw e;
          const code = (e as { code?: number }).code;
          if (code === 16 /* UNAUTHENTICATED */)
            throw new FatalWorkerError(`coordinator ${this.o.coordinator} refused the join token`);
          if (code === 9 /* FAILED_PRECONDITION */ && /finished/.test((e as Error).message))
            return 'finished';
          // The coordinator never numbered our last generation (it runs another job now, or
          // could not keep its counter on disk): we join as a newcomer.
          if (code === 3 /* INVALID_ARGUMENT */ && /last_generation:/.test((e as Error).message))
            this.generation = 0;
          this.log.warn({ error: (e as Error).message }, 'coordinator unreachable; retrying');
          end = 'lost';
        }
        if (end === 'finished' || end === 'stopped') return end;
        // Released by the coordinator after `leave()`: our plan stream ended on purpose.
        if (this.leaving) return 'left';
        // A lost plan stream may mean the coordinator went on without us (we were silent past the
        // heartbeat timeout: frozen, partitioned): then we are fenced just the same.
        if (end === 'lost' && (await this.fencedByCoordinator())) end = 'fenced';
        if (end === 'fenced') {
          // Out of the generation: our state may differ from the survivors' in the last bits.
          this.log.warn('fenced out of the job: discarding state and rejoining');
          this.discardState();
          lostSince = null;
          backoff = 200;
          continue;
        }
        lostSince ??= Date.now();
        if (Date.now() - lostSince > this.o.retryForMs)
          throw new FatalWorkerError(
            `coordinator ${this.o.coordinator} unreachable for ${Math.round(this.o.retryForMs / 1000)} s`,
          );
        await sleep(backoff);
        backoff = Math.min(5000, backoff * 2);
      }
    } finally {
      await this.closeRing();
      await this.pusher.idle();
      await this.loader?.close();
      this.client.close();
    }
  }

  private async resolveRingEndpoint(): Promise<void> {
    const m = /^tcp:\/\/(.+):(\d+)$/.exec(this.o.ringBind);
    if (m) {
      const host = m[1] as string;
      const port = Number(m[2]) === 0 ? await freePort(host === '*' ? '0.0.0.0' : host) : Number(m[2]);
      this.bind = `tcp://${host}:${port}`;
      const adv = host === '0.0.0.0' || host === '*' ? this.o.host : host;
      this.advertise = this.o.ringAdvertise ?? `tcp://${adv}:${port}`;
    } else if (this.o.ringBind.startsWith('ipc://')) {
      this.bind = this.o.ringBind;
      this.advertise = this.o.ringAdvertise ?? this.o.ringBind;
    } else {
      throw new FatalWorkerError(`--ring-bind ${this.o.ringBind}: expected tcp://HOST:PORT or ipc://PATH`);
    }
  }

  /**
   * Whether the coordinator we reach no longer counts our last registration while its job has
   * started a generation: it went on without us (we were frozen, cut off, or it restarted and the
   * others re-formed the ring first), so the steps we committed may have been abandoned and redone
   * by the others with another summation order — our state must not come back into the job. A
   * restarted coordinator still in its rendezvous (generation 0) adopts our state instead.
   * Unreachable: false (retry later; asked again before registering).
   */
  private async fencedByCoordinator(): Promise<boolean> {
    if (!this.workerId || !this.job || this.job.state.step === 0) return false;
    try {
      const r = await this.client.heartbeat({
        workerId: this.workerId,
        generation: this.generation,
        step: this.step,
      });
      return !r.member && r.generation > 0;
    } catch {
      return false;
    }
  }

  /** Discards the local training state (fenced): the next generation sends us the job's state. */
  private discardState(): void {
    if (this.job) resetJob(this.job);
    this.kept = null;
    // Our reports and snapshots may be of steps the others abandoned and redid.
    this.reports.clear();
    this.pusher.clear();
  }

  /** One registration: follows plans until the job ends, we are fenced, or the coordinator is lost. */
  private async session(): Promise<SessionEnd> {
    if (await this.fencedByCoordinator()) {
      this.log.warn('the job went on without us while the coordinator was unreachable: discarding state');
      this.discardState();
    }
    const reg = await this.client.register({
      host: this.o.host,
      backend: this.o.backend,
      device: this.o.device,
      ringEndpoint: this.advertise,
      curvePublicKey: this.curve.publicKey,
      committedStep: this.job ? this.job.state.step : -1,
      pid: process.pid,
      hasData: this.loader !== null,
      lastGeneration: this.generation,
    });
    this.workerId = reg.workerId;
    this.fenced = false;
    // Heartbeats first: opening the dataset and building the model can take longer than the timeout.
    const hb = this.startHeartbeats(reg.heartbeatIntervalMs);
    try {
      this.setUpJob(reg);
    } catch (e) {
      await hb.stop();
      throw e;
    }
    this.log.info({ worker: this.workerId, ring: this.advertise }, 'registered');
    this.o.events?.onRegistered?.(reg.jobId, reg.workerId);
    const stream = this.client.plans(this.workerId);
    this.pending = null;
    this.streamEnded = false;
    stream.on('data', (p: pb.Plan) => {
      this.pending = p;
      this.abortGeneration();
      this.wake?.();
    });
    const ended = () => {
      this.streamEnded = true;
      this.abortGeneration();
      this.wake?.();
    };
    stream.on('error', ended);
    stream.on('end', ended);
    try {
      for (;;) {
        const plan = await this.nextPlan();
        if (!plan) return this.fenced ? 'fenced' : 'lost';
        if (plan.kind === pb.PlanKind.FINISH) {
          this.log.info('job finished');
          return 'finished';
        }
        if (plan.kind === pb.PlanKind.STOP) {
          await this.closeRing();
          if (plan.rank === 0 && this.job)
            await this.pusher.push('shutdown', await snapshot(this.job), plan.generation);
          this.log.info('stopped by the coordinator');
          return 'stopped';
        }
        await this.runGeneration(plan);
        if (this.fenced) return 'fenced';
      }
    } finally {
      this.heartbeats = null;
      await hb.stop();
      stream.removeAllListeners();
      stream.on('error', () => {});
      stream.cancel();
    }
  }

  private setUpJob(reg: pb.RegisterReply): void {
    const cfg = requireResolved(
      validateConfig(parseConfigText(reg.configYaml, 'job config from the coordinator'), 'job config'),
      'job config from the coordinator',
    );
    if (this.job && this.jobId === reg.jobId) return;
    if (this.job) {
      this.log.warn({ job: reg.jobId }, 'the coordinator runs another job: starting over');
      this.job = null;
    }
    this.jobId = reg.jobId;
    this.cfg = cfg;
    const spec = resolveSpec(cfg.data.dataset, this.o.dataRoot);
    const data = { ...cfg.data, dataset: spec };
    let dataset: Dataset;
    let local = true;
    try {
      if (this.o.fetchShards) throw new Error('--fetch-shards');
      dataset = openDataset(data);
    } catch (e) {
      local = false;
      this.log.warn(
        { error: (e as Error).message },
        'dataset not readable here: shards come from the coordinator',
      );
      dataset = remoteDataset(spec, reg.dataShape, Number(reg.datasetSize), cfg.model.num_classes);
    }
    if (reg.dataShape.length > 0 && reg.dataShape.join(',') !== dataset.shape.join(','))
      throw new FatalWorkerError(
        `${spec}: examples have shape [${dataset.shape.join(', ')}] here, [${reg.dataShape.join(', ')}] on the coordinator`,
      );
    this.job = createJob({ ...cfg, data }, dataset);
    this.kept = null;
    this.loader = local
      ? new Prefetcher({
          data,
          seed: cfg.run.seed,
          globalBatch: this.job.batches.B,
          module: DEFAULT_DATASET_MODULE,
        })
      : null;
  }

  private startHeartbeats(intervalMs: number): Heartbeats {
    const hb = new Heartbeats(
      {
        address: this.o.coordinator,
        token: this.o.token,
        tls: this.o.tls ?? null,
        workerId: this.workerId,
        secret: this.client.workerSecret,
        intervalMs,
      },
      () => {
        if (this.fenced) return;
        this.fenced = true;
        this.streamEnded = true;
        this.abortGeneration();
        this.wake?.();
      },
    );
    hb.update(this.generation, this.step);
    this.heartbeats = hb;
    return hb;
  }

  private nextPlan(): Promise<pb.Plan | null> {
    return new Promise((resolve) => {
      const check = () => {
        if (this.pending) {
          const p = this.pending;
          this.pending = null;
          this.wake = null;
          resolve(p);
        } else if (this.streamEnded) {
          this.wake = null;
          resolve(null);
        } else this.wake = check;
      };
      check();
    });
  }

  /** A newer plan (or the end of the stream) makes the running generation stop at once. */
  private abortGeneration(): void {
    const ring = this.ring;
    if (ring && !ring.isClosed) void ring.close().catch(() => {});
  }

  private async closeRing(): Promise<void> {
    const ring = this.ring;
    this.ring = null;
    if (ring && !ring.isClosed) await ring.close().catch(() => {});
  }

  /** The generation must end before its next step: a new plan, the stream's end, fencing, or leaving. */
  private interrupted(): boolean {
    // Leaving: no new step starts; the coordinator's STOP or release (or the grace deadline) follows.
    return this.pending !== null || this.streamEnded || this.fenced || this.leaving;
  }

  private async openRing(plan: pb.Plan, cfg: Config): Promise<Ring> {
    const n = plan.worldSize;
    const succ = plan.peers[(plan.rank + 1) % n];
    const pred = plan.peers[(plan.rank + n - 1) % n];
    if (!succ || !pred) throw new Error(`plan of generation ${plan.generation} lacks peers`);
    const curve = cfg.cluster.allreduce.encryption === 'curve';
    const deadline = Date.now() + 10000;
    for (;;) {
      try {
        return await Ring.open({
          jobId: this.jobId,
          rank: plan.rank,
          worldSize: n,
          generation: plan.generation,
          bindAddress: this.bind,
          successorAddress: succ.ringEndpoint ?? '',
          chunkBytes: cfg.cluster.allreduce.chunk_bytes,
          timeoutMs: cfg.cluster.ring_timeout_ms,
          // A worker closes its ring only when the generation is over (a new plan, FINISH, STOP):
          // no graceful barrier. It would keep this rank's socket bound for up to 2 s, long
          // enough for peers of the next generation to connect to it and lose their first frames.
          closeLingerMs: 0,
          compression: cfg.cluster.allreduce.compression,
          encryption: cfg.cluster.allreduce.encryption,
          // Frames without this generation's MAC are dropped (an older coordinator sends none).
          ...(plan.ringSecret.length > 0 ? { secret: plan.ringSecret } : {}),
          ...(curve
            ? {
                curve: {
                  publicKey: this.curve.publicKey,
                  secretKey: this.curve.secretKey,
                  successorPublicKey: succ.curvePublicKey ?? '',
                  allowedClientKeys: pred.curvePublicKey ?? '',
                },
              }
            : {}),
        });
      } catch (e) {
        // The previous generation's socket may still hold the address for a moment.
        if (!/in use/i.test((e as Error).message) || Date.now() > deadline) throw e;
        await sleep(100);
      }
    }
  }

  /** Runs the steps of one generation; returns when it ends (done, aborted, or a ring failure). */
  private async runGeneration(plan: pb.Plan): Promise<void> {
    const job = this.job;
    const cfg = this.cfg;
    if (!job || !cfg) throw new Error('no job');
    await this.closeRing();
    this.generation = plan.generation;
    this.rank = plan.rank;
    this.heartbeats?.update(plan.generation, this.step);
    if (plan.rank < 0) return; // not in this generation's ring: wait for the next plan
    const log = this.log;
    try {
      if (plan.stateSource === 'coordinator' && job.state.step < Number(plan.checkpointStep)) {
        const buf = await this.client.fetchState(this.workerId, plan.generation);
        restoreSnapshot(job, decodeSnapshot(buf, 'state from the coordinator'));
        this.kept = null;
        log.info({ step: job.state.step }, 'state fetched from the coordinator');
      }
      if (this.interrupted()) return;
      const ring = await this.openRing(plan, cfg);
      this.ring = ring;
      this.o.events?.onRing?.(ring);
      if (this.interrupted()) return;
      // Peers open their rings within moments of each other (they got the same plan); a first
      // collective that takes much longer lost frames to a stale socket (see syncGeneration).
      const firstTimeoutMs = Math.min(
        cfg.cluster.ring_timeout_ms,
        Math.max(2000, Math.min(5000, cfg.cluster.heartbeat_timeout_ms)),
      );
      const sync = await syncGeneration(job, ring, this.kept, { firstTimeoutMs });
      log.info(
        {
          world: plan.worldSize,
          step: sync.step,
          root: sync.root,
          rolled_forward: sync.rolledForward,
          received_state: sync.receivedState,
        },
        'generation started',
      );
      if (sync.receivedState) this.kept = null;
      await this.reports.resend(this.workerId, plan.generation, () => this.interrupted());
      await this.trainLoop(plan, ring, log);
    } catch (e) {
      if (this.interrupted()) return; // a new plan closed the ring under us: expected
      if (e instanceof FatalWorkerError) throw e;
      if (e instanceof RingError || /ring|closed/i.test((e as Error).message)) {
        log.warn({ error: (e as Error).message }, 'ring failed; waiting for a new generation');
        await this.client
          .reportFailure({
            workerId: this.workerId,
            generation: plan.generation,
            step: job.state.step,
            suspectRank: -1,
            reason: (e as Error).message,
          })
          .catch(() => {});
        return;
      }
      throw e;
    }
  }

  private async trainLoop(plan: pb.Plan, ring: Ring, log: Logger): Promise<void> {
    const job = this.job as Job;
    const cfg = job.cfg;
    const total = cfg.train.steps;
    const shardRange = plan.shards[plan.rank];
    if (!shardRange)
      throw new Error(`plan of generation ${plan.generation} has no shard for rank ${plan.rank}`);
    const range = { from: shardRange.from ?? 0, to: shardRange.to ?? 0 };
    // The plan splits the job's global batch; a plan for another batch size is not ours to run.
    const planB = plan.shards.at(-1)?.to ?? 0;
    if (planB !== job.batches.B)
      throw new FatalWorkerError(
        `plan of generation ${plan.generation} splits a global batch of ${planB}, this job's is ${job.batches.B}`,
      );
    log.info(
      { global_batch: job.batches.B, world: plan.worldSize, shard: [range.from, range.to] },
      'shard of each global batch',
    );
    this.loader?.drop();
    if (cfg.eval.every > 0 && !this.evaluation) {
      try {
        this.evaluation = new Evaluation(cfg, job.model.dataShape);
      } catch (e) {
        throw new FatalWorkerError((e as Error).message);
      }
    }
    const acc = new StepAverages();
    while (job.state.step < total) {
      // fusedStep ends with a turn of the event loop: with nothing else to wait for (a world of one,
      // data already prefetched) steps would otherwise run back to back on microtasks, and the plan
      // stream, signals, reports and pushes would wait (a new generation or a STOP seen steps late).
      if (this.interrupted()) return;
      const s = job.state.step;
      const t0 = performance.now();
      const shard = await this.shard(plan, s, range.from, range.to);
      if (s + 1 < total) this.loader?.request(s + 1, range.from, range.to);
      const dataWaitMs = performance.now() - t0;
      const sent0 = ring.stats().bytesSent;
      const r = await fusedStep(job, shard, (buf) => ring.allReduce(buf));
      this.kept = { step: s, reduced: r.reduced };
      this.heartbeats?.update(plan.generation, r.step);
      if (!Number.isFinite(r.loss))
        throw new FatalWorkerError(`loss is ${r.loss} at step ${r.step}: training diverged`);
      const bytes = ring.stats().bytesSent - sent0;
      const arSec = r.timings.allreduceMs / 1000;
      const N = plan.worldSize;
      const busbw = N > 1 && arSec > 0 ? ((r.reduced.byteLength / arSec) * (2 * (N - 1))) / N / 1e9 : 0;
      let checksum = '';
      // The step is committed whatever happens to the checksum round: it is reported either way.
      let verifyFailed: unknown = null;
      if (plan.verifyEvery > 0 && r.step % plan.verifyEvery === 0) {
        try {
          checksum = await this.verify(ring, r.step);
        } catch (e) {
          if (e instanceof FatalWorkerError) throw e;
          verifyFailed = e;
        }
      }
      // The evaluation round, like the checksum round, runs between committed steps on every rank
      // at once (it holds the next step exactly as long as it takes). It is no part of the training
      // state: when the ring fails during it, this step's evaluation is skipped, never redone.
      let evalMetrics: Record<string, number> | null = null;
      let evalFailed: unknown = null;
      if (!verifyFailed && this.evaluation?.due(r.step, total)) {
        const t1 = performance.now();
        try {
          evalMetrics = await this.evaluation.run(
            { cfg, model: job.model, ema: job.state.ema, schedule: job.schedule },
            plan.rank,
            N,
            (part) => ring.allGather(part),
            (msg) => log.warn({ step: r.step }, msg),
          );
        } catch (e) {
          if (e instanceof FatalWorkerError) throw e;
          log.warn({ step: r.step, error: (e as Error).message }, 'evaluation skipped: the ring failed');
          evalFailed = e;
        }
        if (evalMetrics)
          log.info({ step: r.step, ms: Math.round(performance.now() - t1), ...evalMetrics }, 'evaluation');
      }
      const rec: StepRecord = {
        step: r.step,
        generation: plan.generation,
        rank: plan.rank,
        worldSize: N,
        loss: r.loss,
        lossQuarters: r.lossQuarters,
        gradNorm: r.gradNorm,
        lr: r.lr,
        dataWaitMs,
        forwardBackwardMs: r.timings.forwardBackwardMs,
        allreduceMs: r.timings.allreduceMs,
        optimizerMs: r.timings.optimizerMs,
        stepMs: r.ms + dataWaitMs,
        allreduceBytes: bytes,
        allreduceBusbwGbps: busbw,
        examples: shard.n,
        ...(evalMetrics ? { evalMetrics } : {}),
      };
      this.o.events?.onStep?.(rec);
      this.o.events?.onRing?.(ring);
      this.reports.post(toWireReport(rec, this.workerId, checksum));
      if (verifyFailed) throw verifyFailed;
      if (evalFailed) throw evalFailed;
      acc.add(rec);
      if (r.step % cfg.train.log_every === 0)
        log.info({ step: r.step, loss: r.loss, ...acc.flush() }, 'step');
      if (plan.rank === 0 && r.step < total) {
        const every = cfg.train.checkpoint_every;
        if (every > 0 && r.step % every === 0)
          this.pusher.enqueue('checkpoint', await snapshot(job), plan.generation);
        else if (r.step % cfg.train.ema_sync_every === 0)
          this.pusher.enqueue('ema-sync', await emaSnapshot(job), plan.generation);
      }
    }
    // The last step is committed everywhere that got here: rank 0 hands the final state over.
    if (plan.rank === 0 && !this.interrupted()) {
      await this.pusher.idle();
      try {
        await this.pusher.pushFinal(await snapshot(job), plan.generation);
      } catch (e) {
        if (e instanceof PushRefused)
          throw new FatalWorkerError(`coordinator ${this.o.coordinator} refused the join token`);
        throw e;
      }
    }
  }

  /** Compares the weights' checksum across the ring; a difference is fatal (silent drift is worse). */
  private async verify(ring: Ring, step: number): Promise<string> {
    const c = await weightsChecksum(this.job as Job);
    const all = await ring.allGather(c.floats);
    all.forEach((a, r) => {
      if (a.some((v, i) => v !== c.floats[i]))
        throw new FatalWorkerError(
          `weights diverged at step ${step}: rank ${r}'s checksum differs from rank ${ring.rank}'s`,
        );
    });
    return c.hex;
  }

  private async shard(plan: pb.Plan, step: number, from: number, to: number): Promise<LoadedShard> {
    if (this.loader) return this.loader.get(step, from, to);
    const r = await this.client.fetchShard({
      workerId: this.workerId,
      generation: plan.generation,
      step,
      from,
      to,
    });
    const x0 = new Float32Array(r.x0.buffer.slice(r.x0.byteOffset, r.x0.byteOffset + r.x0.byteLength));
    return { x0, labels: r.labels.length > 0 ? Int32Array.from(r.labels) : null, from, n: to - from };
  }
}
