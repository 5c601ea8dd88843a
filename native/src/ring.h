// Element kernels of the ring all-reduce (src/allreduce/reduce.ts) and their N-API bindings.
//
// Every kernel gives exactly the bits of its JavaScript twin: float32 additions and divisions are
// done one element at a time in IEEE single precision (SIMD lanes are independent, and nothing is
// reassociated or fused), and the fp16 conversions round to nearest even with the same NaN
// canonicalisation as src/allreduce/fp16.ts. The ring's bit-reproducibility rests on it.
#pragma once

#include <napi.h>

#include <cstddef>
#include <cstdint>

namespace rd {
namespace ring {

// out[i] = a[i] + b[i] (out may alias a or b).
void add(float* out, const float* a, const float* b, size_t n);
// x[i] = (x[i] + y[i]) / divisor (divisor 1: plain add).
void addDiv(float* x, const float* y, float divisor, size_t n);
// x[i] = x[i] / divisor.
void scale(float* x, float divisor, size_t n);
// dst[i] = fp16(src[i]).
void toHalf(const float* src, uint16_t* dst, size_t n);
// dst[i] = float32(src[i]).
void fromHalf(const uint16_t* src, float* dst, size_t n);
// out[i] = fp16(float32(half[i]) + local[i]) (out may alias half).
void addHalf(uint16_t* out, const uint16_t* half, const float* local, size_t n);
// s = (float32(half[i]) + local[i]) / divisor; half[i] = fp16(s); local[i] = float32(half[i]).
void addHalfFinal(uint16_t* half, float* local, float divisor, size_t n);

// Adds the ring functions (ringAdd, ringAddDiv, ..., ringRelease, ringInfo) to the addon's exports.
void exportRing(Napi::Env env, Napi::Object exports);

}  // namespace ring
}  // namespace rd
