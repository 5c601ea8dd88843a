/** Shared test set-up: the pure-JS backend in production mode (quiet, no debug checks). */
import * as tf from '@tensorflow/tfjs';

/** Selects the cpu backend once; call at the top of every test file that uses tensors. */
export async function cpuBackend(): Promise<void> {
  tf.enableProdMode();
  await tf.setBackend('cpu');
  await tf.ready();
}

/** max |a − b| / (max |b| + tiny). */
export function relErr(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let num = 0;
  let den = 0;
  for (let i = 0; i < b.length; i++) {
    num = Math.max(num, Math.abs((a[i] as number) - (b[i] as number)));
    den = Math.max(den, Math.abs(b[i] as number));
  }
  return num / (den + 1e-30);
}

/** Sample mean and (population) variance. */
export function meanVar(x: ArrayLike<number>): { mean: number; variance: number } {
  let m = 0;
  for (let i = 0; i < x.length; i++) m += x[i] as number;
  m /= x.length;
  let v = 0;
  for (let i = 0; i < x.length; i++) v += ((x[i] as number) - m) ** 2;
  return { mean: m, variance: v / x.length };
}
