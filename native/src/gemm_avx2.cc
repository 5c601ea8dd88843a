// AVX2/FMA micro-kernels: tiles of 4 rows × 16 columns (8 ymm accumulators; 16 registers leave
// no room for the 6 × 16 tile's 12 plus its operands without spills under GCC). Compiled with
// -mavx2 -mfma (binding.gyp) and run only where the CPU reports both.
#include "gemm.h"

#if defined(__x86_64__) && defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>

namespace rd::gemm::avx2 {

struct V {
  using T = __m256;
  using Mask = __m256i;
  static constexpr int W = 8;
  static T zero() { return _mm256_setzero_ps(); }
  static T load(const float* p) { return _mm256_loadu_ps(p); }
  static T loadMask(const float* p, Mask m) { return _mm256_maskload_ps(p, m); }
  static T bcast(const float* p) { return _mm256_broadcast_ss(p); }
  static T fma(T a, T b, T c) { return _mm256_fmadd_ps(a, b, c); }
  static void store(float* p, T v) { _mm256_storeu_ps(p, v); }
  static void storeMask(float* p, T v, Mask m) { _mm256_maskstore_ps(p, m, v); }
  static Mask mask(int n) {
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
  }
};

#include "microkernel.h"

constexpr int kMR = 4, kNV = 2;
const Kernels kKernels{"avx2", kMR, kNV * V::W, runTile<kMR, kNV>};

}  // namespace rd::gemm::avx2

const rd::gemm::Kernels* rd::gemm::avx2Kernels() { return &avx2::kKernels; }

#else
const rd::gemm::Kernels* rd::gemm::avx2Kernels() { return nullptr; }
#endif
