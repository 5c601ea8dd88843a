/**
 * Every sample-quality metric of generated features against reference features, named after the
 * network (`fid_<net>`, `kid_<net>`, `kid_<net>_se`, `is_<net>`, `is_<net>_std`, `precision_<net>`,
 * `recall_<net>`): the one entry point for the CLI and, later, evaluation during training.
 */
import { frechetDistance } from './frechet.js';
import { inceptionScore } from './inception-score.js';
import { kid } from './kid.js';
import { precisionRecall } from './precision-recall.js';
import type { FeatureSet } from './reference.js';
import { toGaussian } from './stats.js';

/** Metric settings: KID subsets and subset size, its seed, IS splits, precision/recall k. */
export interface MetricOptions {
  kidSubsets: number;
  kidSubsetSize: number;
  seed: number;
  isSplits: number;
  k: number;
}

/** Defaults of the standard implementations (clean-fid's KID, the original IS, Kynkäänniemi's k). */
export const DEFAULT_METRIC_OPTIONS: MetricOptions = {
  kidSubsets: 100,
  kidSubsetSize: 1000,
  seed: 0,
  isSplits: 10,
  k: 3,
};

/** Metrics of `gen` against `real`, both from the network named `net` with `classes` logits (0: no IS). */
export function qualityMetrics(
  net: string,
  classes: number,
  gen: FeatureSet,
  real: FeatureSet,
  o: MetricOptions = DEFAULT_METRIC_OPTIONS,
): Record<string, number> {
  const dim = gen.stats.dim;
  const m: Record<string, number> = {};
  m[`fid_${net}`] = frechetDistance(toGaussian(gen.stats), toGaussian(real.stats));
  const kd = kid(gen.features, real.features, dim, {
    subsets: o.kidSubsets,
    subsetSize: o.kidSubsetSize,
    seed: o.seed,
  });
  m[`kid_${net}`] = kd.kid;
  m[`kid_${net}_se`] = kd.se;
  if (gen.logits && classes > 0) {
    const is = inceptionScore(gen.logits, classes, o.isSplits);
    m[`is_${net}`] = is.mean;
    m[`is_${net}_std`] = is.std;
  }
  const pr = precisionRecall(real.features, gen.features, dim, o.k);
  m[`precision_${net}`] = pr.precision;
  m[`recall_${net}`] = pr.recall;
  return m;
}
