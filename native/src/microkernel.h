// The GEMM micro-kernel, written once over a vector type and included by each instruction set's
// translation unit (gemm_avx512.cc, gemm_avx2.cc, gemm_generic.cc) inside its own namespace,
// after it defines `V`:
//   V::T vector of V::W floats; V::Mask selects the first n lanes;
//   zero(), load(p), loadMask(p, m), bcast(p), fma(a, b, c) = a·b + c, store(p, v),
//   storeMask(p, v, m), mask(n).
// Each TU is compiled with its own -m flags and nothing here is shared between them by name, so
// no code of one instruction set can be picked up by the linker for another.
//
// Do not include directly.

#ifndef RD_UK_INLINE
#define RD_UK_INLINE inline __attribute__((always_inline))
#endif

// A tile's accumulators. Kept in a struct that is copied in and out of every segment's loop:
// with the array live across the segment loop, GCC keeps it in memory and stores every
// accumulator back on each k step (2-3x slower).
template <int M, int NV>
struct Acc {
  typename V::T r[M][NV];
};

template <int M, int NV, bool Masked>
RD_UK_INLINE void segment(Acc<M, NV>& acc, const float* a, const float* b, int64_t len, int64_t rsA, int64_t csA,
                          int64_t ldb, typename V::Mask last) {
  Acc<M, NV> t = acc;
  for (int64_t k = 0; k < len; ++k) {
    typename V::T bv[NV];
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) {
      bv[v] = (Masked && v == NV - 1) ? V::loadMask(b + v * V::W, last) : V::load(b + v * V::W);
    }
#pragma GCC unroll 16
    for (int i = 0; i < M; ++i) {
      const typename V::T ai = V::bcast(a + i * rsA);
#pragma GCC unroll 8
      for (int v = 0; v < NV; ++v) t.r[i][v] = V::fma(ai, bv[v], t.r[i][v]);
    }
    a += csA;
    b += ldb;
  }
  acc = t;
}

template <int M, int NV, bool Masked>
void tileKernel(const rd::gemm::Tile& t) {
  const typename V::Mask last = V::mask(t.n - (NV - 1) * V::W);
  Acc<M, NV> acc;
#pragma GCC unroll 16
  for (int i = 0; i < M; ++i) {
    const float* c = t.c + i * t.rsC;
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) {
      if (!t.accumulate) {
        acc.r[i][v] = V::zero();
      } else {
        acc.r[i][v] = (Masked && v == NV - 1) ? V::loadMask(c + v * V::W, last) : V::load(c + v * V::W);
      }
    }
  }
  for (int s = 0; s < t.nseg; ++s) {
    const rd::gemm::Seg& g = t.segs[s];
    segment<M, NV, Masked>(acc, t.a + g.a, t.b + g.b, g.len, t.rsA, t.csA, t.ldb, last);
  }
#pragma GCC unroll 16
  for (int i = 0; i < M; ++i) {
    float* c = t.c + i * t.rsC;
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) {
      if (Masked && v == NV - 1) {
        V::storeMask(c + v * V::W, acc.r[i][v], last);
      } else {
        V::store(c + v * V::W, acc.r[i][v]);
      }
    }
  }
}

using TileFn = void (*)(const rd::gemm::Tile&);

// Instances for every row count 1..MR and vector count 1..NVMAX, masked and not.
template <int M, int NVMAX>
struct Row {
  template <int NV>
  static TileFn pick(int nv, bool masked) {
    if constexpr (NV > NVMAX) {
      return nullptr;
    } else {
      if (nv == NV) return masked ? tileKernel<M, NV, true> : tileKernel<M, NV, false>;
      return pick<NV + 1>(nv, masked);
    }
  }
};

template <int M, int MR, int NVMAX>
TileFn pickTile(int m, int nv, bool masked) {
  if constexpr (M > MR) {
    return nullptr;
  } else {
    if (m == M) return Row<M, NVMAX>::template pick<1>(nv, masked);
    return pickTile<M + 1, MR, NVMAX>(m, nv, masked);
  }
}

template <int MR, int NVMAX>
struct Table {
  TileFn fn[MR + 1][NVMAX + 1][2] = {};
  Table() {
    for (int m = 1; m <= MR; ++m)
      for (int nv = 1; nv <= NVMAX; ++nv)
        for (int k = 0; k < 2; ++k) fn[m][nv][k] = pickTile<1, MR, NVMAX>(m, nv, k == 1);
  }
};

template <int MR, int NVMAX>
void runTile(const rd::gemm::Tile& t) {
  static const Table<MR, NVMAX> table;
  if (t.m <= 0 || t.n <= 0) return;
  const int nv = (t.n + V::W - 1) / V::W;
  table.fn[t.m][nv][t.n % V::W != 0](t);
}
