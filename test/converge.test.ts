/**
 * The maths end to end: the MLP denoiser trained on toy:8gaussians must put ≥ 90 % of 1000 DDPM
 * samples within 0.3 of a centre, with every centre holding 8–17 % of them.
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
import { drawSamples } from '../src/model/sampling/sample.js';
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

test('MLP on toy:8gaussians converges: ≥ 90 % of samples near a centre, each centre 8–17 %', async () => {
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
    ]);
    const job = await openJob(cfg);
    const t0 = Date.now();
    while (job.state.step < cfg.train.steps) await trainStep(job);
    const trainMs = Date.now() - t0;
    const x = drawSamples(job.model, job.state.ema, job.schedule, {
      count: 1000,
      sampler: 'ddpm',
      steps: 1000,
      eta: 0,
      guidance: 0,
      classLabel: null,
      seed: 2,
      sigma: 'beta',
      prediction: 'eps',
      clip: false,
      chunk: 1000,
    });
    closeJob(job);
    const { near, shares } = modeCoverage(x, 0.3);
    const msg = `backend ${backend.chosen}, ${trainMs} ms: near ${near}, shares ${shares.map((s) => s.toFixed(3)).join(' ')}`;
    console.log(msg);
    assert.ok(near >= 0.9, msg);
    for (const s of shares) assert.ok(s >= 0.08 && s <= 0.17, msg);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
