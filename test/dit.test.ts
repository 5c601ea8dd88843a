/**
 * DiT (model.kind: dit): parameter counts and a forward pass against the reference implementation
 * (facebookresearch/DiT models.py), adaLN-Zero identities, gradients, shard invariance, memory,
 * the config keys and `ringdiff model`.
 */
import { test } from 'node:test';
import { shardTestContext, splitGradients } from './shard-check.js';
import { checkGradients, randomizeZeros } from './gradient-check.js';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import * as tf from '@tensorflow/tfjs';
import { cpuBackend, relErr } from './helpers.js';
import { loadConfig } from '../src/config/load.js';
import { resolveDit, resolveForDataset, type ResolvedModelConfig } from '../src/config/resolve.js';
import { DIT_PRESETS, DitSchema, ModelSchema, type DitPresetName } from '../src/config/schema.js';
import { DiT, ditBlock, sincosPosEmbed2d, type DiTOptions } from '../src/model/nets/dit.js';
import { createDenoiser, summarizeModel } from '../src/model/nets/factory.js';
import { countSpecs, fnv1a32, silu } from '../src/model/nets/layers.js';
import { countParams, disposeParams, sortedNames, type Params } from '../src/model/params.js';
import { Purpose, stream } from '../src/model/rng.js';

await cpuBackend();

const HERE = path.dirname(fileURLToPath(import.meta.url));
const BIN = path.resolve(HERE, '../../bin/ringdiff.js');
const FIXTURE = path.resolve(HERE, '../../test/fixtures/dit-ref.json');

/** A DiT of preset `name` on `input`² × `channels` inputs. */
function preset(
  name: DitPresetName,
  input: number,
  channels: number,
  classes: number,
  learnSigma: boolean,
): DiT {
  const p = DIT_PRESETS[name];
  return new DiT({
    dataShape: [input, input, channels],
    depth: p.depth,
    hidden: p.hidden,
    heads: p.heads,
    patch: p.patch,
    mlpRatio: 4,
    numClasses: classes,
    learnSigma,
  });
}

/** A DiT small enough for finite differences on the pure-JS backend. */
const tiny = (over: Partial<DiTOptions> = {}): DiT =>
  new DiT({
    dataShape: [8, 8, 2],
    depth: 2,
    hidden: 8,
    heads: 2,
    patch: 2,
    mlpRatio: 2,
    numClasses: 3,
    ...over,
  });

function inputs(m: DiT, b: number): { x: tf.Tensor; t: tf.Tensor1D; y: tf.Tensor1D } {
  return {
    x: tf.randomNormal([b, ...m.dataShape], 0, 1, 'float32', 1),
    t: tf.tensor1d(
      Array.from({ length: b }, (_, i) => (i * 337) % 1000),
      'float32',
    ),
    y: tf.tensor1d(
      Array.from({ length: b }, (_, i) => i % (m.numClasses + 1)),
      'int32',
    ),
  };
}

// Trainable parameter counts of the reference: facebookresearch/DiT models.py at ed81ce2, its
// DiT_models[name](input_size, in_channels, num_classes, learn_sigma) with the default
// class_dropout_prob 0.1 (so a null-class row), counted on PyTorch 1.13 here as
// sum(p.numel() for p in m.parameters() if p.requires_grad); `fixed` is the frozen pos_embed.
// timm's PatchEmbed/Attention/Mlp were stood in by modules with timm's parameters.
const REFERENCE: Array<[DitPresetName, number, number, number, boolean, number, number]> = [
  // name, input, in_channels, num_classes, learn_sigma, params, fixed
  ['XL/2', 32, 4, 1000, true, 674_834_720, 294_912],
  ['XL/2', 32, 4, 1000, false, 674_816_272, 294_912],
  ['XL/4', 32, 4, 1000, true, 675_000_704, 73_728],
  ['XL/4', 32, 4, 1000, false, 674_926_912, 73_728],
  ['XL/8', 32, 4, 1000, true, 675_664_640, 18_432],
  ['XL/8', 32, 4, 1000, false, 675_369_472, 18_432],
  ['L/2', 32, 4, 1000, true, 457_840_672, 262_144],
  ['L/2', 32, 4, 1000, false, 457_824_272, 262_144],
  ['L/4', 32, 4, 1000, true, 457_988_224, 65_536],
  ['L/4', 32, 4, 1000, false, 457_922_624, 65_536],
  ['L/8', 32, 4, 1000, true, 458_578_432, 16_384],
  ['L/8', 32, 4, 1000, false, 458_316_032, 16_384],
  ['B/2', 32, 4, 1000, true, 130_315_808, 196_608],
  ['B/2', 32, 4, 1000, false, 130_303_504, 196_608],
  ['B/4', 32, 4, 1000, true, 130_426_496, 49_152],
  ['B/4', 32, 4, 1000, false, 130_377_280, 49_152],
  ['B/8', 32, 4, 1000, true, 130_869_248, 12_288],
  ['B/8', 32, 4, 1000, false, 130_672_384, 12_288],
  ['S/2', 32, 4, 1000, true, 32_865_056, 98_304],
  ['S/2', 32, 4, 1000, false, 32_858_896, 98_304],
  ['S/4', 32, 4, 1000, true, 32_920_448, 24_576],
  ['S/4', 32, 4, 1000, false, 32_895_808, 24_576],
  ['S/8', 32, 4, 1000, true, 33_142_016, 6_144],
  ['S/8', 32, 4, 1000, false, 33_043_456, 6_144],
  ['S/2', 28, 1, 10, false, 32_469_508, 75_264],
  ['S/4', 28, 1, 10, false, 32_478_736, 18_816],
  ['S/4', 28, 1, 10, true, 32_484_896, 18_816],
  ['B/4', 28, 1, 10, false, 129_543_184, 37_632],
];

test('parameter counts equal the reference implementation for every preset (± learned sigma, latents and MNIST)', () => {
  for (const [name, input, cin, classes, ls, params, fixed] of REFERENCE) {
    const s = summarizeModel(preset(name, input, cin, classes, ls));
    const what = `DiT-${name} ${input}×${input}×${cin}, ${classes} classes, learn_sigma ${ls}`;
    assert.equal(s.params, params, `${what}: trainable`);
    assert.equal(s.fixed, fixed, `${what}: fixed`);
  }
  // Per module, against the reference's x_embedder, t_embedder, y_embedder, blocks, final_layer.
  const modules = (m: DiT) => Object.fromEntries(summarizeModel(m).modules.map((x) => [x.module, x.params]));
  assert.deepEqual(modules(preset('S/2', 32, 4, 1000, true)), {
    x_embed: 6528,
    t_embed: 246_528,
    y_embed: 384_384,
    blocks: 31_919_616,
    final: 308_000,
  });
  assert.deepEqual(modules(preset('S/4', 28, 1, 10, false)), {
    x_embed: 6528,
    t_embed: 246_528,
    y_embed: 4224,
    blocks: 31_919_616,
    final: 301_840,
  });
  // An unconditional DiT has no label table.
  assert.equal(summarizeModel(preset('S/4', 28, 1, 0, false)).params, 32_478_736 - 4224);
});

test('forward equals the reference DiT on a tiny model with every weight random (learned sigma)', () => {
  type Fx = {
    params: Record<string, { shape: number[]; data: number[] }>;
    x: number[];
    t: number[];
    y: number[];
    out: number[];
    pos_embed: number[];
  };
  const fx = JSON.parse(readFileSync(FIXTURE, 'utf8')) as Fx;
  const m = new DiT({
    dataShape: [8, 8, 2],
    depth: 2,
    hidden: 8,
    heads: 2,
    patch: 2,
    mlpRatio: 4,
    numClasses: 3,
    learnSigma: true,
  });
  assert.equal(m.outChannels, 4);
  assert.deepEqual(
    m.specs.map((s) => s.name).sort(),
    Object.keys(fx.params).sort(),
    'same tensors as the reference',
  );
  const p: Params = new Map();
  for (const s of m.specs) {
    const r = fx.params[s.name] as { shape: number[]; data: number[] };
    assert.deepEqual(r.shape, [...s.shape], s.name);
    p.set(s.name, tf.tensor(r.data, r.shape, 'float32'));
  }
  const x = tf.tensor(fx.x, [3, 8, 8, 2]);
  const t = tf.tensor1d(fx.t);
  const y = tf.tensor1d(fx.y, 'int32');
  const out = m.apply(p, x, t, y);
  assert.deepEqual(out.shape, [3, 8, 8, 4]);
  const e = relErr(out.dataSync(), fx.out);
  assert.ok(e < 1e-4, `relative error ${e}`);
  assert.ok(relErr(m.positionEmbedding(), fx.pos_embed) < 1e-6, 'position embedding');
  tf.dispose([x, t, y, out]);
  disposeParams(p);
});

test('2-D sin-cos position embedding: first half the column, second half the row', () => {
  const pos = sincosPosEmbed2d(8, 2, 3);
  const row = (n: number) => [...pos.slice(8 * n, 8 * n + 8)];
  const w = 1 / 100; // 10000^(−1/2)
  // Token (1, 2): [sin 2, sin 2w, cos 2, cos 2w, sin 1, sin w, cos 1, cos w].
  const want = [
    Math.sin(2),
    Math.sin(2 * w),
    Math.cos(2),
    Math.cos(2 * w),
    Math.sin(1),
    Math.sin(w),
    Math.cos(1),
    Math.cos(w),
  ];
  assert.ok(relErr(row(5), want) < 1e-6);
  assert.deepEqual(row(0), [0, 0, 1, 1, 0, 0, 1, 1]);
  assert.throws(() => sincosPosEmbed2d(6, 2, 2), /divisible by 4/);
});

test('a DiT block with zeroed adaLN is the identity; with adaLN on it is not', () => {
  const m = tiny();
  const p = m.init(3);
  randomizeZeros(p, 50);
  const zero = (name: string) => {
    const v = p.get(name) as tf.Tensor;
    p.set(name, tf.zerosLike(v));
    v.dispose();
  };
  const x = tf.randomNormal([2, 16, 8], 0, 1, 'float32', 7) as tf.Tensor3D;
  const c = silu(tf.randomNormal([2, 8], 0, 1, 'float32', 8) as tf.Tensor2D);
  const moved = ditBlock(p, 'blocks.0', x, c, 2);
  assert.ok(relErr(moved.dataSync(), x.dataSync()) > 1e-2, 'a random block changes x');
  zero('blocks.0.ada.kernel');
  zero('blocks.0.ada.bias');
  const same = ditBlock(p, 'blocks.0', x, c, 2);
  assert.deepEqual([...same.dataSync()], [...x.dataSync()], 'bit-identical');
  tf.dispose([x, c, moved, same]);
  disposeParams(p);
});

test('at init: the model outputs exactly 0, init follows the reference, names are sorted and distinct', () => {
  const m = tiny({ hidden: 16, mlpRatio: 4 });
  const p = m.init(0);
  assert.equal(countParams(p), countSpecs(m.specs));
  assert.deepEqual([...p.keys()], sortedNames(p));
  const names = m.specs.map((s) => s.name);
  assert.equal(new Set(names.map(fnv1a32)).size, names.length, 'distinct rng streams');
  for (const n of names) assert.match(n, /^[a-z_]+(\.[a-z0-9_]+)*\.(kernel|bias|table)$/);
  assert.ok(!names.some((n) => n.includes('pos')), 'the position embedding is not a parameter');
  const { x, t, y } = inputs(m, 3);
  const out = m.apply(p, x, t, y);
  assert.ok(out.dataSync().every((v) => v === 0));
  const data = (n: string) => (p.get(n) as tf.Tensor).dataSync();
  for (const n of names) {
    if (/\.ada\.|^final\./.test(n) || n.endsWith('.bias'))
      assert.ok(
        data(n).every((v) => v === 0),
        `${n} zero`,
      );
  }
  // Xavier-uniform bound √(6/(fan_in + fan_out)), the patch embedding on its [p²C, D] view.
  const within = (n: string, bound: number) => {
    const v = data(n);
    assert.ok(v.every((a) => Math.abs(a) <= bound) && Math.max(...v.map(Math.abs)) > 0.8 * bound, n);
  };
  within('x_embed.kernel', Math.sqrt(6 / (2 * 2 * 2 + 16)));
  within('blocks.1.attn.qkv.kernel', Math.sqrt(6 / (16 + 48)));
  within('blocks.0.mlp.fc2.kernel', Math.sqrt(6 / (64 + 16)));
  for (const n of ['y_embed.table', 't_embed.lin1.kernel', 't_embed.lin2.kernel']) {
    const v = data(n);
    const std = Math.sqrt(Array.from(v).reduce((a, b) => a + b * b, 0) / v.length);
    assert.ok(Math.abs(std - 0.02) < 0.004, `${n}: std ${std}`);
  }
  assert.deepEqual((p.get('y_embed.table') as tf.Tensor).shape, [4, 16], 'null-class row');
  tf.dispose([x, t, y, out]);
  disposeParams(p);
});

test('gradients match central finite differences (tiny DiT, float32)', () => {
  const m = tiny();
  const p = m.init(1);
  randomizeZeros(p, 100);
  const { x, t, y } = inputs(m, 2);
  const r = tf.randomNormal([2, 8, 8, 2], 0, 1, 'float32', 9);
  const checked = checkGradients(m, p, { x, t, y, r }, [
    'x_embed.kernel',
    't_embed.lin1.kernel',
    'y_embed.table',
    'blocks.0.attn.qkv.kernel',
    'blocks.0.attn.proj.bias',
    'blocks.1.mlp.fc1.kernel',
    'blocks.1.mlp.fc2.kernel',
    'blocks.0.ada.kernel',
    'blocks.1.ada.bias',
    'final.ada.kernel',
    'final.linear.kernel',
  ]);
  assert.equal(checked, 33);
  tf.dispose([x, t, y, r]);
  disposeParams(p);
});

test('gradients of 1, 2 and 3 shards (and micro-batches) sum to the whole batch (≤ 1e-5 rel)', () => {
  const cfg = loadConfig(undefined, [
    'model.kind=dit',
    'model.dit.depth=2',
    'model.dit.hidden=8',
    'model.dit.heads=2',
    'model.dit.patch=2',
    'model.dit.mlp_ratio=2',
    'model.num_classes=3',
    'model.class_dropout=0.3',
  ]);
  const model = createDenoiser(resolveForDataset(cfg, { numClasses: 3 }).model, [8, 8, 1]) as DiT;
  const params = model.init(4);
  randomizeZeros(params, 200);
  const B = 12;
  const x0 = stream(1, 0, 0, Purpose.data).normals(new Float32Array(B * 64));
  const labels = Int32Array.from({ length: B }, (_, i) => i % 3);
  const ctx = shardTestContext(B);
  const whole = splitGradients(model, params, x0, labels, [], ctx);
  assert.equal(whole.total.size, model.specs.length, 'a gradient for every parameter, none for pos_embed');
  for (const [cuts, mb] of [
    [[5], 0],
    [[3, 7], 0],
    [[1, 11], 2],
  ] as [number[], number][]) {
    const part = splitGradients(model, params, x0, labels, cuts, { ...ctx, microbatch: mb });
    assert.ok(Math.abs(part.loss - whole.loss) < 1e-6 * Math.abs(whole.loss));
    for (const [name, g] of whole.total) {
      const e = relErr(part.total.get(name) as Float32Array, g);
      assert.ok(e < 1e-5, `${name}: relative error ${e} with cuts ${cuts} microbatch ${mb}`);
    }
  }
  disposeParams(params);
});

test('tensor count stays flat over forward/backward passes', () => {
  const m = tiny();
  const p = m.init(2);
  const names = sortedNames(p);
  const { x, t, y } = inputs(m, 2);
  const before = tf.memory().numTensors;
  for (let i = 0; i < 4; i++) {
    tf.tidy(() => {
      const { value, grads } = tf.valueAndGrads((...ts: tf.Tensor[]) =>
        tf.mean(
          tf.square(m.apply(new Map(names.map((n, j) => [n, ts[j] as tf.Tensor])), x, t, i % 2 ? y : null)),
        ),
      )(names.map((n) => p.get(n) as tf.Tensor));
      assert.ok(Number.isFinite(value.dataSync()[0]));
      assert.equal(grads.length, names.length);
    });
    assert.equal(tf.memory().numTensors, before, `after pass ${i + 1}`);
  }
  tf.dispose([x, t, y]);
  disposeParams(p);
});

test('config: a preset fills only unset keys; bad combinations are one-line errors naming the key', () => {
  const dit = (raw: Record<string, unknown>) => DitSchema.parse(raw);
  assert.deepEqual(resolveDit(dit({ preset: 'B/4' })), {
    preset: 'B/4',
    depth: 12,
    hidden: 768,
    heads: 12,
    patch: 4,
    mlp_ratio: 4,
  });
  assert.deepEqual(resolveDit(dit({ preset: 'S/4', depth: 2, patch: 2 })), {
    preset: 'S/4',
    depth: 2,
    hidden: 384,
    heads: 6,
    patch: 2,
    mlp_ratio: 4,
  });
  const once = resolveDit(dit({ preset: 'XL/2' }));
  assert.deepEqual(resolveDit(dit({ ...once })), once, 'idempotent');
  for (const [raw, re] of [
    [{}, /^model\.dit\.depth: not set; give model\.dit\.preset/],
    [{ depth: 2, hidden: 8, heads: 2 }, /^model\.dit\.patch: not set/],
    [{ preset: 'S/4', heads: 5 }, /^model\.dit\.heads: 5 does not divide model\.dit\.hidden 384$/],
    [{ depth: 1, hidden: 6, heads: 3, patch: 2 }, /^model\.dit\.hidden: 6 is not a multiple of 4/],
    [{ preset: 'S/4', mlp_ratio: 0.001 }, /^model\.dit\.mlp_ratio: /],
  ] as Array<[Record<string, unknown>, RegExp]>) {
    assert.throws(
      () => resolveDit(dit(raw)),
      (e: unknown) => e instanceof Error && re.test(e.message) && !e.message.includes('\n'),
      re.source,
    );
  }
  assert.throws(() => loadConfig(undefined, ['model.dit.preset=S/3']), /model\.dit\.preset: .*"S\/4"/);
  // Resolution writes the preset's numbers into the job config (what checkpoints record).
  const resolved = resolveForDataset(loadConfig(undefined, ['model.kind=dit', 'model.dit.preset=S/8']), {
    numClasses: 10,
  });
  assert.equal(resolved.model.dit.depth, 12);
  assert.equal(resolved.model.dit.patch, 8);
  const model = (over: Record<string, unknown>): ResolvedModelConfig => ({
    ...ModelSchema.parse({ kind: 'dit', ...over }),
    num_classes: 10,
  });
  const oneLine = (re: RegExp) => (e: unknown) =>
    e instanceof Error && re.test(e.message) && !e.message.includes('\n');
  assert.throws(
    () => createDenoiser(model({ dit: { preset: 'S/8' } }), [28, 28, 1]),
    oneLine(/^model\.dit\.patch: 8 does not divide the image sides 28×28 \(data\.image_size\)$/),
  );
  assert.throws(
    () => createDenoiser(model({ dit: { preset: 'S/4' } }), [2]),
    oneLine(/^model\.kind: dit needs image examples/),
  );
  assert.ok(createDenoiser(model({ dit: { preset: 'S/4' } }), [28, 28, 1]) instanceof DiT);
});

function run(args: string[]) {
  const r = spawnSync(process.execPath, [BIN, ...args], { encoding: 'utf8', timeout: 300_000 });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

test('ringdiff model --json prints the counts of a config; a bad preset or patch is one line', () => {
  const dir = mkdtempSync(path.join(tmpdir(), 'ringdiff-dit-'));
  try {
    const file = path.join(dir, 'job.yaml');
    writeFileSync(file, 'model:\n  kind: dit\n  dit:\n    preset: S/4\n');
    const r = run(['model', '--config', file, '--json']);
    assert.equal(r.code, 0, r.stderr);
    const j = JSON.parse(r.stdout) as Record<string, unknown>;
    assert.equal(j.params, 32_478_736, 'the reference DiT-S/4 on 28×28×1 with 10 classes');
    assert.equal(j.fixed, 18_816);
    assert.deepEqual(j.data_shape, [28, 28, 1]);
    assert.deepEqual(j.modules, {
      x_embed: 6528,
      t_embed: 246_528,
      y_embed: 4224,
      blocks: 31_919_616,
      final: 301_840,
    });
    assert.deepEqual(j.fixed_tensors, { pos_embed: [49, 384] });
    const text = run(['model', '--config', file, '--set', 'model.dit.depth=2']);
    assert.equal(text.code, 0, text.stderr);
    assert.match(text.stdout, /^params 5,879,056 \(trainable\)$/m);
    assert.match(text.stdout, /^fixed {2}18,816 pos_embed \[49, 384\]/m);
    const example = path.resolve(HERE, '../../examples/dit-mnist.yaml');
    const ex = JSON.parse(run(['model', '--config', example, '--json']).stdout) as Record<string, unknown>;
    assert.equal(ex.params, 1_275_408, 'examples/dit-mnist.yaml');
    const unet = JSON.parse(run(['model', '--json']).stdout) as { params: number; fixed: number };
    assert.equal(unet.fixed, 0);
    assert.ok(unet.params > 0);
    for (const [args, re] of [
      [['--set', 'model.dit.preset=S/3'], /^ringdiff: .*model\.dit\.preset: /],
      [
        ['--set', 'model.dit.preset=S/8'],
        /^ringdiff: model\.dit\.patch: 8 does not divide the image sides 28×28/,
      ],
    ] as Array<[string[], RegExp]>) {
      const f = run(['model', '--config', file, '--json', ...args]);
      assert.notEqual(f.code, 0);
      const lines = f.stderr.trim().split('\n');
      assert.equal(lines.length, 1, f.stderr);
      assert.match(lines[0] as string, re);
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('ringdiff train runs DiT-S/4 (depth cut to 1) on MNIST for a few steps on the default backend', () => {
  const dir = mkdtempSync(path.join(tmpdir(), 'ringdiff-dit-train-'));
  try {
    const r = run([
      'train',
      ...['--set', 'model.kind=dit', '--set', 'model.dit.preset=S/4', '--set', 'model.dit.depth=1'],
      ...['--set', 'train.steps=3', '--set', 'train.global_batch=8', '--set', 'train.log_every=1'],
      ...['--set', 'sample.count=0', '--set', `run.out_dir=${dir}`],
    ]);
    assert.equal(r.code, 0, r.stderr);
    const steps = r.stdout
      .split('\n')
      .filter((l) => l.includes('"msg":"step"'))
      .map((l) => JSON.parse(l) as { step: number; loss: number });
    assert.deepEqual(
      steps.map((s) => s.step),
      [1, 2, 3],
    );
    for (const s of steps) assert.ok(Number.isFinite(s.loss) && s.loss > 0);
    const state = JSON.parse(readFileSync(path.join(dir, 'ckpt-3', 'state.json'), 'utf8')) as {
      config: { model: { kind: string; dit: Record<string, unknown> } };
    };
    assert.equal(state.config.model.kind, 'dit');
    assert.deepEqual(state.config.model.dit, {
      preset: 'S/4',
      depth: 1,
      hidden: 384,
      heads: 6,
      patch: 4,
      mlp_ratio: 4,
    });
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
