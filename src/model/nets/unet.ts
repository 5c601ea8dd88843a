/**
 * The U-Net denoiser, in two layouts that share one residual block and one attention block.
 *
 * `compact` (the default) generalises the PyTorch model our step benchmark is compared with
 * (`npm run bench:step -- --vs-pytorch`, its `ddp_ddpm.py` anchor). With channels [32, 64, 128],
 * one ResBlock per level, no attention and no classes it has exactly the anchor's layers and
 * parameter count (656,961 for 1×32×32 inputs):
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
 * `adm` is the U-Net of Ho et al. 2020 as improved-diffusion and guided-diffusion (ADM, Dhariwal &
 * Nichol 2021) write it: a skip from conv_in and from every encoder block (ResBlocks and
 * downsamplers), res_blocks + 1 decoder ResBlocks per level each taking one skip, a
 * ResBlock–attention–ResBlock middle, and the last conv of every ResBlock and the projection of
 * every attention block zero-initialised. Its parameter count equals the reference's for the same
 * options, except that the class table has the extra null-class row of classifier-free guidance.
 *
 * ResBlock(cin, cout): h = conv1(SiLU(norm1(x))); then either h = SiLU(norm2(h + temb_proj(SiLU(temb))))
 * or, with scale-shift norm, [s, b] = temb_proj(SiLU(temb)), h = SiLU(norm2(h)·(1 + s) + b); then
 * h = conv2(dropout(h)); return h + (cin ≠ cout ? skip1x1(x) : x). With resblock up/down, the block
 * also resamples (2×2 average pool or nearest ×2) both branches between SiLU(norm1) and conv1.
 */
import * as tf from '@tensorflow/tfjs';
import type { ApplyOptions, Denoiser, DropoutMasks } from './denoiser.js';
import {
  attentionSpecs,
  avgPool2x,
  checkInputs,
  conv2d,
  conv2dSpecs,
  groupNorm,
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
  upsampleNearest2x,
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
  /** Channels per attention head (ADM's num_head_channels); 0 or absent = `attentionHeads` heads. */
  headChannels?: number;
  groups: number;
  timeEmbedDim: number;
  /** 0 = unconditional. */
  numClasses: number;
  /** Output channels per input channel: 1, or 2 with a learned variance (prediction, then v). */
  outputs?: number;
  /** Dropout rate before the last conv of every ResBlock, in training only (0 or absent = none). */
  dropout?: number;
  /** ResBlocks condition on time as GroupNorm(h)·(1 + scale) + shift instead of adding it. */
  scaleShiftNorm?: boolean;
  /** Resample with ResBlocks that pool or repeat pixels instead of strided / upsampling convs. */
  resblockUpdown?: boolean;
  /** Where the skips go (see the module comment); absent = compact. */
  layout?: UNetLayout;
}

export type UNetLayout = 'compact' | 'adm';

/** One step of the network between conv_in and the output head, in execution order. */
type Op =
  | { op: 'res'; name: string; cin: number; cout: number; resample?: 'up' | 'down' }
  | { op: 'attn'; name: string; c: number }
  | { op: 'down'; name: string; c: number }
  | { op: 'up'; name: string; cin: number; cout: number }
  /** Keep h as a skip. */
  | { op: 'push' }
  /** h = concat [h, last skip] along channels. */
  | { op: 'pop' };

/** A U-Net denoiser over NHWC images. */
export class UNet implements Denoiser {
  readonly dataShape: readonly number[];
  readonly numClasses: number;
  /** Every parameter tensor, as declared (init and counting derive from this list). */
  readonly specs: readonly ParamSpec[];
  private readonly opts: UNetOptions;
  private readonly sinDim: number;
  private readonly plan: readonly Op[];

  constructor(opts: UNetOptions) {
    this.opts = opts;
    this.dataShape = [...opts.dataShape];
    this.numClasses = opts.numClasses;
    this.sinDim = sinusoidalDim(opts.timeEmbedDim);
    this.plan = (opts.layout ?? 'compact') === 'adm' ? admPlan(opts) : compactPlan(opts);
    this.specs = this.buildSpecs();
  }

  private buildSpecs(): ParamSpec[] {
    const { channels, timeEmbedDim: tdim, numClasses } = this.opts;
    const adm = this.opts.layout === 'adm';
    const c0 = channels[0] as number;
    const inC = this.opts.dataShape[2];
    const specs: ParamSpec[] = [...timeEmbedSpecs(this.sinDim, tdim, numClasses)];
    specs.push(...conv2dSpecs('conv_in', 3, inC, c0));
    for (const o of this.plan) {
      if (o.op === 'res') {
        const tw = this.opts.scaleShiftNorm ? 2 * o.cout : o.cout;
        specs.push(
          ...groupNormSpecs(`${o.name}.norm1`, o.cin),
          ...conv2dSpecs(`${o.name}.conv1`, 3, o.cin, o.cout),
          ...linearSpecs(`${o.name}.temb`, tdim, tw),
          ...groupNormSpecs(`${o.name}.norm2`, o.cout),
          ...conv2dSpecs(`${o.name}.conv2`, 3, o.cout, o.cout, adm ? 'zero' : 'default'),
        );
        if (o.cin !== o.cout) specs.push(...conv2dSpecs(`${o.name}.skip`, 1, o.cin, o.cout));
      } else if (o.op === 'attn') {
        specs.push(...attentionSpecs(o.name, o.c, adm ? 'zero' : 'default'));
      } else if (o.op === 'down') {
        specs.push(...conv2dSpecs(o.name, 3, o.c, o.c));
      } else if (o.op === 'up') {
        specs.push(...conv2dSpecs(o.name, 3, o.cin, o.cout));
      }
    }
    specs.push(
      ...groupNormSpecs('out.norm', c0),
      ...conv2dSpecs('out.conv', 3, c0, inC * (this.opts.outputs ?? 1), 'zero'),
    );
    return specs;
  }

  /** Fresh parameters, a pure function of `seed`. */
  init(seed: number): Params {
    return initParams(seed, this.specs);
  }

  /** x [B, H, W, C], t [B], y [B] or null → [B, H, W, C·outputs]; dropout only with `opts.dropout`. */
  apply(p: Params, x: tf.Tensor, t: tf.Tensor1D, y: tf.Tensor1D | null, opts?: ApplyOptions): tf.Tensor {
    const { groups, attentionHeads, headChannels } = this.opts;
    checkInputs(this, x, t, y);
    const tact = silu(timeEmbed(p, t, y, this.sinDim, this.numClasses));
    const rate = this.opts.dropout ?? 0;
    const block: BlockContext = {
      tact,
      groups,
      scaleShift: this.opts.scaleShiftNorm ?? false,
      dropout: rate > 0 && opts?.dropout ? { masks: opts.dropout, rate } : null,
    };
    let h = conv2d(p, 'conv_in', x as tf.Tensor4D);
    const skips: tf.Tensor4D[] = [];
    for (const o of this.plan) {
      switch (o.op) {
        case 'res':
          h = resBlock(p, o.name, h, block, o.resample);
          break;
        case 'attn':
          h = selfAttention(p, o.name, h, groups, headChannels ? o.c / headChannels : attentionHeads);
          break;
        case 'down':
          h = conv2d(p, o.name, h, 2);
          break;
        case 'up':
          h = upsampleConv2d(p, o.name, h);
          break;
        case 'push':
          skips.push(h);
          break;
        case 'pop':
          h = tf.concat([h, skips.pop() as tf.Tensor4D], 3);
          break;
      }
    }
    return conv2d(p, 'out.conv', groupNormSilu(p, 'out.norm', h, groups));
  }
}

/** The compact layout's ops: one skip per level (names unchanged since the first checkpoints). */
function compactPlan(o: UNetOptions): Op[] {
  const L = o.channels.length;
  const ch = (i: number): number => o.channels[i] as number;
  const attn = attentionLevels(o);
  const ops: Op[] = [];
  let c = ch(0);
  for (let i = 0; i < L; i++) {
    const name = i === L - 1 ? 'mid' : `down.${i}`;
    for (let j = 0; j < o.resBlocks; j++) {
      ops.push({ op: 'res', name: `${name}.res.${j}`, cin: c, cout: ch(i) });
      c = ch(i);
      if (attn[i]) ops.push({ op: 'attn', name: `${name}.attn.${j}`, c });
    }
    if (i < L - 1) {
      ops.push({ op: 'push' });
      ops.push(
        o.resblockUpdown
          ? { op: 'res', name: `${name}.resdown`, cin: c, cout: c, resample: 'down' }
          : { op: 'down', name: `${name}.downsample`, c },
      );
    }
  }
  for (let i = L - 2; i >= 0; i--) {
    ops.push(
      o.resblockUpdown
        ? { op: 'res', name: `up.${i}.resup`, cin: ch(i + 1), cout: ch(i), resample: 'up' }
        : { op: 'up', name: `up.${i}.upsample`, cin: ch(i + 1), cout: ch(i) },
    );
    ops.push({ op: 'pop' });
    for (let j = 0; j < o.resBlocks; j++) {
      ops.push({ op: 'res', name: `up.${i}.res.${j}`, cin: j === 0 ? 2 * ch(i) : ch(i), cout: ch(i) });
      if (attn[i]) ops.push({ op: 'attn', name: `up.${i}.attn.${j}`, c: ch(i) });
    }
  }
  return ops;
}

/** The ADM layout's ops (improved-diffusion's input_blocks, middle_block, output_blocks). */
function admPlan(o: UNetOptions): Op[] {
  const L = o.channels.length;
  const ch = (i: number): number => o.channels[i] as number;
  const attn = attentionLevels(o);
  const ops: Op[] = [{ op: 'push' }];
  const skipC: number[] = [ch(0)];
  let c = ch(0);
  for (let i = 0; i < L; i++) {
    for (let j = 0; j < o.resBlocks; j++) {
      ops.push({ op: 'res', name: `down.${i}.res.${j}`, cin: c, cout: ch(i) });
      c = ch(i);
      if (attn[i]) ops.push({ op: 'attn', name: `down.${i}.attn.${j}`, c });
      ops.push({ op: 'push' });
      skipC.push(c);
    }
    if (i < L - 1) {
      ops.push(
        o.resblockUpdown
          ? { op: 'res', name: `down.${i}.resdown`, cin: c, cout: c, resample: 'down' }
          : { op: 'down', name: `down.${i}.downsample`, c },
      );
      ops.push({ op: 'push' });
      skipC.push(c);
    }
  }
  ops.push(
    { op: 'res', name: 'mid.res.0', cin: c, cout: c },
    { op: 'attn', name: 'mid.attn.0', c },
    { op: 'res', name: 'mid.res.1', cin: c, cout: c },
  );
  for (let i = L - 1; i >= 0; i--) {
    for (let j = 0; j <= o.resBlocks; j++) {
      const s = skipC.pop() as number;
      ops.push({ op: 'pop' }, { op: 'res', name: `up.${i}.res.${j}`, cin: c + s, cout: ch(i) });
      c = ch(i);
      if (attn[i]) ops.push({ op: 'attn', name: `up.${i}.attn.${j}`, c });
      if (i > 0 && j === o.resBlocks)
        ops.push(
          o.resblockUpdown
            ? { op: 'res', name: `up.${i}.resup`, cin: c, cout: c, resample: 'up' }
            : { op: 'up', name: `up.${i}.upsample`, cin: c, cout: c },
        );
    }
  }
  return ops;
}

/** attention[i]: level i (height H/2^i) is listed in `attentionResolutions`. */
function attentionLevels(o: UNetOptions): boolean[] {
  const h = o.dataShape[0];
  return o.channels.map((_, i) => o.attentionResolutions.includes(h / 2 ** i));
}

/** What every ResBlock of one forward pass shares. */
interface BlockContext {
  /** SiLU(temb) [B, tdim]. */
  tact: tf.Tensor2D;
  groups: number;
  scaleShift: boolean;
  dropout: { masks: DropoutMasks; rate: number } | null;
}

/** ResBlock: x [B, H, W, cin] → [B, H', W', cout] (H' = H, H/2 or 2H with `resample`). */
function resBlock(
  p: Params,
  name: string,
  x: tf.Tensor4D,
  b: BlockContext,
  resample?: 'up' | 'down',
): tf.Tensor4D {
  const temb = linear(p, `${name}.temb`, b.tact);
  let h = groupNormSilu(p, `${name}.norm1`, x, b.groups);
  if (resample) {
    const f = resample === 'up' ? upsampleNearest2x : avgPool2x;
    h = f(h);
    x = f(x);
  }
  if (b.scaleShift) {
    h = conv2d(p, `${name}.conv1`, h);
    const cout = h.shape[3];
    const [scale, shift] = tf.split(tf.reshape(temb, [-1, 1, 1, 2 * cout]), 2, 3) as [
      tf.Tensor4D,
      tf.Tensor4D,
    ];
    h = silu(tf.add(tf.mul(groupNorm(p, `${name}.norm2`, h, b.groups), tf.add(scale, 1)), shift));
  } else {
    // The time embedding rides in the conv's bias (one fused kernel, no separate full-size add).
    h = groupNormSilu(p, `${name}.norm2`, conv2d(p, `${name}.conv1`, h, 1, temb), b.groups);
  }
  if (b.dropout) h = tf.mul(h, b.dropout.masks.next(h.shape.slice(1), b.dropout.rate));
  h = conv2d(p, `${name}.conv2`, h);
  return tf.add(h, x.shape[3] === h.shape[3] ? x : conv2d(p, `${name}.skip`, x));
}
