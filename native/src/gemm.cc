// Choosing the micro-kernels, the optional OpenBLAS, and the blocked matrix product
// (TF.js's BatchMatMul / _FusedMatMul) on top of them.
#include "gemm.h"

#include <dlfcn.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <vector>

#include "kernels.h"

namespace rd::gemm {

namespace {

bool cpuHas(const char* feature) {
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
  __builtin_cpu_init();
  if (std::strcmp(feature, "avx512f") == 0) return __builtin_cpu_supports("avx512f");
  if (std::strcmp(feature, "avx2") == 0) return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#endif
  (void)feature;
  return false;
}

const Kernels* best() {
  if (const Kernels* k = avx512Kernels(); k && cpuHas("avx512f")) return k;
  if (const Kernels* k = avx2Kernels(); k && cpuHas("avx2")) return k;
  return genericKernels();
}

const Kernels* byName(const std::string& name) {
  if (name == "avx512") return avx512Kernels() && cpuHas("avx512f") ? avx512Kernels() : nullptr;
  if (name == "avx2") return avx2Kernels() && cpuHas("avx2") ? avx2Kernels() : nullptr;
  if (name == "generic") return genericKernels();
  return nullptr;
}

// OpenBLAS, if the machine has it, found at run time: the build never needs its headers or
// library, and a machine without it runs the same binary.
struct OpenBlas {
  SgemmFn sgemm = nullptr;
  void (*setThreads)(int) = nullptr;
  std::string version;
};

const OpenBlas& openBlas() {
  static OpenBlas ob;
  static std::once_flag once;
  std::call_once(once, [] {
    if (const char* off = std::getenv("RINGDIFF_OPENBLAS"); off && std::strcmp(off, "off") == 0) return;
    for (const char* lib : {"libopenblas.so.0", "libopenblas.so", "libopenblasp.so.0"}) {
      void* h = dlopen(lib, RTLD_NOW | RTLD_LOCAL);
      if (!h) continue;
      auto sg = reinterpret_cast<SgemmFn>(dlsym(h, "cblas_sgemm"));
      if (!sg) {
        dlclose(h);
        continue;
      }
      ob.sgemm = sg;
      ob.setThreads = reinterpret_cast<void (*)(int)>(dlsym(h, "openblas_set_num_threads"));
      auto config = reinterpret_cast<char* (*)()>(dlsym(h, "openblas_get_config"));
      ob.version = config ? config() : lib;
      // Our pool splits the work; OpenBLAS's own threads would compete with it for the cores.
      if (ob.setThreads) ob.setThreads(1);
      return;
    }
  });
  return ob;
}

std::mutex g_mu;
const Kernels* g_kernels = nullptr;
bool g_forcedOpenBlas = false;
// Off when a kernel set was chosen by name: then it runs the plain products too.
bool g_autoOpenBlas = true;
std::string g_why;

void matmulOurs(int64_t batch, int64_t M, int64_t N, int64_t K, bool ta, bool tb, const float* a,
                const int32_t* aIdx, const float* b, const int32_t* bIdx, float* out, const Epilogue& ep,
                const Kernels& kr, bool threaded);
void matmulOpenBlas(int64_t batch, int64_t M, int64_t N, int64_t K, bool ta, bool tb, const float* a,
                    const int32_t* aIdx, const float* b, const int32_t* bIdx, float* out, const Epilogue& ep,
                    bool threaded);

void ensureInit() {
  if (g_kernels) return;
  const char* env = std::getenv("RINGDIFF_GEMM");
  const std::string want = env && *env ? env : "auto";
  if (want == "openblas") {
    g_kernels = best();
    g_forcedOpenBlas = openBlas().sgemm != nullptr;
    g_why = g_forcedOpenBlas ? "RINGDIFF_GEMM=openblas" : "RINGDIFF_GEMM=openblas, but OpenBLAS did not load";
    return;
  }
  const Kernels* k = want == "auto" ? nullptr : byName(want);
  g_kernels = k ? k : best();
  g_autoOpenBlas = k == nullptr;
  g_why = k ? "RINGDIFF_GEMM=" + want
            : (want == "auto" ? std::string("best this CPU runs")
                              : "RINGDIFF_GEMM=" + want + " cannot run here; best this CPU runs instead");
}

constexpr int kRowMajor = 101, kNoTrans = 111, kTrans = 112;

}  // namespace

const Kernels& kernels() {
  std::lock_guard<std::mutex> lk(g_mu);
  ensureInit();
  return *g_kernels;
}

bool select(const std::string& name) {
  std::lock_guard<std::mutex> lk(g_mu);
  ensureInit();
  if (name == "auto") {
    g_kernels = best();
    g_forcedOpenBlas = false;
    g_autoOpenBlas = true;
    g_why = "best this CPU runs";
    return true;
  }
  if (name == "openblas") {
    if (!openBlas().sgemm) return false;
    g_forcedOpenBlas = true;
    g_why = "selected: openblas";
    return true;
  }
  const Kernels* k = byName(name);
  if (!k) return false;
  g_kernels = k;
  g_forcedOpenBlas = false;
  g_autoOpenBlas = false;
  g_why = "selected: " + name;
  return true;
}

bool matmulUsesOpenBlas() {
  std::lock_guard<std::mutex> lk(g_mu);
  ensureInit();
  return g_forcedOpenBlas || (g_autoOpenBlas && g_kernels == genericKernels() && openBlas().sgemm);
}

Calibration calibrate() {
  const Kernels& kr = kernels();
  struct Shape {
    int64_t M, N, K;
  };
  const Shape shapes[] = {{256, 384, 384}, {1024, 64, 576}, {512, 512, 512}};
  const int32_t zero = 0;
  auto time = [&](bool theirs) {
    double total = 0;
    for (const Shape& s : shapes) {
      std::vector<float> A(s.M * s.K, 0.5f), B(s.K * s.N, 0.25f), C(s.M * s.N);
      double bestMs = 1e30;
      for (int rep = 0; rep < 5; ++rep) {
        const auto t0 = std::chrono::steady_clock::now();
        if (theirs) {
          matmulOpenBlas(1, s.M, s.N, s.K, false, false, A.data(), &zero, B.data(), &zero, C.data(), Epilogue{},
                         false);
        } else {
          matmulOurs(1, s.M, s.N, s.K, false, false, A.data(), &zero, B.data(), &zero, C.data(), Epilogue{}, kr,
                     false);
        }
        bestMs = std::min(bestMs, std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
      }
      total += bestMs;
    }
    return total;
  };
  return {time(false), openBlas().sgemm ? time(true) : -1.0};
}

SgemmFn openBlasSgemm() { return openBlas().sgemm; }

std::string describe() {
  const bool viaOpenBlas = matmulUsesOpenBlas();
  std::lock_guard<std::mutex> lk(g_mu);
  std::string s = std::string("ringdiff ") + g_kernels->name + " kernels (" + std::to_string(g_kernels->mr) + "x" +
                  std::to_string(g_kernels->nr) + " tiles; " + g_why + ")";
  if (!openBlas().sgemm) return s + "; OpenBLAS not present (optional)";
  s += "; OpenBLAS present (" + openBlas().version + "): ";
  if (g_forcedOpenBlas) return s + "matmul on OpenBLAS (RINGDIFF_GEMM=openblas); convolutions on ours";
  if (viaOpenBlas) return s + "matmul on OpenBLAS (faster than the portable kernels); convolutions on ours";
  if (!g_autoOpenBlas) return s + "not used (a kernel set was chosen by name)";
  return s + "not used (ours are as fast on this instruction set; RINGDIFF_GEMM=openblas to use it for matmul)";
}

namespace {

// Blocking for the plain product: a KC-deep slice of A's block rows (MC × KC) stays in L2 while a
// KC × NR column panel of B stays in L1 across MC / mr tiles.
constexpr int64_t kKC = 256, kMC = 128, kNC = 256;

void matmulOurs(int64_t batch, int64_t M, int64_t N, int64_t K, bool ta, bool tb, const float* a,
                const int32_t* aIdx, const float* b, const int32_t* bIdx, float* out, const Epilogue& ep,
                const Kernels& kr, bool threaded) {
  // The kernels read B by rows; a transposed B is copied once per distinct operand batch.
  std::vector<float> bt;
  int64_t bBatches = 0;
  if (tb) {
    for (int64_t i = 0; i < batch; ++i) bBatches = std::max<int64_t>(bBatches, (int64_t)bIdx[i] + 1);
    bt.resize((size_t)(bBatches * K * N));
    for (int64_t bb = 0; bb < bBatches; ++bb) {
      const float* src = b + bb * N * K;
      float* dst = bt.data() + bb * K * N;
      for (int64_t j = 0; j < N; ++j)
        for (int64_t k = 0; k < K; ++k) dst[k * N + j] = src[j * K + k];
    }
  }
  const float* B0 = tb ? bt.data() : b;
  const int64_t rsA = ta ? 1 : K, csA = ta ? M : 1;
  const int64_t mb = (M + kMC - 1) / kMC, nb = (N + kNC - 1) / kNC;
  const int64_t ntasks = batch * mb * nb;
  for (int64_t pc = 0; pc < K; pc += kKC) {
    const int64_t kc = std::min(kKC, K - pc);
    const bool last = pc + kc >= K;
    auto body = [&](long task, int) {
      const int64_t bi = task / (mb * nb), ib = (task / nb) % mb, jb = task % nb;
      const float* A = a + (int64_t)aIdx[bi] * M * K;
      const float* B = B0 + (int64_t)bIdx[bi] * K * N;
      float* C = out + bi * M * N;
      const int64_t i0 = ib * kMC, i1 = std::min(M, i0 + kMC), j0 = jb * kNC, j1 = std::min(N, j0 + kNC);
      const Seg seg{pc * csA, pc * N, kc};
      for (int64_t j = j0; j < j1; j += kr.nr) {
        for (int64_t i = i0; i < i1; i += kr.mr) {
          Tile t{A + i * rsA, rsA, csA, B + j, N, C + i * N + j, N, &seg, 1,
                 (int)std::min<int64_t>(kr.mr, i1 - i), (int)std::min<int64_t>(kr.nr, j1 - j), pc > 0};
          kr.run(t);
        }
      }
      if (last) applyEpilogue(C + i0 * N + j0, i1 - i0, j1 - j0, N, j0, ep);
    };
    // Small products do not repay waking the pool.
    if (!threaded || 2.0 * batch * M * N * kc < 2e6 || ntasks == 1) {
      for (long t = 0; t < ntasks; ++t) body(t, 0);
    } else {
      pool().run(ntasks, body);
    }
  }
}

void matmulOpenBlas(int64_t batch, int64_t M, int64_t N, int64_t K, bool ta, bool tb, const float* a,
                    const int32_t* aIdx, const float* b, const int32_t* bIdx, float* out, const Epilogue& ep,
                    bool threaded) {
  const SgemmFn sgemm = openBlas().sgemm;
  const int opA = ta ? kTrans : kNoTrans, opB = tb ? kTrans : kNoTrans;
  const int lda = (int)(ta ? M : K), ldb = (int)(tb ? K : N);
  const int threads = !threaded || 2.0 * batch * M * N * K < 2e6 ? 1 : pool().size();
  // Split the larger of M and N so thin products (8 rows × 128 columns) still split.
  const bool byRows = M >= N;
  const int64_t extent = byRows ? M : N;
  const int64_t perBatch = std::max<int64_t>(1, (threads + batch - 1) / batch);
  const int64_t block = std::max<int64_t>(byRows ? 16 : 64, (extent + perBatch - 1) / perBatch);
  const int64_t blocks = (extent + block - 1) / block;
  auto body = [&](long task, int) {
    const int64_t bi = task / blocks, i0 = (task % blocks) * block, n = std::min(extent, i0 + block) - i0;
    const float* A = a + (int64_t)aIdx[bi] * M * K;
    const float* B = b + (int64_t)bIdx[bi] * K * N;
    float* C = out + bi * M * N;
    if (byRows) {
      sgemm(kRowMajor, opA, opB, (int)n, (int)N, (int)K, 1.f, ta ? A + i0 : A + i0 * K, lda, B, ldb, 0.f, C + i0 * N,
            (int)N);
      applyEpilogue(C + i0 * N, n, N, N, 0, ep);
    } else {
      sgemm(kRowMajor, opA, opB, (int)M, (int)n, (int)K, 1.f, A, lda, tb ? B + i0 * K : B + i0, ldb, 0.f, C + i0,
            (int)N);
      applyEpilogue(C + i0, M, n, N, i0, ep);
    }
  };
  const long ntasks = (long)(batch * blocks);
  if (threads == 1) {
    for (long t = 0; t < ntasks; ++t) body(t, 0);
  } else {
    pool().run(ntasks, body);
  }
}

}  // namespace

}  // namespace rd::gemm

namespace rd {

void matmul(int64_t batch, int64_t M, int64_t N, int64_t K, bool ta, bool tb, const float* a, const int32_t* aIdx,
            const float* b, const int32_t* bIdx, float* out, const Epilogue& ep) {
  if (K == 0) {
    std::memset(out, 0, sizeof(float) * batch * M * N);
    for (int64_t bi = 0; bi < batch; ++bi) applyEpilogue(out + bi * M * N, M, N, N, 0, ep);
    return;
  }
  if (gemm::matmulUsesOpenBlas()) {
    gemm::matmulOpenBlas(batch, M, N, K, ta, tb, a, aIdx, b, bIdx, out, ep, true);
  } else {
    gemm::matmulOurs(batch, M, N, K, ta, tb, a, aIdx, b, bIdx, out, ep, gemm::kernels(), true);
  }
}

}  // namespace rd
