/**
 * bench:step beyond the U-Net: the DiT anchor (bench/anchors/dit_step.py) against our DiT, the
 * options that choose the model, and short runs of the benchmark itself (depth cut to 1).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { DIT_PRESETS, type DitPresetName } from '../src/config/schema.js';
import { DiT } from '../src/model/nets/dit.js';
import { summarizeModel } from '../src/model/nets/factory.js';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const ROOT = path.resolve(HERE, '../..');
const STEP = path.join(ROOT, 'dist/bench/step.js');
const ANCHOR = path.join(ROOT, 'bench/anchors/dit_step.py');
const PYTHON = '/usr/bin/python3';
// torch.nn, not just torch: an empty torch directory (a half-removed package) imports as a namespace.
const TORCH = spawnSync(PYTHON, ['-c', 'import torch.nn'], { encoding: 'utf8' }).status === 0;
const NO_TORCH = TORCH ? false : `needs Debian's python3-torch (${PYTHON} cannot import torch)`;

function bench(args: string[]) {
  const r = spawnSync(process.execPath, [STEP, ...args], { encoding: 'utf8', timeout: 120_000 });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

function python(args: string[]): Record<string, unknown> {
  const r = spawnSync(PYTHON, [ANCHOR, ...args], { encoding: 'utf8', timeout: 60_000 });
  assert.equal(r.status, 0, r.stderr);
  return JSON.parse(r.stdout.trim().split('\n').pop() as string) as Record<string, unknown>;
}

// The counts of test/dit.test.ts (the reference's, counted with its models.py).
const COUNTS: Array<[DitPresetName, [number, number, number], number, boolean, number]> = [
  ['S/4', [28, 28, 1], 10, false, 32_478_736],
  ['S/4', [28, 28, 1], 10, true, 32_484_896],
  ['S/2', [32, 32, 4], 1000, true, 32_865_056],
];

test('the DiT anchor counts our parameters and computes the reference forward', { skip: NO_TORCH }, () => {
  for (const [name, shape, classes, learnSigma, want] of COUNTS) {
    const p = DIT_PRESETS[name];
    const ours = summarizeModel(
      new DiT({ dataShape: shape, ...p, mlpRatio: 4, numClasses: classes, learnSigma }),
    ).params;
    const what = `DiT-${name} ${shape.join('x')}, ${classes} classes, learn_sigma ${learnSigma}`;
    assert.equal(ours, want, `${what}: ours`);
    const j = python([
      ...['--model', `DiT-${name}`, '--shape', shape.join('x'), '--num-classes', String(classes)],
      ...(learnSigma ? ['--learn-sigma'] : []),
      '--params-only',
    ]);
    assert.equal(j.params, want, `${what}: anchor`);
  }
  const fx = python(['--check-fixture', path.join(ROOT, 'test/fixtures/dit-ref.json')]);
  assert.ok((fx.out_rel_err as number) < 1e-5, `forward: relative error ${String(fx.out_rel_err)}`);
  assert.ok((fx.pos_rel_err as number) < 1e-6, `position embedding: ${String(fx.pos_rel_err)}`);
});

test('bench:step: a bad --model, --shape or option mix is one line and a non-zero exit', () => {
  for (const [args, re] of [
    [['--model', 'dit-s-3'], /--model must be unet or dit-<s\|b\|l\|xl>-<2\|4\|8> .*got 'dit-s-3'/],
    [['--model', 'dit-s-4', '--shape', '28x28'], /--shape must be HxWxC/],
    [['--model', 'dit-s-8'], /^bench:step: model\.dit\.patch: 8 does not divide the image sides 28×28/],
    [['--model', 'unet', '--classes', '10'], /^bench:step: --classes: the anchor U-Net .* is fixed/],
    [
      ['--model', 'dit-s-4', '--set', 'diffusion.prediction=v', '--vs-pytorch'],
      /^bench:step: --vs-pytorch: diffusion\.prediction is v/,
    ],
  ] as Array<[string[], RegExp]>) {
    const r = bench(args);
    assert.notEqual(r.code, 0, args.join(' '));
    const lines = r.stderr.trim().split('\n');
    assert.equal(lines.length, 1, r.stderr);
    assert.match(lines[0] as string, re);
  }
});

test('bench:step times a DiT named by --model and by a job config', () => {
  const depth1 = ['--set', 'model.dit.depth=1', '--batch', '2', '--steps', '1', '--warmup', '0', '--json'];
  const r = bench(['--model', 'dit-s-4', ...depth1]);
  assert.equal(r.code, 0, r.stderr);
  const j = JSON.parse(r.stdout) as Record<string, unknown>;
  // DiT-S/4 on 28×28×1 with 10 classes, 11 of its 12 blocks (2,659,968 parameters each) cut.
  assert.equal(j.params, 32_478_736 - 11 * 2_659_968);
  assert.deepEqual(j.shape, [28, 28, 1]);
  assert.equal(j.classes, 10);
  assert.ok((j.samples_per_s as number) > 0 && (j.gflops as number) > 0);
  const dir = mkdtempSync(path.join(tmpdir(), 'ringdiff-bench-'));
  try {
    const file = path.join(dir, 'job.yaml');
    writeFileSync(file, 'model:\n  kind: dit\n  dit:\n    preset: S/4\ndiffusion:\n  learn_sigma: true\n');
    const c = bench(['--config', file, ...depth1]);
    assert.equal(c.code, 0, c.stderr);
    const k = JSON.parse(c.stdout) as Record<string, unknown>;
    assert.equal(k.params, 32_484_896 - 11 * 2_659_968, 'the dataset (mnist) gives 28×28×1 and 10 classes');
    assert.equal(k.learn_sigma, true);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test(
  'bench:step --vs-pytorch runs the DiT anchor side by side and fails on a parameter mismatch',
  { skip: NO_TORCH },
  () => {
    const small = ['--model', 'dit-s-4', '--set', 'model.dit.depth=1', '--set', 'diffusion.learn_sigma=true'];
    const timing = ['--batch', '2', '--steps', '1', '--warmup', '0', '--threads', '1', '--rounds', '2'];
    const r = bench([...small, ...timing, '--vs-pytorch', '--json']);
    assert.equal(r.code, 0, r.stderr);
    assert.match(
      r.stdout,
      /^bench:step --vs-pytorch {2}DiT-S\/4 with depth 1 on 28x28x1, 10 classes, learned sigma .* {2}params 3,225,248 \(ours = PyTorch's\)$/m,
    );
    const lines = r.stdout.trim().split('\n');
    const j = JSON.parse(lines.pop() as string) as { params: number; rows: Array<{ ratio: number }> };
    assert.equal(j.params, 32_484_896 - 11 * 2_659_968);
    assert.equal(j.rows.length, 2);
    for (const row of j.rows) assert.ok(row.ratio > 0);
    assert.match(lines.pop() as string, /^threads 1: median ours\/PyTorch \d+\.\d\d/);

    const dir = mkdtempSync(path.join(tmpdir(), 'ringdiff-anchor-'));
    try {
      const fake = path.join(dir, 'wrong.py');
      writeFileSync(fake, 'print(\'{"params": 1, "modules": {"blocks": 1}}\')\n');
      const f = bench([...small, ...timing, '--vs-pytorch', '--anchor', fake]);
      assert.notEqual(f.code, 0);
      assert.match(
        f.stderr,
        /^bench:step: parameter counts differ: ringdiff 3225248 \(.*\), PyTorch anchor 1 /,
      );
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  },
);
