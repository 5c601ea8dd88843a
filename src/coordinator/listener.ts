/**
 * The coordinator's listening socket. Connections are accepted here and handed to grpc-js through
 * its connection injector, so that the coordinator keeps each raw socket: a connection that has
 * not carried a call with the job's token is closed once it has been `probationMs` without
 * starting a call (so a client that gets UNAUTHENTICATED answers is told so, not cut off mid-call).
 *
 * Why not grpc-js's own listener: when a peer breaks HTTP/2 framing (a frame header announcing
 * more than the maximum frame size, say), nghttp2 sends GOAWAY and stops reading, and Node keeps
 * the session and its descriptor open after the peer has gone, with no event a server could act
 * on; only a keepalive timeout reaps it, and that timeout must be long because a worker's event
 * loop may be busy in a training step for minutes. Anyone who can reach the port could hold
 * descriptors that way. Here such a connection is closed once its probation ends.
 */
import * as net from 'node:net';
import type * as grpc from '@grpc/grpc-js';

/** Default time a connection without a call with a valid token may stay without starting a call. */
export const PROBATION_MS = 2000;

interface Tracked {
  socket: net.Socket;
  trusted: boolean;
  timer: NodeJS.Timeout | null;
}

/** Splits `host:port`, `[v6]:port` or `unix:PATH` into listen options. */
export function listenOptions(address: string): net.ListenOptions {
  if (address.startsWith('unix:')) return { path: address.slice(5) };
  const m = /^\[([^\]]*)\]:(\d+)$/.exec(address) ?? /^([^:]*):(\d+)$/.exec(address);
  if (!m) throw new Error(`listen address '${address}' is not HOST:PORT, [IPv6]:PORT or unix:PATH`);
  const host = m[1] as string;
  return { host: host === '' ? undefined : host, port: Number(m[2]) };
}

/** The peer of a socket as grpc-js's `call.getPeer()` spells it. */
function peerOf(s: net.Socket): string {
  return s.remotePort ? `${s.remoteAddress}:${s.remotePort}` : (s.remoteAddress ?? 'unknown');
}

/** A listening socket whose connections go to one grpc-js server and must earn their keep. */
export class GuardedListener {
  private readonly tcp: net.Server;
  private readonly injector: grpc.ConnectionInjector;
  private readonly conns = new Map<string, Tracked>();

  constructor(
    server: grpc.Server,
    credentials: grpc.ServerCredentials,
    private readonly probationMs = PROBATION_MS,
  ) {
    this.injector = server.createConnectionInjector(credentials);
    this.tcp = net.createServer({ noDelay: true }, (socket) => this.accept(socket));
  }

  private accept(socket: net.Socket): void {
    const peer = peerOf(socket);
    const c: Tracked = { socket, trusted: false, timer: null };
    c.timer = setTimeout(() => {
      c.timer = null;
      if (!c.trusted) socket.destroy();
    }, this.probationMs);
    c.timer.unref();
    this.conns.set(peer, c);
    socket.once('close', () => {
      if (c.timer) clearTimeout(c.timer);
      if (this.conns.get(peer) === c) this.conns.delete(peer);
    });
    this.injector.injectConnection(socket);
  }

  /** Binds `address` (port 0 = any); resolves to the bound port (0 for a unix socket). */
  listen(address: string): Promise<number> {
    const opts = listenOptions(address);
    return new Promise((resolve, reject) => {
      this.tcp.once('error', reject);
      this.tcp.listen(opts, () => {
        this.tcp.off('error', reject);
        const a = this.tcp.address();
        resolve(typeof a === 'object' && a ? a.port : 0);
      });
    });
  }

  /**
   * The connection of `peer` (from `call.getPeer()`) started a call: with a valid token it stays
   * open from now on; without, its probation starts again.
   */
  seen(peer: string, validToken: boolean): void {
    const c = this.conns.get(peer);
    if (!c || c.trusted) return;
    if (!validToken) {
      c.timer?.refresh();
      return;
    }
    c.trusted = true;
    if (c.timer) clearTimeout(c.timer);
    c.timer = null;
  }

  /** Open connections (trusted or not). */
  get connections(): number {
    return this.conns.size;
  }

  /** Stops accepting connections. */
  stopAccepting(): void {
    this.tcp.close();
  }

  /** Closes every connection still open. */
  destroyAll(): void {
    for (const c of this.conns.values()) c.socket.destroy();
    this.conns.clear();
    this.injector.destroy();
  }
}
