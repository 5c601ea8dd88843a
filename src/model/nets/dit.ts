/**
 * DiT, the diffusion transformer of Peebles & Xie 2023 ("Scalable Diffusion Models with
 * Transformers"), layer for layer as their reference `models.py` (facebookresearch/DiT), over
 * NHWC images:
 *
 *   tokens = patchify(x)·x_embed + pos              x [B, H, W, C] → [B, N, D], N = (H/p)(W/p);
 *                                                   x_embed is a p×p conv with stride p (PatchEmbed)
 *                                                   and pos the fixed 2-D sin-cos embedding
 *   c = t_embed.lin2(SiLU(t_embed.lin1(freq256(t)))) [+ y_embed.table[y]]        [B, D]
 *   block i: (shift, scale, gate) × 2 = blocks.i.ada(SiLU(c))                     (adaLN-Zero)
 *            x += gate₁ · attn(LN(x)·(1 + scale₁) + shift₁)
 *            x += gate₂ · mlp(LN(x)·(1 + scale₂) + shift₂)       LN: no affine, eps 1e-6;
 *            attn: multi-head self-attention with qkv bias; mlp: fc1, GELU(tanh), fc2
 *   out = final.linear(LN(x)·(1 + scale) + shift), (shift, scale) = final.ada(SiLU(c))
 *   unpatchify                                      [B, N, p²·C_out] → [B, H, W, C_out]
 *
 * Initialisation is the reference's: linears xavier-uniform with zero bias, the patch embedding
 * xavier-uniform on its flattened [p²C, D] view, label table and timestep MLP weights N(0, 0.02),
 * every adaLN modulation and the final linear zero. So every block starts as the identity and a
 * fresh model predicts 0.
 *
 * The position embedding is not a parameter (the reference's is an nn.Parameter with
 * requires_grad=False): it never enters the gradient buffer, the optimizer or checkpoints; it is a
 * function of (grid, D), reported as `fixed`.
 */
import * as tf from '@tensorflow/tfjs';
import type { Denoiser } from './denoiser.js';
import {
  checkInputs,
  embedding,
  geluTanh,
  initParams,
  layerNormNoAffine,
  linear,
  multiHeadAttention,
  param,
  type ParamSpec,
  silu,
  timestepEmbedding,
} from './layers.js';
import type { Params } from '../params.js';

/** Width of the sinusoidal timestep features (the reference's frequency_embedding_size). */
export const DIT_FREQ_DIM = 256;
const LN_EPS = 1e-6;

/** Shape of a DiT, in model terms (see `factory.ts` for the mapping from the config). */
export interface DiTOptions {
  /** [H, W, C]; `patch` divides H and W. */
  dataShape: readonly [number, number, number];
  depth: number;
  /** Token width D; a multiple of 4 and of `heads`. */
  hidden: number;
  heads: number;
  patch: number;
  /** MLP width = floor(hidden · mlpRatio), as the reference's int(hidden_size * mlp_ratio). */
  mlpRatio: number;
  /** 0 = unconditional; otherwise the label table has numClasses + 1 rows (the last = null class). */
  numClasses: number;
  /**
   * Output 2C channels instead of C (the reference's learn_sigma: ε and the variance
   * interpolation); apply then returns [B, H, W, 2C]. Off by default: ε prediction.
   */
  learnSigma?: boolean;
}

/** A tensor the model computes rather than learns. */
export interface FixedTensor {
  readonly name: string;
  readonly shape: readonly number[];
}

/** A DiT ε-predictor over NHWC images. */
export class DiT implements Denoiser {
  readonly dataShape: readonly number[];
  readonly numClasses: number;
  /** Every parameter tensor, as declared (init and counting derive from this list). */
  readonly specs: readonly ParamSpec[];
  /** Non-trainable tensors: the position embedding [N, D]. */
  readonly fixed: readonly FixedTensor[];
  /** Channels of the output: C, or 2C with learned sigma. */
  readonly outChannels: number;
  private readonly opts: DiTOptions;
  private readonly grid: readonly [number, number];
  private readonly mlpWidth: number;
  // Kept on the host and uploaded per call: a cached device tensor would outlive tf.tidy scopes
  // and backend switches and need an owner to dispose it; the upload is N·D floats, small next
  // to the activations.
  private readonly pos: Float32Array;

  constructor(opts: DiTOptions) {
    const [h, w, c] = opts.dataShape;
    const { patch: p, hidden: d, heads } = opts;
    if (h % p !== 0 || w % p !== 0)
      throw new Error(`DiT: patch ${p} does not divide the image sides ${h}×${w}`);
    if (d % heads !== 0) throw new Error(`DiT: ${heads} heads do not divide hidden ${d}`);
    if (d % 4 !== 0) throw new Error(`DiT: hidden ${d} is not a multiple of 4`);
    this.opts = opts;
    this.dataShape = [...opts.dataShape];
    this.numClasses = opts.numClasses;
    this.outChannels = opts.learnSigma ? 2 * c : c;
    this.grid = [h / p, w / p];
    this.mlpWidth = Math.floor(d * opts.mlpRatio);
    this.pos = sincosPosEmbed2d(d, this.grid[0], this.grid[1]);
    this.fixed = [{ name: 'pos_embed', shape: [this.grid[0] * this.grid[1], d] }];
    this.specs = this.buildSpecs();
  }

  private buildSpecs(): ParamSpec[] {
    const { depth, hidden: d, patch: p, numClasses } = this.opts;
    const c = this.opts.dataShape[2];
    const specs: ParamSpec[] = [
      // Conv layout [p, p, C, D]; its flattened view is [p²C, D], whose xavier bound this is.
      ...weightAndBias('x_embed', [p, p, c, d], xavier(p * p * c, d)),
      ...weightAndBias('t_embed.lin1', [DIT_FREQ_DIM, d], { kind: 'normal', std: 0.02 }),
      ...weightAndBias('t_embed.lin2', [d, d], { kind: 'normal', std: 0.02 }),
    ];
    if (numClasses > 0)
      specs.push({ name: 'y_embed.table', shape: [numClasses + 1, d], init: { kind: 'normal', std: 0.02 } });
    const m = this.mlpWidth;
    for (let i = 0; i < depth; i++) {
      const b = `blocks.${i}`;
      specs.push(
        ...weightAndBias(`${b}.attn.qkv`, [d, 3 * d], xavier(d, 3 * d)),
        ...weightAndBias(`${b}.attn.proj`, [d, d], xavier(d, d)),
        ...weightAndBias(`${b}.mlp.fc1`, [d, m], xavier(d, m)),
        ...weightAndBias(`${b}.mlp.fc2`, [m, d], xavier(m, d)),
        ...weightAndBias(`${b}.ada`, [d, 6 * d], ZERO),
      );
    }
    specs.push(
      ...weightAndBias('final.ada', [d, 2 * d], ZERO),
      ...weightAndBias('final.linear', [d, p * p * this.outChannels], ZERO),
    );
    return specs;
  }

  /** Fresh parameters, a pure function of `seed`. */
  init(seed: number): Params {
    return initParams(seed, this.specs);
  }

  /** The position embedding [N, D] (row-major over the patch grid), as the reference computes it. */
  positionEmbedding(): Float32Array {
    return this.pos.slice();
  }

  /** x [B, H, W, C], t [B], y [B] or null → ε̂ [B, H, W, C] ([B, H, W, 2C] with learned sigma). */
  apply(p: Params, x: tf.Tensor, t: tf.Tensor1D, y: tf.Tensor1D | null): tf.Tensor {
    checkInputs(this, x, t, y);
    const { depth, hidden: d } = this.opts;
    const b = x.shape[0] as number;
    const n = this.grid[0] * this.grid[1];
    const tokens = tf.add(
      tf.reshape(this.patchEmbed(p, x as tf.Tensor4D), [b, n, d]),
      tf.tensor3d(this.pos, [1, n, d]),
    ) as tf.Tensor3D;
    // Every adaLN modulation starts with SiLU(c): computed once for all of them.
    const cact = silu(this.condition(p, t, y));
    let h = tokens;
    for (let i = 0; i < depth; i++) h = ditBlock(p, `blocks.${i}`, h, cact, this.opts.heads);
    const [shift, scale] = modulation(p, 'final.ada', cact, 2) as [tf.Tensor3D, tf.Tensor3D];
    const out = linear(
      p,
      'final.linear',
      tf.reshape(modulate(layerNormNoAffine(h, LN_EPS), shift, scale), [b * n, d]),
    );
    return this.unpatchify(out, b);
  }

  /** Conditioning c = timestep embedding (+ label embedding): t [B], y [B] | null → [B, D]. */
  private condition(p: Params, t: tf.Tensor1D, y: tf.Tensor1D | null): tf.Tensor2D {
    // The reference's features are cat(cos, sin); ours come as cat(sin, cos).
    const [sin, cos] = tf.split(timestepEmbedding(t, DIT_FREQ_DIM), 2, 1) as [tf.Tensor2D, tf.Tensor2D];
    const freq = tf.concat([cos, sin], 1);
    const temb = linear(p, 't_embed.lin2', silu(linear(p, 't_embed.lin1', freq)));
    if (this.numClasses === 0) return temb;
    const labels = y ?? tf.fill([t.shape[0]], this.numClasses, 'int32');
    return tf.add(temb, embedding(p, 'y_embed', labels as tf.Tensor1D));
  }

  /**
   * x [B, H, W, C] → [B·N, D]: the p×p stride-p convolution as one matrix product of the
   * patches [B·N, p²C] (laid out (row, column, channel), the conv kernel's order) with the kernel
   * viewed as [p²C, D]. Rank-4 reshapes and transposes only, so every backend has the gradient.
   */
  private patchEmbed(p: Params, x: tf.Tensor4D): tf.Tensor2D {
    const [b, , , c] = x.shape;
    const { patch: q, hidden: d } = this.opts;
    const [gh, gw] = this.grid;
    const patches = tf.reshape(tf.transpose(tf.reshape(x, [b * gh, q, gw, q * c]), [0, 2, 1, 3]), [
      b * gh * gw,
      q * q * c,
    ]) as tf.Tensor2D;
    const kernel = tf.reshape(param(p, 'x_embed.kernel'), [q * q * c, d]) as tf.Tensor2D;
    return tf.add(tf.matMul(patches, kernel), param(p, 'x_embed.bias'));
  }

  /** [B·N, p²·C_out] → [B, H, W, C_out], each token's features laid out (row, column, channel). */
  private unpatchify(tokens: tf.Tensor2D, b: number): tf.Tensor4D {
    const q = this.opts.patch;
    const [gh, gw] = this.grid;
    const c = this.outChannels;
    return tf.reshape(tf.transpose(tf.reshape(tokens, [b * gh, gw, q, q * c]), [0, 2, 1, 3]), [
      b,
      gh * q,
      gw * q,
      c,
    ]);
  }
}

/**
 * One DiT block with adaLN-Zero: x [B, N, D], cact = SiLU(c) [B, D] → [B, N, D]. With a zero
 * `${name}.ada` every gate is 0 and the block is the identity.
 */
export function ditBlock(
  p: Params,
  name: string,
  x: tf.Tensor3D,
  cact: tf.Tensor2D,
  heads: number,
): tf.Tensor3D {
  const [b, n, d] = x.shape;
  const [shiftA, scaleA, gateA, shiftM, scaleM, gateM] = modulation(
    p,
    `${name}.ada`,
    cact,
    6,
  ) as tf.Tensor3D[] as [tf.Tensor3D, tf.Tensor3D, tf.Tensor3D, tf.Tensor3D, tf.Tensor3D, tf.Tensor3D];
  const a = tokenAttention(p, `${name}.attn`, modulate(layerNormNoAffine(x, LN_EPS), shiftA, scaleA), heads);
  const h = tf.add(x, tf.mul(gateA, a)) as tf.Tensor3D;
  const u = tf.reshape(modulate(layerNormNoAffine(h, LN_EPS), shiftM, scaleM), [b * n, d]) as tf.Tensor2D;
  const m = linear(p, `${name}.mlp.fc2`, geluTanh(linear(p, `${name}.mlp.fc1`, u)));
  return tf.add(h, tf.mul(gateM, tf.reshape(m, [b, n, d])));
}

/** `${name}` applied to cact [B, D], split into k chunks of [B, 1, D] (broadcast over tokens). */
function modulation(p: Params, name: string, cact: tf.Tensor2D, k: number): tf.Tensor[] {
  const [b, d] = cact.shape;
  return tf.split(tf.reshape(linear(p, name, cact), [b, 1, k * d]), k, 2);
}

/** x·(1 + scale) + shift, scale and shift [B, 1, D] per example. */
function modulate(x: tf.Tensor3D, shift: tf.Tensor3D, scale: tf.Tensor3D): tf.Tensor3D {
  return tf.add(tf.mul(x, tf.add(scale, 1)), shift);
}

/**
 * timm's Attention (qkv bias, output projection): x [B, N, D] → [B, N, D], heads of width
 * d = D/heads, softmax(QKᵀ/√d)·V per head. qkv is laid out [q | k | v], each head-major.
 */
function tokenAttention(p: Params, name: string, x: tf.Tensor3D, heads: number): tf.Tensor3D {
  const [b, n, c] = x.shape;
  const tokens = tf.reshape(x, [b * n, c]) as tf.Tensor2D;
  return tf.reshape(multiHeadAttention(p, name, tokens, b, n, heads), [b, n, c]);
}

/**
 * The fixed 2-D sin-cos position embedding of MAE/DiT (`get_2d_sincos_pos_embed`) for a gh × gw
 * grid, generalised to non-square grids: token (i, j) (row-major) gets
 * [sin(j·ω), cos(j·ω), sin(i·ω), cos(i·ω)], ω_k = 10000^(−k/(D/4)), k < D/4. As in the reference
 * the first half encodes the column (its meshgrid puts w first). Computed in float64 → [N·D].
 */
export function sincosPosEmbed2d(dim: number, gh: number, gw: number): Float32Array {
  if (dim % 4 !== 0)
    throw new Error(`2-D sin-cos position embedding needs a width divisible by 4, got ${dim}`);
  const quarter = dim / 4;
  const omega = Array.from({ length: quarter }, (_, k) => 1 / 10000 ** (k / quarter));
  const out = new Float32Array(gh * gw * dim);
  for (let i = 0; i < gh; i++) {
    for (let j = 0; j < gw; j++) {
      const row = (i * gw + j) * dim;
      for (let k = 0; k < quarter; k++) {
        const w = omega[k] as number;
        out[row + k] = Math.sin(j * w);
        out[row + quarter + k] = Math.cos(j * w);
        out[row + 2 * quarter + k] = Math.sin(i * w);
        out[row + 3 * quarter + k] = Math.cos(i * w);
      }
    }
  }
  return out;
}

const ZERO = { kind: 'const', value: 0 } as const;

/** Xavier/Glorot uniform for a [fin, fout] weight: bound √(6/(fin + fout)). */
function xavier(fin: number, fout: number): ParamSpec['init'] {
  return { kind: 'uniform', bound: Math.sqrt(6 / (fin + fout)) };
}

/** `${name}.kernel` of `shape` with `init` and `${name}.bias` [last dim] at zero (the reference's biases). */
function weightAndBias(name: string, shape: readonly number[], init: ParamSpec['init']): ParamSpec[] {
  return [
    { name: `${name}.kernel`, shape, init },
    { name: `${name}.bias`, shape: [shape[shape.length - 1] as number], init: ZERO },
  ];
}
