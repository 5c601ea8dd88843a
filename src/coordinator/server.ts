/**
 * The coordinator's gRPC server: authentication, validation, membership and the plan streams.
 * Training-state handling (checkpoints, EMA, sampler table) plugs in through `CoordinatorHooks`.
 */
import { randomBytes, randomUUID, timingSafeEqual } from 'node:crypto';
import * as grpc from '@grpc/grpc-js';
import { CoordinatorService } from '../proto-gen/coordinator-grpc.js';
import { ringdiff } from '../proto-gen/coordinator.js';
import { Membership, type Generation, type Member } from './membership.js';
import { shardPlan } from '../data/shard.js';
import type { Dataset } from '../data/dataset.js';
import { GlobalBatches } from '../data/batches.js';
import { readShard } from '../data/prefetch.js';
import { ChunkAssembler, toChunks } from '../job/transfer.js';
import { fromWireReport, type StepRecord } from '../telemetry/step-record.js';
import { PUSH_REASONS, type CentralState, type PushReason } from './state.js';
import type { Config } from '../config/schema.js';
import type { Logger } from '../util/log.js';
import { RpcError } from './rpc-error.js';
import { WorkerCredentials } from './credentials.js';
import { GuardedListener, PROBATION_MS } from './listener.js';
import { GenerationLedger } from './generation-ledger.js';
import {
  FieldError,
  checkFailure,
  checkGenerationKnown,
  checkHeartbeat,
  checkInt,
  checkRegister,
  checkReport,
  checkWorkerId,
  checkLabel,
  MAX_REASON_BYTES,
} from './validate.js';

import pb = ringdiff.v1;

export { RpcError };

export interface CoordinatorOptions {
  jobId: string;
  token: string;
  configYaml: string;
  globalBatch: number;
  totalSteps: number;
  minWorkers: number;
  maxWorkers: number;
  heartbeatTimeoutMs: number;
  verifyEvery: number;
  /** Require a CURVE public key from every worker. */
  curve: boolean;
  log?: Logger;
  /** The job's state store, dataset and config: without them the server only does membership. */
  job?: { cfg: Config; state: CentralState; dataset: Dataset };
  /** Observers of what happens (metrics). */
  events?: CoordinatorEvents;
  /** HTTP/2 keepalive pings of the server, ms (default `KEEPALIVE_MS`; tests shorten it). */
  keepaliveMs?: { time: number; timeout: number };
  /** Time a new connection has to carry a call with the token before it is closed (ms, default `PROBATION_MS`). */
  probationMs?: number;
}

/**
 * The server pings every connection every `time` ms and drops one that does not answer within
 * `timeout`. Node's HTTP/2 server keeps the session (and file descriptor) of a peer that broke the
 * protocol (say, a frame longer than the maximum) open after that peer has gone, forever: this
 * reaps them. Workers need no keepalive (heartbeats and plan streams decide who is alive), so the
 * timeout is long enough for a worker whose event loop is busy in a long training step.
 */
export const KEEPALIVE_MS = { time: 2 * 60_000, timeout: 10 * 60_000 };

/** Rejections logged per method and status code per window; the rest are summed in one line. */
const REJECT_LOG_BURST = 20;
const REJECT_LOG_WINDOW_MS = 60_000;

/** What the coordinator tells its observers (the metrics module implements it). */
export interface CoordinatorEvents {
  onReport?(w: { id: string; host: string; rank: number }, r: StepRecord, nowMs: number): void;
  onGeneration?(generation: number, worldSize: number): void;
  onWorkerDeath?(reason: string): void;
  /** A leaving worker means the job must stop (see `leave`): the process should call `stop`. */
  onStopRequested?(why: string): void;
  onRejected?(method: string, code: string): void;
  onCheckpoint?(step: number, ms: number, bytes: number, nowMs: number): void;
  onEmaSync?(emaStep: number): void;
  /** The final checkpoint is written and every worker was told to exit. */
  onFinished?(): void;
}

/** Counters the metrics module exports. */
export interface CoordinatorCounters {
  rejected: Map<string, number>;
  generations: number;
}

/** A call as far as authentication needs it. */
interface CallInfo {
  metadata: grpc.Metadata;
  getPeer(): string;
}

/** Checks `authorization: Bearer <token>` in constant time. */
export function tokenMatches(metadata: grpc.Metadata, token: string): boolean {
  const got = metadata.get('authorization')[0];
  if (typeof got !== 'string' || !got.startsWith('Bearer ')) return false;
  const a = Buffer.from(got.slice(7));
  const b = Buffer.from(token);
  return a.length === b.length && timingSafeEqual(a, b);
}

/** The coordinator's server: one per job. */
export class CoordinatorServer {
  readonly membership: Membership;
  readonly counters: CoordinatorCounters = { rejected: new Map(), generations: 0 };
  private readonly server: grpc.Server;
  private listener: GuardedListener | null = null;
  private readonly credentials = new WorkerCredentials();
  /** The job's persisted generation ceiling (none for a server without a job). */
  private readonly ledger: GenerationLedger | null;
  private readonly streams = new Map<string, grpc.ServerWritableStream<pb.PlansRequest, pb.IPlan>>();
  private timer: NodeJS.Timeout | null = null;
  private finished = false;
  private stopping = false;
  private stopWaiters: Array<() => void> = [];
  /** Last step reported by any worker, with its loss (for status and metrics). */
  lastReport: pb.StepReport | null = null;
  /** Global samples/s, from the advance of the reported step over time (EWMA). */
  private rate = { step: -1, t: 0, sps: 0 };
  /** Per-worker samples/s from their last report. */
  private readonly workerSps = new Map<string, number>();
  /** Rejection log lines per method and code in the current window (see `reject`). */
  private readonly rejectLog = new Map<string, { since: number; logged: number; suppressed: number }>();

  constructor(readonly opts: CoordinatorOptions) {
    const keepalive = opts.keepaliveMs ?? KEEPALIVE_MS;
    this.server = new grpc.Server({
      'grpc.max_receive_message_length': 64 * 2 ** 20,
      'grpc.keepalive_time_ms': keepalive.time,
      'grpc.keepalive_timeout_ms': keepalive.timeout,
    });
    this.membership = new Membership(
      {
        minWorkers: opts.minWorkers,
        maxWorkers: opts.maxWorkers,
        heartbeatTimeoutMs: opts.heartbeatTimeoutMs,
      },
      () => randomUUID(),
    );
    this.ledger = opts.job ? GenerationLedger.open(opts.job.cfg.run.out_dir, opts.log) : null;
    // Generations are numbered above every one an earlier coordinator of the job may have published.
    if (this.ledger?.ceiling) this.membership.noteGeneration(this.ledger.ceiling);
    this.server.addService(CoordinatorService, {
      register: this.unary('Register', (r: pb.RegisterRequest, md) => this.register(r, md)),
      heartbeat: this.unary('Heartbeat', (r: pb.HeartbeatRequest, md) => this.heartbeat(r, md)),
      report: this.unary('Report', (r: pb.StepReport, md) => this.report(r, md)),
      reportFailure: this.unary('ReportFailure', (r: pb.FailureReport, md) => this.failure(r, md)),
      leave: this.unary('Leave', (r: pb.LeaveRequest, md) => this.leave(r, md)),
      status: this.unary('Status', () => this.status()),
      plans: (call: grpc.ServerWritableStream<pb.PlansRequest, pb.IPlan>) => this.plans(call),
      pushState: (
        call: grpc.ServerReadableStream<pb.StateChunk, pb.IPushStateReply>,
        cb: grpc.sendUnaryData<pb.IPushStateReply>,
      ) => this.pushState(call, cb),
      fetchState: (call: grpc.ServerWritableStream<pb.FetchStateRequest, pb.IStateChunk>) =>
        this.fetchState(call),
      fetchShard: this.unary('FetchShard', (r: pb.ShardRequest, md) => this.fetchShard(r, md)),
    });
  }

  /** Binds `host:port` (port 0 = any) and starts the liveness checks; resolves to the bound port. */
  async listen(address: string, credentials = grpc.ServerCredentials.createInsecure()): Promise<number> {
    const listener = new GuardedListener(this.server, credentials, this.opts.probationMs ?? PROBATION_MS);
    const port = await listener.listen(address);
    this.listener = listener;
    const every = Math.max(10, Math.floor(this.opts.heartbeatTimeoutMs / 4));
    this.timer = setInterval(() => this.tick(Date.now()), every);
    return port;
  }

  /** Stops accepting calls and ends every plan stream; connections still open after `graceMs` are cut. */
  async close(graceMs = 5000): Promise<void> {
    if (this.timer) clearInterval(this.timer);
    for (const [key, w] of this.rejectLog)
      if (w.suppressed > 0)
        this.opts.log?.warn(
          { rejections: key, suppressed: w.suppressed, window_ms: Date.now() - w.since },
          'rpc rejections not logged',
        );
    this.rejectLog.clear();
    for (const s of this.streams.values()) s.end();
    this.streams.clear();
    this.listener?.stopAccepting();
    // A graceful shutdown waits for every connection to close, which one left open by Node after a
    // peer's protocol error (see KEEPALIVE_MS) never does: the process would never exit.
    await new Promise<void>((resolve) => {
      const t = setTimeout(() => {
        this.server.forceShutdown();
        this.listener?.destroyAll();
        resolve();
      }, graceMs);
      this.server.tryShutdown(() => {
        clearTimeout(t);
        this.listener?.destroyAll();
        resolve();
      });
    });
  }

  private reject(method: string, code: grpc.status, reason: string): never {
    const key = `${method}:${grpc.status[code]}`;
    this.counters.rejected.set(key, (this.counters.rejected.get(key) ?? 0) + 1);
    this.opts.events?.onRejected?.(method, grpc.status[code]);
    // At most REJECT_LOG_BURST lines per method and code per window: a flood of bad calls (wrong
    // tokens at volume) must not become a flood of log lines; the metric counts every one.
    const now = Date.now();
    let w = this.rejectLog.get(key);
    if (!w || now - w.since >= REJECT_LOG_WINDOW_MS) {
      if (w && w.suppressed > 0)
        this.opts.log?.warn(
          { method, code: grpc.status[code], suppressed: w.suppressed, window_ms: now - w.since },
          'rpc rejections not logged',
        );
      w = { since: now, logged: 0, suppressed: 0 };
      this.rejectLog.set(key, w);
    }
    if (w.logged < REJECT_LOG_BURST) {
      w.logged++;
      this.opts.log?.warn({ method, code: grpc.status[code], reason }, 'rpc rejected');
    } else w.suppressed++;
    throw new RpcError(code, reason);
  }

  /** The join token, checked on every call; a connection that carried a valid one stays open. */
  private auth(method: string, call: CallInfo): void {
    const ok = tokenMatches(call.metadata, this.opts.token);
    this.listener?.seen(call.getPeer(), ok);
    if (!ok) this.reject(method, grpc.status.UNAUTHENTICATED, 'missing or wrong join token');
  }

  /** Runs field checks: a `FieldError` becomes INVALID_ARGUMENT (counted and logged). */
  private check(method: string, fn: () => void): void {
    try {
      fn();
    } catch (e) {
      if (e instanceof FieldError) this.reject(method, grpc.status.INVALID_ARGUMENT, e.message);
      throw e;
    }
  }

  /** Wraps a handler: token check, typed errors → gRPC status. */
  private unary<Req, Res>(method: string, fn: (req: Req, md: grpc.Metadata) => Res) {
    return (call: grpc.ServerUnaryCall<Req, Res>, cb: grpc.sendUnaryData<Res>) => {
      try {
        this.auth(method, call);
        cb(null, fn(call.request, call.metadata));
      } catch (e) {
        if (e instanceof RpcError) cb({ code: e.code, details: e.message });
        else cb({ code: grpc.status.INTERNAL, details: e instanceof Error ? e.message : String(e) });
      }
    };
  }

  /** The newest generation this coordinator numbered or may number next (see `GenerationLedger`). */
  private get knownGeneration(): number {
    return this.membership.knownGeneration;
  }

  /**
   * The member a call acts for: the id must be a live member's and the call must carry that
   * worker's secret. With `generation`, the call's generation must not be older than the current
   * one (fencing) nor newer than any the coordinator knows of.
   */
  private member(method: string, id: string, md: grpc.Metadata, generation?: number): Member {
    this.check(method, () => checkWorkerId(id));
    const m = this.membership.get(id);
    if (!m)
      this.reject(method, grpc.status.NOT_FOUND, `worker_id: ${id} is not a member (fenced or unknown)`);
    if (generation !== undefined) {
      if (generation < this.membership.generation.number)
        this.reject(
          method,
          grpc.status.FAILED_PRECONDITION,
          `generation: ${generation} is older than the current ${this.membership.generation.number}`,
        );
      this.check(method, () => checkGenerationKnown(generation, this.knownGeneration));
    }
    const cred = this.credentials.check(id, md);
    if (cred !== 'ok')
      this.reject(
        method,
        grpc.status.PERMISSION_DENIED,
        `worker_id: ${cred === 'missing' ? 'no' : 'wrong'} worker secret for ${id}`,
      );
    return m;
  }

  /** A member of the current ring, reporting for the current generation (Report, ReportFailure). */
  private ringMember(method: string, id: string, md: grpc.Metadata, generation: number): Member {
    const m = this.member(method, id, md, generation);
    const g = this.membership.generation;
    if (generation !== g.number)
      this.reject(
        method,
        grpc.status.INVALID_ARGUMENT,
        `generation: ${generation} is not the current ${g.number}`,
      );
    if (!g.ring.some((x) => x.id === id))
      this.reject(
        method,
        grpc.status.FAILED_PRECONDITION,
        `worker_id: ${id} has no rank in generation ${g.number}`,
      );
    return m;
  }

  private register(r: pb.RegisterRequest, md: grpc.Metadata): pb.IRegisterReply {
    this.check('Register', () => {
      checkRegister(r, { totalSteps: this.opts.totalSteps, curve: this.opts.curve });
      if (r.lastGeneration > this.lastGenerationLimit())
        throw new FieldError(`last_generation: ${r.lastGeneration} is too large`);
    });
    if (this.finished) this.reject('Register', grpc.status.FAILED_PRECONDITION, 'the job has finished');
    // A worker registering again (its plan stream broke) still holds its old registration's
    // secret: that registration is over, and its ring endpoint is free again.
    const previous = this.credentials.owner(md);
    if (previous && this.membership.get(previous))
      this.dropWorker(previous, 'left', 'worker registered again');
    const clash = this.membership.alive().find((m) => m.ringEndpoint === r.ringEndpoint);
    if (clash)
      this.reject(
        'Register',
        grpc.status.ALREADY_EXISTS,
        `ring_endpoint: ${r.ringEndpoint} is the endpoint of live worker ${clash.id}`,
      );
    this.membership.noteGeneration(r.lastGeneration);
    let m: Member;
    try {
      m = this.membership.register(
        {
          host: r.host,
          backend: r.backend,
          device: r.device,
          ringEndpoint: r.ringEndpoint,
          curvePublicKey: r.curvePublicKey,
          pid: r.pid,
          hasData: r.hasData,
          committedStep: r.committedStep,
          weightsChecksum: r.weightsChecksum,
        },
        Date.now(),
      );
    } catch (e) {
      return this.reject('Register', grpc.status.RESOURCE_EXHAUSTED, (e as Error).message);
    }
    this.credentials.prune((id) => this.membership.get(id) !== undefined);
    const secret = this.credentials.issue(m.id);
    this.opts.log?.info({ worker: m.id, host: m.host, backend: m.backend }, 'worker registered');
    const ds = this.opts.job?.dataset;
    return {
      workerId: m.id,
      jobId: this.opts.jobId,
      configYaml: this.opts.configYaml,
      heartbeatIntervalMs: Math.max(10, Math.floor(this.opts.heartbeatTimeoutMs / 5)),
      dataShape: ds ? [...ds.shape] : [],
      datasetSize: ds?.size ?? 0,
      workerSecret: secret,
    };
  }

  /**
   * The newest generation a registering worker can have taken part in: the coordinator's own
   * counter, which after a restart is the ceiling its predecessors left on disk. Only a run
   * directory of an older version, with a checkpoint and no ceiling, makes it take its workers'
   * word (bounded so that a uint32 has a long job's worth of generations left above it).
   */
  private lastGenerationLimit(): number {
    if (this.membership.generation.number > 0) return this.knownGeneration;
    const ceiling = this.ledger?.ceiling;
    if (ceiling) return ceiling;
    return (this.opts.job?.state.checkpointStep ?? -1) >= 0 ? 2 ** 31 : this.knownGeneration;
  }

  /** Removes a member at once (its plan stream ends) and re-forms the ring without it. */
  private dropWorker(id: string, reason: 'left' | 'ring-failure', why: string): void {
    if (!this.membership.remove(id, reason)) return;
    this.credentials.forget(id);
    this.opts.log?.warn({ worker: id }, why);
    this.opts.events?.onWorkerDeath?.(reason);
    this.streams.get(id)?.end();
    this.streams.delete(id);
  }

  private heartbeat(r: pb.HeartbeatRequest, md: grpc.Metadata): pb.IHeartbeatReply {
    this.check('Heartbeat', () =>
      checkHeartbeat(r, { totalSteps: this.opts.totalSteps, knownGeneration: this.knownGeneration }),
    );
    const generation = this.membership.generation.number;
    // An id that is no (longer a) member is told so: that is how a fenced worker learns it must
    // register again (its secret went with its membership).
    if (!this.membership.get(r.workerId)) return { member: false, generation };
    this.member('Heartbeat', r.workerId, md);
    this.membership.heartbeat(r.workerId, Date.now(), r.step);
    return { member: true, generation };
  }

  private report(r: pb.StepReport, md: grpc.Metadata): pb.IReportReply {
    const m = this.ringMember('Report', r.workerId, md, r.generation);
    this.check('Report', () =>
      checkReport(r, { totalSteps: this.opts.totalSteps, globalBatch: this.opts.globalBatch }),
    );
    const now = Date.now();
    this.membership.heartbeat(r.workerId, now, r.step);
    if (!this.lastReport || r.step >= this.lastReport.step) this.lastReport = r;
    if (r.stepMs > 0) this.workerSps.set(m.id, (r.examples * 1000) / r.stepMs);
    if (r.step > this.rate.step) {
      if (this.rate.step >= 0 && now > this.rate.t) {
        const inst = ((r.step - this.rate.step) * this.opts.globalBatch * 1000) / (now - this.rate.t);
        this.rate.sps = this.rate.sps === 0 ? inst : 0.9 * this.rate.sps + 0.1 * inst;
      }
      this.rate.step = r.step;
      this.rate.t = now;
    }
    const ring = this.membership.generation.ring;
    const rank = ring.findIndex((x) => x.id === m.id);
    this.opts.events?.onReport?.({ id: m.id, host: m.host, rank }, fromWireReport(r, rank, ring.length), now);
    return {};
  }

  /** Step the job is at, as far as the coordinator knows (reports, checkpoints). */
  get step(): number {
    return Math.max(this.lastReport?.step ?? 0, this.opts.job?.state.checkpointStep ?? 0);
  }

  /** Global samples/s (EWMA over reports). */
  get samplesPerSecond(): number {
    return this.rate.sps;
  }

  private pushState(
    call: grpc.ServerReadableStream<pb.StateChunk, pb.IPushStateReply>,
    cb: grpc.sendUnaryData<pb.IPushStateReply>,
  ): void {
    const fail = (e: unknown) => {
      call.removeAllListeners('data');
      if (e instanceof RpcError) cb({ code: e.code, details: e.message });
      else cb({ code: grpc.status.INVALID_ARGUMENT, details: e instanceof Error ? e.message : String(e) });
    };
    const job = this.opts.job;
    let head: { workerId: string; generation: number; step: number; reason: PushReason } | null = null;
    let asm: ChunkAssembler | null = null;
    try {
      this.auth('PushState', call);
      if (!job) this.reject('PushState', grpc.status.UNIMPLEMENTED, 'this coordinator keeps no state');
    } catch (e) {
      fail(e);
      return;
    }
    let failed = false;
    call.on('data', (c: pb.StateChunk) => {
      if (failed) return;
      try {
        if (!head) {
          this.member('PushState', c.workerId, call.metadata, c.generation);
          if (c.part !== pb.StatePart.SNAPSHOT)
            this.reject(
              'PushState',
              grpc.status.INVALID_ARGUMENT,
              `part: only SNAPSHOT is accepted, got ${c.part}`,
            );
          if (!(PUSH_REASONS as readonly string[]).includes(c.reason))
            this.reject(
              'PushState',
              grpc.status.INVALID_ARGUMENT,
              `reason: '${c.reason}' is not one of ${PUSH_REASONS.join(', ')}`,
            );
          head = {
            workerId: c.workerId,
            generation: c.generation,
            step: c.step,
            reason: c.reason as PushReason,
          };
          asm = new ChunkAssembler(`state pushed by ${c.workerId} (step ${c.step})`, this.maxStateBytes());
        } else if (c.workerId !== head.workerId || c.step !== head.step || c.generation !== head.generation) {
          this.reject(
            'PushState',
            grpc.status.INVALID_ARGUMENT,
            `worker_id/step/generation changed within the stream at offset ${c.offset}`,
          );
        }
        asm?.add({ offset: Number(c.offset), total: Number(c.total), data: c.data, sha256: c.sha256 });
      } catch (e) {
        failed = true;
        if (!(e instanceof RpcError)) this.countRejected('PushState', grpc.status.INVALID_ARGUMENT);
        fail(e);
      }
    });
    call.on('end', () => {
      if (failed) return;
      void (async () => {
        try {
          if (!head || !asm || !job) this.reject('PushState', grpc.status.INVALID_ARGUMENT, 'empty stream');
          const buf = asm.finish();
          const t0 = Date.now();
          const info = await job.state.accept(buf, head.reason, `state pushed by ${head.workerId}`);
          if (job.state.emaStep === head.step) this.opts.events?.onEmaSync?.(head.step);
          if (info) this.opts.events?.onCheckpoint?.(info.step, info.ms, info.bytes, t0);
          cb(null, { accepted: true, step: head.step });
          if (head.reason === 'shutdown' || (this.stopping && info))
            this.stopWaiters.splice(0).forEach((f) => f());
          if (
            head.step >= this.opts.totalSteps &&
            (head.reason === 'final' || head.reason === 'checkpoint')
          ) {
            this.finish();
          }
        } catch (e) {
          if (!(e instanceof RpcError)) {
            this.countRejected('PushState', grpc.status.INVALID_ARGUMENT);
            this.opts.log?.error({ error: (e as Error).message }, 'pushed state rejected');
          }
          fail(e);
        }
      })();
    });
  }

  private countRejected(method: string, code: grpc.status): void {
    const key = `${method}:${grpc.status[code]}`;
    this.counters.rejected.set(key, (this.counters.rejected.get(key) ?? 0) + 1);
    this.opts.events?.onRejected?.(method, grpc.status[code]);
  }

  /** Bound on a pushed snapshot: model, EMA and two moments in float32, plus room for the JSON meta. */
  private maxStateBytes(): number {
    const ckpt = this.opts.job?.state;
    return ckpt ? ckpt.modelScalars * 4 * 4 + 64 * 2 ** 20 : 64 * 2 ** 20;
  }

  private fetchState(call: grpc.ServerWritableStream<pb.FetchStateRequest, pb.IStateChunk>): void {
    try {
      this.auth('FetchState', call);
      this.member('FetchState', call.request.workerId, call.metadata, call.request.generation);
      this.check('FetchState', () => checkInt('parts', call.request.parts.length, 0, 8));
      const buf = this.opts.job?.state.checkpointBytes() ?? null;
      if (!buf) this.reject('FetchState', grpc.status.NOT_FOUND, 'the coordinator holds no checkpoint');
      const step = this.opts.job?.state.checkpointStep ?? -1;
      for (const c of toChunks(buf)) {
        call.write({
          workerId: call.request.workerId,
          generation: call.request.generation,
          step,
          part: pb.StatePart.SNAPSHOT,
          ...c,
        });
      }
      call.end();
    } catch (e) {
      endWithError(call, e);
    }
  }

  private fetchShard(r: pb.ShardRequest, md: grpc.Metadata): pb.IShardReply {
    this.member('FetchShard', r.workerId, md, r.generation);
    const job = this.opts.job;
    if (!job) return this.reject('FetchShard', grpc.status.UNIMPLEMENTED, 'this coordinator has no dataset');
    const B = this.opts.globalBatch;
    if (!Number.isSafeInteger(r.step) || r.step < 0 || r.step >= this.opts.totalSteps)
      this.reject(
        'FetchShard',
        grpc.status.INVALID_ARGUMENT,
        `step: ${r.step} is outside 0…${this.opts.totalSteps - 1}`,
      );
    if (r.to > B || r.from > r.to)
      this.reject(
        'FetchShard',
        grpc.status.INVALID_ARGUMENT,
        `from/to: [${r.from}, ${r.to}) is not inside [0, ${B})`,
      );
    this.batches ??= GlobalBatches.forConfig(job.dataset.size, job.cfg);
    const shard = readShard(
      job.dataset,
      { data: job.cfg.data, seed: job.cfg.run.seed, globalBatch: B },
      { step: r.step, from: r.from, to: r.to },
      this.batches,
    );
    return {
      x0: new Uint8Array(shard.x0.buffer, shard.x0.byteOffset, shard.x0.byteLength),
      labels: shard.labels ? [...shard.labels] : [],
      shape: [shard.n, ...job.dataset.shape],
    };
  }
  private batches: GlobalBatches | undefined;

  /** The final checkpoint is durable: every worker is told to exit. */
  private finish(): void {
    if (this.finished) return;
    this.finished = true;
    this.opts.log?.info({ step: this.opts.totalSteps }, 'job finished');
    const g = this.membership.generation;
    for (const [id, s] of this.streams) {
      s.write({ ...this.planFor(g, id), kind: pb.PlanKind.FINISH });
      s.end();
    }
    this.streams.clear();
    this.opts.events?.onFinished?.();
  }

  get isFinished(): boolean {
    return this.finished;
  }

  /**
   * Clean stop (SIGINT/SIGTERM): every worker is told to stop; rank 0 pushes its state, written as
   * a checkpoint. Resolves when that checkpoint is durable or after `timeoutMs`.
   */
  async stop(timeoutMs: number): Promise<boolean> {
    if (this.finished) return true;
    this.stopping = true;
    const g = this.membership.generation;
    // Nobody trains, so nobody can push a checkpoint. (Checked before the deadline timer is armed:
    // left behind, it kept the process alive for the whole deadline after the coordinator stopped.)
    if (g.ring.length === 0 || this.streams.size === 0) return false;
    const done = new Promise<boolean>((resolve) => {
      const t = setTimeout(() => resolve(false), timeoutMs);
      this.stopWaiters.push(() => {
        clearTimeout(t);
        resolve(true);
      });
    });
    for (const [id, s] of this.streams) s.write({ ...this.planFor(g, id), kind: pb.PlanKind.STOP });
    const ok = await done;
    for (const s of this.streams.values()) s.end();
    this.streams.clear();
    return ok;
  }

  /**
   * A worker asked to stop (SIGTERM). When fewer than min_workers would be left, the job stops the
   * way a signalled coordinator stops it (STOP to everyone, rank 0 pushes the final state; the
   * leaver is still in the ring and may be rank 0): `onStopRequested` lets the process run that
   * stop. Otherwise the others hold the same state: the worker is released at once and the ring
   * re-formed without it.
   */
  private leave(r: pb.LeaveRequest, md: grpc.Metadata): pb.ILeaveReply {
    const m = this.member('Leave', r.workerId, md);
    this.check('Leave', () => checkLabel('reason', r.reason, MAX_REASON_BYTES));
    if (this.finished || this.stopping) return { jobStopping: true };
    const reason = r.reason.slice(0, 200);
    if (this.membership.alive().length - 1 < this.opts.minWorkers) {
      this.opts.log?.warn(
        { worker: m.id, reason },
        'a worker is leaving and the others cannot go on without it: stopping the job',
      );
      this.opts.events?.onStopRequested?.(`worker ${m.id} leaving (${reason})`);
      return { jobStopping: true };
    }
    this.opts.log?.warn({ worker: m.id, reason }, 'worker leaving: re-forming the ring without it');
    this.membership.remove(m.id, 'left');
    this.opts.events?.onWorkerDeath?.('left');
    this.streams.get(m.id)?.end();
    this.streams.delete(m.id);
    this.tick(Date.now());
    return { jobStopping: false };
  }

  private failure(r: pb.FailureReport, md: grpc.Metadata): pb.IFailureReply {
    this.ringMember('ReportFailure', r.workerId, md, r.generation);
    const ring = this.membership.generation.ring;
    this.check('ReportFailure', () =>
      checkFailure(r, { totalSteps: this.opts.totalSteps, worldSize: ring.length }),
    );
    const suspect = r.suspectRank >= 0 ? ring[r.suspectRank] : undefined;
    this.opts.log?.warn(
      { reporter: r.workerId, suspect: suspect?.id, reason: r.reason },
      'ring failure reported',
    );
    if (r.generation === this.membership.generation.number) {
      const now = Date.now();
      const interval = Math.max(10, Math.floor(this.opts.heartbeatTimeoutMs / 5));
      if (suspect && now - suspect.lastHeartbeatMs > 2 * interval) {
        // The suspect is silent here too: it is dead or stuck, not just slow on the ring.
        this.dropWorker(
          suspect.id,
          'ring-failure',
          'worker removed (ring failure reported, heartbeats silent)',
        );
      } else {
        // Everyone is alive as far as we can tell: re-form the ring (a transient network fault).
        this.membership.invalidate();
      }
    }
    this.tick(Date.now());
    return {};
  }

  private plans(call: grpc.ServerWritableStream<pb.PlansRequest, pb.IPlan>): void {
    try {
      this.auth('Plans', call);
      // Only the worker itself (its secret) may take over its stream: anyone else is refused
      // before the live stream is touched.
      this.member('Plans', call.request.workerId, call.metadata);
    } catch (e) {
      endWithError(call, e);
      return;
    }
    const id = call.request.workerId;
    this.streams.get(id)?.end();
    this.streams.set(id, call);
    call.on('cancelled', () => {
      if (this.streams.get(id) !== call) return;
      this.streams.delete(id);
      // The worker's connection is gone (its process died, or it lost us): it is out of the ring.
      if (!this.finished && !this.stopping && this.membership.remove(id, 'left')) {
        this.credentials.forget(id);
        this.opts.log?.warn({ worker: id }, 'worker left (plan stream closed)');
        this.opts.events?.onWorkerDeath?.('stream-closed');
        this.tick(Date.now());
      }
    });
    // A worker that subscribes after its generation started still gets the plan.
    const g = this.membership.generation;
    if (g.ring.some((m) => m.id === id)) call.write(this.planFor(g, id));
    this.tick(Date.now());
  }

  /** Each generation's ring secret (frame MAC key), drawn when its first plan is written. */
  private readonly ringSecrets = new WeakMap<Generation, Buffer>();

  private planFor(g: Generation, id: string): pb.IPlan {
    const rank = g.ring.findIndex((m) => m.id === id);
    const ckptStep = this.opts.job?.state.checkpointStep ?? -1;
    const newestMember = Math.max(-1, ...g.ring.map((m) => m.lastStep));
    return {
      kind: this.finished ? pb.PlanKind.FINISH : pb.PlanKind.TRAIN,
      generation: g.number,
      rank,
      worldSize: g.ring.length,
      peers: g.ring.map((m, i) => ({
        workerId: m.id,
        rank: i,
        host: m.host,
        ringEndpoint: m.ringEndpoint,
        curvePublicKey: m.curvePublicKey,
      })),
      startStep: Math.max(0, ckptStep, newestMember),
      shards: shardPlan(this.opts.globalBatch, g.ring.length),
      verifyEvery: this.opts.verifyEvery,
      checkpointStep: ckptStep,
      // Only when the checkpoint is ahead of every member: otherwise the ring syncs from a peer.
      stateSource: ckptStep > newestMember ? 'coordinator' : '',
      ringSecret: this.ringSecrets.get(g) ?? this.ringSecrets.set(g, randomBytes(16)).get(g),
    };
  }

  /** Liveness check and, when membership changed, a new generation published to every member. */
  tick(nowMs: number): void {
    const dead = this.membership.expire(nowMs);
    for (const id of dead) {
      this.credentials.forget(id);
      this.opts.events?.onWorkerDeath?.('heartbeat-timeout');
      this.opts.log?.warn({ worker: id }, 'worker declared dead (heartbeat timeout)');
      this.streams.get(id)?.end();
      this.streams.delete(id);
    }
    if (this.finished || this.stopping || !this.membership.needsNewGeneration()) return;
    // Only workers that hold a plan stream can take part: wait until every live worker subscribed.
    if (this.membership.alive().some((m) => !this.streams.has(m.id))) return;
    // The ceiling on disk covers a number before any worker hears of it.
    this.ledger?.reserve(this.membership.knownGeneration + 1);
    const g = this.membership.nextGeneration();
    this.counters.generations++;
    this.opts.events?.onGeneration?.(g.number, g.ring.length);
    this.opts.log?.info({ generation: g.number, world: g.ring.length, step: this.step }, 'new generation');
    for (const m of g.ring) this.streams.get(m.id)?.write(this.planFor(g, m.id));
  }

  private status(): pb.IStatusReply {
    const now = Date.now();
    const g = this.membership.generation;
    return {
      jobId: this.opts.jobId,
      generation: g.number,
      step: this.step,
      totalSteps: this.opts.totalSteps,
      loss: this.lastReport?.loss ?? 0,
      samplesPerS: this.rate.sps,
      state: this.finished
        ? 'finished'
        : this.stopping
          ? 'stopping'
          : g.number === 0
            ? 'rendezvous'
            : 'training',
      workers: this.membership.alive().map((m) => ({
        workerId: m.id,
        host: m.host,
        rank: g.ring.findIndex((x) => x.id === m.id),
        backend: m.backend,
        heartbeatAgeMs: now - m.lastHeartbeatMs,
        lastStep: m.lastStep,
        samplesPerS: this.workerSps.get(m.id) ?? 0,
      })),
    };
  }
}

/**
 * Ends a server stream with the status of `e`. (`destroy(err)` would close the HTTP/2 stream
 * without a status, and a client would wait on it for ever; emitting 'error' makes grpc-js send
 * the status and end the call.)
 */
function endWithError(call: grpc.ServerWritableStream<unknown, unknown>, e: unknown): void {
  const err = e instanceof RpcError ? e : new RpcError(grpc.status.INTERNAL, (e as Error).message);
  call.emit('error', { code: err.code, details: err.message, metadata: new grpc.Metadata() });
}
