/**
 * Evaluation distributed over the ring and run during training (eval.*): the block plan, the
 * same metrics from 1, 2 and 3 ranks of a real ZeroMQ ring in one process, and a real job run by
 * `ringdiff train` and by a 3-worker cluster writing the same evaluations to history.jsonl and
 * exporting them to Prometheus.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { LocalCluster, runRingdiffCli } from './cluster-harness.js';
import { loadConfig } from '../src/config/load.js';
import { openSource } from '../src/data/spec.js';
import { imageDataset } from '../src/data/preprocess.js';
import { saveFeatureNet, trainFeatureNet } from '../src/eval/features.js';
import { evalPlan } from '../src/eval/plan.js';
import { Evaluation } from '../src/job/evaluate.js';
import { closeJob, openJob } from '../src/job/job.js';
import { Ring } from '../src/allreduce/ring.js';
import { disposeParams } from '../src/model/params.js';
import { readEvalHistory, readHistory } from '../src/telemetry/history.js';
import { freePort } from '../src/util/net.js';
import { initBackend } from '../src/model/backend/index.js';

// The native kernels, as train and the workers use (the pure-JS backend is minutes slower here).
await initBackend(undefined, { quiet: true });

const dir = mkdtempSync(path.join(tmpdir(), 'ringdiff-evaldist-'));
process.env.RINGDIFF_CACHE_DIR = path.join(dir, 'cache');
process.on('exit', (code) => {
  if (code === 0 && !process.env.RINGDIFF_KEEP_TEST_DIR) rmSync(dir, { recursive: true, force: true });
  else process.stderr.write(`eval-dist: test directory kept: ${dir}\n`);
});

/** A briefly trained mnistcnn: enough to give features that tell samples apart. */
const NET = path.join(dir, 'mnistcnn.safetensors');
{
  const ds = imageDataset(openSource('mnist:train'), { imageSize: 32, channels: 1 });
  const t = await trainFeatureNet(ds, {
    epochs: 1,
    steps: 40,
    batch: 16,
    lr: 2e-3,
    seed: 1,
    valFraction: 0.01,
  });
  await saveFeatureNet(NET, t, { dataset: 'mnist:train' });
  disposeParams(t.params);
  ds.close();
}

/** Relative difference, with an absolute floor for values that are 0 in both. */
const rel = (a: number, b: number) => Math.abs(a - b) / Math.max(Math.abs(a), Math.abs(b), 1e-12);

test('evalPlan: whole fixed blocks, contiguous in rank order, covering [0, count) once', () => {
  for (const [count, block] of [
    [12, 4],
    [13, 4],
    [5, 8],
    [0, 3],
    [100, 7],
  ] as const) {
    const one = evalPlan(count, block, 1)[0]?.blocks ?? [];
    for (const world of [1, 2, 3, 5, 20]) {
      const plan = evalPlan(count, block, world);
      assert.equal(plan.length, world);
      // Every rank's blocks are blocks of the one-rank plan (same boundaries), in order.
      assert.deepEqual(
        plan.flatMap((r) => r.blocks),
        one,
      );
      let at = 0;
      for (const r of plan) {
        assert.equal(r.from, at);
        assert.equal(r.to, r.blocks.at(-1)?.[1] ?? r.from);
        at = r.to;
      }
      assert.equal(at, count);
      // Sizes of the ranks differ by at most one block.
      const sizes = plan.map((r) => r.blocks.length);
      assert.ok(Math.max(...sizes) - Math.min(...sizes) <= 1, `${count}/${block}/${world}: ${sizes}`);
    }
    assert.ok(one.every(([f, t]) => f % block === 0 && t - f <= block && t > f));
  }
  assert.throws(() => evalPlan(4, 0, 1), /block 0/);
});

test('eval config: one-line errors naming the key', () => {
  assert.throws(() => loadConfig(undefined, ['eval.every=5']), /eval\.every: 5 but nothing to evaluate/);
  assert.throws(
    () => loadConfig(undefined, ['eval.every=5', `eval.net=${NET}`, 'eval.count=3']),
    /eval\.count: 3: the sample metrics need at least 10/,
  );
  assert.throws(
    () =>
      loadConfig(undefined, [
        'eval.every=5',
        'eval.nll_count=4',
        'diffusion.objective=edm',
        'sample.sampler=edm-heun',
      ]),
    /eval\.nll_count: the bound is that of the discrete DDPM process/,
  );
  assert.throws(
    () => loadConfig(undefined, ['eval.every=5', 'eval.nll_count=4', 'eval.nll_timesteps=2000']),
    /eval\.nll_timesteps: 2000 is more than diffusion.timesteps/,
  );
});

const SETS = [
  'data.dataset=mnist',
  'data.image_size=8',
  'model.kind=unet',
  'model.channels=[8, 8]',
  'model.groups=4',
  'model.time_embed_dim=16',
  'model.num_classes=10',
  'model.class_dropout=0.1',
  'diffusion.timesteps=50',
  'sample.sampler=ddim',
  'sample.steps=5',
  'eval.every=1',
  'eval.count=22',
  'eval.block=4',
  `eval.net=${NET}`,
  'eval.nll_count=10',
  'eval.nll_timesteps=3',
];

test('metrics from 1, 2 and 3 ranks of a real ring are bit-identical', async (t) => {
  const job = await openJob(loadConfig(undefined, [...SETS, `run.out_dir=${path.join(dir, 'inproc')}`]));
  try {
    const m = { cfg: job.cfg, model: job.model, ema: job.state.ema, schedule: job.schedule };
    const results: Record<string, number>[] = [];
    for (const world of [1, 2, 3]) {
      const port = await freePort();
      const addr = (r: number) => `tcp://127.0.0.1:${port + r}`;
      const rings = await Promise.all(
        Array.from({ length: world }, (_, r) =>
          Ring.open({
            jobId: 'evaldist',
            rank: r,
            worldSize: world,
            generation: 1,
            bindAddress: addr(r),
            successorAddress: addr((r + 1) % world),
            timeoutMs: 30000,
          }),
        ),
      );
      const evals = rings.map(() => new Evaluation(job.cfg, job.model.dataShape));
      const warnings: string[] = [];
      try {
        // Every rank samples its blocks, then all meet in the all-gather, as workers do.
        const out = await Promise.all(
          rings.map((ring, r) =>
            (evals[r] as Evaluation).run(
              m,
              r,
              world,
              (p) => ring.allGather(p),
              (w) => warnings.push(w),
            ),
          ),
        );
        assert.deepEqual(warnings, []);
        assert.ok(
          out.slice(1).every((x) => x === null),
          'only rank 0 returns the metrics',
        );
        results.push(out[0] as Record<string, number>);
      } finally {
        evals.forEach((e) => e.dispose());
        await Promise.all(rings.map((r) => r.close()));
      }
    }
    const [one, ...rest] = results as [Record<string, number>, ...Record<string, number>[]];
    t.diagnostic(`1 rank: ${JSON.stringify(one)}`);
    for (const k of [
      'fid_mnistcnn',
      'kid_mnistcnn',
      'is_mnistcnn',
      'precision_mnistcnn',
      'recall_mnistcnn',
      'nll_bpd',
    ])
      assert.ok(Number.isFinite(one[k]), `${k} = ${one[k]}`);
    assert.ok((one.fid_mnistcnn as number) > 0);
    rest.forEach((r, i) => assert.deepEqual(r, one, `${i + 2} ranks differ from 1`));
    // One block of all 22 samples: the same samples (noise keyed by the global index), so the same
    // numbers up to the batch size's effect on the kernels' rounding.
    const cfg = { ...job.cfg, eval: { ...job.cfg.eval, block: 22 } };
    const whole = new Evaluation(cfg, job.model.dataShape);
    try {
      const w = (await whole.run({ ...m, cfg }, 0, 1, async (p) => [p], assert.fail)) as Record<
        string,
        number
      >;
      let worst = 0;
      for (const [k, v] of Object.entries(one)) worst = Math.max(worst, rel(v, w[k] as number));
      t.diagnostic(`blocks of 4 vs one block of 22: largest relative difference ${worst.toExponential(2)}`);
      assert.ok(worst <= 1e-4, `blocks of 4 vs 22 differ by ${worst}`);
    } finally {
      whole.dispose();
    }
  } finally {
    closeJob(job);
  }
});

test('a rank that fails its part makes rank 0 skip the evaluation; a failed gather rejects', async () => {
  const job = await openJob(
    loadConfig(undefined, [
      ...SETS,
      'eval.count=10',
      'eval.nll_count=0',
      `run.out_dir=${path.join(dir, 'fail')}`,
    ]),
  );
  const e = new Evaluation(job.cfg, job.model.dataShape);
  try {
    const m = { cfg: job.cfg, model: job.model, ema: job.state.ema, schedule: job.schedule };
    const warnings: string[] = [];
    // Rank 1 of 2 sends ok = 0 (what a rank sends when its sampling or features threw).
    const r = await e.run(
      m,
      0,
      2,
      async (p) => [p, new Float32Array([0, 0, 0])],
      (w) => warnings.push(w),
    );
    assert.equal(r, null);
    assert.deepEqual(warnings, ['evaluation skipped: rank 1 could not compute its part']);
    await assert.rejects(
      e.run(m, 0, 2, () => Promise.reject(new Error('ring closed')), assert.fail),
      /ring closed/,
    );
  } finally {
    e.dispose();
    closeJob(job);
  }
});

test('train and a 3-worker cluster write the same evaluations, at every eval.every steps and the last', async (t) => {
  const yaml = (name: string) => `
run: { name: ${name}, out_dir: ${path.join(dir, name)} }
data: { dataset: mnist, image_size: 8 }
model: { kind: unet, channels: [8, 8], groups: 4, time_embed_dim: 16, num_classes: 0 }
diffusion: { timesteps: 50 }
train: { steps: 7, global_batch: 24, checkpoint_every: 0, log_every: 1 }
sample: { count: 0, sampler: ddim, steps: 5 }
eval: { every: 3, count: 12, block: 4, net: ${NET}, nll_count: 6, nll_timesteps: 3 }
cluster: { min_workers: 3, heartbeat_timeout_ms: 10000, ring_timeout_ms: 30000 }
`;
  const single = path.join(dir, 'single.yaml');
  writeFileSync(single, yaml('single'));
  const r = await runRingdiffCli(['train', '--config', single, '--no-progress']);
  assert.equal(r.code, 0, r.err);

  const c = new LocalCluster(dir, yaml('three'));
  let scraped = '';
  try {
    const coord = await c.startCoordinator();
    for (let i = 0; i < 3; i++) c.startWorker();
    // The gauge appears once rank 0 has reported the first evaluation (step 3).
    const end = Date.now() + 60000;
    while (!/ringdiff_eval_metric\{[^}]*name="fid_mnistcnn"/.test(scraped) && Date.now() < end) {
      await new Promise((res) => setTimeout(res, 200));
      try {
        scraped = await (await fetch(`http://${c.metricsAddress}/metrics`)).text();
      } catch {
        // not listening yet, or already gone
      }
    }
    assert.equal(await coord.exit, 0, `coordinator failed; see ${coord.log}`);
  } finally {
    await c.stop();
  }
  assert.match(scraped, /ringdiff_eval_metric\{[^}]*name="fid_mnistcnn"[^}]*\} [\d.e+-]+/);
  assert.match(scraped, /ringdiff_eval_metric\{[^}]*name="nll_bpd"[^}]*\} [\d.e+-]+/);
  assert.match(scraped, /ringdiff_eval_step(\{[^}]*\})? [36]/);

  const a = readEvalHistory(path.join(dir, 'single'));
  const b = readEvalHistory(path.join(dir, 'three'));
  assert.deepEqual(
    a.map((e) => e.step),
    [3, 6, 7],
  );
  assert.deepEqual(
    b.map((e) => e.step),
    [3, 6, 7],
  );
  // The step lines are untouched by the evaluation lines.
  assert.deepEqual(
    readHistory(path.join(dir, 'three')).map((e) => e.step),
    [1, 2, 3, 4, 5, 6, 7],
  );
  let worst = 0;
  a.forEach((ea, i) => {
    const eb = b[i] as (typeof b)[number];
    assert.deepEqual(Object.keys(eb.eval).sort(), Object.keys(ea.eval).sort());
    for (const [k, v] of Object.entries(ea.eval)) worst = Math.max(worst, rel(v, eb.eval[k] as number));
  });
  t.diagnostic(`train vs 3 workers: largest relative difference of an eval metric ${worst.toExponential(2)}`);
  t.diagnostic(`step 7, train: ${JSON.stringify(a.at(-1)?.eval)}`);
  t.diagnostic(`step 7, 3 workers: ${JSON.stringify(b.at(-1)?.eval)}`);
  assert.ok(worst <= 1e-4, `train vs 3 workers differ by ${worst}`);
  // The report draws each metric against the step.
  const html = readFileSync(path.join(dir, 'single', 'report.html'), 'utf8');
  assert.match(html, /Evaluation during training/);
  assert.match(html, /fid_mnistcnn vs step/);
  assert.match(html, /nll_bpd vs step/);
});

test('eval run on a checkpoint: 1 and 3 local workers agree, and equal the evaluation train made of the same weights', async () => {
  // The single-process job of the test above left ckpt-7 and its step-7 evaluation in history.jsonl.
  const ckpt = path.join(dir, 'single', 'ckpt-7');
  const trained = readEvalHistory(path.join(dir, 'single')).find((e) => e.step === 7);
  assert.ok(trained, 'the job above evaluated step 7');
  const run = async (workers: number) => {
    const r = await runRingdiffCli([
      'eval',
      'run',
      '--checkpoint',
      ckpt,
      '--workers',
      String(workers),
      '--json',
    ]);
    assert.equal(r.code, 0, r.err);
    return (JSON.parse(r.out) as { metrics: Record<string, number> }).metrics;
  };
  const one = await run(1);
  const three = await run(3);
  assert.deepEqual(three, one);
  assert.deepEqual(one, trained.eval);
  const bad = await runRingdiffCli(['eval', 'run', '--checkpoint', ckpt, '--set', 'train.steps=9']);
  assert.notEqual(bad.code, 0);
  assert.match(bad.err.trim(), /^ringdiff: --set train\.steps=9: only eval\.\* keys/);
});

test('a missing eval.net stops train before the first step with one line naming the key', async () => {
  const f = path.join(dir, 'bad.yaml');
  writeFileSync(
    f,
    `run: { name: bad, out_dir: ${path.join(dir, 'bad')} }
data: { dataset: mnist, image_size: 8 }
model: { kind: unet, channels: [8, 8], groups: 4, time_embed_dim: 16, num_classes: 0 }
train: { steps: 2, global_batch: 8 }
sample: { count: 0 }
eval: { every: 1, count: 10, net: ${path.join(dir, 'nowhere.safetensors')} }
`,
  );
  const r = await runRingdiffCli(['train', '--config', f, '--no-progress']);
  assert.notEqual(r.code, 0);
  assert.match(r.err, /eval\.net: .*nowhere\.safetensors/);
  assert.equal(readHistory(path.join(dir, 'bad')).length, 0);
});
