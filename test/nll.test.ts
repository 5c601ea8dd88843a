import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import * as tf from '@tensorflow/tfjs';
import { cpuBackend, uniform } from './helpers.js';
import { gaussianBound } from '../src/model/diffusion/bound-gaussian.js';
import { scheduleFor, type Schedule } from '../src/model/diffusion/schedule.js';
import { qSample } from '../src/model/diffusion/process.js';
import { denoised } from '../src/model/diffusion/prediction.js';
import { modelLogVariance, vbTerms } from '../src/model/diffusion/vlb.js';
import { AnalyticDenoiser, mixtureOf, sampleMixture } from '../src/model/nets/analytic.js';
import { MLPDenoiser } from '../src/model/nets/mlp.js';
import {
  boundTerms,
  estimate,
  evalNoise,
  exampleTimesteps,
  mergeParts,
  strata,
  summarize,
  type BoundModel,
  type BoundPart,
  type BoundSettings,
} from '../src/eval/nll.js';
import type { ReverseVariance } from '../src/model/diffusion/bound.js';

await cpuBackend();

const S = 0.5;
const LINEAR = scheduleFor('linear', 1000);
const range = (n: number, from = 0) => Array.from({ length: n }, (_, i) => from + i);

/** The exact denoiser of N(0, S²) in D dimensions as a BoundModel. */
function gaussianModel(
  D: number,
  s: Schedule = LINEAR,
): { model: BoundModel; data: (n: number) => Float32Array } {
  const m = mixtureOf([1], [new Array<number>(D).fill(0)], S);
  const denoiser = new AnalyticDenoiser(m, s, 'eps');
  return {
    model: {
      denoiser,
      params: new Map(),
      schedule: s,
      prediction: 'eps',
      learnSigma: false,
      clip: false,
      x0Variance: (xt, t, y) => denoiser.x0Variance(xt, t, y),
    },
    data: (n) => sampleMixture(m, n, 11),
  };
}

const settings = (variance: ReverseVariance, timesteps: number, batch = 1000): BoundSettings => ({
  variance,
  decoder: 'continuous',
  timesteps,
  seed: 5,
  batch,
});

/** Per-example totals (nats per dimension) of a part, in index order. */
const totals = (p: BoundPart) => p.examples.map((e) => e.prior + e.kl + e.decoder);

test('closed form: 1.2957 nats/dim with the posterior variance, the entropy with the optimal one', (tc) => {
  const post = gaussianBound(LINEAR.betas, S, 'posterior');
  const beta = gaussianBound(LINEAR.betas, S, 'beta');
  const opt = gaussianBound(LINEAR.betas, S, 'optimal');
  tc.diagnostic(
    `posterior ${post.total.toFixed(6)}, beta ${beta.total.toFixed(6)}, optimal ${opt.total.toFixed(10)}, entropy ${opt.entropy.toFixed(10)} nats/dim`,
  );
  assert.ok(Math.abs(post.total - 1.2957) < 5e-5, `posterior bound ${post.total}`);
  for (const b of [post, beta, opt]) {
    const sum = b.prior + b.decoder + b.kl.reduce((a, v) => a + v, 0);
    assert.ok(Math.abs(sum - b.total) < 1e-12);
    assert.ok(Math.abs(b.klSum - (sum - b.prior - b.decoder)) < 1e-12);
  }
  // The bound exceeds the entropy by exactly KL(q(x_{T−1}) ‖ N(0, 1)), q(x_{T−1}) = N(0, v).
  const abT = LINEAR.alphasCumprod[999] as number;
  const v = 1 - abT * (1 - S * S);
  const priorGap = 0.5 * (v - 1 - Math.log(v));
  assert.ok(Math.abs(opt.entropy - 0.5 * Math.log(2 * Math.PI * Math.E * S * S)) < 1e-15);
  assert.ok(
    Math.abs(opt.total - opt.entropy - priorGap) < 1e-11,
    `${opt.total - opt.entropy} vs ${priorGap}`,
  );
  // A suboptimal variance can only add: every KL term is ≥ its optimal value.
  assert.ok(beta.total > opt.total + 0.1 && post.total > beta.total);
  for (let t = 1; t < 1000; t++) assert.ok((post.kl[t] as number) >= (opt.kl[t] as number) - 1e-15);
  // Ho et al.'s L_T is negligible for this schedule, but not zero.
  assert.ok(post.prior > 0 && post.prior < 1e-5);
});

test('strata: K−1 increasing strata of 1…T−1; K = T is every step; draws stay inside', () => {
  for (const [T, K] of [
    [1000, 2],
    [1000, 10],
    [1000, 50],
    [1000, 999],
    [1000, 1000],
    [30, 30],
    [30, 7],
  ] as const) {
    const b = strata(T, K);
    assert.equal(b.length, K);
    assert.equal(b[0], 1);
    assert.equal(b[K - 1], T);
    for (let j = 1; j < K; j++) assert.ok((b[j] as number) > (b[j - 1] as number), `T ${T} K ${K} j ${j}`);
    const t = exampleTimesteps(3, 17, b);
    assert.deepEqual(t, exampleTimesteps(3, 17, b), 'a pure function of (seed, index)');
    t.forEach((tk, k) => assert.ok(tk >= (b[k] as number) && tk < (b[k + 1] as number)));
  }
  assert.deepEqual(Array.from(strata(30, 30)), range(30, 1));
  assert.throws(() => strata(1000, 1), /--timesteps/);
  assert.throws(() => strata(1000, 1001), /--timesteps/);
});

// One data set and the full-bound parts of each variance, shared by the next two tests.
const GAUSS = gaussianModel(8);
const GAUSS_N = 200;
const GAUSS_X0 = GAUSS.data(GAUSS_N);
const fullParts = new Map<ReverseVariance, BoundPart>();
const fullPart = (variance: ReverseVariance): BoundPart => {
  let p = fullParts.get(variance);
  if (!p) {
    p = boundTerms(GAUSS.model, settings(variance, 1000), GAUSS_X0, null, range(GAUSS_N));
    fullParts.set(variance, p);
  }
  return p;
};

test('Monte Carlo full bound through the tensor code hits each closed form within its SE', (tc) => {
  for (const variance of ['posterior', 'beta', 'optimal'] as const) {
    const got = summarize(fullPart(variance), settings(variance, 1000), 1000).natsPerDim;
    const want = gaussianBound(LINEAR.betas, S, variance).total;
    const z = (got.mean - want) / got.se;
    tc.diagnostic(
      `${variance}: ${got.mean.toFixed(4)} ± ${got.se.toFixed(4)} nats/dim, closed form ${want.toFixed(4)}, z ${z.toFixed(2)}`,
    );
    assert.ok(Math.abs(z) < 3, `${variance}: ${got.mean} ± ${got.se} vs ${want}`);
  }
  // Paired: the same draws under two variances, so their difference has a far smaller SE.
  const opt = totals(fullPart('optimal'));
  for (const variance of ['posterior', 'beta'] as const) {
    const diff = estimate(totals(fullPart(variance)).map((v, i) => v - (opt[i] as number)));
    const want =
      gaussianBound(LINEAR.betas, S, variance).total - gaussianBound(LINEAR.betas, S, 'optimal').total;
    const z = (diff.mean - want) / diff.se;
    tc.diagnostic(
      `${variance} − optimal: ${diff.mean.toFixed(4)} ± ${diff.se.toFixed(4)}, closed form ${want.toFixed(4)}, z ${z.toFixed(2)}`,
    );
    assert.ok(Math.abs(z) < 3, `${variance} − optimal: ${diff.mean} ± ${diff.se} vs ${want}`);
  }
});

test('the stratified estimate (K = 50) agrees with the full bound and the closed form within SE', (tc) => {
  const want = gaussianBound(LINEAR.betas, S, 'posterior').total;
  const full = summarize(fullPart('posterior'), settings('posterior', 1000), 1000);
  const o = settings('posterior', 50);
  const strided = summarize(boundTerms(GAUSS.model, o, GAUSS_X0, null, range(GAUSS_N)), o, 1000);
  assert.equal(full.estimator, 'full');
  assert.equal(strided.estimator, 'stratified');
  assert.equal(strided.curve.length, 50);
  const a = full.natsPerDim;
  const b = strided.natsPerDim;
  tc.diagnostic(
    `full ${a.mean.toFixed(4)} ± ${a.se.toFixed(4)}, K = 50 ${b.mean.toFixed(4)} ± ${b.se.toFixed(4)}, closed form ${want.toFixed(4)}`,
  );
  assert.ok(Math.abs(a.mean - b.mean) < 3 * Math.hypot(a.se, b.se));
  assert.ok(Math.abs(b.mean - want) < 3 * b.se);
  // The stratified curve: stratum k's mean term per timestep, near the closed-form terms' mean there.
  const cf = gaussianBound(LINEAR.betas, S, 'posterior');
  for (const c of strided.curve.slice(1, 20)) {
    let m = 0;
    for (let t = c.from; t <= c.to; t++) m += cf.kl[t] as number;
    m /= c.to - c.from + 1;
    assert.ok(
      Math.abs(c.bits * Math.LN2 - m) < 0.3 * m,
      `stratum ${c.from}…${c.to}: ${c.bits * Math.LN2} vs ${m}`,
    );
  }
});

test('per-example terms do not depend on batching or on how the examples are split', () => {
  const { model, data } = gaussianModel(3, scheduleFor('cosine', 40));
  const N = 23;
  const x0 = data(N);
  const o = { ...settings('optimal', 9), batch: 7 };
  const whole = boundTerms(model, o, x0, null, range(N));
  const k = 10;
  const parts = mergeParts([
    boundTerms(model, { ...o, batch: 4 }, x0.subarray(k * 3), null, range(N - k, k)),
    boundTerms(model, { ...o, batch: 3 }, x0.subarray(0, k * 3), null, range(k)),
  ]);
  assert.deepEqual(parts.examples, whole.examples);
  assert.deepEqual(Array.from(parts.stratumSum), Array.from(whole.stratumSum));
  const s = summarize(parts, o, 40);
  assert.equal(s.count, N);
  assert.equal(s.curve[0]?.from, 0);
});

test('learned variance: finite, equal to the direct vlb.ts computation, and no tensor leaks', () => {
  const T = 30;
  const s = scheduleFor('linear', T);
  const D = 2;
  const net = new MLPDenoiser({ dim: D, hidden: 16, layers: 2, timeEmbedDim: 8, numClasses: 0, outputs: 2 });
  const params = net.init(3);
  const model: BoundModel = {
    denoiser: net,
    params,
    schedule: s,
    prediction: 'v',
    learnSigma: true,
    clip: false,
  };
  const N = 6;
  // 8-bit levels of [−1, 1], as images are, so that the discretised decoder applies.
  const x0 = Float32Array.from(uniform(N * D, 9), (u) => Math.round(((u + 1) / 2) * 255) / 127.5 - 1);
  const o: BoundSettings = { variance: 'learned', decoder: 'discretized', timesteps: T, seed: 2, batch: 4 };
  const before = tf.memory().numTensors;
  const part = boundTerms(model, o, x0, null, range(N));
  for (let r = 0; r < 3; r++) boundTerms(model, { ...o, timesteps: 5 }, x0, null, range(N));
  assert.equal(tf.memory().numTensors, before, 'boundTerms leaves no tensors behind');
  for (const [i, e] of part.examples.entries()) {
    assert.ok(Number.isFinite(e.prior + e.kl + e.decoder));
    // Direct: vbTerms (bits) at every t with the same noise, plus the prior term in float64.
    let bits = 0;
    for (let t = 0; t < T; t++) {
      bits += tf.tidy(() => {
        const x = tf.tensor(x0.subarray(i * D, (i + 1) * D), [1, D]);
        const xt = qSample(s, x, [t], tf.tensor(evalNoise(o.seed, i, t, D), [1, D]));
        const out = net.apply(params, xt, tf.tensor1d([t], 'float32'), null);
        const [mean, vRaw] = tf.split(out, 2, 1) as [tf.Tensor, tf.Tensor];
        const x0Hat = denoised('v', s, xt, [t], mean).x0;
        return vbTerms(s, x, xt, [t], x0Hat, modelLogVariance(s, [t], vRaw)).dataSync()[0] as number;
      });
    }
    const ab = s.alphasCumprod[T - 1] as number;
    let prior = 0;
    for (let d = 0; d < D; d++) {
      const v = x0[i * D + d] as number;
      prior += (0.5 * (ab * v * v + (1 - ab) - 1 - Math.log(1 - ab))) / D;
    }
    const got = e.prior + e.kl + e.decoder;
    const want = bits * Math.LN2 + prior;
    assert.ok(Math.abs(got - want) < 1e-4 * Math.max(1, Math.abs(want)), `example ${i}: ${got} vs ${want}`);
  }
  for (const p of params.values()) p.dispose();
});

test('bad settings are refused', () => {
  const { model, data } = gaussianModel(2);
  const x0 = data(4);
  assert.throws(
    () => boundTerms({ ...model, x0Variance: undefined }, settings('optimal', 5), x0, null, range(4)),
    /optimal/,
  );
  assert.throws(() => boundTerms(model, settings('learned', 5), x0, null, range(4)), /learn_sigma/);
  assert.throws(() => boundTerms(model, settings('beta', 5), x0, null, range(3)), /values for 3 examples/);
  assert.throws(() => boundTerms(model, settings('beta', 1), x0, null, range(4)), /--timesteps/);
});

// ---- The command line ----

const BIN = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../bin/ringdiff.js');
const dir = mkdtempSync(path.join(tmpdir(), 'ringdiff-nll-'));
process.on('exit', () => rmSync(dir, { recursive: true, force: true }));

function run(args: string[]) {
  const r = spawnSync(process.execPath, [BIN, ...args], {
    encoding: 'utf8',
    env: { ...process.env, RINGDIFF_BACKEND: 'cpu' },
    timeout: 120000,
  });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

const gaussianYaml = path.join(dir, 'gauss.yaml');
writeFileSync(
  gaussianYaml,
  `model:\n  kind: analytic\n  analytic:\n    weights: [1]\n    means: [[0, 0, 0, 0, 0, 0, 0, 0]]\n    std: ${S}\ndiffusion:\n  schedule: linear\n  timesteps: 1000\n  prediction: eps\n`,
);

interface NllJson {
  count: number;
  timesteps: number;
  estimator: string;
  variance: string;
  decoder: string;
  step: number | null;
  nats_per_dim: { mean: number; se: number };
  bits_per_dim: { mean: number; se: number };
  terms_bits_per_dim: Record<'prior' | 'kl' | 'decoder', { mean: number; se: number }>;
  curve: Array<{ from: number; to: number; bits: number }>;
}

test('eval nll --config (analytic) --json: the closed forms within SE, and the curve file', (tc) => {
  const out = path.join(dir, 'terms.json');
  for (const variance of ['posterior', 'optimal'] as const) {
    const r = run([
      'eval',
      'nll',
      '--config',
      gaussianYaml,
      '--count',
      '300',
      '--timesteps',
      '50',
      '--variance',
      variance,
      '--json',
      '--out',
      out,
      '--seed',
      '4',
    ]);
    assert.equal(r.code, 0, r.stderr);
    const j = JSON.parse(r.stdout) as NllJson;
    assert.deepEqual(JSON.parse(readFileSync(out, 'utf8')), j, '--out holds what --json printed');
    const want = gaussianBound(LINEAR.betas, S, variance).total;
    tc.diagnostic(
      `${variance}: ${j.nats_per_dim.mean.toFixed(4)} ± ${j.nats_per_dim.se.toFixed(4)} nats/dim vs ${want.toFixed(4)}`,
    );
    assert.ok(Math.abs(j.nats_per_dim.mean - want) < 3 * j.nats_per_dim.se);
    assert.equal(j.count, 300);
    assert.equal(j.estimator, 'stratified');
    assert.equal(j.decoder, 'continuous-density');
    assert.equal(j.curve.length, 50);
    const t = j.terms_bits_per_dim;
    assert.ok(Math.abs(t.prior.mean + t.kl.mean + t.decoder.mean - j.bits_per_dim.mean) < 1e-9);
    assert.ok(Math.abs(j.bits_per_dim.mean * Math.LN2 - j.nats_per_dim.mean) < 1e-9);
  }
  const human = run(['eval', 'nll', '--config', gaussianYaml, '--count', '20', '--timesteps', '4']);
  assert.equal(human.code, 0, human.stderr);
  assert.match(human.stdout, /bits\/dim/);
  assert.match(
    human.stdout,
    /variance beta/,
    'default: the sampling variance of the config (diffusion.sigma)',
  );
  assert.match(human.stdout, /continuous Gaussian density/);
});

test('eval nll on a trained toy job: run dir → newest checkpoint, eval/ file, report section', () => {
  const runDir = path.join(dir, 'toy');
  const t = run([
    'train',
    '--set',
    'data.dataset=toy:8gaussians',
    '--set',
    'model.kind=mlp',
    '--set',
    'model.hidden=32',
    '--set',
    'model.layers=2',
    '--set',
    'train.steps=20',
    '--set',
    'train.global_batch=32',
    '--set',
    'sample.count=0',
    '--set',
    'diffusion.timesteps=50',
    '--set',
    'diffusion.learn_sigma=true',
    '--set',
    `run.out_dir=${runDir}`,
  ]);
  assert.equal(t.code, 0, t.stderr);
  const r = run([
    'eval',
    'nll',
    '--checkpoint',
    runDir,
    '--data',
    'toy:8gaussians',
    '--count',
    '40',
    '--timesteps',
    '6',
    '--json',
  ]);
  assert.equal(r.code, 0, r.stderr);
  const j = JSON.parse(r.stdout) as NllJson;
  assert.equal(j.step, 20);
  assert.equal(j.variance, 'learned', 'default: the learned variance of a learn_sigma model');
  assert.ok(Number.isFinite(j.bits_per_dim.mean) && j.bits_per_dim.se > 0);
  const files = readdirSync(path.join(runDir, 'eval'));
  assert.deepEqual(files, ['nll-step20-learned-k6.json']);
  const rep = run(['report', runDir]);
  assert.equal(rep.code, 0, rep.stderr);
  const html = readFileSync(path.join(runDir, 'report.html'), 'utf8');
  assert.match(html, /Where the bits go/);
  assert.match(html, new RegExp(j.bits_per_dim.mean.toFixed(4)));
});

test('eval nll: bad input is one line naming what is wrong, exit code ≠ 0', async () => {
  const spawned: Array<[string[], RegExp]> = [
    [['eval', 'nll'], /give --checkpoint/],
    [['eval', 'nll', '--config', gaussianYaml, '--count', '0'], /--count must be an integer ≥ 1/],
    [
      ['eval', 'nll', '--config', gaussianYaml, '--variance', 'learned'],
      /--variance learned: this model has no learned variance/,
    ],
  ];
  for (const [args, re] of spawned) {
    const r = run(args);
    assert.notEqual(r.code, 0, args.join(' '));
    const lines = r.stderr.trim().split('\n');
    assert.equal(lines.length, 1, `${args.join(' ')}:\n${r.stderr}`);
    assert.match(lines[0] as string, re);
  }
  // The rest in this process (the same function the command runs; a spawn costs a TF.js import).
  const { evalNll } = await import('../src/cli/eval-nll.js');
  const toy = path.join(dir, 'toy');
  const base = { timesteps: 'all', batch: 64, seed: 0, ema: true, progress: false, backend: 'cpu' };
  const cases: Array<[Record<string, unknown>, RegExp]> = [
    [{ config: gaussianYaml, checkpoint: dir }, /give one of them/],
    [{ checkpoint: path.join(dir, 'nowhere') }, /--checkpoint .*nowhere: neither a checkpoint/],
    [{ config: gaussianYaml, timesteps: '1' }, /--timesteps must be an integer in 2…1000/],
    [{ config: gaussianYaml, timesteps: 'some' }, /--timesteps must be an integer or all/],
    [{ config: gaussianYaml, variance: 'large' }, /--variance must be one of beta, posterior/],
    [
      { config: gaussianYaml, data: 'toy:8gaussians' },
      /--data toy:8gaussians: examples of shape \[2\], the model takes \[8\]/,
    ],
    [{ config: gaussianYaml, data: 'toy:nonesuch' }, /--data toy:nonesuch: .*unknown toy dataset/],
    [
      { checkpoint: toy, variance: 'optimal', data: 'toy:8gaussians' },
      /--variance optimal: only an analytic model/,
    ],
    [{ checkpoint: toy }, /--data: the job's dataset toy:8gaussians has no held-out split/],
    [
      { checkpoint: toy, data: 'toy:8gaussians', count: 70000 },
      /--count 70000: toy:8gaussians has only 65536/,
    ],
  ];
  for (const [o, re] of cases) {
    await assert.rejects(
      evalNll({ ...base, ...o } as Parameters<typeof evalNll>[0]),
      (e: Error) => re.test(e.message) && !e.message.includes('\n'),
      JSON.stringify(o),
    );
  }
  assert.deepEqual(
    readdirSync(path.join(toy, 'eval')),
    ['nll-step20-learned-k6.json'],
    'failures write nothing',
  );
});

test('the default held-out split of a job dataset', async () => {
  const { heldOutSpec } = await import('../src/cli/eval-nll.js');
  assert.equal(heldOutSpec('mnist'), 'mnist:test');
  assert.equal(heldOutSpec('mnist:train'), 'mnist:test');
  assert.equal(heldOutSpec('fashion-mnist'), 'fashion-mnist:test');
  assert.equal(heldOutSpec('cifar10:/data/c10'), 'cifar10:/data/c10:test');
  assert.equal(heldOutSpec('cifar10:/data/c10:train'), 'cifar10:/data/c10:test');
  assert.equal(heldOutSpec('cifar10:/data/c10:test'), null);
  assert.equal(heldOutSpec('mnist:test'), null);
  assert.equal(heldOutSpec('toy:8gaussians'), null);
  assert.equal(heldOutSpec('folder:/x'), null);
});
