/**
 * `npm run bench:step [-- --backend NAME --batch B --steps K --warmup W --threads T --json]`: times
 * training steps of the anchor U-Net (../shared/anchors/ddp_ddpm.py: widths 32/64/128, 1×32×32
 * input, 656,961 parameters), split into forward+backward, optimizer and EMA.
 *
 * `--model dit-s-4` (any `dit-<s|b|l|xl>-<2|4|8>`) times a DiT of that preset instead, on
 * 28×28×1 examples with 10 classes (MNIST-shaped; `--shape HxWxC` and `--classes N` change it;
 * `--set k=v` any other key), with DiT's training recipe: AdamW at 1e-4 without weight decay or
 * gradient clipping, EMA 0.9999. `--config job.yaml [--set k=v]` times the model and training step
 * of a job instead (its dataset gives the shape and classes unless `--shape`/`--classes` say).
 *
 * A DiT run defaults to batch 8, 2 warm-up and 3 timed steps: a DiT-S/4 step takes seconds here.
 *
 * `--vs-pytorch [--threads 1,2] [--rounds R]` runs the PyTorch anchor side by side: for each round
 * and thread count (default 1,2 for the U-Net; for a DiT, the cores our backend takes by default),
 * our steps and the anchor's (a child process with `--threads T`, same batch),
 * ours first in odd rounds and the anchor first in even ones so that a drift of the shared machine
 * hits both, and prints samples/s of both and their ratio, with medians per thread count at the
 * end. Only same-run ratios mean anything on these noisy machines. The anchor of the U-Net is
 * ddp_ddpm.py (`--world-size 1`); that of a DiT is bench/anchors/dit_step.py, whose parameter
 * count must equal ours (checked before any timing, and the run fails if it does not).
 */
import { Command, InvalidArgumentError } from 'commander';
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { performance } from 'node:perf_hooks';
import { initBackend } from '../src/model/backend/index.js';
import {
  nativeGemmInfo,
  nativeThreads,
  setNativeThreads,
  trimNativeBuffers,
} from '../src/model/backend/native.js';
import { loadConfig } from '../src/config/load.js';
import { resolveDit, resolveForDataset, type ResolvedConfig } from '../src/config/resolve.js';
import { DIT_PRESETS, type DitPresetName } from '../src/config/schema.js';
import { openDataset } from '../src/data/spec.js';
import { jobDenoiser, summarizeModel } from '../src/model/nets/factory.js';
import type { Denoiser } from '../src/model/nets/denoiser.js';
import { countParams, disposeParams } from '../src/model/params.js';
import { scheduleOf } from '../src/model/diffusion/schedule.js';
import { lossWeights } from '../src/model/diffusion/weighting.js';
import { samplerFor } from '../src/job/job.js';
import { initialState, optimizerStep, updateEma, disposeState } from '../src/model/optim.js';
import { shardGradients, type StepContext } from '../src/model/train.js';
import { Purpose, stream } from '../src/model/rng.js';
import { collect, intOption } from '../src/cli/common.js';

const ANCHOR_PARAMS = 656961;
/** Conv/Linear FLOPs per sample, forward + backward, as the anchor counts them. */
const ANCHOR_TRAIN_FLOP = 0.912e9;
const UNET_ANCHOR = '/work/shared/anchors/ddp_ddpm.py';
const DIT_ANCHOR = resolve(dirname(fileURLToPath(import.meta.url)), '../../bench/anchors/dit_step.py');

const median = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? (s[m] as number) : ((s[m - 1] as number) + (s[m] as number)) / 2;
};

type ModelChoice = { kind: 'unet' } | { kind: 'dit'; preset: DitPresetName };

function modelOption(v: string): ModelChoice {
  if (v === 'unet') return { kind: 'unet' };
  const m = /^dit-(s|b|l|xl)-(2|4|8)$/.exec(v.toLowerCase());
  if (m) return { kind: 'dit', preset: `${(m[1] as string).toUpperCase()}/${m[2]}` as DitPresetName };
  throw new InvalidArgumentError(`--model must be unet or dit-<s|b|l|xl>-<2|4|8> (e.g. dit-s-4), got '${v}'`);
}

function shapeOption(v: string): [number, number, number] {
  const dims = v.toLowerCase().split('x').map(Number);
  if (dims.length !== 3 || dims.some((d) => !Number.isInteger(d) || d < 1))
    throw new InvalidArgumentError(`--shape must be HxWxC with positive integers (e.g. 32x32x4), got '${v}'`);
  return dims as [number, number, number];
}

const o = new Command('bench:step')
  .option('--model <name>', 'unet (the anchor U-Net, default) or dit-<s|b|l|xl>-<2|4|8>', modelOption)
  .option('-c, --config <file>', 'job config (YAML): time its model and training step')
  .option('--set <key=value>', 'override a config key (repeatable; with --config or a DiT)', collect, [])
  .option('--shape <HxWxC>', "example shape (DiT: 28x28x1; --config: its dataset's)", shapeOption)
  .option(
    '--classes <n>',
    "label classes, 0 = unconditional (DiT: 10; --config: its dataset's)",
    intOption('--classes', 0),
  )
  .option('--backend <name>', 'compute backend')
  .option('--batch <b>', 'batch size (default: 32 for the U-Net, 8 otherwise)', intOption('--batch', 1))
  .option('--steps <k>', 'timed steps (default: 5 for the U-Net, 3 otherwise)', intOption('--steps', 1))
  .option(
    '--warmup <w>',
    'untimed steps first (default: 1 for the U-Net, 2 otherwise)',
    intOption('--warmup', 0),
  )
  .option(
    '--threads <list>',
    'native kernel threads, comma-separated (default: RINGDIFF_THREADS or all cores; --vs-pytorch: 1,2 for the U-Net)',
  )
  .option('--vs-pytorch', 'run the PyTorch anchor side by side and print ratios')
  .option(
    '--rounds <r>',
    'rounds of ours and PyTorch per thread count (--vs-pytorch)',
    intOption('--rounds', 1),
    3,
  )
  .option('--python <path>', 'Python with torch (--vs-pytorch)', '/usr/bin/python3')
  .option('--anchor <path>', `the anchor script (--vs-pytorch; default ${UNET_ANCHOR} or the DiT's)`)
  .option('--json', 'print one JSON object')
  .parse(process.argv)
  .opts<{
    model?: ModelChoice;
    config?: string;
    set: string[];
    shape?: [number, number, number];
    classes?: number;
    backend?: string;
    batch?: number;
    steps?: number;
    warmup?: number;
    threads?: string;
    vsPytorch?: boolean;
    rounds: number;
    python: string;
    anchor?: string;
    json?: boolean;
  }>();

/** What is timed: a model, its job config and the PyTorch anchor that mirrors it, if any. */
interface Setup {
  /** For the header: `DiT-S/4`, `U-Net`, ... */
  title: string;
  cfg: ResolvedConfig;
  model: Denoiser;
  shape: readonly number[];
  params: number;
  anchor: 'unet' | 'dit' | null;
  /** Matrix-product FLOPs per sample of a training step, when known. */
  trainFlop: number | null;
}

/** The anchor U-Net, exactly as this benchmark has always built it. */
function unetSetup(batch: number): Setup {
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
    `train.global_batch=${batch}`,
  ]);
  const resolved = resolveForDataset(cfg, { numClasses: 0 });
  const model = jobDenoiser(resolved, [32, 32, 1]);
  return {
    title: 'U-Net',
    cfg: resolved,
    model,
    shape: [32, 32, 1],
    params: summarizeModel(model).params,
    anchor: 'unet',
    trainFlop: ANCHOR_TRAIN_FLOP,
  };
}

/** A DiT preset (`--model dit-…`) or a job config (`--config`), with `--set`, `--shape`, `--classes`. */
function configSetup(choice: ModelChoice | undefined): Setup {
  // DiT's train.py: AdamW(lr 1e-4, weight_decay 0), no clipping, EMA decay 0.9999; user --set wins.
  const preset =
    choice?.kind === 'dit'
      ? [
          'model.kind=dit',
          `model.dit.preset=${choice.preset}`,
          'train.lr=1e-4',
          'train.warmup_steps=0',
          'train.grad_clip=0',
          'train.ema_decay=0.9999',
        ]
      : [];
  const cfg = loadConfig(o.config, [...preset, ...o.set]);
  // MNIST-shaped by default: the DiT-S/4 count the reference gives for it is in test/dit.test.ts.
  let shape: readonly number[] | undefined = o.shape ?? (o.config ? undefined : [28, 28, 1]);
  let classes = o.classes ?? (o.config ? undefined : 10);
  if (shape === undefined || (classes === undefined && cfg.model.num_classes === 'auto')) {
    const ds = openDataset(cfg.data);
    shape ??= [...ds.shape];
    classes ??= ds.numClasses;
  }
  const resolved = resolveForDataset(cfg, {
    numClasses: classes ?? (cfg.model.num_classes === 'auto' ? 0 : cfg.model.num_classes),
  });
  const model = jobDenoiser(resolved, shape);
  const dit = resolved.model.kind === 'dit' ? resolveDit(resolved.model.dit) : null;
  const title = dit ? ditTitle(dit) : resolved.model.kind;
  return {
    title,
    cfg: resolved,
    model,
    shape,
    params: summarizeModel(model).params,
    anchor: dit ? 'dit' : null,
    trainFlop: dit
      ? ditTrainFlop(dit, shape as [number, number, number], resolved.diffusion.learn_sigma)
      : null,
  };
}

/** `DiT-S/4`, `DiT-S/4 with depth 1` when keys were set over the preset, or every shape key without one. */
function ditTitle(dit: ReturnType<typeof resolveDit>): string {
  const keys = ['depth', 'hidden', 'heads', 'patch', 'mlp_ratio'] as const;
  const preset = dit.preset ? { ...DIT_PRESETS[dit.preset], mlp_ratio: 4 } : null;
  const changed = keys.filter((k) => preset?.[k] !== dit[k]).map((k) => `${k} ${dit[k]}`);
  if (!dit.preset) return `DiT (${changed.join(', ')})`;
  return changed.length > 0 ? `DiT-${dit.preset} with ${changed.join(', ')}` : `DiT-${dit.preset}`;
}

/**
 * Matrix-product FLOPs of one DiT training step per sample: forward (patch embedding, timestep MLP,
 * per block adaLN, qkv, QKᵀ, AV, proj, fc1, fc2; final adaLN and linear) times 3 for the backward,
 * less the input gradients nobody needs (patch embedding, first timestep layer).
 */
function ditTrainFlop(
  dit: ReturnType<typeof resolveDit>,
  [h, w, c]: [number, number, number],
  learnSigma: boolean,
): number {
  const { depth, hidden: d, patch: p } = dit;
  const n = (h / p) * (w / p);
  const m = Math.floor(d * dit.mlp_ratio);
  const cout = learnSigma ? 2 * c : c;
  const patchEmbed = 2 * n * p * p * c * d;
  const tLin1 = 2 * 256 * d;
  const block = 2 * d * 6 * d + 2 * n * d * 3 * d + 2 * 2 * n * n * d + 2 * n * d * d + 2 * 2 * n * d * m;
  const fwd = patchEmbed + tLin1 + 2 * d * d + depth * block + 2 * d * 2 * d + 2 * n * d * p * p * cout;
  return 3 * fwd - patchEmbed - tLin1;
}

/** Why the DiT anchor cannot mirror this job's step, or null when it can. */
function ditAnchorGap(cfg: ResolvedConfig): string | null {
  const d = cfg.diffusion;
  if (d.prediction !== 'eps') return `diffusion.prediction is ${d.prediction}; dit_step.py predicts eps`;
  if (d.loss_weighting !== 'none')
    return `diffusion.loss_weighting is ${d.loss_weighting}; dit_step.py has none`;
  if (d.timestep_sampler !== 'uniform')
    return `diffusion.timestep_sampler is ${d.timestep_sampler}; dit_step.py draws t uniformly`;
  if (d.offset_noise > 0) return `diffusion.offset_noise is ${d.offset_noise}; dit_step.py has none`;
  if (d.schedule !== 'linear' && d.schedule !== 'cosine')
    return `diffusion.schedule is ${d.schedule}; dit_step.py knows linear and cosine`;
  return null;
}

/** dit_step.py's options for the model and step of `s` (everything but threads and timing). */
function ditAnchorArgs(s: Setup, batch: number): string[] {
  const { cfg } = s;
  const dit = resolveDit(cfg.model.dit);
  const t = cfg.train;
  const d = cfg.diffusion;
  const a = [
    ...['--depth', dit.depth, '--hidden', dit.hidden, '--heads', dit.heads, '--patch', dit.patch],
    ...['--mlp-ratio', dit.mlp_ratio, '--shape', s.shape.join('x'), '--num-classes', cfg.model.num_classes],
    // Ours always has the null-class row; the reference only with label dropout.
    ...['--class-dropout', cfg.model.class_dropout, '--null-row'],
    ...(d.learn_sigma ? ['--learn-sigma', '--vlb-weight', d.vlb_weight] : []),
    ...['--schedule', d.schedule, '--timesteps', d.timesteps],
    ...['--lr', t.lr, '--beta1', t.beta1, '--beta2', t.beta2, '--adam-eps', t.adam_eps],
    ...['--weight-decay', t.weight_decay, '--grad-clip', t.grad_clip, '--ema-decay', t.ema_decay],
    ...(t.ema_warmup ? [] : ['--no-ema-warmup']),
    ...['--microbatch', t.microbatch, '--batch', batch],
  ];
  return a.map(String);
}

interface Timing {
  params: number;
  step_ms: number;
  fwd_bwd_ms: number;
  optimizer_ms: number;
  ema_ms: number;
  samples_per_s: number;
  gflops: number | null;
  losses: number[];
}

/** How long a timing is: `warmup` untimed steps, then `steps` timed ones, of `batch` examples. */
interface Run {
  batch: number;
  steps: number;
  warmup: number;
}

/** Medians over `steps` timed steps (after `warmup`) of a fresh model's training steps. */
function timeSteps(s: Setup, { batch, steps, warmup }: Run, log: boolean): Timing {
  const { cfg, model } = s;
  const d = cfg.diffusion;
  const schedule = scheduleOf(d);
  const base: Omit<StepContext, 'step'> = {
    seed: 0,
    globalBatch: batch,
    schedule,
    probs: samplerFor(cfg).probs(),
    classDropout: cfg.model.class_dropout,
    microbatch: cfg.train.microbatch,
    prediction: d.prediction,
    lossWeights:
      d.loss_weighting === 'none'
        ? null
        : lossWeights(d.loss_weighting, d.prediction, schedule, d.min_snr_gamma),
    offsetNoise: d.offset_noise,
    vlbWeight: d.learn_sigma ? d.vlb_weight : null,
  };
  const size = s.shape.reduce((a, b) => a * b, 1);
  const classes = cfg.model.num_classes;
  const state = initialState(model.init(0));
  const params = countParams(state.params);
  const fb: number[] = [];
  const opt: number[] = [];
  const ema: number[] = [];
  const losses: number[] = [];
  for (let i = 0; i < warmup + steps; i++) {
    const x0 = stream(1234, i, 0, Purpose.data).normals(new Float32Array(batch * size));
    const ys = classes > 0 ? stream(1234, i, 1, Purpose.data) : null;
    const labels = ys ? Int32Array.from({ length: batch }, () => ys.int(classes)) : null;
    const t0 = performance.now();
    const r = shardGradients(model, state.params, { x0, labels, from: 0, n: batch }, { ...base, step: i });
    const t1 = performance.now();
    optimizerStep(state, r.grads, cfg.train);
    disposeParams(r.grads);
    const t2 = performance.now();
    updateEma(state, cfg.train);
    state.step++;
    const t3 = performance.now();
    if (i >= warmup) {
      fb.push(t1 - t0);
      opt.push(t2 - t1);
      ema.push(t3 - t2);
    }
    losses.push(r.loss);
    if (log) process.stderr.write(`step ${i}${i < warmup ? ' (warm-up)' : ''}: ${(t3 - t0).toFixed(0)} ms\n`);
  }
  disposeState(state);
  const stepMs = median(fb.map((f, i) => f + (opt[i] as number) + (ema[i] as number)));
  return {
    params,
    step_ms: stepMs,
    fwd_bwd_ms: median(fb),
    optimizer_ms: median(opt),
    ema_ms: median(ema),
    samples_per_s: (batch * 1000) / stepMs,
    gflops: s.trainFlop === null ? null : (batch * s.trainFlop) / (stepMs / 1000) / 1e9,
    losses,
  };
}

/** A Python anchor run to its end; its JSON result. Throws one line naming the script on failure. */
function runPython(args: string[], out: string | null): Record<string, unknown> {
  const r = spawnSync(o.python, args, { encoding: 'utf8', maxBuffer: 16 << 20 });
  if (r.status !== 0 || (out !== null && !existsSync(out))) {
    const why = r.error?.message ?? (r.stderr.trim().split('\n').pop() || `exit ${r.status}`);
    throw new Error(`PyTorch anchor failed (${o.python} ${args[0]}): ${why}`);
  }
  const text = out === null ? (r.stdout.trim().split('\n').pop() ?? '') : readFileSync(out, 'utf8');
  return JSON.parse(text) as Record<string, unknown>;
}

/** The anchor's median step on `t` threads in one process, in samples/s. */
function pytorch(
  s: Setup,
  t: number,
  anchor: string,
  { batch, steps, warmup }: Run,
): { samples_per_s: number; step_ms: number } {
  const dir = mkdtempSync(join(tmpdir(), 'ringdiff-anchor-'));
  try {
    const out = join(dir, 'out.json');
    const args =
      s.anchor === 'dit'
        ? [anchor, ...ditAnchorArgs(s, batch), '--threads', String(t)]
        : [anchor, '--world-size', '1', '--threads', String(t), '--batch', String(batch)];
    if (s.anchor === 'dit') args.push('--warmup', String(warmup), '--iters', String(steps), '--out', out);
    else
      args.push('--warmup', String(Math.max(1, warmup)), '--iters', String(Math.max(3, steps)), '--out', out);
    const j = runPython(args, out) as { step_median_s: number; params?: number };
    if (s.anchor === 'dit' && j.params !== s.params)
      throw new Error(`parameter counts differ: ringdiff ${s.params}, PyTorch anchor ${String(j.params)}`);
    return { samples_per_s: batch / j.step_median_s, step_ms: j.step_median_s * 1000 };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

/** Fails unless the DiT anchor builds a model with exactly our parameter count (seconds, before any timing). */
function checkDitParams(s: Setup, anchor: string, batch: number): void {
  const j = runPython([anchor, ...ditAnchorArgs(s, batch), '--params-only'], null) as {
    params: number;
    modules: Record<string, number>;
  };
  if (j.params !== s.params) {
    const ours = summarizeModel(s.model)
      .modules.map((m) => `${m.module} ${m.params}`)
      .join(', ');
    const theirs = Object.entries(j.modules)
      .map(([k, v]) => `${k} ${v}`)
      .join(', ');
    throw new Error(
      `parameter counts differ: ringdiff ${s.params} (${ours}), PyTorch anchor ${j.params} (${theirs}): not the same architecture`,
    );
  }
}

async function main(): Promise<void> {
  if (o.model?.kind === 'unet' || (!o.model && !o.config)) {
    if (o.config) throw new Error('--model unet and --config: give one (the config names its model)');
    for (const [given, name] of [
      [o.set.length > 0, '--set'],
      [o.shape !== undefined, '--shape'],
      [o.classes !== undefined, '--classes'],
    ] as const)
      if (given)
        throw new Error(
          `${name}: the anchor U-Net of --model unet is fixed (use --config for another U-Net)`,
        );
  } else if (o.model && o.config) {
    throw new Error(`--model and --config: give one (the config names its model in model.kind)`);
  }
  const isUnet = !o.config && (o.model?.kind ?? 'unet') === 'unet';
  const batch = o.batch ?? (isUnet ? 32 : 8);
  const steps = o.steps ?? (isUnet ? 5 : 3);
  // A DiT's first steps after the first are still slow (buffers of 32 M parameters faulted in).
  const run: Run = { batch, steps, warmup: o.warmup ?? (isUnet ? 1 : 2) };
  const { warmup } = run;

  // Beside a DiT, both sides get what our backend takes by default (every core): a second thread
  // count would double a run of minutes.
  const vsThreads = isUnet ? '1,2' : String(nativeThreads());
  const threadList = (o.threads ?? (o.vsPytorch ? vsThreads : '')).split(',').filter((s) => s.trim() !== '');
  const threads = threadList.map((s) => {
    const n = Number(s);
    if (!Number.isInteger(n) || n < 1)
      throw new Error(`--threads must list positive integers, got '${o.threads}'`);
    return n;
  });

  const setup = isUnet ? unetSetup(batch) : configSetup(o.model);
  if (o.vsPytorch && setup.anchor === null)
    throw new Error(
      `--vs-pytorch: the PyTorch anchors are the U-Net of --model unet and DiT; this config's model.kind is ${setup.cfg.model.kind}`,
    );
  const gap = o.vsPytorch && setup.anchor === 'dit' ? ditAnchorGap(setup.cfg) : null;
  if (gap) throw new Error(`--vs-pytorch: ${gap}`);
  const backend = await initBackend(o.backend);

  if (o.vsPytorch) {
    const anchor = resolve(o.anchor ?? (setup.anchor === 'dit' ? DIT_ANCHOR : UNET_ANCHOR));
    if (!existsSync(anchor)) throw new Error(`--anchor ${anchor}: no such file (the PyTorch anchor)`);
    const probe = spawnSync(o.python, ['-c', 'import torch; print(torch.__version__)'], { encoding: 'utf8' });
    if (probe.status !== 0)
      throw new Error(`--python ${o.python}: cannot import torch (apt-get install python3-torch)`);
    if (setup.anchor === 'dit') checkDitParams(setup, anchor, batch);
    const gemm = nativeGemmInfo();
    const ours = `ours: backend=${backend.chosen}${gemm ? ` gemm=${gemm.kernels} ${gemm.tile}` : ''}`;
    const shape = setup.shape.join('x');
    const head =
      setup.anchor === 'unet'
        ? `bench:step --vs-pytorch  ${ours}  PyTorch ${probe.stdout.trim()}  batch=${batch} steps=${steps} (medians)\n`
        : `bench:step --vs-pytorch  ${setup.title} on ${shape}, ${setup.cfg.model.num_classes} classes, ` +
          `${setup.cfg.diffusion.learn_sigma ? 'learned sigma (L_hybrid)' : 'eps-MSE'}  ` +
          `params ${setup.params.toLocaleString('en-US')} (ours = PyTorch's)\n` +
          `  ${ours}  PyTorch ${probe.stdout.trim()} (${anchor})  batch=${batch} steps=${steps} warmup=${warmup} (medians)\n`;
    process.stdout.write(`${head}round threads   ours samples/s   PyTorch samples/s   ours/PyTorch\n`);
    const runs = new Map<number, { ours: number[]; theirs: number[]; ratios: number[] }>();
    const rows: unknown[] = [];
    for (let round = 1; round <= o.rounds; round++) {
      for (const t of threads) {
        setNativeThreads(t);
        const runOurs = () => {
          const r = timeSteps(setup, run, false);
          // The pool of kernel buffers would otherwise hold our activations while PyTorch runs.
          trimNativeBuffers();
          return r;
        };
        let ours: Timing;
        let theirs: { samples_per_s: number; step_ms: number };
        if (round % 2 === 1) {
          ours = runOurs();
          theirs = pytorch(setup, t, anchor, run);
        } else {
          theirs = pytorch(setup, t, anchor, run);
          ours = runOurs();
        }
        const ratio = ours.samples_per_s / theirs.samples_per_s;
        // The U-Net anchor's table always had one decimal; a DiT does a few samples/s.
        const digits = setup.anchor === 'unet' ? 1 : 2;
        const acc = runs.get(t) ?? { ours: [], theirs: [], ratios: [] };
        acc.ours.push(ours.samples_per_s);
        acc.theirs.push(theirs.samples_per_s);
        acc.ratios.push(ratio);
        runs.set(t, acc);
        rows.push({ round, threads: t, ours: ours.samples_per_s, pytorch: theirs.samples_per_s, ratio });
        process.stdout.write(
          `${String(round).padStart(5)} ${String(t).padStart(7)} ${ours.samples_per_s.toFixed(digits).padStart(16)} ` +
            `${theirs.samples_per_s.toFixed(digits).padStart(19)} ${ratio.toFixed(2).padStart(14)}\n`,
        );
      }
    }
    for (const [t, r] of runs)
      process.stdout.write(
        `threads ${t}: median ours/PyTorch ${median(r.ratios).toFixed(2)} (${r.ratios.map((x) => x.toFixed(2)).join(', ')}); ` +
          `median samples/s ours ${median(r.ours).toFixed(2)}, PyTorch ${median(r.theirs).toFixed(2)}\n`,
      );
    if (o.json)
      process.stdout.write(
        `${JSON.stringify({
          backend: backend.chosen,
          gemm,
          model: setup.title,
          shape: setup.shape,
          classes: setup.cfg.model.num_classes,
          params: setup.params,
          batch,
          steps,
          rows,
        })}\n`,
      );
    return;
  }

  if (threads.length > 0) setNativeThreads(threads[0] as number);
  const r = timeSteps(setup, run, !o.json);
  if (setup.anchor === 'unet') {
    const result = { backend: backend.chosen, batch, params_match_anchor: r.params === ANCHOR_PARAMS, ...r };
    if (o.json) {
      process.stdout.write(`${JSON.stringify(result)}\n`);
    } else {
      process.stdout.write(
        `bench:step  backend=${result.backend} batch=${batch} params=${r.params} (anchor ${ANCHOR_PARAMS}: ${
          result.params_match_anchor ? 'match' : 'MISMATCH'
        })\n` +
          `  step ${r.step_ms.toFixed(1)} ms (median of ${steps}) = fwd+bwd ${r.fwd_bwd_ms.toFixed(1)} + optimizer ${r.optimizer_ms.toFixed(1)} + EMA ${r.ema_ms.toFixed(1)}\n` +
          `  ${r.samples_per_s.toFixed(2)} samples/s, ${(r.gflops as number).toFixed(2)} GFLOP/s (anchor FLOP count)\n`,
      );
    }
    return;
  }
  const result = {
    backend: backend.chosen,
    model: setup.title,
    shape: setup.shape,
    classes: setup.cfg.model.num_classes,
    learn_sigma: setup.cfg.diffusion.learn_sigma,
    batch,
    ...r,
  };
  if (o.json) {
    process.stdout.write(`${JSON.stringify(result)}\n`);
    return;
  }
  process.stdout.write(
    `bench:step  ${setup.title} on ${setup.shape.join('x')}, ${result.classes} classes  backend=${result.backend} ` +
      `batch=${batch} params=${r.params.toLocaleString('en-US')}\n` +
      `  step ${r.step_ms.toFixed(1)} ms (median of ${steps}) = fwd+bwd ${r.fwd_bwd_ms.toFixed(1)} + optimizer ${r.optimizer_ms.toFixed(1)} + EMA ${r.ema_ms.toFixed(1)}\n` +
      `  ${r.samples_per_s.toFixed(2)} samples/s` +
      (r.gflops === null
        ? '\n'
        : `, ${r.gflops.toFixed(2)} GFLOP/s (matrix products, counted analytically)\n`),
  );
}

try {
  await main();
} catch (e) {
  process.stderr.write(`bench:step: ${e instanceof Error ? e.message : String(e)}\n`);
  process.exit(1);
}
