// Memory-bound float32 kernels whose TF.js versions index every element through generic
// broadcasting/odometer code: broadcast binary ops, reductions, slices and tiles. In a U-Net
// step (GroupNorm, SiLU, skip concatenations) they cost far more than the convolutions.
#pragma once

#include <cstdint>
#include <vector>

namespace rd {

using Shape = std::vector<int64_t>;

enum BinaryOp : int { kAdd = 0, kSub = 1, kMul = 2, kDiv = 3, kSquaredDiff = 4, kMaximum = 5, kMinimum = 6 };

// out = a op b with NumPy/TF.js broadcasting; out has the broadcast shape `os`.
void binary(int op, const float* a, const Shape& as, const float* b, const Shape& bs, float* out, const Shape& os);

enum UnaryOp : int {
  kUnarySigmoid = 0,
  kUnarySquare = 1,
  kUnarySqrt = 2,
  kUnaryRsqrt = 3,
  kUnaryNeg = 4,
  kUnaryRelu = 5,
  kUnaryExp = 6,
  kUnaryStep = 7,  // x > 0 ? 1 : alpha (NaN stays NaN)
  kUnaryAbs = 8,
  kUnaryReciprocal = 9,
  kUnaryTanh = 10,
};
constexpr int kUnaryLast = kUnaryTanh;

// out = op(x) elementwise; `alpha` is Step's value for x <= 0.
void unary(int op, const float* x, float* out, int64_t n, float alpha);

// out = the inputs joined along one axis: viewed as [outer, inner_i], row r of out is row r of
// every input in turn.
void concat(const std::vector<const float*>& xs, const std::vector<int64_t>& inner, int64_t outer, float* out);

// out = x with its axes permuted: out.shape[i] = shape[perm[i]].
void transpose(const float* x, const Shape& shape, const Shape& perm, float* out);

// out = x surrounded by before[i]/after[i] elements equal to value along each axis.
void pad(const float* x, const Shape& shape, const Shape& before, const Shape& after, float value, float* out);

// out = scale · Σ x over the axes flagged in `reduce` (out has the kept dims, in order).
void reduceSum(const float* x, const Shape& shape, const std::vector<bool>& reduce, float* out, double scale);

// out = x[begin : begin + size] along every axis.
void slice(const float* x, const Shape& shape, const Shape& begin, const Shape& size, float* out);

// out = x repeated reps[i] times along axis i.
void tile(const float* x, const Shape& shape, const Shape& reps, float* out);

}  // namespace rd
