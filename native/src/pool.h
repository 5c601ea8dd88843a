// A small fork-join pool. Kernels split their work into tasks that threads claim from an
// atomic counter, so uneven tasks (border rows of im2col, ragged last blocks) still balance.
// Workers sleep on a condition variable between calls, after spinning for a few tens of
// microseconds: a training step calls kernels back to back with only TF.js's bookkeeping in
// between, and a futex wake-up per kernel would add about as much, while sleeping right away
// keeps an idle process from burning a core that other jobs on a 2-core host need.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define RD_PAUSE() _mm_pause()
#else
#define RD_PAUSE() std::this_thread::yield()
#endif

namespace rd {

class Pool {
 public:
  using Fn = std::function<void(long task, int tid)>;

  Pool() = default;
  Pool(const Pool&) = delete;
  Pool& operator=(const Pool&) = delete;
  ~Pool() { resize(1); }

  int size() const { return nthreads_; }

  // The caller counts as one thread, so n threads means n - 1 workers.
  void resize(int n) {
    if (n < 1) n = 1;
    if (n == nthreads_ && (int)workers_.size() == n - 1) return;
    {
      std::lock_guard<std::mutex> lk(mu_);
      stop_ = true;
      generation_.fetch_add(1);
    }
    cv_.notify_all();
    for (auto& t : workers_) t.join();
    workers_.clear();
    stop_ = false;
    nthreads_ = n;
    // Workers start from the current generation; reading it inside the thread could miss a run().
    const unsigned long gen = generation_.load();
    for (int i = 1; i < n; ++i) workers_.emplace_back([this, i, gen] { loop(i, gen); });
  }

  // Runs fn(task, tid) for every task in [0, ntasks); returns when all are done.
  void run(long ntasks, const Fn& fn) {
    if (ntasks <= 0) return;
    if (nthreads_ == 1 || ntasks == 1) {
      for (long t = 0; t < ntasks; ++t) fn(t, 0);
      return;
    }
    {
      std::lock_guard<std::mutex> lk(mu_);
      fn_ = &fn;
      ntasks_ = ntasks;
      next_.store(0);
      active_.store((int)workers_.size());
      generation_.fetch_add(1);
    }
    cv_.notify_all();
    work(0);
    // The workers usually finish within microseconds of the caller.
    const auto until = std::chrono::steady_clock::now() + kSpin;
    while (active_.load() != 0 && std::chrono::steady_clock::now() < until) RD_PAUSE();
    std::unique_lock<std::mutex> lk(mu_);
    done_cv_.wait(lk, [this] { return active_.load() == 0; });
    fn_ = nullptr;
  }

 private:
  void work(int tid) {
    for (;;) {
      long t = next_.fetch_add(1);
      if (t >= ntasks_) break;
      (*fn_)(t, tid);
    }
  }

  void loop(int tid, unsigned long seen) {
    for (;;) {
      const auto until = std::chrono::steady_clock::now() + kSpin;
      while (generation_.load() == seen && std::chrono::steady_clock::now() < until) RD_PAUSE();
      {
        std::unique_lock<std::mutex> lk(mu_);
        cv_.wait(lk, [&] { return generation_.load() != seen; });
        seen = generation_.load();
        if (stop_) return;
      }
      work(tid);
      {
        std::lock_guard<std::mutex> lk(mu_);
        if (active_.fetch_sub(1) == 1) done_cv_.notify_one();
      }
    }
  }

  // How long a thread spins before it blocks (see the top of this file).
  static constexpr std::chrono::microseconds kSpin{50};

  int nthreads_ = 1;
  std::vector<std::thread> workers_;
  std::mutex mu_;
  std::condition_variable cv_, done_cv_;
  // Changed under mu_ (so that waits cannot miss it), read without it while spinning.
  std::atomic<unsigned long> generation_{0};
  bool stop_ = false;
  const Fn* fn_ = nullptr;
  long ntasks_ = 0;
  std::atomic<long> next_{0};
  std::atomic<int> active_{0};
};

}  // namespace rd
