/**
 * Config values that follow the data: what `auto` means once the dataset is open. The result is
 * what the job runs with, what checkpoints record and what the coordinator sends its workers, so
 * every process of a job sees numbers, never `auto`.
 */
import { ConfigError } from './load.js';
import type { Config, ModelConfig } from './schema.js';

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
