// How deep the binary first stage's re-ranking reads (oversample="auto"): candidates are read in
// first-stage order, a round at a time, and reading stops once the next candidate is unlikely to
// reach the k best exact scores found so far (fastret/search/binary.py: the rule, and
// rerank_depths, its reference, computed the same way in the same order).
//
// After each round, with the n candidates read so far (first-stage score b, exact score e):
//
//   the least-squares line  e ~ slope * b + intercept,  residual variance  var(e) - slope * cov(b, e)
//   stop when  intercept + slope * b_next + sigmas * sqrt(residual variance) < the k-th best e
//
// where b_next is the first-stage score of the next candidate (the best one not read). Never stops
// before k candidates are read, when the b read so far are all equal, or once an exact score is
// not finite.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <limits>

namespace fastret {

// Read rounds of adaptive depth, and what turns it off.
struct RerankDepth {
  size_t round = 256;  // candidates between two checks of the rule
  double sigmas = 0;   // residual standard deviations of margin; <= 0: read every candidate
};

// The running sums of the candidates read (in double, summed in reading order, as the reference).
class DepthFit {
 public:
  void add(double b, double e) {
    if (!std::isfinite(e)) finite_ = false;
    if (!finite_) return;
    n_ += 1;
    sb_ += b;
    se_ += e;
    sbb_ += b * b;
    sbe_ += b * e;
    see_ += e * e;
  }

  // True when a candidate of first-stage score `next` is predicted `sigmas` residual standard
  // deviations below `kth` (the k-th best exact score read, -inf before k were read).
  bool beyond(double next, double kth, double sigmas) const {
    if (!finite_ || n_ == 0 || !(kth > -std::numeric_limits<double>::infinity())) return false;
    const double mb = sb_ / n_, me = se_ / n_;
    const double vb = sbb_ / n_ - mb * mb;
    if (!(vb > 0)) return false;
    const double cbe = sbe_ / n_ - mb * me;
    const double slope = cbe / vb;
    const double residual = std::max(0.0, see_ / n_ - me * me - slope * cbe);
    return me + slope * (next - mb) + sigmas * std::sqrt(residual) < kth;
  }

 private:
  bool finite_ = true;
  double n_ = 0, sb_ = 0, se_ = 0, sbb_ = 0, sbe_ = 0, see_ = 0;
};

}  // namespace fastret
