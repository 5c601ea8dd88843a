/**
 * The analytic denoiser (model.kind: analytic), the σ view of a discrete schedule and the time
 * discretisations: the pieces the sampler oracle tests (samplers.test.ts) stand on.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as tf from '@tensorflow/tfjs';
import { cpuBackend } from './helpers.js';
import { scheduleFor } from '../src/model/diffusion/schedule.js';
import { denoised } from '../src/model/diffusion/prediction.js';
import { scheduleSigmas, sigmaAtTimestep, timestepAtSigma } from '../src/model/diffusion/sigmas.js';
import {
  AnalyticDenoiser,
  mixtureDenoise,
  mixtureMoments,
  mixtureOf,
  sampleMixture,
  type Mixture,
} from '../src/model/nets/analytic.js';
import {
  DISCRETIZATIONS,
  discreteTimesteps,
  karrasSigmas,
  sigmaSteps,
  stridedTimesteps,
  timeGrid,
} from '../src/model/sampling/discretization.js';
import { SAMPLER_NAMES } from '../src/model/sampling/registry.js';
import { DISCRETIZATION_NAMES, SAMPLER_NAMES as CONFIG_SAMPLERS } from '../src/config/schema.js';
import { validateConfig, ConfigError } from '../src/config/load.js';
import { resolveAnalytic, resolveForDataset } from '../src/config/resolve.js';
import { jobDenoiser, summarizeModel } from '../src/model/nets/factory.js';
import { createJob } from '../src/job/job.js';
import { toyDataset } from '../src/data/toy.js';
import { sampleMoments } from '../src/model/sampling/quality.js';

await cpuBackend();

const MIX: Mixture = mixtureOf(
  [0.5, 0.3, 0.2],
  [
    [-2, 0],
    [2, 0],
    [0, 2.5],
  ],
  [[0.3, 0.2], 0.25, [0.2, 0.4]],
);

/** E[x₀ | x₀ + σε = x] of a mixture by Bayes' rule in float64, written independently of the tensor code. */
function bayesMean(m: Mixture, x: number[], sigma: number): number[] {
  const D = x.length;
  const post = m.weights.map((w, k) => {
    let logp = Math.log(w);
    for (let d = 0; d < D; d++) {
      const v = (m.std[k]?.[d] as number) ** 2 + sigma ** 2;
      logp +=
        (-0.5 * ((x[d] as number) - (m.means[k]?.[d] as number)) ** 2) / v - 0.5 * Math.log(2 * Math.PI * v);
    }
    return logp;
  });
  const top = Math.max(...post);
  const r = post.map((l) => Math.exp(l - top));
  const z = r.reduce((a, b) => a + b, 0);
  return x.map((xd, d) =>
    m.weights.reduce((acc, _, k) => {
      const s2 = (m.std[k]?.[d] as number) ** 2;
      const mu = m.means[k]?.[d] as number;
      return acc + ((r[k] as number) / z) * (mu + (s2 / (s2 + sigma ** 2)) * (xd - mu));
    }, 0),
  );
}

test('sampler and discretisation names: the registry, the config enum and the CLI help agree', async () => {
  assert.deepEqual([...SAMPLER_NAMES], [...CONFIG_SAMPLERS]);
  assert.deepEqual(['auto', ...DISCRETIZATIONS], [...DISCRETIZATION_NAMES]);
  const { readFileSync } = await import('node:fs');
  const main = readFileSync(new URL('../../src/cli/main.ts', import.meta.url), 'utf8');
  for (const n of SAMPLER_NAMES) assert.match(main, new RegExp(`SAMPLER_LIST =[^;]*\\b${n}\\b`), n);
});

test('σ view of a discrete schedule: σ_t = √((1−ᾱ)/ᾱ) at whole steps, log-linear between, inverse exact', () => {
  for (const [name, zt] of [
    ['linear', false],
    ['cosine', false],
    ['linear', true],
  ] as const) {
    const s = scheduleFor(name, 1000, zt);
    const sig = scheduleSigmas(s);
    for (let t = 1; t < 1000; t++)
      assert.ok((sig[t] as number) > (sig[t - 1] as number), `${name} increasing at ${t}`);
    for (const t of [0, 1, 17, 500, zt ? 990 : 998]) {
      const a = s.alphasCumprod[t] as number;
      assert.ok(Math.abs((sig[t] as number) / Math.sqrt((1 - a) / a) - 1) < 1e-12);
    }
    // Zero terminal SNR: ᾱ = 0 → σ of ᾱ = min(2⁻²⁴, ᾱ_{T−2}/4): finite, above σ_{T−2}.
    if (zt) {
      const a = Math.min(2 ** -24, (s.alphasCumprod[998] as number) / 4);
      assert.equal(s.alphasCumprod[999], 0);
      assert.ok(Math.abs((sig[999] as number) / Math.sqrt((1 - a) / a) - 1) < 1e-12);
    }
    for (const t of [0, 0.25, 3.5, 123.456, 998.9, 999]) {
      const back = timestepAtSigma(sig, sigmaAtTimestep(sig, t));
      assert.ok(Math.abs(back - t) < 1e-9, `${name} t=${t} → ${back}`);
    }
    // log σ is linear between two steps: halfway is the geometric mean.
    const mid = sigmaAtTimestep(sig, 10.5);
    assert.ok(Math.abs(mid / Math.sqrt((sig[10] as number) * (sig[11] as number)) - 1) < 1e-12);
    assert.equal(timestepAtSigma(sig, 1e-9), 0, 'clamped below σ_min');
    assert.equal(timestepAtSigma(sig, 1e9), 999, 'clamped above σ_max');
  }
});

test('discretisations: uniform = strided, trailing = Lin et al. Table 2, karras ρ-spacing, quadratic', () => {
  const s = scheduleFor('linear', 1000);
  const sig = scheduleSigmas(s);
  for (const K of [1, 7, 10, 50, 1000])
    assert.deepEqual(discreteTimesteps('uniform', K, 1000, sig, 7), stridedTimesteps(1000, K));
  // Lin et al. 2023, Table 2 (trailing, T = 1000, 10 steps): 999, 899, …, 99.
  assert.deepEqual(
    discreteTimesteps('trailing', 10, 1000, sig, 7),
    [999, 899, 799, 699, 599, 499, 399, 299, 199, 99],
  );
  const quad = discreteTimesteps('quadratic', 10, 1000, sig, 7);
  assert.deepEqual(quad, [999, 789, 604, 444, 308, 197, 111, 49, 12, 0]);
  // Rounding can merge levels: 100 quadratic levels on 1000 steps visit fewer distinct steps.
  const q100 = discreteTimesteps('quadratic', 100, 1000, sig, 7);
  assert.ok(q100.length < 100 && q100.length > 80, `${q100.length}`);
  const kar = karrasSigmas(5, 0.002, 80, 7);
  assert.ok(Math.abs((kar[0] as number) - 80) < 1e-9 && Math.abs((kar[4] as number) - 0.002) < 1e-12);
  const roots = [...kar].map((v) => v ** (1 / 7));
  for (let i = 1; i < 4; i++)
    assert.ok(
      Math.abs((roots[i + 1] as number) - 2 * (roots[i] as number) + (roots[i - 1] as number)) < 1e-12,
    );
  const range = {
    sigmaMin: sig[0] as number,
    sigmaMax: sig[999] as number,
    timesteps: 1000,
    sigmaAt: (u: number) => sigmaAtTimestep(sig, u * 999),
  };
  for (const d of DISCRETIZATIONS) {
    const g = sigmaSteps(d, 12, range, 7);
    assert.equal(g.length, 13);
    assert.equal(g[12], 0, `${d} ends at σ = 0`);
    assert.ok(Math.abs((g[0] as number) / range.sigmaMax - 1) < 1e-12, `${d} starts at σ_max`);
    for (let i = 1; i < 13; i++) assert.ok((g[i] as number) < (g[i - 1] as number), `${d} decreasing`);
    // Every grid but trailing ends its last model step at σ_min; trailing stops 1/N early.
    if (d === 'trailing') assert.ok((g[11] as number) > range.sigmaMin * 2);
    else assert.ok(Math.abs((g[11] as number) / range.sigmaMin - 1) < 1e-9, `${d} visits σ_min`);
  }
  assert.deepEqual([...timeGrid('trailing', 4, null)], [1, 0.75, 0.5, 0.25]);
  assert.throws(() => sigmaSteps('karras', 0, range, 7), /sample\.steps must be an integer ≥ 1/);
});

test('analytic denoiser: E[x₀ | x] of a mixture equals Bayes’ rule, at every σ, and conditions on labels', () => {
  const pts = [
    [-2.1, 0.3],
    [0.4, 1.1],
    [1.9, -0.2],
    [0, 0],
    [5, 5],
  ];
  for (const sigma of [0, 0.01, 0.3, 1, 5, 157]) {
    const x = tf.tensor2d(pts);
    const d = mixtureDenoise(MIX, x, new Float64Array(pts.length).fill(sigma), null);
    const got = d.arraySync() as number[][];
    pts.forEach((p, i) => {
      const want = bayesMean(MIX, p, sigma);
      want.forEach((w, j) =>
        assert.ok(
          Math.abs((got[i]?.[j] as number) - w) < 2e-5 * (1 + Math.abs(w)),
          `σ ${sigma} point ${i}: ${got[i]?.[j]} vs ${w}`,
        ),
      );
    });
    tf.dispose([x, d]);
  }
  // Label k < K: the posterior mean of component k alone; the null class K: the mixture's.
  const x = tf.tensor2d([
    [0.4, 1.1],
    [0.4, 1.1],
  ]);
  const d = mixtureDenoise(MIX, x, [1, 1], Int32Array.of(2, 3)).arraySync() as number[][];
  const only2 = bayesMean(mixtureOf([1], [[0, 2.5]], [[0.2, 0.4]]), [0.4, 1.1], 1);
  const mixed = bayesMean(MIX, [0.4, 1.1], 1);
  for (let j = 0; j < 2; j++) {
    assert.ok(Math.abs((d[0]?.[j] as number) - (only2[j] as number)) < 1e-5);
    assert.ok(Math.abs((d[1]?.[j] as number) - (mixed[j] as number)) < 1e-5);
  }
  x.dispose();
});

test('analytic denoiser as a network: its ε, x₀ and v outputs all denoise to the same x̂₀', () => {
  const s = scheduleFor('cosine', 200);
  const xt = tf.tensor2d([
    [0.3, -1.2],
    [2.0, 0.5],
    [-0.7, 0.9],
  ]);
  // Not the last step: there ᾱ ≈ 1e-9 and x̂₀ from ε̂ cancels catastrophically in float32.
  const t = [0, 57, 150];
  const want = tf.tidy(() => {
    const sig = scheduleSigmas(s);
    const a = tf.tensor2d(t.map((ti) => [Math.sqrt(s.alphasCumprod[ti] as number)]));
    return mixtureDenoise(
      MIX,
      tf.div(xt, a),
      t.map((ti) => sig[ti] as number),
      null,
    );
  });
  for (const pred of ['eps', 'x0', 'v'] as const) {
    const m = new AnalyticDenoiser(MIX, s, pred);
    const out = m.apply(new Map(), xt, tf.tensor1d(t, 'float32'), null);
    const { x0, eps } = denoised(pred, s, xt, t, out);
    const diff = tf.max(tf.abs(tf.sub(x0, want))).dataSync()[0] as number;
    assert.ok(diff < 1e-4, `${pred}: max |Δx̂₀| ${diff}`);
    tf.dispose([out, x0, eps]);
  }
  tf.dispose([xt, want]);
});

test('exact mixture draws have the mixture’s moments (mean, covariance) within their sampling error', () => {
  const n = 20000;
  const x = sampleMixture(MIX, n, 3);
  const got = sampleMoments(x, 2);
  const want = mixtureMoments(MIX);
  for (let d = 0; d < 2; d++) {
    const v = want.cov[d]?.[d] as number;
    assert.ok(
      Math.abs((got.mean[d] as number) - (want.mean[d] as number)) < 4 * Math.sqrt(v / n),
      `mean ${d}`,
    );
  }
  assert.deepEqual(x, sampleMixture(MIX, n, 3), 'a pure function of (seed, index)');
});

test('config: model.kind analytic with its keys; bad mixtures are one line naming the key', () => {
  const ok = validateConfig(
    { model: { kind: 'analytic', analytic: { weights: [0.25, 0.75], means: [[0], [1]], std: [0.1, 0.2] } } },
    'x.yaml',
  );
  const r = resolveAnalytic(ok);
  assert.equal(r.model.num_classes, 0);
  const m = jobDenoiser(r, [1]);
  assert.ok(m instanceof AnalyticDenoiser);
  assert.equal(summarizeModel(m).params, 0, 'nothing to train');
  assert.equal(
    jobDenoiser(resolveAnalytic(validateConfig({ model: { kind: 'analytic' } }, 'd')), [2]).dataShape[0],
    2,
    'default: the 8-Gaussian mixture in 2-D',
  );
  const bad: [unknown, RegExp][] = [
    [
      { weights: [0.5, 0.4], means: [[0], [1]] },
      /x\.yaml: model\.analytic\.weights: must sum to 1, got 0\.9/,
    ],
    [{ weights: [1], means: [[0], [1]] }, /model\.analytic\.weights: has 1 weights for 2 means/],
    [
      { weights: [0.5, 0.5], means: [[0, 1], [1]] },
      /model\.analytic\.means\.1: has 1 coordinates, means\.0 has 2/,
    ],
    [
      { weights: [0.5, 0.5], means: [[0], [1]], std: [0.1] },
      /model\.analytic\.std: has 1 entries for 2 components/,
    ],
    [
      { weights: [0.5, 0.5], means: [[0], [1]], std: [[0.1, 0.2], 0.3] },
      /model\.analytic\.std\.0: has 2 values for data of dimension 1/,
    ],
    [{ weights: [0.5, 0.5], means: [[0], [1]], std: -1 }, /model\.analytic\.std/],
  ];
  for (const [analytic, re] of bad) {
    assert.throws(
      () => validateConfig({ model: { kind: 'analytic', analytic } }, 'x.yaml'),
      (e: Error) => {
        assert.ok(e instanceof ConfigError);
        assert.equal(e.message.split('\n').length, 1);
        assert.match(e.message, re);
        return true;
      },
    );
  }
  assert.throws(
    () => resolveAnalytic(validateConfig({ model: { kind: 'analytic', num_classes: 3 } }, 'x')),
    /model\.num_classes: 3, but the analytic mixture has 8 components/,
  );
  assert.throws(
    () =>
      jobDenoiser(
        resolveAnalytic(
          validateConfig({ model: { kind: 'analytic' }, diffusion: { learn_sigma: true } }, 'x'),
        ),
        [2],
      ),
    /diffusion\.learn_sigma: model\.kind analytic has no learned variance/,
  );
  const cfg = resolveForDataset(validateConfig({ model: { kind: 'analytic' } }, 'x'), { numClasses: 8 });
  assert.throws(
    () => createJob(cfg, toyDataset('8gaussians', 64, 0)),
    /model\.kind: analytic is exact and has nothing to train/,
  );
});

test('config: every sampler name is accepted; settings that make no sense for the sampler name the key', () => {
  for (const sampler of SAMPLER_NAMES)
    assert.equal(validateConfig({ sample: { sampler } }, 'x').sample.sampler, sampler);
  const d = validateConfig({}, 'x').sample;
  assert.deepEqual(
    [
      d.sampler,
      d.steps,
      d.eta,
      d.guidance,
      d.discretization,
      d.rho,
      d.churn,
      d.snr,
      d.corrector_steps,
      d.tolerance,
    ],
    ['ddim', 100, 1, 2, 'auto', 7, 0, 0.16, 1, 1e-5],
    'defaults of existing keys unchanged, new ones as documented',
  );
  const bad: [unknown, RegExp][] = [
    [{ sampler: 'heun' }, /sample\.sampler/],
    [
      { sampler: 'ddpm', discretization: 'karras' },
      /sample\.discretization: ddpm has no time grid to choose/,
    ],
    [{ sampler: 'ode-rk45', discretization: 'uniform' }, /sample\.discretization: ode-rk45 has no time grid/],
    [{ sampler: 'ode-euler', churn: 1 }, /sample\.churn: only edm-heun churns/],
    [{ steps: 0 }, /sample\.steps/],
    [{ discretization: 'cosine' }, /sample\.discretization/],
    [{ tolerance: 1 }, /sample\.tolerance/],
    [{ corrector_steps: -1 }, /sample\.corrector_steps/],
  ];
  for (const [sample, re] of bad) assert.throws(() => validateConfig({ sample }, 'x'), re);
});
