/**
 * `npm run test:chaos`: a randomised, seeded fault schedule against a job on an emulated cluster
 * (network namespaces, test/netns-harness.ts), then a table of what was injected and whether the
 * run stayed exact.
 *
 *   npm run test:chaos -- [--minutes 5] [--seed 1] [--steps N] [--hosts 4] [--workers 3]
 *       [--kinds kill,stop,link,shape,coord,join] [--tol 1e-4] [--sampler uniform] [--keep]
 *
 * The job has `--steps` steps (default: about what it makes in `--minutes` under faults). Faults
 * are drawn every 2-6 s (seeded) while `--minutes` last and the job is not near its end:
 * worker SIGKILL, SIGSTOP past the heartbeat timeout and SIGCONT, a host's link down and up,
 * delay and loss on a link, the coordinator killed and restarted on its run directory, a worker
 * joining. Then everything is healed and the job runs to its end. The same job is run undisturbed
 * (`launch`, 2 workers, loopback) and compared; it is run once more with `--workers` workers, and
 * that run's difference from the reference (summation order alone) is printed as the anchor for
 * the weight tolerance. Checked: every step 1…N is in history.jsonl
 * (steps lost = 0), steps recorded twice (redone after a rollback) have the same loss, every
 * step's loss is within 1e-5 (relative) of the undisturbed run's, the final checkpoint verifies,
 * and its weights and EMA are within `--tol` (default 1e-4: the float summation order differs
 * with the world size, and over ten thousand steps that drifts past the 1e-5 of short runs).
 * The job samples timesteps uniformly by default: with `--sampler loss-second-moment` the
 * timestep of an example is a discrete function of the loss history, which a 1e-7 difference in
 * that history can flip over thousands of steps (seen between two undisturbed runs, `train` and
 * `launch --workers 2`, at step 8052 of 10500), and the per-step check would then fail on a
 * difference that is not a fault's.
 * Exits non-zero if any check fails. Needs root and iproute2; elsewhere it says why and exits 0.
 */
import { Command, CommanderError, InvalidArgumentError } from 'commander';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { checkpointDiff, runLaunch } from '../test/cluster-harness.js';
import { NetnsCluster, netnsUnavailable, type NetProc } from '../test/netns-harness.js';
import { loadCheckpoint } from '../src/model/checkpoint.js';
import { HISTORY_FILE } from '../src/telemetry/history.js';

type Kind = 'kill' | 'stop' | 'link' | 'shape' | 'coord' | 'join';
const KINDS: Kind[] = ['kill', 'stop', 'link', 'shape', 'coord', 'join'];
const LABEL: Record<Kind, string> = {
  kill: 'worker SIGKILL',
  stop: 'worker SIGSTOP/SIGCONT',
  link: 'host link down/up',
  shape: 'link delay + loss',
  coord: 'coordinator kill+restart',
  join: 'worker join',
};
const HB_MS = 3000;
const TOL = 1e-5;

interface Args {
  minutes: number;
  seed: number;
  steps: number;
  hosts: number;
  workers: number;
  kinds: Kind[];
  keep: boolean;
  tol: number;
  sampler: 'uniform' | 'loss-second-moment';
}

/** A bad command-line option: reported as one line. */
class ArgError extends Error {}

function parseArgs(argv: string[]): Args {
  const num = (flag: string) => (v: string) => {
    const x = Number(v);
    if (!Number.isFinite(x)) throw new InvalidArgumentError(`${flag} must be a number, not '${v}'`);
    return x;
  };
  const o = new Command('test:chaos')
    .description('a seeded random fault schedule against a job on an emulated cluster')
    .option('--minutes <m>', 'how long faults are injected', num('--minutes'), 5)
    .option('--seed <n>', 'fault schedule seed', num('--seed'), 1)
    .option('--steps <n>', 'job steps (default: about what it makes in --minutes)', num('--steps'))
    .option('--hosts <n>', 'emulated hosts (2…16)', num('--hosts'), 4)
    .option('--workers <n>', 'workers at start (1…hosts)', num('--workers'), 3)
    .option('--kinds <list>', `fault kinds (${KINDS.join(',')})`, KINDS.join(','))
    .option('--tol <x>', 'final weight tolerance', num('--tol'), 1e-4)
    .option('--sampler <s>', 'uniform or loss-second-moment', 'uniform')
    .option('--keep', 'keep the run directory and logs', false)
    .exitOverride()
    .parse(argv, { from: 'user' })
    .opts<Omit<Args, 'kinds' | 'sampler' | 'steps'> & { kinds: string; sampler: string; steps?: number }>();
  const a: Args = {
    ...o,
    steps: o.steps ?? 0,
    kinds: o.kinds.split(',') as Kind[],
    sampler: o.sampler as Args['sampler'],
  };
  if (!(a.minutes > 0)) throw new ArgError('--minutes must be > 0');
  // Default: about as many steps as the job makes in the fault window (~35 steps/s here under faults).
  if (a.steps === 0) a.steps = Math.max(1000, Math.round((35 * 60 * a.minutes) / 100) * 100);
  if (!Number.isInteger(a.steps) || a.steps < 100) throw new ArgError('--steps must be an integer ≥ 100');
  if (!Number.isInteger(a.hosts) || a.hosts < 2 || a.hosts > 16) throw new ArgError('--hosts: 2…16');
  if (!Number.isInteger(a.workers) || a.workers < 1 || a.workers > a.hosts)
    throw new ArgError('--workers: 1…hosts');
  for (const k of a.kinds) if (!KINDS.includes(k)) throw new ArgError(`--kinds: unknown kind ${k}`);
  if (!['uniform', 'loss-second-moment'].includes(a.sampler))
    throw new ArgError('--sampler: uniform or loss-second-moment');
  return a;
}

/** mulberry32: a small seeded generator. */
function rng(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

function job(name: string, outDir: string, steps: number, sampler: Args['sampler']): string {
  return `
run: { name: ${name}, out_dir: ${outDir} }
data: { dataset: "toy:8gaussians", size: 8192 }
model: { kind: mlp, hidden: 64, layers: 2, num_classes: 0 }
diffusion: { timesteps: 100, timestep_sampler: ${sampler} }
train: { steps: ${steps}, global_batch: 60, warmup_steps: 20, checkpoint_every: 100, ema_sync_every: 10, log_every: 50 }
sample: { count: 0 }
cluster: { min_workers: 1, heartbeat_timeout_ms: ${HB_MS}, verify_every: 10, ring_timeout_ms: 15000 }
`;
}

interface Fault {
  kind: Kind;
  t: number;
  target: string;
  step: number;
  generation: number;
  /** ms until training went on in a newer generation (null: not measured / never). */
  recoveryMs: number | null;
}

async function main(): Promise<number> {
  const a = parseArgs(process.argv.slice(2));
  const why = netnsUnavailable();
  if (why) {
    process.stdout.write(`test:chaos skipped: ${why}\n`);
    return 0;
  }
  const root = mkdtempSync(path.join(tmpdir(), 'ringdiff-chaos-'));
  const outDir = path.join(root, 'chaos');
  const rand = rng(a.seed);
  const pick = <T>(xs: readonly T[]): T => xs[Math.floor(rand() * xs.length)] as T;
  const uniform = (lo: number, hi: number) => lo + (hi - lo) * rand();
  const say = (s: string) => process.stderr.write(`[chaos ${((Date.now() - t0) / 1000).toFixed(1)}s] ${s}\n`);
  const t0 = Date.now();

  const c = new NetnsCluster({
    dir: path.join(root, 'logs'),
    configYaml: job('chaos', outDir, a.steps, a.sampler),
    hosts: a.hosts,
    relays: true,
  }).up();
  const faults: Fault[] = [];
  const coordinators: NetProc[] = [];
  const stopped = new Set<NetProc>();
  const killed = new Set<NetProc>();
  const cut = new Set<number>();
  let coordDown = false;
  let finishedOk = false;
  let lastStep = 0;
  let faultStart = Date.now();
  let faultEnd = faultStart;
  const pendingHeals: Promise<void>[] = [];
  try {
    coordinators.push(await c.startCoordinator('coordinator-0'));
    const hostOrder = [...Array(a.hosts).keys()];
    for (let i = 0; i < a.workers; i++) await c.startWorker(hostOrder[i] as number);
    await c.waitFor((s) => s.step >= 5, 'the first steps', 180000);
    say(
      `job under way: ${a.steps} steps, ${a.workers} workers on ${a.hosts} hosts; faults for ${a.minutes} min`,
    );

    const watch = (f: Fault) => {
      const start = Date.now();
      void (async () => {
        while (Date.now() - start < 120000) {
          const s = c.status;
          if (s && s.generation > f.generation && s.step > f.step && s.state === 'training') {
            f.recoveryMs = Date.now() - f.t;
            return;
          }
          await sleep(50);
        }
      })();
    };
    const heal = (ms: number, fn: () => Promise<void> | void) => {
      const p = sleep(ms).then(fn);
      pendingHeals.push(p);
    };
    const until = t0 + a.minutes * 60000;
    faultStart = Date.now();
    while (Date.now() < until) {
      await sleep(uniform(2000, 6000));
      const s = c.status;
      if (s) lastStep = Math.max(lastStep, s.step);
      const done = !coordDown && c.coordinator?.exitCode === 0;
      if (lastStep >= a.steps - 150 || done) {
        say('the job is near its end: no more faults');
        break;
      }
      const live = c.workers().filter((p) => !stopped.has(p) && !cut.has(c.hostIndex(p.ns)));
      const kind = pick(a.kinds);
      const f: Fault = {
        kind,
        t: Date.now(),
        target: '',
        step: s?.step ?? -1,
        generation: s?.generation ?? 0,
        recoveryMs: null,
      };
      if (kind === 'kill') {
        if (live.length < 2) continue;
        const v = pick(live);
        f.target = v.name;
        killed.add(v);
        c.signal(v, 'SIGKILL');
        watch(f);
      } else if (kind === 'join') {
        if (c.workers().length >= a.hosts) continue;
        const h = Math.floor(rand() * a.hosts);
        f.target = (await c.startWorker(h, `joiner-${faults.length}`)).name;
        watch(f);
      } else if (kind === 'stop') {
        if (live.length < 2) continue;
        const v = pick(live);
        const ms = Math.round(uniform(0.6, 2) * HB_MS);
        f.target = `${v.name} for ${ms} ms`;
        stopped.add(v);
        c.signal(v, 'SIGSTOP');
        if (ms > HB_MS) watch(f);
        heal(ms, () => {
          c.signal(v, 'SIGCONT');
          stopped.delete(v);
        });
      } else if (kind === 'link') {
        if (live.length < 2) continue;
        const v = pick(live);
        const h = c.hostIndex(v.ns);
        const ms = Math.round(uniform(1.2, 2.5) * HB_MS);
        f.target = `host ${h} for ${ms} ms`;
        cut.add(h);
        c.link(h, false);
        watch(f);
        heal(ms, () => {
          c.link(h, true);
          cut.delete(h);
        });
      } else if (kind === 'shape') {
        const h = rand() < 0.25 ? ('coordinator' as const) : Math.floor(rand() * a.hosts);
        const delayMs = Math.round(uniform(5, 30));
        const lossPct = Math.round(uniform(0, 2) * 10) / 10;
        const ms = Math.round(uniform(4000, 12000));
        f.target = `${h === 'coordinator' ? 'coordinator' : `host ${h}`}: ${delayMs} ms, ${lossPct} % for ${ms} ms`;
        await c.shape(h, { delayMs, lossPct });
        heal(ms, () => c.shape(h, {}));
      } else {
        if (coordDown) continue;
        const cur = c.coordinator;
        if (!cur) continue;
        const ms = Math.round(uniform(500, 3000));
        f.target = `down ${ms} ms`;
        coordDown = true;
        c.signal(cur, 'SIGKILL');
        watch(f);
        heal(ms, async () => {
          await cur.exit;
          coordinators.push(await c.startCoordinator(`coordinator-${coordinators.length}`));
          coordDown = false;
        });
      }
      faults.push(f);
      say(`${LABEL[kind]}: ${f.target} (step ${f.step}, generation ${f.generation})`);
      // Keep the job alive: never fewer than one worker that is not killed.
      if (c.workers().length === 0)
        await c.startWorker(Math.floor(rand() * a.hosts), `rescue-${faults.length}`);
    }

    faultEnd = Date.now();
    say('healing: links up, shapes cleared, stopped workers continued, coordinator up');
    await Promise.all(pendingHeals);
    for (let h = 0; h < a.hosts; h++) c.link(h, true);
    for (const h of ['coordinator' as const, ...Array(a.hosts).keys()]) await c.shape(h, {});
    for (const p of c.workers()) c.signal(p, 'SIGCONT');
    if (c.workers().length < 2) await c.startWorker(0, 'final-joiner');
    const coord = c.coordinator as NetProc;
    const code = await Promise.race([coord.exit, sleep(15 * 60000).then(() => null)]);
    finishedOk = code === 0;
    say(`coordinator exit: ${code}`);
    await Promise.race([Promise.all(c.workers().map((p) => p.exit)), sleep(20000)]);
  } finally {
    await c.stop();
  }

  // The undisturbed run of the same job.
  const refDir = path.join(root, 'reference');
  const refCfg = path.join(root, 'reference.yaml');
  writeFileSync(refCfg, job('reference', refDir, a.steps, a.sampler));
  say('undisturbed reference run (launch, 2 workers, loopback)');
  const refCode = await runLaunch(root, 'reference', ['--workers', '2', '--config', refCfg]);
  // The anchor for the weight tolerance: the same undisturbed job with another world size drifts
  // from the reference by float summation order alone; faults should add nothing to that.
  const anchorDir = path.join(root, 'anchor');
  const anchorCfg = path.join(root, 'anchor.yaml');
  writeFileSync(anchorCfg, job('anchor', anchorDir, a.steps, a.sampler));
  say(`undisturbed anchor run (launch, ${a.workers} workers, loopback)`);
  const anchorCode = await runLaunch(root, 'anchor', ['--workers', String(a.workers), '--config', anchorCfg]);

  // History: every step once at least; steps recorded again (redone after a rollback) with the same loss.
  const byStep = new Map<number, number[]>();
  try {
    for (const line of readFileSync(path.join(outDir, HISTORY_FILE), 'utf8').split('\n')) {
      if (!line.trim()) continue;
      try {
        const e = JSON.parse(line) as { step: number; loss: number };
        byStep.set(e.step, [...(byStep.get(e.step) ?? []), e.loss]);
      } catch {
        // torn line
      }
    }
  } catch {
    // no history
  }
  // Every step's loss against the undisturbed run's: a step applied twice, skipped or computed from
  // a wrong state shows up as a jump (≥ 1e-3 relative); summation order alone stays near 1e-7.
  const refLoss = new Map<number, number>();
  try {
    for (const line of readFileSync(path.join(refDir, HISTORY_FILE), 'utf8').split('\n')) {
      try {
        const e = JSON.parse(line) as { step: number; loss: number };
        if (!refLoss.has(e.step)) refLoss.set(e.step, e.loss);
      } catch {
        // torn or empty line
      }
    }
  } catch {
    // no reference history
  }
  let worstStep = 0;
  let worstRel = 0;
  for (const [step, losses] of byStep) {
    const r = refLoss.get(step);
    if (r === undefined) continue;
    for (const x of losses) {
      const rel = Math.abs(x - r) / Math.max(1e-12, Math.abs(r));
      if (rel > worstRel) [worstRel, worstStep] = [rel, step];
    }
  }
  let lost = 0;
  for (let s = 1; s <= a.steps; s++) if (!byStep.has(s)) lost++;
  const redone = [...byStep.values()].filter((l) => l.length > 1);
  const lossMismatch = redone.filter((l) =>
    l.some((x) => Math.abs(x - (l[0] as number)) > TOL * Math.max(1, Math.abs(l[0] as number))),
  ).length;
  let finalOk = false;
  let diff = { model: Infinity, ema: Infinity };
  try {
    await loadCheckpoint(path.join(outDir, `ckpt-${a.steps}`));
    finalOk = true;
    if (refCode === 0)
      diff = await checkpointDiff(path.join(refDir, `ckpt-${a.steps}`), path.join(outDir, `ckpt-${a.steps}`));
  } catch (e) {
    say(`final checkpoint: ${(e as Error).message}`);
  }
  let anchor = { model: NaN, ema: NaN };
  if (refCode === 0 && anchorCode === 0)
    anchor = await checkpointDiff(
      path.join(refDir, `ckpt-${a.steps}`),
      path.join(anchorDir, `ckpt-${a.steps}`),
    ).catch(() => anchor);
  let generations = 0;
  for (const p of coordinators) {
    try {
      generations += readFileSync(p.log, 'utf8')
        .split('\n')
        .filter((l) => l.includes('"msg":"new generation"')).length;
    } catch {
      // no log
    }
  }
  const discarded = c.procs.reduce((n, p) => {
    try {
      return n + (readFileSync(p.log, 'utf8').match(/discarding state/g)?.length ?? 0);
    } catch {
      return n;
    }
  }, 0);

  // Workers that exited with an error by themselves (e.g. a weight checksum mismatch); 128 is the
  // SIGKILL of the clean-up.
  const failedWorkers = c.procs.filter(
    (p) => p.role === 'worker' && !killed.has(p) && p.exited && p.exitCode !== 0 && p.exitCode !== 128,
  );
  const pad = (s: string, n: number) => s.padEnd(n);
  const med = (xs: number[]) => {
    const v = [...xs].sort((x, y) => x - y);
    return v.length ? (v[Math.floor((v.length - 1) / 2)] as number) : NaN;
  };
  const out: string[] = [];
  out.push(
    `chaos: seed ${a.seed}, ${a.minutes} min of faults, ${a.hosts} hosts, ${a.workers} workers at start, ${a.steps} steps; wall ${((Date.now() - t0) / 1000).toFixed(0)} s`,
  );
  out.push('');
  out.push(`${pad('fault', 26)}${pad('injected', 10)}recovery ms (median / max, n)`);
  for (const k of KINDS) {
    const fs = faults.filter((f) => f.kind === k);
    const r = fs.map((f) => f.recoveryMs).filter((x): x is number => x !== null);
    out.push(
      `${pad(LABEL[k], 26)}${pad(String(fs.length), 10)}${r.length ? `${med(r)} / ${Math.max(...r)} (${r.length})` : '-'}`,
    );
  }
  out.push(
    `${pad('total', 26)}${pad(String(faults.length), 10)}in a fault window of ${((faultEnd - faultStart) / 1000).toFixed(0)} s`,
  );
  out.push('');
  out.push(`recoveries (new generations):     ${generations}`);
  out.push(`coordinator instances:            ${coordinators.length}`);
  out.push(`worker state discarded (fenced):  ${discarded}`);
  out.push(`job finished:                     ${finishedOk ? 'yes' : 'NO'}`);
  out.push(
    `workers that failed by themselves: ${failedWorkers.length}${failedWorkers.length ? ` (${failedWorkers.map((p) => `${p.name}: exit ${p.exitCode}`).join(', ')})` : ''}`,
  );
  out.push(`steps in history.jsonl:           ${a.steps - lost} / ${a.steps}`);
  out.push(`steps lost:                       ${lost}`);
  out.push(`steps redone after a rollback:    ${redone.length} (loss differs in ${lossMismatch})`);
  out.push(`final checkpoint ckpt-${a.steps}:        ${finalOk ? 'verified' : 'MISSING OR DAMAGED'}`);
  out.push(
    `final weights vs undisturbed:     max |Δ| model ${diff.model.toExponential(2)}, EMA ${diff.ema.toExponential(2)} (tolerance ${a.tol}; float summation order differs with the world size and drifts over long runs)`,
  );
  out.push(
    `undisturbed ${a.workers} vs 2 workers:     max |Δ| model ${anchor.model.toExponential(2)}, EMA ${anchor.ema.toExponential(2)} (the drift of summation order alone, for comparison)`,
  );
  out.push(
    `per-step loss vs undisturbed:     max relative difference ${worstRel.toExponential(2)} (step ${worstStep}; must be ≤ ${TOL})`,
  );
  const ok =
    worstRel <= TOL &&
    refLoss.size > 0 &&
    finishedOk &&
    failedWorkers.length === 0 &&
    lost === 0 &&
    lossMismatch === 0 &&
    finalOk &&
    diff.model <= a.tol &&
    diff.ema <= a.tol;
  out.push(`result:                           ${ok ? 'PASS' : 'FAIL'}`);
  process.stdout.write(`${out.join('\n')}\n`);
  if (a.keep || !ok) process.stderr.write(`run directory and logs kept: ${root}\n`);
  else rmSync(root, { recursive: true, force: true });
  return ok ? 0 : 1;
}

main().then(
  (code) => process.exit(code),
  (e: unknown) => {
    // commander has printed its own message (or the help) already.
    if (e instanceof CommanderError) process.exit(e.exitCode);
    if (e instanceof ArgError) {
      process.stderr.write(`test:chaos: ${e.message}\n`);
      process.exit(1);
    }
    process.stderr.write(`test:chaos: ${(e as Error).stack ?? String(e)}\n`);
    process.exit(1);
  },
);
