// Runs a list of work pieces on a worker thread while the calling thread draws a progress bar.
#pragma once

#include <cstdio>
#include <functional>
#include <string>
#include <vector>

namespace memattn::tool {

struct Piece {
  std::string phase;           // shown beside the bar, e.g. "forward"
  std::function<void()> work;
};

enum class BarWhen {
  after_one_second,  // redraw every ~100 ms once the run has taken a second (interactive use)
  always,            // from the start, and once per piece (tests)
};

// Runs the pieces in order on one worker thread and draws "\r<label> <phase> [###...] i/n t s" on
// `to` meanwhile; a drawn bar ends with its final state and a newline. The first exception a
// piece throws stops the run and is rethrown here, after the worker has finished.
void run_with_progress(const std::vector<Piece>& pieces, const char* label, BarWhen when, FILE* to);

}  // namespace memattn::tool
