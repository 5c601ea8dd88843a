import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync, readFileSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';

const BIN = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../bin/ringdiff.js');

function run(args: string[], env: Record<string, string> = {}) {
  const r = spawnSync(process.execPath, [BIN, ...args], {
    encoding: 'utf8',
    env: { ...process.env, ...env },
    timeout: 120000,
  });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

/** Asserts a failure with exactly one line of error output that matches `re`. */
function failsWithOneLine(args: string[], re: RegExp) {
  const r = run(args);
  assert.notEqual(r.code, 0, `expected failure for ${args.join(' ')}`);
  const lines = r.stderr.trim().split('\n');
  assert.equal(lines.length, 1, `expected one line, got:\n${r.stderr}`);
  assert.match(lines[0] as string, re);
}

const dir = mkdtempSync(path.join(tmpdir(), 'ringdiff-cli-'));
process.on('exit', () => rmSync(dir, { recursive: true, force: true }));
const write = (name: string, text: string) => {
  const p = path.join(dir, name);
  writeFileSync(p, text);
  return p;
};

test('--help lists the commands', () => {
  const r = run(['--help']);
  assert.equal(r.code, 0);
  for (const c of ['train', 'sample', 'doctor', 'config']) assert.match(r.stdout, new RegExp(`\\b${c}\\b`));
});

test('bad YAML → one line naming the file and position', () => {
  failsWithOneLine(
    ['config', '--print', '--config', write('bad.yaml', 'train:\n  lr: [1, 2\n')],
    /bad\.yaml: invalid YAML at line \d+, column \d+/,
  );
});

test('unknown key → one line naming the key path', () => {
  failsWithOneLine(
    ['config', '--print', '--config', write('unk.yaml', 'train:\n  lrr: 0.1\n')],
    /unk\.yaml: unknown key train\.lrr/,
  );
});

test('an unknown key is named by its whole path, with the nearest known keys', () => {
  failsWithOneLine(
    ['config', '--set', 'no.such.key=1'],
    /^ringdiff: --set no\.such\.key: unknown key no\.such\.key$/,
  );
  failsWithOneLine(
    ['config', '--set', 'train.setps=5'],
    /unknown key train\.setps; did you mean train\.steps\?$/,
  );
  failsWithOneLine(['config', '--set', 'train.timesteps=5'], /did you mean diffusion\.timesteps\?$/);
  failsWithOneLine(['config', '--set', 'lr=1'], /unknown key lr; did you mean train\.lr\?$/);
  failsWithOneLine(
    ['config', '--set', 'train.steps.x=1'],
    /--set train\.steps\.x: train\.steps is a value, not a section/,
  );
  failsWithOneLine(
    ['config', '--print', '--config', write('typo.yaml', 'model:\n  num_clases: 0\n')],
    /typo\.yaml: unknown key model\.num_clases; did you mean model\.num_classes\?$/,
  );
});

test('model.num_classes follows the dataset; a number that does not fit its labels is refused', () => {
  const out = path.join(dir, 'classes');
  const toy = [
    '--set',
    'data.dataset=toy:8gaussians',
    '--set',
    'model.kind=mlp',
    '--set',
    `run.out_dir=${out}`,
  ];
  failsWithOneLine(
    ['train', ...toy, '--set', 'model.num_classes=10'],
    /model\.num_classes: 10, but dataset toy:8gaussians has no labels/,
  );
  failsWithOneLine(
    ['train', '--set', 'model.num_classes=5', '--set', `run.out_dir=${out}`],
    /model\.num_classes: 5, but dataset mnist:train has labels 0…9 \(use 10 or auto\)/,
  );
  assert.ok(!existsSync(out), 'a refused job writes nothing');
  // launch shows the coordinator's own one-line reason, not just its exit code.
  failsWithOneLine(
    ['launch', '--workers', '1', '--no-progress', ...toy, '--set', 'model.num_classes=3'],
    /the coordinator exited with code 1: model\.num_classes: 3, but dataset toy:8gaussians has no labels/,
  );
  const r = run(['config', '--print']);
  assert.match(r.stdout, /num_classes: auto # Classes for conditioning/);
});

for (const [what, keys] of [
  ["the README's toy usage", []],
  [
    'v-prediction, learned variance, min-SNR, zero terminal SNR and a cosine learning rate',
    [
      'diffusion.prediction=v',
      'diffusion.learn_sigma=true',
      'diffusion.loss_weighting=min_snr',
      'diffusion.zero_terminal_snr=true',
      'train.lr_schedule=cosine',
      'train.lr_final=2e-4',
    ],
  ],
] as const)
  test(`${what}: trains an unconditional toy model whose samples find the modes`, (tc) => {
    // `train --set data.dataset=toy:8gaussians --set model.kind=mlp` once trained a 10-class model on
    // unlabelled points, then sampled classes it never saw: 0.9 % of DDPM samples within 0.3 of a mode.
    const out = path.join(dir, keys.length > 0 ? 'toy-v' : 'toy');
    const t = run([
      'train',
      '--set',
      'data.dataset=toy:8gaussians',
      '--set',
      'model.kind=mlp',
      '--set',
      `run.out_dir=${out}`,
      ...keys.flatMap((k) => ['--set', k]),
    ]);
    assert.equal(t.code, 0, t.stderr);
    const state = JSON.parse(readFileSync(path.join(out, 'ckpt-1500', 'state.json'), 'utf8')) as {
      config: { model: { num_classes: unknown } };
    };
    assert.equal(state.config.model.num_classes, 0, 'resolved from the dataset, recorded as a number');
    const npy = path.join(out, 'modes.npy');
    const s = run([
      'sample',
      '--checkpoint',
      path.join(out, 'ckpt-1500'),
      '--count',
      '1000',
      '--sampler',
      'ddpm',
      '--out',
      npy,
    ]);
    assert.equal(s.code, 0, s.stderr);
    const buf = readFileSync(npy);
    const xy = new Float32Array(
      buf.buffer.slice(buf.byteOffset + 10 + buf.readUInt16LE(8), buf.byteOffset + buf.length),
    );
    let near = 0;
    for (let i = 0; i < 1000; i++) {
      const d = Array.from({ length: 8 }, (_, k) =>
        Math.hypot(
          (xy[2 * i] as number) - 2 * Math.cos((Math.PI * k) / 4),
          (xy[2 * i + 1] as number) - 2 * Math.sin((Math.PI * k) / 4),
        ),
      );
      if (Math.min(...d) < 0.3) near++;
    }
    // 43 % here after the fix (the points are N(centre, 0.1²): a perfect model puts 99 % within 0.3).
    tc.diagnostic(`${near} of 1000 DDPM samples within 0.3 of a mode`);
    assert.ok(near >= 300, `${near} of 1000 samples within 0.3 of a mode`);
  });

test('wrong type → one line naming the key path', () => {
  failsWithOneLine(
    ['train', '--config', write('type.yaml', 'train:\n  steps: many\n')],
    /type\.yaml: train\.steps: expected number/,
  );
  failsWithOneLine(['config', '--set', 'model.kind=resnet'], /model\.kind/);
  failsWithOneLine(
    ['config', '--set', 'diffusion.zero_terminal_snr=true'],
    /diffusion\.zero_terminal_snr: needs diffusion\.prediction x0 or v/,
  );
});

test('missing config file and missing checkpoint → one line, non-zero exit', () => {
  failsWithOneLine(
    ['train', '--config', path.join(dir, 'nope.yaml')],
    /nope\.yaml: cannot read config \(ENOENT\)/,
  );
  failsWithOneLine(
    ['sample', '--checkpoint', path.join(dir, 'ckpt-7'), '--out', path.join(dir, 'x.png')],
    /checkpoint ckpt-7 not found/,
  );
  failsWithOneLine(
    ['sample', '--checkpoint', dir, '--out', path.join(dir, 'x.txt')],
    /--out .*\.png or \.npy/,
  );
});

test('unknown backend is refused in one line; doctor reports the candidates', () => {
  failsWithOneLine(['doctor', '--backend', 'tpu'], /unknown backend 'tpu'/);
  const r = run(['doctor', '--json']);
  assert.equal(r.code, 0);
  const j = JSON.parse(r.stdout) as {
    chosen: string;
    tfjs_version: string;
    candidates: { name: string; loaded: boolean; reason: string | null }[];
  };
  assert.ok(j.candidates.some((c) => c.name === j.chosen && c.loaded));
  assert.equal(j.tfjs_version, '4.22.0');
  const gpu = j.candidates.find((c) => c.name === 'tensorflow-gpu');
  assert.ok(gpu && (gpu.loaded || (gpu.reason ?? '').length > 0));
  const text = run(['doctor']);
  assert.equal(text.code, 0);
  assert.match(text.stdout, new RegExp(`chosen: ${j.chosen}`));
});

test('config --print resolves defaults and --set overrides, with descriptions', () => {
  const r = run(['config', '--print', '--set', 'train.steps=7', '--set', 'model.channels=[8, 16]']);
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stdout, /steps: 7 # Optimizer steps/);
  assert.match(r.stdout, /channels: \[ 8, 16 \]/);
});

test('train then sample end to end: checkpoint, .npy and .png outputs', () => {
  const out = path.join(dir, 'run');
  const t = run([
    'train',
    '--backend',
    'cpu',
    '--set',
    `run.out_dir=${out}`,
    '--set',
    'train.steps=4',
    '--set',
    'train.global_batch=8',
    '--set',
    'data.dataset=toy:8gaussians',
    '--set',
    'model.kind=mlp',
    '--set',
    'model.num_classes=0',
    '--set',
    'model.hidden=16',
    '--set',
    'diffusion.timesteps=50',
    '--set',
    'sample.count=16',
    '--set',
    'sample.sampler=ddpm',
  ]);
  assert.equal(t.code, 0, t.stderr);
  const lines = t.stdout
    .trim()
    .split('\n')
    .map((l) => JSON.parse(l) as { msg: string; job: string });
  assert.ok(lines.every((l) => l.job === 'default'));
  assert.ok(lines.some((l) => l.msg === 'done'));
  assert.ok(existsSync(path.join(out, 'ckpt-4', 'state.json')));
  assert.ok(existsSync(path.join(out, 'samples.png')));
  const npy = path.join(dir, 's.npy');
  const s = run([
    'sample',
    '--checkpoint',
    path.join(out, 'ckpt-4'),
    '--count',
    '5',
    '--sampler',
    'ddim',
    '--steps',
    '5',
    '--out',
    npy,
  ]);
  assert.equal(s.code, 0, s.stderr);
  const buf = readFileSync(npy);
  assert.equal(buf.subarray(1, 6).toString('latin1'), 'NUMPY');
  assert.match(buf.toString('latin1', 10, 80), /'shape': \(5, 2\)/);
  assert.equal(buf.length % 4, 0);
  const png = run([
    'sample',
    '--checkpoint',
    path.join(out, 'ckpt-4'),
    '--count',
    '5',
    '--raw',
    '--out',
    path.join(dir, 's.png'),
  ]);
  assert.equal(png.code, 0, png.stderr);
  assert.deepEqual([...readFileSync(path.join(dir, 's.png')).subarray(1, 4)], [0x50, 0x4e, 0x47]);
  failsWithOneLine(
    ['sample', '--checkpoint', path.join(out, 'ckpt-4'), '--class', '1', '--out', npy],
    /unconditional/,
  );
});
