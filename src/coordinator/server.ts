/**
 * The coordinator's gRPC server: authentication, validation, membership and the plan streams.
 * Training-state handling (checkpoints, EMA, sampler table) plugs in through `CoordinatorHooks`.
 */
import { randomUUID, timingSafeEqual } from 'node:crypto';
import * as grpc from '@grpc/grpc-js';
import { CoordinatorService } from '../proto-gen/coordinator-grpc.js';
import { ringdiff } from '../proto-gen/coordinator.js';
import { Membership, type Generation, type Member } from './membership.js';
import { shardPlan } from '../data/shard.js';
import type { Logger } from '../util/log.js';

import pb = ringdiff.v1;

/** A request that failed validation: gRPC status and a message naming the field. */
export class RpcError extends Error {
  constructor(
    readonly code: grpc.status,
    message: string,
  ) {
    super(message);
  }
}

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
}

/** Counters the metrics module exports. */
export interface CoordinatorCounters {
  rejected: Map<string, number>;
  generations: number;
}

const Z85_KEY = /^[0-9a-zA-Z.\-:+=^!/*?&<>()[\]{}@%$#]{40}$/;
const ENDPOINT = /^(tcp:\/\/[^\s]+:\d+|ipc:\/\/[^\s]+)$/;

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
  private readonly server = new grpc.Server({ 'grpc.max_receive_message_length': 64 * 2 ** 20 });
  private readonly streams = new Map<string, grpc.ServerWritableStream<pb.PlansRequest, pb.IPlan>>();
  private timer: NodeJS.Timeout | null = null;
  private startStep = 0;
  private finished = false;
  /** Last step reported by any worker, with its loss (for status and metrics). */
  lastReport: pb.StepReport | null = null;

  constructor(readonly opts: CoordinatorOptions) {
    this.membership = new Membership(
      {
        minWorkers: opts.minWorkers,
        maxWorkers: opts.maxWorkers,
        heartbeatTimeoutMs: opts.heartbeatTimeoutMs,
      },
      () => randomUUID(),
    );
    this.server.addService(CoordinatorService, {
      register: this.unary('Register', (r: pb.RegisterRequest) => this.register(r)),
      heartbeat: this.unary('Heartbeat', (r: pb.HeartbeatRequest) => this.heartbeat(r)),
      report: this.unary('Report', (r: pb.StepReport) => this.report(r)),
      reportFailure: this.unary('ReportFailure', (r: pb.FailureReport) => this.failure(r)),
      status: this.unary('Status', () => this.status(), false),
      plans: (call: grpc.ServerWritableStream<pb.PlansRequest, pb.IPlan>) => this.plans(call),
      pushState: (_call: unknown, cb: grpc.sendUnaryData<pb.IPushStateReply>) =>
        cb({ code: grpc.status.UNIMPLEMENTED, message: 'PushState is not implemented yet' }),
      fetchState: (call: grpc.ServerWritableStream<pb.FetchStateRequest, pb.IStateChunk>) =>
        call.destroy(
          Object.assign(new Error('FetchState is not implemented yet'), { code: grpc.status.UNIMPLEMENTED }),
        ),
      fetchShard: (_call: unknown, cb: grpc.sendUnaryData<pb.IShardReply>) =>
        cb({ code: grpc.status.UNIMPLEMENTED, message: 'FetchShard is not implemented yet' }),
    });
  }

  /** Binds `host:port` (port 0 = any) and starts the liveness checks; resolves to the bound port. */
  async listen(address: string, credentials = grpc.ServerCredentials.createInsecure()): Promise<number> {
    const port = await new Promise<number>((resolve, reject) =>
      this.server.bindAsync(address, credentials, (err, p) => (err ? reject(err) : resolve(p))),
    );
    const every = Math.max(10, Math.floor(this.opts.heartbeatTimeoutMs / 4));
    this.timer = setInterval(() => this.tick(Date.now()), every);
    return port;
  }

  /** Stops accepting calls and ends every plan stream. */
  async close(): Promise<void> {
    if (this.timer) clearInterval(this.timer);
    for (const s of this.streams.values()) s.end();
    this.streams.clear();
    await new Promise<void>((resolve) => this.server.tryShutdown(() => resolve()));
  }

  private reject(method: string, code: grpc.status, reason: string): never {
    const key = `${method}:${grpc.status[code]}`;
    this.counters.rejected.set(key, (this.counters.rejected.get(key) ?? 0) + 1);
    this.opts.log?.warn({ method, code: grpc.status[code], reason }, 'rpc rejected');
    throw new RpcError(code, reason);
  }

  private auth(method: string, metadata: grpc.Metadata): void {
    if (!tokenMatches(metadata, this.opts.token)) {
      this.reject(method, grpc.status.UNAUTHENTICATED, 'missing or wrong join token');
    }
  }

  /** Wraps a handler: token check, typed errors → gRPC status. */
  private unary<Req, Res>(method: string, fn: (req: Req) => Res, needsToken = true) {
    return (call: grpc.ServerUnaryCall<Req, Res>, cb: grpc.sendUnaryData<Res>) => {
      try {
        if (needsToken) this.auth(method, call.metadata);
        cb(null, fn(call.request));
      } catch (e) {
        if (e instanceof RpcError) cb({ code: e.code, details: e.message });
        else cb({ code: grpc.status.INTERNAL, details: e instanceof Error ? e.message : String(e) });
      }
    };
  }

  private member(method: string, id: string, generation?: number): Member {
    if (!id) this.reject(method, grpc.status.INVALID_ARGUMENT, 'worker_id: required');
    const m = this.membership.get(id);
    if (!m)
      this.reject(method, grpc.status.NOT_FOUND, `worker_id: ${id} is not a member (fenced or unknown)`);
    if (generation !== undefined && generation < this.membership.generation.number) {
      this.reject(
        method,
        grpc.status.FAILED_PRECONDITION,
        `generation: ${generation} is older than the current ${this.membership.generation.number}`,
      );
    }
    return m;
  }

  private register(r: pb.RegisterRequest): pb.IRegisterReply {
    const bad = (field: string, why: string) =>
      this.reject('Register', grpc.status.INVALID_ARGUMENT, `${field}: ${why}`);
    if (!r.host) bad('host', 'required');
    if (!ENDPOINT.test(r.ringEndpoint))
      bad('ring_endpoint', `'${r.ringEndpoint}' is not tcp://host:port or ipc://path`);
    if (this.opts.curve && !Z85_KEY.test(r.curvePublicKey))
      bad('curve_public_key', 'a 40-character Z85 key is required');
    if (this.finished) this.reject('Register', grpc.status.FAILED_PRECONDITION, 'the job has finished');
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
    this.opts.log?.info({ worker: m.id, host: m.host, backend: m.backend }, 'worker registered');
    return {
      workerId: m.id,
      jobId: this.opts.jobId,
      configYaml: this.opts.configYaml,
      heartbeatIntervalMs: Math.max(10, Math.floor(this.opts.heartbeatTimeoutMs / 5)),
    };
  }

  private heartbeat(r: pb.HeartbeatRequest): pb.IHeartbeatReply {
    const ok = this.membership.heartbeat(r.workerId, Date.now(), r.step);
    return { member: ok, generation: this.membership.generation.number };
  }

  private report(r: pb.StepReport): pb.IReportReply {
    this.member('Report', r.workerId, r.generation);
    this.membership.heartbeat(r.workerId, Date.now(), r.step);
    if (!this.lastReport || r.step >= this.lastReport.step) this.lastReport = r;
    return {};
  }

  private failure(r: pb.FailureReport): pb.IFailureReply {
    this.member('ReportFailure', r.workerId, r.generation);
    const ring = this.membership.generation.ring;
    const suspect = r.suspectRank >= 0 ? ring[r.suspectRank] : undefined;
    this.opts.log?.warn(
      { reporter: r.workerId, suspect: suspect?.id, reason: r.reason },
      'ring failure reported',
    );
    if (suspect && r.generation === this.membership.generation.number) {
      this.membership.remove(suspect.id, 'ring-failure');
      this.streams.get(suspect.id)?.end();
      this.streams.delete(suspect.id);
    }
    this.tick(Date.now());
    return {};
  }

  private plans(call: grpc.ServerWritableStream<pb.PlansRequest, pb.IPlan>): void {
    try {
      this.auth('Plans', call.metadata);
      this.member('Plans', call.request.workerId);
    } catch (e) {
      const err = e as RpcError;
      call.destroy(Object.assign(new Error(err.message), { code: err.code }));
      return;
    }
    const id = call.request.workerId;
    this.streams.get(id)?.end();
    this.streams.set(id, call);
    call.on('cancelled', () => {
      if (this.streams.get(id) === call) this.streams.delete(id);
    });
    // A worker that subscribes after its generation started still gets the plan.
    const g = this.membership.generation;
    if (g.ring.some((m) => m.id === id)) call.write(this.planFor(g, id));
    this.tick(Date.now());
  }

  private planFor(g: Generation, id: string): pb.IPlan {
    const rank = g.ring.findIndex((m) => m.id === id);
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
      startStep: this.startStep,
      shards: shardPlan(this.opts.globalBatch, g.ring.length),
      verifyEvery: this.opts.verifyEvery,
    };
  }

  /** Liveness check and, when membership changed, a new generation published to every member. */
  tick(nowMs: number): void {
    const dead = this.membership.expire(nowMs);
    for (const id of dead) {
      this.opts.log?.warn({ worker: id }, 'worker declared dead (heartbeat timeout)');
      this.streams.get(id)?.end();
      this.streams.delete(id);
    }
    if (this.finished || !this.membership.needsNewGeneration()) return;
    // Only workers that hold a plan stream can take part: wait until every live worker subscribed.
    if (this.membership.alive().some((m) => !this.streams.has(m.id))) return;
    const g = this.membership.nextGeneration();
    this.counters.generations++;
    this.opts.log?.info(
      { generation: g.number, world: g.ring.length, start_step: this.startStep },
      'new generation',
    );
    for (const m of g.ring) this.streams.get(m.id)?.write(this.planFor(g, m.id));
  }

  private status(): pb.IStatusReply {
    const now = Date.now();
    const g = this.membership.generation;
    return {
      jobId: this.opts.jobId,
      generation: g.number,
      step: this.lastReport?.step ?? this.startStep,
      totalSteps: this.opts.totalSteps,
      loss: this.lastReport?.loss ?? 0,
      state: this.finished ? 'finished' : g.number === 0 ? 'rendezvous' : 'training',
      workers: this.membership.alive().map((m) => ({
        workerId: m.id,
        host: m.host,
        rank: g.ring.findIndex((x) => x.id === m.id),
        backend: m.backend,
        heartbeatAgeMs: now - m.lastHeartbeatMs,
        lastStep: m.lastStep,
      })),
    };
  }
}
