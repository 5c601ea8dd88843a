#include "elementwise.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "kernels.h"

namespace rd {

namespace {

// Elements per task: below this, waking a worker costs more than the work saves.
constexpr int64_t kGrain = 1 << 16;

template <int Op>
inline float apply(float a, float b) {
  if constexpr (Op == kAdd) return a + b;
  if constexpr (Op == kSub) return a - b;
  if constexpr (Op == kMul) return a * b;
  if constexpr (Op == kDiv) return a / b;
  const float d = a - b;
  return d * d;
}

// After collapsing, the innermost stride of each operand is 1 (varies) or 0 (broadcast).
template <int Op>
void row(const float* a, int64_t sa, const float* b, int64_t sb, float* out, int64_t n) {
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
void block(const float* a, int64_t sa2, int64_t sa1, const float* b, int64_t sb2, int64_t sb1, float* out,
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

void unary(int op, const float* x, float* out, int64_t n) {
  const int64_t tasks = (n + kGrain - 1) / kGrain;
  pool().run(tasks, [&](long task, int) {
    const int64_t i0 = task * kGrain, i1 = std::min(n, i0 + kGrain);
    if (op == kUnarySigmoid) {
      for (int64_t i = i0; i < i1; ++i) out[i] = 1.f / (1.f + std::exp(-x[i]));
    } else {
      for (int64_t i = i0; i < i1; ++i) out[i] = x[i] * x[i];
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
  if (d.empty()) {
    out[0] = (float)(x[0] * scale);
    return;
  }
  // Output strides of kept groups; reduced groups do not move the output offset.
  const size_t g = d.size();
  Shape os(g, 0);
  for (int64_t stride = 1, k = (int64_t)g - 1; k >= 0; --k) {
    if (!red[k]) {
      os[k] = stride;
      stride *= d[k];
    }
  }
  // Sums in double, like TF.js's JS loop, so long reductions do not drift.
  std::vector<double> acc((size_t)outSize, 0.0);
  const int64_t inner = d.back();
  const bool innerReduced = red.back();
  const size_t outer = g - 1;
  int64_t rows = total / inner;
  auto run = [&](int64_t r0, int64_t r1) {
    Shape idx(outer, 0);
    int64_t oo = 0, rem = r0;
    for (size_t k = outer; k-- > 0;) {
      idx[k] = rem % d[k];
      rem /= d[k];
      oo += idx[k] * os[k];
    }
    for (int64_t rr = r0; rr < r1; ++rr) {
      const float* xr = x + rr * inner;
      if (innerReduced) {
        double s = 0;
        for (int64_t j = 0; j < inner; ++j) s += xr[j];
        acc[oo] += s;
      } else {
        double* o = acc.data() + oo;
        for (int64_t j = 0; j < inner; ++j) o[j] += xr[j];
      }
      for (size_t k = outer; k-- > 0;) {
        oo += os[k];
        if (++idx[k] < d[k]) break;
        oo -= os[k] * d[k];
        idx[k] = 0;
      }
    }
  };
  // Split across threads along the outermost group when it is kept: tasks then own disjoint
  // outputs. (When it is reduced, e.g. a bias gradient, one pass over memory is already cheap.)
  if (g > 1 && !red[0] && total >= 2 * kGrain) {
    const int64_t rowsPer0 = rows / d[0];
    const int64_t per = std::max<int64_t>(1, kGrain / (rowsPer0 * inner));
    pool().run((d[0] + per - 1) / per, [&](long task, int) {
      const int64_t i0 = task * per, i1 = std::min(d[0], i0 + per);
      run(i0 * rowsPer0, i1 * rowsPer0);
    });
  } else {
    run(0, rows);
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
