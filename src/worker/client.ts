/**
 * The worker's side of the coordinator API: typed promise wrappers over the generated gRPC
 * client, with the join token attached to every call, and the worker secret of the last
 * registration made through this client (or given to it) too.
 */
import * as grpc from '@grpc/grpc-js';
import { CoordinatorService } from '../proto-gen/coordinator-grpc.js';
import { ringdiff } from '../proto-gen/coordinator.js';
import { ChunkAssembler, toChunks } from '../job/transfer.js';
import { MAX_REASON_BYTES, WORKER_SECRET_HEADER } from '../job/protocol.js';

import pb = ringdiff.v1;

const ClientCtor = grpc.makeGenericClientConstructor(CoordinatorService, 'Coordinator');

type Unary<Req, Res> = (
  req: Req,
  md: grpc.Metadata,
  opts: grpc.CallOptions,
  cb: (err: grpc.ServiceError | null, res?: Res) => void,
) => grpc.ClientUnaryCall;

/** A connection to the coordinator at `address` (host:port). */
export class CoordinatorClient {
  private readonly client: grpc.Client & Record<string, unknown>;
  /** Secret of the worker this client calls for (set by `register`, or by the owner of another client). */
  workerSecret = '';

  constructor(
    readonly address: string,
    private readonly token: string,
    credentials = grpc.credentials.createInsecure(),
    /** Deadline of unary calls, ms. */
    private readonly timeoutMs = 10000,
    options: grpc.ChannelOptions = {},
  ) {
    this.client = new ClientCtor(address, credentials, {
      'grpc.max_receive_message_length': 64 * 2 ** 20,
      ...options,
    }) as unknown as grpc.Client & Record<string, unknown>;
  }

  private metadata(): grpc.Metadata {
    const md = new grpc.Metadata();
    if (this.token) md.set('authorization', `Bearer ${this.token}`);
    if (this.workerSecret) md.set(WORKER_SECRET_HEADER, this.workerSecret);
    return md;
  }

  private call<Req, Res>(method: string, req: Req): Promise<Res> {
    const fn = (this.client[method] as Unary<Req, Res>).bind(this.client);
    return new Promise((resolve, reject) => {
      fn(req, this.metadata(), { deadline: Date.now() + this.timeoutMs }, (err, res) =>
        err ? reject(err) : resolve(res as Res),
      );
    });
  }

  /** Registers; later calls of this client carry the secret the coordinator answers with. */
  async register(r: pb.IRegisterRequest): Promise<pb.RegisterReply> {
    const reply = await this.call<pb.IRegisterRequest, pb.RegisterReply>('register', r);
    this.workerSecret = reply.workerSecret;
    return reply;
  }
  heartbeat(r: pb.IHeartbeatRequest): Promise<pb.HeartbeatReply> {
    return this.call('heartbeat', r);
  }
  report(r: pb.IStepReport): Promise<pb.ReportReply> {
    return this.call('report', r);
  }
  reportFailure(r: pb.IFailureReport): Promise<pb.FailureReply> {
    return this.call('reportFailure', { ...r, reason: oneLine(r.reason ?? '', MAX_REASON_BYTES) });
  }
  leave(r: pb.ILeaveRequest): Promise<pb.LeaveReply> {
    return this.call('leave', r);
  }
  status(): Promise<pb.StatusReply> {
    return this.call('status', {});
  }
  fetchShard(r: pb.IShardRequest): Promise<pb.ShardReply> {
    return this.call('fetchShard', r);
  }

  /**
   * Streams `buf` to the coordinator as SNAPSHOT chunks; resolves with the coordinator's reply.
   * Bounded by a deadline (default 60 s plus 1 s per 10 MB) so that a push over a stalled
   * connection fails instead of holding back every later one.
   */
  pushState(
    meta: { workerId: string; generation: number; step: number; reason: string },
    buf: Uint8Array,
    timeoutMs = 60000 + buf.length / 1e4,
  ): Promise<pb.PushStateReply> {
    const fn = this.client.pushState as (
      md: grpc.Metadata,
      opts: grpc.CallOptions,
      cb: (err: grpc.ServiceError | null, res?: pb.PushStateReply) => void,
    ) => grpc.ClientWritableStream<pb.IStateChunk>;
    return new Promise((resolve, reject) => {
      const call = fn.call(this.client, this.metadata(), { deadline: Date.now() + timeoutMs }, (err, res) =>
        err ? reject(err) : resolve(res as pb.PushStateReply),
      );
      for (const c of toChunks(buf)) {
        call.write({ ...meta, part: pb.StatePart.SNAPSHOT, ...c });
      }
      call.end();
    });
  }

  /** Fetches the coordinator's newest checkpoint as one snapshot buffer (checked against its sha256). */
  fetchState(workerId: string, generation: number, maxBytes = 2 ** 31): Promise<Buffer> {
    const fn = this.client.fetchState as (
      req: pb.IFetchStateRequest,
      md: grpc.Metadata,
    ) => grpc.ClientReadableStream<pb.StateChunk>;
    return new Promise((resolve, reject) => {
      const asm = new ChunkAssembler(`state from the coordinator`, maxBytes);
      const call = fn.call(
        this.client,
        { workerId, generation, parts: [pb.StatePart.SNAPSHOT] },
        this.metadata(),
      );
      call.on('data', (c: pb.StateChunk) => {
        try {
          asm.add({ offset: Number(c.offset), total: Number(c.total), data: c.data, sha256: c.sha256 });
        } catch (e) {
          call.cancel();
          reject(e as Error);
        }
      });
      call.on('error', reject);
      call.on('end', () => {
        try {
          resolve(asm.finish());
        } catch (e) {
          reject(e as Error);
        }
      });
    });
  }

  /** The stream of plans for this worker. */
  plans(workerId: string): grpc.ClientReadableStream<pb.Plan> {
    const fn = this.client.plans as (
      req: pb.IPlansRequest,
      md: grpc.Metadata,
    ) => grpc.ClientReadableStream<pb.Plan>;
    return fn.call(this.client, { workerId }, this.metadata());
  }

  close(): void {
    this.client.close();
  }
}

/** `s` on one line and within `maxBytes` of UTF-8 (an error message sent as a field). */
function oneLine(s: string, maxBytes: number): string {
  // eslint-disable-next-line no-control-regex -- control characters are what it replaces
  let t = s.replace(/[\u0000-\u001f\u007f]+/g, ' ');
  while (Buffer.byteLength(t, 'utf8') > maxBytes) t = t.slice(0, Math.floor(t.length * 0.9));
  return t;
}
