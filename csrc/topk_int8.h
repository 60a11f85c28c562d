// Exact top-k inner-product search over int8 vectors with per-vector float scales.
//
//   score(q, d) = (float(<q8, d8>) * s_q) * s_d        (float32, evaluated in this order)
//
// Results are ordered by score, higher first; equal scores are ordered by id, lower first.
// Query codes must lie in [-127, 127] (symmetric quantization; the caller validates that);
// corpus codes may be any int8.
//
// Plain C++17: pointers and sizes in, outputs last. No Python here (see bindings.cpp).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace fastret {

// One block of corpus rows: an index segment (a memory-mapped file, a store shard or an in-memory
// array). The rows of all segments of a call are numbered one after another ("global rows").
struct Segment {
  const int8_t* codes;     // int8  [count, dim]   row-major
  const float* scales;     // float [count]
  const int64_t* ids;      // int64 [count] or nullptr (then the id of a row is its global row)
  const uint64_t* deleted; // bitmap [ceil(count / 64)] (bit r of word r / 64: row r is deleted) or nullptr
  size_t count;
  // Optional: score only these rows of the segment (a filter's few passing rows), so the cost
  // follows them, not count. Strictly ascending, each in [0, count) (bindings.cpp checks).
  const int64_t* picked = nullptr;  // int64 [n_picked] or nullptr (every row)
  size_t n_picked = 0;
};

// Top-k for every query over all segments at once: one thread pool, one bounded heap per query,
// so the result is the same as for one concatenated corpus.
//   queries      int8  [n_queries, dim]   row-major
//   query_scales float [n_queries]
//   segments     [n_segments]
//   out_scores   float [n_queries, k]
//   out_rows     int64 [n_queries, k]   global rows (map them to ids and segments in the caller)
// Deleted rows are never returned. A segment with `picked` rows is read only at those rows: each
// thread copies a tile of them into an L1-resident buffer (prefetching the next tile's rows) and
// scores it with the same kernels, so the result equals that of a segment of just those rows. A score that is NaN (an overflowing product times a zero scale)
// ranks as -inf. When fewer than k rows are live, the tail of a result holds score -inf and row -1.
// Throws std::invalid_argument for an empty query batch, an empty corpus, dim == 0 or k == 0.
void topk_int8(const int8_t* queries, const float* query_scales, size_t n_queries,
               const Segment* segments, size_t n_segments, size_t dim, size_t k,
               float* out_scores, int64_t* out_rows);

// The rows of a filter's bool mask [n] that are set (any nonzero byte), ascending, appended to
// `rows`: a segment's picked rows. One pass, 8 bytes at a time.
void picked_rows(const uint8_t* mask, size_t n, std::vector<int64_t>& rows);

// picked_rows of n_masks masks at once, on the search's threads, into rows[i].
void picked_rows_of(const uint8_t* const* masks, const size_t* sizes, size_t n_masks,
                    std::vector<std::vector<int64_t>>& rows);

// The SIMD paths this build knows, best first, and which of them this CPU can run.
std::vector<std::string> simd_paths_compiled();
std::vector<std::string> simd_paths_supported();

// The path used by topk_int8 ("avx512vnni", "avx2", "neon" or "scalar"). The best supported path is
// chosen on first use; set_simd_path forces one (std::invalid_argument if unknown or unsupported).
std::string simd_path();
void set_simd_path(const std::string& name);

// Worker threads for one call; 0 means OpenMP's default (OMP_NUM_THREADS or all cores).
void set_num_threads(int n);
int num_threads();

}  // namespace fastret
