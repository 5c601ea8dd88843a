#include "optim.h"

#include <algorithm>
#include <cmath>

#include "kernels.h"
#include "vmath.h"

namespace rd {

namespace {

// Elements per task: the update is memory-bound, so small tensors stay on the calling thread.
constexpr int64_t kGrain = 1 << 16;

// No fused multiply-adds: each product is rounded before the sum, as in the TF.js ops.
RD_SIMD void adamRange(int64_t i0, int64_t i1, const AdamStep& s, const float* __restrict p,
                       const float* __restrict m, const float* __restrict v, const float* __restrict g,
                       float* __restrict pOut, float* __restrict mOut, float* __restrict vOut) {
  for (int64_t i = i0; i < i1; ++i) {
    const float gi = s.scale != 1.f ? g[i] * s.scale : g[i];
    const float b1m = s.b1 * m[i], mg = s.omb1 * gi;
    const float mi = b1m + mg;
    const float g2 = gi * gi;
    const float b2v = s.b2 * v[i], vg = s.omb2 * g2;
    const float vi = b2v + vg;
    const float mh = mi / s.bc1;
    const float vh = vi / s.bc2;
    const float den = std::sqrt(vh) + s.eps;
    const float upd = mh / den;
    const float step = s.lr * upd;
    float pi = p[i] - step;
    if (s.lrwd != 0.f) {
      const float decay = s.lrwd * p[i];
      pi = pi - decay;
    }
    pOut[i] = pi;
    mOut[i] = mi;
    vOut[i] = vi;
  }
}

RD_SIMD void emaRange(int64_t i0, int64_t i1, float d, float omd, const float* __restrict e,
                      const float* __restrict w, float* __restrict out) {
  for (int64_t i = i0; i < i1; ++i) {
    const float a = d * e[i], b = omd * w[i];
    out[i] = a + b;
  }
}

}  // namespace

void adamUpdate(int64_t n, const AdamStep& s, const float* p, const float* m, const float* v, const float* g,
                float* pOut, float* mOut, float* vOut) {
  pool().run((n + kGrain - 1) / kGrain, [&](long task, int) {
    const int64_t i0 = task * kGrain;
    adamRange(i0, std::min(n, i0 + kGrain), s, p, m, v, g, pOut, mOut, vOut);
  });
}

void emaUpdate(int64_t n, float d, float omd, const float* e, const float* w, float* out) {
  pool().run((n + kGrain - 1) / kGrain, [&](long task, int) {
    const int64_t i0 = task * kGrain;
    emaRange(i0, std::min(n, i0 + kGrain), d, omd, e, w, out);
  });
}

}  // namespace rd
