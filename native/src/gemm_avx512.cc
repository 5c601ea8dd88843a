// AVX-512 micro-kernels: tiles of 8 rows × 32 columns (16 zmm accumulators). Compiled with
// -mavx512f (binding.gyp) and run only where the CPU reports AVX-512F.
#include "gemm.h"

#if defined(__x86_64__) && defined(__AVX512F__)
#include <immintrin.h>

namespace rd::gemm::avx512 {

struct V {
  using T = __m512;
  using Mask = __mmask16;
  static constexpr int W = 16;
  static T zero() { return _mm512_setzero_ps(); }
  static T load(const float* p) { return _mm512_loadu_ps(p); }
  static T loadMask(const float* p, Mask m) { return _mm512_maskz_loadu_ps(m, p); }
  static T bcast(const float* p) { return _mm512_set1_ps(*p); }
  static T fma(T a, T b, T c) { return _mm512_fmadd_ps(a, b, c); }
  static void store(float* p, T v) { _mm512_storeu_ps(p, v); }
  static void storeMask(float* p, T v, Mask m) { _mm512_mask_storeu_ps(p, m, v); }
  static Mask mask(int n) { return (Mask)(n >= 16 ? 0xffff : ((1u << n) - 1)); }
};

#include "microkernel.h"

constexpr int kMR = 8, kNV = 2;
const Kernels kKernels{"avx512", kMR, kNV * V::W, runTile<kMR, kNV>};

}  // namespace rd::gemm::avx512

const rd::gemm::Kernels* rd::gemm::avx512Kernels() { return &avx512::kKernels; }

#else
const rd::gemm::Kernels* rd::gemm::avx512Kernels() { return nullptr; }
#endif
