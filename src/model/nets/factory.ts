/**
 * From the `model` section of the config and the dataset's example shape to a Denoiser.
 * Every inconsistency is caught here, before any tensor exists, as one line naming the config key.
 */
import { resolveDit, type ResolvedModelConfig } from '../../config/resolve.js';
import { MLPDenoiser } from './mlp.js';
import type { Denoiser } from './denoiser.js';
import { DiT, type FixedTensor } from './dit.js';
import { countSpecs, type ParamSpec } from './layers.js';
import { UNet } from './unet.js';
import { AnalyticDenoiser, mixtureOf } from './analytic.js';
import type { Prediction } from '../diffusion/prediction.js';
import { scheduleOf, type Schedule, type ScheduleName } from '../diffusion/schedule.js';

/** The diffusion process a network is asked about: only the analytic model needs it to answer. */
export interface ProcessFacts {
  readonly schedule: Schedule;
  readonly prediction: Prediction;
}

// `model.kind` and each kind's parameter names are stored in checkpoints: once committed, a kind
// never changes its layers or names; a changed architecture gets a new kind (docs/design.md §8).
/** The denoiser of `model.kind` for examples of shape `dataShape` ([H, W, C] for unet, [D] for mlp). */
export function createDenoiser(
  model: ResolvedModelConfig,
  dataShape: readonly number[],
  /** Outputs per channel: 2 for a learned variance (diffusion.learn_sigma). */
  outputs = 1,
  /** Schedule and prediction target (model.kind: analytic only). */
  process?: ProcessFacts,
): Denoiser {
  validateModel(model, dataShape);
  if (model.kind === 'analytic') {
    if (outputs !== 1)
      throw new Error('diffusion.learn_sigma: model.kind analytic has no learned variance; set it false');
    if (!process) throw new Error('model.kind: analytic needs the diffusion process (schedule, prediction)');
    const a = model.analytic;
    return new AnalyticDenoiser(
      mixtureOf(a.weights, a.means, a.std),
      process.schedule,
      process.prediction,
      model.num_classes,
    );
  }
  if (model.kind === 'mlp') {
    return new MLPDenoiser({
      dim: dataShape[0] as number,
      hidden: model.hidden,
      layers: model.layers,
      timeEmbedDim: model.time_embed_dim,
      numClasses: model.num_classes,
      outputs,
    });
  }
  const [h, w, c] = dataShape as [number, number, number];
  if (model.kind === 'dit') {
    const dit = resolveDit(model.dit);
    return new DiT({
      dataShape: [h, w, c],
      depth: dit.depth,
      hidden: dit.hidden,
      heads: dit.heads,
      patch: dit.patch,
      mlpRatio: dit.mlp_ratio,
      numClasses: model.num_classes,
      learnSigma: outputs === 2,
    });
  }
  return new UNet({
    dataShape: [h, w, c],
    channels: model.channels,
    resBlocks: model.res_blocks,
    attentionResolutions: model.attention_resolutions,
    attentionHeads: model.attention_heads,
    headChannels: model.attention_head_channels,
    groups: model.groups,
    timeEmbedDim: model.time_embed_dim,
    numClasses: model.num_classes,
    outputs,
    dropout: model.dropout,
    scaleShiftNorm: model.scale_shift_norm,
    resblockUpdown: model.resblock_updown,
    layout: model.unet_layout,
  });
}

/** The denoiser of a job: its `model` section, with doubled outputs when it learns its variance. */
export function jobDenoiser(
  cfg: {
    model: ResolvedModelConfig;
    diffusion: {
      learn_sigma: boolean;
      schedule: ScheduleName;
      timesteps: number;
      zero_terminal_snr: boolean;
      prediction: Prediction;
    };
  },
  dataShape: readonly number[],
): Denoiser {
  const process =
    cfg.model.kind === 'analytic'
      ? { schedule: scheduleOf(cfg.diffusion), prediction: cfg.diffusion.prediction }
      : undefined;
  return createDenoiser(cfg.model, dataShape, cfg.diffusion.learn_sigma ? 2 : 1, process);
}

/** The example shape [D] of an analytic model (its means' dimension). */
export function analyticDataShape(model: ResolvedModelConfig): number[] {
  return [model.analytic.means[0]?.length ?? 0];
}

/** Throws a one-line error naming the config key if `model` cannot denoise examples of `dataShape`. */
export function validateModel(model: ResolvedModelConfig, dataShape: readonly number[]): void {
  const shape = `[${dataShape.join(', ')}]`;
  if (dataShape.length === 0 || dataShape.some((d) => !Number.isInteger(d) || d < 1))
    throw new Error(`data shape ${shape} is not a list of positive integers`);
  if (model.kind === 'analytic') {
    const D = model.analytic.means[0]?.length ?? 0;
    if (dataShape.length !== 1 || dataShape[0] !== D)
      throw new Error(`model.analytic.means: the mixture is ${D}-D, the data shape is ${shape}`);
    return;
  }
  if (model.kind === 'mlp') {
    if (dataShape.length !== 1)
      throw new Error(`model.kind: mlp needs 1-D examples such as [2], got ${shape} (use unet for images)`);
    return;
  }
  if (dataShape.length !== 3)
    throw new Error(
      `model.kind: ${model.kind} needs image examples [H, W, C], got ${shape} (use mlp for vectors)`,
    );
  const [h, w] = dataShape as [number, number, number];
  if (model.kind === 'dit') {
    const { patch } = resolveDit(model.dit);
    if (h % patch !== 0 || w % patch !== 0)
      throw new Error(
        `model.dit.patch: ${patch} does not divide the image sides ${h}×${w} (data.image_size)`,
      );
    return;
  }
  const levels = model.channels.length;
  const f = 2 ** (levels - 1);
  if (h % f !== 0 || w % f !== 0)
    throw new Error(`model.channels: ${levels} levels need image sides divisible by ${f}, got ${h}×${w}`);
  for (const c of model.channels) {
    if (c % model.groups !== 0)
      throw new Error(`model.groups: ${model.groups} does not divide channels ${c}`);
  }
  const resolutions = model.channels.map((_, i) => h / 2 ** i);
  const attended: Array<[number, number]> = [];
  for (const r of model.attention_resolutions) {
    const i = resolutions.indexOf(r);
    if (i < 0)
      throw new Error(
        `model.attention_resolutions: ${r} is not a U-Net resolution (levels are ${resolutions.join(', ')} pixels high)`,
      );
    attended.push([r, model.channels[i] as number]);
  }
  // The ADM layout's middle block always attends, at the lowest resolution.
  if (model.unet_layout === 'adm')
    attended.push([resolutions[levels - 1] as number, model.channels[levels - 1] as number]);
  for (const [r, c] of attended) {
    const hc = model.attention_head_channels;
    if (hc > 0 && c % hc !== 0)
      throw new Error(`model.attention_head_channels: ${hc} does not divide channels ${c} (resolution ${r})`);
    if (hc === 0 && c % model.attention_heads !== 0)
      throw new Error(
        `model.attention_heads: ${model.attention_heads} does not divide channels ${c} (resolution ${r})`,
      );
  }
}

/** Parameter count of one module (the first component of its tensors' names: `blocks`, `down`). */
export interface ModuleCount {
  readonly module: string;
  readonly params: number;
}

/** What `ringdiff model` reports of a denoiser. */
export interface ModelSummary {
  /** Trainable scalars: what the gradient buffer, the optimizer and checkpoints hold. */
  readonly params: number;
  /** Scalars the model computes rather than learns (DiT's position embedding). */
  readonly fixed: number;
  /** Trainable scalars per module, in declaration order. */
  readonly modules: readonly ModuleCount[];
  readonly fixedTensors: readonly FixedTensor[];
}

/** The parameter declarations of a denoiser built by `createDenoiser`. */
export function paramSpecs(d: Denoiser): readonly ParamSpec[] {
  if (d instanceof UNet || d instanceof MLPDenoiser || d instanceof DiT || d instanceof AnalyticDenoiser)
    return d.specs;
  throw new Error('paramSpecs: not a denoiser of createDenoiser');
}

/** Counts of `d` from its declarations alone (no tensor is created). */
export function summarizeModel(d: Denoiser): ModelSummary {
  const specs = paramSpecs(d);
  const modules = new Map<string, number>();
  for (const s of specs) {
    const m = s.name.split('.')[0] as string;
    modules.set(m, (modules.get(m) ?? 0) + countSpecs([s]));
  }
  const fixedTensors = d instanceof DiT ? d.fixed : [];
  return {
    params: countSpecs(specs),
    fixed: fixedTensors.reduce((n, t) => n + t.shape.reduce((a, b) => a * b, 1), 0),
    modules: [...modules].map(([module, params]) => ({ module, params })),
    fixedTensors,
  };
}
