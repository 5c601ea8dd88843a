// Memory-bound float32 kernels whose TF.js versions index every element through generic
// broadcasting/odometer code: broadcast binary ops, reductions, slices and tiles. In a U-Net
// step (GroupNorm, SiLU, skip concatenations) they cost far more than the convolutions.
#pragma once

#include <cstdint>
#include <vector>

namespace rd {

using Shape = std::vector<int64_t>;

enum BinaryOp : int { kAdd = 0, kSub = 1, kMul = 2, kDiv = 3, kSquaredDiff = 4 };

// out = a op b with NumPy/TF.js broadcasting; out has the broadcast shape `os`.
void binary(int op, const float* a, const Shape& as, const float* b, const Shape& bs, float* out, const Shape& os);

enum UnaryOp : int { kUnarySigmoid = 0, kUnarySquare = 1 };

void unary(int op, const float* x, float* out, int64_t n);

// out = x surrounded by before[i]/after[i] elements equal to value along each axis.
void pad(const float* x, const Shape& shape, const Shape& before, const Shape& after, float value, float* out);

// out = scale · Σ x over the axes flagged in `reduce` (out has the kept dims, in order).
void reduceSum(const float* x, const Shape& shape, const std::vector<bool>& reduce, float* out, double scale);

// out = x[begin : begin + size] along every axis.
void slice(const float* x, const Shape& shape, const Shape& begin, const Shape& size, float* out);

// out = x repeated reps[i] times along axis i.
void tile(const float* x, const Shape& shape, const Shape& reps, float* out);

}  // namespace rd
