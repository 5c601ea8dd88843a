/** The error a coordinator RPC handler throws to answer with a given gRPC status. */
import type * as grpc from '@grpc/grpc-js';

/** A request that failed (validation, or a state it cannot be served in): gRPC status and a one-line message naming the field. */
export class RpcError extends Error {
  constructor(
    readonly code: grpc.status,
    message: string,
  ) {
    super(message);
  }
}
