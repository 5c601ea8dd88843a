// 2-D convolutions (NHWC, TF.js semantics) on the GEMM micro-kernels, with no im2col matrix:
//
// - forward: each tile is mr output pixels of one row × nr output channels, and its K segments
//   are the filter taps, each C inputs long, read straight from the (padded) input;
// - input gradient: for stride 1, the same with the filter's taps transposed; for stride s, one
//   such pass per output phase (ih mod s, iw mod s), each using only the taps that reach it;
// - filter gradient: each tile is mr input channels × nr output channels of one tap, and its K
//   segments are the output rows of an image, clipped to the pixels that tap reads.
//
// Work is split over images and bands of rows (forward, input gradient) or over output tiles
// (filter gradient), never over a sum, so the result does not depend on the thread count.
// One-channel convolutions (a U-Net's first and last) keep direct loops: as a GEMM they are a
// matrix-vector product that would use one lane of a vector.
#include <algorithm>
#include <cstring>
#include <vector>

#include "gemm.h"
#include "kernels.h"
#include "vmath.h"

namespace rd {

namespace {

using gemm::Seg;
using gemm::Tile;

// Joins segments that continue one another in both A and B (the taps of one filter row over a
// padded input, whole image rows for the filter gradient): the accumulators then leave their
// registers less often.
void mergeSegments(std::vector<Seg>& segs, int64_t csA, int64_t ldb) {
  size_t out = 0;
  for (size_t i = 0; i < segs.size(); ++i) {
    if (out > 0) {
      Seg& last = segs[out - 1];
      if (segs[i].a == last.a + last.len * csA && segs[i].b == last.b + last.len * ldb) {
        last.len += segs[i].len;
        continue;
      }
    }
    segs[out++] = segs[i];
  }
  segs.resize(out);
}

// ---- Direct convolution: Σ over taps of a shifted input times the tap's matrix ---------------

struct Tap {
  int64_t dy, dx;  // input position of output (i, j) is (i·sy + dy, j·sx + dx)
  int64_t b;       // offset of the tap's [IC][OC] matrix in `wb`
};

// The common shape of the forward convolution and of each stride phase of its input gradient.
struct Direct {
  const float* x;
  int64_t N, IH, IW, IC;
  int64_t GH, GW;  // output pixels per image, on a grid
  int64_t sy, sx;
  std::vector<Tap> taps;
  const float* wb;
  int64_t OC;
  float* y;  // output (n, i, j) at y + n·yImg + i·yRow + j·yCol, OC channels contiguous
  int64_t yImg, yRow, yCol;
  const Epilogue* ep;  // forward only
};

void runDirect(const Direct& d) {
  if (d.N == 0 || d.GH <= 0 || d.GW <= 0) return;
  if (d.taps.empty()) {
    // No tap reaches these pixels (an input-gradient phase of a strided, small filter).
    for (int64_t n = 0; n < d.N; ++n)
      for (int64_t i = 0; i < d.GH; ++i)
        for (int64_t j = 0; j < d.GW; ++j) std::memset(d.y + n * d.yImg + i * d.yRow + j * d.yCol, 0, 4 * d.OC);
    return;
  }
  const gemm::Kernels& kr = gemm::kernels();
  int64_t minY = d.taps[0].dy, maxY = minY, minX = d.taps[0].dx, maxX = minX;
  for (const Tap& t : d.taps) {
    minY = std::min(minY, t.dy), maxY = std::max(maxY, t.dy);
    minX = std::min(minX, t.dx), maxX = std::max(maxX, t.dx);
  }
  const bool inside =
      minY >= 0 && minX >= 0 && (d.GH - 1) * d.sy + maxY < d.IH && (d.GW - 1) * d.sx + maxX < d.IW;
  // Padded windows are as wide as the grid reads; unpadded reads use the image's own rows.
  const int64_t winW = inside ? d.IW : (d.GW - 1) * d.sx + maxX - minX + 1;
  const int threads = pool().size();
  int64_t band = d.GH;
  while (band > 1 && d.N * ((d.GH + band - 1) / band) < 4 * threads) band = (band + 1) / 2;
  const int64_t bands = (d.GH + band - 1) / band;
  pool().run(d.N * bands, [&](long task, int tid) {
    const int64_t n = task / bands, i0 = (task % bands) * band, i1 = std::min(d.GH, i0 + band);
    const float* img = d.x + n * d.IH * d.IW * d.IC;
    const float* win = img;
    int64_t wy0 = 0, wx0 = 0;
    if (!inside) {
      // Copy the rows this band reads, zero outside the image: cheap next to the 9·C
      // multiply-adds each copied value then takes part in.
      wy0 = i0 * d.sy + minY, wx0 = minX;
      const int64_t rows = (i1 - 1) * d.sy + maxY - wy0 + 1;
      float* buf = scratch(tid, (size_t)(rows * winW * d.IC));
      const int64_t c0 = std::max<int64_t>(0, wx0), c1 = std::min(d.IW, wx0 + winW);
      for (int64_t r = 0; r < rows; ++r) {
        float* dst = buf + r * winW * d.IC;
        const int64_t iy = wy0 + r;
        if (iy < 0 || iy >= d.IH || c0 >= c1) {
          std::memset(dst, 0, sizeof(float) * winW * d.IC);
          continue;
        }
        std::memset(dst, 0, sizeof(float) * (c0 - wx0) * d.IC);
        std::memcpy(dst + (c0 - wx0) * d.IC, img + (iy * d.IW + c0) * d.IC, sizeof(float) * (c1 - c0) * d.IC);
        std::memset(dst + (c1 - wx0) * d.IC, 0, sizeof(float) * (wx0 + winW - c1) * d.IC);
      }
      win = buf;
    }
    Epilogue ep = d.ep ? *d.ep : Epilogue{};
    if (ep.biasImageStride) ep.bias += n * ep.biasImageStride;
    std::vector<Seg> segs(d.taps.size());
    for (size_t t = 0; t < d.taps.size(); ++t) {
      segs[t] = {((d.taps[t].dy - minY) * winW + (d.taps[t].dx - minX)) * d.IC, d.taps[t].b, d.IC};
    }
    mergeSegments(segs, 1, d.OC);
    for (int64_t i = i0; i < i1; ++i) {
      for (int64_t j0 = 0; j0 < d.GW; j0 += kr.mr) {
        const int m = (int)std::min<int64_t>(kr.mr, d.GW - j0);
        const float* a = win + ((i * d.sy + minY - wy0) * winW + (j0 * d.sx + minX - wx0)) * d.IC;
        float* yp = d.y + n * d.yImg + i * d.yRow + j0 * d.yCol;
        for (int64_t jc = 0; jc < d.OC; jc += kr.nr) {
          const Tile t{a,      d.sx * d.IC, 1, d.wb + jc, d.OC, yp + jc, d.yCol, segs.data(), (int)segs.size(),
                       m,      (int)std::min<int64_t>(kr.nr, d.OC - jc), false};
          kr.run(t);
        }
        if (d.ep) applyEpilogue(yp, m, d.OC, d.yCol, 0, ep);
      }
    }
  });
}

// ---- Thin convolutions: one input or one output channel --------------------------------------

// Σ a[i]·b[i] over eight float lanes (vectorisable without reassociation flags).
RD_INLINE float dot(const float* a, const float* b, int64_t n) {
  float lane[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    for (int k = 0; k < 8; ++k) lane[k] += a[i + k] * b[i + k];
  float s = 0;
  for (; i < n; ++i) s += a[i] * b[i];
  for (int k = 0; k < 8; ++k) s += lane[k];
  return s;
}

// Valid kernel taps [k0, k1) along one axis for output position o.
RD_INLINE void tapRange(int64_t o, int64_t stride, int64_t pad, int64_t dil, int64_t K, int64_t size, int64_t* k0,
                        int64_t* k1) {
  const int64_t base = o * stride - pad;
  int64_t a = 0, b = K;
  while (a < K && base + a * dil < 0) ++a;
  while (b > a && base + (b - 1) * dil >= size) --b;
  *k0 = a;
  *k1 = b;
}

// y[n, oh, ow, 0] for OC = 1: a dot product per output pixel (contiguous over kw·C when dw = 1).
RD_SIMD void convRowsOC1(const ConvGeom& g, const float* x, const float* w, float* y, int64_t row0, int64_t row1) {
  for (int64_t row = row0; row < row1; ++row) {  // row = (n, oh)
    const int64_t n = row / g.OH, oh = row % g.OH;
    int64_t kh0, kh1;
    tapRange(oh, g.sh, g.pt, g.dh, g.KH, g.H, &kh0, &kh1);
    for (int64_t ow = 0; ow < g.OW; ++ow) {
      int64_t kw0, kw1;
      tapRange(ow, g.sw, g.pl, g.dw, g.KW, g.W, &kw0, &kw1);
      float s = 0;
      for (int64_t kh = kh0; kh < kh1; ++kh) {
        const int64_t ih = oh * g.sh - g.pt + kh * g.dh;
        const float* xr = x + ((n * g.H + ih) * g.W) * g.C;
        const float* wr = w + kh * g.KW * g.C;
        const int64_t iw0 = ow * g.sw - g.pl;
        if (g.dw == 1) {
          s += dot(xr + (iw0 + kw0) * g.C, wr + kw0 * g.C, (kw1 - kw0) * g.C);
        } else {
          for (int64_t kw = kw0; kw < kw1; ++kw) s += dot(xr + (iw0 + kw * g.dw) * g.C, wr + kw * g.C, g.C);
        }
      }
      y[row * g.OW + ow] = s;
    }
  }
}

// dw += Σ over output rows [row0, row1) of x patch ⊗ dy, for C = 1 or OC = 1.
RD_SIMD void filterRowsThin(const ConvGeom& g, const float* x, const float* dy, float* dw, int64_t row0,
                            int64_t row1) {
  for (int64_t row = row0; row < row1; ++row) {
    const int64_t n = row / g.OH, oh = row % g.OH;
    int64_t kh0, kh1;
    tapRange(oh, g.sh, g.pt, g.dh, g.KH, g.H, &kh0, &kh1);
    for (int64_t ow = 0; ow < g.OW; ++ow) {
      int64_t kw0, kw1;
      tapRange(ow, g.sw, g.pl, g.dw, g.KW, g.W, &kw0, &kw1);
      const float* d = dy + (row * g.OW + ow) * g.OC;
      for (int64_t kh = kh0; kh < kh1; ++kh) {
        const int64_t ih = oh * g.sh - g.pt + kh * g.dh;
        for (int64_t kw = kw0; kw < kw1; ++kw) {
          const int64_t iw = ow * g.sw - g.pl + kw * g.dw;
          const float* xp = x + ((n * g.H + ih) * g.W + iw) * g.C;
          float* o = dw + (kh * g.KW + kw) * g.C * g.OC;
          if (g.OC == 1) {
            const float dv = d[0];
            for (int64_t c = 0; c < g.C; ++c) o[c] += xp[c] * dv;
          } else {
            for (int64_t c = 0; c < g.C; ++c) {
              const float xv = xp[c];
              float* oc = o + c * g.OC;
              for (int64_t k = 0; k < g.OC; ++k) oc[k] += xv * d[k];
            }
          }
        }
      }
    }
  }
}

// Output rows (n, oh) per task for the direct loops.
int64_t thinRowsPerTask(const ConvGeom& g) {
  const int64_t perRow = std::max<int64_t>(1, g.OW * g.KH * g.KW * std::max(g.C, g.OC));
  return std::max<int64_t>(1, (1 << 16) / perRow);
}

// Partial sums of the thin filter gradient: a fixed count, so the sum's order (lane by lane)
// does not depend on the thread count.
constexpr int64_t kThinLanes = 8;

void filterThin(const ConvGeom& g, const float* x, const float* dy, float* dw) {
  const int64_t rowsN = g.N * g.OH, per = thinRowsPerTask(g), ntasks = (rowsN + per - 1) / per;
  const int64_t lanes = std::max<int64_t>(1, std::min(kThinLanes, ntasks)), kout = g.KH * g.KW * g.C * g.OC;
  float* partials = shared((size_t)(lanes * kout));
  pool().run(lanes, [&](long lane, int) {
    float* acc = lane == 0 ? dw : partials + lane * kout;
    std::memset(acc, 0, sizeof(float) * kout);
    for (int64_t task = lane; task < ntasks; task += lanes) {
      const int64_t r0 = task * per;
      filterRowsThin(g, x, dy, acc, r0, std::min(rowsN, r0 + per));
    }
  });
  for (int64_t lane = 1; lane < lanes; ++lane) {
    const float* p = partials + lane * kout;
    for (int64_t i = 0; i < kout; ++i) dw[i] += p[i];
  }
}

}  // namespace

void conv2dForward(const ConvGeom& g, const float* x, const float* w, float* y, const Epilogue& ep) {
  if (g.OC == 1) {
    const int64_t rowsN = g.N * g.OH, per = thinRowsPerTask(g);
    pool().run((rowsN + per - 1) / per, [&](long task, int) {
      const int64_t r0 = task * per, r1 = std::min(rowsN, r0 + per);
      convRowsOC1(g, x, w, y, r0, r1);
      for (int64_t r = r0; r < r1; ++r) {  // row r = (n, oh): its image's bias
        Epilogue e = ep;
        if (e.biasImageStride) e.bias += (r / g.OH) * e.biasImageStride;
        applyEpilogue(y + r * g.OW, g.OW, 1, 1, 0, e);
      }
    });
    return;
  }
  Direct d{x, g.N, g.H, g.W, g.C, g.OH, g.OW, g.sh, g.sw, {}, w, g.OC, y, g.OH * g.OW * g.OC, g.OW * g.OC, g.OC, &ep};
  for (int64_t kh = 0; kh < g.KH; ++kh)
    for (int64_t kw = 0; kw < g.KW; ++kw)
      d.taps.push_back({kh * g.dh - g.pt, kw * g.dw - g.pl, (kh * g.KW + kw) * g.C * g.OC});
  runDirect(d);
}

void conv2dBackpropInput(const ConvGeom& g, const float* dy, const float* w, float* dx) {
  // dx[ih, iw, c] = Σ dy[oh, ow, oc]·W[kh, kw, c, oc] over ih = oh·s − p + kh·d: per tap, a
  // product with W[kh, kw] transposed to [OC][C].
  const int64_t taps = g.KH * g.KW;
  std::vector<float> wt((size_t)(taps * g.C * g.OC));
  for (int64_t t = 0; t < taps; ++t)
    for (int64_t c = 0; c < g.C; ++c)
      for (int64_t oc = 0; oc < g.OC; ++oc) wt[(t * g.OC + oc) * g.C + c] = w[(t * g.C + c) * g.OC + oc];
  const auto mod = [](int64_t v, int64_t s) { return ((v % s) + s) % s; };
  for (int64_t ph = 0; ph < g.sh; ++ph) {
    for (int64_t pw = 0; pw < g.sw; ++pw) {
      // Output pixels (ph + sh·i, pw + sw·j); tap (kh, kw) reaches them from dy row
      // i + (ph + pt − kh·dh)/sh when that division is exact.
      Direct d{dy, g.N, g.OH, g.OW, g.OC, (g.H - ph + g.sh - 1) / g.sh, (g.W - pw + g.sw - 1) / g.sw, 1, 1, {},
               wt.data(), g.C, dx + (ph * g.W + pw) * g.C, g.H * g.W * g.C, g.sh * g.W * g.C, g.sw * g.C, nullptr};
      for (int64_t kh = 0; kh < g.KH; ++kh) {
        const int64_t ry = ph + g.pt - kh * g.dh;
        if (mod(ry, g.sh) != 0) continue;
        for (int64_t kw = 0; kw < g.KW; ++kw) {
          const int64_t rx = pw + g.pl - kw * g.dw;
          if (mod(rx, g.sw) != 0) continue;
          d.taps.push_back({ry / g.sh, rx / g.sw, (kh * g.KW + kw) * g.OC * g.C});
        }
      }
      runDirect(d);
    }
  }
}

void conv2dBackpropFilter(const ConvGeom& g, const float* x, const float* dy, float* dw) {
  if (g.OC == 1 || g.C == 1) {
    filterThin(g, x, dy, dw);
    return;
  }
  const gemm::Kernels& kr = gemm::kernels();
  const int64_t taps = g.KH * g.KW, ct = (g.C + kr.mr - 1) / kr.mr, jt = (g.OC + kr.nr - 1) / kr.nr;
  const int64_t tiles = taps * ct * jt;
  if (g.N == 0) {
    std::memset(dw, 0, sizeof(float) * taps * g.C * g.OC);
    return;
  }
  // Each group of tiles walks the images in order, so an image's x and dy stay in cache while
  // every tile of the group reads them.
  const int64_t groups = std::min<int64_t>(tiles, pool().size());
  pool().run(groups, [&](long grp, int) {
    const int64_t t0 = tiles * grp / groups, t1 = tiles * (grp + 1) / groups;
    std::vector<Seg> segs;
    segs.reserve((size_t)g.OH);
    int64_t segTap = -1;
    for (int64_t n = 0; n < g.N; ++n) {
      segTap = -1;
      for (int64_t tile = t0; tile < t1; ++tile) {
        const int64_t tap = tile / (ct * jt), c0 = ((tile / jt) % ct) * kr.mr, j0 = (tile % jt) * kr.nr;
        if (tap != segTap) {
          // The output pixels this tap reads the image at: whole rows, clipped at the borders.
          segTap = tap;
          segs.clear();
          const int64_t kh = tap / g.KW, kw = tap % g.KW, offX = kw * g.dw - g.pl;
          const int64_t ow0 = std::max<int64_t>(0, (-offX + g.sw - 1) / g.sw);
          const int64_t ow1 = std::min<int64_t>(g.OW, offX >= g.W ? 0 : (g.W - 1 - offX) / g.sw + 1);
          for (int64_t oh = 0; oh < g.OH && ow0 < ow1; ++oh) {
            const int64_t ih = oh * g.sh - g.pt + kh * g.dh;
            if (ih < 0 || ih >= g.H) continue;
            segs.push_back({((n * g.H + ih) * g.W + ow0 * g.sw + offX) * g.C, ((n * g.OH + oh) * g.OW + ow0) * g.OC,
                            ow1 - ow0});
          }
          mergeSegments(segs, g.sw * g.C, g.OC);
        }
        const Tile t{x + c0,
                     1,
                     g.sw * g.C,
                     dy + j0,
                     g.OC,
                     dw + (tap * g.C + c0) * g.OC + j0,
                     g.OC,
                     segs.data(),
                     (int)segs.size(),
                     (int)std::min<int64_t>(kr.mr, g.C - c0),
                     (int)std::min<int64_t>(kr.nr, g.OC - j0),
                     n > 0};
        kr.run(t);
      }
    }
  });
}

}  // namespace rd
