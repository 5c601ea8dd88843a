/**
 * The U-Net's ADM options (issue 14, item 2): the `adm` layout against guided-diffusion's
 * UNetModel (forward on tiny random models, parameter counts of published configurations),
 * finite-difference gradients of every option, dropout masks keyed by example (shard and
 * micro-batch invariance), flat tensor count, and the config keys.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import * as tf from '@tensorflow/tfjs';
import { cpuBackend, relErr } from './helpers.js';
import { shardTestContext, splitGradients } from './shard-check.js';
import { checkGradients, randomizeZeros } from './gradient-check.js';
import { loadConfig } from '../src/config/load.js';
import { resolveForDataset } from '../src/config/resolve.js';
import { ModelSchema } from '../src/config/schema.js';
import { ExampleDropout } from '../src/model/dropout.js';
import { createDenoiser, summarizeModel } from '../src/model/nets/factory.js';
import { UNet, type UNetOptions } from '../src/model/nets/unet.js';
import { disposeParams, sortedNames, type Params } from '../src/model/params.js';
import { Purpose, stream } from '../src/model/rng.js';

await cpuBackend();

const HERE = path.dirname(fileURLToPath(import.meta.url));
const FIXTURE = path.resolve(HERE, '../../test/fixtures/adm-ref.json');

interface FxTensor {
  shape: number[];
  data: number[];
}
interface FxCase {
  name: string;
  options: Record<string, unknown>;
  reference_params: number;
  params: Record<string, FxTensor>;
  x: FxTensor;
  t: number[];
  y: number[] | null;
  out: FxTensor;
}
interface Fixture {
  published: Record<string, number>;
  cases: FxCase[];
}
const fx = JSON.parse(readFileSync(FIXTURE, 'utf8')) as Fixture;

// The fixture's two models (bench/anchors/adm_unet.py) in ringdiff's terms: guided-diffusion's
// attention_resolutions are downsampling factors (2 at 8×8 = 4 pixels), channels base × mult.
const FIXTURE_MODELS: Record<string, UNetOptions> = {
  ddpm: {
    dataShape: [8, 8, 2],
    channels: [8, 16],
    resBlocks: 1,
    attentionResolutions: [4],
    attentionHeads: 2,
    groups: 4,
    timeEmbedDim: 32,
    numClasses: 0,
    layout: 'adm',
  },
  adm: {
    dataShape: [8, 8, 2],
    channels: [8, 8, 16],
    resBlocks: 2,
    attentionResolutions: [4],
    attentionHeads: 1,
    headChannels: 4,
    groups: 4,
    timeEmbedDim: 32,
    numClasses: 3,
    outputs: 2,
    scaleShiftNorm: true,
    resblockUpdown: true,
    layout: 'adm',
  },
};

for (const c of fx.cases) {
  test(`adm layout: forward equals guided-diffusion's UNetModel (${c.name}, every weight random)`, () => {
    const m = new UNet(FIXTURE_MODELS[c.name] as UNetOptions);
    assert.deepEqual(m.specs.map((s) => s.name).sort(), Object.keys(c.params).sort(), 'same tensors');
    const nullRow = m.numClasses > 0 ? 32 : 0;
    assert.equal(summarizeModel(m).params, c.reference_params + nullRow, 'parameter count');
    const p: Params = new Map();
    for (const s of m.specs) {
      const r = c.params[s.name] as FxTensor;
      assert.deepEqual(r.shape, [...s.shape], s.name);
      p.set(s.name, tf.tensor(r.data, r.shape, 'float32'));
    }
    const x = tf.tensor(c.x.data, c.x.shape);
    const t = tf.tensor1d(c.t);
    const y = c.y ? tf.tensor1d(c.y, 'int32') : null;
    // Dropout is off in evaluation: the same output with or without a rate in the options.
    const out = m.apply(p, x, t, y);
    assert.deepEqual(out.shape, c.out.shape);
    const e = relErr(out.dataSync(), c.out.data);
    assert.ok(e < 1e-4, `relative error ${e}`);
    const wrong = new Map(p);
    const k = m.specs.find((s) => s.name.endsWith('conv2.kernel'))?.name as string;
    wrong.set(k, tf.mul(p.get(k) as tf.Tensor, 1.1));
    const moved = relErr(m.apply(wrong, x, t, y).dataSync(), c.out.data);
    assert.ok(moved > 1e-3, `a 10 % change of ${k} moves the output (${moved})`);
    tf.dispose([x, t, ...(y ? [y] : []), out, wrong.get(k) as tf.Tensor]);
    disposeParams(p);
  });
}

test('adm layout: parameter counts of DDPM, improved-DDPM and ADM configurations equal the reference', () => {
  const count = (m: Record<string, unknown>, shape: [number, number, number], outputs: number): number =>
    summarizeModel(
      createDenoiser({ ...ModelSchema.parse(m), num_classes: Number(m.num_classes ?? 0) }, shape, outputs),
    ).params;
  const ddpm = {
    unet_layout: 'adm',
    channels: { base: 128, mult: [1, 2, 2, 2] },
    res_blocks: 2,
    attention_resolutions: [16],
    groups: 32,
    time_embed_dim: 512,
    dropout: 0.1,
  };
  // DDPM's CIFAR-10 model: 35.7 M in Ho et al. 2020.
  assert.equal(count(ddpm, [32, 32, 3], 1), fx.published['ddpm-cifar10']);
  assert.equal(fx.published['ddpm-cifar10'], 35_746_307);
  const iddpm = { ...ddpm, res_blocks: 3, attention_resolutions: [16, 8], attention_heads: 4, dropout: 0.3 };
  assert.equal(count(iddpm, [32, 32, 3], 2), fx.published['iddpm-cifar10-learn-sigma']);
  const adm = {
    unet_layout: 'adm',
    channels: { base: 192, mult: [1, 2, 3, 4] },
    res_blocks: 3,
    attention_resolutions: [32, 16, 8],
    groups: 32,
    time_embed_dim: 768,
    attention_head_channels: 64,
    scale_shift_norm: true,
    resblock_updown: true,
    num_classes: 1000,
  };
  // + one 768-wide row: ringdiff's null class for classifier-free guidance.
  assert.equal(count(adm, [64, 64, 3], 2), (fx.published['adm-imagenet64-cond'] as number) + 768);
});

test('compact layout: defaults keep their tensors; each option adds exactly its own', () => {
  const base: UNetOptions = {
    dataShape: [8, 8, 1],
    channels: [8, 16],
    resBlocks: 1,
    attentionResolutions: [4],
    attentionHeads: 2,
    groups: 4,
    timeEmbedDim: 16,
    numClasses: 0,
  };
  const names = (o: Partial<UNetOptions>): string[] => new UNet({ ...base, ...o }).specs.map((s) => s.name);
  const plain = names({});
  assert.ok(plain.includes('down.0.downsample.kernel') && plain.includes('up.0.upsample.kernel'));
  assert.deepEqual(names({ dropout: 0.3, attentionHeads: 4 }), plain, 'dropout and heads add no tensor');
  assert.deepEqual(names({ headChannels: 4 }), plain);
  const ss = new UNet({ ...base, scaleShiftNorm: true }).specs;
  const tembWidth = (specs: typeof ss) => specs.find((s) => s.name === 'mid.res.0.temb.kernel')?.shape[1];
  assert.equal(tembWidth(ss), 32, 'scale and shift: twice the block width');
  const ud = names({ resblockUpdown: true });
  assert.ok(!ud.some((n) => n.includes('downsample') || n.includes('upsample')));
  assert.ok(ud.includes('down.0.resdown.conv1.kernel') && ud.includes('up.0.resup.skip.kernel'));
});

const FD_MODELS: Array<[string, UNetOptions, string[]]> = [
  [
    'compact + scale-shift + resblock up/down + head channels',
    {
      dataShape: [8, 8, 2],
      channels: [8, 16],
      resBlocks: 1,
      attentionResolutions: [4],
      attentionHeads: 1,
      headChannels: 4,
      groups: 4,
      timeEmbedDim: 16,
      numClasses: 2,
      scaleShiftNorm: true,
      resblockUpdown: true,
    },
    [
      'mid.res.0.temb.kernel',
      'down.0.resdown.conv1.kernel',
      'up.0.resup.skip.kernel',
      'mid.attn.0.qkv.kernel',
    ],
  ],
  [
    'adm layout',
    {
      dataShape: [8, 8, 2],
      channels: [8, 16],
      resBlocks: 1,
      attentionResolutions: [4],
      attentionHeads: 2,
      groups: 4,
      timeEmbedDim: 16,
      numClasses: 0,
      layout: 'adm',
    },
    [
      'conv_in.kernel',
      'down.0.downsample.kernel',
      'mid.attn.0.proj.kernel',
      'up.1.upsample.kernel',
      'up.0.res.1.skip.kernel',
    ],
  ],
];

for (const [what, opts, checkNames] of FD_MODELS) {
  test(`gradients match central finite differences (${what})`, () => {
    const m = new UNet(opts);
    const p = m.init(1);
    randomizeZeros(p, 100);
    const x = tf.randomNormal([2, ...m.dataShape], 0, 1, 'float32', 1);
    const t = tf.tensor1d([17, 640], 'float32');
    const y = m.numClasses > 0 ? tf.tensor1d([0, 2], 'int32') : null;
    const r = tf.randomNormal([2, 8, 8, 2], 0, 1, 'float32', 9);
    const checked = checkGradients(m, p, { x, t, y, r }, [
      ...checkNames,
      'out.conv.kernel',
      'time.lin1.kernel',
    ]);
    assert.equal(checked, 3 * (checkNames.length + 2));
    tf.dispose([x, t, r, ...(y ? [y] : [])]);
    disposeParams(p);
  });
}

test('dropout masks: kept with probability 1 − rate, mean exactly 1, keyed by example and layer order', () => {
  const rate = 0.3;
  const a = new ExampleDropout(5, 9, 10, 4);
  const m1 = a.next([6, 6, 8], rate).dataSync();
  const m2 = a.next([3, 3, 16], rate).dataSync();
  const kept = [...m1].filter((v) => v > 0);
  const frac = kept.length / m1.length;
  // 1152 Bernoulli(0.7) draws: the fraction has standard deviation 0.0135; 4σ.
  assert.ok(Math.abs(frac - 0.7) < 0.054, `kept fraction ${frac}`);
  const keep = kept[0] as number;
  assert.ok(kept.every((v) => v === keep) && Math.abs(keep * Math.round(0.7 * 65536) - 65536) < 1e-3);
  // Example 12 alone (from 12, n 1) draws the same two masks as it did inside the batch of 4.
  const b = new ExampleDropout(5, 9, 12, 1);
  assert.deepEqual([...b.next([6, 6, 8], rate).dataSync()], [...m1.slice(2 * 288, 3 * 288)]);
  assert.deepEqual([...b.next([3, 3, 16], rate).dataSync()], [...m2.slice(2 * 144, 3 * 144)]);
  // Another step, another mask.
  const c = new ExampleDropout(5, 10, 12, 1).next([6, 6, 8], rate).dataSync();
  assert.notDeepEqual([...c], [...m1.slice(2 * 288, 3 * 288)]);
  assert.throws(() => a.next([2], 1), /dropout rate must be in \[0, 1\), got 1/);
});

test('dropout acts in training only; 1, 2 and 3 shards and micro-batches give the same gradient (≤ 1e-5 rel)', () => {
  const cfg = loadConfig(undefined, [
    'model.channels=[8, 16]',
    'model.groups=4',
    'model.time_embed_dim=16',
    'model.attention_resolutions=[4]',
    'model.unet_layout=adm',
    'model.dropout=0.3',
    'model.scale_shift_norm=true',
    'model.num_classes=3',
  ]);
  const model = createDenoiser(resolveForDataset(cfg, { numClasses: 3 }).model, [8, 8, 1]) as UNet;
  const params = model.init(4);
  randomizeZeros(params, 200);
  const x = tf.randomNormal([2, 8, 8, 1], 0, 1, 'float32', 3);
  const t = tf.tensor1d([5, 40], 'float32');
  const evalOut = model.apply(params, x, t, null).dataSync();
  const again = model.apply(params, x, t, null).dataSync();
  assert.deepEqual([...again], [...evalOut], 'evaluation is deterministic');
  const train = model.apply(params, x, t, null, { dropout: new ExampleDropout(1, 0, 0, 2) }).dataSync();
  assert.ok(relErr(train, evalOut) > 1e-3, 'training masks change the output');
  const B = 12;
  const x0 = stream(1, 0, 0, Purpose.data).normals(new Float32Array(B * 64));
  const labels = Int32Array.from({ length: B }, (_, i) => i % 3);
  const ctx = { ...shardTestContext(B), schedule: shardTestContext(B).schedule };
  const whole = splitGradients(model, params, x0, labels, [], ctx);
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
  // The next step draws other masks: the gradient differs.
  const next = splitGradients(model, params, x0, labels, [], { ...ctx, step: ctx.step + 1 });
  assert.notEqual(next.loss, whole.loss);
  tf.dispose([x, t]);
  disposeParams(params);
});

test('tensor count stays flat over training passes with dropout, scale-shift and resblock up/down', () => {
  const m = new UNet({
    dataShape: [8, 8, 1],
    channels: [8, 16],
    resBlocks: 1,
    attentionResolutions: [4],
    attentionHeads: 2,
    groups: 4,
    timeEmbedDim: 16,
    numClasses: 0,
    dropout: 0.2,
    scaleShiftNorm: true,
    resblockUpdown: true,
    layout: 'adm',
  });
  const p = m.init(2);
  const names = sortedNames(p);
  const x = tf.randomNormal([2, 8, 8, 1], 0, 1, 'float32', 1);
  const t = tf.tensor1d([3, 30], 'float32');
  const before = tf.memory().numTensors;
  for (let i = 0; i < 4; i++) {
    tf.tidy(() => {
      const { value } = tf.valueAndGrads((...ts: tf.Tensor[]) =>
        tf.mean(
          tf.square(
            m.apply(new Map(names.map((n, j) => [n, ts[j] as tf.Tensor])), x, t, null, {
              dropout: new ExampleDropout(1, i, 0, 2),
            }),
          ),
        ),
      )(names.map((n) => p.get(n) as tf.Tensor));
      assert.ok(Number.isFinite(value.dataSync()[0]));
    });
    assert.equal(tf.memory().numTensors, before, `after pass ${i + 1}`);
  }
  tf.dispose([x, t]);
  disposeParams(p);
});

test('config: channels as {base, mult}; bad head channels, heads and rates are one-line errors naming the key', () => {
  const m = ModelSchema.parse({ channels: { base: 64, mult: [1, 2, 2] } });
  assert.deepEqual(m.channels, [64, 128, 128]);
  assert.equal(m.unet_layout, 'compact');
  assert.equal(m.dropout, 0);
  const build = (sets: string[]) => {
    const cfg = resolveForDataset(loadConfig(undefined, sets), { numClasses: 10 });
    return createDenoiser(cfg.model, [28, 28, 1]);
  };
  assert.throws(
    () => build(['model.attention_resolutions=[14]', 'model.attention_head_channels=24']),
    /^Error: model\.attention_head_channels: 24 does not divide channels 32 \(resolution 14\)$/,
  );
  // The adm middle block attends even with no attention_resolutions.
  assert.throws(
    () => build(['model.unet_layout=adm', 'model.attention_heads=3']),
    /^Error: model\.attention_heads: 3 does not divide channels 64 \(resolution 7\)$/,
  );
  assert.throws(() => loadConfig(undefined, ['model.dropout=1']), /model\.dropout/);
  assert.throws(() => loadConfig(undefined, ['model.unet_layout=ddpm']), /model\.unet_layout/);
  assert.throws(() => loadConfig(undefined, ['model.channels={base: 8}']), /model\.channels/);
});
