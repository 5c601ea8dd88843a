#include "norm.h"

#include <cmath>
#include <vector>

#include "kernels.h"
#include "vmath.h"


namespace rd {

namespace {

// Σ over pixels of x (per channel), in double: one image's channel sums.
RD_SIMD void channelSums(const float* __restrict x, int64_t HW, int64_t C, double* __restrict acc) {
  for (int64_t c = 0; c < C; ++c) acc[c] = 0;
  for (int64_t p = 0; p < HW; ++p) {
    const float* r = x + p * C;
    for (int64_t c = 0; c < C; ++c) acc[c] += r[c];
  }
}

// Σ over pixels of (x − m[c])² per channel, in double.
RD_SIMD void channelSqDev(const float* __restrict x, int64_t HW, int64_t C, const float* __restrict m,
                          double* __restrict acc) {
  for (int64_t c = 0; c < C; ++c) acc[c] = 0;
  for (int64_t p = 0; p < HW; ++p) {
    const float* r = x + p * C;
    for (int64_t c = 0; c < C; ++c) {
      const float d = r[c] - m[c];
      acc[c] += (double)(d * d);
    }
  }
}

// y = act(x·a[c] + s[c]).
RD_SIMD void affine(const float* __restrict x, int64_t HW, int64_t C, const float* __restrict a,
                    const float* __restrict s, bool silu, float* __restrict y) {
  for (int64_t p = 0; p < HW; ++p) {
    const float* r = x + p * C;
    float* o = y + p * C;
    if (silu) {
      for (int64_t c = 0; c < C; ++c) {
        const float h = r[c] * a[c] + s[c];
        o[c] = h * sigmoid(h);
      }
    } else {
      for (int64_t c = 0; c < C; ++c) o[c] = r[c] * a[c] + s[c];
    }
  }
}

// g = dy·act'(x·a + s) into g; S1[c] = Σ g, S2[c] = Σ g·x (double). A template rather than a
// flag: GCC does not vectorise the loop with the branch inside.
template <bool Silu>
RD_SIMD void gradSums(const float* __restrict x, const float* __restrict dy, int64_t HW, int64_t C,
                      const float* __restrict a, const float* __restrict s, float* __restrict g,
                      double* __restrict s1, double* __restrict s2) {
  for (int64_t c = 0; c < C; ++c) s1[c] = s2[c] = 0;
  for (int64_t p = 0; p < HW; ++p) {
    const float* r = x + p * C;
    const float* d = dy + p * C;
    float* o = g + p * C;
    for (int64_t c = 0; c < C; ++c) {
      float v = d[c];
      if constexpr (Silu) {
        const float h = r[c] * a[c] + s[c];
        const float sg = sigmoid(h);
        v *= sg * (1.f + h * (1.f - sg));
      }
      o[c] = v;
      s1[c] += v;
      s2[c] += (double)v * r[c];
    }
  }
}

// dx = g·a[c] + x·k[c] + b[c], in place over g.
RD_SIMD void gradInput(const float* __restrict x, int64_t HW, int64_t C, const float* __restrict a,
                       const float* __restrict k, const float* __restrict b, float* __restrict g) {
  for (int64_t p = 0; p < HW; ++p) {
    const float* r = x + p * C;
    float* o = g + p * C;
    for (int64_t c = 0; c < C; ++c) o[c] = o[c] * a[c] + r[c] * k[c] + b[c];
  }
}

}  // namespace

void groupNormForward(const GroupNormShape& s, const float* x, const float* gamma, const float* beta, float* y,
                      float* mean, float* rstd) {
  const int64_t cg = s.C / s.G;
  const double n = (double)s.HW * cg;
  pool().run(s.B, [&](long b, int) {
    const float* xb = x + b * s.HW * s.C;
    std::vector<double> acc(s.C);
    std::vector<float> mc(s.C), a(s.C), sh(s.C);
    // Two passes (mean, then squared deviations) rather than Σx² − (Σx)²: activations with a
    // large mean would lose the variance to cancellation.
    channelSums(xb, s.HW, s.C, acc.data());
    for (int64_t g = 0; g < s.G; ++g) {
      double t = 0;
      for (int64_t c = g * cg; c < (g + 1) * cg; ++c) t += acc[c];
      mean[b * s.G + g] = (float)(t / n);
      for (int64_t c = g * cg; c < (g + 1) * cg; ++c) mc[c] = mean[b * s.G + g];
    }
    channelSqDev(xb, s.HW, s.C, mc.data(), acc.data());
    for (int64_t g = 0; g < s.G; ++g) {
      double t = 0;
      for (int64_t c = g * cg; c < (g + 1) * cg; ++c) t += acc[c];
      const float r = (float)(1.0 / std::sqrt(t / n + (double)s.eps));
      rstd[b * s.G + g] = r;
      for (int64_t c = g * cg; c < (g + 1) * cg; ++c) {
        a[c] = gamma[c] * r;
        sh[c] = beta[c] - mc[c] * a[c];
      }
    }
    affine(xb, s.HW, s.C, a.data(), sh.data(), s.silu, y + b * s.HW * s.C);
  });
}

void groupNormBackward(const GroupNormShape& s, const float* x, const float* gamma, const float* beta,
                       const float* mean, const float* rstd, const float* dy, float* dx, float* dgamma,
                       float* dbeta) {
  const int64_t cg = s.C / s.G;
  const double n = (double)s.HW * cg;
  // Per-example partials of dγ and dβ, summed below in example order.
  std::vector<double> pg((size_t)(s.B * s.C)), pb((size_t)(s.B * s.C));
  pool().run(s.B, [&](long b, int) {
    const float* xb = x + b * s.HW * s.C;
    std::vector<float> a(s.C), sh(s.C), k(s.C), cst(s.C);
    std::vector<double> s1(s.C), s2(s.C);
    for (int64_t c = 0; c < s.C; ++c) {
      const int64_t g = c / cg;
      a[c] = gamma[c] * rstd[b * s.G + g];
      sh[c] = beta[c] - mean[b * s.G + g] * a[c];
    }
    float* gb = dx + b * s.HW * s.C;
    (s.silu ? gradSums<true> : gradSums<false>)(xb, dy + b * s.HW * s.C, s.HW, s.C, a.data(), sh.data(), gb,
                                                s1.data(), s2.data());
    // With x̂ = (x − μ)·r: dβ = Σ g, dγ = Σ g·x̂ = r·(S2 − μ·S1), and
    // dx = a·g + k·x + c with k = −r²·m2, c = −k·μ − r·m1, m1 = Σ_grp γ·S1 / n, m2 = Σ_grp γ·dγ / n.
    for (int64_t g = 0; g < s.G; ++g) {
      const double mu = mean[b * s.G + g], r = rstd[b * s.G + g];
      double m1 = 0, m2 = 0;
      for (int64_t c = g * cg; c < (g + 1) * cg; ++c) {
        const double t = r * (s2[c] - mu * s1[c]);
        pg[b * s.C + c] = t;
        pb[b * s.C + c] = s1[c];
        m1 += gamma[c] * s1[c];
        m2 += gamma[c] * t;
      }
      m1 /= n, m2 /= n;
      const double kk = -r * r * m2, cc = -kk * mu - r * m1;
      for (int64_t c = g * cg; c < (g + 1) * cg; ++c) {
        k[c] = (float)kk;
        cst[c] = (float)cc;
      }
    }
    gradInput(xb, s.HW, s.C, a.data(), k.data(), cst.data(), gb);
  });
  for (int64_t c = 0; c < s.C; ++c) {
    double tg = 0, tb = 0;
    for (int64_t b = 0; b < s.B; ++b) tg += pg[b * s.C + c], tb += pb[b * s.C + c];
    dgamma[c] = (float)tg;
    dbeta[c] = (float)tb;
  }
}

}  // namespace rd
