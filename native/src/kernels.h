// Float32 NHWC convolutions and matrix products with TF.js semantics (conv.cc, gemm.cc), and what
// they share (kernels.cc): the thread pool, scratch space and the bias/activation epilogue.
#pragma once

#include <cstdint>

#include "pool.h"

namespace rd {

// One 2-D convolution, in TF.js's convInfo terms. Filters are [KH, KW, C, OC] row-major, which
// is already the [K = KH*KW*C, OC] matrix the im2col formulation needs.
struct ConvGeom {
  int64_t N, H, W, C;
  int64_t KH, KW, OC;
  int64_t OH, OW;
  int64_t sh, sw, dh, dw;
  int64_t pt, pl;
};

enum Act : int { kLinear = 0, kRelu = 1, kRelu6 = 2, kElu = 3, kLeakyRelu = 4, kSigmoid = 5, kPrelu = 6 };

// Bias add and activation applied to each output row while it is still in cache.
// bias/prelu have 1 (broadcast) or `cols` entries.
struct Epilogue {
  const float* bias = nullptr;
  int64_t biasLen = 0;
  // Convolutions only: a bias per image ([N, 1, 1, OC]) when set; image n uses bias + n·stride.
  int64_t biasImageStride = 0;
  int act = kLinear;
  float alpha = 0.f;
  const float* prelu = nullptr;
  int64_t preluLen = 0;
};

// Bias and activation applied to a rows × cols block (row stride ldy) whose first column is
// column col0 of the full output, so per-column vectors line up when work was split by columns.
void applyEpilogue(float* y, int64_t rows, int64_t cols, int64_t ldy, int64_t col0, const Epilogue& e);

void setThreads(int pool);
int poolThreads();
Pool& pool();

// Per-thread scratch of at least n floats for the pool thread `tid` (kept between calls).
float* scratch(int tid, size_t n);
// Scratch for the calling thread outside pool tasks (kept between calls).
float* shared(size_t n);

void conv2dForward(const ConvGeom& g, const float* x, const float* w, float* y, const Epilogue& ep);
void conv2dBackpropInput(const ConvGeom& g, const float* dy, const float* w, float* dx);
void conv2dBackpropFilter(const ConvGeom& g, const float* x, const float* dy, float* dw);

// out[b] = op(a[aIdx[b]]) · op(b[bIdx[b]]) for b < batch; a is [*, M, K] (or [*, K, M] when ta),
// b is [*, K, N] (or [*, N, K] when tb), out is [batch, M, N].
void matmul(int64_t batch, int64_t M, int64_t N, int64_t K, bool ta, bool tb, const float* a,
            const int32_t* aIdx, const float* b, const int32_t* bIdx, float* out, const Epilogue& ep);

}  // namespace rd
