{
  "target_defaults": {
    "cflags!": ["-fno-exceptions"],
    "cflags_cc!": ["-fno-exceptions", "-std=gnu++17"],
    "cflags_cc": ["-O3", "-std=c++17", "-fPIC", "-fexceptions", "-fno-math-errno", "-fno-trapping-math", "-ffp-contract=off"]
  },
  "targets": [
    {
      "target_name": "gemm_avx512",
      "type": "static_library",
      "sources": ["src/gemm_avx512.cc"],
      "conditions": [["target_arch=='x64'", { "cflags_cc": ["-mavx512f", "-mavx2", "-mfma"] }]]
    },
    {
      "target_name": "gemm_avx2",
      "type": "static_library",
      "sources": ["src/gemm_avx2.cc"],
      "conditions": [["target_arch=='x64'", { "cflags_cc": ["-mavx2", "-mfma"] }]]
    },
    {
      "target_name": "ringdiff_native",
      "dependencies": ["gemm_avx512", "gemm_avx2"],
      "sources": [
        "src/addon.cc",
        "src/kernels.cc",
        "src/conv.cc",
        "src/norm.cc",
        "src/optim.cc",
        "src/gemm.cc",
        "src/gemm_generic.cc",
        "src/elementwise.cc",
        "src/ring.cc",
        "src/shm.cc"
      ],
      "defines": ["NAPI_VERSION=8", "NAPI_CPP_EXCEPTIONS"],
      "include_dirs": ["<!(node -p \"require('node-addon-api').include_dir\")"],
      "libraries": ["-lpthread", "-ldl"]
    }
  ]
}
