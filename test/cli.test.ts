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

test('wrong type → one line naming the key path', () => {
  failsWithOneLine(
    ['train', '--config', write('type.yaml', 'train:\n  steps: many\n')],
    /type\.yaml: train\.steps: expected number/,
  );
  failsWithOneLine(['config', '--set', 'model.kind=resnet'], /model\.kind/);
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
