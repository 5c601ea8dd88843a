// Portable micro-kernels over GCC/Clang vector extensions (4 floats): SSE2 on any x86-64, NEON on
// arm64, scalar code elsewhere. Tiles of 4 rows × 16 columns.
#include <cstring>

#include "gemm.h"

namespace rd::gemm::generic {

typedef float F4 __attribute__((vector_size(16)));

struct V {
  using T = F4;
  using Mask = int;  // number of lanes in use
  static constexpr int W = 4;
  static T zero() { return T{0.f, 0.f, 0.f, 0.f}; }
  static T load(const float* p) {
    T v;
    std::memcpy(&v, p, sizeof v);
    return v;
  }
  static T loadMask(const float* p, Mask m) {
    T v = zero();
    for (int i = 0; i < m; ++i) v[i] = p[i];
    return v;
  }
  static T bcast(const float* p) { return T{*p, *p, *p, *p}; }
  // No fused multiply-add is assumed here: a·b + c rounds twice, as plain C does.
  static T fma(T a, T b, T c) { return a * b + c; }
  static void store(float* p, T v) { std::memcpy(p, &v, sizeof v); }
  static void storeMask(float* p, T v, Mask m) {
    for (int i = 0; i < m; ++i) p[i] = v[i];
  }
  static Mask mask(int n) { return n > 4 ? 4 : n; }
};

#include "microkernel.h"

constexpr int kMR = 4, kNV = 4;
const Kernels kKernels{"generic", kMR, kNV * V::W, runTile<kMR, kNV>};

}  // namespace rd::gemm::generic

const rd::gemm::Kernels* rd::gemm::genericKernels() { return &generic::kKernels; }
