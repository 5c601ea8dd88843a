/**
 * The standard FID feature network: InceptionV3 with the weights of pytorch-fid / clean-fid, read
 * from a local TF.js graph model (model.json + weight shards; the one-time conversion is in the
 * README — the weights cannot be fetched at run time), with clean-fid's "clean" preprocessing so
 * that the number is comparable with clean-fid's:
 *
 * - images as uint8 RGB (float samples in [−1, 1] are quantised as a PNG export would hold them;
 *   grey is replicated to RGB and alpha dropped, as PIL's convert('RGB'));
 * - each channel resized to 299×299 as a float image by PIL's bicubic filter (a = −0.5, with
 *   antialiasing when shrinking), then clipped to [0, 255];
 * - normalised (x − 128)/128, the input of clean-fid's InceptionV3W layers.
 *
 * The graph model's interface: one float32 input [N, 299, 299, 3] or [N, 3, 299, 299] (layout
 * read from the model), its first output the features ([N, 2048] or [N, 2048, 1, 1]); a further
 * output whose name contains "logit" is used for the Inception Score.
 */
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import * as path from 'node:path';
import * as tf from '@tensorflow/tfjs';
import type { RawExample } from '../data/preprocess.js';
import type { Extracted, FeatureNet } from './net.js';

/** Side of the Inception input. */
export const INCEPTION_SIZE = 299;
/** Feature dimension of the standard network (pool3). */
export const INCEPTION_DIM = 2048;

/** PIL's bicubic kernel (a = −0.5, as Pillow's Resample.c). */
export function bicubicKernel(x: number): number {
  const a = -0.5;
  const t = Math.abs(x);
  if (t < 1) return ((a + 2) * t - (a + 3)) * t * t + 1;
  if (t < 2) return (((t - 5) * t + 8) * t - 4) * a;
  return 0;
}

interface Coeffs {
  /** First input of each output. */
  start: Int32Array;
  /** Inputs used by each output. */
  count: Int32Array;
  /** Weights, `ksize` per output. */
  w: Float64Array;
  ksize: number;
}

/**
 * Pillow's precompute_coeffs: the filter is stretched by the scale when shrinking (antialiasing),
 * sampled at pixel centres, cut at the image edges and renormalised there (no reflection).
 */
function pilCoeffs(inSize: number, outSize: number): Coeffs {
  const scale = inSize / outSize;
  const filterscale = Math.max(scale, 1);
  const support = 2 * filterscale;
  const ksize = Math.ceil(support) * 2 + 1;
  const start = new Int32Array(outSize);
  const count = new Int32Array(outSize);
  const w = new Float64Array(outSize * ksize);
  for (let o = 0; o < outSize; o++) {
    const center = (o + 0.5) * scale;
    // C's (int) cast truncates toward zero.
    const xmin = Math.max(0, Math.trunc(center - support + 0.5));
    const xmax = Math.min(inSize, Math.trunc(center + support + 0.5)) - xmin;
    let ww = 0;
    for (let x = 0; x < xmax; x++) {
      const v = bicubicKernel((x + xmin - center + 0.5) / filterscale);
      w[o * ksize + x] = v;
      ww += v;
    }
    if (ww !== 0) for (let x = 0; x < xmax; x++) w[o * ksize + x] = (w[o * ksize + x] as number) / ww;
    start[o] = xmin;
    count[o] = xmax;
  }
  return { start, count, w, ksize };
}

/**
 * One channel [H, W] resized to [outH, outW] as Pillow resizes a mode-'F' image with BICUBIC:
 * horizontal pass first, intermediate and result in float32, sums in float64.
 */
export function resizeBicubicPil(
  x: Float32Array,
  H: number,
  W: number,
  outH: number,
  outW: number,
): Float32Array {
  if (H === outH && W === outW) return x.slice();
  const cx = pilCoeffs(W, outW);
  const tmp = new Float32Array(H * outW);
  for (let y = 0; y < H; y++) {
    for (let o = 0; o < outW; o++) {
      const s = cx.start[o] as number;
      const n = cx.count[o] as number;
      let acc = 0;
      for (let k = 0; k < n; k++) acc += (x[y * W + s + k] as number) * (cx.w[o * cx.ksize + k] as number);
      tmp[y * outW + o] = acc;
    }
  }
  const cy = pilCoeffs(H, outH);
  const out = new Float32Array(outH * outW);
  for (let o = 0; o < outH; o++) {
    const s = cy.start[o] as number;
    const n = cy.count[o] as number;
    for (let c = 0; c < outW; c++) {
      let acc = 0;
      for (let k = 0; k < n; k++)
        acc += (tmp[(s + k) * outW + c] as number) * (cy.w[o * cy.ksize + k] as number);
      out[o * outW + c] = acc;
    }
  }
  return out;
}

/** An image as uint8-valued RGB [H, W, 3] floats 0…255 (float model-space values are quantised). */
export function toRgb255(ex: RawExample): { data: Float32Array; H: number; W: number } {
  const [H = 0, W = 0, C = 0] = ex.shape;
  if (ex.shape.length !== 3 || C < 1 || C > 4)
    throw new Error(`inception: an image has shape [H, W, C] with C = 1…4, got [${ex.shape.join(', ')}]`);
  const byte = (v: number) =>
    ex.data instanceof Uint8Array ? v : Math.min(255, Math.max(0, Math.round((v + 1) * 127.5)));
  const out = new Float32Array(H * W * 3);
  const grey = C < 3;
  for (let p = 0; p < H * W; p++) {
    for (let c = 0; c < 3; c++) out[p * 3 + c] = byte(ex.data[p * C + (grey ? 0 : c)] as number);
  }
  return { data: out, H, W };
}

/** clean-fid "clean" input of one image: [299, 299, 3] HWC, resized, clipped, (x − 128)/128. */
export function cleanFidInput(ex: RawExample): Float32Array {
  const { data, H, W } = toRgb255(ex);
  const S = INCEPTION_SIZE;
  const out = new Float32Array(S * S * 3);
  const plane = new Float32Array(H * W);
  for (let c = 0; c < 3; c++) {
    for (let p = 0; p < H * W; p++) plane[p] = data[p * 3 + c] as number;
    const r = resizeBicubicPil(plane, H, W, S, S);
    for (let p = 0; p < S * S; p++) out[p * 3 + c] = (Math.min(255, Math.max(0, r[p] as number)) - 128) / 128;
  }
  return out;
}

/** model.json and its shards, read from a local directory, as in-memory artifacts plus their hash. */
export async function readGraphModelDir(
  dir: string,
): Promise<{ artifacts: tf.io.ModelArtifacts; sha256: string }> {
  const jsonFile = path.join(dir, 'model.json');
  let text: string;
  try {
    text = readFileSync(jsonFile, 'utf8');
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    throw new Error(
      `${jsonFile}: cannot read the graph model (${code === 'ENOENT' ? 'no such file' : (code ?? (e as Error).message)})`,
    );
  }
  let json: tf.io.ModelJSON;
  try {
    json = JSON.parse(text) as tf.io.ModelJSON;
  } catch (e) {
    throw new Error(`${jsonFile}: not JSON (${(e as Error).message})`);
  }
  if (
    typeof json !== 'object' ||
    json === null ||
    typeof json.modelTopology !== 'object' ||
    json.modelTopology === null
  )
    throw new Error(`${jsonFile}: field 'modelTopology' is missing; not a TF.js graph model`);
  if (json.format !== undefined && json.format !== 'graph-model')
    throw new Error(
      `${jsonFile}: field 'format' is '${json.format}', expected 'graph-model' (tensorflowjs_converter --output_format=tfjs_graph_model)`,
    );
  if (!Array.isArray(json.weightsManifest))
    throw new Error(`${jsonFile}: field 'weightsManifest' is missing or not a list`);
  const hash = createHash('sha256').update(text);
  const artifacts = await tf.io.getModelArtifactsForJSON(json, async (manifest) => {
    const specs: tf.io.WeightsManifestEntry[] = [];
    const parts: Buffer[] = [];
    for (const group of manifest) {
      for (const p of group.paths) {
        const file = path.join(dir, p);
        try {
          parts.push(readFileSync(file));
        } catch (e) {
          const code = (e as NodeJS.ErrnoException).code;
          throw new Error(
            `${file}: cannot read weight shard named in ${jsonFile} (${code === 'ENOENT' ? 'no such file' : (code ?? (e as Error).message)})`,
          );
        }
      }
      specs.push(...group.weights);
    }
    const all = Buffer.concat(parts);
    hash.update(all);
    return [specs, all.buffer.slice(all.byteOffset, all.byteOffset + all.byteLength)];
  });
  return { artifacts, sha256: hash.digest('hex') };
}

/** Loads an InceptionV3-like graph model from `dir` as a FeatureNet with clean-fid preprocessing. */
export async function loadInception(dir: string): Promise<FeatureNet> {
  const { artifacts, sha256 } = await readGraphModelDir(dir);
  let model: Awaited<ReturnType<typeof tf.loadGraphModel>>;
  try {
    model = await tf.loadGraphModel(tf.io.fromMemory(artifacts));
  } catch (e) {
    throw new Error(
      `${path.join(dir, 'model.json')}: not a loadable TF.js graph model (${(e as Error).message.split('\n')[0]})`,
    );
  }
  const input = model.inputs[0];
  const shape = input?.shape ?? [];
  if (model.inputs.length !== 1 || shape.length !== 4)
    throw new Error(
      `${dir}/model.json: the model has ${model.inputs.length} inputs of shape [${shape.join(', ')}]; expected one [N, 299, 299, 3] or [N, 3, 299, 299]`,
    );
  const nchw = shape[1] === 3;
  const S = INCEPTION_SIZE;
  const okShape = nchw
    ? shape[2] === S && shape[3] === S
    : shape[1] === S && shape[2] === S && shape[3] === 3;
  if (!okShape)
    throw new Error(
      `${dir}/model.json: input shape [${shape.join(', ')}] is not [N, 299, 299, 3] or [N, 3, 299, 299]`,
    );
  const outputs = model.outputNodes;
  const featureNode = outputs.find((n) => !/logit/i.test(n)) ?? (outputs[0] as string);
  const logitNode = outputs.slice(1).find((n) => /logit/i.test(n));
  const wanted = logitNode ? [featureNode, logitNode] : [featureNode];
  const run = (
    x: Float32Array,
    n: number,
  ): { f: Float32Array; l: Float32Array | null; d: number; k: number } => {
    const outs = tf.tidy(() => {
      let t: tf.Tensor = tf.tensor4d(x, [n, S, S, 3]);
      if (nchw) t = tf.transpose(t, [0, 3, 1, 2]);
      const res = model.execute(t, wanted);
      return Array.isArray(res) ? res : [res];
    });
    try {
      const [f, l] = outs;
      if (!f) throw new Error(`${dir}: the model returned no output`);
      return {
        f: f.dataSync() as Float32Array,
        l: l ? (l.dataSync() as Float32Array) : null,
        d: f.size / n,
        k: l ? l.size / n : 0,
      };
    } finally {
      tf.dispose(outs);
    }
  };
  // One probe image: output sizes are often unknown (−1) in the graph's signature.
  const probe = run(new Float32Array(S * S * 3), 1);
  const standard = probe.d === INCEPTION_DIM;
  return {
    name: 'inception',
    id: `inception:sha256=${sha256}:pre=clean-fid-pil-bicubic299-v1`,
    dim: probe.d,
    classes: probe.k,
    standard,
    describe: `InceptionV3 graph model ${dir} (sha256 ${sha256.slice(0, 12)}, ${probe.d} features${standard ? '' : ', not the standard 2048'}), clean-fid preprocessing`,
    extract(batch: readonly RawExample[]): Extracted {
      const n = batch.length;
      const x = new Float32Array(n * S * S * 3);
      batch.forEach((ex, i) => x.set(cleanFidInput(ex), i * S * S * 3));
      const r = run(x, n);
      return { features: r.f, logits: r.l };
    },
    dispose: () => model.dispose(),
  };
}
