/**
 * Who may send to a rank, at two levels.
 *
 * CURVE (`encryption: 'curve'`): a ZAP handler, one per process, admits to a rank's PULL socket
 * only the clients whose public keys that ring allows (normally its predecessor's), so a peer
 * without an allowed key cannot deliver any frame; refusals are counted (`authDenied`).
 *
 * The generation's secret (`secret`): on a ring with one (workers: a new one with every
 * generation, in the coordinator's plans), every header carries a MAC under it and a per-link
 * index (frame.ts `FrameAuth`), and a rank drops and counts every frame without a valid MAC, or
 * whose index is not above the last one accepted (a replay) — checked before anything else acts on
 * the frame, shared-memory names included. Data payloads are not covered (see frame.ts). Without
 * a secret, a forged ABORT for the current collective is still obeyed: that is what the secret is
 * for.
 */
import * as zmq from 'zeromq';
import { FrameAuth, Phase, encodeHeader, type FrameHeader } from './frame.js';

interface ZapDomain {
  allowed: Set<string>;
  denied: number;
}

const zapDomains = new Map<string, ZapDomain>();
let zapSocket: zmq.Reply | undefined;
let zapUsers = 0;
let zapSeq = 0;

const Z85_CHARS = '0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.-:+=^!/*?&<>()[]{}@%$#';

/** Z85 encoding (ZeroMQ RFC 32) of a byte string whose length is a multiple of 4. */
export function z85Encode(data: Uint8Array): string {
  let out = '';
  for (let i = 0; i < data.length; i += 4) {
    let v =
      ((data[i] as number) * 2 ** 24 +
        ((data[i + 1] as number) << 16) +
        ((data[i + 2] as number) << 8) +
        (data[i + 3] as number)) >>>
      0;
    let s = '';
    for (let j = 0; j < 5; j++) {
      s = (Z85_CHARS[v % 85] as string) + s;
      v = Math.floor(v / 85);
    }
    out += s;
  }
  return out;
}

async function zapLoop(sock: zmq.Reply): Promise<void> {
  for (;;) {
    let req: Buffer[];
    try {
      req = await sock.receive();
    } catch {
      return; // closed
    }
    const version = req[0]?.toString() ?? '1.0';
    const requestId = req[1] ?? Buffer.alloc(0);
    const domain = req[2]?.toString() ?? '';
    const mechanism = req[5]?.toString() ?? '';
    const key = req[6];
    const d = zapDomains.get(domain);
    let ok = false;
    if (d && mechanism === 'CURVE' && key && key.length === 32) ok = d.allowed.has(z85Encode(key));
    if (!ok && d) d.denied++;
    try {
      await sock.send([
        version,
        requestId,
        ok ? '200' : '400',
        ok ? 'OK' : 'not an allowed ring peer',
        '',
        '',
      ]);
    } catch {
      return;
    }
  }
}

/** The ZAP socket while it is being bound (rings opened concurrently must not bind it twice). */
let zapStarting: Promise<zmq.Reply> | undefined;

/** Admits clients with the `allowed` public keys to sockets of the returned ZAP domain. */
export async function zapRegister(context: zmq.Context, allowed: string[]): Promise<string> {
  const domain = `ringdiff-${process.pid}-${++zapSeq}`;
  zapDomains.set(domain, { allowed: new Set(allowed), denied: 0 });
  zapUsers++;
  if (!zapSocket) {
    const starting = (zapStarting ??= (async () => {
      const sock = new zmq.Reply({ context, linger: 0 });
      await sock.bind('inproc://zeromq.zap.01');
      return sock;
    })());
    try {
      const sock = await starting;
      if (zapStarting === starting) {
        zapStarting = undefined;
        zapSocket = sock;
        void zapLoop(sock);
      }
    } catch (e) {
      if (zapStarting === starting) zapStarting = undefined;
      zapUnregister(domain);
      throw e;
    }
  }
  return domain;
}

/** Forgets a domain of `zapRegister`; the handler closes with the last one. */
export function zapUnregister(domain: string): void {
  if (!zapDomains.delete(domain)) return;
  zapUsers--;
  if (zapUsers === 0 && zapSocket) {
    zapSocket.close();
    zapSocket = undefined;
  }
}

/**
 * Binds, retrying for up to 2 s while the address is still held by a socket this process just
 * closed (ZeroMQ releases it asynchronously) — so a new generation can reuse its address at once.

/** Clients the ZAP handler refused for `domain` so far (undefined: not a registered domain). */
export function zapDenied(domain: string): number | undefined {
  return zapDomains.get(domain)?.denied;
}

/** MACs under the generation's secret, with the link indices this rank sent and last accepted. */
export class LinkAuth {
  private readonly mac: FrameAuth;
  private sendIndex = 0;
  private recvIndex = 0;

  constructor(secret: Uint8Array) {
    this.mac = new FrameAuth(secret);
  }

  /** The encoded header of a frame to send, with the next link index and its MAC. */
  seal(h: FrameHeader, payload: Buffer): Buffer {
    h.linkIndex = ++this.sendIndex;
    return this.mac.seal(encodeHeader(h), h.phase === Phase.ABORT ? payload : null);
  }

  /**
   * Whether a received frame (its header as received, decoded, and its payload) carries a valid
   * MAC and a link index above the last one accepted; if so, that index becomes the last one.
   */
  accept(headerBytes: Buffer, h: FrameHeader, payload: Buffer): boolean {
    const ok =
      this.mac.verify(headerBytes, h.phase === Phase.ABORT ? payload : null) &&
      (h.linkIndex ?? 0) > this.recvIndex;
    if (ok) this.recvIndex = h.linkIndex as number;
    return ok;
  }
}
