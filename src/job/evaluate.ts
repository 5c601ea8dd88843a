/**
 * Evaluation during training (config `eval.*`): sample-quality metrics of samples from the EMA
 * weights (FID/KID/IS/precision/recall on the `mnistcnn` features) and the bits/dim bound of
 * held-out examples, computed by every rank of the ring on its share of the examples.
 *
 * Each rank takes whole index blocks of `evalPlan` (src/eval/plan.ts), samples them (sample i's
 * noise and class are functions of (eval.seed, i)), extracts their features and the per-example
 * bound terms, and one all-gather brings the parts to every rank: only features, logits and
 * per-example terms travel, never images or weights. Rank 0 computes the metrics on the
 * concatenation, which is in index order and does not depend on the world size, so 1 and N workers
 * give the same numbers. A world of one (`ringdiff train`) passes a gather that returns its own part.
 */
import type { ResolvedConfig } from '../config/resolve.js';
import type { Dataset } from '../data/dataset.js';
import type { RawExample, Source } from '../data/preprocess.js';
import { heldOutSpec, openDataset } from '../data/spec.js';
import { loadFeatureNet } from '../eval/features.js';
import { DEFAULT_METRIC_OPTIONS, qualityMetrics } from '../eval/metrics.js';
import type { FeatureNet } from '../eval/net.js';
import { boundTerms, estimate, type BoundModel, type BoundSettings } from '../eval/nll.js';
import { evalPlan } from '../eval/plan.js';
import {
  cacheDir,
  cachePath,
  extractFeatures,
  readCachedReference,
  spreadIndices,
  writeCachedReference,
  type FeatureSet,
} from '../eval/reference.js';
import { statsOf } from '../eval/stats.js';
import { processOf } from '../model/diffusion/continuous.js';
import type { Denoiser } from '../model/nets/denoiser.js';
import type { Params } from '../model/params.js';
import type { Schedule } from '../model/diffusion/schedule.js';
import { configSettings, sampleSet } from '../model/sampling/sample.js';

/** One all-gather of a float32 part per rank, resolving with the parts in rank order. */
export type Gather = (local: Float32Array) => Promise<Float32Array[]>;

/** What an evaluation needs of a job: its config, network, EMA weights and schedule. */
export interface EvalModel {
  cfg: ResolvedConfig;
  model: Denoiser;
  ema: Params;
  schedule: Schedule;
}

/** Values of the per-example bound terms sent per example (prior, decoder, kl as float64). */
const NLL_VALUES = 3;

const tick = (): Promise<void> => new Promise((r) => setImmediate(r));

/** A Dataset as a Source of model-space examples (float32 in [−1, 1], the job's preprocessing). */
function datasetSource(ds: Dataset, name: string): Source {
  return {
    name,
    size: ds.size,
    shape: ds.shape,
    shapeVaries: false,
    dtype: 'float32',
    numClasses: ds.numClasses,
    read: (i) => {
      const e = ds.get(i);
      return { data: e.x, shape: ds.shape, label: e.label };
    },
    label: (i) => ds.get(i).label,
    close: () => undefined,
  };
}

/**
 * The evaluation state of one process: the feature network (every rank), the reference features
 * (rank 0, on first use, cached on disk) and the held-out examples (on first use).
 */
export class Evaluation {
  private readonly net: FeatureNet | null;
  private readonly refSpec: string | null;
  private ref: FeatureSet | null = null;
  private heldOut: Dataset | null = null;

  /** Loads what `cfg.eval` names; a bad key is a one-line error naming it. */
  constructor(
    private readonly cfg: ResolvedConfig,
    dataShape: readonly number[],
  ) {
    const ev = cfg.eval;
    this.refSpec = ev.ref !== '' ? ev.ref : heldOutSpec(cfg.data.dataset);
    if (this.refSpec === null)
      throw new Error(
        `eval.ref: the dataset ${cfg.data.dataset} has no test split to default to; give eval.ref <spec>`,
      );
    if (ev.net !== '' && ev.count > 0) {
      if (dataShape.length !== 3)
        throw new Error(`eval.net: the job's examples are [${dataShape.join(', ')}], not images`);
      try {
        this.net = loadFeatureNet(ev.net);
      } catch (e) {
        throw new Error(`eval.net: ${(e as Error).message}`);
      }
    } else this.net = null;
    // Open the reference now, so that a bad eval.ref or count fails before the first step.
    const ds = this.held(dataShape);
    const refCount = ev.ref_count > 0 ? ev.ref_count : ev.count;
    if (this.net && refCount > ds.size)
      throw new Error(`eval.ref_count ${refCount}: ${this.refSpec} has only ${ds.size} examples`);
    if (ev.nll_count > ds.size)
      throw new Error(`eval.nll_count ${ev.nll_count}: ${this.refSpec} has only ${ds.size} examples`);
  }

  /** Whether step `step` of a job of `total` steps is evaluated: every eval.every steps and the last. */
  due(step: number, total: number): boolean {
    const every = this.cfg.eval.every;
    return every > 0 && (step % every === 0 || step === total);
  }

  private held(dataShape: readonly number[]): Dataset {
    if (this.heldOut) return this.heldOut;
    let ds: Dataset;
    try {
      ds = openDataset({ ...this.cfg.data, dataset: this.refSpec as string });
    } catch (e) {
      throw new Error(`eval.ref ${this.refSpec}: ${(e as Error).message}`);
    }
    if (ds.shape.join(',') !== dataShape.join(','))
      throw new Error(
        `eval.ref ${this.refSpec}: examples of shape [${ds.shape.join(', ')}], the model takes [${dataShape.join(', ')}]`,
      );
    this.heldOut = ds;
    return ds;
  }

  /** The reference features (rank 0 only): eval.ref_count examples, spread, through the job's preprocessing. */
  private async reference(net: FeatureNet, dataShape: readonly number[]): Promise<FeatureSet> {
    if (this.ref) return this.ref;
    const ev = this.cfg.eval;
    const ds = this.held(dataShape);
    const count = ev.ref_count > 0 ? ev.ref_count : ev.count;
    if (count > ds.size)
      throw new Error(`eval.ref_count ${count}: ${this.refSpec} has only ${ds.size} examples`);
    // The features depend on the job's preprocessing of the reference (image size, channels), too.
    const { dataset: _, ...pipeline } = this.cfg.data;
    const key = { spec: this.refSpec as string, count, net: `${net.id} via ${JSON.stringify(pipeline)}` };
    const file = cachePath(cacheDir(), key);
    const hit = readCachedReference(file, key, net.dim, net.classes);
    if (hit) return (this.ref = hit);
    const set = extractFeatures(
      net,
      datasetSource(ds, this.refSpec as string),
      spreadIndices(ds.size, count),
      ev.block,
    );
    await writeCachedReference(file, key, set);
    return (this.ref = set);
  }

  /**
   * This rank's part: features [n, D], logits [n, K] of its samples and the bound terms of its
   * held-out examples, as one float32 array [ok, n, m, features, logits, terms as float64 bytes];
   * a local failure sends ok = 0 so that the ring stays in step and rank 0 skips the evaluation.
   */
  private async localPart(m: EvalModel, rank: number, world: number): Promise<Float32Array> {
    const ev = this.cfg.eval;
    const net = this.net;
    const shape = m.model.dataShape;
    const size = shape.reduce((a, b) => a * b, 1);
    const parts: Float32Array[] = [];
    let n = 0;
    if (net) {
      const feats: Float32Array[] = [];
      const logits: Float32Array[] = [];
      const sc = this.cfg.sample;
      const images = shape.length === 3;
      const settings = configSettings(
        { ...sc, sampler: ev.sampler ?? sc.sampler, steps: ev.steps ?? sc.steps },
        m.schedule.T,
      );
      for (const [from, to] of evalPlan(ev.count, ev.block, world)[rank]?.blocks ?? []) {
        const { samples } = sampleSet(m.model, m.ema, m.schedule, {
          ...settings,
          count: to - from,
          first: from,
          sampler: ev.sampler ?? sc.sampler,
          guidance: m.model.numClasses > 0 ? sc.guidance : 0,
          classLabel: null,
          seed: ev.seed,
          sigma: this.cfg.diffusion.sigma,
          prediction: this.cfg.diffusion.prediction,
          learnSigma: this.cfg.diffusion.learn_sigma,
          process: processOf(this.cfg.diffusion),
          clip: images && this.cfg.diffusion.clip_denoised,
          chunk: ev.block,
        });
        await tick(); // heartbeats and the plan stream run between blocks
        const batch: RawExample[] = Array.from({ length: to - from }, (_, i) => ({
          data: samples.subarray(i * size, (i + 1) * size),
          shape,
          label: -1,
        }));
        const r = net.extract(batch);
        feats.push(r.features);
        if (r.logits) logits.push(r.logits);
        n += to - from;
        await tick();
      }
      parts.push(...feats, ...logits);
    }
    let mNll = 0;
    if (ev.nll_count > 0) {
      const ds = this.held(shape);
      if (ev.nll_count > ds.size)
        throw new Error(`eval.nll_count ${ev.nll_count}: ${this.refSpec} has only ${ds.size} examples`);
      const d = this.cfg.diffusion;
      const K = m.model.numClasses;
      const bm: BoundModel = {
        denoiser: m.model,
        params: m.ema,
        schedule: m.schedule,
        prediction: d.prediction,
        learnSigma: d.learn_sigma,
        clip: shape.length === 3 && d.clip_denoised,
      };
      const o: BoundSettings = {
        variance: d.learn_sigma ? 'learned' : d.sigma,
        decoder: shape.length === 3 ? 'discretized' : 'continuous',
        timesteps: ev.nll_timesteps,
        seed: ev.seed,
        batch: ev.block,
      };
      for (const [from, to] of evalPlan(ev.nll_count, ev.block, world)[rank]?.blocks ?? []) {
        const x0 = new Float32Array((to - from) * size);
        // As eval nll: with class dropout the null class (the unconditional bound), else the true label.
        const labels = K > 0 ? new Int32Array(to - from) : null;
        for (let j = from; j < to; j++) {
          const e = ds.get(Math.floor((j * ds.size) / ev.nll_count));
          x0.set(e.x, (j - from) * size);
          if (labels) labels[j - from] = this.cfg.model.class_dropout > 0 || e.label < 0 ? K : e.label;
        }
        const indices = Array.from({ length: to - from }, (_, i) => from + i);
        const part = boundTerms(bm, o, x0, labels, indices);
        const terms = new Float64Array(part.examples.length * NLL_VALUES);
        part.examples.forEach((e, i) => terms.set([e.prior, e.decoder, e.kl], i * NLL_VALUES));
        parts.push(new Float32Array(terms.buffer));
        mNll += to - from;
        await tick();
      }
    }
    const total = 3 + parts.reduce((a, p) => a + p.length, 0);
    const out = new Float32Array(total);
    out.set([1, n, mNll]);
    let at = 3;
    for (const p of parts) {
      out.set(p, at);
      at += p.length;
    }
    return out;
  }

  /**
   * One evaluation round of every rank at once; resolves on rank 0 with the metrics (name → value),
   * on the others with null, and on rank 0 with null when a rank failed (logged by `warn`).
   * Rejects only when the gather itself fails (the ring is broken).
   */
  async run(
    m: EvalModel,
    rank: number,
    world: number,
    gather: Gather,
    warn: (msg: string) => void,
  ): Promise<Record<string, number> | null> {
    let local: Float32Array;
    try {
      local = await this.localPart(m, rank, world);
    } catch (e) {
      warn(`evaluation: ${(e as Error).message}`);
      local = new Float32Array([0, 0, 0]);
    }
    const all = await gather(local);
    if (rank !== 0) return null;
    const failed = all.findIndex((p) => p[0] !== 1);
    if (failed >= 0) {
      warn(`evaluation skipped: rank ${failed} could not compute its part`);
      return null;
    }
    try {
      return await this.metrics(m, all);
    } catch (e) {
      warn(`evaluation skipped: ${(e as Error).message}`);
      return null;
    }
  }

  /** The metrics of the gathered parts (rank order = index order). */
  private async metrics(m: EvalModel, all: Float32Array[]): Promise<Record<string, number>> {
    const ev = this.cfg.eval;
    const out: Record<string, number> = {};
    const net = this.net;
    if (net) {
      const D = net.dim;
      const K = net.classes;
      const n = all.reduce((a, p) => a + (p[1] as number), 0);
      const features = new Float32Array(n * D);
      const logits = K > 0 ? new Float32Array(n * K) : null;
      let row = 0;
      for (const p of all) {
        const k = p[1] as number;
        features.set(p.subarray(3, 3 + k * D), row * D);
        if (logits) logits.set(p.subarray(3 + k * D, 3 + k * D + k * K), row * K);
        row += k;
      }
      // Statistics of the whole set in index order: the same sums for any split.
      const gen: FeatureSet = { features, logits, stats: statsOf(features, D) };
      const ref = await this.reference(net, m.model.dataShape);
      Object.assign(
        out,
        qualityMetrics(net.name, K, gen, ref, {
          ...DEFAULT_METRIC_OPTIONS,
          seed: ev.seed,
          kidSubsetSize: Math.min(DEFAULT_METRIC_OPTIONS.kidSubsetSize, n, ref.stats.count),
        }),
      );
    }
    if (ev.nll_count > 0) {
      const total: number[] = [];
      for (const p of all) {
        const k = p[1] as number;
        const mm = p[2] as number;
        const skip = 3 + k * (net ? net.dim + net.classes : 0);
        const bytes = p.slice(skip, skip + mm * NLL_VALUES * 2);
        const terms = new Float64Array(bytes.buffer, bytes.byteOffset, mm * NLL_VALUES);
        for (let i = 0; i < mm; i++)
          total.push(
            (terms[i * NLL_VALUES] as number) +
              (terms[i * NLL_VALUES + 2] as number) +
              (terms[i * NLL_VALUES + 1] as number),
          );
      }
      const e = estimate(total, 1 / Math.LN2);
      out.nll_bpd = e.mean;
      out.nll_bpd_se = e.se;
    }
    // A metric that is not a number (an SE of one example, a degenerate covariance) is left out:
    // the coordinator refuses non-finite values.
    for (const [k, v] of Object.entries(out)) if (!Number.isFinite(v)) delete out[k];
    return out;
  }

  dispose(): void {
    // The reference set and the parts are host arrays: the network is all that holds tensors.
    this.net?.dispose();
  }
}
