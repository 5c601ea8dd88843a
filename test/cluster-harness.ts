/**
 * A real local cluster for tests: the coordinator and workers as child processes of the
 * `ringdiff` binary on loopback, with their logs in a temp dir. (No tests in this file.)
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { createWriteStream, writeFileSync } from 'node:fs';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import type * as grpc from '@grpc/grpc-js';
import { execFileSync } from 'node:child_process';
import { CoordinatorClient } from '../src/worker/client.js';
import { loadCheckpoint } from '../src/model/checkpoint.js';
import type { ringdiff } from '../src/proto-gen/coordinator.js';
import { freePort } from '../src/util/net.js';
export { freePort };

export const BIN = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../bin/ringdiff.js');
export const TOKEN = 'test-token-0123456789abcdef';

export interface Proc {
  name: string;
  child: ChildProcess;
  exit: Promise<number>;
  log: string;
}

/** Spawns `ringdiff args…` with its output in `<dir>/<name>.log`. */
export function spawnRingdiff(
  dir: string,
  name: string,
  args: string[],
  env: Record<string, string> = {},
): Proc {
  const log = path.join(dir, `${name}.log`);
  const out = createWriteStream(log, { flags: 'a' });
  const child = spawn(process.execPath, [BIN, ...args], {
    env: { ...process.env, RINGDIFF_TOKEN: TOKEN, RINGDIFF_THREADS: '1', ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  child.stdout?.pipe(out);
  child.stderr?.pipe(out);
  const exit = new Promise<number>((resolve) =>
    child.on('exit', (code, sig) => resolve(code ?? (sig ? 128 : 1))),
  );
  return { name, child, exit, log };
}

/** Runs `ringdiff args…` to its end (asynchronously: the caller's event loop goes on); its exit code and output. */
export function runRingdiffCli(
  args: string[],
  env: Record<string, string> = {},
): Promise<{ code: number; out: string; err: string }> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [BIN, ...args], {
      env: { ...process.env, ...env },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let out = '';
    let err = '';
    child.stdout.on('data', (d: Buffer) => (out += d.toString()));
    child.stderr.on('data', (d: Buffer) => (err += d.toString()));
    // 'close', not 'exit': 'exit' can come before the last stdout/stderr chunks have been read
    // (seen under load as a failing config with an empty stderr). A signal death reads as 128.
    child.on('close', (code, signal) => resolve({ code: code ?? (signal ? 128 : 1), out, err }));
  });
}

/** The job config of the hostile tests: a small MLP on toy:8gaussians writing to `<root>/<name>`. */
export function toyJobYaml(root: string, name: string, steps: number): string {
  return `
run: { name: ${name}, out_dir: ${path.join(root, name)} }
data: { dataset: "toy:8gaussians", size: 4096 }
model: { kind: mlp, hidden: 64, layers: 2 }
diffusion: { timesteps: 100 }
train: { steps: ${steps}, global_batch: 60, warmup_steps: 5, checkpoint_every: 20, ema_sync_every: 10, log_every: 10 }
sample: { count: 0 }
cluster: { heartbeat_timeout_ms: 4000, ring_timeout_ms: 20000 }
`;
}

/** A coordinator and its workers, started by hand so that a test can kill and add processes. */
export class LocalCluster {
  coordinator: Proc | null = null;
  readonly workers: Proc[] = [];
  address = '';
  metricsAddress = '';
  private client: CoordinatorClient | null = null;
  /** Arguments every worker gets (e.g. a local config with TLS client settings). */
  workerArgs: string[] = [];
  /** Credentials the harness's own status client uses. */
  credentials: grpc.ChannelCredentials | undefined;
  private readonly configFile: string;

  constructor(
    readonly dir: string,
    configYaml: string,
    readonly sets: string[] = [],
  ) {
    this.configFile = path.join(dir, 'job.yaml');
    writeFileSync(this.configFile, configYaml);
  }

  private args(): string[] {
    return ['--config', this.configFile, ...this.sets.flatMap((s) => ['--set', s])];
  }

  /** Starts (or restarts, on the same port) the coordinator. */
  async startCoordinator(name = 'coordinator'): Promise<Proc> {
    if (!this.address) {
      this.address = `127.0.0.1:${await freePort()}`;
      this.metricsAddress = `127.0.0.1:${await freePort()}`;
    }
    this.coordinator = spawnRingdiff(this.dir, name, [
      'coordinator',
      ...this.args(),
      '--listen',
      this.address,
      '--metrics',
      this.metricsAddress,
    ]);
    this.client ??= new CoordinatorClient(this.address, TOKEN, this.credentials, 2000);
    return this.coordinator;
  }

  startWorker(name = `worker-${this.workers.length}`, extra: string[] = []): Proc {
    const p = spawnRingdiff(this.dir, name, [
      'worker',
      '--coordinator',
      this.address,
      '--ring-bind',
      'tcp://127.0.0.1:0',
      '--retry-for',
      '60',
      ...this.workerArgs,
      ...extra,
    ]);
    this.workers.push(p);
    return p;
  }

  async status(): Promise<ringdiff.v1.StatusReply | null> {
    try {
      return (await this.client?.status()) ?? null;
    } catch {
      return null;
    }
  }

  /** Polls the coordinator's status until `pred` holds. */
  async waitFor(
    pred: (s: ringdiff.v1.StatusReply) => boolean,
    what: string,
    timeoutMs = 120000,
  ): Promise<ringdiff.v1.StatusReply> {
    const end = Date.now() + timeoutMs;
    for (;;) {
      const s = await this.status();
      if (s && pred(s)) return s;
      if (Date.now() > end)
        throw new Error(`timed out waiting for ${what} (last status: step ${s?.step ?? '?'})`);
      await new Promise((r) => setTimeout(r, 100));
    }
  }

  /** Kills every process that is still running. */
  async stop(): Promise<void> {
    this.client?.close();
    for (const p of [this.coordinator, ...this.workers]) {
      if (p && p.child.exitCode === null && p.child.signalCode === null) p.child.kill('SIGKILL');
    }
    await Promise.all([this.coordinator, ...this.workers].map((p) => p?.exit));
  }
}

/** Runs `ringdiff launch` to completion; resolves with its exit code. */
export async function runLaunch(
  dir: string,
  name: string,
  args: string[],
  env: Record<string, string> = {},
): Promise<number> {
  const p = spawnRingdiff(dir, name, ['launch', '--no-progress', ...args], env);
  return p.exit;
}

/** Largest absolute difference between two checkpoints' model and EMA tensors. */
export async function checkpointDiff(
  a: string,
  b: string,
): Promise<{ model: number; ema: number; step: [number, number] }> {
  const ca = await loadCheckpoint(a);
  const cb = await loadCheckpoint(b);
  const diff = (x: typeof ca.model, y: typeof cb.model) => {
    let m = 0;
    for (const [n, t] of x) {
      const u = y.get(n);
      if (!u || u.data.length !== t.data.length) return Infinity;
      for (let i = 0; i < t.data.length; i++)
        m = Math.max(m, Math.abs((t.data[i] as number) - (u.data[i] as number)));
    }
    return m;
  };
  return { model: diff(ca.model, cb.model), ema: diff(ca.ema, cb.ema), step: [ca.step, cb.step] };
}

/** A throw-away CA, a server certificate for 127.0.0.1 and a client certificate (openssl). */
export function makeCertificates(
  dir: string,
): Record<'ca' | 'cert' | 'key' | 'clientCert' | 'clientKey', string> {
  const f = (n: string) => path.join(dir, n);
  const ssl = (...args: string[]) => execFileSync('openssl', args, { stdio: 'pipe' });
  const ec = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes'];
  ssl(
    'req',
    '-x509',
    ...ec,
    '-keyout',
    f('ca.key'),
    '-out',
    f('ca.pem'),
    '-days',
    '2',
    '-subj',
    '/CN=ringdiff-test-ca',
  );
  for (const [name, san] of [
    ['server', 'subjectAltName=IP:127.0.0.1,DNS:localhost'],
    ['client', 'subjectAltName=DNS:worker'],
  ] as const) {
    ssl('req', ...ec, '-keyout', f(`${name}.key`), '-out', f(`${name}.csr`), '-subj', `/CN=${name}`);
    writeFileSync(f(`${name}.ext`), `${san}\n`);
    ssl(
      'x509',
      '-req',
      '-in',
      f(`${name}.csr`),
      '-CA',
      f('ca.pem'),
      '-CAkey',
      f('ca.key'),
      '-CAcreateserial',
      '-out',
      f(`${name}.pem`),
      '-days',
      '2',
      '-extfile',
      f(`${name}.ext`),
    );
  }
  return {
    ca: f('ca.pem'),
    cert: f('server.pem'),
    key: f('server.key'),
    clientCert: f('client.pem'),
    clientKey: f('client.key'),
  };
}
