// The optimizer's and the EMA's elementwise updates, one pass each instead of a dozen TF.js ops
// per parameter tensor. Every operation is rounded to float32 in the same order as the composed
// TF.js ops in src/model/train.ts, so the results are identical bit for bit.
#pragma once

#include <cstdint>

namespace rd {

// Constants of one Adam/AdamW step, already rounded to float32 as TF.js rounds its scalars.
struct AdamStep {
  float scale;     // gradient clipping factor (1: none)
  float b1, omb1;  // β1, 1 − β1
  float b2, omb2;  // β2, 1 − β2
  float bc1, bc2;  // 1 − β1^(n+1), 1 − β2^(n+1)
  float eps, lr;
  float lrwd;      // lr·weight_decay (0: none)
};

// m ← β1·m + (1 − β1)·g, v ← β2·v + (1 − β2)·g², p ← p − lr·(m/bc1)/(√(v/bc2) + ε) [− lr·wd·p],
// with g scaled first; writes pOut, mOut, vOut (n elements each).
void adamUpdate(int64_t n, const AdamStep& s, const float* p, const float* m, const float* v, const float* g,
                float* pOut, float* mOut, float* vOut);

// out = d·e + (1 − d)·w; omd = 1 − d rounded to float32.
void emaUpdate(int64_t n, float d, float omd, const float* e, const float* w, float* out);

}  // namespace rd
