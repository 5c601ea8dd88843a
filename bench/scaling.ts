/**
 * `npm run bench:scaling [-- --workers 1,2,4 --batch 32 --steps 30 --json]`: the U-Net job of
 * `bench:step` (widths 32/64/128, 1×32×32, MNIST padded to 32) run by `ringdiff launch` with 1, 2
 * and 4 workers on loopback, `--batch` examples per worker (weak scaling, one compute thread per
 * worker). Prints samples/s, the step-time breakdown from the workers' logs, and the exposed
 * communication share: the part of a step spent in the all-reduce (waiting for the slowest peer
 * included), i.e. what communication and coordination add to the step.
 */
import { Command } from 'commander';
import { spawn } from 'node:child_process';
import { mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';

const BIN = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../bin/ringdiff.js');

const o = new Command('bench:scaling')
  .option('--workers <list>', 'world sizes', '1,2,4')
  .option('--batch <b>', 'examples per worker per step', '32')
  .option('--steps <k>', 'steps per run (the first log interval is warm-up)', '30')
  .option('--backend <name>', 'compute backend of the workers')
  .option('--json', 'print one JSON document')
  .parse(process.argv)
  .opts<{ workers: string; batch: string; steps: string; backend?: string; json?: boolean }>();

interface StepLine {
  step: number;
  steps: number;
  data_wait_ms: number;
  forward_backward_ms: number;
  allreduce_ms: number;
  optimizer_ms: number;
  step_ms: number;
}

const PHASES = ['data_wait_ms', 'forward_backward_ms', 'allreduce_ms', 'optimizer_ms', 'step_ms'] as const;

async function runOnce(n: number, batch: number, steps: number): Promise<Record<string, number>> {
  const dir = mkdtempSync(path.join(tmpdir(), `ringdiff-scaling-${n}-`));
  const logEvery = 5;
  const sets = [
    `run.out_dir=${dir}`,
    'data.dataset=mnist',
    'data.image_size=32',
    'model.kind=unet',
    'model.channels=[32,64,128]',
    'model.time_embed_dim=128',
    'model.num_classes=0',
    `train.global_batch=${batch * n}`,
    `train.steps=${steps}`,
    `train.log_every=${logEvery}`,
    'train.checkpoint_every=0',
    'sample.count=0',
  ];
  const t0 = Date.now();
  const code = await new Promise<number>((resolve) => {
    const child = spawn(
      process.execPath,
      [
        BIN,
        'launch',
        '--workers',
        String(n),
        '--no-progress',
        ...(o.backend ? ['--backend', o.backend] : []),
        ...sets.flatMap((s) => ['--set', s]),
      ],
      { stdio: ['ignore', 'ignore', 'inherit'], env: { ...process.env, RINGDIFF_THREADS: '1' } },
    );
    child.on('exit', (c) => resolve(c ?? 1));
  });
  const wallS = (Date.now() - t0) / 1000;
  if (code !== 0) throw new Error(`launch with ${n} workers failed (exit ${code}); logs in ${dir}/logs`);
  // Per worker: mean of the log intervals after the first (warm-up), weighted by their step counts.
  const perWorker: Record<string, number>[] = [];
  for (const f of readdirSync(path.join(dir, 'logs')).filter((x) => x.startsWith('worker-'))) {
    const lines = readFileSync(path.join(dir, 'logs', f), 'utf8')
      .split('\n')
      .filter((l) => l.includes('"msg":"step"'))
      .map((l) => JSON.parse(l) as StepLine)
      .filter((l) => l.step > logEvery);
    const w = lines.reduce((a, l) => a + l.steps, 0);
    if (w === 0) continue;
    const m: Record<string, number> = {};
    for (const k of PHASES) m[k] = lines.reduce((a, l) => a + l[k] * l.steps, 0) / w;
    perWorker.push(m);
  }
  rmSync(dir, { recursive: true, force: true });
  const mean: Record<string, number> = {};
  for (const k of PHASES) mean[k] = perWorker.reduce((a, m) => a + (m[k] as number), 0) / perWorker.length;
  const stepMs = Math.max(...perWorker.map((m) => m.step_ms as number));
  return {
    workers: n,
    global_batch: batch * n,
    samples_per_s: (batch * n * 1000) / stepMs,
    ...mean,
    comm_share: (mean.allreduce_ms as number) / (mean.step_ms as number),
    wall_s: wallS,
  };
}

const results: Record<string, number>[] = [];
for (const n of o.workers.split(',').map(Number)) {
  results.push(await runOnce(n, Number(o.batch), Number(o.steps)));
}
const base = results[0]?.step_ms ?? NaN;
for (const r of results) r.step_time_vs_first = (r.step_ms as number) / base;
if (o.json) {
  process.stdout.write(`${JSON.stringify({ batch_per_worker: Number(o.batch), results }, null, 2)}\n`);
} else {
  const f = (x: number | undefined, d = 1) => (x ?? NaN).toFixed(d).padStart(9);
  process.stdout.write(
    'workers  global B  samples/s  data ms  fwd+bwd ms  allreduce ms  optim ms  step ms  comm share  step/first\n',
  );
  for (const r of results) {
    process.stdout.write(
      `${String(r.workers).padStart(7)}  ${String(r.global_batch).padStart(8)}  ${f(r.samples_per_s)}  ${f(r.data_wait_ms)}  ${f(r.forward_backward_ms).padStart(10)}  ${f(r.allreduce_ms).padStart(12)}  ${f(r.optimizer_ms).padStart(8)}  ${f(r.step_ms).padStart(7)}  ${(((r.comm_share as number) * 100).toFixed(1) + ' %').padStart(10)}  ${f(r.step_time_vs_first, 2).padStart(10)}\n`,
    );
  }
  process.stdout.write(
    'comm share = all-reduce time (incl. waiting for the slowest peer) / step time, mean over workers.\n' +
      'This machine has 2 cores: with more workers than cores they share CPUs and the compute slows.\n',
  );
}
