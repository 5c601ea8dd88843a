/**
 * Credentials of every gRPC client and server of a job, from its config: the join token, and TLS
 * (plaintext, server TLS, or mutual TLS) from `cluster.tls`. The worker's heartbeat thread gets
 * PEM buffers (`TlsPem`), which can cross threads where credentials objects cannot.
 */
import { readFileSync } from 'node:fs';
import * as grpc from '@grpc/grpc-js';
import type { Config } from './schema.js';

/**
 * A credential the config names but cannot provide (one line). Not load.ts's ConfigError: the
 * worker's heartbeat thread imports this module, and must start in well under a heartbeat timeout
 * without loading the config parser.
 */
export class CredentialsError extends Error {
  override name = 'CredentialsError';
}

/** PEM material for a TLS channel. */
export interface TlsPem {
  ca: Buffer;
  key: Buffer | null;
  cert: Buffer | null;
}

/** The join token: RINGDIFF_TOKEN, else cluster.token; a coordinator without one refuses to start. */
export function joinToken(cfg: Config): string {
  const t = process.env.RINGDIFF_TOKEN || cfg.cluster.token;
  if (!t)
    throw new CredentialsError('no join token: set RINGDIFF_TOKEN or cluster.token (launch generates one)');
  if (t.length < 16)
    throw new CredentialsError('cluster.token: the join token must have at least 16 characters');
  return t;
}

function readPem(key: string, file: string): Buffer {
  try {
    return readFileSync(file);
  } catch (e) {
    throw new CredentialsError(
      `${key}: cannot read ${file} (${(e as NodeJS.ErrnoException).code ?? (e as Error).message})`,
    );
  }
}

/** Server credentials from cluster.tls: plaintext, TLS, or mutual TLS when a CA is given. */
export function serverCredentials(cfg: Config): grpc.ServerCredentials {
  const t = cfg.cluster.tls;
  if (!t.cert && !t.key) return grpc.ServerCredentials.createInsecure();
  if (!t.cert || !t.key) throw new CredentialsError('cluster.tls: cert and key must be given together');
  const ca = t.ca ? readPem('cluster.tls.ca', t.ca) : null;
  return grpc.ServerCredentials.createSsl(
    ca,
    [{ cert_chain: readPem('cluster.tls.cert', t.cert), private_key: readPem('cluster.tls.key', t.key) }],
    ca !== null,
  );
}

/** Client TLS material from cluster.tls: none without a CA; with a client cert for mutual TLS. */
export function clientTls(cfg: Config): TlsPem | null {
  const t = cfg.cluster.tls;
  if (!t.ca) return null;
  if (!!t.client_cert !== !!t.client_key)
    throw new CredentialsError('cluster.tls: client_cert and client_key must be given together');
  return {
    ca: readPem('cluster.tls.ca', t.ca),
    key: t.client_key ? readPem('cluster.tls.client_key', t.client_key) : null,
    cert: t.client_cert ? readPem('cluster.tls.client_cert', t.client_cert) : null,
  };
}

/** Channel credentials from PEM material (plaintext without). */
export function credentialsFrom(tls: TlsPem | null): grpc.ChannelCredentials {
  return tls ? grpc.credentials.createSsl(tls.ca, tls.key, tls.cert) : grpc.credentials.createInsecure();
}

/** Client credentials from cluster.tls (see `clientTls`). */
export function clientCredentials(cfg: Config): grpc.ChannelCredentials {
  return credentialsFrom(clientTls(cfg));
}
