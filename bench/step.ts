/**
 * `npm run bench:step [-- --backend NAME --batch B --steps K --warmup W --json]`: times training
 * steps of the anchor U-Net (../shared/anchors/ddp_ddpm.py: widths 32/64/128, 1×32×32 input,
 * 656,961 parameters), split into forward+backward, optimizer and EMA.
 */
import { Command } from 'commander';
import { performance } from 'node:perf_hooks';
import { initBackend } from '../src/model/backend/index.js';
import { loadConfig } from '../src/config/load.js';
import { createDenoiser } from '../src/model/factory.js';
import { countParams, disposeParams } from '../src/model/params.js';
import { scheduleFor } from '../src/model/schedule.js';
import { UniformSampler } from '../src/model/timesteps.js';
import { initialState, optimizerStep, shardGradients, updateEma, disposeState } from '../src/model/train.js';
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
  .option('--json', 'print one JSON object')
  .parse(process.argv)
  .opts<{ backend?: string; batch: number; steps: number; warmup: number; json?: boolean }>();

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
const model = createDenoiser(cfg.model, [32, 32, 1]);
const state = initialState(model.init(0));
const params = countParams(state.params);
const schedule = scheduleFor('linear', 1000);
const probs = new UniformSampler(1000).probs();
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
    {
      seed: 0,
      step: i,
      globalBatch: o.batch,
      schedule,
      probs,
      classDropout: 0,
      microbatch: 0,
    },
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
  if (!o.json)
    process.stderr.write(`step ${i}${i < o.warmup ? ' (warm-up)' : ''}: ${(t3 - t0).toFixed(0)} ms\n`);
}
disposeState(state);
const stepMs = median(fb.map((f, i) => f + (opt[i] as number) + (ema[i] as number)));
const result = {
  backend: backend.chosen,
  batch: o.batch,
  params,
  params_match_anchor: params === ANCHOR_PARAMS,
  steps: o.steps,
  step_ms: stepMs,
  fwd_bwd_ms: median(fb),
  optimizer_ms: median(opt),
  ema_ms: median(ema),
  samples_per_s: (o.batch * 1000) / stepMs,
  gflops: (o.batch * ANCHOR_TRAIN_FLOP) / (stepMs / 1000) / 1e9,
  losses,
};
if (o.json) {
  process.stdout.write(`${JSON.stringify(result)}\n`);
} else {
  process.stdout.write(
    `bench:step  backend=${result.backend} batch=${o.batch} params=${params} (anchor ${ANCHOR_PARAMS}: ${
      result.params_match_anchor ? 'match' : 'MISMATCH'
    })\n` +
      `  step ${stepMs.toFixed(1)} ms (median of ${o.steps}) = fwd+bwd ${result.fwd_bwd_ms.toFixed(1)} + optimizer ${result.optimizer_ms.toFixed(1)} + EMA ${result.ema_ms.toFixed(1)}\n` +
      `  ${result.samples_per_s.toFixed(2)} samples/s, ${result.gflops.toFixed(2)} GFLOP/s (anchor FLOP count)\n`,
  );
}
