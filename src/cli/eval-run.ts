/**
 * `ringdiff eval run`: the evaluation of a training job (`eval.*`: sample metrics on the built-in
 * feature network, bits/dim) on a finished checkpoint, by one process or by `--workers N` local
 * processes that form a ring and split the sample indices exactly as workers do during training
 * (src/job/evaluate.ts): only features and per-example terms travel, and the numbers are the same
 * for any N.
 */
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { Ring } from '../allreduce/ring.js';
import { applyOverrides, validateConfig } from '../config/load.js';
import { requireResolved } from '../config/resolve.js';
import { Evaluation } from '../job/evaluate.js';
import { initBackend } from '../model/backend/index.js';
import { scheduleOf } from '../model/diffusion/schedule.js';
import { jobDenoiser } from '../model/nets/factory.js';
import { UsageError } from './common.js';
import { loadSampleModel } from './sample.js';

/** The options of `ringdiff eval run` (commander names; rank/world/ring are set by the parent). */
export interface EvalRunOptions {
  checkpoint: string;
  set: string[];
  workers: number;
  json?: boolean;
  backend?: string;
  rank?: number;
  ring?: string;
}

/** Parses `--set` keys: only `eval.*` may change, the rest of a checkpoint's config is its own. */
function evalSets(sets: readonly string[]): string[] {
  for (const s of sets)
    if (!s.startsWith('eval.'))
      throw new UsageError(`--set ${s}: only eval.* keys (a checkpoint keeps the rest of its config)`);
  return [...sets];
}

/** Evaluates the checkpoint as rank `rank` of `world`; resolves with the metrics on rank 0. */
async function evaluateAs(
  o: EvalRunOptions,
  rank: number,
  world: number,
  ringDir: string | null,
): Promise<Record<string, number> | null> {
  await initBackend(o.backend);
  const loaded = await loadSampleModel({ checkpoint: o.checkpoint });
  const source = `${o.checkpoint}/state.json config with --set`;
  const cfg = requireResolved(validateConfig(applyOverrides(loaded.cfg, evalSets(o.set)), source), source);
  if (cfg.eval.count === 0 && cfg.eval.nll_count === 0)
    throw new UsageError(
      'eval.count and eval.nll_count are both 0: nothing to evaluate (--set eval.count=500 …)',
    );
  const model = jobDenoiser(cfg, loaded.dataShape);
  const ema = loaded.params;
  const ev = new Evaluation(cfg, model.dataShape);
  const m = { cfg, model, ema, schedule: scheduleOf(cfg.diffusion) };
  const warn = (msg: string) => process.stderr.write(`ringdiff: rank ${rank}: ${msg}\n`);
  try {
    if (world === 1 || ringDir === null) return await ev.run(m, 0, 1, async (p) => [p], warn);
    const addr = (r: number) => `ipc://${path.join(ringDir, `rank-${r}.sock`)}`;
    const ring = await Ring.open({
      jobId: 'eval',
      rank,
      worldSize: world,
      generation: 1,
      bindAddress: addr(rank),
      successorAddress: addr((rank + 1) % world),
      timeoutMs: cfg.cluster.ring_timeout_ms,
    });
    try {
      return await ev.run(m, rank, world, (p) => ring.allGather(p), warn);
    } finally {
      await ring.close();
    }
  } finally {
    ev.dispose();
  }
}

/** Prints the metrics of rank 0 (a table, or one JSON object). */
function print(o: EvalRunOptions, metrics: Record<string, number> | null, world: number): void {
  if (!metrics) throw new Error('evaluation failed (see the warnings above)');
  if (o.json) {
    process.stdout.write(`${JSON.stringify({ checkpoint: o.checkpoint, workers: world, metrics })}\n`);
    return;
  }
  process.stdout.write(`evaluation of ${o.checkpoint} (${world} worker${world > 1 ? 's' : ''})\n`);
  for (const [k, v] of Object.entries(metrics))
    process.stdout.write(`  ${k.padEnd(24)} ${v.toPrecision(6)}\n`);
}

/** `ringdiff eval run`: one process, a rank of a local ring (child), or the parent of N ranks. */
export async function evalRun(o: EvalRunOptions): Promise<void> {
  const world = o.workers;
  if (!(Number.isInteger(world) && world >= 1))
    throw new UsageError(`--workers must be an integer ≥ 1, got ${world}`);
  if (o.rank !== undefined) {
    // A child: rank 0 prints what the parent relays.
    const metrics = await evaluateAs(o, o.rank, world, o.ring ?? null);
    if (o.rank === 0) print(o, metrics, world);
    return;
  }
  if (world === 1) {
    print(o, await evaluateAs(o, 0, 1, null), 1);
    return;
  }
  const ringDir = mkdtempSync(path.join(tmpdir(), 'ringdiff-eval-'));
  try {
    const args = (r: number) => [
      process.argv[1] as string,
      'eval',
      'run',
      '--checkpoint',
      o.checkpoint,
      ...o.set.flatMap((s) => ['--set', s]),
      '--workers',
      String(world),
      '--rank',
      String(r),
      '--ring',
      ringDir,
      ...(o.json ? ['--json'] : []),
      ...(o.backend ? ['--backend', o.backend] : []),
    ];
    const codes = await Promise.all(
      Array.from(
        { length: world },
        (_, r) =>
          new Promise<number>((resolve) => {
            // Rank 0's stdout is the command's output; every rank's stderr is passed through.
            const child = spawn(process.execPath, args(r), {
              stdio: ['ignore', r === 0 ? 'inherit' : 'ignore', 'inherit'],
            });
            child.on('exit', (code, signal) => resolve(code ?? (signal ? 128 : 1)));
            child.on('error', () => resolve(1));
          }),
      ),
    );
    const bad = codes.findIndex((c) => c !== 0);
    if (bad >= 0) throw new Error(`eval run: worker ${bad} exited with ${codes[bad]}`);
  } finally {
    rmSync(ringDir, { recursive: true, force: true });
  }
}
