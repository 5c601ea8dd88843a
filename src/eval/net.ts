/** What every feature network of `ringdiff eval` offers: identity for caches, and batch extraction. */
import type { RawExample } from '../data/preprocess.js';

/** Features [n, dim] and, for a classifier, logits [n, classes] of one batch, row-major. */
export interface Extracted {
  features: Float32Array;
  logits: Float32Array | null;
}

/** A feature network with its input preprocessing. */
export interface FeatureNet {
  /** Short name metrics are reported under: `fid_<name>`, `kid_<name>`, … */
  readonly name: string;
  /** Changes whenever the weights, the architecture or the preprocessing change (cache key). */
  readonly id: string;
  /** Feature dimension D. */
  readonly dim: number;
  /** Classes of the logits, 0 when the network gives none (no Inception Score then). */
  readonly classes: number;
  /** True only for the standard FID InceptionV3 (pytorch-fid / clean-fid weights). */
  readonly standard: boolean;
  /** One line for people: what the network is and where its weights came from. */
  readonly describe: string;
  /** Features of images as stored (uint8 0…255, or float32 in model space [−1, 1]; [H, W, C]). */
  extract(batch: readonly RawExample[]): Extracted;
  dispose(): void;
}
