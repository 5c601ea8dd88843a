/**
 * Config values that follow the data: what `auto` means once the dataset is open. The result is
 * what the job runs with, what checkpoints record and what the coordinator sends its workers, so
 * every process of a job sees numbers, never `auto`.
 */
import { ConfigError } from './load.js';
import { DIT_PRESETS, type Config, type DitConfig, type DitPresetName, type ModelConfig } from './schema.js';

/** The model section with every data-dependent value decided. */
export type ResolvedModelConfig = Omit<ModelConfig, 'num_classes'> & { num_classes: number };
/** A config whose data-dependent values are decided (see `resolveForDataset`). */
export type ResolvedConfig = Omit<Config, 'model'> & { model: ResolvedModelConfig };

/** What resolution needs to know of a dataset. */
export interface DatasetFacts {
  /** Number of label values (labels are 0…numClasses−1); 0 for unlabelled data. */
  readonly numClasses: number;
}

/**
 * `cfg` with `model.num_classes: auto` replaced by the dataset's label count. A number set by
 * the user is checked against the labels: a conditional model on unlabelled data, or fewer
 * classes than the data has labels, is a one-line error naming the key.
 */
export function resolveForDataset(cfg: Config, ds: DatasetFacts): ResolvedConfig {
  // The analytic model's data is its mixture, not the dataset.
  if (cfg.model.kind === 'analytic') return resolveAnalytic(cfg);
  // A DiT's shape is written out in full, so checkpoints and workers see numbers, not a preset alone.
  if (cfg.model.kind === 'dit')
    cfg = { ...cfg, model: { ...cfg.model, dit: { ...resolveDit(cfg.model.dit) } } };
  const want = cfg.model.num_classes;
  const spec = cfg.data.dataset;
  if (want === 'auto') return { ...cfg, model: { ...cfg.model, num_classes: ds.numClasses } };
  if (want > 0 && ds.numClasses === 0)
    throw new ConfigError(
      `model.num_classes: ${want}, but dataset ${spec} has no labels (use 0 or auto for an unconditional model)`,
    );
  if (want > 0 && want < ds.numClasses)
    throw new ConfigError(
      `model.num_classes: ${want}, but dataset ${spec} has labels 0…${ds.numClasses - 1} (use ${ds.numClasses} or auto)`,
    );
  return { ...cfg, model: { ...cfg.model, num_classes: want } };
}

/**
 * A config of `model.kind: analytic`, which needs no dataset: num_classes auto means 0
 * (unconditional); a number must be 0 or the number of components (labels = components).
 */
export function resolveAnalytic(cfg: Config): ResolvedConfig {
  if (cfg.model.kind !== 'analytic')
    throw new ConfigError(
      `model.kind: ${cfg.model.kind} is a trained network; only analytic needs no dataset`,
    );
  const K = cfg.model.analytic.means.length;
  const want = cfg.model.num_classes === 'auto' ? 0 : cfg.model.num_classes;
  if (want !== 0 && want !== K)
    throw new ConfigError(
      `model.num_classes: ${want}, but the analytic mixture has ${K} components (use 0, or ${K}: label = component)`,
    );
  return { ...cfg, model: { ...cfg.model, num_classes: want } };
}

/**
 * A config read back from a checkpoint or received from the coordinator, which always hold
 * resolved values: `auto` there means a corrupt or foreign file, named by `source`.
 */
export function requireResolved(cfg: Config, source: string): ResolvedConfig {
  if (cfg.model.num_classes === 'auto')
    throw new ConfigError(
      `${source}: model.num_classes is auto; expected the number the job was resolved to`,
    );
  return cfg as ResolvedConfig;
}

/** `model.dit` with every shape key decided. */
export interface ResolvedDitConfig {
  readonly preset: DitPresetName | null;
  readonly depth: number;
  readonly hidden: number;
  readonly heads: number;
  readonly patch: number;
  readonly mlp_ratio: number;
}

/**
 * `model.dit` with the preset's values in the keys left unset (keys the user set win), checked:
 * every shape key decided, heads dividing hidden, hidden a multiple of 4 (the 2-D sin-cos position
 * embedding splits it in four). Errors are one line naming the key. Idempotent.
 */
export function resolveDit(dit: DitConfig): ResolvedDitConfig {
  const preset = dit.preset === null ? null : DIT_PRESETS[dit.preset];
  const pick = (key: 'depth' | 'hidden' | 'heads' | 'patch'): number => {
    const v = dit[key] ?? preset?.[key];
    if (v === undefined)
      throw new ConfigError(
        `model.dit.${key}: not set; give model.dit.preset (S/2, S/4, S/8, B/2 … XL/8) or depth, hidden, heads and patch`,
      );
    return v;
  };
  const r = {
    preset: dit.preset,
    depth: pick('depth'),
    hidden: pick('hidden'),
    heads: pick('heads'),
    patch: pick('patch'),
    mlp_ratio: dit.mlp_ratio,
  };
  if (r.hidden % r.heads !== 0)
    throw new ConfigError(`model.dit.heads: ${r.heads} does not divide model.dit.hidden ${r.hidden}`);
  if (r.hidden % 4 !== 0)
    throw new ConfigError(
      `model.dit.hidden: ${r.hidden} is not a multiple of 4 (the 2-D sin-cos position embedding needs it)`,
    );
  if (Math.floor(r.hidden * r.mlp_ratio) < 1)
    throw new ConfigError(`model.dit.mlp_ratio: ${r.mlp_ratio} × hidden ${r.hidden} leaves no MLP width`);
  return r;
}
