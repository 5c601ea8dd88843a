/**
 * What a dataset offers the trainer: random access by index to examples already in model space
 * (float32; images in [-1, 1], NHWC). Readers that can, read by file offset instead of loading all.
 */

export interface Example {
  /** The example, row-major, `shape` elements. */
  x: Float32Array;
  /** Class label, or -1 when the dataset has none. */
  label: number;
}

export interface Dataset {
  /** Spec string it was opened from (for messages). */
  readonly spec: string;
  readonly size: number;
  /** Shape of one example: [2] for 2-D points, [H, W, C] for images. */
  readonly shape: readonly number[];
  /** Number of classes (0 = unlabelled). */
  readonly numClasses: number;
  /** Example `index` (0 ≤ index < size), written into `out` at `offset` when given. */
  get(index: number): Example;
}

/** Number of scalars in one example. */
export function exampleSize(d: Dataset): number {
  return d.shape.reduce((a, b) => a * b, 1);
}
