// Ring all-reduce kernels: see ring.h. AVX2 (+F16C for fp16) paths are chosen at run time, so
// the addon stays portable; the scalar paths are the reference and give the same bits.
#include "ring.h"

#include <cstring>
#include <string>
#include <vector>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define RD_RING_X86 1
#endif

namespace rd {
namespace ring {
namespace {

inline uint32_t bitsOf(float x) {
  uint32_t u;
  std::memcpy(&u, &x, 4);
  return u;
}

// fp16 bits of the float32 with bits `x`, rounded to nearest even; NaN becomes sign | 0x7e00.
// Same case split as bitsToHalf in src/allreduce/fp16.ts.
inline uint16_t halfOfBits(uint32_t x) {
  const uint32_t sign = (x >> 16) & 0x8000u;
  const uint32_t a = x & 0x7fffffffu;
  if (a >= 0x38800000u) {
    if (a >= 0x477ff000u) return (uint16_t)(sign | (a > 0x7f800000u ? 0x7e00u : 0x7c00u));
    return (uint16_t)(sign | ((a - 0x38000000u + 0xfffu + ((a >> 13) & 1u)) >> 13));
  }
  if (a <= 0x33000000u) return (uint16_t)sign;
  const uint32_t e = a >> 23;
  const uint32_t m = (a & 0x7fffffu) | 0x800000u;
  const uint32_t shift = 126 - e;  // 14 ... 24
  const uint32_t q = m >> shift;
  const uint32_t rem = m & ((1u << shift) - 1);
  const uint32_t half = 1u << (shift - 1);
  return (uint16_t)(sign | (q + ((rem > half || (rem == half && (q & 1u))) ? 1u : 0u)));
}

// float32 of every fp16 bit pattern; every NaN maps to the quiet NaN 0x7fc00000, as the
// JavaScript table does (V8 stores one canonical NaN).
const float* halfTable() {
  static const std::vector<float> table = [] {
    std::vector<float> t(65536);
    for (uint32_t h = 0; h < 65536; ++h) {
      const uint32_t s = (h & 0x8000u) << 16;
      const uint32_t e = (h >> 10) & 0x1fu;
      const uint32_t m = h & 0x3ffu;
      uint32_t bits;
      if (e == 31) {
        bits = m == 0 ? (s | 0x7f800000u) : 0x7fc00000u;
      } else if (e != 0) {
        bits = s | ((e + 112) << 23) | (m << 13);
      } else if (m == 0) {
        bits = s;
      } else {
        // Subnormal half: m · 2^-24, exact in float32.
        const float v = (float)m * (1.0f / 16777216.0f);
        bits = s | bitsOf(v);
      }
      std::memcpy(&t[h], &bits, 4);
    }
    return t;
  }();
  return table.data();
}

#ifdef RD_RING_X86
bool haveAvx2() {
  static const bool v = __builtin_cpu_supports("avx2");
  return v;
}
bool haveF16c() {
  static const bool v = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("f16c");
  return v;
}

__attribute__((target("avx2"))) void addAvx2(float* out, const float* a, const float* b, size_t n) {
  size_t i = 0;
  for (; i + 32 <= n; i += 32) {
    const __m256 s0 = _mm256_add_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i));
    const __m256 s1 = _mm256_add_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8));
    const __m256 s2 = _mm256_add_ps(_mm256_loadu_ps(a + i + 16), _mm256_loadu_ps(b + i + 16));
    const __m256 s3 = _mm256_add_ps(_mm256_loadu_ps(a + i + 24), _mm256_loadu_ps(b + i + 24));
    _mm256_storeu_ps(out + i, s0);
    _mm256_storeu_ps(out + i + 8, s1);
    _mm256_storeu_ps(out + i + 16, s2);
    _mm256_storeu_ps(out + i + 24, s3);
  }
  for (; i + 8 <= n; i += 8)
    _mm256_storeu_ps(out + i, _mm256_add_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i)));
  for (; i < n; ++i) out[i] = a[i] + b[i];
}

__attribute__((target("avx2"))) void addDivAvx2(float* x, const float* y, float divisor, size_t n) {
  const __m256 d = _mm256_set1_ps(divisor);
  size_t i = 0;
  for (; i + 16 <= n; i += 16) {
    const __m256 s0 = _mm256_add_ps(_mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i));
    const __m256 s1 = _mm256_add_ps(_mm256_loadu_ps(x + i + 8), _mm256_loadu_ps(y + i + 8));
    _mm256_storeu_ps(x + i, _mm256_div_ps(s0, d));
    _mm256_storeu_ps(x + i + 8, _mm256_div_ps(s1, d));
  }
  for (; i < n; ++i) x[i] = (x[i] + y[i]) / divisor;
}

__attribute__((target("avx2"))) void scaleAvx2(float* x, float divisor, size_t n) {
  const __m256 d = _mm256_set1_ps(divisor);
  size_t i = 0;
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(x + i, _mm256_div_ps(_mm256_loadu_ps(x + i), d));
  for (; i < n; ++i) x[i] = x[i] / divisor;
}

// The hardware conversion keeps (part of) a NaN's payload; the JavaScript one does not.
inline void fixNaNs(const float* src, uint16_t* dst, int mask) {
  while (mask) {
    const int j = __builtin_ctz((unsigned)mask);
    dst[j] = (uint16_t)(((bitsOf(src[j]) >> 16) & 0x8000u) | 0x7e00u);
    mask &= mask - 1;
  }
}

// Eight halves → float32, NaNs canonical (see halfTable).
__attribute__((target("avx2,f16c"))) inline __m256 load8Half(const uint16_t* p) {
  const __m256 f = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  const __m256 nan = _mm256_cmp_ps(f, f, _CMP_UNORD_Q);
  return _mm256_blendv_ps(f, _mm256_castsi256_ps(_mm256_set1_epi32(0x7fc00000)), nan);
}

// Eight float32 → halves (round to nearest even), NaNs as the JavaScript encoder writes them.
__attribute__((target("avx2,f16c"))) inline __m128i store8Half(uint16_t* p, __m256 v) {
  const __m128i h = _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT);
  _mm_storeu_si128(reinterpret_cast<__m128i*>(p), h);
  const int nan = _mm256_movemask_ps(_mm256_cmp_ps(v, v, _CMP_UNORD_Q));
  if (nan) {
    alignas(32) float tmp[8];
    _mm256_store_ps(tmp, v);
    fixNaNs(tmp, p, nan);
    return _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  }
  return h;
}

__attribute__((target("avx2,f16c"))) void toHalfF16c(const float* src, uint16_t* dst, size_t n) {
  size_t i = 0;
  for (; i + 8 <= n; i += 8) store8Half(dst + i, _mm256_loadu_ps(src + i));
  for (; i < n; ++i) dst[i] = halfOfBits(bitsOf(src[i]));
}

__attribute__((target("avx2,f16c"))) void fromHalfF16c(const uint16_t* src, float* dst, size_t n) {
  const float* t = halfTable();
  size_t i = 0;
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(dst + i, load8Half(src + i));
  for (; i < n; ++i) dst[i] = t[src[i]];
}

__attribute__((target("avx2,f16c"))) void addHalfF16c(uint16_t* out, const uint16_t* half, const float* local,
                                                       size_t n) {
  const float* t = halfTable();
  size_t i = 0;
  for (; i + 8 <= n; i += 8) store8Half(out + i, _mm256_add_ps(load8Half(half + i), _mm256_loadu_ps(local + i)));
  for (; i < n; ++i) out[i] = halfOfBits(bitsOf(t[half[i]] + local[i]));
}

__attribute__((target("avx2,f16c"))) void addHalfFinalF16c(uint16_t* half, float* local, float divisor, size_t n) {
  const float* t = halfTable();
  const __m256 d = _mm256_set1_ps(divisor);
  const bool div = divisor != 1.0f;
  const __m256 canon = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fc00000));
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    __m256 s = _mm256_add_ps(load8Half(half + i), _mm256_loadu_ps(local + i));
    if (div) s = _mm256_div_ps(s, d);
    const __m128i h = store8Half(half + i, s);
    const __m256 back = _mm256_cvtph_ps(h);
    _mm256_storeu_ps(local + i, _mm256_blendv_ps(back, canon, _mm256_cmp_ps(back, back, _CMP_UNORD_Q)));
  }
  for (; i < n; ++i) {
    float s = t[half[i]] + local[i];
    if (div) s = s / divisor;
    const uint16_t h = halfOfBits(bitsOf(s));
    half[i] = h;
    local[i] = t[h];
  }
}
#endif  // RD_RING_X86

}  // namespace

void add(float* out, const float* a, const float* b, size_t n) {
#ifdef RD_RING_X86
  if (haveAvx2()) return addAvx2(out, a, b, n);
#endif
  for (size_t i = 0; i < n; ++i) out[i] = a[i] + b[i];
}

void addDiv(float* x, const float* y, float divisor, size_t n) {
  if (divisor == 1.0f) return add(x, x, y, n);
#ifdef RD_RING_X86
  if (haveAvx2()) return addDivAvx2(x, y, divisor, n);
#endif
  for (size_t i = 0; i < n; ++i) x[i] = (x[i] + y[i]) / divisor;
}

void scale(float* x, float divisor, size_t n) {
  if (divisor == 1.0f) return;
#ifdef RD_RING_X86
  if (haveAvx2()) return scaleAvx2(x, divisor, n);
#endif
  for (size_t i = 0; i < n; ++i) x[i] = x[i] / divisor;
}

void toHalf(const float* src, uint16_t* dst, size_t n) {
#ifdef RD_RING_X86
  if (haveF16c()) return toHalfF16c(src, dst, n);
#endif
  for (size_t i = 0; i < n; ++i) dst[i] = halfOfBits(bitsOf(src[i]));
}

void fromHalf(const uint16_t* src, float* dst, size_t n) {
#ifdef RD_RING_X86
  if (haveF16c()) return fromHalfF16c(src, dst, n);
#endif
  const float* t = halfTable();
  for (size_t i = 0; i < n; ++i) dst[i] = t[src[i]];
}

void addHalf(uint16_t* out, const uint16_t* half, const float* local, size_t n) {
#ifdef RD_RING_X86
  if (haveF16c()) return addHalfF16c(out, half, local, n);
#endif
  const float* t = halfTable();
  for (size_t i = 0; i < n; ++i) out[i] = halfOfBits(bitsOf(t[half[i]] + local[i]));
}

void addHalfFinal(uint16_t* half, float* local, float divisor, size_t n) {
#ifdef RD_RING_X86
  if (haveF16c()) return addHalfFinalF16c(half, local, divisor, n);
#endif
  const float* t = halfTable();
  for (size_t i = 0; i < n; ++i) {
    float s = t[half[i]] + local[i];
    if (divisor != 1.0f) s = s / divisor;
    const uint16_t h = halfOfBits(bitsOf(s));
    half[i] = h;
    local[i] = t[h];
  }
}

// -------------------------------------------------------------------------------------------
// N-API bindings. Arguments are checked here (types and lengths), so a bad call throws a
// TypeError/RangeError instead of touching memory it should not.

namespace {

template <typename T, napi_typedarray_type kType>
struct View {
  T* data;
  size_t length;
};

template <typename T, napi_typedarray_type kType>
View<T, kType> view(const Napi::Value& v, const char* what) {
  if (!v.IsTypedArray() || v.As<Napi::TypedArray>().TypedArrayType() != kType) {
    throw Napi::TypeError::New(v.Env(), std::string(what) + (kType == napi_float32_array
                                                                 ? " must be a Float32Array"
                                                                 : " must be a Uint16Array"));
  }
  auto a = v.As<Napi::TypedArrayOf<T>>();
  return {a.Data(), a.ElementLength()};
}

using F32 = View<float, napi_float32_array>;
using U16 = View<uint16_t, napi_uint16_array>;

F32 f32(const Napi::Value& v, const char* what) { return view<float, napi_float32_array>(v, what); }
U16 u16(const Napi::Value& v, const char* what) { return view<uint16_t, napi_uint16_array>(v, what); }

void atLeast(const Napi::Env& env, size_t have, size_t n, const char* what) {
  if (have < n) throw Napi::RangeError::New(env, std::string(what) + " is too short");
}

float divisorOf(const Napi::Value& v) {
  const double d = v.As<Napi::Number>().DoubleValue();
  // The ring divides by the world size: an integer, exact in float32 (so float32 division gives
  // the bits of JavaScript's double division rounded to float32).
  if (!(d >= 1 && d <= 16777216 && d == (double)(float)d)) {
    throw Napi::RangeError::New(v.Env(), "divisor must be an integer in [1, 2^24]");
  }
  return (float)d;
}

// ringAdd(dst, src): dst += src over dst.length elements.
Napi::Value Add(const Napi::CallbackInfo& info) {
  F32 d = f32(info[0], "dst"), s = f32(info[1], "src");
  atLeast(info.Env(), s.length, d.length, "add: source");
  add(d.data, d.data, s.data, d.length);
  return info.Env().Undefined();
}

// ringAdd3(out, a, b): out = a + b over out.length elements.
Napi::Value Add3(const Napi::CallbackInfo& info) {
  F32 o = f32(info[0], "out"), a = f32(info[1], "a"), b = f32(info[2], "b");
  atLeast(info.Env(), a.length, o.length, "add3: a");
  atLeast(info.Env(), b.length, o.length, "add3: b");
  add(o.data, a.data, b.data, o.length);
  return info.Env().Undefined();
}

// ringAddDiv(dst, src, divisor)
Napi::Value AddDiv(const Napi::CallbackInfo& info) {
  F32 d = f32(info[0], "dst"), s = f32(info[1], "src");
  atLeast(info.Env(), s.length, d.length, "addDiv: source");
  addDiv(d.data, s.data, divisorOf(info[2]), d.length);
  return info.Env().Undefined();
}

// ringScale(x, divisor)
Napi::Value Scale(const Napi::CallbackInfo& info) {
  F32 x = f32(info[0], "x");
  scale(x.data, divisorOf(info[1]), x.length);
  return info.Env().Undefined();
}

// ringToHalf(src, dst): over src.length elements.
Napi::Value ToHalf(const Napi::CallbackInfo& info) {
  F32 s = f32(info[0], "src");
  U16 d = u16(info[1], "dst");
  atLeast(info.Env(), d.length, s.length, "toHalf: destination");
  toHalf(s.data, d.data, s.length);
  return info.Env().Undefined();
}

// ringFromHalf(src, dst): over src.length elements.
Napi::Value FromHalf(const Napi::CallbackInfo& info) {
  U16 s = u16(info[0], "src");
  F32 d = f32(info[1], "dst");
  atLeast(info.Env(), d.length, s.length, "fromHalf: destination");
  fromHalf(s.data, d.data, s.length);
  return info.Env().Undefined();
}

// ringAddHalf(out, half, local): over out.length elements.
Napi::Value AddHalf(const Napi::CallbackInfo& info) {
  U16 o = u16(info[0], "out"), h = u16(info[1], "half");
  F32 l = f32(info[2], "local");
  atLeast(info.Env(), h.length, o.length, "addHalf: half");
  atLeast(info.Env(), l.length, o.length, "addHalf: local");
  addHalf(o.data, h.data, l.data, o.length);
  return info.Env().Undefined();
}

// ringAddHalfFinal(half, local, divisor): over half.length elements.
Napi::Value AddHalfFinal(const Napi::CallbackInfo& info) {
  U16 h = u16(info[0], "half");
  F32 l = f32(info[1], "local");
  atLeast(info.Env(), l.length, h.length, "addHalfFinal: local");
  addHalfFinal(h.data, l.data, divisorOf(info[2]), h.length);
  return info.Env().Undefined();
}

// ringRelease(bytes): detaches the ArrayBuffer behind a Uint8Array that spans all of it, so that
// its memory is returned now rather than at the next garbage collection. For a message received
// by zeromq.js (an external buffer) this releases the ZeroMQ message at once and takes back the
// external-memory pressure it reported, which otherwise triggers a full V8 GC every few tens of
// megabytes received. Returns whether it detached; the caller must hold no other view of it.
Napi::Value Release(const Napi::CallbackInfo& info) {
  napi_env env = info.Env();
  napi_value v = info[0];
  bool isTyped = false;
  if (napi_is_typedarray(env, v, &isTyped) != napi_ok || !isTyped) return Napi::Boolean::New(env, false);
  napi_typedarray_type type;
  size_t length = 0, offset = 0;
  void* data = nullptr;
  napi_value ab;
  if (napi_get_typedarray_info(env, v, &type, &length, &data, &ab, &offset) != napi_ok) {
    return Napi::Boolean::New(env, false);
  }
  void* abData = nullptr;
  size_t abLength = 0;
  if (type != napi_uint8_array || offset != 0 || napi_get_arraybuffer_info(env, ab, &abData, &abLength) != napi_ok ||
      abLength != length || length == 0) {
    return Napi::Boolean::New(env, false);
  }
  return Napi::Boolean::New(env, napi_detach_arraybuffer(env, ab) == napi_ok);
}

Napi::Value Info(const Napi::CallbackInfo& info) {
  auto env = info.Env();
  auto o = Napi::Object::New(env);
#ifdef RD_RING_X86
  o.Set("simd", Napi::String::New(env, haveF16c() ? "avx2+f16c" : haveAvx2() ? "avx2" : "scalar"));
#else
  o.Set("simd", Napi::String::New(env, "scalar"));
#endif
  return o;
}

}  // namespace

void exportRing(Napi::Env env, Napi::Object exports) {
  exports.Set("ringAdd", Napi::Function::New(env, Add));
  exports.Set("ringAdd3", Napi::Function::New(env, Add3));
  exports.Set("ringAddDiv", Napi::Function::New(env, AddDiv));
  exports.Set("ringScale", Napi::Function::New(env, Scale));
  exports.Set("ringToHalf", Napi::Function::New(env, ToHalf));
  exports.Set("ringFromHalf", Napi::Function::New(env, FromHalf));
  exports.Set("ringAddHalf", Napi::Function::New(env, AddHalf));
  exports.Set("ringAddHalfFinal", Napi::Function::New(env, AddHalfFinal));
  exports.Set("ringRelease", Napi::Function::New(env, Release));
  exports.Set("ringInfo", Napi::Function::New(env, Info));
}

}  // namespace ring
}  // namespace rd
