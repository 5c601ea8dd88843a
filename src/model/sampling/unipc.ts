/**
 * UniPC (Zhao et al. 2023) of order 2 with B(h) = e^h − 1 ("bh2"), in data prediction and σ terms
 * (α = 1, λ = −log σ). Each step evaluates the model once at the predicted point, corrects that point
 * with the evaluation (UniC: the corrected point reuses the same evaluation, so the corrector costs
 * no NFE), then predicts the next point (UniP-2; with bh2 it is the DPM-Solver++(2M) update). The
 * first step is first order (warm-up), and so is the last one, to σ = 0 (x = D).
 */
import * as tf from '@tensorflow/tfjs';
import { gridFor, levels, priorSample, type Sampler } from './sampler.js';

/**
 * The coefficients of UniPC's bh2 update for step size h = λ_t − λ_s0 > 0: h φ₁ = e^{−h} − 1,
 * B(h) = e^{−h} − 1, and the right-hand sides b₁, b₂ of its order conditions (Zhao et al. 2023, eq. 8).
 */
export function unipcCoefficients(h: number): { hPhi1: number; bh: number; b1: number; b2: number } {
  const hh = -h;
  const hPhi1 = Math.expm1(hh);
  const bh = hPhi1;
  let hPhiK = hPhi1 / hh - 1;
  const b1 = hPhiK / bh;
  hPhiK = hPhiK / hh - 1 / 2;
  const b2 = (2 * hPhiK) / bh;
  return { hPhi1, bh, b1, b2 };
}

/** λ = −log σ (log-SNR / 2 in σ terms). */
const lam = (sigma: number) => -Math.log(sigma);

/** `unipc-bh2`: N steps, N evaluations, karras levels by default. */
export const unipcBh2Sampler: Sampler = {
  name: 'unipc-bh2',
  title: 'UniPC-2 (Zhao et al. 2023), B(h) = e^h − 1: multistep predictor + free corrector',
  stochastic: false,
  defaultDiscretization: 'karras',
  uses: ['steps', 'discretization', 'rho'],
  nfe: (st) => st.steps,
  run(model, shape, o) {
    const grid = gridFor(model, o.settings, 'karras');
    const B = shape[0] ?? 0;
    const N = grid.length - 1;
    let x = priorSample(model, shape, o);
    // Model outputs at the last two levels (newest last) and the point the last prediction started from.
    let hist: tf.Tensor[] = [];
    let last: tf.Tensor | null = null;
    let lastOrder = 1;
    for (let i = 0; i < N; i++) {
      const s = grid[i] as number;
      const sn = grid[i + 1] as number;
      const prevLast: tf.Tensor | null = last;
      const [corrected, m, predicted] = tf.tidy(() => {
        const m = model.denoise(x, levels(B, s));
        let xc = x;
        const m0 = hist[hist.length - 1];
        if (prevLast !== null && m0 !== undefined) {
          // UniC at σ_i from σ_{i−1}: corrects x with the evaluation m just made there.
          const s0 = grid[i - 1] as number;
          const h = lam(s) - lam(s0);
          const c = unipcCoefficients(h);
          const base = tf.sub(tf.mul(s / s0, prevLast), tf.mul(c.hPhi1, m0));
          const m1 = hist[hist.length - 2];
          let corr: tf.Tensor;
          if (lastOrder === 2 && m1 !== undefined) {
            // r₁ < 0: the older output lies before σ_{i−1} in λ.
            const r1 = (lam(grid[i - 2] as number) - lam(s0)) / h;
            const rho0 = (c.b1 - c.b2) / (1 - r1);
            const rho1 = c.b1 - rho0;
            const d1 = tf.div(tf.sub(m1, m0), r1);
            corr = tf.add(tf.mul(rho0, d1), tf.mul(rho1, tf.sub(m, m0)));
          } else {
            corr = tf.mul(0.5, tf.sub(m, m0));
          }
          xc = tf.sub(base, tf.mul(c.bh, corr));
        }
        // UniP to σ_{i+1}: second order once there is a previous output, first order at the start and the end.
        if (sn === 0) return [tf.clone(xc), m, tf.clone(m)];
        const h = lam(sn) - lam(s);
        const c = unipcCoefficients(h);
        let xp = tf.sub(tf.mul(sn / s, xc), tf.mul(c.hPhi1, m));
        if (m0 !== undefined) {
          const r1 = (lam(grid[i - 1] as number) - lam(s)) / h;
          const d1 = tf.div(tf.sub(m0, m), r1);
          xp = tf.sub(xp, tf.mul(c.bh * 0.5, d1));
        }
        return [tf.clone(xc), m, xp];
      });
      lastOrder = sn === 0 ? 1 : hist.length > 0 ? 2 : 1;
      x.dispose();
      prevLast?.dispose();
      last = corrected;
      hist.push(m);
      if (hist.length > 2) {
        hist[0]?.dispose();
        hist = hist.slice(1);
      }
      x = predicted;
      o.onStep?.(i + 1, N);
    }
    last?.dispose();
    for (const t of hist) t.dispose();
    return { x, nfe: N };
  },
};
