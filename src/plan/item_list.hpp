// One item list over several planned problems (a varlen call's sequences), so that a single
// parallel loop runs every item of every problem.
#pragma once

#include <algorithm>
#include <cstdint>
#include <utility>
#include <vector>

namespace memattn::detail {

class ItemList {
 public:
  // count(part) items per part; part i owns items [first[i], first[i + 1]).
  template <typename P, typename Count>
  ItemList(const std::vector<P>& parts, Count count) : first_(parts.size() + 1, 0) {
    for (size_t i = 0; i < parts.size(); ++i) first_[i + 1] = first_[i] + count(parts[i]);
  }
  int64_t size() const { return first_.back(); }
  // (part, item within the part) of item `index` in [0, size()); parts without items are skipped.
  std::pair<size_t, int64_t> locate(int64_t index) const {
    const size_t i = size_t(std::upper_bound(first_.begin(), first_.end(), index) - first_.begin()) - 1;
    return {i, index - first_[i]};
  }

 private:
  std::vector<int64_t> first_;
};

}  // namespace memattn::detail
