/**
 * Per-worker credentials: Register hands every worker a random secret, and every later call made
 * for that worker id must carry it in the `ringdiff-worker-secret` metadata entry. The join token
 * says "a worker of this job"; the secret says "this worker", so one holder of the token cannot
 * act for (heartbeat, report, take the plan stream of) another. Only a hash of each secret is
 * kept, compared in constant time.
 */
import { createHash, randomBytes, timingSafeEqual } from 'node:crypto';
import type * as grpc from '@grpc/grpc-js';
import { WORKER_SECRET_HEADER } from '../job/protocol.js';

export { WORKER_SECRET_HEADER };

const hash = (secret: string): Buffer => createHash('sha256').update(secret).digest();

/** The secret a call carries, if any (the first string value of the entry). */
export function secretOf(metadata: grpc.Metadata): string | null {
  const v = metadata.get(WORKER_SECRET_HEADER)[0];
  return typeof v === 'string' && v.length > 0 && v.length <= 256 ? v : null;
}

/** The secrets of the registered workers, by worker id. */
export class WorkerCredentials {
  private readonly byId = new Map<string, Buffer>();
  private readonly byHash = new Map<string, string>();

  /** A new secret for `id` (replacing any earlier one). */
  issue(id: string): string {
    this.forget(id);
    const secret = randomBytes(32).toString('base64url');
    const h = hash(secret);
    this.byId.set(id, h);
    this.byHash.set(h.toString('hex'), id);
    return secret;
  }

  /** Whether `metadata` carries the secret of `id`: 'ok', or why not. */
  check(id: string, metadata: grpc.Metadata): 'ok' | 'missing' | 'wrong' {
    const want = this.byId.get(id);
    const got = secretOf(metadata);
    if (!got) return 'missing';
    return want && timingSafeEqual(want, hash(got)) ? 'ok' : 'wrong';
  }

  /** The worker id whose secret `metadata` carries, if any (a worker registering again). */
  owner(metadata: grpc.Metadata): string | undefined {
    const got = secretOf(metadata);
    return got ? this.byHash.get(hash(got).toString('hex')) : undefined;
  }

  /** Drops the secret of a worker that is no longer a member. */
  forget(id: string): void {
    const h = this.byId.get(id);
    if (!h) return;
    this.byId.delete(id);
    this.byHash.delete(h.toString('hex'));
  }

  /** Drops the secrets of every id for which `alive` is false. */
  prune(alive: (id: string) => boolean): void {
    for (const id of [...this.byId.keys()]) if (!alive(id)) this.forget(id);
  }
}
