// What the search drivers (topk_int8.cpp, topk_binary.cpp) share: the int8 score, the ranking
// rule, the bounded heap of the best candidates (and the reservoir for many of them), and the
// deletion bitmap's test.
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

// The c best candidates offered so far, for large c (the binary first stage keeps thousands): an
// offer is appended to a buffer that is cut back to its c best (std::nth_element) when it reaches
// 2c, so an offer costs O(1) amortized where TopK's heap costs O(log c) per entry. The threshold
// is the c-th best score at the last cut (-inf before one): a lower score can never enter.
class Reservoir {
 public:
  explicit Reservoir(size_t c) : c_(c) {}

  // Scores below this can never enter; equal scores may (the cut breaks ties by id).
  float threshold() const { return threshold_; }

  void offer(float score, int64_t id, int64_t row) {
    if (score < threshold_) return;
    items_.push_back(Candidate{score, id, row});
    if (items_.size() >= 2 * c_) cut();
  }

  // The c best offered (all of them when fewer), in no order.
  const std::vector<Candidate>& items() {
    cut();
    return items_;
  }

 private:
  void cut() {
    if (items_.size() <= c_) return;
    std::nth_element(items_.begin(), items_.begin() + static_cast<std::ptrdiff_t>(c_ - 1), items_.end(), better);
    items_.resize(c_);
    threshold_ = items_[c_ - 1].score;  // the c-th best: the ones before it are at least as good
  }

  size_t c_;
  float threshold_ = -std::numeric_limits<float>::infinity();
  std::vector<Candidate> items_;
};

// Bit `row` of a deletion (or skipped-rows) bitmap; nullptr: nothing deleted.
inline bool is_deleted(const uint64_t* deleted, size_t row) {
  return deleted != nullptr && ((deleted[row >> 6] >> (row & 63)) & 1) != 0;
}

}  // namespace fastret
