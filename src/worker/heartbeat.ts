/**
 * Heartbeats from a thread of their own: a training step may block the main thread for longer
 * than the heartbeat timeout (large models, the pure-JS backend), and a worker that is busy
 * computing must not be declared dead. The main thread publishes its generation and step in
 * shared memory; the thread reports back only when the coordinator says we are no longer a member.
 */
import { Worker as Thread, isMainThread, parentPort, workerData } from 'node:worker_threads';
import { CoordinatorClient } from './client.js';
import { credentialsFrom, type TlsPem } from '../config/credentials.js';

interface ThreadInit {
  address: string;
  token: string;
  tls: TlsPem | null;
  workerId: string;
  /** The worker secret of this registration (sent with every heartbeat). */
  secret: string;
  intervalMs: number;
  /** Int32 [generation] and Float64 [step], written by the main thread. */
  shared: SharedArrayBuffer;
}

/** The main thread's handle on the heartbeat thread of one registration. */
export class Heartbeats {
  private readonly thread: Thread;
  private readonly gen: Int32Array;
  private readonly step: Float64Array;

  constructor(
    init: Omit<ThreadInit, 'shared'>,
    /** Called (on the main thread) when the coordinator no longer counts us as a member. */
    onFenced: () => void,
  ) {
    const shared = new SharedArrayBuffer(16);
    this.gen = new Int32Array(shared, 0, 1);
    this.step = new Float64Array(shared, 8, 1);
    this.thread = new Thread(new URL(import.meta.url), {
      workerData: { ...init, shared } satisfies ThreadInit,
    });
    this.thread.on('message', (m: unknown) => {
      if (m === 'fenced') onFenced();
    });
    this.thread.on('error', (e) => {
      if (process.env.RINGDIFF_DEBUG) process.stderr.write(`heartbeat thread: ${String(e)}\n`);
      // A broken heartbeat thread shows up as a heartbeat timeout: the job re-forms without us.
    });
    this.thread.unref();
  }

  /** Publishes where this worker is (read by the thread at each beat). */
  update(generation: number, step: number): void {
    Atomics.store(this.gen, 0, generation);
    this.step[0] = step;
  }

  async stop(): Promise<void> {
    await this.thread.terminate();
  }
}

if (!isMainThread && parentPort && (workerData as { shared?: unknown } | null)?.shared) {
  const init = workerData as ThreadInit;
  const port = parentPort;
  const gen = new Int32Array(init.shared, 0, 1);
  const step = new Float64Array(init.shared, 8, 1);
  const client = new CoordinatorClient(
    init.address,
    init.token,
    credentialsFrom(init.tls),
    init.intervalMs * 2,
  );
  client.workerSecret = init.secret;
  let fenced = false;
  const beat = () => {
    client
      .heartbeat({ workerId: init.workerId, generation: Atomics.load(gen, 0), step: step[0] ?? -1 })
      .then((r) => {
        if (!r.member && !fenced) {
          fenced = true;
          port.postMessage('fenced');
        }
      })
      .catch(() => {
        // Unreachable coordinator: the main thread's plan stream reports it.
      });
  };
  beat();
  setInterval(beat, init.intervalMs);
}
