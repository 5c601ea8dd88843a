/**
 * The built-in feature network `mnistcnn`: a small CNN classifier that ringdiff trains itself on a
 * labelled dataset (`ringdiff eval train-features`), so that sample-quality metrics work without
 * the InceptionV3 weights. Its penultimate activations (128 ReLU units) are the features of
 * FID/KID/precision/recall, its logits feed the Inception Score. Numbers from it are comparable
 * only with numbers from the same weights file (its hash is part of every cache key), never with
 * published FIDs.
 *
 * Input: any image, brought to 32×32 grey in [−1, 1] by the trainer's own preprocessing (pad
 * MNIST's 28² centred, area-shrink larger images, RGB → luma).
 */
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import * as tf from '@tensorflow/tfjs';
import type { Dataset } from '../data/dataset.js';
import { preprocessImage, type RawExample } from '../data/preprocess.js';
import {
  conv2d,
  conv2dSpecs,
  initParams,
  linear,
  linearSpecs,
  type ParamSpec,
} from '../model/nets/layers.js';
import { disposeParams, paramsToHost, type Params } from '../model/params.js';
import { epochPermutation } from '../data/batches.js';
import { decodeSafetensors, encodeSafetensors, type TensorLike } from '../model/safetensors.js';
import { writeFileAtomic } from '../util/atomic.js';
import type { Extracted, FeatureNet } from './net.js';

/** Name of the built-in network (metrics: fid_mnistcnn, …). */
export const MNISTCNN = 'mnistcnn';
/** Architecture tag stored in the weights file; bump it when the layers change. */
const ARCH =
  'mnistcnn-v1: 32x32x1 → conv3 32 → conv3/2 64 → conv3/2 128 → conv3/2 128 → mean → fc 128 (features) → fc K';
const SIZE = 32;
const WIDTHS = [32, 64, 128, 128] as const;
/** Feature dimension of mnistcnn. */
export const MNISTCNN_DIM = 128;

/** Parameter specs of mnistcnn with `classes` outputs. */
export function mnistCnnSpecs(classes: number): ParamSpec[] {
  const specs: ParamSpec[] = [];
  let cin = 1;
  WIDTHS.forEach((w, i) => {
    specs.push(...conv2dSpecs(`conv${i}`, 3, cin, w));
    cin = w;
  });
  specs.push(...linearSpecs('fc', cin, MNISTCNN_DIM), ...linearSpecs('out', MNISTCNN_DIM, classes));
  return specs;
}

/** x [B, 32, 32, 1] in [−1, 1] → features [B, 128] and logits [B, K]. */
export function mnistCnnForward(p: Params, x: tf.Tensor4D): { features: tf.Tensor2D; logits: tf.Tensor2D } {
  let h = x;
  WIDTHS.forEach((_, i) => {
    h = tf.relu(conv2d(p, `conv${i}`, h, i === 0 ? 1 : 2));
  });
  const pooled = tf.mean(h, [1, 2]) as tf.Tensor2D;
  const features = tf.relu(linear(p, 'fc', pooled));
  return { features, logits: linear(p, 'out', features) };
}

/** One example brought to the network's input: [32, 32, 1] in [−1, 1]. */
export function mnistCnnInput(ex: RawExample): Float32Array {
  if (ex.shape.length !== 3)
    throw new Error(`mnistcnn: an image has shape [H, W, C], got [${ex.shape.join(', ')}]`);
  return preprocessImage(ex.data, ex.shape, { imageSize: SIZE, channels: 1 });
}

/** Options of `trainFeatureNet`. */
export interface TrainFeatureOptions {
  epochs: number;
  /** Total optimiser steps; overrides epochs when given. */
  steps?: number;
  batch: number;
  lr: number;
  seed: number;
  /** Share of the examples held out to report accuracy (not trained on). */
  valFraction: number;
  /** Called after every step with its loss (nats). */
  onStep?: (step: number, loss: number) => void;
}

/** A trained mnistcnn: parameters, per-step losses and the held-out accuracy (NaN if none held out). */
export interface TrainedFeatureNet {
  params: Params;
  classes: number;
  losses: number[];
  valAccuracy: number;
  trainCount: number;
  valCount: number;
}

/** Trains mnistcnn on a labelled image dataset whose examples are [32, 32, 1] (Adam, cross-entropy). */
export async function trainFeatureNet(ds: Dataset, o: TrainFeatureOptions): Promise<TrainedFeatureNet> {
  const classes = ds.numClasses;
  if (classes < 2) throw new Error(`${ds.spec}: has no class labels; the feature network is a classifier`);
  if (ds.shape.join(',') !== `${SIZE},${SIZE},1`)
    throw new Error(
      `${ds.spec}: examples are [${ds.shape.join(', ')}], the feature network needs [32, 32, 1]`,
    );
  const order = epochPermutation(ds.size, o.seed, 0xffff);
  const valCount = Math.floor(ds.size * o.valFraction);
  const valIdx = order.slice(0, valCount);
  const trainIdx = order.slice(valCount);
  if (trainIdx.length < o.batch)
    throw new Error(`${ds.spec}: ${trainIdx.length} training examples, fewer than one batch of ${o.batch}`);
  const px = SIZE * SIZE;
  const load = (idx: Int32Array) => {
    const x = new Float32Array(idx.length * px);
    const y = new Int32Array(idx.length);
    idx.forEach((i, k) => {
      const ex = ds.get(i);
      x.set(ex.x, k * px);
      y[k] = ex.label;
    });
    return { x, y };
  };
  const init = initParams(o.seed, mnistCnnSpecs(classes));
  const vars = new Map<string, tf.Variable>();
  for (const [name, t] of init) vars.set(name, tf.variable(t, true, `mnistcnn/${name}`));
  disposeParams(init);
  const params: Params = new Map(vars);
  const opt = tf.train.adam(o.lr);
  const perEpoch = Math.floor(trainIdx.length / o.batch);
  const total = o.steps ?? o.epochs * perEpoch;
  const losses: number[] = [];
  let perm = trainIdx;
  for (let step = 0; step < total; step++) {
    const e = Math.floor(step / perEpoch);
    const b = step % perEpoch;
    if (b === 0) {
      const p = epochPermutation(trainIdx.length, o.seed, e);
      perm = Int32Array.from(p, (i) => trainIdx[i] as number);
    }
    const { x, y } = load(perm.subarray(b * o.batch, (b + 1) * o.batch));
    const lossT = tf.tidy(() => {
      const xs = tf.tensor4d(x, [o.batch, SIZE, SIZE, 1]);
      const ys = tf.oneHot(tf.tensor1d(y, 'int32'), classes);
      const l = opt.minimize(
        () => tf.losses.softmaxCrossEntropy(ys, mnistCnnForward(params, xs).logits) as tf.Scalar,
        true,
        [...vars.values()],
      );
      if (l === null) throw new Error('mnistcnn: the optimiser returned no loss');
      return l;
    });
    const loss = (await lossT.data())[0] as number;
    lossT.dispose();
    losses.push(loss);
    o.onStep?.(step, loss);
  }
  opt.dispose();
  let correct = 0;
  for (let v0 = 0; v0 < valCount; v0 += 256) {
    const { x, y } = load(valIdx.subarray(v0, v0 + 256));
    const predT = tf.tidy(() =>
      tf.argMax(mnistCnnForward(params, tf.tensor4d(x, [y.length, SIZE, SIZE, 1])).logits, 1),
    );
    const pred = predT.dataSync();
    predT.dispose();
    pred.forEach((p, k) => {
      if (p === y[k]) correct++;
    });
  }
  return {
    params,
    classes,
    losses,
    valAccuracy: valCount > 0 ? correct / valCount : NaN,
    trainCount: trainIdx.length,
    valCount,
  };
}

/** Writes a trained mnistcnn as safetensors with metadata naming its dataset and architecture. */
export async function saveFeatureNet(
  file: string,
  t: TrainedFeatureNet,
  meta: Record<string, string>,
): Promise<void> {
  const host = await paramsToHost(t.params);
  const tensors = new Map<string, TensorLike>(host);
  const metadata = {
    ...meta,
    ringdiff_feature_net: MNISTCNN,
    arch: ARCH,
    classes: String(t.classes),
    image_size: String(SIZE),
    channels: '1',
  };
  await writeFileAtomic(file, encodeSafetensors(tensors, metadata));
}

/** Metadata of a feature-net weights file (dataset, architecture, accuracy, …). */
export type FeatureNetMeta = Record<string, string>;

/** Loads mnistcnn weights written by `saveFeatureNet`; errors are one line naming the file and field. */
export function loadFeatureNet(file: string): FeatureNet & { meta: FeatureNetMeta } {
  let buf: Buffer;
  try {
    buf = readFileSync(file);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    throw new Error(
      `${file}: cannot read the feature network weights (${code === 'ENOENT' ? 'no such file' : (code ?? (e as Error).message)})`,
    );
  }
  const { tensors, metadata } = decodeSafetensors(buf, file);
  const meta = metadata ?? {};
  if (meta.ringdiff_feature_net !== MNISTCNN)
    throw new Error(
      `${file}: metadata 'ringdiff_feature_net' is ${JSON.stringify(meta.ringdiff_feature_net ?? null)}, not '${MNISTCNN}' (write it with ringdiff eval train-features)`,
    );
  if (meta.arch !== ARCH)
    throw new Error(
      `${file}: metadata 'arch' is ${JSON.stringify(meta.arch ?? null)}, this ringdiff builds '${ARCH}'`,
    );
  const classes = Number(meta.classes);
  if (!Number.isInteger(classes) || classes < 2)
    throw new Error(
      `${file}: metadata 'classes' is ${JSON.stringify(meta.classes ?? null)}, not an integer ≥ 2`,
    );
  const params: Params = new Map();
  try {
    for (const spec of mnistCnnSpecs(classes)) {
      const t = tensors.get(spec.name);
      if (!t) throw new Error(`${file}: tensor '${spec.name}' is missing`);
      if (t.dtype !== 'F32' || t.shape.join(',') !== spec.shape.join(','))
        throw new Error(
          `${file}: tensor '${spec.name}' is ${t.dtype} [${t.shape.join(',')}], expected F32 [${spec.shape.join(',')}]`,
        );
      params.set(spec.name, tf.tensor(t.data as Float32Array, [...spec.shape], 'float32'));
    }
  } catch (e) {
    disposeParams(params);
    throw e;
  }
  const hash = createHash('sha256').update(buf).digest('hex');
  return {
    name: MNISTCNN,
    id: `${MNISTCNN}:sha256=${hash}:pre=pad32-grey-v1`,
    dim: MNISTCNN_DIM,
    classes,
    standard: false,
    meta,
    describe: `mnistcnn ${file} (sha256 ${hash.slice(0, 12)}, trained on ${meta.dataset ?? '?'}, held-out accuracy ${meta.val_accuracy ?? '?'})`,
    extract(batch: readonly RawExample[]): Extracted {
      const n = batch.length;
      const x = new Float32Array(n * SIZE * SIZE);
      batch.forEach((ex, i) => x.set(mnistCnnInput(ex), i * SIZE * SIZE));
      // Read back outside tf.tidy: tidy walks every element of typed arrays handed back.
      const out = tf.tidy(() => mnistCnnForward(params, tf.tensor4d(x, [n, SIZE, SIZE, 1])));
      try {
        return {
          features: out.features.dataSync() as Float32Array,
          logits: out.logits.dataSync() as Float32Array,
        };
      } finally {
        tf.dispose([out.features, out.logits]);
      }
    },
    dispose: () => disposeParams(params),
  };
}
