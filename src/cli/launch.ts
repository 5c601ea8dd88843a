/**
 * `ringdiff launch`: a whole distributed job on one machine — the coordinator and N workers as
 * child processes on loopback, one progress bar, Ctrl-C forwarded for a clean stop, every
 * process's log in `<out_dir>/logs/`.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { closeSync, mkdirSync, openSync, writeFileSync, existsSync, readFileSync } from 'node:fs';
import { cpus } from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { setTimeout as delay } from 'node:timers/promises';
import cliProgress from 'cli-progress';
import { loadConfig } from '../config/load.js';
import { CoordinatorClient } from '../worker/client.js';
import { UsageError } from './common.js';
import { freePort } from '../util/net.js';

export interface LaunchOptions {
  workers: number;
  config?: string;
  set?: string[];
  backend?: string;
  metrics?: string;
  progress?: boolean;
}

const BIN = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../../bin/ringdiff.js');

/** The run's join token: reused from `<out_dir>/token` (mode 0600) or generated there. */
function runToken(outDir: string): string {
  const file = path.join(outDir, 'token');
  if (existsSync(file)) {
    const t = readFileSync(file, 'utf8').trim();
    if (t.length >= 16) return t;
  }
  const t = randomBytes(24).toString('hex');
  writeFileSync(file, `${t}\n`, { mode: 0o600 });
  return t;
}

interface Proc {
  name: string;
  child: ChildProcess;
  exit: Promise<number>;
  code: number | null;
}

/** Starts the job and resolves with its exit code (0: finished or cleanly stopped). */
export async function launch(o: LaunchOptions): Promise<number> {
  if (!Number.isInteger(o.workers) || o.workers < 1) throw new UsageError('--workers must be an integer ≥ 1');
  const sets = [...(o.set ?? [])];
  // Rendezvous waits for every launched worker unless the user chose otherwise.
  if (!sets.some((s) => s.startsWith('cluster.min_workers='))) sets.push(`cluster.min_workers=${o.workers}`);
  const cfg = loadConfig(o.config, sets);
  if (cfg.cluster.min_workers > o.workers)
    throw new UsageError(
      `cluster.min_workers ${cfg.cluster.min_workers} is more than --workers ${o.workers}`,
    );
  const outDir = cfg.run.out_dir;
  const logs = path.join(outDir, 'logs');
  mkdirSync(logs, { recursive: true });
  const token = process.env.RINGDIFF_TOKEN || cfg.cluster.token || runToken(outDir);
  const port = await freePort();
  const address = `127.0.0.1:${port}`;
  const threads = String(Math.max(1, Math.floor(cpus().length / o.workers)));
  const common = [...(o.config ? ['--config', o.config] : []), ...sets.flatMap((s) => ['--set', s])];
  const backend = o.backend ? ['--backend', o.backend] : [];
  const env = { ...process.env, RINGDIFF_TOKEN: token };

  const procs: Proc[] = [];
  const start = (name: string, args: string[], extraEnv: Record<string, string> = {}): Proc => {
    // The child writes its log file itself (not through a pipe to us): the log goes on, and a
    // write cannot fail, if launch is gone.
    const fd = openSync(path.join(logs, `${name}.log`), 'a');
    // Own process group: a terminal's Ctrl-C reaches launch only, which stops the job cleanly.
    const child = spawn(process.execPath, [BIN, ...args], {
      env: { ...env, ...extraEnv },
      stdio: ['ignore', fd, fd],
      detached: true,
    });
    closeSync(fd);
    const p: Proc = {
      name,
      child,
      code: null,
      exit: new Promise((resolve) =>
        child.on('exit', (code, sig) => {
          p.code = code ?? (sig ? 128 : 1);
          resolve(p.code);
        }),
      ),
    };
    procs.push(p);
    return p;
  };
  // --exit-with-parent: if launch itself is killed (SIGKILL), its children stop instead of
  // living on as orphans holding the port and the run directory.
  const coord = start('coordinator', [
    'coordinator',
    '--exit-with-parent',
    ...common,
    ...backend,
    '--listen',
    address,
    ...(o.metrics ? ['--metrics', o.metrics] : []),
  ]);
  for (let i = 0; i < o.workers; i++) {
    start(
      `worker-${i}`,
      [
        'worker',
        '--exit-with-parent',
        '--coordinator',
        address,
        ...common,
        ...backend,
        '--ring-bind',
        'tcp://127.0.0.1:0',
      ],
      {
        RINGDIFF_THREADS: process.env.RINGDIFF_THREADS ?? threads,
      },
    );
  }
  const killAll = (sig: NodeJS.Signals) => {
    for (const p of procs) if (p.code === null) p.child.kill(sig);
  };
  const onExit = () => killAll('SIGKILL');
  process.on('exit', onExit);

  let stopping = false;
  const onSignal = () => {
    if (stopping) {
      killAll('SIGKILL');
      process.exit(130);
    }
    stopping = true;
    process.stderr.write('\nstopping: the coordinator asks for a final checkpoint (Ctrl-C again to kill)\n');
    // SIGTERM, which the coordinator may also get directly (systemd, a process-group kill): a
    // repeated SIGTERM changes nothing there, a repeated SIGINT would end it at once.
    coord.child.kill('SIGTERM');
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);

  const tty = o.progress !== false && process.stderr.isTTY;
  const bar = tty
    ? new cliProgress.SingleBar(
        {
          format:
            'step {value}/{total} |{bar}| loss {loss} | {sps} samples/s | {workers} workers | ETA {eta_formatted}',
          etaBuffer: 50,
          hideCursor: true,
        },
        cliProgress.Presets.shades_classic,
      )
    : null;
  bar?.start(cfg.train.steps, 0, { loss: '-', sps: '-', workers: 0 });
  const client = new CoordinatorClient(address, token, undefined, 2000);
  const poll = setInterval(() => {
    client
      .status()
      .then((s) => {
        bar?.update(Number(s.step), {
          loss: s.loss ? s.loss.toFixed(4) : '-',
          sps: s.samplesPerS ? s.samplesPerS.toFixed(1) : '-',
          workers: s.workers.length,
        });
      })
      .catch(() => {});
  }, 500);

  try {
    // Workers may die and be replaced by the job's elasticity; the coordinator's exit decides. If
    // every worker is gone while it still runs, the job cannot go on.
    const workersGone = Promise.all(procs.filter((p) => p !== coord).map((p) => p.exit)).then(
      () => 'workers',
    );
    const first = await Promise.race([coord.exit.then(() => 'coordinator'), workersGone]);
    if (first === 'workers' && coord.code === null) {
      const failed = procs
        .filter((p) => p !== coord && p.code !== 0)
        .map((p) => `${p.name} (exit ${p.code})`);
      // A short grace period: the coordinator exits by itself right after the workers when the job finished.
      // Workers exit 0 only on FINISH or STOP: the coordinator is then drawing samples and the
      // report, however long that takes. Otherwise a short grace period.
      const code =
        failed.length === 0
          ? await coord.exit
          : await Promise.race([coord.exit, delay(5000, null, { ref: false })]);
      if (code === null) {
        coord.child.kill('SIGKILL');
        bar?.stop();
        throw new Error(
          `every worker exited (${failed.join(', ') || 'exit 0'}) before the job finished; see ${logs}/`,
        );
      }
    }
    const code = await coord.exit;
    // Workers exit by themselves after FINISH/STOP; give them a moment, then make sure. (The timers
    // do not hold the process: a pending 10 s one kept launch alive that long after its job.)
    await Promise.race([Promise.all(procs.map((p) => p.exit)), delay(10000, null, { ref: false })]);
    killAll('SIGKILL');
    bar?.stop();
    if (code !== 0) {
      // Its own one-line error (a config that does not fit the data, a port in use) says more than
      // the exit code: show it, and where the rest is.
      const why = lastErrorLine(path.join(logs, 'coordinator.log'));
      throw new Error(
        `the coordinator exited with code ${code}${why ? `: ${why}` : ''}; see ${logs}/coordinator.log`,
      );
    }
    const samples = path.join(outDir, 'samples.png');
    process.stderr.write(
      `${stopping ? 'stopped' : 'done'}: run directory ${outDir}${!stopping && existsSync(samples) ? `, samples in ${samples}` : ''}\n`,
    );
    return 0;
  } finally {
    clearInterval(poll);
    client.close();
    bar?.stop();
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
    process.off('exit', onExit);
    killAll('SIGKILL');
  }
}

/** The last `ringdiff: …` error line of a process log, without the prefix (null if none). */
function lastErrorLine(file: string): string | null {
  try {
    const lines = readFileSync(file, 'utf8').trimEnd().split('\n');
    const line = [...lines].reverse().find((l) => l.startsWith('ringdiff: '));
    return line ? line.slice('ringdiff: '.length) : null;
  } catch {
    return null;
  }
}
