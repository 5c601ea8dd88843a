import { test } from 'node:test';
import { shardTestContext, splitGradients } from './shard-check.js';
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import * as tf from '@tensorflow/tfjs';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { lossWeights } from '../src/model/diffusion/weighting.js';
import { cpuBackend, relErr } from './helpers.js';
import { loadConfig } from '../src/config/load.js';
import { resolveForDataset } from '../src/config/resolve.js';
import { createDenoiser } from '../src/model/nets/factory.js';
import { disposeParams, sortedNames } from '../src/model/params.js';
import { scheduleFor } from '../src/model/diffusion/schedule.js';
import {
  applyUpdate,
  emaDecay,
  initialState,
  learningRate,
  powerEmaGamma,
  powerEmaSigmaRel,
} from '../src/model/optim.js';
import { type StepContext } from '../src/model/train.js';
import { continuousWeight, edmProcess, sdeProcess } from '../src/model/diffusion/continuous.js';
import { closeJob, openJob } from '../src/job/job.js';
import { checkResumeCompatible } from '../src/job/resume.js';
import { saveCheckpoint } from '../src/job/snapshot.js';
import { trainStep } from '../src/job/step.js';
import { Purpose, stream } from '../src/model/rng.js';
import { writeReport } from '../src/telemetry/report.js';

await cpuBackend();

// A real collection before each RSS reading, so the test sees leaks rather than garbage not yet collected.
setFlagsFromString('--expose-gc');
const gc = runInNewContext('gc') as () => void;

/** Objectives the shard-invariance test covers: ε, learned variance, v with min-SNR and offset noise, EDM and a VE SDE. */
const OBJECTIVES = [
  { name: 'ε', ctx: (): Partial<StepContext> => ({}) },
  {
    name: 'ε with learned variance (L_hybrid)',
    outputs: 2,
    ctx: (): Partial<StepContext> => ({ vlbWeight: 0.001 }),
  },
  {
    name: 'v, min-SNR-5, offset noise 0.1',
    ctx: (): Partial<StepContext> => ({
      prediction: 'v',
      lossWeights: lossWeights('min_snr', 'v', scheduleFor('linear', 50), 5),
      offsetNoise: 0.1,
    }),
  },
  {
    name: 'v with learned variance, min-SNR-5',
    outputs: 2,
    ctx: (): Partial<StepContext> => ({
      prediction: 'v',
      lossWeights: lossWeights('min_snr', 'v', scheduleFor('linear', 50), 5),
      vlbWeight: 0.001,
    }),
  },
  {
    name: 'EDM (continuous σ in each bin)',
    ctx: (): Partial<StepContext> => ({
      continuous: {
        process: edmProcess({ sigmaData: 0.5, pMean: -1.2, pStd: 1.2, sigmaMin: 0.002, sigmaMax: 80 }),
        weight: null,
      },
    }),
  },
  {
    name: 'VE SDE, v, min-SNR-5, offset noise 0.1',
    ctx: (): Partial<StepContext> => ({
      prediction: 'v',
      offsetNoise: 0.1,
      continuous: {
        process: sdeProcess('ve', { betaMin: 0.1, betaMax: 20, sigmaMin: 0.01, sigmaMax: 50 }),
        weight: (sigma) => continuousWeight('min_snr', 'v', 5, sigma),
      },
    }),
  },
];

/** Each network's tiny test shape as --set overrides (the U-Net twice: compact, and ADM with every option). */
const KINDS: Record<string, string[]> = {
  mlp: ['model.kind=mlp', 'model.hidden=16'],
  unet: ['model.kind=unet', 'model.channels=[4,8]', 'model.groups=2'],
  'unet-adm': [
    'model.kind=unet',
    'model.channels=[4,8]',
    'model.groups=2',
    'model.unet_layout=adm',
    'model.dropout=0.2',
    'model.scale_shift_norm=true',
    'model.resblock_updown=true',
    'model.attention_resolutions=[4]',
    'model.attention_head_channels=4',
  ],
  dit: [
    'model.kind=dit',
    'model.dit.depth=2',
    'model.dit.hidden=8',
    'model.dit.heads=2',
    'model.dit.patch=2',
  ],
};

for (const [kind, sets] of Object.entries(KINDS))
  for (const objective of OBJECTIVES)
    test(`${kind} (${objective.name}): gradients of 1, 2 and 3 shards (and micro-batches) sum to the whole batch's`, () => {
      const cfg = loadConfig(undefined, [
        ...sets,
        'model.time_embed_dim=16',
        'model.num_classes=3',
        'model.class_dropout=0.3',
      ]);
      const shape = kind === 'mlp' ? [2] : [8, 8, 1];
      const model = createDenoiser(
        resolveForDataset(cfg, { numClasses: 3 }).model,
        shape,
        objective.outputs ?? 1,
      );
      const params = model.init(4);
      const B = 12;
      const size = shape.reduce((a, b) => a * b, 1);
      const x0 = stream(1, 0, 0, Purpose.data).normals(new Float32Array(B * size));
      const labels = Int32Array.from({ length: B }, (_, i) => i % 3);
      const ctx: StepContext = { ...shardTestContext(B), ...objective.ctx() };
      const whole = splitGradients(model, params, x0, labels, [], ctx);
      for (const [cuts, mb] of [
        [[5], 0],
        [[3, 7], 0],
        [[], 5],
        [[1, 11], 2],
      ] as [number[], number][]) {
        const part = splitGradients(model, params, x0, labels, cuts, { ...ctx, microbatch: mb });
        assert.deepEqual(part.ts, whole.ts);
        assert.ok(relErr(part.losses, whole.losses) < 1e-6);
        assert.ok(Math.abs(part.loss - whole.loss) < 1e-6 * Math.abs(whole.loss));
        for (const [name, g] of whole.total) {
          const e = relErr(part.total.get(name) as Float32Array, g);
          assert.ok(e < 1e-5, `${name}: relative error ${e} with cuts ${cuts} microbatch ${mb}`);
        }
      }
      disposeParams(params);
    });

test('Adam step, warm-up, clipping and EMA follow their formulas', () => {
  const cfg = loadConfig(undefined, [
    'train.lr=0.1',
    'train.warmup_steps=4',
    'train.grad_clip=1',
    'train.ema_decay=0.9',
  ]).train;
  assert.equal(learningRate(cfg, 0), 0.025);
  assert.equal(learningRate(cfg, 3), 0.1);
  assert.equal(learningRate(cfg, 10), 0.1);
  assert.equal(emaDecay(cfg, 0), 0.1);
  assert.equal(emaDecay(cfg, 1000), 0.9);
  const state = initialState(new Map([['w', tf.tensor1d([1, -2])]]));
  // Gradient of norm 5 is clipped to norm 1: first Adam step moves each weight by lr·sign(g).
  const g = new Map([['w', tf.tensor1d([3, -4])]]);
  const r = applyUpdate(state, g, cfg);
  assert.equal(r.gradNorm, 5);
  assert.equal(r.lr, 0.025);
  const w = state.params.get('w')?.dataSync() as Float32Array;
  assert.ok(
    Math.abs((w[0] as number) - (1 - 0.025)) < 1e-6 && Math.abs((w[1] as number) - (-2 + 0.025)) < 1e-6,
  );
  const m = state.m.get('w')?.dataSync() as Float32Array;
  assert.ok(Math.abs((m[0] as number) - 0.1 * 0.6) < 1e-7);
  const e = state.ema.get('w')?.dataSync() as Float32Array;
  // decay at n = 0 is min(0.9, 1/10) = 0.1
  assert.ok(Math.abs((e[0] as number) - (0.1 * 1 + 0.9 * (w[0] as number))) < 1e-6);
  assert.equal(state.step, 1);
  disposeParams(g);
});

function tmp(): string {
  return mkdtempSync(path.join(tmpdir(), 'ringdiff-train-'));
}

const SMALL = [
  'data.dataset=toy:8gaussians',
  'model.kind=mlp',
  'model.num_classes=0',
  'model.hidden=16',
  'model.time_embed_dim=16',
  'train.global_batch=16',
  'diffusion.timesteps=100',
  'diffusion.timestep_sampler=loss-second-moment',
  'diffusion.history_per_term=1',
  'train.warmup_steps=2',
];

/** SMALL's job on 8×8 MNIST with an ADM U-Net (dropout, scale-shift, resblock up/down) and the power EMA. */
const SMALL_ADM = [
  ...SMALL.filter((k) => !k.startsWith('model.') && !k.startsWith('data.')),
  'data.dataset=mnist',
  'data.image_size=8',
  'model.kind=unet',
  'model.channels=[4,8]',
  'model.groups=2',
  'model.time_embed_dim=16',
  'model.unet_layout=adm',
  'model.dropout=0.2',
  'model.scale_shift_norm=true',
  'model.resblock_updown=true',
  'diffusion.learn_sigma=true',
  'train.ema_schedule=power',
];

for (const [what, sets] of [
  ['mlp', SMALL],
  ['ADM U-Net with dropout, learned variance and the power EMA', SMALL_ADM],
  ['mlp, EDM with the importance sampler', [...SMALL, 'diffusion.objective=edm', 'sample.sampler=edm-heun']],
] as const)
  test(`resume is exact (${what}): 3 steps + checkpoint + 3 steps equals 6 steps bit for bit`, async () => {
    const a = tmp();
    const b = tmp();
    try {
      const full = await openJob(loadConfig(undefined, [...sets, `run.out_dir=${a}`, 'train.steps=6']));
      while (full.state.step < 6) await trainStep(full);
      const half = await openJob(loadConfig(undefined, [...sets, `run.out_dir=${b}`, 'train.steps=6']));
      while (half.state.step < 3) await trainStep(half);
      await saveCheckpoint(half);
      closeJob(half);
      const resumed = await openJob(loadConfig(undefined, [...sets, `run.out_dir=${b}`, 'train.steps=6']));
      assert.ok(resumed.resumedFrom?.endsWith('ckpt-3'));
      while (resumed.state.step < 6) await trainStep(resumed);
      for (const k of ['params', 'ema', 'm', 'v'] as const) {
        for (const name of sortedNames(full.state[k])) {
          assert.deepEqual(
            resumed.state[k].get(name)?.dataSync(),
            full.state[k].get(name)?.dataSync(),
            `${k} ${name}`,
          );
        }
      }
      assert.deepEqual(resumed.sampler.state(), full.sampler.state());
      closeJob(full);
      closeJob(resumed);
      // A run-defining change is refused rather than silently mixing two runs.
      await assert.rejects(
        openJob(loadConfig(undefined, [...sets, `run.out_dir=${b}`, 'train.lr=0.5'])),
        /train\.lr/,
      );
    } finally {
      rmSync(a, { recursive: true, force: true });
      rmSync(b, { recursive: true, force: true });
    }
  });

test('the report draws each checkpoint grid once, and after a stop draws none', async () => {
  const dir = tmp();
  try {
    const job = await openJob(loadConfig(undefined, [...SMALL, `run.out_dir=${dir}`, 'train.steps=4']));
    for (const s of [2, 4]) {
      while (job.state.step < s) await trainStep(job);
      await saveCheckpoint(job);
    }
    closeJob(job);
    const cache = path.join(dir, 'report');
    // A stopped job draws nothing new: both grids are named as not drawn.
    const stopped = readFileSync(await writeReport(dir, { draw: false }), 'utf8');
    assert.equal((stopped.match(/not drawn/g) ?? []).length, 2);
    assert.ok(!existsSync(cache) || readdirSync(cache).length === 0, 'nothing cached without drawing');
    const first = readFileSync(await writeReport(dir), 'utf8');
    const files = readdirSync(cache).sort();
    assert.equal(files.length, 2, `one cached grid per checkpoint: ${files.join(', ')}`);
    assert.equal((first.match(/data:image\/png;base64/g) ?? []).length, 2);
    const mtimes = files.map((f) => statSync(path.join(cache, f)).mtimeMs);
    // Drawn once: a second report (even one that may not draw) reuses them unchanged.
    const again = readFileSync(await writeReport(dir, { draw: false }), 'utf8');
    assert.equal((again.match(/data:image\/png;base64/g) ?? []).length, 2);
    assert.doesNotMatch(again, /not drawn/);
    assert.deepEqual(
      files.map((f) => statSync(path.join(cache, f)).mtimeMs),
      mtimes,
    );
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('many steps: tensor count stays flat and RSS does not grow', async (t) => {
  const dir = tmp();
  try {
    const job = await openJob(
      loadConfig(undefined, [...SMALL, `run.out_dir=${dir}`, 'train.steps=2000', 'train.microbatch=6']),
    );
    for (let i = 0; i < 600; i++) await trainStep(job);
    const tensors = tf.memory().numTensors;
    gc();
    const live = () => process.memoryUsage().heapUsed + process.memoryUsage().arrayBuffers;
    const rss0 = process.memoryUsage().rss;
    const live0 = live();
    for (let i = 0; i < 600; i++) {
      await trainStep(job);
      assert.equal(tf.memory().numTensors, tensors, `tensor count changed at step ${job.state.step}`);
    }
    gc();
    // Live JS heap and array buffers are the sharp leak detector; RSS also holds allocator slack.
    const liveGrown = live() - live0;
    assert.ok(
      liveGrown < 4 * 2 ** 20,
      `live heap grew by ${(liveGrown / 2 ** 20).toFixed(1)} MiB over 600 steps`,
    );
    const grown = process.memoryUsage().rss - rss0;
    t.diagnostic(
      `over 600 steps after warm-up: live heap ${(liveGrown / 2 ** 20).toFixed(1)} MiB, RSS ${(grown / 2 ** 20).toFixed(1)} MiB`,
    );
    assert.ok(
      grown < 48 * 2 ** 20,
      `RSS grew by ${(grown / 2 ** 20).toFixed(1)} MiB over 600 steps after warm-up`,
    );
    closeJob(job);
    assert.equal(tf.memory().numTensors, tensors - 4 * job.state.params.size);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('min-SNR-γ weights follow Hang et al. 2023 for ε, x0 and v; a cosine and a linear learning-rate schedule reach lr_final', () => {
  const s = scheduleFor('cosine', 100);
  const snr = (t: number) => (s.alphasCumprod[t] as number) / (1 - (s.alphasCumprod[t] as number));
  for (const t of [0, 5, 50, 99]) {
    const r = snr(t);
    const m = Math.min(r, 5);
    assert.ok(Math.abs((lossWeights('min_snr', 'eps', s, 5)[t] as number) - m / r) < 1e-12);
    assert.ok(Math.abs((lossWeights('min_snr', 'x0', s, 5)[t] as number) - m) < 1e-12);
    assert.ok(Math.abs((lossWeights('min_snr', 'v', s, 5)[t] as number) - m / (r + 1)) < 1e-12);
  }
  // Low noise (large SNR) is capped, high noise keeps ε's weight 1.
  assert.ok((lossWeights('min_snr', 'eps', s, 5)[0] as number) < 0.1);
  assert.equal(lossWeights('min_snr', 'eps', s, 5)[99], 1);
  assert.ok(lossWeights('none', 'v', s, 5).every((w) => w === 1));
  for (const schedule of ['cosine', 'linear'] as const) {
    const cfg = loadConfig(undefined, [
      'train.lr=0.1',
      'train.warmup_steps=10',
      'train.steps=110',
      `train.lr_schedule=${schedule}`,
      'train.lr_final=0.01',
    ]).train;
    assert.equal(learningRate(cfg, 4), 0.1 * (5 / 10), 'warm-up unchanged');
    assert.equal(learningRate(cfg, 9), 0.1, 'peak at the end of the warm-up');
    assert.ok(Math.abs(learningRate(cfg, 109) - 0.01) < 1e-12, `${schedule}: lr_final at the last step`);
    const mid = learningRate(cfg, 59); // halfway through the decay
    assert.ok(Math.abs(mid - 0.055) < 1e-12, `${schedule}: halfway ${mid}`);
    const q = learningRate(cfg, 34); // a quarter: cosine stays higher than linear
    assert.ok(
      Math.abs(
        q - (schedule === 'cosine' ? 0.01 + 0.09 * 0.5 * (1 + Math.cos(Math.PI / 4)) : 0.01 + 0.09 * 0.75),
      ) < 1e-12,
    );
  }
});

test('power EMA (Karras et al. 2024): γ of σ_rel as published; the recursion weighs step τ by τ^(γ+1) − (τ−1)^(γ+1)', () => {
  // EDM2's pairs: σ_rel 0.05 ↔ γ 16.97, 0.10 ↔ γ 6.94.
  assert.ok(Math.abs(powerEmaGamma(0.05) - 16.97) < 0.01, `${powerEmaGamma(0.05)}`);
  assert.ok(Math.abs(powerEmaGamma(0.1) - 6.94) < 0.01, `${powerEmaGamma(0.1)}`);
  assert.ok(Math.abs(powerEmaSigmaRel(powerEmaGamma(0.07)) - 0.07) < 1e-12);
  const cfg = loadConfig(undefined, ['train.ema_schedule=power', 'train.ema_sigma_rel=0.1']).train;
  assert.equal(emaDecay(cfg, 0), 0, 'the first average is the first weights');
  const g = powerEmaGamma(0.1);
  const w = Array.from({ length: 300 }, (_, i) => Math.sin(i / 7) + i / 100);
  let ema = 0;
  w.forEach((x, n) => {
    const d = emaDecay(cfg, n);
    ema = d * ema + (1 - d) * x;
  });
  const t = w.length;
  const closed = w.reduce((a, x, i) => a + ((i + 1) ** (g + 1) - i ** (g + 1)) * x, 0) / t ** (g + 1);
  assert.ok(Math.abs(ema - closed) < 1e-9, `${ema} vs ${closed}`);
  assert.throws(() => loadConfig(undefined, ['train.ema_sigma_rel=0.3']), /train\.ema_sigma_rel/);
});

test('a checkpoint written before a key existed resumes (the key takes its default); a changed objective does not', () => {
  const cfg = loadConfig(undefined, []);
  const old = JSON.parse(JSON.stringify(cfg)) as {
    diffusion: Record<string, unknown>;
    train: Record<string, unknown>;
  };
  for (const k of [
    'prediction',
    'loss_weighting',
    'min_snr_gamma',
    'zero_terminal_snr',
    'offset_noise',
    'objective',
    'sde',
    'beta_min',
    'beta_max',
    'sigma_data',
    'p_mean',
    'p_std',
  ])
    delete old.diffusion[k];
  delete old.train.lr_schedule;
  delete old.train.lr_final;
  checkResumeCompatible(old, cfg, 'ckpt-old');
  const v = loadConfig(undefined, ['diffusion.prediction=v']);
  assert.throws(
    () => checkResumeCompatible(old, v, 'ckpt-old'),
    /ckpt-old: checkpoint was written with diffusion = /,
  );
  const edm = loadConfig(undefined, ['diffusion.objective=edm', 'sample.sampler=edm-heun']);
  assert.throws(
    () => checkResumeCompatible(old, edm, 'ckpt-old'),
    /ckpt-old: checkpoint was written with diffusion = /,
  );
  const cosine = loadConfig(undefined, ['train.lr_schedule=cosine']);
  assert.throws(() => checkResumeCompatible(old, cosine, 'ckpt-old'), /train\.lr_schedule/);
});
