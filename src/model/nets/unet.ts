/**
 * The DDPM ε-prediction U-Net: a generalisation of the PyTorch model our step benchmark is compared
 * with (`npm run bench:step -- --vs-pytorch`, its `ddp_ddpm.py` anchor) to any number of levels, residual blocks per level,
 * self-attention at chosen resolutions and optional class conditioning.
 *
 * With channels [32, 64, 128], one ResBlock per level, no attention and no classes it has exactly
 * the anchor's layers and parameter count (656,961 for 1×32×32 inputs):
 *
 *   temb = time.lin2(SiLU(time.lin1(sinusoidal(t)))) [+ class_embed.table[y]]   (sinusoidal width
 *          tdim/4, i.e. the anchor's 32 for 128; see `sinusoidalDim`)
 *   conv_in                                          C → c0
 *   level i < L−1:  res_blocks × (ResBlock [+ attn])  → skip i;  downsample (conv3x3, stride 2)
 *   level L−1 (mid): res_blocks × (ResBlock [+ attn])           the bottleneck, no extra blocks
 *   i = L−2 … 0:    nearest ×2, conv3x3 c_{i+1} → c_i (as one sub-pixel op: `upsampleConv2d`),
 *                   concat [h, skip i],
 *                   res_blocks × (ResBlock [+ attn]), the first one 2c_i → c_i
 *   out: GroupNorm, SiLU, conv3x3 c0 → C (zero-initialised)
 *
 * ResBlock(cin, cout): h = conv1(SiLU(norm1(x))) + temb_proj(SiLU(temb)); h = conv2(SiLU(norm2(h)));
 * return h + (cin ≠ cout ? skip1x1(x) : x).
 *
 * Unlike improved-diffusion there is one skip per level (not per block), and only the output conv
 * is zero-initialised (the anchor initialises ResBlocks and attention with PyTorch defaults).
 */
import * as tf from '@tensorflow/tfjs';
import type { Denoiser } from './denoiser.js';
import {
  attentionSpecs,
  checkInputs,
  conv2d,
  conv2dSpecs,
  groupNormSilu,
  groupNormSpecs,
  initParams,
  linear,
  linearSpecs,
  type ParamSpec,
  selfAttention,
  silu,
  sinusoidalDim,
  timeEmbed,
  timeEmbedSpecs,
  upsampleConv2d,
} from './layers.js';
import type { Params } from '../params.js';

/** Shape of a U-Net, in model terms (see `factory.ts` for the mapping from the config). */
export interface UNetOptions {
  /** [H, W, C]; H and W divisible by 2^(levels−1). */
  dataShape: readonly [number, number, number];
  /** Channels per level, highest resolution first. */
  channels: readonly number[];
  resBlocks: number;
  /** Levels whose height (pixels) is listed get self-attention after each ResBlock. */
  attentionResolutions: readonly number[];
  attentionHeads: number;
  groups: number;
  timeEmbedDim: number;
  /** 0 = unconditional. */
  numClasses: number;
  /** Output channels per input channel: 1, or 2 with a learned variance (prediction, then v). */
  outputs?: number;
}

/** An ε-prediction U-Net over NHWC images. */
export class UNet implements Denoiser {
  readonly dataShape: readonly number[];
  readonly numClasses: number;
  /** Every parameter tensor, as declared (init and counting derive from this list). */
  readonly specs: readonly ParamSpec[];
  private readonly opts: UNetOptions;
  private readonly sinDim: number;
  /** attention[i]: level i has self-attention. */
  private readonly attention: readonly boolean[];

  constructor(opts: UNetOptions) {
    this.opts = opts;
    this.dataShape = [...opts.dataShape];
    this.numClasses = opts.numClasses;
    this.sinDim = sinusoidalDim(opts.timeEmbedDim);
    const h = opts.dataShape[0];
    this.attention = opts.channels.map((_, i) => opts.attentionResolutions.includes(h / 2 ** i));
    this.specs = this.buildSpecs();
  }

  /** Name prefix of level i's blocks: `down.i`, or `mid` for the bottleneck. */
  private levelName(i: number): string {
    return i === this.opts.channels.length - 1 ? 'mid' : `down.${i}`;
  }

  private buildSpecs(): ParamSpec[] {
    const { channels, resBlocks, timeEmbedDim: tdim, numClasses } = this.opts;
    const L = channels.length;
    const ch = (i: number): number => channels[i] as number;
    const inC = this.opts.dataShape[2];
    const specs: ParamSpec[] = [];
    const res = (name: string, cin: number, cout: number): void => {
      specs.push(
        ...groupNormSpecs(`${name}.norm1`, cin),
        ...conv2dSpecs(`${name}.conv1`, 3, cin, cout),
        ...linearSpecs(`${name}.temb`, tdim, cout),
        ...groupNormSpecs(`${name}.norm2`, cout),
        ...conv2dSpecs(`${name}.conv2`, 3, cout, cout),
      );
      if (cin !== cout) specs.push(...conv2dSpecs(`${name}.skip`, 1, cin, cout));
    };
    specs.push(...timeEmbedSpecs(this.sinDim, tdim, numClasses));
    specs.push(...conv2dSpecs('conv_in', 3, inC, ch(0)));
    let c = ch(0);
    for (let i = 0; i < L; i++) {
      const name = this.levelName(i);
      for (let j = 0; j < resBlocks; j++) {
        res(`${name}.res.${j}`, c, ch(i));
        c = ch(i);
        if (this.attention[i]) specs.push(...attentionSpecs(`${name}.attn.${j}`, c));
      }
      if (i < L - 1) specs.push(...conv2dSpecs(`${name}.downsample`, 3, c, c));
    }
    for (let i = L - 2; i >= 0; i--) {
      specs.push(...conv2dSpecs(`up.${i}.upsample`, 3, ch(i + 1), ch(i)));
      for (let j = 0; j < resBlocks; j++) {
        res(`up.${i}.res.${j}`, j === 0 ? 2 * ch(i) : ch(i), ch(i));
        if (this.attention[i]) specs.push(...attentionSpecs(`up.${i}.attn.${j}`, ch(i)));
      }
    }
    specs.push(
      ...groupNormSpecs('out.norm', ch(0)),
      ...conv2dSpecs('out.conv', 3, ch(0), inC * (this.opts.outputs ?? 1), 'zero'),
    );
    return specs;
  }

  /** Fresh parameters, a pure function of `seed`. */
  init(seed: number): Params {
    return initParams(seed, this.specs);
  }

  /** x [B, H, W, C], t [B], y [B] or null → ε̂ [B, H, W, C]. */
  apply(p: Params, x: tf.Tensor, t: tf.Tensor1D, y: tf.Tensor1D | null): tf.Tensor {
    const { channels, resBlocks, groups, attentionHeads: heads } = this.opts;
    const L = channels.length;
    checkInputs(this, x, t, y);
    const temb = timeEmbed(p, t, y, this.sinDim, this.numClasses);
    const tact = silu(temb);
    const block = (name: string, i: number, j: number, h: tf.Tensor4D): tf.Tensor4D => {
      const r = resBlock(p, `${name}.res.${j}`, h, tact, groups);
      return this.attention[i] ? selfAttention(p, `${name}.attn.${j}`, r, groups, heads) : r;
    };
    let h = conv2d(p, 'conv_in', x as tf.Tensor4D);
    const skips: tf.Tensor4D[] = [];
    for (let i = 0; i < L; i++) {
      const name = this.levelName(i);
      for (let j = 0; j < resBlocks; j++) h = block(name, i, j, h);
      if (i < L - 1) {
        skips.push(h);
        h = conv2d(p, `${name}.downsample`, h, 2);
      }
    }
    for (let i = L - 2; i >= 0; i--) {
      h = upsampleConv2d(p, `up.${i}.upsample`, h);
      h = tf.concat([h, skips[i] as tf.Tensor4D], 3);
      for (let j = 0; j < resBlocks; j++) h = block(`up.${i}`, i, j, h);
    }
    return conv2d(p, 'out.conv', groupNormSilu(p, 'out.norm', h, groups));
  }
}

/** ResBlock: x [B, H, W, cin], tact = SiLU(temb) [B, tdim] → [B, H, W, cout]. */
function resBlock(p: Params, name: string, x: tf.Tensor4D, tact: tf.Tensor2D, groups: number): tf.Tensor4D {
  const temb = linear(p, `${name}.temb`, tact);
  let h = conv2d(p, `${name}.conv1`, groupNormSilu(p, `${name}.norm1`, x, groups), 1, temb);
  const cout = h.shape[3];
  h = conv2d(p, `${name}.conv2`, groupNormSilu(p, `${name}.norm2`, h, groups));
  return tf.add(h, x.shape[3] === cout ? x : conv2d(p, `${name}.skip`, x));
}
