// What the search drivers (topk_int8.cpp, topk_binary.cpp) share: the int8 score, the ranking
// rule, the bounded heap of the best candidates, and the deletion bitmap's test.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <vector>

namespace fastret {

// The int8 score of topk_int8.h, (float(<q8, d8>) * s_q) * s_d evaluated in that order, with NaN
// (an overflowing product times a zero scale) ranked as -inf.
inline float int8_score(int32_t dot, float query_scale, float scale) {
  const float score = static_cast<float>(dot) * query_scale * scale;
  return score == score ? score : -std::numeric_limits<float>::infinity();
}

struct Candidate {
  float score;
  int64_t id;   // ranks ties
  int64_t row;  // returned
};

// Ranking rule shared by every path: higher score first, then lower id.
inline bool better(const Candidate& a, const Candidate& b) {
  return a.score > b.score || (a.score == b.score && a.id < b.id);
}

// The k best candidates offered so far; the heap's root is the worst of them.
class TopK {
 public:
  explicit TopK(size_t k) : k_(k) {}

  // Scores below this can never enter; equal scores may (lower id wins).
  float threshold() const {
    return items_.size() < k_ ? -std::numeric_limits<float>::infinity() : items_.front().score;
  }

  void offer(float score, int64_t id, int64_t row) {
    const Candidate c{score, id, row};
    if (items_.size() < k_) {
      items_.push_back(c);
      std::push_heap(items_.begin(), items_.end(), better);
    } else if (better(c, items_.front())) {
      std::pop_heap(items_.begin(), items_.end(), better);
      items_.back() = c;
      std::push_heap(items_.begin(), items_.end(), better);
    }
  }

  const std::vector<Candidate>& items() const { return items_; }

 private:
  size_t k_;
  std::vector<Candidate> items_;
};

// Bit `row` of a deletion (or skipped-rows) bitmap; nullptr: nothing deleted.
inline bool is_deleted(const uint64_t* deleted, size_t row) {
  return deleted != nullptr && ((deleted[row >> 6] >> (row & 63)) & 1) != 0;
}

}  // namespace fastret
