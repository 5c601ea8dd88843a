{
  "targets": [
    {
      "target_name": "ringdiff_native",
      "sources": ["src/addon.cc", "src/kernels.cc", "src/elementwise.cc", "src/ring.cc", "src/shm.cc"],
      "defines": ["NAPI_VERSION=8", "NAPI_CPP_EXCEPTIONS"],
      "include_dirs": [
        "<!(node -p \"require('node-addon-api').include_dir\")",
        "/usr/include/x86_64-linux-gnu/openblas-pthread",
        "/usr/include/aarch64-linux-gnu/openblas-pthread",
        "/usr/include/openblas"
      ],
      "cflags!": ["-fno-exceptions"],
      "cflags_cc!": ["-fno-exceptions", "-std=gnu++17"],
      "cflags_cc": ["-O3", "-std=c++17", "-fexceptions", "-fno-math-errno", "-fno-trapping-math"],
      "libraries": ["-lopenblas", "-lpthread"]
    }
  ]
}
