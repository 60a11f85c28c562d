// The per-instruction-set kernels behind topk_int8, and the tile they work on.
//
// A batch kernel lays out a tile of up to kTile corpus rows for itself (once per tile), then
// computes int32 dot products of query_rows queries at a time against it:
//
//   pack:  rows int8 [n_rows <= kTile, dim]          -> packed uint8 [packed_bytes(dim_padded)]
//   dots:  tile, queries (one group of query_rows)    -> int32 [query_rows, kTile] buffer:
//          out[r * kTile + j] (query r, row j), or out[j * query_rows + r] for a tile_major kernel
//
// A kernel with in_place reads a tile's rows where they lie when in_place(n_rows, dim) holds (the
// driver then passes the rows to dots and never packs). The queries are int8 [query_rows,
// dim_padded] (zero padded rows and columns), or, for a kernel with pack_queries, that group laid
// out once per search in query_group_bytes(dim_padded) bytes. A kernel with finish needs it
// called by each thread that ran its dots before the thread does anything else (AMX: tile release).
//
// Every path has a batch kernel for any query codes in [-127, 127]. A path may add a narrow one,
// exact only for query codes in [-kNarrowQueryCode, kNarrowQueryCode] (what fastret's own query
// quantization produces); the driver uses it for a block of queries that all lie in that range.
//
// A path may also offer dots_direct, for a query or two, which reads the rows where they are
// (sequential memory access, no packing):
//
//   dots_direct: rows int8 [n_rows <= kTile, dim], query int8 [dim_padded] -> int32 [n_rows]
//
// dim_padded is dim rounded up to a multiple of 4. Rows past n_rows pack as zero vectors.
// A kernel (batch: its corpus_bias; dots_direct: the path's direct_corpus_bias) that computes with
// corpus bytes as unsigned (d + 128) holds <q, d> + 128 * sum(q) in its dots, and the caller
// subtracts the query's bias.
#pragma once

#include <cstddef>
#include <cstdint>

namespace fastret {

constexpr size_t kTile = 64;          // corpus vectors per packed tile
constexpr size_t kMaxQueryRows = 16;  // the largest query_rows of any path (AMX: one tile of queries)

// The largest query code magnitude a narrow batch kernel accepts.
constexpr int kNarrowQueryCode = 63;

struct BatchKernel {
  size_t query_rows;
  size_t (*packed_bytes)(size_t dim_padded);
  void (*pack)(const int8_t* rows, size_t n_rows, size_t dim, size_t dim_padded, uint8_t* packed);
  // n_rows: the queries of the group (the rest of it is zeros)
  void (*dots)(const uint8_t* tile, size_t dim_padded, const int8_t* queries, size_t n_rows, int32_t* out);
  bool corpus_bias = false;
  bool (*in_place)(size_t n_rows, size_t dim) = nullptr;  // nullptr: always pack
  size_t (*query_group_bytes)(size_t dim_padded) = nullptr;
  void (*pack_queries)(const int8_t* queries, size_t dim_padded, int8_t* out) = nullptr;  // one group
  bool tile_major = false;
  void (*finish)() = nullptr;

  // Bytes of one group of query_rows queries as dots reads them.
  size_t group_bytes(size_t dim_padded) const {
    return pack_queries != nullptr ? query_group_bytes(dim_padded) : query_rows * dim_padded;
  }
};

// Sign bits are stored in blocks of kBitBlock rows, word-major within a block, so that one vector
// register holds word w of several rows and no row needs a sum across lanes:
//   word w of row r at bits[((r / kBitBlock) * words + w) * kBitBlock + r % kBitBlock]
// A segment's last block is padded to kBitBlock rows (fastret/binary.py: sign_bits).
constexpr size_t kBitBlock = 8;
// The largest query_bits the binary kernels and topk_binary take (fastret.binary.MAX_QUERY_BITS).
constexpr size_t kMaxQueryBits = 8;

// The binary first stage's kernel (fastret/binary.py): for each of n_rows rows of `words` uint64
// sign bits, from the first row of a block on,
//   out[j] = sum_p popcount(planes[p] xor row_j) << p      p < query_bits <= 8
//   blocks uint64 [ceil(n_rows / kBitBlock), words, kBitBlock], planes uint64 [query_bits, words]
//   -> out uint32 [n_rows rounded up to kBitBlock]   (the padding rows' entries are scratch)
// and returns min(out[0 .. n_rows)), so that a tile none of whose rows can enter a heap is skipped
// with one compare (the score is dim * (2^query_bits - 1) - 2 * out[j]: a lower out is a better row).
using BinaryDistances = uint32_t (*)(const uint64_t* blocks, size_t n_rows, size_t words, const uint64_t* planes,
                                     size_t query_bits, uint32_t* out);

// Word w of row j (of a tile that starts at a block) is lane(j)[w * kBitBlock].
inline const uint64_t* bit_lane(const uint64_t* blocks, size_t j, size_t words) {
  return blocks + (j / kBitBlock) * words * kBitBlock + j % kBitBlock;
}

// The portable kernel, which the paths without a faster one use.
uint32_t binary_distances_portable(const uint64_t* blocks, size_t n_rows, size_t words, const uint64_t* planes,
                                   size_t query_bits, uint32_t* out);
#if defined(__x86_64__) || defined(_M_X64)
// With AVX2 table lookups (simd_avx2.cpp): the AVX2 path's, and AVX-512's without VPOPCNTDQ.
uint32_t binary_distances_avx2(const uint64_t* blocks, size_t n_rows, size_t words, const uint64_t* planes,
                               size_t query_bits, uint32_t* out);
#endif

struct SimdPath {
  const char* name;
  bool direct_corpus_bias;  // dots_direct's corpus bias
  bool (*supported)();
  BatchKernel batch;         // query codes in [-127, 127]
  BatchKernel narrow_batch;  // query codes in [-kNarrowQueryCode, kNarrowQueryCode]; dots nullptr: none
  void (*dots_direct)(const int8_t* rows, size_t n_rows, size_t dim, const int8_t* query,
                      int32_t* out);  // nullptr: use pack + dots
  BinaryDistances binary_distances;
  // How the path is picked when none is asked for (FASTRET_SIMD, set_simd_path): the first supported
  // path of the list in topk_int8.cpp that is automatic, or is when_faster and, measured on this
  // machine at first use, runs its batch kernel kFasterBy times the rate of the next automatic
  // path (a matrix unit whose speed depends on the CPU generation); on_request paths never (an
  // emulation for tests).
  enum class Pick { automatic, when_faster, on_request };
  Pick pick = Pick::automatic;
};

// The path topk_int8 uses now (chosen on first use; see set_simd_path in topk_int8.h).
const SimdPath& active_simd_path();

extern const SimdPath kScalarPath;
// The AMX batch kernel's tile operations in scalar code (simd_amx.cpp), for tests on any CPU.
extern const SimdPath kAmxEmulatedPath;
#if defined(__x86_64__) || defined(_M_X64)
extern const SimdPath kAvx2Path;
extern const SimdPath kAvx512VnniPath;
extern const SimdPath kAmxPath;
// The AVX-512 path's kernels that the AMX path shares (simd_avx512vnni.cpp).
void dots_direct_avx512vnni(const int8_t* rows, size_t n_rows, size_t dim, const int8_t* query, int32_t* out);
uint32_t binary_distances_avx512(const uint64_t* blocks, size_t n_rows, size_t words, const uint64_t* planes,
                                 size_t query_bits, uint32_t* out);
#endif
#if defined(__aarch64__)
extern const SimdPath kI8mmPath;
extern const SimdPath kNeonPath;
// The NEON path's kernels that the I8MM path shares (simd_neon.cpp).
void dots_direct_neon(const int8_t* rows, size_t n_rows, size_t dim, const int8_t* query, int32_t* out);
uint32_t binary_distances_neon(const uint64_t* blocks, size_t n_rows, size_t words, const uint64_t* planes,
                               size_t query_bits, uint32_t* out);
#endif

}  // namespace fastret
