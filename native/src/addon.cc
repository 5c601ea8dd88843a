// N-API surface of ringdiff's native CPU kernels. JavaScript owns every buffer (inputs and the
// preallocated output), so no memory crosses the boundary and calls stay synchronous, as TF.js
// kernels must be.
#include <napi.h>

#include <mutex>
#include <string>

#include "elementwise.h"
#include "gemm.h"
#include "kernels.h"
#include "norm.h"
#include "optim.h"
#include "ring.h"
#include "shm.h"

namespace {

// Kernels share one pool and scratch space; worker_threads loading the addon must take turns.
std::mutex g_call;

struct F32 {
  float* data;
  size_t length;
};

F32 f32(const Napi::Value& v, const char* what) {
  if (!v.IsTypedArray() || v.As<Napi::TypedArray>().TypedArrayType() != napi_float32_array) {
    throw Napi::TypeError::New(v.Env(), std::string(what) + " must be a Float32Array");
  }
  auto a = v.As<Napi::Float32Array>();
  return {a.Data(), a.ElementLength()};
}

const float* optF32(const Napi::Value& v, const char* what, size_t* len) {
  if (v.IsNull() || v.IsUndefined()) {
    *len = 0;
    return nullptr;
  }
  F32 a = f32(v, what);
  *len = a.length;
  return a.data;
}

Napi::Int32Array i32(const Napi::Value& v, const char* what, size_t minLen) {
  if (!v.IsTypedArray() || v.As<Napi::TypedArray>().TypedArrayType() != napi_int32_array) {
    throw Napi::TypeError::New(v.Env(), std::string(what) + " must be an Int32Array");
  }
  auto a = v.As<Napi::Int32Array>();
  if (a.ElementLength() < minLen) throw Napi::RangeError::New(v.Env(), std::string(what) + " is too short");
  return a;
}

void need(const Napi::Env& env, const F32& a, int64_t n, const char* what) {
  if (n < 0 || (int64_t)a.length < n) {
    throw Napi::RangeError::New(env, std::string(what) + " is smaller than its shape says");
  }
}

rd::ConvGeom geom(const Napi::Value& v) {
  const int32_t* p = i32(v, "conv geometry", 15).Data();
  rd::ConvGeom g{p[0], p[1], p[2], p[3], p[4], p[5], p[6], p[7], p[8], p[9], p[10], p[11], p[12], p[13], p[14]};
  if (g.N < 0 || g.H < 1 || g.W < 1 || g.C < 1 || g.KH < 1 || g.KW < 1 || g.OC < 1 || g.OH < 0 || g.OW < 0 ||
      g.sh < 1 || g.sw < 1 || g.dh < 1 || g.dw < 1) {
    throw Napi::RangeError::New(v.Env(), "invalid conv geometry");
  }
  return g;
}

// images > 0: a convolution over that many images, whose bias may also be one per image.
rd::Epilogue epilogue(const Napi::CallbackInfo& info, size_t at, int64_t cols, int64_t images = 0) {
  rd::Epilogue e;
  size_t len = 0;
  e.bias = optF32(info[at], "bias", &len);
  e.biasLen = (int64_t)len;
  e.act = info[at + 1].As<Napi::Number>().Int32Value();
  e.alpha = info[at + 2].As<Napi::Number>().FloatValue();
  e.prelu = optF32(info[at + 3], "prelu weights", &len);
  e.preluLen = (int64_t)len;
  if (e.bias && images > 1 && e.biasLen == images * cols) {
    e.biasLen = cols;
    e.biasImageStride = cols;
  } else if (e.bias && e.biasLen != 1 && e.biasLen != cols) {
    throw Napi::RangeError::New(info.Env(), "bias size mismatch");
  }
  if (e.act < rd::kLinear || e.act > rd::kPrelu) throw Napi::RangeError::New(info.Env(), "unknown activation");
  if (e.act == rd::kPrelu && (!e.prelu || (e.preluLen != 1 && e.preluLen != cols))) {
    throw Napi::RangeError::New(info.Env(), "prelu weights size mismatch");
  }
  return e;
}

// conv2d(x, filter, y, geom, bias|null, act, alpha, prelu|null)
Napi::Value Conv2d(const Napi::CallbackInfo& info) {
  auto env = info.Env();
  F32 x = f32(info[0], "x"), w = f32(info[1], "filter"), y = f32(info[2], "y");
  rd::ConvGeom g = geom(info[3]);
  need(env, x, g.N * g.H * g.W * g.C, "x");
  need(env, w, g.KH * g.KW * g.C * g.OC, "filter");
  need(env, y, g.N * g.OH * g.OW * g.OC, "y");
  rd::Epilogue e = epilogue(info, 4, g.OC, g.N);
  std::lock_guard<std::mutex> lk(g_call);
  rd::conv2dForward(g, x.data, w.data, y.data, e);
  return env.Undefined();
}

// conv2dBackpropInput(dy, filter, dx, geom)
Napi::Value Conv2dBackpropInput(const Napi::CallbackInfo& info) {
  auto env = info.Env();
  F32 dy = f32(info[0], "dy"), w = f32(info[1], "filter"), dx = f32(info[2], "dx");
  rd::ConvGeom g = geom(info[3]);
  need(env, dy, g.N * g.OH * g.OW * g.OC, "dy");
  need(env, w, g.KH * g.KW * g.C * g.OC, "filter");
  need(env, dx, g.N * g.H * g.W * g.C, "dx");
  std::lock_guard<std::mutex> lk(g_call);
  rd::conv2dBackpropInput(g, dy.data, w.data, dx.data);
  return env.Undefined();
}

// conv2dBackpropFilter(x, dy, dw, geom)
Napi::Value Conv2dBackpropFilter(const Napi::CallbackInfo& info) {
  auto env = info.Env();
  F32 x = f32(info[0], "x"), dy = f32(info[1], "dy"), dw = f32(info[2], "dw");
  rd::ConvGeom g = geom(info[3]);
  need(env, x, g.N * g.H * g.W * g.C, "x");
  need(env, dy, g.N * g.OH * g.OW * g.OC, "dy");
  need(env, dw, g.KH * g.KW * g.C * g.OC, "dw");
  std::lock_guard<std::mutex> lk(g_call);
  rd::conv2dBackpropFilter(g, x.data, dy.data, dw.data);
  return env.Undefined();
}

// matmul(a, b, out, dims [batch, M, N, K, transposeA, transposeB], aIdx, bIdx, bias|null, act,
//        alpha, prelu|null)
Napi::Value Matmul(const Napi::CallbackInfo& info) {
  auto env = info.Env();
  F32 a = f32(info[0], "a"), b = f32(info[1], "b"), out = f32(info[2], "out");
  const int32_t* d = i32(info[3], "matmul dims", 6).Data();
  const int64_t batch = d[0], M = d[1], N = d[2], K = d[3];
  if (batch < 0 || M < 0 || N < 0 || K < 0) throw Napi::RangeError::New(env, "invalid matmul dims");
  const int32_t* aIdx = i32(info[4], "aIdx", (size_t)batch).Data();
  const int32_t* bIdx = i32(info[5], "bIdx", (size_t)batch).Data();
  int64_t aBatches = 0, bBatches = 0;
  for (int64_t i = 0; i < batch; ++i) {
    if (aIdx[i] < 0 || bIdx[i] < 0) throw Napi::RangeError::New(env, "negative batch index");
    aBatches = std::max<int64_t>(aBatches, aIdx[i] + 1);
    bBatches = std::max<int64_t>(bBatches, bIdx[i] + 1);
  }
  need(env, a, aBatches * M * K, "a");
  need(env, b, bBatches * K * N, "b");
  need(env, out, batch * M * N, "out");
  rd::Epilogue e = epilogue(info, 6, N);
  std::lock_guard<std::mutex> lk(g_call);
  rd::matmul(batch, M, N, K, d[4] != 0, d[5] != 0, a.data, aIdx, b.data, bIdx, out.data, e);
  return env.Undefined();
}

rd::Shape shapeOf(const Napi::Value& v, const char* what) {
  if (!v.IsTypedArray() || v.As<Napi::TypedArray>().TypedArrayType() != napi_int32_array) {
    throw Napi::TypeError::New(v.Env(), std::string(what) + " must be an Int32Array");
  }
  auto a = v.As<Napi::Int32Array>();
  rd::Shape s(a.ElementLength());
  for (size_t i = 0; i < s.size(); ++i) {
    s[i] = a.Data()[i];
    if (s[i] < 0) throw Napi::RangeError::New(v.Env(), std::string(what) + " has a negative entry");
  }
  return s;
}

int64_t sizeOf(const rd::Shape& s) {
  int64_t n = 1;
  for (int64_t d : s) n *= d;
  return n;
}

// binary(op, a, aShape, b, bShape, out, outShape); shapes must broadcast to outShape.
Napi::Value Binary(const Napi::CallbackInfo& info) {
  auto env = info.Env();
  const int op = info[0].As<Napi::Number>().Int32Value();
  F32 a = f32(info[1], "a"), b = f32(info[3], "b"), out = f32(info[5], "out");
  rd::Shape as = shapeOf(info[2], "a shape"), bs = shapeOf(info[4], "b shape"), os = shapeOf(info[6], "out shape");
  if (op < rd::kAdd || op > rd::kMinimum) throw Napi::RangeError::New(env, "unknown binary op");
  if (as.size() > os.size() || bs.size() > os.size()) throw Napi::RangeError::New(env, "operand rank too large");
  for (const rd::Shape* s : {&as, &bs}) {
    for (size_t k = 0; k < s->size(); ++k) {
      const int64_t d = (*s)[s->size() - 1 - k], o = os[os.size() - 1 - k];
      if (d != 1 && d != o) throw Napi::RangeError::New(env, "shapes do not broadcast");
    }
  }
  need(env, a, sizeOf(as), "a");
  need(env, b, sizeOf(bs), "b");
  need(env, out, sizeOf(os), "out");
  std::lock_guard<std::mutex> lk(g_call);
  rd::binary(op, a.data, as, b.data, bs, out.data, os);
  return env.Undefined();
}

// reduceSum(x, shape, reduceMask, out, scale)
Napi::Value ReduceSum(const Napi::CallbackInfo& info) {
  auto env = info.Env();
  F32 x = f32(info[0], "x"), out = f32(info[3], "out");
  rd::Shape shape = shapeOf(info[1], "shape"), mask = shapeOf(info[2], "reduce mask");
  if (mask.size() != shape.size()) throw Napi::RangeError::New(env, "reduce mask rank mismatch");
  std::vector<bool> red(shape.size());
  int64_t outSize = 1;
  for (size_t i = 0; i < shape.size(); ++i) {
    red[i] = mask[i] != 0;
    if (!red[i]) outSize *= shape[i];
  }
  need(env, x, sizeOf(shape), "x");
  need(env, out, outSize, "out");
  const double scale = info[4].As<Napi::Number>().DoubleValue();
  std::lock_guard<std::mutex> lk(g_call);
  rd::reduceSum(x.data, shape, red, out.data, scale);
  return env.Undefined();
}

// slice(x, shape, begin, size, out)
Napi::Value Slice(const Napi::CallbackInfo& info) {
  auto env = info.Env();
  F32 x = f32(info[0], "x"), out = f32(info[4], "out");
  rd::Shape shape = shapeOf(info[1], "shape"), begin = shapeOf(info[2], "begin"), size = shapeOf(info[3], "size");
  if (begin.size() != shape.size() || size.size() != shape.size()) throw Napi::RangeError::New(env, "slice rank mismatch");
  for (size_t i = 0; i < shape.size(); ++i) {
    if (begin[i] + size[i] > shape[i]) throw Napi::RangeError::New(env, "slice out of bounds");
  }
  need(env, x, sizeOf(shape), "x");
  need(env, out, sizeOf(size), "out");
  std::lock_guard<std::mutex> lk(g_call);
  rd::slice(x.data, shape, begin, size, out.data);
  return env.Undefined();
}

// tile(x, shape, reps, out)
Napi::Value Tile(const Napi::CallbackInfo& info) {
  auto env = info.Env();
  F32 x = f32(info[0], "x"), out = f32(info[3], "out");
  rd::Shape shape = shapeOf(info[1], "shape"), reps = shapeOf(info[2], "reps");
  if (reps.size() != shape.size()) throw Napi::RangeError::New(env, "tile rank mismatch");
  rd::Shape os(shape.size());
  for (size_t i = 0; i < shape.size(); ++i) os[i] = shape[i] * reps[i];
  need(env, x, sizeOf(shape), "x");
  need(env, out, sizeOf(os), "out");
  std::lock_guard<std::mutex> lk(g_call);
  rd::tile(x.data, shape, reps, out.data);
  return env.Undefined();
}

// unary(op, x, out, alpha)
Napi::Value Unary(const Napi::CallbackInfo& info) {
  auto env = info.Env();
  const int op = info[0].As<Napi::Number>().Int32Value();
  F32 x = f32(info[1], "x"), out = f32(info[2], "out");
  const float alpha = info.Length() > 3 ? info[3].As<Napi::Number>().FloatValue() : 0.f;
  if (op < rd::kUnarySigmoid || op > rd::kUnaryLast) throw Napi::RangeError::New(env, "unknown unary op");
  need(env, out, (int64_t)x.length, "out");
  std::lock_guard<std::mutex> lk(g_call);
  rd::unary(op, x.data, out.data, (int64_t)x.length, alpha);
  return env.Undefined();
}

// concat(xs: Float32Array[], inner: Int32Array, outer, out): out row r = row r of every x in turn.
Napi::Value Concat(const Napi::CallbackInfo& info) {
  auto env = info.Env();
  if (!info[0].IsArray()) throw Napi::TypeError::New(env, "xs must be an array");
  auto arr = info[0].As<Napi::Array>();
  const size_t n = arr.Length();
  const int32_t* in = i32(info[1], "inner", n).Data();
  const int64_t outer = info[2].As<Napi::Number>().Int64Value();
  F32 out = f32(info[3], "out");
  if (outer < 0) throw Napi::RangeError::New(env, "negative outer size");
  std::vector<const float*> xs(n);
  std::vector<int64_t> inner(n);
  int64_t width = 0;
  for (size_t i = 0; i < n; ++i) {
    F32 x = f32(arr.Get((uint32_t)i), "concat input");
    if (in[i] < 0) throw Napi::RangeError::New(env, "negative inner size");
    inner[i] = in[i];
    need(env, x, outer * inner[i], "concat input");
    xs[i] = x.data;
    width += inner[i];
  }
  need(env, out, outer * width, "out");
  std::lock_guard<std::mutex> lk(g_call);
  rd::concat(xs, inner, outer, out.data);
  return env.Undefined();
}

// transpose(x, shape, perm, out)
Napi::Value Transpose(const Napi::CallbackInfo& info) {
  auto env = info.Env();
  F32 x = f32(info[0], "x"), out = f32(info[3], "out");
  rd::Shape shape = shapeOf(info[1], "shape"), perm = shapeOf(info[2], "perm");
  if (perm.size() != shape.size()) throw Napi::RangeError::New(env, "perm rank mismatch");
  std::vector<bool> seen(shape.size(), false);
  for (int64_t p : perm) {
    if (p >= (int64_t)shape.size() || seen[p]) throw Napi::RangeError::New(env, "invalid permutation");
    seen[p] = true;
  }
  need(env, x, sizeOf(shape), "x");
  need(env, out, sizeOf(shape), "out");
  std::lock_guard<std::mutex> lk(g_call);
  rd::transpose(x.data, shape, perm, out.data);
  return env.Undefined();
}

// pad(x, shape, before, after, value, out)
Napi::Value Pad(const Napi::CallbackInfo& info) {
  auto env = info.Env();
  F32 x = f32(info[0], "x"), out = f32(info[5], "out");
  rd::Shape shape = shapeOf(info[1], "shape"), before = shapeOf(info[2], "before"), after = shapeOf(info[3], "after");
  if (before.size() != shape.size() || after.size() != shape.size()) throw Napi::RangeError::New(env, "pad rank mismatch");
  rd::Shape os(shape.size());
  for (size_t i = 0; i < shape.size(); ++i) os[i] = before[i] + shape[i] + after[i];
  need(env, x, sizeOf(shape), "x");
  need(env, out, sizeOf(os), "out");
  const float value = info[4].As<Napi::Number>().FloatValue();
  std::lock_guard<std::mutex> lk(g_call);
  rd::pad(x.data, shape, before, after, value, out.data);
  return env.Undefined();
}

rd::GroupNormShape groupNormShape(const Napi::CallbackInfo& info, size_t at) {
  const int32_t* d = i32(info[at], "group norm dims", 4).Data();
  rd::GroupNormShape s{d[0], d[1], d[2], d[3], info[at + 1].As<Napi::Number>().FloatValue(),
                       info[at + 2].As<Napi::Boolean>().Value()};
  if (s.B < 0 || s.HW < 0 || s.C < 1 || s.G < 1 || s.C % s.G != 0) {
    throw Napi::RangeError::New(info.Env(), "invalid group norm dims");
  }
  return s;
}

// groupNorm(x, gamma, beta, y, mean, rstd, dims [B, HW, C, G], eps, silu)
Napi::Value GroupNorm(const Napi::CallbackInfo& info) {
  auto env = info.Env();
  F32 x = f32(info[0], "x"), gamma = f32(info[1], "gamma"), beta = f32(info[2], "beta"), y = f32(info[3], "y"),
      mean = f32(info[4], "mean"), rstd = f32(info[5], "rstd");
  const rd::GroupNormShape s = groupNormShape(info, 6);
  need(env, x, s.B * s.HW * s.C, "x");
  need(env, y, s.B * s.HW * s.C, "y");
  need(env, gamma, s.C, "gamma");
  need(env, beta, s.C, "beta");
  need(env, mean, s.B * s.G, "mean");
  need(env, rstd, s.B * s.G, "rstd");
  std::lock_guard<std::mutex> lk(g_call);
  rd::groupNormForward(s, x.data, gamma.data, beta.data, y.data, mean.data, rstd.data);
  return env.Undefined();
}

// groupNormGrad(x, gamma, beta, mean, rstd, dy, dx, dgamma, dbeta, dims [B, HW, C, G], eps, silu)
Napi::Value GroupNormGrad(const Napi::CallbackInfo& info) {
  auto env = info.Env();
  F32 x = f32(info[0], "x"), gamma = f32(info[1], "gamma"), beta = f32(info[2], "beta"), mean = f32(info[3], "mean"),
      rstd = f32(info[4], "rstd"), dy = f32(info[5], "dy"), dx = f32(info[6], "dx"), dgamma = f32(info[7], "dgamma"),
      dbeta = f32(info[8], "dbeta");
  const rd::GroupNormShape s = groupNormShape(info, 9);
  for (const F32* t : {&x, &dy, &dx}) need(env, *t, s.B * s.HW * s.C, "x, dy and dx");
  for (const F32* t : {&gamma, &beta, &dgamma, &dbeta}) need(env, *t, s.C, "per-channel vectors");
  need(env, mean, s.B * s.G, "mean");
  need(env, rstd, s.B * s.G, "rstd");
  std::lock_guard<std::mutex> lk(g_call);
  rd::groupNormBackward(s, x.data, gamma.data, beta.data, mean.data, rstd.data, dy.data, dx.data, dgamma.data,
                        dbeta.data);
  return env.Undefined();
}

// adam(p, m, v, g, pOut, mOut, vOut, consts Float32Array [scale, b1, 1−b1, b2, 1−b2, bc1, bc2, eps, lr, lr·wd])
Napi::Value Adam(const Napi::CallbackInfo& info) {
  auto env = info.Env();
  F32 p = f32(info[0], "p"), m = f32(info[1], "m"), v = f32(info[2], "v"), g = f32(info[3], "g"),
      po = f32(info[4], "pOut"), mo = f32(info[5], "mOut"), vo = f32(info[6], "vOut"), k = f32(info[7], "consts");
  const int64_t n = (int64_t)p.length;
  for (const F32* t : {&m, &v, &g, &po, &mo, &vo}) need(env, *t, n, "adam operands");
  need(env, k, 10, "adam constants");
  const float* c = k.data;
  const rd::AdamStep s{c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7], c[8], c[9]};
  std::lock_guard<std::mutex> lk(g_call);
  rd::adamUpdate(n, s, p.data, m.data, v.data, g.data, po.data, mo.data, vo.data);
  return env.Undefined();
}

// ema(e, w, out, d, 1 − d): out = d·e + (1 − d)·w
Napi::Value Ema(const Napi::CallbackInfo& info) {
  auto env = info.Env();
  F32 e = f32(info[0], "e"), w = f32(info[1], "w"), out = f32(info[2], "out");
  const int64_t n = (int64_t)e.length;
  need(env, w, n, "w");
  need(env, out, n, "out");
  std::lock_guard<std::mutex> lk(g_call);
  rd::emaUpdate(n, info[3].As<Napi::Number>().FloatValue(), info[4].As<Napi::Number>().FloatValue(), e.data,
                w.data, out.data);
  return env.Undefined();
}

// setThreads(poolThreads)
Napi::Value SetThreads(const Napi::CallbackInfo& info) {
  const int pool = info[0].As<Napi::Number>().Int32Value();
  std::lock_guard<std::mutex> lk(g_call);
  rd::setThreads(pool);
  return info.Env().Undefined();
}

// setGemm(name): "auto", "avx512", "avx2", "generic" or "openblas"; false if it cannot run here.
Napi::Value SetGemm(const Napi::CallbackInfo& info) {
  if (!info[0].IsString()) throw Napi::TypeError::New(info.Env(), "gemm name must be a string");
  std::lock_guard<std::mutex> lk(g_call);
  return Napi::Boolean::New(info.Env(), rd::gemm::select(info[0].As<Napi::String>().Utf8Value()));
}

// gemmCalibrate(): { oursMs, openblasMs (−1: not loaded) } on three products, one thread each.
Napi::Value GemmCalibrate(const Napi::CallbackInfo& info) {
  auto env = info.Env();
  std::lock_guard<std::mutex> lk(g_call);
  const rd::gemm::Calibration c = rd::gemm::calibrate();
  auto o = Napi::Object::New(env);
  o.Set("oursMs", Napi::Number::New(env, c.oursMs));
  o.Set("openblasMs", Napi::Number::New(env, c.theirsMs));
  return o;
}

Napi::Value Info(const Napi::CallbackInfo& info) {
  auto env = info.Env();
  auto o = Napi::Object::New(env);
  std::lock_guard<std::mutex> lk(g_call);
  const rd::gemm::Kernels& k = rd::gemm::kernels();
  o.Set("gemm", Napi::String::New(env, rd::gemm::describe()));
  o.Set("kernels", Napi::String::New(env, k.name));
  o.Set("tile", Napi::String::New(env, std::to_string(k.mr) + "x" + std::to_string(k.nr)));
  o.Set("openblas", Napi::Boolean::New(env, rd::gemm::openBlasSgemm() != nullptr));
  o.Set("matmulOnOpenblas", Napi::Boolean::New(env, rd::gemm::matmulUsesOpenBlas()));
  o.Set("threads", Napi::Number::New(env, rd::poolThreads()));
  return o;
}

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  exports.Set("conv2d", Napi::Function::New(env, Conv2d));
  exports.Set("conv2dBackpropInput", Napi::Function::New(env, Conv2dBackpropInput));
  exports.Set("conv2dBackpropFilter", Napi::Function::New(env, Conv2dBackpropFilter));
  exports.Set("matmul", Napi::Function::New(env, Matmul));
  exports.Set("binary", Napi::Function::New(env, Binary));
  exports.Set("reduceSum", Napi::Function::New(env, ReduceSum));
  exports.Set("slice", Napi::Function::New(env, Slice));
  exports.Set("tile", Napi::Function::New(env, Tile));
  exports.Set("unary", Napi::Function::New(env, Unary));
  exports.Set("concat", Napi::Function::New(env, Concat));
  exports.Set("transpose", Napi::Function::New(env, Transpose));
  exports.Set("pad", Napi::Function::New(env, Pad));
  exports.Set("groupNorm", Napi::Function::New(env, GroupNorm));
  exports.Set("groupNormGrad", Napi::Function::New(env, GroupNormGrad));
  exports.Set("adam", Napi::Function::New(env, Adam));
  exports.Set("ema", Napi::Function::New(env, Ema));
  exports.Set("setThreads", Napi::Function::New(env, SetThreads));
  exports.Set("setGemm", Napi::Function::New(env, SetGemm));
  exports.Set("gemmCalibrate", Napi::Function::New(env, GemmCalibrate));
  exports.Set("info", Napi::Function::New(env, Info));
  rd::ring::exportRing(env, exports);
  rd::shm::exportShm(env, exports);
  return exports;
}

}  // namespace

NODE_API_MODULE(ringdiff_native, Init)
