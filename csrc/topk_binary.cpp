// Driver of the binary first stage: threads, tiles of sign bits, candidate reservoirs, exact re-ranking.
//
// Work layout for one block of queries:
//   the rows of all segments are cut into kBitTile-row tiles (a segment's last tile may be short),
//   numbered across segments; threads take chunks of up to kScanChunkTiles tiles, the next as they finish one;
//   for each tile (kBitTile x 48 bytes at 384 dims: L1-resident; whole blocks of kBitBlock rows, so
//   row0 * words is where its bits start) the path's binary kernel computes
//   every query's distances, and rows whose score reaches a query's current threshold are
//   offered to that query's private reservoir of `candidates` (topk_heap.h: O(1) an offer, as a
//   query may keep tens of thousands);
//   each thread cuts its reservoirs to their best, then those of each query are merged into its
//   candidates (cut to the best `candidates`, split into row ranges), whose int8 rows are then
//   read (prefetched through the codes pointer a few rows ahead, or with pread from the codes
//   file) and scored exactly, in parallel over the queries and, when the block has fewer queries
//   than threads, over slices of each query's candidates (their k best merged after).
#include "topk_binary.h"

#include <fcntl.h>
#include <sys/uio.h>
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

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#include "simd_paths.h"
#include "topk_heap.h"

#ifdef _OPENMP
#include <omp.h>
#endif

namespace fastret {
namespace {

constexpr size_t kBitTile = 256;
static_assert(kBitTile % kBitBlock == 0, "tiles start at a block");
// Tiles a thread takes at once in the scan (at most; at least kScanChunksPerThread chunks a thread):
// chunks handed out as threads finish theirs, so that a thread slowed down (by the OS, another
// process) does not leave the others waiting.
constexpr size_t kScanChunkTiles = 64;
constexpr size_t kScanChunksPerThread = 4;
constexpr size_t kMaxDim = 65536;  // |first-stage score| <= dim * 255 stays exact in float32
// Candidate entries held at once (threads x queries in a block x 2 candidates: a reservoir's buffer).
constexpr size_t kCandidateBudget = size_t(1) << 22;
// The sampled bound of the first stage (sampled_bounds): tiles sampled so that about kSampleHits of
// the candidates would fall in them, only where that is at most 1 / kSampleShare of the tiles; the
// bound lets through about kSampleSlack x the candidates (a miss costs a second scan).
constexpr double kSampleHits = 64;
constexpr double kSampleShare = 8;
constexpr double kSampleSlack = 2;
// Candidates whose codes are prefetched ahead of the one being scored (through the codes pointer).
constexpr size_t kPrefetchAhead = 8;

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
  size_t segment_of_tile(size_t tile) const {
    return static_cast<size_t>(std::upper_bound(first_tile.begin(), first_tile.end(), tile) - first_tile.begin()) - 1;
  }
};

// Candidates in the order of their rows.
bool by_row(const Candidate& a, const Candidate& b) { return a.row < b.row; }

// The largest kernel output whose score (base - 2 * distance) can still enter a reservoir whose
// threshold is `threshold` (-inf before its first cut: every row can). Scores are integers, exact
// in float, so the limit is exact and a tie with the threshold is offered (the cut breaks it by id).
uint32_t distance_limit(float threshold, float base) {
  if (threshold == -std::numeric_limits<float>::infinity()) return std::numeric_limits<uint32_t>::max();
  return static_cast<uint32_t>((base - threshold) / 2.0f);
}

// Bit j set for each of the n <= 64 distances d[j] <= limit: four rows a compare with SSE2 (every
// x86-64 CPU; unsigned order as signed after flipping the top bits), one a compare elsewhere. Once
// a query keeps thousands of candidates most tiles hold one, so this runs on nearly every row.
uint64_t rows_within(const uint32_t* d, size_t n, uint32_t limit) {
  uint64_t mask = 0;
  size_t j = 0;
#if defined(__SSE2__)
  const __m128i flip = _mm_set1_epi32(INT32_MIN);
  const __m128i above = _mm_xor_si128(_mm_set1_epi32(static_cast<int>(limit)), flip);  // d <= limit: not d > limit
  for (; j + 4 <= n; j += 4) {
    const __m128i values = _mm_xor_si128(_mm_loadu_si128(reinterpret_cast<const __m128i*>(d + j)), flip);
    const int over = _mm_movemask_ps(_mm_castsi128_ps(_mm_cmpgt_epi32(values, above)));
    mask |= static_cast<uint64_t>(~over & 0xF) << j;
  }
#endif
  for (; j < n; ++j) mask |= uint64_t(d[j] <= limit) << j;
  return mask;
}

// First stage for one block of queries: each thread's reservoirs (reservoirs[t][q]) hold its tiles' best
// `candidates` rows per query among those whose distance is at most bounds[q].
void scan_bits(const SimdPath& path, const uint64_t* planes, size_t n_block, size_t query_bits, const Segment* segments,
               const uint64_t* const* bits, const BitTiles& tiles, size_t words, size_t dim, const uint32_t* bounds,
               std::vector<std::vector<Reservoir>>& reservoirs) {
  const size_t n_tiles = tiles.n_tiles();
  const int n_threads = static_cast<int>(reservoirs.size());
  const float base = static_cast<float>(dim * ((size_t(1) << query_bits) - 1));
  const size_t most = n_tiles / (kScanChunksPerThread * static_cast<size_t>(n_threads));
  const int chunk = static_cast<int>(std::max<size_t>(1, std::min(kScanChunkTiles, most)));
#pragma omp parallel num_threads(n_threads)
  {
#ifdef _OPENMP
    const size_t t = static_cast<size_t>(omp_get_thread_num());
#else
    const size_t t = 0;
#endif
    uint32_t distances[kBitTile];  // kernels fill whole blocks: kBitTile is a multiple of kBitBlock
    size_t segment = 0;            // a thread's chunks come in increasing order: its segment only moves on
#pragma omp for schedule(dynamic, chunk) nowait
    for (long tile_number = 0; tile_number < static_cast<long>(n_tiles); ++tile_number) {
      const size_t tile = static_cast<size_t>(tile_number);
      while (tiles.first_tile[segment + 1] <= tile) ++segment;
      const Segment& seg = segments[segment];
      const size_t row0 = (tile - tiles.first_tile[segment]) * kBitTile;
      const size_t n_rows = std::min(kBitTile, seg.count - row0);
      const uint64_t* rows = bits[segment] + row0 * words;
      for (size_t q = 0; q < n_block; ++q) {
        const uint32_t nearest =
            path.binary_distances(rows, n_rows, words, planes + q * query_bits * words, query_bits, distances);
        Reservoir& reservoir = reservoirs[t][q];
        uint32_t limit = std::min(bounds[q], distance_limit(reservoir.threshold(), base));
        if (nearest > limit) continue;  // once the reservoir is cut, most tiles: no row can enter it
        for (size_t j0 = 0; j0 < n_rows; j0 += 64) {
          // the rows of these 64 that may enter, as a mask, then those alone
          uint64_t may_enter = rows_within(distances + j0, std::min<size_t>(64, n_rows - j0), limit);
          for (; may_enter != 0; may_enter &= may_enter - 1) {
            const size_t j = j0 + static_cast<size_t>(__builtin_ctzll(may_enter));
            if (distances[j] > limit || is_deleted(seg.deleted, row0 + j)) continue;  // the limit may have risen
            const int64_t row = static_cast<int64_t>(tiles.first_row[segment] + row0 + j);
            reservoir.offer(base - 2.0f * static_cast<float>(distances[j]), seg.ids ? seg.ids[row0 + j] : row, row);
            limit = std::min(bounds[q], distance_limit(reservoir.threshold(), base));
          }
        }
      }
    }
    for (Reservoir& mine : reservoirs[t]) mine.items();  // each thread cuts its own to their best, at once
  }
}

// For each query of a block, a distance that at least `candidates` live rows are likely to reach,
// estimated from a sample of evenly spaced tiles (their live rows' distances), so that the scan
// offers about kSampleSlack x `candidates` rows instead of candidates x ln(rows / candidates) (a
// running threshold's count): most of the first stage's cost when thousands of candidates are
// kept. No bound (UINT32_MAX) where the sample would not be small next to the rows. The caller
// checks that the bound let `candidates` rows through, and scans again without it if not.
std::vector<uint32_t> sampled_bounds(const SimdPath& path, const uint64_t* planes, size_t n_block, size_t query_bits,
                                     const Segment* segments, const uint64_t* const* bits, const BitTiles& tiles,
                                     size_t words, size_t candidates) {
  std::vector<uint32_t> bounds(n_block, std::numeric_limits<uint32_t>::max());
  const size_t n_tiles = tiles.n_tiles();
  // tiles whose rows hold about kSampleHits of the `candidates` best, were those spread evenly
  const double wanted = kSampleHits * static_cast<double>(tiles.n_rows()) / (static_cast<double>(candidates) * kBitTile);
  if (wanted * kSampleShare > static_cast<double>(n_tiles)) return bounds;
  const size_t n_sampled = static_cast<size_t>(wanted) + 1;
  std::vector<std::vector<uint32_t>> sampled(n_block);
  uint32_t distances[kBitTile];
  for (size_t i = 0; i < n_sampled; ++i) {
    const size_t tile = i * n_tiles / n_sampled;
    const size_t segment = tiles.segment_of_tile(tile);
    const Segment& seg = segments[segment];
    const size_t row0 = (tile - tiles.first_tile[segment]) * kBitTile;
    const size_t n_rows = std::min(kBitTile, seg.count - row0);
    for (size_t q = 0; q < n_block; ++q) {
      path.binary_distances(bits[segment] + row0 * words, n_rows, words, planes + q * query_bits * words, query_bits,
                            distances);
      for (size_t j = 0; j < n_rows; ++j)
        if (!is_deleted(seg.deleted, row0 + j)) sampled[q].push_back(distances[j]);
    }
  }
  // the sample's rank of kSampleSlack x its expected share of the candidates
  const double expected =
      static_cast<double>(candidates) * static_cast<double>(n_sampled * kBitTile) / static_cast<double>(tiles.n_rows());
  const size_t rank = static_cast<size_t>(kSampleSlack * expected);
  for (size_t q = 0; q < n_block; ++q) {
    std::vector<uint32_t>& mine = sampled[q];
    if (rank >= mine.size()) continue;
    std::nth_element(mine.begin(), mine.begin() + static_cast<std::ptrdiff_t>(rank), mine.end());
    bounds[q] = mine[rank];
  }
  return bounds;
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

// Reads row `row` of a codes file into `buffer` only if the page cache holds it (preadv2 with
// RWF_NOWAIT: one system call, no wait for the disk); false when it does not, or the kernel cannot
// say (then never asked again).
bool read_cached(const CodesFile& file, size_t row, size_t dim, int8_t* buffer) {
#if defined(__linux__) && defined(RWF_NOWAIT)
  static std::atomic<bool> unsupported{false};
  if (unsupported.load(std::memory_order_relaxed)) return false;
  iovec part{buffer, dim};
  const ssize_t got = preadv2(file.fd, &part, 1, static_cast<off_t>(file.offset + row * dim), RWF_NOWAIT);
  if (got < 0 && (errno == EOPNOTSUPP || errno == ENOSYS || errno == EINVAL)) unsupported = true;
  return got == static_cast<ssize_t>(dim);
#else
  (void)file, (void)row, (void)dim, (void)buffer;
  return false;
#endif
}

// Second stage for a slice of one query's candidates: their exact scores, the k best of them into
// `best`. Rows in memory (or mapped) are read through the codes pointer, prefetched a few ahead;
// rows of a codes file are read at once when the page cache holds them, and the others, after
// the OS has been asked for all of them together, one by one. Returns what failed reading a codes
// file ("" when nothing did).
std::string rerank(const Candidate* chosen, size_t n_chosen, const int8_t* query, float query_scale,
                   const Segment* segments, const CodesFile* codes_files, const BitTiles& tiles, size_t dim,
                   TopK& best) {
  // Each candidate's segment, row there and scale, gathered first (the candidates come in row order):
  // the scales' loads, each from another page of the mapping, overlap in this loop, where inside the
  // one below each waited for memory (most of that loop's time outside its system calls).
  struct Located {
    size_t segment, row;
    float scale;
  };
  std::vector<Located> where(n_chosen);
  for (size_t i = 0, s = 0; i < n_chosen; ++i) {
    const size_t global_row = static_cast<size_t>(chosen[i].row);
    if (global_row < tiles.first_row[s]) s = 0;  // out of row order: look from the first segment again
    while (tiles.first_row[s + 1] <= global_row) ++s;
    const size_t row = global_row - tiles.first_row[s];
    where[i] = {s, row, segments[s].scales[row]};
  }
  auto in_file = [&](size_t s) { return codes_files != nullptr && codes_files[s].fd >= 0; };
  auto prefetch = [&](const Located& at) {
    if (in_file(at.segment)) return;
    const int8_t* codes = segments[at.segment].codes + at.row * dim;
    for (size_t byte = 0; byte < dim; byte += 64) __builtin_prefetch(codes + byte, 0, 3);
  };
  for (size_t i = 0; i < std::min(n_chosen, kPrefetchAhead); ++i) prefetch(where[i]);
  std::vector<int8_t> buffer(dim);
  std::vector<size_t> waiting;  // candidates of codes files whose rows are not in the page cache
  for (size_t i = 0; i < n_chosen; ++i) {
    if (i + kPrefetchAhead < n_chosen) prefetch(where[i + kPrefetchAhead]);
    const Located& at = where[i];
    const int8_t* codes = segments[at.segment].codes + at.row * dim;
    if (in_file(at.segment)) {
      if (!read_cached(codes_files[at.segment], at.row, dim, buffer.data())) {
        waiting.push_back(i);
        continue;
      }
      codes = buffer.data();
    }
    best.offer(row_score(query, query_scale, codes, at.scale, dim), chosen[i].id, chosen[i].row);
  }
#ifdef POSIX_FADV_WILLNEED  // (not on macOS: there each read waits for its own row)
  for (size_t i : waiting) {  // rows at random: the OS starts reading them all at once (the reads below wait less)
    const CodesFile& file = codes_files[where[i].segment];
    posix_fadvise(file.fd, static_cast<off_t>(file.offset + where[i].row * dim), static_cast<off_t>(dim),
                  POSIX_FADV_WILLNEED);
  }
#endif
  for (size_t i : waiting) {
    const Located& at = where[i];
    const std::string failed = read_row(codes_files[at.segment], at.row, dim, buffer.data());
    if (!failed.empty())
      return "could not read row " + std::to_string(at.row) + " of segment " + std::to_string(at.segment) +
             "'s codes file: " + failed;
    best.offer(row_score(query, query_scale, buffer.data(), at.scale, dim), chosen[i].id, chosen[i].row);
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
  const size_t block = std::max<size_t>(1, std::min(n_queries, kCandidateBudget / (n_threads * 2 * candidates)));
  std::vector<std::vector<Reservoir>> reservoirs(n_threads);
  std::vector<std::vector<Candidate>> chosen(block);
  // A block of fewer queries than threads re-ranks each query's candidates in `slices` parts.
  const size_t slices = std::max<size_t>(1, n_threads / std::min(block, n_queries));
  std::vector<TopK> best;

  for (size_t q0 = 0; q0 < n_queries; q0 += block) {
    const size_t n_block = std::min(block, n_queries - q0);
    const uint64_t* block_planes = planes + q0 * query_bits * words;
    std::vector<uint32_t> bounds =
        sampled_bounds(path, block_planes, n_block, query_bits, segments, bits, tiles, words, candidates);
    for (auto& mine : reservoirs) mine.assign(n_block, Reservoir(candidates));
    scan_bits(path, block_planes, n_block, query_bits, segments, bits, tiles, words, dim, bounds.data(), reservoirs);
    for (size_t q = 0; q < n_block; ++q) {
      size_t found = 0;
      for (auto& mine : reservoirs) found += mine[q].items().size();
      if (found < candidates && bounds[q] != std::numeric_limits<uint32_t>::max()) {
        // the sample's bound let fewer than `candidates` rows through: scan again, unbounded (exact either way)
        bounds.assign(n_block, std::numeric_limits<uint32_t>::max());
        for (auto& mine : reservoirs) mine.assign(n_block, Reservoir(candidates));
        scan_bits(path, block_planes, n_block, query_bits, segments, bits, tiles, words, dim, bounds.data(), reservoirs);
        break;
      }
    }
    for (size_t q = 0; q < n_block; ++q) {
      std::vector<Candidate>& merged = chosen[q];
      merged.clear();
      for (auto& mine : reservoirs) merged.insert(merged.end(), mine[q].items().begin(), mine[q].items().end());
      if (merged.size() > candidates) {
        std::nth_element(merged.begin(), merged.begin() + static_cast<std::ptrdiff_t>(candidates - 1), merged.end(),
                         better);
        merged.resize(candidates);
      }
      // each slice's rows before the next one's (each is sorted where it is re-ranked, in parallel)
      for (size_t slice = 1; slice < slices; ++slice)
        std::nth_element(merged.begin() + static_cast<std::ptrdiff_t>((slice - 1) * merged.size() / slices),
                         merged.begin() + static_cast<std::ptrdiff_t>(slice * merged.size() / slices), merged.end(),
                         by_row);
    }
    best.assign(n_block * slices, TopK(k));
    const int rerank_threads = static_cast<int>(std::min(n_threads, n_block * slices));
    std::atomic<bool> failed{false};
    std::string failure;
    std::mutex failure_lock;
#pragma omp parallel for num_threads(rerank_threads) schedule(dynamic)
    for (long item = 0; item < static_cast<long>(n_block * slices); ++item) {
      if (failed.load(std::memory_order_relaxed)) continue;  // no exception may leave the parallel region
      const size_t q = static_cast<size_t>(item) / slices, slice = static_cast<size_t>(item) % slices;
      const size_t query = q0 + q, n_chosen = chosen[q].size();
      const size_t begin = slice * n_chosen / slices, end = (slice + 1) * n_chosen / slices;
      // in row order: the re-ranking reads the codes (pages, or the file) front to back
      std::sort(chosen[q].begin() + static_cast<std::ptrdiff_t>(begin),
                chosen[q].begin() + static_cast<std::ptrdiff_t>(end), by_row);
      std::string error = rerank(chosen[q].data() + begin, end - begin, queries + query * dim, query_scales[query],
                                 segments, codes_files, tiles, dim, best[item]);
      if (!error.empty()) {
        std::lock_guard<std::mutex> hold(failure_lock);
        if (!failed.exchange(true)) failure = std::move(error);
      }
    }
    if (failed) throw std::runtime_error("topk_binary: " + failure);
    for (size_t q = 0; q < n_block; ++q) {  // each query's slices: their k best, in order
      std::vector<Candidate> top;
      for (size_t slice = 0; slice < slices; ++slice) {
        const auto& items = best[q * slices + slice].items();
        top.insert(top.end(), items.begin(), items.end());
      }
      const size_t kept = std::min(k, top.size());
      std::partial_sort(top.begin(), top.begin() + kept, top.end(), better);
      for (size_t i = 0; i < k; ++i) {
        out_scores[(q0 + q) * k + i] = i < kept ? top[i].score : -std::numeric_limits<float>::infinity();
        out_rows[(q0 + q) * k + i] = i < kept ? top[i].row : -1;
      }
    }
  }
}

}  // namespace fastret
