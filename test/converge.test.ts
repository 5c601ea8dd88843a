/**
 * The maths end to end: the MLP denoiser trained on toy:8gaussians — by DDPM, by a VE SDE and by
 * EDM — must put ≥ 90 % of 1000 samples within 0.3 of a centre, with every centre holding 8–17 %.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { loadConfig } from '../src/config/load.js';
import { initBackend } from '../src/model/backend/index.js';
import { closeJob, openJob } from '../src/job/job.js';
import { trainStep } from '../src/job/step.js';
import { sampleSet, type SampleRequest } from '../src/model/sampling/sample.js';
import { processOf } from '../src/model/diffusion/continuous.js';
import { EIGHT_GAUSSIAN_CENTRES } from '../src/data/toy.js';

/** Fraction of points within `radius` of a centre, and the share of those near each centre. */
export function modeCoverage(x: Float32Array, radius: number): { near: number; shares: number[] } {
  const n = x.length / 2;
  const counts = new Array<number>(8).fill(0);
  let near = 0;
  for (let i = 0; i < n; i++) {
    EIGHT_GAUSSIAN_CENTRES.forEach((c, k) => {
      if (Math.hypot((x[2 * i] as number) - c[0], (x[2 * i + 1] as number) - c[1]) < radius) {
        counts[k] = (counts[k] as number) + 1;
        near++;
      }
    });
  }
  return { near: near / n, shares: counts.map((c) => c / n) };
}

/** Trains the MLP on toy:8gaussians for 3000 steps with `sets` added, samples 1000 points, checks the modes. */
async function convergesOn(
  sets: string[],
  draw: { sampler: SampleRequest['sampler']; steps: number },
  label: string,
): Promise<void> {
  const backend = await initBackend();
  const dir = mkdtempSync(path.join(tmpdir(), 'ringdiff-converge-'));
  try {
    const cfg = loadConfig(undefined, [
      `run.out_dir=${dir}`,
      'run.seed=1',
      'data.dataset=toy:8gaussians',
      'model.kind=mlp',
      'model.num_classes=0',
      'model.hidden=128',
      'model.layers=4',
      'model.time_embed_dim=64',
      'train.global_batch=256',
      'train.steps=3000',
      'train.lr=0.002',
      'train.warmup_steps=100',
      'train.ema_decay=0.995',
      ...sets,
    ]);
    const job = await openJob(cfg);
    const t0 = Date.now();
    while (job.state.step < cfg.train.steps) await trainStep(job);
    const trainMs = Date.now() - t0;
    const { samples: x, nfe } = sampleSet(job.model, job.state.ema, job.schedule, {
      count: 1000,
      sampler: draw.sampler,
      steps: draw.steps,
      eta: 0,
      guidance: 0,
      classLabel: null,
      seed: 2,
      sigma: 'beta',
      prediction: cfg.diffusion.prediction,
      process: processOf(cfg.diffusion),
      clip: false,
      chunk: 1000,
    });
    closeJob(job);
    const { near, shares } = modeCoverage(x, 0.3);
    const msg = `${label}: backend ${backend.chosen}, ${trainMs} ms, ${draw.sampler} at ${nfe} NFE: near ${near}, shares ${shares.map((s) => s.toFixed(3)).join(' ')}`;
    console.log(msg);
    assert.ok(near >= 0.9, msg);
    for (const s of shares) assert.ok(s >= 0.08 && s <= 0.17, msg);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

test('MLP on toy:8gaussians converges: ≥ 90 % of samples near a centre, each centre 8–17 %', () =>
  convergesOn([], { sampler: 'ddpm', steps: 1000 }, 'DDPM'));

// σ_max = 10: Song et al.'s rule of thumb is the largest distance between two examples (4 here).
test('VE SDE (denoising score matching) on toy:8gaussians: predictor–corrector samples ≥ 90 % near a centre, each 8–17 %', () =>
  convergesOn(
    ['diffusion.objective=sde', 'diffusion.sde=ve', 'diffusion.sigma_max=10', 'sample.sampler=pc-langevin'],
    { sampler: 'pc-langevin', steps: 200 },
    'VE SDE',
  ));

// σ_data = 1.4: the std of the 8-Gaussian data (radius 2 per axis: √2).
test('EDM (preconditioning, log-normal σ) on toy:8gaussians: 18-step Heun samples ≥ 90 % near a centre, each 8–17 %', () =>
  convergesOn(
    ['diffusion.objective=edm', 'diffusion.sigma_data=1.4', 'sample.sampler=edm-heun'],
    { sampler: 'edm-heun', steps: 18 },
    'EDM',
  ));
