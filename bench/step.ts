/**
 * `npm run bench:step [-- --backend NAME --batch B --steps K --warmup W --threads T --json]`: times
 * training steps of the anchor U-Net (../shared/anchors/ddp_ddpm.py: widths 32/64/128, 1×32×32
 * input, 656,961 parameters), split into forward+backward, optimizer and EMA.
 *
 * `--vs-pytorch [--threads 1,2] [--rounds R]` runs the PyTorch anchor side by side: for each round
 * and thread count, our steps then the anchor's (a child process, `--world-size 1 --threads T`,
 * same batch), and prints samples/s of both and their ratio, with the median ratio per thread
 * count at the end. Only same-run ratios mean anything on these noisy machines.
 */
import { Command } from 'commander';
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { performance } from 'node:perf_hooks';
import { initBackend } from '../src/model/backend/index.js';
import { nativeGemmInfo, setNativeThreads } from '../src/model/backend/native.js';
import { loadConfig } from '../src/config/load.js';
import { resolveForDataset } from '../src/config/resolve.js';
import { createDenoiser } from '../src/model/nets/factory.js';
import { countParams, disposeParams } from '../src/model/params.js';
import { scheduleFor } from '../src/model/diffusion/schedule.js';
import { UniformSampler } from '../src/model/diffusion/timesteps.js';
import { initialState, optimizerStep, updateEma, disposeState } from '../src/model/optim.js';
import { shardGradients } from '../src/model/train.js';
import { Purpose, stream } from '../src/model/rng.js';
import { intOption } from '../src/cli/common.js';

const ANCHOR_PARAMS = 656961;
/** Conv/Linear FLOPs per sample, forward + backward, as the anchor counts them. */
const ANCHOR_TRAIN_FLOP = 0.912e9;

const median = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? (s[m] as number) : ((s[m - 1] as number) + (s[m] as number)) / 2;
};

const o = new Command('bench:step')
  .option('--backend <name>', 'compute backend')
  .option('--batch <b>', 'batch size', intOption('--batch', 1), 32)
  .option('--steps <k>', 'timed steps', intOption('--steps', 1), 5)
  .option('--warmup <w>', 'untimed steps first', intOption('--warmup', 0), 1)
  .option(
    '--threads <list>',
    'native kernel threads, comma-separated (default: RINGDIFF_THREADS or all cores)',
  )
  .option('--vs-pytorch', 'run the PyTorch anchor side by side and print ratios')
  .option(
    '--rounds <r>',
    'rounds of ours-then-PyTorch per thread count (--vs-pytorch)',
    intOption('--rounds', 1),
    3,
  )
  .option('--python <path>', 'Python with torch (--vs-pytorch)', '/usr/bin/python3')
  .option('--anchor <path>', 'the anchor script (--vs-pytorch)', '/work/shared/anchors/ddp_ddpm.py')
  .option('--json', 'print one JSON object')
  .parse(process.argv)
  .opts<{
    backend?: string;
    batch: number;
    steps: number;
    warmup: number;
    threads?: string;
    vsPytorch?: boolean;
    rounds: number;
    python: string;
    anchor: string;
    json?: boolean;
  }>();

const threadList = (o.threads ?? (o.vsPytorch ? '1,2' : '')).split(',').filter((s) => s.trim() !== '');
const threads = threadList.map((s) => {
  const n = Number(s);
  if (!Number.isInteger(n) || n < 1)
    throw new Error(`--threads must list positive integers, got '${o.threads}'`);
  return n;
});

const backend = await initBackend(o.backend);
const cfg = loadConfig(undefined, [
  'model.kind=unet',
  'model.channels=[32,64,128]',
  'model.res_blocks=1',
  'model.groups=8',
  'model.time_embed_dim=128',
  'model.attention_resolutions=[]',
  'model.num_classes=0',
  'train.lr=2e-4',
  'train.warmup_steps=0',
  'train.grad_clip=0',
  `train.global_batch=${o.batch}`,
]);
const model = createDenoiser(resolveForDataset(cfg, { numClasses: 0 }).model, [32, 32, 1]);
const schedule = scheduleFor('linear', 1000);
const probs = new UniformSampler(1000).probs();

interface Timing {
  params: number;
  step_ms: number;
  fwd_bwd_ms: number;
  optimizer_ms: number;
  ema_ms: number;
  samples_per_s: number;
  gflops: number;
  losses: number[];
}

/** Medians over `steps` timed steps (after `warmup`) of a fresh model's training steps. */
function timeSteps(log: boolean): Timing {
  const state = initialState(model.init(0));
  const params = countParams(state.params);
  const fb: number[] = [];
  const opt: number[] = [];
  const ema: number[] = [];
  const losses: number[] = [];
  for (let i = 0; i < o.warmup + o.steps; i++) {
    const x0 = stream(1234, i, 0, Purpose.data).normals(new Float32Array(o.batch * 32 * 32));
    const t0 = performance.now();
    const r = shardGradients(
      model,
      state.params,
      { x0, labels: null, from: 0, n: o.batch },
      { seed: 0, step: i, globalBatch: o.batch, schedule, probs, classDropout: 0, microbatch: 0 },
    );
    const t1 = performance.now();
    optimizerStep(state, r.grads, cfg.train);
    disposeParams(r.grads);
    const t2 = performance.now();
    updateEma(state, cfg.train);
    state.step++;
    const t3 = performance.now();
    if (i >= o.warmup) {
      fb.push(t1 - t0);
      opt.push(t2 - t1);
      ema.push(t3 - t2);
    }
    losses.push(r.loss);
    if (log)
      process.stderr.write(`step ${i}${i < o.warmup ? ' (warm-up)' : ''}: ${(t3 - t0).toFixed(0)} ms\n`);
  }
  disposeState(state);
  const stepMs = median(fb.map((f, i) => f + (opt[i] as number) + (ema[i] as number)));
  return {
    params,
    step_ms: stepMs,
    fwd_bwd_ms: median(fb),
    optimizer_ms: median(opt),
    ema_ms: median(ema),
    samples_per_s: (o.batch * 1000) / stepMs,
    gflops: (o.batch * ANCHOR_TRAIN_FLOP) / (stepMs / 1000) / 1e9,
    losses,
  };
}

/** The anchor's median step on `t` threads in one process, in samples/s. */
function pytorch(t: number, anchor: string): { samples_per_s: number; step_ms: number } {
  const dir = mkdtempSync(join(tmpdir(), 'ringdiff-anchor-'));
  try {
    const out = join(dir, 'out.json');
    const iters = Math.max(3, o.steps);
    const args = [anchor, '--world-size', '1', '--threads', String(t), '--batch', String(o.batch)];
    args.push('--warmup', String(Math.max(1, o.warmup)), '--iters', String(iters), '--out', out);
    const r = spawnSync(o.python, args, { encoding: 'utf8', maxBuffer: 16 << 20 });
    if (r.status !== 0 || !existsSync(out)) {
      const why = r.error?.message ?? (r.stderr.trim().split('\n').pop() || `exit ${r.status}`);
      throw new Error(`PyTorch anchor failed (${o.python} ${anchor}): ${why}`);
    }
    const j = JSON.parse(readFileSync(out, 'utf8')) as { step_median_s: number };
    return { samples_per_s: o.batch / j.step_median_s, step_ms: j.step_median_s * 1000 };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

if (o.vsPytorch) {
  const anchor = resolve(o.anchor);
  if (!existsSync(anchor))
    throw new Error(`--anchor ${anchor}: no such file (the PyTorch anchor ddp_ddpm.py)`);
  const probe = spawnSync(o.python, ['-c', 'import torch; print(torch.__version__)'], { encoding: 'utf8' });
  if (probe.status !== 0)
    throw new Error(`--python ${o.python}: cannot import torch (apt-get install python3-torch)`);
  const gemm = nativeGemmInfo();
  process.stdout.write(
    `bench:step --vs-pytorch  ours: backend=${backend.chosen}${gemm ? ` gemm=${gemm.kernels} ${gemm.tile}` : ''}` +
      `  PyTorch ${probe.stdout.trim()}  batch=${o.batch} steps=${o.steps} (medians)\n` +
      'round threads   ours samples/s   PyTorch samples/s   ours/PyTorch\n',
  );
  const ratios = new Map<number, number[]>();
  const rows: unknown[] = [];
  for (let round = 1; round <= o.rounds; round++) {
    for (const t of threads) {
      setNativeThreads(t);
      const ours = timeSteps(false);
      const theirs = pytorch(t, anchor);
      const ratio = ours.samples_per_s / theirs.samples_per_s;
      ratios.set(t, [...(ratios.get(t) ?? []), ratio]);
      rows.push({ round, threads: t, ours: ours.samples_per_s, pytorch: theirs.samples_per_s, ratio });
      process.stdout.write(
        `${String(round).padStart(5)} ${String(t).padStart(7)} ${ours.samples_per_s.toFixed(1).padStart(16)} ` +
          `${theirs.samples_per_s.toFixed(1).padStart(19)} ${ratio.toFixed(2).padStart(14)}\n`,
      );
    }
  }
  for (const [t, rs] of ratios)
    process.stdout.write(
      `threads ${t}: median ours/PyTorch ${median(rs).toFixed(2)} (${rs.map((r) => r.toFixed(2)).join(', ')})\n`,
    );
  if (o.json) process.stdout.write(`${JSON.stringify({ backend: backend.chosen, gemm, rows })}\n`);
} else {
  if (threads.length > 0) setNativeThreads(threads[0] as number);
  const r = timeSteps(!o.json);
  const result = {
    backend: backend.chosen,
    batch: o.batch,
    params_match_anchor: r.params === ANCHOR_PARAMS,
    ...r,
  };
  if (o.json) {
    process.stdout.write(`${JSON.stringify(result)}\n`);
  } else {
    process.stdout.write(
      `bench:step  backend=${result.backend} batch=${o.batch} params=${r.params} (anchor ${ANCHOR_PARAMS}: ${
        result.params_match_anchor ? 'match' : 'MISMATCH'
      })\n` +
        `  step ${r.step_ms.toFixed(1)} ms (median of ${o.steps}) = fwd+bwd ${r.fwd_bwd_ms.toFixed(1)} + optimizer ${r.optimizer_ms.toFixed(1)} + EMA ${r.ema_ms.toFixed(1)}\n` +
        `  ${r.samples_per_s.toFixed(2)} samples/s, ${r.gflops.toFixed(2)} GFLOP/s (anchor FLOP count)\n`,
    );
  }
}
