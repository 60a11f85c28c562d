// Driver of the binary first stage: threads, tiles of sign bits, candidate heaps, exact re-ranking.
//
// Work layout for one block of queries:
//   the rows of all segments are cut into kBitTile-row tiles (a segment's last tile may be short),
//   numbered across segments; threads take contiguous ranges of tiles;
//   for each tile (kBitTile x 48 bytes at 384 dims: L1-resident; whole blocks of kBitBlock rows, so
//   row0 * words is where its bits start) the path's binary kernel computes
//   every query's distances, and rows whose score reaches a query's current worst candidate are
//   offered to that query's private heap of `candidates`;
//   the threads' heaps of each query are merged into its candidates, whose int8 rows are then
//   read (prefetched through the codes pointer, or with pread from the codes file) and scored
//   exactly, in parallel over the queries.
#include "topk_binary.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <limits>
#include <mutex>
#include <stdexcept>
#include <string>
#include <vector>

#include "simd_paths.h"
#include "topk_heap.h"

#ifdef _OPENMP
#include <omp.h>
#endif

namespace fastret {
namespace {

constexpr size_t kBitTile = 256;
static_assert(kBitTile % kBitBlock == 0, "tiles start at a block");
constexpr size_t kMaxDim = 65536;  // |first-stage score| <= dim * 255 stays exact in float32
// Candidate heap entries held at once (threads x queries in a block x candidates).
constexpr size_t kHeapBudget = size_t(1) << 22;

void check_arguments(size_t n_queries, size_t n_rows, size_t dim, size_t k, size_t candidates, size_t query_bits,
                     const Segment* segments, size_t n_segments) {
  if (n_queries == 0) throw std::invalid_argument("topk_binary: the query batch is empty");
  if (n_rows == 0) throw std::invalid_argument("topk_binary: the corpus is empty; add vectors first");
  if (dim == 0 || dim > kMaxDim)
    throw std::invalid_argument("topk_binary: dim must be in [1, " + std::to_string(kMaxDim) + "], got " +
                                std::to_string(dim));
  if (k == 0) throw std::invalid_argument("topk_binary: k must be at least 1");
  if (candidates < k)
    throw std::invalid_argument("topk_binary: candidates (" + std::to_string(candidates) +
                                ") must be at least k (" + std::to_string(k) + ")");
  if (query_bits == 0 || query_bits > kMaxQueryBits)
    throw std::invalid_argument("topk_binary: query_bits must be in [1, " + std::to_string(kMaxQueryBits) +
                                "], got " + std::to_string(query_bits));
  for (size_t s = 0; s < n_segments; ++s)
    if (segments[s].picked != nullptr)
      throw std::invalid_argument("topk_binary: segment " + std::to_string(s) +
                                  " has picked rows; search them with topk_int8");
}

// The segments' rows as kBitTile-row tiles: segment s holds tiles [first_tile[s], first_tile[s+1])
// and global rows [first_row[s], first_row[s+1]).
struct BitTiles {
  std::vector<size_t> first_tile, first_row;

  BitTiles(const Segment* segments, size_t n_segments) : first_tile(n_segments + 1, 0), first_row(n_segments + 1, 0) {
    for (size_t s = 0; s < n_segments; ++s) {
      first_tile[s + 1] = first_tile[s] + (segments[s].count + kBitTile - 1) / kBitTile;
      first_row[s + 1] = first_row[s] + segments[s].count;
    }
  }
  size_t n_tiles() const { return first_tile.back(); }
  size_t n_rows() const { return first_row.back(); }
  size_t segment_of_row(size_t global_row) const {
    return static_cast<size_t>(std::upper_bound(first_row.begin(), first_row.end(), global_row) - first_row.begin()) - 1;
  }
};

// The largest kernel output whose score (base - 2 * distance) can still enter a heap whose worst
// score is `threshold` (-inf while it is not full: every row can). Scores are integers, exact in
// float, so the limit is exact and a tie with the threshold is offered (the heap breaks it by id).
uint32_t distance_limit(float threshold, float base) {
  if (threshold == -std::numeric_limits<float>::infinity()) return std::numeric_limits<uint32_t>::max();
  return static_cast<uint32_t>((base - threshold) / 2.0f);
}

// First stage for one block of queries: each thread's heaps (heaps[t][q]) hold its tiles' best
// `candidates` rows per query.
void scan_bits(const SimdPath& path, const uint64_t* planes, size_t n_block, size_t query_bits, const Segment* segments,
               const uint64_t* const* bits, const BitTiles& tiles, size_t words, size_t dim,
               std::vector<std::vector<TopK>>& heaps) {
  const size_t n_tiles = tiles.n_tiles();
  const int n_threads = static_cast<int>(heaps.size());
  const float base = static_cast<float>(dim * ((size_t(1) << query_bits) - 1));
#pragma omp parallel num_threads(n_threads)
  {
#ifdef _OPENMP
    const size_t t = static_cast<size_t>(omp_get_thread_num());
    const size_t team = static_cast<size_t>(omp_get_num_threads());
#else
    const size_t t = 0, team = 1;
#endif
    uint32_t distances[kBitTile];  // kernels fill whole blocks: kBitTile is a multiple of kBitBlock
    size_t segment = 0;
    for (size_t tile = t * n_tiles / team; tile < (t + 1) * n_tiles / team; ++tile) {
      while (tiles.first_tile[segment + 1] <= tile) ++segment;
      const Segment& seg = segments[segment];
      const size_t row0 = (tile - tiles.first_tile[segment]) * kBitTile;
      const size_t n_rows = std::min(kBitTile, seg.count - row0);
      const uint64_t* rows = bits[segment] + row0 * words;
      for (size_t q = 0; q < n_block; ++q) {
        const uint32_t nearest =
            path.binary_distances(rows, n_rows, words, planes + q * query_bits * words, query_bits, distances);
        TopK& heap = heaps[t][q];
        uint32_t limit = distance_limit(heap.threshold(), base);
        if (nearest > limit) continue;  // once the heap is full, most tiles: no row can enter it
        for (size_t j = 0; j < n_rows; ++j) {
          if (distances[j] > limit || is_deleted(seg.deleted, row0 + j)) continue;  // most rows: one compare
          const int64_t row = static_cast<int64_t>(tiles.first_row[segment] + row0 + j);
          heap.offer(base - 2.0f * static_cast<float>(distances[j]), seg.ids ? seg.ids[row0 + j] : row, row);
          limit = distance_limit(heap.threshold(), base);
        }
      }
    }
  }
}

// The int8 score of a row's codes, exactly as topk_int8 computes it.
float row_score(const int8_t* query, float query_scale, const int8_t* codes, float scale, size_t dim) {
  int32_t dot = 0;
  for (size_t i = 0; i < dim; ++i) dot += int32_t(query[i]) * int32_t(codes[i]);
  return int8_score(dot, query_scale, scale);
}

// Reads `dim` bytes of row `row` from a codes file into `buffer`; an empty string, or what failed.
std::string read_row(const CodesFile& file, size_t row, size_t dim, int8_t* buffer) {
  size_t done = 0;
  while (done < dim) {
    const ssize_t got = pread(file.fd, buffer + done, dim - done, static_cast<off_t>(file.offset + row * dim + done));
    if (got > 0) {
      done += static_cast<size_t>(got);
    } else if (got == 0) {
      return "the file ends before it";
    } else if (errno != EINTR) {
      return std::strerror(errno);
    }
  }
  return {};
}

// Second stage for one query: its candidates' exact scores, the k best into out. Returns what failed
// reading a codes file ("" when nothing did).
std::string rerank(const std::vector<Candidate>& chosen, const int8_t* query, float query_scale,
                   const Segment* segments, const CodesFile* codes_files, const BitTiles& tiles, size_t dim, size_t k,
                   float* out_scores, int64_t* out_rows) {
  for (const Candidate& c : chosen) {  // rows at random: ask for all of them first
    const size_t s = tiles.segment_of_row(static_cast<size_t>(c.row));
    const size_t row = static_cast<size_t>(c.row) - tiles.first_row[s];
    if (codes_files != nullptr && codes_files[s].fd >= 0) {
#ifdef POSIX_FADV_WILLNEED  // (not on macOS: there each read waits for its own row)
      // the OS starts reading the rows not in its page cache, all at once (the reads below wait less)
      posix_fadvise(codes_files[s].fd, static_cast<off_t>(codes_files[s].offset + row * dim),
                    static_cast<off_t>(dim), POSIX_FADV_WILLNEED);
#endif
      continue;
    }
    const int8_t* codes = segments[s].codes + row * dim;
    for (size_t byte = 0; byte < dim; byte += 64) __builtin_prefetch(codes + byte, 0, 3);
  }
  std::vector<int8_t> buffer(dim);
  TopK best(k);
  for (const Candidate& c : chosen) {
    const size_t s = tiles.segment_of_row(static_cast<size_t>(c.row));
    const size_t row = static_cast<size_t>(c.row) - tiles.first_row[s];
    const int8_t* codes = segments[s].codes + row * dim;
    if (codes_files != nullptr && codes_files[s].fd >= 0) {
      const std::string failed = read_row(codes_files[s], row, dim, buffer.data());
      if (!failed.empty())
        return "could not read row " + std::to_string(row) + " of segment " + std::to_string(s) + "'s codes file: " +
               failed;
      codes = buffer.data();
    }
    best.offer(row_score(query, query_scale, codes, segments[s].scales[row], dim), c.id, c.row);
  }
  std::vector<Candidate> top = best.items();
  std::sort(top.begin(), top.end(), better);
  for (size_t i = 0; i < k; ++i) {
    out_scores[i] = i < top.size() ? top[i].score : -std::numeric_limits<float>::infinity();
    out_rows[i] = i < top.size() ? top[i].row : -1;
  }
  return {};
}

}  // namespace

void topk_binary(const int8_t* queries, const float* query_scales, const uint64_t* planes, size_t n_queries,
                 size_t query_bits, const Segment* segments, const uint64_t* const* bits,
                 const CodesFile* codes_files, size_t n_segments, size_t dim, size_t k, size_t candidates,
                 float* out_scores, int64_t* out_rows) {
  const BitTiles tiles(segments, n_segments);
  check_arguments(n_queries, tiles.n_rows(), dim, k, candidates, query_bits, segments, n_segments);
  const SimdPath& path = active_simd_path();
  const size_t words = (dim + 63) / 64;
  const size_t n_threads =
      std::max<size_t>(1, std::min<size_t>(static_cast<size_t>(num_threads()), tiles.n_tiles()));
  const size_t block = std::max<size_t>(1, std::min(n_queries, kHeapBudget / (n_threads * candidates)));
  std::vector<std::vector<TopK>> heaps(n_threads);
  std::vector<std::vector<Candidate>> chosen(block);

  for (size_t q0 = 0; q0 < n_queries; q0 += block) {
    const size_t n_block = std::min(block, n_queries - q0);
    for (auto& mine : heaps) mine.assign(n_block, TopK(candidates));
    scan_bits(path, planes + q0 * query_bits * words, n_block, query_bits, segments, bits, tiles, words, dim, heaps);
    for (size_t q = 0; q < n_block; ++q) {
      std::vector<Candidate>& merged = chosen[q];
      merged.clear();
      for (const auto& mine : heaps) merged.insert(merged.end(), mine[q].items().begin(), mine[q].items().end());
      const size_t found = std::min(candidates, merged.size());
      std::partial_sort(merged.begin(), merged.begin() + found, merged.end(), better);
      merged.resize(found);
    }
    const int rerank_threads = static_cast<int>(std::min(n_threads, n_block));
    std::atomic<bool> failed{false};
    std::string failure;
    std::mutex failure_lock;
#pragma omp parallel for num_threads(rerank_threads) schedule(dynamic)
    for (long q = 0; q < static_cast<long>(n_block); ++q) {
      if (failed.load(std::memory_order_relaxed)) continue;  // no exception may leave the parallel region
      const size_t query = q0 + static_cast<size_t>(q);
      std::string error = rerank(chosen[q], queries + query * dim, query_scales[query], segments, codes_files, tiles,
                                 dim, k, out_scores + query * k, out_rows + query * k);
      if (!error.empty()) {
        std::lock_guard<std::mutex> hold(failure_lock);
        if (!failed.exchange(true)) failure = std::move(error);
      }
    }
    if (failed) throw std::runtime_error("topk_binary: " + failure);
  }
}

}  // namespace fastret
