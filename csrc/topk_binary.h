// The binary first stage: sign bits scanned for candidates, re-ranked by exact int8 scores.
//
//   first stage   score_b(q, d) = sum_p 2^p * (dim - 2 * popcount(plane_p(q) xor bits(d)))
//                 (fastret/binary.py: the query's 2^B odd levels against the row's signs)
//   second stage  score(q, d) = (float(<q8, d8>) * s_q) * s_d     (as topk_int8, bit for bit)
//
// Both stages order by score, higher first, then by id, lower first.
#pragma once

#include <cstddef>
#include <cstdint>

#include "simd_paths.h"
#include "topk_int8.h"

namespace fastret {

// Where a segment's int8 codes can be read with pread: row r's dim bytes at offset + r * dim of the
// open file `fd`. Re-ranking then reads only its candidates' rows and maps no page of the codes
// into the process (through a mapping, a row read makes its whole page cache folio resident:
// up to megabytes on current kernels). fd < 0: read them through the segment's codes pointer.
struct CodesFile {
  int fd = -1;
  uint64_t offset = 0;
};

// For every query: the `candidates` best live rows of all segments by the first-stage score, then
// the k best of those by exact int8 score.
//   queries      int8  [n_queries, dim]   query_scales float [n_queries]
//   planes       uint64 [n_queries, query_bits, words]   words = ceil(dim / 64)
//   segments     [n_segments] codes, scales, ids and deleted as for topk_int8 (no picked rows)
//   bits         [n_segments] uint64 [ceil(count / kBitBlock), words, kBitBlock] sign bits of each
//                segment's rows, in blocks (simd_paths.h)
//   codes_files  [n_segments] where to pread each segment's candidate rows, or nullptr: none
//   out_scores   float [n_queries, k]   int8 scores
//   out_rows     int64 [n_queries, k]   global rows, as topk_int8's
// When fewer than k rows are live, the tail of a result holds score -inf and row -1.
// Throws std::invalid_argument for an empty batch or corpus, dim 0 or > 65536, k == 0,
// candidates < k, query_bits outside [1, kMaxQueryBits], or a segment with picked rows;
// std::runtime_error when a codes file cannot be read (naming the segment, the row and the reason).
void topk_binary(const int8_t* queries, const float* query_scales, const uint64_t* planes, size_t n_queries,
                 size_t query_bits, const Segment* segments, const uint64_t* const* bits,
                 const CodesFile* codes_files, size_t n_segments, size_t dim, size_t k, size_t candidates,
                 float* out_scores, int64_t* out_rows);

}  // namespace fastret
