// Determinism and concurrency of TESTPLAN section D for the forward pass: bitwise equal results
// across repeats, thread counts and enclosing OpenMP regions, chunk sizes within the accuracy rule
// (37); many concurrent callers, a forked child (correct and parallel) and calls nested in a
// caller's OpenMP region (no oversubscription) (38).
#include <dirent.h>
#include <gtest/gtest.h>
#include <omp.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstring>
#include <thread>

#include "support.hpp"

using namespace mt;
using memattn::Algorithm;

namespace {

const DType kLowDtypes[] = {DType::f32, DType::bf16, DType::f16};

// 2 x 4 heads x 5 query chunks of 16: 40 work items, enough for every thread count below.
const Shape kShape{2, 70, 90, 4, 2, 24, 16};

// A causal, masked problem so that the work per item is uneven.
void setup(Case& c) {
  c.options.query_chunk = 16;
  c.options.causal = true;
  c.options.align = memattn::Align::bottom_right;
  c.set_mask({kShape.B, 1, kShape.Sq, kShape.Sk},
             random_mask(size_t(kShape.B * kShape.Sq * kShape.Sk), 402, 0.9));
}

// forward of c's inputs and options into fresh out/lse buffers; returns out's and lse's bytes.
std::pair<Buf, Buf> run_into(Case& c, const memattn::Options& o, memattn::Workspace ws = {}) {
  Buf out(c.dtype, c.out.shape), lse(DType::f32, c.lse.shape);
  Tensor ov = out.view(), lv = lse.view();
  memattn::forward(c.q.view(), c.k.view(), c.v.view(), ov, &lv, o, ws);
  return {std::move(out), std::move(lse)};
}

bool same(const std::pair<Buf, Buf>& a, const std::pair<Buf, Buf>& b) {
  return a.first.bytes == b.first.bytes && a.second.bytes == b.second.bytes;
}

// The exit status of a forked child, waited for 10 s at most; -1 (with a test failure saying why)
// if it hung or died of a signal.
int child_exit_status(pid_t child) {
  int status = 0;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (waitpid(child, &status, WNOHANG) == 0) {
    if (std::chrono::steady_clock::now() > deadline) {
      kill(child, SIGKILL);
      waitpid(child, &status, 0);
      ADD_FAILURE() << "the forked child hung for 10 s (OpenMP after fork?)";
      return -1;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  if (!WIFEXITED(status)) {
    ADD_FAILURE() << "the forked child died with signal " << WTERMSIG(status);
    return -1;
  }
  return WEXITSTATUS(status);
}

}  // namespace

TEST(Determinism, det_bitwise_repeat_and_threads) {
  const int max_threads = omp_get_max_threads();
  for (DType dt : kLowDtypes)
    for (Algorithm alg : algorithms_for(dt)) {
      Case c(kShape, dt, 401);
      setup(c);
      c.options.algorithm = alg;
      SCOPED_TRACE(describe(c));
      memattn::Options serial = c.options;
      serial.num_threads = 1;
      const auto want = run_into(c, serial);
      // Repeats: 100 for the default (flash, f32), 20 otherwise.
      const int repeats = alg == Algorithm::flash && dt == DType::f32 ? 100 : 20;
      for (int r = 0; r < repeats; ++r) ASSERT_TRUE(same(run_into(c, c.options), want)) << "repeat " << r;
      for (int threads : {1, 2, 3, 7, max_threads}) {
        memattn::Options o = c.options;
        o.num_threads = threads;
        EXPECT_TRUE(same(run_into(c, o), want)) << threads << " threads";
      }
      // Called from inside an enclosing OpenMP region, with nesting off and on.
      const int levels = omp_get_max_active_levels();
      for (int nest : {1, 2}) {
        omp_set_max_active_levels(nest);
        std::atomic<int> mismatches{0};
#pragma omp parallel num_threads(3)
        {
          memattn::Options o = c.options;
          o.num_threads = omp_get_thread_num();  // 0 (all), 1 and 2 threads
          if (!same(run_into(c, o), want)) ++mismatches;
        }
        EXPECT_EQ(mismatches.load(), 0) << "inside an OpenMP region, max active levels " << nest;
      }
      omp_set_max_active_levels(levels);
    }
}

TEST(Determinism, det_chunk_sizes_within_accuracy_rule) {
  // Different chunk sizes change the summation order: not bitwise, but each within the rule.
  for (DType dt : kLowDtypes)
    for (const auto& [cq, ck] :
         {std::pair{1, 1}, std::pair{7, 13}, std::pair{16, 64}, std::pair{64, 16}, std::pair{0, 0}}) {
      Case c(Shape{1, 70, 90, 2, 1, 24, 16}, dt, 403);
      c.options.query_chunk = cq;
      c.options.key_chunk = ck;
      SCOPED_TRACE(describe(c));
      expect_accurate_all(c);
    }
}

TEST(Determinism, conc_many_callers) {
  const int callers = 2 * int(std::max(2u, std::thread::hardware_concurrency()));
  const std::vector<Algorithm> algs = algorithms_for(DType::f32);
  Case c(kShape, DType::f32, 411);
  setup(c);
  std::vector<std::pair<Buf, Buf>> serial;
  for (Algorithm alg : algs) {
    memattn::Options o = c.options;
    o.algorithm = alg;
    o.num_threads = 1;
    serial.push_back(run_into(c, o));
  }
  // Shared read-only inputs, distinct outputs; caller t uses algorithm t % 4, t % 3 threads
  // (0: all) and, for odd t, its own caller-provided workspace.
  std::atomic<int> mismatches{0}, failures{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < callers; ++t)
    threads.emplace_back([&, t] {
      try {
        memattn::Options o = c.options;
        o.algorithm = algs[size_t(t) % algs.size()];
        o.num_threads = t % 3;
        std::vector<unsigned char> ws;
        if (t % 2) ws.resize(memattn::workspace_bytes(c.q.view(), c.k.view(), c.v.view(), o));
        for (int r = 0; r < 3; ++r)
          if (!same(run_into(c, o, {ws.empty() ? nullptr : ws.data(), ws.size()}),
                    serial[size_t(t) % algs.size()]))
            ++mismatches;
      } catch (const std::exception&) {
        ++failures;
      }
    });
  for (std::thread& th : threads) th.join();
  EXPECT_EQ(mismatches.load(), 0);
  EXPECT_EQ(failures.load(), 0);

  // After fork(), in the child (one thread, the parent's OpenMP pool gone), with 2 threads.
  const pid_t child = fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    int status = 0;
    try {
      for (size_t a = 0; a < algs.size(); ++a) {
        memattn::Options o = c.options;
        o.algorithm = algs[a];
        o.num_threads = 2;
        if (!same(run_into(c, o), serial[a])) status = 1;
      }
    } catch (...) {
      status = 2;
    }
    _exit(status);
  }
  EXPECT_EQ(child_exit_status(child), 0) << "1: results differ from the serial run; 2: the call threw";
}

namespace {

// The number of threads of this process (Linux: the entries of /proc/self/task), 0 where unknown.
int process_threads() {
  DIR* tasks = opendir("/proc/self/task");
  if (!tasks) return 0;
  int n = 0;
  while (const dirent* e = readdir(tasks))
    if (e->d_name[0] != '.') ++n;
  closedir(tasks);
  return n;
}

// The most threads this process held while it lived (itself included), counted by a watcher
// thread as often as it is scheduled.
class ThreadWatcher {
 public:
  ThreadWatcher() : watcher_([this] {
      while (!done_.load()) {
        most_.store(std::max(most_.load(), process_threads()));
        std::this_thread::yield();
      }
    }) {}
  ~ThreadWatcher() { stop(); }
  int most() const { return most_.load(); }
  int stop() {
    done_.store(true);
    if (watcher_.joinable()) watcher_.join();
    return most();
  }

 private:
  std::atomic<bool> done_{false};
  std::atomic<int> most_{0};
  std::thread watcher_;
};

}  // namespace

// A child forked after the parent ran parallel calls computes in parallel, not serially forever:
// while it calls forward with 2 threads, the process holds a thread besides the child's own and a
// watcher's (libgomp's pool does not survive fork(): parallel_for_items starts plain threads
// there). Its results are still bitwise the serial run's.
TEST(Determinism, conc_fork_child_computes_in_parallel) {
  if (process_threads() == 0) GTEST_SKIP() << "no /proc/self/task to count this process's threads";
  Case c(Shape{1, 256, 384, 4, 2, 64, 64}, DType::f32, 421);
  memattn::Options parallel = c.options, serial = c.options;
  parallel.num_threads = 2, serial.num_threads = 1;
  const auto want = run_into(c, serial);
  ASSERT_TRUE(same(run_into(c, parallel), want));  // the parent's OpenMP pool exists before fork()

  const pid_t child = fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    int status = 0;
    try {
      const int own = process_threads();  // 1: fork() keeps only the calling thread
      ThreadWatcher watcher;
      // Calls until a worker shows or 3 s pass, so that a watcher slow to be scheduled still sees one.
      const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(3);
      while (watcher.most() <= own + 1 && std::chrono::steady_clock::now() < until)
        if (!same(run_into(c, parallel), want)) status = 1;
      if (status == 0 && watcher.stop() <= own + 1) status = 3;
    } catch (...) {
      status = 2;
    }
    _exit(status);
  }
  EXPECT_EQ(child_exit_status(child), 0)
      << "1: results differ from the serial run; 2: the call threw; 3: no worker thread, the child ran serially";
}

namespace {

// The most threads this process held beyond `own` (its threads before, plus the watcher counting
// them) while a caller's `#pragma omp parallel num_threads(2)` region, with OpenMP's max active
// levels at `levels`, called forward with `num_threads` from both its threads, 10 times; each
// result is checked bitwise against `want`.
int threads_added_inside_caller_region(Case& c, const std::pair<Buf, Buf>& want, int levels, int num_threads,
                                       std::atomic<int>& mismatches) {
  const int saved_levels = omp_get_max_active_levels();
  omp_set_max_active_levels(levels);
  // The caller's own team, started before counting: its thread is not the library's doing.
  std::atomic<int> members{0};
#pragma omp parallel num_threads(2)
  ++members;
  const int own = process_threads();
  ThreadWatcher watcher;
  for (int r = 0; r < 10; ++r) {
#pragma omp parallel num_threads(2)
    {
      memattn::Options o = c.options;
      o.num_threads = num_threads;
      if (!same(run_into(c, o), want)) ++mismatches;
    }
    // libgomp starts a nested team's threads anew each time and lets them exit after it; one still
    // listed in /proc/self/task while the next call starts its own was counted as a third thread
    // (4 of 30 runs). Wait (up to 2 s) for the last call's threads to be gone first.
    const auto give_up = std::chrono::steady_clock::now() + std::chrono::seconds(2);
    while (process_threads() > own + 1 && std::chrono::steady_clock::now() < give_up)
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  const int most = watcher.stop();
  omp_set_max_active_levels(saved_levels);
  return most - own - 1;
}

}  // namespace

// Calls from inside a caller's 2-thread OpenMP region do not oversubscribe: with nesting off
// (libgomp's default) they run serially, adding no thread; with nesting on, num_threads = 0 ("all
// that OpenMP offers") adds none either, the caller's team already holding the cores, and an
// explicit num_threads = 2 adds at most one thread per caller thread. Results stay bitwise equal.
TEST(Determinism, conc_nested_calls_do_not_oversubscribe) {
  if (process_threads() == 0) GTEST_SKIP() << "no /proc/self/task to count this process's threads";
  Case c(Shape{1, 256, 384, 4, 2, 64, 64}, DType::f32, 431);
  memattn::Options serial = c.options;
  serial.num_threads = 1;
  const auto want = run_into(c, serial);
  std::atomic<int> mismatches{0};
  for (int levels : {1, 2}) {
    EXPECT_LE(threads_added_inside_caller_region(c, want, levels, 0, mismatches), 0)
        << "num_threads 0, max active levels " << levels;
    EXPECT_LE(threads_added_inside_caller_region(c, want, levels, 2, mismatches), levels == 1 ? 0 : 2)
        << "num_threads 2, max active levels " << levels;
  }
  EXPECT_EQ(mismatches.load(), 0);
}
