// ringdiff's own single-precision GEMM: register micro-kernels for AVX-512, AVX2/FMA and a
// portable vector-extension fallback, chosen at run time from the CPU's features, and the tile
// description the matmul and convolution drivers hand them.
//
// Nothing is packed. A is read through two strides and broadcast one element at a time, B through
// a row stride, one vector of columns at a time: in the convolutions of a U-Net the output has
// 32-128 channels, so a packed copy of A would be used by one or two column panels only and
// would cost as much memory traffic as the product itself. The K dimension is a list of segments
// instead of one range, which is what lets a convolution be a GEMM without an im2col matrix: a
// segment is one filter tap (C inputs of one shifted pixel) for the forward pass, or one output
// row for the filter gradient, and the accumulators stay in registers across all of them.
//
// Every element of C is summed in the same order whatever the thread count, the ISA aside: tile
// shapes and K order depend on the ISA only, never on how tiles are spread over threads.
#pragma once

#include <cstdint>
#include <string>

namespace rd::gemm {

// One stretch of the K dimension: K indices [0, len) of this segment read A at `a` and B at `b`
// (offsets in floats from the tile's bases).
struct Seg {
  int64_t a, b, len;
};

// C[m × n] (=, or += when accumulate) Σ over segments Σ_k A(i, k)·B(k, j), with
//   A(i, k) = a[seg.a + i·rsA + k·csA],  B(k, j) = b[seg.b + k·ldb + j],  C(i, j) = c[i·rsC + j].
// m ≤ the kernel's mr, n ≤ its nr; B's rows must be contiguous over the n columns.
struct Tile {
  const float* a;
  int64_t rsA, csA;
  const float* b;
  int64_t ldb;
  float* c;
  int64_t rsC;
  const Seg* segs;
  int nseg;
  int m, n;
  bool accumulate;
};

// The micro-kernels of one instruction set.
struct Kernels {
  const char* name;  // "avx512", "avx2", "generic"
  int mr, nr;        // largest tile: rows × columns
  void (*run)(const Tile&);
};

// Defined in gemm_avx512.cc / gemm_avx2.cc (x86-64 only) and gemm_generic.cc.
const Kernels* avx512Kernels();
const Kernels* avx2Kernels();
const Kernels* genericKernels();

// The kernels in use: the best the CPU runs, unless RINGDIFF_GEMM or select() chose others.
const Kernels& kernels();

// Chooses the kernels by name ("auto", "avx512", "avx2", "generic"; "openblas" also routes plain
// matrix products to OpenBLAS when it loaded). Returns false, changing nothing, if this CPU or
// build cannot run them.
bool select(const std::string& name);

// Plain matrix products go to OpenBLAS: when RINGDIFF_GEMM=openblas, or by default when
// OpenBLAS loaded and this CPU runs only the portable kernels (no AVX2), where OpenBLAS's own
// kernels measured 3-5x faster. On AVX2 and AVX-512 ours measured as fast or faster (see
// `calibrate`), so they are kept. A rule rather than a timing at start-up: processes of one job,
// or a job and its resumption, must not pick different kernels on a noisy machine (the last bits
// of a gradient would differ).
bool matmulUsesOpenBlas();

// One line for `doctor`: which GEMM runs, and why.
std::string describe();

// Times our kernels and OpenBLAS (if loaded) on three products a diffusion model multiplies, one
// thread each, best of five: milliseconds in total, theirs < 0 when OpenBLAS is absent. For
// `doctor`; it changes nothing.
struct Calibration {
  double oursMs, theirsMs;
};
Calibration calibrate();

// cblas_sgemm with row-major layout if OpenBLAS was loaded, else nullptr.
using SgemmFn = void (*)(int layout, int transA, int transB, int M, int N, int K, float alpha, const float* A,
                         int lda, const float* B, int ldb, float beta, float* C, int ldc);
SgemmFn openBlasSgemm();

}  // namespace rd::gemm
