#include "kernels.h"

#include <cblas.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

// Declared here too because a distribution's generic cblas.h (netlib's) lacks them.
extern "C" {
void openblas_set_num_threads(int num_threads);
}

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && defined(__GLIBC__)
#define RD_SIMD __attribute__((target_clones("avx2", "default")))
#else
#define RD_SIMD
#endif
#define RD_INLINE inline __attribute__((always_inline))

namespace rd {

namespace {

Pool g_pool;

// Per-thread scratch that survives calls: a training step calls the same shapes over and over,
// and reallocating megabytes per call would cost page faults on every kernel.
std::vector<std::vector<float>> g_scratch(1);
std::vector<float> g_shared;

// Called from pool threads at once: the outer vector is sized in setThreads and never resized
// here, since resizing it would move the other threads' buffers under them.
float* scratch(int tid, size_t n) {
  auto& v = g_scratch[tid];
  if (v.size() < n) v.resize(n);
  return v.data();
}

float* shared(size_t n) {
  if (g_shared.size() < n) g_shared.resize(n);
  return g_shared.data();
}

// Rows of the im2col matrix per task: a few hundred KiB of columns keeps a task's block in L2
// between im2col and the GEMM that reads it, while leaving enough tasks to balance threads.
int64_t rowsPerTask(int64_t M, int64_t K, int threads) {
  const int64_t byCache = std::max<int64_t>(32, (384 * 1024) / (K * 4));
  const int64_t even = (M + threads - 1) / threads;
  return std::max<int64_t>(1, std::min(byCache, even));
}

bool isPointwise(const ConvGeom& g) {
  return g.KH == 1 && g.KW == 1 && g.sh == 1 && g.sw == 1 && g.pt == 0 && g.pl == 0 && g.OH == g.H &&
         g.OW == g.W;
}

// Rows [r0, r1) of the im2col matrix: row (n, oh, ow) holds the receptive field in (kh, kw, c)
// order, zeros where it falls in the padding.
void im2colRows(const ConvGeom& g, const float* x, int64_t r0, int64_t r1, float* out) {
  const int64_t K = g.KH * g.KW * g.C;
  const int64_t plane = g.OH * g.OW;
  int64_t n = r0 / plane, rem = r0 % plane, oh = rem / g.OW, ow = rem % g.OW;
  const size_t cbytes = (size_t)g.C * sizeof(float);
  for (int64_t r = r0; r < r1; ++r) {
    float* o = out + (r - r0) * K;
    const float* xn = x + n * g.H * g.W * g.C;
    for (int64_t kh = 0; kh < g.KH; ++kh) {
      const int64_t ih = oh * g.sh - g.pt + kh * g.dh;
      if (ih < 0 || ih >= g.H) {
        std::memset(o, 0, cbytes * g.KW);
        o += g.KW * g.C;
        continue;
      }
      const float* xrow = xn + ih * g.W * g.C;
      const int64_t iw0 = ow * g.sw - g.pl;
      if (g.dw == 1 && iw0 >= 0 && iw0 + g.KW <= g.W) {
        // Interior pixel: the kernel row's taps are one contiguous run of KW·C floats.
        std::memcpy(o, xrow + iw0 * g.C, cbytes * g.KW);
        o += g.KW * g.C;
        continue;
      }
      for (int64_t kw = 0; kw < g.KW; ++kw) {
        const int64_t iw = ow * g.sw - g.pl + kw * g.dw;
        if (iw < 0 || iw >= g.W) {
          std::memset(o, 0, cbytes);
        } else if (g.C == 1) {
          *o = xrow[iw];
        } else {
          std::memcpy(o, xrow + iw * g.C, cbytes);
        }
        o += g.C;
      }
    }
    if (++ow == g.OW) {
      ow = 0;
      if (++oh == g.OH) {
        oh = 0;
        ++n;
      }
    }
  }
}

inline float activate(float v, int act, float alpha, float preluAlpha) {
  switch (act) {
    case kRelu:
      return v < 0.f ? 0.f : v;
    case kRelu6:
      return v < 0.f ? 0.f : (v > 6.f ? 6.f : v);
    case kElu:
      return v >= 0.f ? v : (float)(std::exp((double)v) - 1.0);
    case kLeakyRelu:
      return v < 0.f ? alpha * v : v;
    case kSigmoid:
      return (float)(1.0 / (1.0 + std::exp(-(double)v)));
    case kPrelu:
      return v < 0.f ? preluAlpha * v : v;
    default:
      return v;
  }
}

// Applies bias and activation to a rows×cols block whose first column is column col0 of the
// full output (so per-column vectors line up when a GEMM was split by columns).
void epilogue(float* y, int64_t rows, int64_t cols, int64_t ldy, int64_t col0, const Epilogue& e) {
  if (!e.bias && e.act == kLinear) return;
  for (int64_t r = 0; r < rows; ++r) {
    float* p = y + r * ldy;
    if (e.bias) {
      if (e.biasLen == 1) {
        const float b = e.bias[0];
        for (int64_t c = 0; c < cols; ++c) p[c] += b;
      } else {
        const float* b = e.bias + col0;
        for (int64_t c = 0; c < cols; ++c) p[c] += b[c];
      }
    }
    if (e.act == kRelu) {
      for (int64_t c = 0; c < cols; ++c) p[c] = p[c] < 0.f ? 0.f : p[c];
    } else if (e.act != kLinear) {
      for (int64_t c = 0; c < cols; ++c) {
        const float pa = e.prelu ? (e.preluLen == 1 ? e.prelu[0] : e.prelu[col0 + c]) : 0.f;
        p[c] = activate(p[c], e.act, e.alpha, pa);
      }
    }
  }
}

// ---- Thin convolutions: one input or one output channel ---------------------------------------
// With C = 1 (the U-Net's first conv) or OC = 1 (its last), im2col + GEMM degenerates into a
// matrix-vector product that spends its time in im2col: these direct loops run 1.5-5x faster.

// Σ a[i]·b[i] over eight float lanes (vectorisable without reassociation flags).
RD_INLINE float dot(const float* a, const float* b, int64_t n) {
  float lane[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    for (int k = 0; k < 8; ++k) lane[k] += a[i + k] * b[i + k];
  float s = 0;
  for (; i < n; ++i) s += a[i] * b[i];
  for (int k = 0; k < 8; ++k) s += lane[k];
  return s;
}

// Valid kernel taps [k0, k1) along one axis for output position o.
RD_INLINE void tapRange(int64_t o, int64_t stride, int64_t pad, int64_t dil, int64_t K, int64_t size, int64_t* k0,
                        int64_t* k1) {
  const int64_t base = o * stride - pad;
  int64_t a = 0, b = K;
  while (a < K && base + a * dil < 0) ++a;
  while (b > a && base + (b - 1) * dil >= size) --b;
  *k0 = a;
  *k1 = b;
}

// y[n, oh, ow, 0] for OC = 1: a dot product per output pixel (contiguous over kw·C when dw = 1).
RD_SIMD void convRowsOC1(const ConvGeom& g, const float* x, const float* w, float* y, int64_t row0, int64_t row1) {
  for (int64_t row = row0; row < row1; ++row) {  // row = (n, oh)
    const int64_t n = row / g.OH, oh = row % g.OH;
    int64_t kh0, kh1;
    tapRange(oh, g.sh, g.pt, g.dh, g.KH, g.H, &kh0, &kh1);
    for (int64_t ow = 0; ow < g.OW; ++ow) {
      int64_t kw0, kw1;
      tapRange(ow, g.sw, g.pl, g.dw, g.KW, g.W, &kw0, &kw1);
      float s = 0;
      for (int64_t kh = kh0; kh < kh1; ++kh) {
        const int64_t ih = oh * g.sh - g.pt + kh * g.dh;
        const float* xr = x + ((n * g.H + ih) * g.W) * g.C;
        const float* wr = w + kh * g.KW * g.C;
        const int64_t iw0 = ow * g.sw - g.pl;
        if (g.dw == 1) {
          s += dot(xr + (iw0 + kw0) * g.C, wr + kw0 * g.C, (kw1 - kw0) * g.C);
        } else {
          for (int64_t kw = kw0; kw < kw1; ++kw) s += dot(xr + (iw0 + kw * g.dw) * g.C, wr + kw * g.C, g.C);
        }
      }
      y[row * g.OW + ow] = s;
    }
  }
}

// y[n, oh, ow, :] for C = 1: one OC-wide axpy per kernel tap.
RD_SIMD void convRowsC1(const ConvGeom& g, const float* x, const float* w, float* y, int64_t row0, int64_t row1) {
  for (int64_t row = row0; row < row1; ++row) {
    const int64_t n = row / g.OH, oh = row % g.OH;
    int64_t kh0, kh1;
    tapRange(oh, g.sh, g.pt, g.dh, g.KH, g.H, &kh0, &kh1);
    for (int64_t ow = 0; ow < g.OW; ++ow) {
      int64_t kw0, kw1;
      tapRange(ow, g.sw, g.pl, g.dw, g.KW, g.W, &kw0, &kw1);
      float* o = y + (row * g.OW + ow) * g.OC;
      for (int64_t oc = 0; oc < g.OC; ++oc) o[oc] = 0.f;
      for (int64_t kh = kh0; kh < kh1; ++kh) {
        const int64_t ih = oh * g.sh - g.pt + kh * g.dh;
        for (int64_t kw = kw0; kw < kw1; ++kw) {
          const int64_t iw = ow * g.sw - g.pl + kw * g.dw;
          const float v = x[(n * g.H + ih) * g.W + iw];
          const float* wr = w + (kh * g.KW + kw) * g.OC;
          for (int64_t oc = 0; oc < g.OC; ++oc) o[oc] += v * wr[oc];
        }
      }
    }
  }
}

// dw += Σ over output rows [row0, row1) of x patch ⊗ dy, for C = 1 or OC = 1.
RD_SIMD void filterRowsThin(const ConvGeom& g, const float* x, const float* dy, float* dw, int64_t row0,
                            int64_t row1) {
  for (int64_t row = row0; row < row1; ++row) {
    const int64_t n = row / g.OH, oh = row % g.OH;
    int64_t kh0, kh1;
    tapRange(oh, g.sh, g.pt, g.dh, g.KH, g.H, &kh0, &kh1);
    for (int64_t ow = 0; ow < g.OW; ++ow) {
      int64_t kw0, kw1;
      tapRange(ow, g.sw, g.pl, g.dw, g.KW, g.W, &kw0, &kw1);
      const float* d = dy + (row * g.OW + ow) * g.OC;
      for (int64_t kh = kh0; kh < kh1; ++kh) {
        const int64_t ih = oh * g.sh - g.pt + kh * g.dh;
        for (int64_t kw = kw0; kw < kw1; ++kw) {
          const int64_t iw = ow * g.sw - g.pl + kw * g.dw;
          const float* xp = x + ((n * g.H + ih) * g.W + iw) * g.C;
          float* o = dw + (kh * g.KW + kw) * g.C * g.OC;
          if (g.OC == 1) {
            const float dv = d[0];
            for (int64_t c = 0; c < g.C; ++c) o[c] += xp[c] * dv;
          } else {
            for (int64_t c = 0; c < g.C; ++c) {
              const float xv = xp[c];
              float* oc = o + c * g.OC;
              for (int64_t k = 0; k < g.OC; ++k) oc[k] += xv * d[k];
            }
          }
        }
      }
    }
  }
}

bool isThin(const ConvGeom& g) { return g.OC == 1 || g.C == 1; }

RD_SIMD void addRow(float* __restrict o, const float* __restrict a, int64_t n) {
  for (int64_t i = 0; i < n; ++i) o[i] += a[i];
}

// Output rows (n, oh) per task for the direct loops.
int64_t thinRowsPerTask(const ConvGeom& g) {
  const int64_t perRow = std::max<int64_t>(1, g.OW * g.KH * g.KW * std::max(g.C, g.OC));
  return std::max<int64_t>(1, (1 << 16) / perRow);
}

}  // namespace

Pool& pool() { return g_pool; }

int poolThreads() { return g_pool.size(); }

void setThreads(int poolN, int blasN) {
  g_pool.resize(std::max(1, poolN));
  g_scratch.resize(g_pool.size());
  openblas_set_num_threads(std::max(1, blasN));
}

void conv2dForward(const ConvGeom& g, const float* x, const float* w, float* y, const Epilogue& ep) {
  const int64_t M = g.N * g.OH * g.OW, K = g.KH * g.KW * g.C;
  if (isThin(g)) {
    const int64_t rowsN = g.N * g.OH, per = thinRowsPerTask(g);
    g_pool.run((rowsN + per - 1) / per, [&](long task, int) {
      const int64_t r0 = task * per, r1 = std::min(rowsN, r0 + per);
      if (g.OC == 1) {
        convRowsOC1(g, x, w, y, r0, r1);
      } else {
        convRowsC1(g, x, w, y, r0, r1);
      }
      epilogue(y + r0 * g.OW * g.OC, (r1 - r0) * g.OW, g.OC, g.OC, 0, ep);
    });
    return;
  }
  const bool pointwise = isPointwise(g);
  const int64_t rows = rowsPerTask(M, K, g_pool.size());
  const int64_t ntasks = (M + rows - 1) / rows;
  g_pool.run(ntasks, [&](long task, int tid) {
    const int64_t r0 = task * rows, r1 = std::min(M, r0 + rows), nr = r1 - r0;
    const float* a = x + r0 * g.C;
    if (!pointwise) {
      float* buf = scratch(tid, (size_t)(nr * K));
      im2colRows(g, x, r0, r1, buf);
      a = buf;
    }
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)nr, (int)g.OC, (int)K, 1.f, a, (int)K, w,
                (int)g.OC, 0.f, y + r0 * g.OC, (int)g.OC);
    epilogue(y + r0 * g.OC, nr, g.OC, g.OC, 0, ep);
  });
}

void conv2dBackpropInput(const ConvGeom& g, const float* dy, const float* w, float* dx) {
  const int64_t K = g.KH * g.KW * g.C;
  const int threads = g_pool.size();
  if (isPointwise(g)) {
    const int64_t M = g.N * g.H * g.W;
    const int64_t rows = rowsPerTask(M, std::max(g.C, g.OC), threads);
    g_pool.run((M + rows - 1) / rows, [&](long task, int) {
      const int64_t r0 = task * rows, nr = std::min(M, r0 + rows) - r0;
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)nr, (int)g.C, (int)g.OC, 1.f, dy + r0 * g.OC,
                  (int)g.OC, w, (int)g.OC, 0.f, dx + r0 * g.C, (int)g.C);
    });
    return;
  }
  if (g.sh == 1 && g.sw == 1) {
    // With stride 1 the input gradient is itself a stride-1 convolution of dy with the filter
    // flipped in space and transposed in channels. That reuses the cache-blocked forward path
    // instead of materialising the (N·OH·OW)×K dcol matrix, which is memory-bound.
    std::vector<float> flipped((size_t)(K * g.OC));
    for (int64_t kh = 0; kh < g.KH; ++kh)
      for (int64_t kw = 0; kw < g.KW; ++kw)
        for (int64_t c = 0; c < g.C; ++c)
          for (int64_t oc = 0; oc < g.OC; ++oc)
            flipped[(((g.KH - 1 - kh) * g.KW + (g.KW - 1 - kw)) * g.OC + oc) * g.C + c] =
                w[((kh * g.KW + kw) * g.C + c) * g.OC + oc];
    ConvGeom t{g.N, g.OH, g.OW, g.OC, g.KH, g.KW, g.C, g.H, g.W, 1, 1, g.dh, g.dw,
               (g.KH - 1) * g.dh - g.pt, (g.KW - 1) * g.dw - g.pl};
    conv2dForward(t, dy, flipped.data(), dx, Epilogue{});
    return;
  }
  // dcol = dy · Wᵀ, then each dx pixel gathers the dcol entries that read it. Gathering (rather
  // than scattering) lets any split of dx run in parallel without atomics, and sums in a fixed
  // order, so results do not depend on the thread count.
  const int64_t plane = g.OH * g.OW;
  const int64_t perImage = plane * K;
  const int64_t group = std::max<int64_t>(1, std::min<int64_t>(g.N, (64LL << 20) / 4 / perImage));
  for (int64_t n0 = 0; n0 < g.N; n0 += group) {
    const int64_t gn = std::min(group, g.N - n0);
    const int64_t M = gn * plane;
    float* dcol = shared((size_t)(M * K));
    const float* dyg = dy + n0 * plane * g.OC;
    const int64_t rows = rowsPerTask(M, K, threads);
    g_pool.run((M + rows - 1) / rows, [&](long task, int) {
      const int64_t r0 = task * rows, nr = std::min(M, r0 + rows) - r0;
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)nr, (int)K, (int)g.OC, 1.f, dyg + r0 * g.OC,
                  (int)g.OC, w, (int)g.OC, 0.f, dcol + r0 * K, (int)K);
    });
    // One task per dx row (image n, input row ih): for each kernel row that reaches it, walk the
    // output columns and add their dcol entries to the input pixels they read.
    g_pool.run(gn * g.H, [&](long task, int) {
      const int64_t ln = task / g.H, ih = task % g.H;
      float* out = dx + ((n0 + ln) * g.H + ih) * g.W * g.C;
      std::memset(out, 0, sizeof(float) * g.W * g.C);
      const float* dcoln = dcol + ln * plane * K;
      for (int64_t kh = 0; kh < g.KH; ++kh) {
        const int64_t th = ih + g.pt - kh * g.dh;
        if (th < 0 || th % g.sh != 0) continue;
        const int64_t oh = th / g.sh;
        if (oh >= g.OH) continue;
        for (int64_t kw = 0; kw < g.KW; ++kw) {
          const float* src = dcoln + oh * g.OW * K + (kh * g.KW + kw) * g.C;
          for (int64_t ow = 0; ow < g.OW; ++ow) {
            const int64_t iw = ow * g.sw - g.pl + kw * g.dw;
            if (iw < 0 || iw >= g.W) continue;
            addRow(out + iw * g.C, src + ow * K, g.C);
          }
        }
      }
    });
  }
}

void conv2dBackpropFilter(const ConvGeom& g, const float* x, const float* dy, float* dw) {
  const int64_t M = g.N * g.OH * g.OW, K = g.KH * g.KW * g.C;
  if (isThin(g)) {
    // Lanes own partial filters and strided sets of row blocks, summed in lane order.
    const int64_t rowsN = g.N * g.OH, per = thinRowsPerTask(g), ntasks = (rowsN + per - 1) / per;
    const int64_t lanes = std::min<int64_t>(g_pool.size(), ntasks), kout = K * g.OC;
    float* partials = shared((size_t)(lanes * kout));
    g_pool.run(lanes, [&](long lane, int) {
      float* acc = lane == 0 ? dw : partials + lane * kout;
      std::memset(acc, 0, sizeof(float) * kout);
      for (int64_t task = lane; task < ntasks; task += lanes) {
        const int64_t r0 = task * per;
        filterRowsThin(g, x, dy, acc, r0, std::min(rowsN, r0 + per));
      }
    });
    for (int64_t lane = 1; lane < lanes; ++lane) {
      const float* p = partials + lane * kout;
      for (int64_t i = 0; i < kout; ++i) dw[i] += p[i];
    }
    return;
  }
  const bool pointwise = isPointwise(g);
  const int64_t rows = rowsPerTask(M, K, g_pool.size());
  const int64_t ntasks = (M + rows - 1) / rows;
  // Each lane owns a partial dW and a fixed, strided set of row blocks, and partials are summed
  // in lane order: the result is reproducible run to run (dynamic claiming would not be).
  const int64_t lanes = std::min<int64_t>(g_pool.size(), ntasks);
  const int64_t kout = K * g.OC;
  float* partials = shared((size_t)(lanes * kout));
  g_pool.run(lanes, [&](long lane, int tid) {
    float* acc = lane == 0 ? dw : partials + lane * kout;
    std::memset(acc, 0, sizeof(float) * kout);
    for (int64_t task = lane; task < ntasks; task += lanes) {
      const int64_t r0 = task * rows, r1 = std::min(M, r0 + rows), nr = r1 - r0;
      const float* a = x + r0 * g.C;
      if (!pointwise) {
        float* buf = scratch(tid, (size_t)(nr * K));
        im2colRows(g, x, r0, r1, buf);
        a = buf;
      }
      cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)K, (int)g.OC, (int)nr, 1.f, a, (int)K,
                  dy + r0 * g.OC, (int)g.OC, 1.f, acc, (int)g.OC);
    }
  });
  for (int64_t lane = 1; lane < lanes; ++lane) {
    const float* p = partials + lane * kout;
    for (int64_t i = 0; i < kout; ++i) dw[i] += p[i];
  }
}

void matmul(int64_t batch, int64_t M, int64_t N, int64_t K, bool ta, bool tb, const float* a,
            const int32_t* aIdx, const float* b, const int32_t* bIdx, float* out, const Epilogue& ep) {
  const CBLAS_TRANSPOSE opA = ta ? CblasTrans : CblasNoTrans, opB = tb ? CblasTrans : CblasNoTrans;
  const int lda = (int)(ta ? M : K), ldb = (int)(tb ? K : N);
  if (K == 0) {
    std::memset(out, 0, sizeof(float) * batch * M * N);
    for (int64_t bi = 0; bi < batch; ++bi) epilogue(out + bi * M * N, M, N, N, 0, ep);
    return;
  }
  // Small products do not repay waking the pool.
  const double flops = 2.0 * batch * M * N * K;
  const int threads = flops < 2e6 ? 1 : g_pool.size();
  // Split the larger of M and N so thin products (a batch of 8 rows × 128 columns) still split.
  const bool byRows = M >= N;
  const int64_t extent = byRows ? M : N;
  const int64_t perBatch = std::max<int64_t>(1, (threads + batch - 1) / batch);
  const int64_t block = std::max<int64_t>(byRows ? 16 : 64, (extent + perBatch - 1) / perBatch);
  const int64_t blocks = (extent + block - 1) / block;
  auto body = [&](long task, int) {
    const int64_t bi = task / blocks, i0 = (task % blocks) * block, n = std::min(extent, i0 + block) - i0;
    const float* A = a + (int64_t)aIdx[bi] * M * K;
    const float* B = b + (int64_t)bIdx[bi] * K * N;
    float* C = out + bi * M * N;
    if (byRows) {
      const float* As = ta ? A + i0 : A + i0 * K;
      cblas_sgemm(CblasRowMajor, opA, opB, (int)n, (int)N, (int)K, 1.f, As, lda, B, ldb, 0.f, C + i0 * N, (int)N);
      epilogue(C + i0 * N, n, N, N, 0, ep);
    } else {
      const float* Bs = tb ? B + i0 * K : B + i0;
      cblas_sgemm(CblasRowMajor, opA, opB, (int)M, (int)n, (int)K, 1.f, A, lda, Bs, ldb, 0.f, C + i0, (int)N);
      epilogue(C + i0, M, n, N, i0, ep);
    }
  };
  const long ntasks = (long)(batch * blocks);
  if (threads == 1) {
    for (long t = 0; t < ntasks; ++t) body(t, 0);
  } else {
    g_pool.run(ntasks, body);
  }
}

}  // namespace rd
