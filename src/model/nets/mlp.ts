/**
 * ε-prediction MLP for low-dimensional data (2-D toy sets):
 *
 *   temb = time.lin2(SiLU(time.lin1(sinusoidal(t)))) [+ class_embed.table[y]];  e = SiLU(temb)
 *   h = in(x)
 *   for l < layers:  h = h + blocks.l.lin(SiLU(h + blocks.l.temb(e)))
 *   ε̂ = out(SiLU(h))                                     (out zero-initialised)
 *
 * The time projection is added before each block's nonlinearity (not after its Linear) so that
 * every block, including the first, mixes x and t; the residual stream keeps depth harmless
 * without normalisation layers. Cost is dominated by the 2·layers [hidden × hidden] and
 * [tdim × hidden] matmuls, which is what keeps a step on the pure-JS backend affordable.
 */
import * as tf from '@tensorflow/tfjs';
import type { Denoiser } from './denoiser.js';
import {
  checkInputs,
  initParams,
  linear,
  linearSpecs,
  type ParamSpec,
  silu,
  sinusoidalDim,
  timeEmbed,
  timeEmbedSpecs,
} from './layers.js';
import type { Params } from '../params.js';

/** Shape of an MLP denoiser, in model terms (see `factory.ts` for the mapping from the config). */
export interface MLPOptions {
  /** Dimension of one example (2 for toy data). */
  dim: number;
  hidden: number;
  layers: number;
  timeEmbedDim: number;
  /** 0 = unconditional. */
  numClasses: number;
  /** Outputs per input dimension: 1, or 2 with a learned variance (prediction, then v). */
  outputs?: number;
}

/** A residual MLP ε-predictor over vectors [B, dim]. */
export class MLPDenoiser implements Denoiser {
  readonly dataShape: readonly number[];
  readonly numClasses: number;
  /** Every parameter tensor, as declared (init and counting derive from this list). */
  readonly specs: readonly ParamSpec[];
  private readonly opts: MLPOptions;
  private readonly sinDim: number;

  constructor(opts: MLPOptions) {
    this.opts = opts;
    this.dataShape = [opts.dim];
    this.numClasses = opts.numClasses;
    this.sinDim = sinusoidalDim(opts.timeEmbedDim);
    const { dim, hidden, layers, timeEmbedDim: tdim, numClasses } = opts;
    const specs: ParamSpec[] = [
      ...timeEmbedSpecs(this.sinDim, tdim, numClasses),
      ...linearSpecs('in', dim, hidden),
    ];
    for (let l = 0; l < layers; l++) {
      specs.push(
        ...linearSpecs(`blocks.${l}.temb`, tdim, hidden),
        ...linearSpecs(`blocks.${l}.lin`, hidden, hidden),
      );
    }
    specs.push(...linearSpecs('out', hidden, dim * (opts.outputs ?? 1), 'zero'));
    this.specs = specs;
  }

  /** Fresh parameters, a pure function of `seed`. */
  init(seed: number): Params {
    return initParams(seed, this.specs);
  }

  /** x [B, dim], t [B], y [B] or null → ε̂ [B, dim]. */
  apply(p: Params, x: tf.Tensor, t: tf.Tensor1D, y: tf.Tensor1D | null): tf.Tensor {
    checkInputs(this, x, t, y);
    const e = silu(timeEmbed(p, t, y, this.sinDim, this.numClasses));
    let h = linear(p, 'in', x as tf.Tensor2D);
    for (let l = 0; l < this.opts.layers; l++) {
      const u = silu(tf.add<tf.Tensor2D>(h, linear(p, `blocks.${l}.temb`, e)));
      h = tf.add<tf.Tensor2D>(h, linear(p, `blocks.${l}.lin`, u));
    }
    return linear(p, 'out', silu(h));
  }
}
