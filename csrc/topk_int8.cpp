// Driver for exact int8 top-k: path dispatch, threading, tiling and bounded heaps.
//
// Work layout for one block of queries:
//   the block uses the path's narrow batch kernel when it has one and every query code of the
//   block lies in [-kNarrowQueryCode, kNarrowQueryCode], else its full batch kernel;
//   the segments are cut into kTile-vector tiles (a segment's last tile may be short), numbered
//   across segments; a segment with picked rows is cut into tiles of kTile picked rows, which the
//   thread copies into its own buffer first (asking memory for the next tile's rows meanwhile);
//   threads take contiguous ranges of tiles;
//   each thread packs a tile once (L2-resident), then scores every query of the block against it,
//   query_rows queries per kernel call, and offers scores that reach a query's current k-th best to
//   that query's private heap; at the end the per-thread heaps of each query are merged.
#include "topk_int8.h"

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <iterator>
#include <limits>
#include <memory>
#include <new>
#include <stdexcept>

#include "machine_limits.h"
#include "simd_paths.h"
#include "topk_heap.h"

#ifdef _OPENMP
#include <omp.h>
#endif

namespace fastret {
namespace {

// vpdpbusd accumulates (d + 128) * q: |sum| <= dim * 255 * 127 must stay inside int32.
constexpr size_t kMaxDim = 65536;
// Heap entries held at once (threads x queries in a block x k) before queries are split in blocks.
constexpr size_t kHeapBudget = size_t(1) << 22;
constexpr size_t kMaxQueryBlock = 2048;
// Query batches up to this size read the corpus in place with dots_direct, where a path has it:
// packing a tile only pays when several queries share it.
constexpr size_t kDirectMaxQueries = 2;

const SimdPath* const kPaths[] = {
#if defined(__x86_64__) || defined(_M_X64)
    &kAmxPath, &kAvx512VnniPath, &kAvx2Path,
#endif
#if defined(__aarch64__)
    &kI8mmPath, &kNeonPath,
#endif
    &kAmxEmulatedPath, &kScalarPath};

std::atomic<const SimdPath*> g_path{nullptr};
std::atomic<int> g_threads{0};

// How much faster a when_faster path's batch kernel must run than the next path's to be picked,
// measured on one thread for kCalibrationSeconds each at first use.
constexpr double kFasterBy = 1.2;
constexpr double kCalibrationSeconds = 0.02;

const SimdPath* picked_path() {
  for (size_t i = 0; i < std::size(kPaths); ++i) {
    const SimdPath* candidate = kPaths[i];
    if (candidate->pick == SimdPath::Pick::on_request || !candidate->supported()) continue;
    if (candidate->pick == SimdPath::Pick::automatic) return candidate;
    for (size_t j = i + 1; j < std::size(kPaths); ++j) {  // when_faster: against the next automatic path
      const SimdPath* fallback = kPaths[j];
      if (fallback->pick != SimdPath::Pick::automatic || !fallback->supported()) continue;
      if (int8_peak(*candidate, 1, kCalibrationSeconds, 4, true) >=
          kFasterBy * int8_peak(*fallback, 1, kCalibrationSeconds, 4, true))
        return candidate;
      break;
    }
  }
  return &kScalarPath;
}

const SimdPath* active_path() {
  const SimdPath* path = g_path.load();
  if (path == nullptr) {
    path = picked_path();
    g_path.store(path);
  }
  return path;
}

size_t round_up(size_t x, size_t multiple) { return (x + multiple - 1) / multiple * multiple; }

struct AlignedFree {
  void operator()(void* p) const { std::free(p); }
};

template <typename T>
std::unique_ptr<T[], AlignedFree> aligned_buffer(size_t count) {
  void* p = std::aligned_alloc(64, round_up(std::max<size_t>(count * sizeof(T), 1), 64));
  if (p == nullptr) throw std::bad_alloc();
  return std::unique_ptr<T[], AlignedFree>(static_cast<T*>(p));
}

// Per-thread scratch, allocated before the parallel region (no exceptions inside it).
struct Scratch {
  std::unique_ptr<uint8_t[], AlignedFree> packed;
  std::unique_ptr<int32_t[], AlignedFree> dots;
  std::unique_ptr<int8_t[], AlignedFree> picked_rows;  // [kTile, dim] one picked tile's codes
  float picked_scales[kTile];
  std::vector<TopK> heaps;
};

int resolved_threads() {
  const int requested = g_threads.load();
  if (requested > 0) return requested;
#ifdef _OPENMP
  return omp_get_max_threads();
#else
  return 1;
#endif
}

void check_arguments(size_t n_queries, size_t n_corpus, size_t dim, size_t k) {
  if (n_queries == 0) throw std::invalid_argument("topk_int8: the query batch is empty");
  if (n_corpus == 0) throw std::invalid_argument("topk_int8: the corpus is empty; add vectors first");
  if (dim == 0) throw std::invalid_argument("topk_int8: dim must be at least 1");
  if (dim > kMaxDim)
    throw std::invalid_argument("topk_int8: dim " + std::to_string(dim) + " exceeds the supported " +
                                std::to_string(kMaxDim) + " (int32 accumulators would overflow)");
  if (k == 0) throw std::invalid_argument("topk_int8: k must be at least 1");
}

// Where one tile of a segment lives, and how its rows are named.
struct TileSource {
  const int8_t* rows;      // [n_rows, dim]
  const float* scales;     // [n_rows]
  const int64_t* ids;      // the segment's ids [count] (read only for rows that enter a heap) or nullptr
  const uint64_t* deleted; // the segment's bitmap, or nullptr
  size_t n_rows;
  size_t segment_row;      // row of rows[0] within its segment (no picked rows)
  const int64_t* picked;   // [n_rows] the segment rows of a picked tile, or nullptr
  size_t first_row;        // the global row (across all segments) of the segment's row 0

  size_t segment_row_of(size_t j) const { return picked ? static_cast<size_t>(picked[j]) : segment_row + j; }
  int64_t global_row_of(size_t j) const { return static_cast<int64_t>(first_row + segment_row_of(j)); }
  int64_t id_of(size_t j) const { return ids ? ids[segment_row_of(j)] : global_row_of(j); }
};

// The smallest and largest scale of a tile's rows, for offer_tile's cheap rejection; `bounded`
// is false when a scale is negative or NaN, where that bound does not hold.
struct ScaleRange {
  float min, max;
  bool bounded;
};

ScaleRange scale_range(const TileSource& tile) {
  ScaleRange range{tile.scales[0], tile.scales[0], true};
  for (size_t j = 0; j < tile.n_rows; ++j) {
    const float s = tile.scales[j];
    range.bounded &= s >= 0;  // false for NaN too
    range.min = std::min(range.min, s);
    range.max = std::max(range.max, s);
  }
  return range;
}

// Where a kernel call's dot of query r and tile row j lies: dots[r * query_stride + j * row_stride].
struct DotsLayout {
  size_t query_stride, row_stride;

  static DotsLayout of(const BatchKernel& kernel) {
    return kernel.tile_major ? DotsLayout{1, kernel.query_rows} : DotsLayout{kTile, 1};
  }
};

// best[r] = the largest dot of query r < n_queries over the tile's n_rows rows. Tile major, one
// pass down the rows takes every query's maximum at once (a vector of queries per row).
inline void tile_bests(const int32_t* dots, DotsLayout layout, size_t n_queries, size_t n_rows, int32_t* best) {
  if (layout.row_stride == 1) {
    for (size_t r = 0; r < n_queries; ++r) {
      const int32_t* row = dots + r * layout.query_stride;
      best[r] = *std::max_element(row, row + n_rows);
    }
    return;
  }
  std::copy(dots, dots + n_queries, best);
  for (size_t j = 1; j < n_rows; ++j) {
    const int32_t* row = dots + j * layout.row_stride;
    for (size_t r = 0; r < n_queries; ++r) best[r] = std::max(best[r], row[r]);
  }
}

// Offers one query's scores against one tile to its heap: dots[j * row_stride] is row j's dot,
// best the largest of them. NaN ranks as -inf, so every live row has a place in the order and a
// heap always fills up to k.
//
// Most tiles hold no row that can enter a full heap, so the tile's largest dot product is checked
// first: with t = float(best - bias) * q_scale, every score (float(dot - bias) * q_scale) * s
// is at most t * max scale when t >= 0 and t * min scale when t < 0 (float rounding is monotone
// and the scales are >= 0), so a bound below the threshold rejects the whole tile. A NaN bound
// (an infinite scale) rejects nothing, and a negative or NaN query scale skips the check.
inline void offer_tile(TopK& heap, const int32_t* dots, size_t row_stride, int32_t best, int32_t bias,
                       float q_scale, const TileSource& tile, const ScaleRange& range) {
  const float threshold = heap.threshold();
  if (range.bounded && q_scale >= 0) {
    const float top = static_cast<float>(best - bias) * q_scale;
    if (top * (top >= 0 ? range.max : range.min) < threshold) return;
  }
  float scores[kTile];
  for (size_t j = 0; j < tile.n_rows; ++j)
    scores[j] = int8_score(dots[j * row_stride] - bias, q_scale, tile.scales[j]);
  bool any = false;
  for (size_t j = 0; j < tile.n_rows; ++j) any |= scores[j] >= threshold;
  if (!any) return;
  for (size_t j = 0; j < tile.n_rows; ++j) {
    if (scores[j] >= heap.threshold() && !is_deleted(tile.deleted, tile.segment_row_of(j))) {
      const int64_t row = tile.global_row_of(j);
      heap.offer(scores[j], tile.id_of(j), row);
    }
  }
}

// The corpus as a sequence of kTile-row tiles: segment s holds tiles [first_tile[s], first_tile[s+1]).
struct TileMap {
  const Segment* segments;
  size_t dim;
  std::vector<size_t> first_tile;  // [n_segments + 1]
  std::vector<size_t> first_row;   // [n_segments + 1]

  TileMap(const Segment* segs, size_t n_segments, size_t dim_) : segments(segs), dim(dim_) {
    first_tile.assign(n_segments + 1, 0);
    first_row.assign(n_segments + 1, 0);
    for (size_t s = 0; s < n_segments; ++s) {
      const size_t scored = segs[s].picked ? segs[s].n_picked : segs[s].count;
      first_tile[s + 1] = first_tile[s] + (scored + kTile - 1) / kTile;
      first_row[s + 1] = first_row[s] + segs[s].count;
    }
  }
  size_t n_tiles() const { return first_tile.back(); }
  size_t n_rows() const { return first_row.back(); }

  // The segment holding `tile`, searching from `hint` (tiles are visited in ascending order).
  size_t segment_of(size_t tile, size_t hint) const {
    while (first_tile[hint + 1] <= tile) ++hint;
    return hint;
  }

  // A picked tile's rows and scales are left null: gather_picked fills them.
  TileSource source(size_t tile, size_t segment) const {
    const Segment& seg = segments[segment];
    const size_t row = (tile - first_tile[segment]) * kTile;
    if (seg.picked)
      return TileSource{nullptr, nullptr, seg.ids, seg.deleted, std::min(kTile, seg.n_picked - row), 0,
                        seg.picked + row, first_row[segment]};
    return TileSource{seg.codes + row * dim, seg.scales + row, seg.ids, seg.deleted,
                      std::min(kTile, seg.count - row), row, nullptr, first_row[segment]};
  }
};

// Picked tiles whose rows are asked for ahead of the one being copied: rows at random wait on
// memory (and on page walks: a picked row rarely shares a page with another), and only many
// requests in flight hide that (measured on 10M x 384 mapped rows, 1% picked: 1 tile ahead
// 6.7 ms, 2 or 4 tiles 5.0 ms, 8 tiles 7.8 ms).
constexpr size_t kPickAhead = 2;

// Asks memory for a picked row's code lines and scale (no hardware prefetcher can guess them).
inline void prefetch_picked(const Segment& seg, size_t row, size_t dim) {
  const int8_t* codes = seg.codes + row * dim;
  for (size_t byte = 0; byte < dim; byte += 64) __builtin_prefetch(codes + byte, 0, 2);
  __builtin_prefetch(codes + dim - 1, 0, 2);
  __builtin_prefetch(seg.scales + row, 0, 2);
}

// Copies a picked tile's codes and scales into the thread's buffers and points `tile` at them,
// after asking for the rows of the segment's next kPickAhead picked tiles, which then arrive while
// this one and the next are scored.
void gather_picked(const Segment& seg, size_t dim, TileSource& tile, Scratch& mine) {
  const size_t at = static_cast<size_t>(tile.picked - seg.picked);
  const size_t ahead_end = std::min(seg.n_picked, at + (kPickAhead + 1) * kTile);
  for (size_t i = at + tile.n_rows; i < ahead_end; ++i) prefetch_picked(seg, static_cast<size_t>(seg.picked[i]), dim);
  int8_t* rows = mine.picked_rows.get();
  for (size_t j = 0; j < tile.n_rows; ++j) {
    const size_t row = static_cast<size_t>(tile.picked[j]);
    std::memcpy(rows + j * dim, seg.codes + row * dim, dim);
    mine.picked_scales[j] = seg.scales[row];
  }
  tile.rows = rows;
  tile.scales = mine.picked_scales;
}

// Scores one block of queries against every tile of every segment: with `direct`, the path's
// dots_direct on the zero padded queries [n_block, dim_padded]; else the kernel's dots on
// `queries`, its groups of query_rows queries group_bytes apart.
void search_block(const SimdPath& path, const BatchKernel& kernel, bool direct, const int8_t* queries,
                  size_t group_bytes, const int32_t* biases, const float* query_scales, size_t n_block,
                  const TileMap& tiles, size_t dim, size_t dim_padded, std::vector<Scratch>& scratch) {
  const size_t rows_per_call = kernel.query_rows;
  const size_t n_tiles = tiles.n_tiles();
  const int n_threads = static_cast<int>(scratch.size());
  const DotsLayout layout = DotsLayout::of(kernel);

#pragma omp parallel num_threads(n_threads)
  {
#ifdef _OPENMP
    const size_t t = static_cast<size_t>(omp_get_thread_num());
    const size_t team = static_cast<size_t>(omp_get_num_threads());
#else
    const size_t t = 0, team = 1;
#endif
    Scratch& mine = scratch[t];
    int32_t* dots = mine.dots.get();
    int32_t best[kMaxQueryRows];
    size_t segment = 0;
    for (size_t tile = t * n_tiles / team; tile < (t + 1) * n_tiles / team; ++tile) {
      segment = tiles.segment_of(tile, segment);
      TileSource source = tiles.source(tile, segment);
      if (source.picked) gather_picked(tiles.segments[segment], dim, source, mine);
      const ScaleRange range = scale_range(source);
      if (direct) {  // dots_direct prefetches as it reads
        for (size_t q = 0; q < n_block; ++q) {
          path.dots_direct(source.rows, source.n_rows, dim, queries + q * dim_padded, dots);
          tile_bests(dots, DotsLayout{0, 1}, 1, source.n_rows, best);
          offer_tile(mine.heaps[q], dots, 1, best[0], biases[q], query_scales[q], source, range);
        }
        continue;
      }
      // Fetch the next tile while this one is scored: packing reads 16 rows at a stride of dim,
      // a pattern the hardware prefetcher follows poorly (gather_picked did it for picked rows).
      if (!source.picked) {
        const size_t count = tiles.segments[segment].count;
        const int8_t* next_end =
            tiles.segments[segment].codes + std::min(source.segment_row + 2 * kTile, count) * dim;
        for (const int8_t* line = source.rows + source.n_rows * dim; line < next_end; line += 64)
          __builtin_prefetch(line, 0, 3);
      }
      const uint8_t* laid_out = reinterpret_cast<const uint8_t*>(source.rows);
      if (kernel.in_place == nullptr || !kernel.in_place(source.n_rows, dim)) {
        kernel.pack(source.rows, source.n_rows, dim, dim_padded, mine.packed.get());
        laid_out = mine.packed.get();
      }
      for (size_t r0 = 0; r0 < n_block; r0 += rows_per_call) {
        const size_t n_rows = std::min(rows_per_call, n_block - r0);
        kernel.dots(laid_out, dim_padded, queries + (r0 / rows_per_call) * group_bytes, n_rows, dots);
        tile_bests(dots, layout, n_rows, source.n_rows, best);
        for (size_t r = 0; r < n_rows; ++r) {
          const size_t q = r0 + r;
          offer_tile(mine.heaps[q], dots + r * layout.query_stride, layout.row_stride, best[r], biases[q],
                     query_scales[q], source, range);
        }
      }
    }
    if (!direct && kernel.finish != nullptr) kernel.finish();
  }
}

}  // namespace

void topk_int8(const int8_t* queries, const float* query_scales, size_t n_queries,
               const Segment* segments, size_t n_segments, size_t dim, size_t k,
               float* out_scores, int64_t* out_rows) {
  const TileMap tiles(segments, n_segments, dim);
  check_arguments(n_queries, tiles.n_rows(), dim, k);
  const SimdPath& path = *active_path();
  const size_t dim_padded = round_up(dim, 4);
  const size_t n_threads =
      std::max<size_t>(1, std::min<size_t>(static_cast<size_t>(resolved_threads()), tiles.n_tiles()));
  const size_t block = std::min(
      round_up(std::max<size_t>(kHeapBudget / (n_threads * k), 1), path.batch.query_rows),
      round_up(std::min(n_queries, kMaxQueryBlock), path.batch.query_rows));
  const bool has_narrow = path.narrow_batch.dots != nullptr;
  const size_t packed_bytes = std::max(path.batch.packed_bytes(dim_padded),
                                       has_narrow ? path.narrow_batch.packed_bytes(dim_padded) : 0);

  std::vector<Scratch> scratch(n_threads);
  for (Scratch& s : scratch) {
    s.packed = aligned_buffer<uint8_t>(packed_bytes);
    s.dots = aligned_buffer<int32_t>(kMaxQueryRows * kTile);
    s.picked_rows = aligned_buffer<int8_t>(kTile * dim);
  }
  std::vector<int8_t> padded(block * dim_padded);
  std::vector<int32_t> sums(block), biases(block);
  std::vector<int8_t> laid_out_queries;
  std::vector<Candidate> merged;

  for (size_t q0 = 0; q0 < n_queries; q0 += block) {
    const size_t n_block = std::min(block, n_queries - q0);
    std::fill(padded.begin(), padded.end(), int8_t(0));
    int max_code = 0;
    for (size_t q = 0; q < n_block; ++q) {
      const int8_t* src = queries + (q0 + q) * dim;
      std::memcpy(padded.data() + q * dim_padded, src, dim);
      sums[q] = 0;
      for (size_t i = 0; i < dim; ++i) {
        sums[q] += src[i];
        max_code = std::max(max_code, std::abs(int(src[i])));
      }
    }
    const bool direct = path.dots_direct != nullptr && n_block <= kDirectMaxQueries;
    const BatchKernel& kernel = has_narrow && max_code <= kNarrowQueryCode ? path.narrow_batch : path.batch;
    const bool biased = direct ? path.direct_corpus_bias : kernel.corpus_bias;
    for (size_t q = 0; q < n_block; ++q) biases[q] = biased ? 128 * sums[q] : 0;
    const int8_t* block_queries = padded.data();
    const size_t group_bytes = kernel.group_bytes(dim_padded);
    if (!direct && kernel.pack_queries != nullptr) {  // the kernel's own query layout, once per block
      const size_t groups = (n_block + kernel.query_rows - 1) / kernel.query_rows;
      laid_out_queries.resize(groups * group_bytes);
      for (size_t g = 0; g < groups; ++g)
        kernel.pack_queries(padded.data() + g * kernel.query_rows * dim_padded, dim_padded,
                            laid_out_queries.data() + g * group_bytes);
      block_queries = laid_out_queries.data();
    }
    for (Scratch& s : scratch) s.heaps.assign(n_block, TopK(k));

    search_block(path, kernel, direct, block_queries, group_bytes, biases.data(), query_scales + q0, n_block,
                 tiles, dim, dim_padded, scratch);

    for (size_t q = 0; q < n_block; ++q) {
      merged.clear();
      for (const Scratch& s : scratch)
        merged.insert(merged.end(), s.heaps[q].items().begin(), s.heaps[q].items().end());
      // Fewer than k candidates only when fewer than k rows are live.
      const size_t found = std::min(k, merged.size());
      std::partial_sort(merged.begin(), merged.begin() + found, merged.end(), better);
      float* scores = out_scores + (q0 + q) * k;
      int64_t* rows = out_rows + (q0 + q) * k;
      for (size_t i = 0; i < found; ++i) {
        scores[i] = merged[i].score;
        rows[i] = merged[i].row;
      }
      std::fill(scores + found, scores + k, -std::numeric_limits<float>::infinity());
      std::fill(rows + found, rows + k, int64_t(-1));
    }
  }
}

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "picked_rows reads 8 mask bytes as one word");

void picked_rows(const uint8_t* mask, size_t n, std::vector<int64_t>& rows) {
  constexpr uint64_t kLowBits = 0x0101010101010101ull;
  size_t row = 0;
  for (; row + 8 <= n; row += 8) {
    uint64_t word;
    std::memcpy(&word, mask + row, 8);
    if (word == 0) continue;  // most words of a selective mask
    word |= word >> 4;        // any nonzero byte -> its lowest bit set
    word |= word >> 2;
    word |= word >> 1;
    word &= kLowBits;
    for (; word != 0; word &= word - 1)
      rows.push_back(static_cast<int64_t>(row + static_cast<size_t>(__builtin_ctzll(word)) / 8));
  }
  for (; row < n; ++row)
    if (mask[row] != 0) rows.push_back(static_cast<int64_t>(row));
}

void picked_rows_of(const uint8_t* const* masks, const size_t* sizes, size_t n_masks,
                    std::vector<std::vector<int64_t>>& rows) {
  const int n_threads = static_cast<int>(std::max<size_t>(1, std::min<size_t>(resolved_threads(), n_masks)));
#pragma omp parallel for num_threads(n_threads) schedule(dynamic)
  for (long i = 0; i < static_cast<long>(n_masks); ++i) picked_rows(masks[i], sizes[i], rows[i]);
}

std::vector<std::string> simd_paths_compiled() {
  std::vector<std::string> names;
  for (const SimdPath* path : kPaths) names.emplace_back(path->name);
  return names;
}

std::vector<std::string> simd_paths_supported() {
  std::vector<std::string> names;
  for (const SimdPath* path : kPaths)
    if (path->supported()) names.emplace_back(path->name);
  return names;
}

const SimdPath& active_simd_path() { return *active_path(); }

std::string simd_path() { return active_path()->name; }

void set_simd_path(const std::string& name) {
  for (const SimdPath* path : kPaths) {
    if (name == path->name) {
      if (!path->supported())
        throw std::invalid_argument("SIMD path '" + name + "' is not supported by this CPU");
      g_path.store(path);
      return;
    }
  }
  std::string known;
  for (const SimdPath* path : kPaths) known += std::string(known.empty() ? "" : ", ") + path->name;
  throw std::invalid_argument("unknown SIMD path '" + name + "'; expected one of: " + known);
}

void set_num_threads(int n) {
  if (n < 0) throw std::invalid_argument("number of threads must be >= 0 (0 = OpenMP default)");
  g_threads.store(n);
}

int num_threads() { return resolved_threads(); }

}  // namespace fastret
