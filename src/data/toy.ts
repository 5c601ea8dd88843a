/**
 * Synthetic 2-D datasets for tests and for judging the maths. Each point is a pure function of
 * (dataset seed, index), so the data needs no storage and every worker sees the same points.
 */
import { Purpose, stream } from '../model/rng.js';
import type { Dataset, Example } from './dataset.js';

export const TOY_NAMES = ['8gaussians', 'swissroll'] as const;
export type ToyName = (typeof TOY_NAMES)[number];

/** Centres of `toy:8gaussians`: radius 2, angles 2πk/8. */
export const EIGHT_GAUSSIAN_CENTRES: ReadonlyArray<readonly [number, number]> = Array.from(
  { length: 8 },
  (_, k) => {
    const a = (2 * Math.PI * k) / 8;
    return [2 * Math.cos(a), 2 * Math.sin(a)] as const;
  },
);

/** Point i of a toy dataset (and its component, used as label for 8gaussians). */
export function toyPoint(name: ToyName, seed: number, index: number): Example {
  const s = stream(seed, 0, index, Purpose.data);
  if (name === '8gaussians') {
    const k = s.int(8);
    const c = EIGHT_GAUSSIAN_CENTRES[k] as readonly [number, number];
    return { x: Float32Array.of(c[0] + 0.1 * s.normal(), c[1] + 0.1 * s.normal()), label: k };
  }
  // Swiss roll (as scikit-learn's make_swiss_roll, 2-D projection), scaled by 1/5 to about [-2.5, 2.5].
  const t = 1.5 * Math.PI * (1 + 2 * s.uniform());
  return {
    x: Float32Array.of((t * Math.cos(t)) / 5 + 0.05 * s.normal(), (t * Math.sin(t)) / 5 + 0.05 * s.normal()),
    label: -1,
  };
}

/** A toy dataset of `size` points drawn from `seed`. */
export function toyDataset(name: string, size: number, seed: number): Dataset {
  if (!(TOY_NAMES as readonly string[]).includes(name)) {
    throw new Error(`data.dataset: unknown toy dataset '${name}' (known: ${TOY_NAMES.join(', ')})`);
  }
  const toy = name as ToyName;
  return {
    spec: `toy:${name}`,
    size,
    shape: [2],
    numClasses: 0,
    get(index: number): Example {
      if (!Number.isInteger(index) || index < 0 || index >= size)
        throw new Error(`toy:${name}: index ${index} out of range`);
      return toyPoint(toy, seed, index);
    },
  };
}
