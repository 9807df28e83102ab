// A one-line progress bar redrawn by the calling thread while a worker thread runs the pieces.
#include "progress.hpp"

#include <chrono>
#include <condition_variable>
#include <exception>
#include <mutex>
#include <thread>

namespace memattn::tool {

void run_with_progress(const std::vector<Piece>& pieces, const char* label, BarWhen when, FILE* to) {
  std::mutex m;
  std::condition_variable changed;
  size_t done = 0;
  bool finished = false;
  std::exception_ptr error;
  std::thread worker([&] {
    for (const Piece& p : pieces) {
      try {
        p.work();
      } catch (...) {
        const std::lock_guard lock(m);
        error = std::current_exception();
        break;
      }
      const std::lock_guard lock(m);
      ++done;
      changed.notify_one();
    }
    const std::lock_guard lock(m);
    finished = true;
    changed.notify_one();
  });

  const auto start = std::chrono::steady_clock::now();
  bool drawn = false;
  const auto draw = [&](size_t n) {
    constexpr int kWidth = 30;
    const size_t total = pieces.size();
    const int filled = int(n * kWidth / total);
    const std::string& phase = pieces[n < total ? n : total - 1].phase;
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    std::fprintf(to, "\r%s %-8s [%s%s] %zu/%zu  %.1f s", label, phase.c_str(), std::string(size_t(filled), '#').c_str(),
                 std::string(size_t(kWidth - filled), '.').c_str(), n, total, seconds);
    std::fflush(to);
    drawn = true;
  };
  {
    std::unique_lock lock(m);
    size_t shown = size_t(-1);
    while (!finished) {
      changed.wait_for(lock, std::chrono::milliseconds(100));
      const bool due = when == BarWhen::always || std::chrono::steady_clock::now() - start >= std::chrono::seconds(1);
      if (due && !finished && !pieces.empty() && (when == BarWhen::after_one_second || done != shown))
        draw(shown = done);
    }
  }
  worker.join();
  if (!pieces.empty() && (drawn || when == BarWhen::always) && !error) draw(done);
  if (drawn) std::fputc('\n', to);
  if (error) std::rethrow_exception(error);
}

}  // namespace memattn::tool
