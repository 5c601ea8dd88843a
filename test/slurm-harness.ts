/**
 * A real one-node Slurm for tests: our own munged (private socket and key), slurmctld and slurmd,
 * configured in a temp directory and reached through SLURM_CONF, so nothing of the machine's own
 * Slurm or munge set-up is used or changed. Needs root (slurmd starts jobs as their user) and
 * Debian's `slurm-wlm` and `munge`; `slurmUnavailable()` says why not where they are missing.
 *
 * The node declares more CPUs than the machine has (`SlurmdParameters=config_overrides`) so that
 * a job of several tasks fits on 2 cores; processes are tracked without cgroups
 * (`proctrack/linuxproc`, `task/none`), which works inside containers.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { hostname } from 'node:os';
import * as path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { freePort } from '../src/util/net.js';
import { missingCommand, missingRoot } from './requirements.js';

/** Why a one-node Slurm cannot run here (null: it can). */
export function slurmUnavailable(): string | null {
  return (
    missingRoot('a Slurm cluster (slurmd starts jobs as their user)') ??
    missingCommand('slurmctld', 'slurm-wlm', ['-V']) ??
    missingCommand('slurmd', 'slurm-wlm', ['-V']) ??
    missingCommand('munged', 'munge', ['--version'])
  );
}

/** A job as `scontrol show job` reports it. */
export interface JobInfo {
  state: string;
  restarts: number;
  exitCode: string;
}

export class OneNodeSlurm {
  private readonly daemons: ChildProcess[] = [];
  /** Environment for Slurm commands: SLURM_CONF pointing at this cluster. */
  readonly env: NodeJS.ProcessEnv;

  private constructor(
    readonly dir: string,
    readonly node: string,
  ) {
    this.env = { ...process.env, SLURM_CONF: path.join(dir, 'slurm.conf') };
  }

  /** Writes the configuration, starts munged, slurmctld and slurmd, waits until the node is idle. */
  static async start(dir: string, cpus = 8): Promise<OneNodeSlurm> {
    mkdirSync(dir, { recursive: true });
    for (const d of ['state', 'spool', 'log']) mkdirSync(path.join(dir, d), { recursive: true });
    const node = hostname().split('.')[0] as string;
    const s = new OneNodeSlurm(dir, node);
    const key = path.join(dir, 'munge.key');
    writeFileSync(key, randomBytes(128), { mode: 0o600 });
    const sock = path.join(dir, 'munge.sock');
    s.daemon('munged', [
      '-F',
      '--force',
      `--socket=${sock}`,
      `--key-file=${key}`,
      `--pid-file=${path.join(dir, 'munged.pid')}`,
      `--log-file=${path.join(dir, 'log', 'munged.log')}`,
      `--seed-file=${path.join(dir, 'munged.seed')}`,
    ]);
    const [ctld, slurmd] = [await freePort(), await freePort()];
    const conf = [
      'ClusterName=ringdiff-test',
      `SlurmctldHost=${node}(127.0.0.1)`,
      `SlurmctldPort=${ctld}`,
      `SlurmdPort=${slurmd}`,
      'SlurmUser=root',
      'AuthType=auth/munge',
      `AuthInfo=socket=${sock}`,
      `StateSaveLocation=${path.join(dir, 'state')}`,
      `SlurmdSpoolDir=${path.join(dir, 'spool')}`,
      `SlurmctldPidFile=${path.join(dir, 'slurmctld.pid')}`,
      `SlurmdPidFile=${path.join(dir, 'slurmd.pid')}`,
      `SlurmctldLogFile=${path.join(dir, 'log', 'slurmctld.log')}`,
      `SlurmdLogFile=${path.join(dir, 'log', 'slurmd.log')}`,
      'ProctrackType=proctrack/linuxproc',
      'TaskPlugin=task/none',
      'SlurmdParameters=config_overrides',
      'SelectType=select/cons_tres',
      'SelectTypeParameters=CR_Core',
      'ReturnToService=2',
      'MpiDefault=none',
      'JobAcctGatherType=jobacct_gather/none',
      'AccountingStorageType=accounting_storage/none',
      // Slurm's default: what the job's processes get between SIGTERM and SIGKILL.
      'KillWait=30',
      // Finished jobs stay visible to scontrol long enough to be checked.
      'MinJobAge=600',
      `NodeName=${node} NodeAddr=127.0.0.1 CPUs=${cpus} RealMemory=8000 State=UNKNOWN`,
      `PartitionName=debug Nodes=${node} Default=YES MaxTime=INFINITE State=UP`,
      '',
    ].join('\n');
    writeFileSync(path.join(dir, 'slurm.conf'), conf);
    await sleep(300); // munged's socket
    s.daemon('slurmctld', ['-D', '-i']);
    s.daemon('slurmd', ['-D']);
    const until = Date.now() + 30_000;
    for (;;) {
      const r = spawnSync('sinfo', ['-h', '-o', '%T'], { env: s.env, encoding: 'utf8' });
      if (r.status === 0 && r.stdout.trim() === 'idle') break;
      if (Date.now() > until) {
        await s.stop();
        throw new Error(`one-node Slurm not idle after 30 s (sinfo: ${r.stdout.trim() || r.stderr.trim()})`);
      }
      await sleep(200);
    }
    return s;
  }

  private daemon(cmd: string, args: string[]): void {
    const child = spawn(cmd, args, { env: this.env, stdio: ['ignore', 'ignore', 'pipe'] });
    let err = '';
    child.stderr?.on('data', (d: Buffer) => (err = `${err}${d.toString()}`.slice(-2000)));
    child.on('exit', (code) => {
      if (code !== null && code !== 0) process.stderr.write(`${cmd} exited ${code}: ${err}\n`);
    });
    this.daemons.push(child);
  }

  /** Runs a Slurm command; throws with its stderr when it fails. */
  run(cmd: string, args: string[], env: NodeJS.ProcessEnv = {}, cwd?: string): string {
    const r = spawnSync(cmd, args, { env: { ...this.env, ...env }, cwd, encoding: 'utf8' });
    if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')}: ${r.stderr.trim() || `exit ${r.status}`}`);
    return r.stdout;
  }

  /** Submits a batch script; the job id. */
  sbatch(args: string[], env: NodeJS.ProcessEnv, cwd: string): number {
    const id = Number(
      this.run('sbatch', ['--parsable', ...args], env, cwd)
        .trim()
        .split(';')[0],
    );
    if (!Number.isInteger(id)) throw new Error(`sbatch did not print a job id`);
    return id;
  }

  job(id: number): JobInfo {
    const line = this.run('scontrol', ['show', 'job', '-o', String(id)]);
    const field = (k: string) => new RegExp(`\\b${k}=(\\S+)`).exec(line)?.[1] ?? '';
    return {
      state: field('JobState'),
      restarts: Number(field('Restarts') || 0),
      exitCode: field('ExitCode'),
    };
  }

  /** Waits until job `id` is in one of `states`; returns its info. */
  async waitFor(id: number, states: string[], timeoutMs: number): Promise<JobInfo> {
    const until = Date.now() + timeoutMs;
    for (;;) {
      const j = this.job(id);
      if (states.includes(j.state)) return j;
      if (Date.now() > until)
        throw new Error(`job ${id} is ${j.state} after ${timeoutMs} ms, not ${states.join('/')}`);
      await sleep(250);
    }
  }

  /** Stops the daemons (cancelling what still runs) and leaves the directory for inspection. */
  async stop(): Promise<void> {
    spawnSync('scancel', ['--full', '--partition=debug'], { env: this.env });
    for (const d of [...this.daemons].reverse()) d.kill('SIGTERM');
    await Promise.all(
      this.daemons.map(
        (d) =>
          new Promise<void>((resolve) => {
            if (d.exitCode !== null || d.signalCode !== null) return resolve();
            const t = setTimeout(() => {
              d.kill('SIGKILL');
              resolve();
            }, 10_000);
            d.once('exit', () => {
              clearTimeout(t);
              resolve();
            });
          }),
      ),
    );
  }

  /** slurmctld's and slurmd's logs, for failure messages. */
  logs(): string {
    const read = (f: string) => {
      try {
        return readFileSync(path.join(this.dir, 'log', f), 'utf8')
          .split('\n')
          .slice(-15)
          .join('\n');
      } catch {
        return '';
      }
    };
    return `slurmctld:\n${read('slurmctld.log')}\nslurmd:\n${read('slurmd.log')}`;
  }
}
