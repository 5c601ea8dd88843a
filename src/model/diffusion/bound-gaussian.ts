/**
 * The variational bound of a diffusion model in closed form, for data N(0, s²) in every dimension
 * (iid) and the exact denoiser: an oracle for the tensor code of `bound.ts`, in float64 and
 * deliberately sharing nothing with it but β_t (its own ᾱ, posterior and KL formulas).
 *
 * With x₀ ~ N(0, s²) and x_t = √ᾱ_t x₀ + √(1−ᾱ_t) ε, the exact x̂₀ = E[x₀|x_t] leaves the error
 * x₀ − x̂₀ with variance V_t = Var(x₀|x_t) = 1/(1/s² + ᾱ_t/(1−ᾱ_t)), independent of x_t. The
 * model's mean μ_θ = c1_t x̂₀ + c2_t x_t differs from the true posterior mean by c1_t (x₀ − x̂₀), so
 * every term's expectation is a function of V_t alone:
 *   L_T   = ½(ᾱ s² + (1 − ᾱ) − 1 − ln(1 − ᾱ))                      (ᾱ = ᾱ_{T−1})
 *   L_t   = ½(ln(σ_t²/β̃_t) − 1 + β̃_t/σ_t² + c1_t² V_t/σ_t²)           (t ≥ 1)
 *   L_0   = ½ ln(2π σ_0²) + V_0/(2σ_0²)                               (continuous decoder)
 * all in nats per dimension. Optimal variances σ_t² = β̃_t + c1_t² V_t = Var(x_{t−1}|x_t) make
 * every reverse kernel the true one; the bound then equals the entropy ½ ln(2πe s²) plus
 * KL(q(x_{T−1}) ‖ N(0, 1)), about 2·10⁻¹⁰ for the linear schedule with T = 1000.
 */

/** The reverse variances the oracle knows (a learned one depends on a network). */
export type OracleVariance = 'beta' | 'posterior' | 'optimal';

/** Expected terms of the bound, nats per dimension. */
export interface GaussianBound {
  /** L_T: KL(q(x_{T−1}|x₀) ‖ N(0, 1)). */
  readonly prior: number;
  /** L_t for t = 0…T−1, with kl[0] = 0 (t = 0 is the decoder). */
  readonly kl: Float64Array;
  /** Σ_{t≥1} L_t. */
  readonly klSum: number;
  /** L_0: −ln p(x₀|x_0-latent), continuous Gaussian density. */
  readonly decoder: number;
  /** prior + klSum + decoder. */
  readonly total: number;
  /** The true NLL (entropy) ½ ln(2πe s²) of the data. */
  readonly entropy: number;
}

/** The expected bound for data N(0, s²) per dimension, exact denoiser, β_t given (float64). */
export function gaussianBound(betas: ArrayLike<number>, s: number, variance: OracleVariance): GaussianBound {
  const T = betas.length;
  if (!(s > 0)) throw new Error(`gaussianBound: std must be > 0, got ${s}`);
  const s2 = s * s;
  const kl = new Float64Array(T);
  let abPrev = 1;
  let prior = 0;
  let decoder = 0;
  let klSum = 0;
  // β̃_1, the decoder variance of both fixed choices (β̃_0 = 0 cannot be a variance).
  const b0 = betas[0] as number;
  const b1 = betas[1] as number;
  const postVar1 = (b1 * b0) / (1 - (1 - b0) * (1 - b1));
  for (let t = 0; t < T; t++) {
    const beta = betas[t] as number;
    const ab = abPrev * (1 - beta);
    const post = (beta * (1 - abPrev)) / (1 - ab);
    const c1 = (beta * Math.sqrt(abPrev)) / (1 - ab);
    const v = 1 / (1 / s2 + ab / (1 - ab));
    const opt = post + c1 * c1 * v;
    if (t === 0) {
      const dv = variance === 'optimal' ? opt : postVar1;
      decoder = 0.5 * Math.log(2 * Math.PI * dv) + v / (2 * dv);
    } else {
      const sv = variance === 'optimal' ? opt : variance === 'beta' ? beta : post;
      const term = 0.5 * (Math.log(sv / post) - 1 + post / sv + (c1 * c1 * v) / sv);
      kl[t] = term;
      klSum += term;
    }
    if (t === T - 1) prior = 0.5 * (ab * s2 + (1 - ab) - 1 - Math.log(1 - ab));
    abPrev = ab;
  }
  return {
    prior,
    kl,
    klSum,
    decoder,
    total: prior + klSum + decoder,
    entropy: 0.5 * Math.log(2 * Math.PI * Math.E * s2),
  };
}
