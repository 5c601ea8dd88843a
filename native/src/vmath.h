// Scalar maths written to auto-vectorise inside the kernels' loops (always inlined, so each
// caller's instruction-set clone gets its own vector version).
#pragma once

#include <cstdint>
#include <cstring>

#ifndef RD_INLINE
#define RD_INLINE inline __attribute__((always_inline))
#endif

// Loops marked RD_SIMD are compiled for AVX-512 (x86-64-v4), AVX2 (x86-64-v3) and the baseline,
// and the loader picks the version the CPU runs (GCC's target_clones): the addon stays portable
// across the machines a build may be copied to. Helpers of RD_SIMD loops must be RD_INLINE so
// that each clone gets its own vector version of them.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && defined(__GLIBC__)
#define RD_SIMD __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define RD_SIMD
#endif

namespace rd {

// exp(x) for float x, vectorisable: x = n·ln2 + r, |r| ≤ ln2/2, e^r from Cephes' degree-6
// polynomial (≈1 ulp), 2^n applied as two factors so that overflow gives +inf and underflow
// subnormals or 0 as std::exp would. The clamps turn NaN into a finite stand-in (comparisons
// with NaN are false), which keeps the integer conversion defined; the NaN is put back at the
// end. (Testing x == x up front instead made GCC evaluate the whole polynomial twice.)
RD_INLINE float expApprox(float x) {
  float xc = x > -104.f ? x : -104.f;
  xc = xc < 88.8f ? xc : 88.8f;
  // floor(x·log2(e) + 1/2) by truncating a positive number (x·log2(e) ≥ −150.1 here).
  const int32_t n = (int32_t)(xc * 1.44269504088896341f + 256.5f) - 256;
  const float fn = (float)n;
  float r = xc - fn * 0.693359375f;
  r = r - fn * -2.12194440e-4f;
  const float z = r * r;
  float y = 1.9875691500e-4f;
  y = y * r + 1.3981999507e-3f;
  y = y * r + 8.3334519073e-3f;
  y = y * r + 4.1665795894e-2f;
  y = y * r + 1.6666665459e-1f;
  y = y * r + 5.0000001201e-1f;
  y = y * z + r + 1.f;
  const int32_t h = n >> 1;  // n ∈ [−150, 128]: both factors are normal floats
  const int32_t e1 = (h + 127) << 23, e2 = (n - h + 127) << 23;
  float p1, p2;
  std::memcpy(&p1, &e1, sizeof p1);
  std::memcpy(&p2, &e2, sizeof p2);
  const float res = y * p1 * p2;
  return x == x ? res : x;
}

// σ(x) = 1 / (1 + e^−x).
RD_INLINE float sigmoid(float x) { return 1.f / (1.f + expApprox(-x)); }

}  // namespace rd
