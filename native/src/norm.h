// GroupNorm, optionally followed by SiLU, forward and backward in a few passes over each image
// (the composition of TF.js ops it replaces takes about twenty-five full-size passes).
#pragma once

#include <cstdint>

namespace rd {

// One GroupNorm over x [B, HW, C] with G groups: y = act(γ·(x − μ)/√(σ² + ε) + β), statistics per
// (example, group), σ² biased; act is SiLU (x·σ(x)) when `silu`, else the identity.
// Also writes μ and 1/√(σ² + ε) per (example, group), [B, G], for the backward pass.
struct GroupNormShape {
  int64_t B, HW, C, G;
  float eps;
  bool silu;
};

void groupNormForward(const GroupNormShape& s, const float* x, const float* gamma, const float* beta, float* y,
                      float* mean, float* rstd);

// Gradients of the above given dy (the gradient of y): dx [B, HW, C], dgamma [C], dbeta [C].
// dgamma and dbeta sum per-example partials in example order (independent of the thread count).
void groupNormBackward(const GroupNormShape& s, const float* x, const float* gamma, const float* beta,
                       const float* mean, const float* rstd, const float* dy, float* dx, float* dgamma,
                       float* dbeta);

}  // namespace rd
