// What the kernels share: the thread pool, per-thread scratch, and the bias/activation epilogue
// of fused convolutions and matrix products.
#include "kernels.h"

#include <algorithm>
#include <cmath>
#include <vector>

namespace rd {

namespace {

Pool g_pool;

// Per-thread scratch that survives calls: a training step calls the same shapes over and over,
// and reallocating megabytes per call would cost page faults on every kernel.
std::vector<std::vector<float>> g_scratch(1);
std::vector<float> g_shared;

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

}  // namespace

void applyEpilogue(float* y, int64_t rows, int64_t cols, int64_t ldy, int64_t col0, const Epilogue& e) {
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

float* scratch(int tid, size_t n) {
  // Called from pool threads at once: the outer vector is sized in setThreads and never resized
  // here, since resizing it would move the other threads' buffers under them.
  auto& v = g_scratch[tid];
  if (v.size() < n) v.resize(n);
  return v.data();
}

float* shared(size_t n) {
  if (g_shared.size() < n) g_shared.resize(n);
  return g_shared.data();
}

Pool& pool() { return g_pool; }

int poolThreads() { return g_pool.size(); }

void setThreads(int n) {
  g_pool.resize(std::max(1, n));
  g_scratch.resize(g_pool.size());
}

}  // namespace rd
