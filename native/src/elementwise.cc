#include "elementwise.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "kernels.h"
#include "vmath.h"

namespace rd {

namespace {

// Elements per task: below this, waking a worker costs more than the work saves.
constexpr int64_t kGrain = 1 << 16;

template <int Op>
RD_INLINE float apply(float a, float b) {
  if constexpr (Op == kAdd) return a + b;
  if constexpr (Op == kSub) return a - b;
  if constexpr (Op == kMul) return a * b;
  if constexpr (Op == kDiv) return a / b;
  // Math.max/min semantics: NaN if either operand is NaN.
  if constexpr (Op == kMaximum) return (a != a || b != b) ? a + b : (a > b ? a : b);
  if constexpr (Op == kMinimum) return (a != a || b != b) ? a + b : (a < b ? a : b);
  const float d = a - b;
  return d * d;
}

// After collapsing, the innermost stride of each operand is 1 (varies) or 0 (broadcast).
template <int Op>
RD_INLINE void row(const float* a, int64_t sa, const float* b, int64_t sb, float* out, int64_t n) {
  if (sa && sb) {
    for (int64_t i = 0; i < n; ++i) out[i] = apply<Op>(a[i], b[i]);
  } else if (sa) {
    const float bv = *b;
    for (int64_t i = 0; i < n; ++i) out[i] = apply<Op>(a[i], bv);
  } else if (sb) {
    const float av = *a;
    for (int64_t i = 0; i < n; ++i) out[i] = apply<Op>(av, b[i]);
  } else {
    const float v = apply<Op>(*a, *b);
    for (int64_t i = 0; i < n; ++i) out[i] = v;
  }
}

// n2 rows of n1 elements: short inner rows (GroupNorm's C/G = 4 channels against a per-group
// mean) would otherwise pay the outer odometer and an indirect call every few elements.
template <int Op>
RD_SIMD void block(const float* a, int64_t sa2, int64_t sa1, const float* b, int64_t sb2, int64_t sb1, float* out,
                   int64_t n2, int64_t n1) {
  for (int64_t j = 0; j < n2; ++j) row<Op>(a + j * sa2, sa1, b + j * sb2, sb1, out + j * n1, n1);
}

using BlockFn = void (*)(const float*, int64_t, int64_t, const float*, int64_t, int64_t, float*, int64_t, int64_t);

BlockFn blockFor(int op) {
  switch (op) {
    case kAdd:
      return block<kAdd>;
    case kSub:
      return block<kSub>;
    case kMul:
      return block<kMul>;
    case kDiv:
      return block<kDiv>;
    case kMaximum:
      return block<kMaximum>;
    case kMinimum:
      return block<kMinimum>;
    default:
      return block<kSquaredDiff>;
  }
}

// Row-major strides of `s` right-aligned to rank r, 0 along broadcast (size-1) axes.
Shape broadcastStrides(const Shape& s, size_t r) {
  Shape st(r, 0);
  int64_t acc = 1;
  for (size_t k = 0; k < s.size(); ++k) {
    const size_t i = s.size() - 1 - k;
    const size_t o = r - 1 - k;
    st[o] = s[i] == 1 ? 0 : acc;
    acc *= s[i];
  }
  return st;
}

}  // namespace

void binary(int op, const float* a, const Shape& as, const float* b, const Shape& bs, float* out, const Shape& os) {
  const size_t r = os.size();
  for (int64_t v : os)
    if (v == 0) return;
  const Shape sa = broadcastStrides(as, r), sb = broadcastStrides(bs, r);
  // Merge adjacent axes that both operands traverse the same way, innermost first, so the
  // inner loop runs as long as possible (a GroupNorm [B,H,W,G,C/G] op becomes [B,H·W,G,C/G]).
  Shape d, da, db;
  for (size_t k = 0; k < r; ++k) {
    const size_t i = r - 1 - k;
    if (os[i] == 1) continue;
    if (!d.empty() && da.back() * d.back() == sa[i] && db.back() * d.back() == sb[i]) {
      d.back() *= os[i];
    } else {
      d.push_back(os[i]);
      da.push_back(sa[i]);
      db.push_back(sb[i]);
    }
  }
  BlockFn fn = blockFor(op);
  if (d.empty()) {
    fn(a, 0, 1, b, 0, 1, out, 1, 1);
    return;
  }
  // The kernel walks the two innermost axes itself; a missing second axis is a size-1 one.
  if (d.size() == 1) {
    d.push_back(1);
    da.push_back(0);
    db.push_back(0);
  }
  std::reverse(d.begin(), d.end());
  std::reverse(da.begin(), da.end());
  std::reverse(db.begin(), db.end());
  const size_t outer = d.size() - 2;
  const int64_t n2 = d[outer], n1 = d[outer + 1];
  const int64_t a2 = da[outer], a1 = da[outer + 1], b2 = db[outer], b1 = db[outer + 1];
  const int64_t inner = n2 * n1;
  int64_t rows = 1;
  for (size_t i = 0; i < outer; ++i) rows *= d[i];
  const int64_t perTask = std::max<int64_t>(1, kGrain / inner);
  pool().run((rows + perTask - 1) / perTask, [&](long task, int) {
    const int64_t r0 = task * perTask, r1 = std::min(rows, r0 + perTask);
    Shape idx(outer, 0);
    int64_t ao = 0, bo = 0, rem = r0;
    for (size_t k = outer; k-- > 0;) {
      idx[k] = rem % d[k];
      rem /= d[k];
      ao += idx[k] * da[k];
      bo += idx[k] * db[k];
    }
    for (int64_t rr = r0; rr < r1; ++rr) {
      fn(a + ao, a2, a1, b + bo, b2, b1, out + rr * inner, n2, n1);
      for (size_t k = outer; k-- > 0;) {
        ao += da[k];
        bo += db[k];
        if (++idx[k] < d[k]) break;
        ao -= da[k] * d[k];
        bo -= db[k] * d[k];
        idx[k] = 0;
      }
    }
  });
}

namespace {

template <int Op>
RD_SIMD void unaryRange(const float* __restrict x, float* __restrict out, int64_t n, float alpha) {
  for (int64_t i = 0; i < n; ++i) {
    const float v = x[i];
    float r;
    if constexpr (Op == kUnarySigmoid) {
      r = 1.f / (1.f + expApprox(-v));
    } else if constexpr (Op == kUnarySquare) {
      r = v * v;
    } else if constexpr (Op == kUnarySqrt) {
      r = std::sqrt(v);
    } else if constexpr (Op == kUnaryRsqrt) {
      r = 1.f / std::sqrt(v);
    } else if constexpr (Op == kUnaryNeg) {
      r = -v;
    } else if constexpr (Op == kUnaryRelu) {
      r = v < 0.f ? 0.f : v;  // NaN stays NaN, like Math.max(0, x)
    } else if constexpr (Op == kUnaryExp) {
      r = expApprox(v);
    } else if constexpr (Op == kUnaryStep) {
      r = v > 0.f ? 1.f : alpha;
      r = v != v ? v : r;
    } else if constexpr (Op == kUnaryAbs) {
      r = std::fabs(v);
    } else if constexpr (Op == kUnaryTanh) {
      // Near 0, (1 − e^−2a)/(1 + e^−2a) cancels: there the Taylor series is exact to float32
      // (its next term is below 3e-10 for a < 1/16).
      const float a = std::fabs(v), v2 = v * v;
      const float e = expApprox(-2.f * a);
      const float big = std::copysign((1.f - e) / (1.f + e), v);
      r = a < 0.0625f ? v * (1.f - v2 * (1.f / 3.f - v2 * (2.f / 15.f))) : big;
      r = v != v ? v : r;
    } else {
      r = 1.f / v;
    }
    out[i] = r;
  }
}

using UnaryFn = void (*)(const float*, float*, int64_t, float);

UnaryFn unaryFor(int op) {
  switch (op) {
    case kUnarySigmoid:
      return unaryRange<kUnarySigmoid>;
    case kUnarySquare:
      return unaryRange<kUnarySquare>;
    case kUnarySqrt:
      return unaryRange<kUnarySqrt>;
    case kUnaryRsqrt:
      return unaryRange<kUnaryRsqrt>;
    case kUnaryNeg:
      return unaryRange<kUnaryNeg>;
    case kUnaryRelu:
      return unaryRange<kUnaryRelu>;
    case kUnaryExp:
      return unaryRange<kUnaryExp>;
    case kUnaryStep:
      return unaryRange<kUnaryStep>;
    case kUnaryAbs:
      return unaryRange<kUnaryAbs>;
    case kUnaryTanh:
      return unaryRange<kUnaryTanh>;
    default:
      return unaryRange<kUnaryReciprocal>;
  }
}

}  // namespace

void unary(int op, const float* x, float* out, int64_t n, float alpha) {
  const UnaryFn fn = unaryFor(op);
  const int64_t tasks = (n + kGrain - 1) / kGrain;
  pool().run(tasks, [&](long task, int) {
    const int64_t i0 = task * kGrain, i1 = std::min(n, i0 + kGrain);
    fn(x + i0, out + i0, i1 - i0, alpha);
  });
}

void concat(const std::vector<const float*>& xs, const std::vector<int64_t>& inner, int64_t outer, float* out) {
  int64_t width = 0;
  for (int64_t w : inner) width += w;
  if (outer == 0 || width == 0) return;
  const int64_t perTask = std::max<int64_t>(1, kGrain / width);
  pool().run((outer + perTask - 1) / perTask, [&](long task, int) {
    const int64_t r0 = task * perTask, r1 = std::min(outer, r0 + perTask);
    for (int64_t r = r0; r < r1; ++r) {
      float* o = out + r * width;
      for (size_t i = 0; i < xs.size(); ++i) {
        std::memcpy(o, xs[i] + r * inner[i], sizeof(float) * inner[i]);
        o += inner[i];
      }
    }
  });
}

void transpose(const float* x, const Shape& shape, const Shape& perm, float* out) {
  const size_t r = shape.size();
  int64_t total = 1;
  for (int64_t d : shape) total *= d;
  if (total == 0) return;
  if (r == 0) {
    out[0] = x[0];
    return;
  }
  Shape xs(r, 1);
  for (size_t k = r - 1; k-- > 0;) xs[k] = xs[k + 1] * shape[k + 1];
  // Output axes with their strides in x, size-1 axes dropped and runs that stay contiguous in x
  // merged, so the innermost loop is as long as possible.
  Shape d, st;
  for (size_t i = 0; i < r; ++i) {
    const int64_t n = shape[perm[i]], s = xs[perm[i]];
    if (n == 1) continue;
    if (!d.empty() && st.back() == s * n) {
      d.back() *= n;
      st.back() = s;
    } else {
      d.push_back(n);
      st.push_back(s);
    }
  }
  if (d.empty()) {
    out[0] = x[0];
    return;
  }
  const size_t outer = d.size() - 1;
  const int64_t inner = d.back(), is = st.back();
  const int64_t rows = total / inner;
  const int64_t perTask = std::max<int64_t>(1, kGrain / inner);
  pool().run((rows + perTask - 1) / perTask, [&](long task, int) {
    const int64_t r0 = task * perTask, r1 = std::min(rows, r0 + perTask);
    Shape idx(outer, 0);
    int64_t xo = 0, rem = r0;
    for (size_t k = outer; k-- > 0;) {
      idx[k] = rem % d[k];
      rem /= d[k];
      xo += idx[k] * st[k];
    }
    for (int64_t rr = r0; rr < r1; ++rr) {
      float* o = out + rr * inner;
      const float* xr = x + xo;
      if (is == 1) {
        std::memcpy(o, xr, sizeof(float) * inner);
      } else {
        for (int64_t j = 0; j < inner; ++j) o[j] = xr[j * is];
      }
      for (size_t k = outer; k-- > 0;) {
        xo += st[k];
        if (++idx[k] < d[k]) break;
        xo -= st[k] * d[k];
        idx[k] = 0;
      }
    }
  });
}

void pad(const float* x, const Shape& shape, const Shape& before, const Shape& after, float value, float* out) {
  const size_t r = shape.size();
  Shape os(r);
  int64_t total = 1, xTotal = 1;
  for (size_t i = 0; i < r; ++i) {
    os[i] = before[i] + shape[i] + after[i];
    total *= os[i];
    xTotal *= shape[i];
  }
  std::fill(out, out + total, value);
  if (xTotal == 0) return;
  if (r == 0) {
    out[0] = x[0];
    return;
  }
  // Copy x's rows into the interior: the inverse of a slice.
  Shape ost(r, 1);
  for (size_t k = r - 1; k-- > 0;) ost[k] = ost[k + 1] * os[k + 1];
  const int64_t inner = shape[r - 1];
  const size_t outer = r - 1;
  const int64_t rows = xTotal / inner;
  Shape idx(outer, 0);
  int64_t oo = 0;
  for (size_t i = 0; i < r; ++i) oo += before[i] * ost[i];
  for (int64_t rr = 0; rr < rows; ++rr) {
    std::memcpy(out + oo, x + rr * inner, sizeof(float) * inner);
    for (size_t k = outer; k-- > 0;) {
      oo += ost[k];
      if (++idx[k] < shape[k]) break;
      oo -= ost[k] * shape[k];
      idx[k] = 0;
    }
  }
}

namespace {

// Σ x[0..n) with eight float lanes over blocks of at most 1024 elements, each block's partial
// added in double: vectorisable (a plain double accumulator is not, without -ffast-math) and
// within a few float ulps of the double sum TF.js's JS loop computes.
RD_INLINE double sumRowInline(const float* x, int64_t n) {
  double total = 0;
  for (int64_t i = 0; i < n; i += 1024) {
    const int64_t m = std::min<int64_t>(n - i, 1024);
    const float* p = x + i;
    float lane[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    int64_t j = 0;
    for (; j + 8 <= m; j += 8)
      for (int k = 0; k < 8; ++k) lane[k] += p[j + k];
    double s = 0;
    for (; j < m; ++j) s += p[j];
    for (int k = 0; k < 8; ++k) s += lane[k];
    total += s;
  }
  return total;
}

RD_SIMD double sumRow(const float* x, int64_t n) { return sumRowInline(x, n); }

// acc[k] += Σ_j x[k·r + j] for k < K: K kept rows of r reduced elements.
RD_SIMD void sumRows(const float* x, int64_t K, int64_t r, double* acc) {
  if (r >= 32) {
    for (int64_t k = 0; k < K; ++k) acc[k] += sumRowInline(x + k * r, r);
    return;
  }
  for (int64_t k = 0; k < K; ++k) {
    const float* p = x + k * r;
    float s = 0;
    for (int64_t j = 0; j < r; ++j) s += p[j];
    acc[k] += s;
  }
}

// acc[k] += Σ_i x[i·K + k] for i < R: R reduced rows of K kept elements, summed in float over
// 64 rows at a time.
RD_SIMD void sumCols(const float* x, int64_t R, int64_t K, double* acc, float* tmp) {
  for (int64_t i0 = 0; i0 < R; i0 += 64) {
    const int64_t m = std::min<int64_t>(R - i0, 64);
    const float* p = x + i0 * K;
    for (int64_t k = 0; k < K; ++k) tmp[k] = p[k];
    for (int64_t i = 1; i < m; ++i) {
      const float* q = p + i * K;
      for (int64_t k = 0; k < K; ++k) tmp[k] += q[k];
    }
    for (int64_t k = 0; k < K; ++k) acc[k] += tmp[k];
  }
}

}  // namespace

namespace {

// Σ over the reduced groups of x, whose axes are already collapsed into alternating kept and
// reduced groups `d` (no size-1 groups, at least one reduced), into acc (one double per output).
void reduceGroups(const float* x, const Shape& d, const std::vector<bool>& red, std::vector<double>& acc) {
  const size_t g = d.size();
  int64_t outSize = 1, total = 1;
  for (size_t i = 0; i < g; ++i) {
    total *= d[i];
    if (!red[i]) outSize *= d[i];
  }
  // The two innermost groups form a block that one call sums: K kept rows of r reduced
  // elements, or R reduced rows of K kept elements. An odometer walks the outer groups; the
  // output index moves only along kept ones (the block's outputs are contiguous).
  Shape ost(g, 0);
  for (int64_t stride = 1, k = (int64_t)g - 1; k >= 0; --k) {
    if (!red[k]) {
      ost[k] = stride;
      stride *= d[k];
    }
  }
  const bool innerReduced = red[g - 1];
  const int64_t b1 = d[g - 1], b0 = g >= 2 ? d[g - 2] : 1;
  const size_t outer = g >= 2 ? g - 2 : 0;
  const int64_t blockElems = b0 * b1;
  // Work is split into chunks along the outermost group (the block's first dim when there are
  // no outer groups), sized from the shape alone. When that dim is reduced, chunks accumulate
  // into private partials added in chunk order afterwards: results never depend on the thread
  // count and repeat bit for bit.
  const int64_t splitN = outer > 0 ? d[0] : (g >= 2 ? b0 : b1);
  const bool splitReduced = outer > 0 ? red[0] : (g >= 2 ? red[g - 2] : true);
  const int64_t perIndex = total / splitN;
  int64_t per = std::max<int64_t>(1, kGrain / std::max<int64_t>(1, perIndex));
  if (splitReduced) {
    const int64_t maxChunks = std::max<int64_t>(1, (int64_t)(1 << 21) / outSize);
    per = std::max(per, (splitN + maxChunks - 1) / maxChunks);
  }
  const int64_t chunks = (splitN + per - 1) / per;
  acc.assign((size_t)(outSize * (splitReduced ? chunks : 1)), 0.0);
  const int64_t tmpLen = innerReduced ? 0 : b1;
  pool().run(chunks, [&](long chunk, int) {
    double* a = acc.data() + (splitReduced ? chunk * outSize : 0);
    const int64_t i0 = chunk * per, i1 = std::min(splitN, i0 + per);
    std::vector<float> tmp((size_t)tmpLen);
    if (g == 1) {  // one reduced group: a plain sum
      a[0] += sumRow(x + i0, i1 - i0);
      return;
    }
    if (outer == 0) {  // just the block, split along its first dim
      if (innerReduced) {
        sumRows(x + i0 * b1, i1 - i0, b1, a + i0);
      } else {
        sumCols(x + i0 * b1, i1 - i0, b1, a, tmp.data());
      }
      return;
    }
    // Outer groups [0, outer): blocks of chunk i0..i1 along group 0.
    const int64_t blocksPer0 = total / (d[0] * blockElems);
    const int64_t n0 = (i1 - i0) * blocksPer0;
    Shape idx(outer, 0);
    idx[0] = i0;
    int64_t oo = i0 * ost[0];
    for (int64_t bi = 0; bi < n0; ++bi) {
      const float* xb = x + (i0 * blocksPer0 + bi) * blockElems;
      if (innerReduced) {
        sumRows(xb, b0, b1, a + oo);
      } else {
        sumCols(xb, b0, b1, a + oo, tmp.data());
      }
      for (size_t k = outer; k-- > 0;) {
        oo += ost[k];
        if (++idx[k] < d[k] || k == 0) break;
        oo -= ost[k] * d[k];
        idx[k] = 0;
      }
    }
  });
  for (int64_t c = 1; splitReduced && c < chunks; ++c) {
    const double* p = acc.data() + c * outSize;
    for (int64_t i = 0; i < outSize; ++i) acc[i] += p[i];
  }
  acc.resize((size_t)outSize);
}

}  // namespace

void reduceSum(const float* x, const Shape& shape, const std::vector<bool>& reduce, float* out, double scale) {
  // Collapse to alternating kept/reduced groups, dropping size-1 axes.
  Shape d;
  std::vector<bool> red;
  for (size_t i = 0; i < shape.size(); ++i) {
    if (shape[i] == 1) continue;
    if (!d.empty() && red.back() == reduce[i]) {
      d.back() *= shape[i];
    } else {
      d.push_back(shape[i]);
      red.push_back(reduce[i]);
    }
  }
  int64_t outSize = 1, total = 1;
  for (size_t i = 0; i < d.size(); ++i) {
    total *= d[i];
    if (!red[i]) outSize *= d[i];
  }
  if (total == 0) {
    std::fill(out, out + outSize, 0.f);
    return;
  }
  if (d.empty() || (d.size() == 1 && !red[0])) {  // nothing to reduce
    for (int64_t i = 0; i < total; ++i) out[i] = (float)(x[i] * scale);
    return;
  }
  std::vector<double> acc;
  const size_t g = d.size();
  if (g >= 3 && red[g - 1] && d[g - 1] < 16 && red[g - 3]) {
    // [..., R reduced, K kept, r reduced] with a short r (GroupNorm statistics: [B, H·W, G, C/G]
    // over H·W and C/G): rows of r elements would each cost a loop and an odometer step, so sum
    // over R keeping K·r columns (vectorised), then fold r.
    const int64_t K = d[g - 2], r = d[g - 1];
    Shape d2(d.begin(), d.end() - 1);
    std::vector<bool> red2(red.begin(), red.end() - 1);
    d2.back() = K * r;
    std::vector<double> wide;
    reduceGroups(x, d2, red2, wide);
    acc.assign((size_t)outSize, 0.0);
    for (int64_t o = 0; o < outSize; ++o) {
      double s = 0;
      for (int64_t j = 0; j < r; ++j) s += wide[(size_t)(o * r + j)];
      acc[(size_t)o] = s;
    }
  } else {
    reduceGroups(x, d, red, acc);
  }
  for (int64_t i = 0; i < outSize; ++i) out[i] = (float)(acc[i] * scale);
}

void slice(const float* x, const Shape& shape, const Shape& begin, const Shape& size, float* out) {
  const size_t r = shape.size();
  int64_t total = 1;
  for (size_t i = 0; i < r; ++i) total *= size[i];
  if (total == 0) return;
  if (r == 0) {
    out[0] = x[0];
    return;
  }
  Shape xs(r, 1);
  for (size_t k = r - 1; k-- > 0;) xs[k] = xs[k + 1] * shape[k + 1];
  // The contiguous run: the innermost axis plus every axis inside which the slice is whole.
  size_t j = r - 1;
  int64_t run = size[j];
  while (j > 0 && size[j] == shape[j]) {
    --j;
    run *= size[j];
  }
  const size_t outer = j;
  const int64_t rows = total / run;
  Shape idx(outer, 0);
  int64_t xo = 0;
  for (size_t i = 0; i <= j; ++i) xo += begin[i] * xs[i];
  for (int64_t rr = 0; rr < rows; ++rr) {
    std::memcpy(out + rr * run, x + xo, sizeof(float) * run);
    for (size_t k = outer; k-- > 0;) {
      xo += xs[k];
      if (++idx[k] < size[k]) break;
      xo -= xs[k] * size[k];
      idx[k] = 0;
    }
  }
}

void tile(const float* x, const Shape& shape, const Shape& reps, float* out) {
  const size_t r = shape.size();
  if (r == 0) {
    out[0] = x[0];
    return;
  }
  Shape os(r), xs(r, 1);
  int64_t total = 1;
  for (size_t i = 0; i < r; ++i) {
    os[i] = shape[i] * reps[i];
    total *= os[i];
  }
  if (total == 0) return;
  for (size_t k = r - 1; k-- > 0;) xs[k] = xs[k + 1] * shape[k + 1];
  const int64_t inner = shape[r - 1], innerReps = reps[r - 1], outInner = os[r - 1];
  const size_t outer = r - 1;
  const int64_t rows = total / outInner;
  Shape idx(outer, 0);
  for (int64_t rr = 0; rr < rows; ++rr) {
    int64_t xo = 0;
    for (size_t k = 0; k < outer; ++k) xo += (idx[k] % shape[k]) * xs[k];
    float* o = out + rr * outInner;
    for (int64_t t = 0; t < innerReps; ++t) std::memcpy(o + t * inner, x + xo, sizeof(float) * inner);
    for (size_t k = outer; k-- > 0;) {
      if (++idx[k] < os[k]) break;
      idx[k] = 0;
    }
  }
}

}  // namespace rd
