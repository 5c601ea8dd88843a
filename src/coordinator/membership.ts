/**
 * Who is in the job: registered workers, their liveness, and the generations of the ring.
 * A pure state machine driven by the clock value passed in, so the rules (timeouts, fencing,
 * ring order) are tested without servers or timers.
 */

export interface WorkerInfo {
  host: string;
  backend: string;
  device: string;
  ringEndpoint: string;
  curvePublicKey: string;
  pid: number;
  hasData: boolean;
  /** Last step the worker committed before (re)registering, −1 if none. */
  committedStep: number;
  weightsChecksum: string;
}

export interface Member extends WorkerInfo {
  id: string;
  /** Registration order, used to break ties in the ring order. */
  seq: number;
  lastHeartbeatMs: number;
  /** Last step this worker reported committed. */
  lastStep: number;
}

/** One generation: its number and the ring order (index = rank). */
export interface Generation {
  number: number;
  ring: Member[];
}

export type DeathReason = 'heartbeat-timeout' | 'ring-failure' | 'left';

/** Registered workers, liveness and generations. */
export class Membership {
  private readonly members = new Map<string, Member>();
  private nextSeq = 0;
  private gen: Generation = { number: 0, ring: [] };
  /** Generations numbered by an earlier coordinator of the job, as its workers reported them. */
  private floor = 0;
  /** Workers removed, with why (for metrics and logs). */
  readonly deaths: { id: string; reason: DeathReason; generation: number }[] = [];

  constructor(
    readonly opts: { minWorkers: number; maxWorkers: number; heartbeatTimeoutMs: number },
    private readonly newId: () => string,
  ) {
    if (opts.minWorkers > opts.maxWorkers) {
      throw new Error(
        `cluster.min_workers ${opts.minWorkers} is larger than cluster.max_workers ${opts.maxWorkers}`,
      );
    }
  }

  /** The current generation (number 0 before the first one starts). */
  get generation(): Generation {
    return this.gen;
  }

  /** Live members in registration order. */
  alive(): Member[] {
    return [...this.members.values()].sort((a, b) => a.seq - b.seq);
  }

  get(id: string): Member | undefined {
    return this.members.get(id);
  }

  /** Admits a worker; throws when the job is full. */
  register(info: WorkerInfo, nowMs: number): Member {
    if (this.members.size >= this.opts.maxWorkers) {
      throw new Error(`the job already has cluster.max_workers = ${this.opts.maxWorkers} workers`);
    }
    const m: Member = {
      ...info,
      id: this.newId(),
      seq: this.nextSeq++,
      lastHeartbeatMs: nowMs,
      lastStep: info.committedStep,
    };
    this.members.set(m.id, m);
    return m;
  }

  /** Records a heartbeat; false when the worker is not (any longer) a member. */
  heartbeat(id: string, nowMs: number, step?: number): boolean {
    const m = this.members.get(id);
    if (!m) return false;
    m.lastHeartbeatMs = nowMs;
    if (step !== undefined && step > m.lastStep) m.lastStep = step;
    return true;
  }

  /** Removes a worker (it is fenced: its later RPCs are refused until it re-registers). */
  remove(id: string, reason: DeathReason): boolean {
    if (!this.members.delete(id)) return false;
    this.deaths.push({ id, reason, generation: this.gen.number });
    return true;
  }

  /** Removes every worker silent for longer than the heartbeat timeout; returns their ids. */
  expire(nowMs: number): string[] {
    const dead: string[] = [];
    for (const m of this.members.values()) {
      if (nowMs - m.lastHeartbeatMs > this.opts.heartbeatTimeoutMs) dead.push(m.id);
    }
    for (const id of dead) this.remove(id, 'heartbeat-timeout');
    return dead;
  }

  /** Forces the next `needsNewGeneration()` to be true (the ring must be re-formed). */
  invalidate(): void {
    this.stale = true;
  }
  private stale = false;

  /** True when the live set differs from the current ring (or it was invalidated) and there are enough workers. */
  needsNewGeneration(): boolean {
    const live = this.alive();
    // min_workers gates the rendezvous only: afterwards the job goes on with whoever is left.
    if (live.length < (this.gen.number === 0 ? this.opts.minWorkers : 1)) return false;
    if (this.stale && live.length > 0) return true;
    const ring = this.gen.ring;
    if (ring.length !== live.length) return true;
    const ids = new Set(live.map((m) => m.id));
    return ring.some((m) => !ids.has(m.id));
  }

  /** True when the current ring lost a member (its step cannot complete). */
  ringBroken(): boolean {
    return this.gen.ring.some((m) => !this.members.has(m.id));
  }

  /** The newest generation numbered or noted: the next one is numbered above it. */
  get knownGeneration(): number {
    return Math.max(this.gen.number, this.floor);
  }

  /** Notes a generation a worker took part in (under an earlier coordinator): later ones are numbered above it. */
  noteGeneration(g: number): void {
    if (g > this.floor) this.floor = g;
  }

  /** Starts the next generation with every live worker; ring order puts workers of a host together. */
  nextGeneration(): Generation {
    this.stale = false;
    this.gen = { number: Math.max(this.gen.number, this.floor) + 1, ring: ringOrder(this.alive()) };
    return this.gen;
  }
}

/** Ring order: grouped by host (hosts in order of their first registration), then registration order. */
export function ringOrder(members: readonly Member[]): Member[] {
  const firstSeq = new Map<string, number>();
  for (const m of members) firstSeq.set(m.host, Math.min(firstSeq.get(m.host) ?? Infinity, m.seq));
  return [...members].sort(
    (a, b) => (firstSeq.get(a.host) as number) - (firstSeq.get(b.host) as number) || a.seq - b.seq,
  );
}
