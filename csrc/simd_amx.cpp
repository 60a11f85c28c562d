// AMX batch kernel of topk_int8 (simd_paths.h), written against the tile operations of
// amx_tiles.h: "amx" runs the instructions (where amx_usable()), "amx-emulated" the same kernel in
// scalar code on any CPU (tests). One or two queries, and the binary first stage, keep the
// AVX-512 path's kernels (the bandwidth ones); "amx-emulated" takes the scalar path's.
//
// The corpus is the A operand, read where it lies: a tile row is 64 code bytes of a corpus row,
// the next at a stride of the row's length, so the codes as stored are already the tiles' layout
// and nothing is packed per call (a tile of fewer than 64 rows, or a dim that is not a multiple of
// 64, is copied zero padded into scratch at a stride of dim rounded up to 64). The queries are the
// B operand, laid out once per search in TDPBSSD's VNNI layout, one B tile per 64 dimensions:
//   group[(s * 16 + k) * 64 + n * 4 + b] = queries[n][s * 64 + k * 4 + b]      (zero past dim)
// Signed corpus by signed queries (TDPBSSD): no bias. Per dots call (64 rows x 16 queries):
//   C_g = 0 (tiles 0-3: 16 rows x 16 queries of int32), g < 4 groups of 16 rows
//   per step s: load B_s (tile 4); for each g: load A_g (tiles 5, 6 in turn), C_g += A_g x B_s
//   C_g to out[(g * 16 + m) * 16 + n] (tile major: row, then query)
// |sum| <= dim * 127 * 127 fits int32 for dim <= 65536 (the driver's limit).
#include <algorithm>
#include <cstring>

#include "amx_tiles.h"
#include "simd_paths.h"

namespace fastret {
namespace {

constexpr size_t kQueries = kTileRows;  // queries per dots call: one B tile's 16 columns
constexpr size_t kStep = kTileBytes;    // dimensions per step
constexpr size_t kBTile = kTileRows * kTileBytes;
static_assert(kQueries <= kMaxQueryRows, "the driver's buffers hold one group of queries");
static_assert(kTile == 4 * kTileRows, "4 int32 accumulator tiles cover a tile's rows");

size_t steps(size_t dim_padded) { return (dim_padded + kStep - 1) / kStep; }

// The row stride of a tile the kernel reads: the rows' own length when it reads them in place.
size_t row_stride(size_t dim_padded) { return steps(dim_padded) * kStep; }

bool in_place(size_t n_rows, size_t dim) { return n_rows == kTile && dim % kStep == 0; }

size_t packed_bytes(size_t dim_padded) { return kTile * row_stride(dim_padded); }

void pack(const int8_t* rows, size_t n_rows, size_t dim, size_t dim_padded, uint8_t* packed) {
  const size_t stride = row_stride(dim_padded);
  std::memset(packed, 0, packed_bytes(dim_padded));
  for (size_t r = 0; r < n_rows; ++r) std::memcpy(packed + r * stride, rows + r * dim, dim);
}

size_t query_group_bytes(size_t dim_padded) { return steps(dim_padded) * kBTile; }

void pack_queries(const int8_t* queries, size_t dim_padded, int8_t* out) {
  std::memset(out, 0, query_group_bytes(dim_padded));
  for (size_t n = 0; n < kQueries; ++n)
    for (size_t i = 0; i < dim_padded; ++i) {
      const size_t s = i / kStep, k = (i % kStep) / 4, b = i % 4;
      out[(s * kTileRows + k) * kTileBytes + n * 4 + b] = queries[n * dim_padded + i];
    }
}

template <class Tiles, int G, int A>
void accumulate(Tiles& tiles, const uint8_t* group_rows, size_t stride) {
  tiles.template load<A>(group_rows, stride);
  tiles.template dot_int8<G, A, 4>();
}

template <class Tiles, int G>
void store(Tiles& tiles, int32_t* out) {
  tiles.template store<G>(out + G * kTileRows * kQueries, kQueries * sizeof(int32_t));
}

template <class Tiles>
void dots(const uint8_t* tile, size_t dim_padded, const int8_t* queries, size_t /*n_rows*/, int32_t* out) {
  const size_t stride = row_stride(dim_padded);
  const size_t group = kTileRows * stride;  // bytes of 16 rows
  Tiles tiles;
  tiles.configure();
  tiles.template zero<0>();
  tiles.template zero<1>();
  tiles.template zero<2>();
  tiles.template zero<3>();
  for (size_t s = 0; s < steps(dim_padded); ++s) {
    tiles.template load<4>(queries + s * kBTile, kTileBytes);
    const uint8_t* rows = tile + s * kStep;
    accumulate<Tiles, 0, 5>(tiles, rows, stride);
    accumulate<Tiles, 1, 6>(tiles, rows + group, stride);
    accumulate<Tiles, 2, 5>(tiles, rows + 2 * group, stride);
    accumulate<Tiles, 3, 6>(tiles, rows + 3 * group, stride);
  }
  store<Tiles, 0>(tiles, out);
  store<Tiles, 1>(tiles, out);
  store<Tiles, 2>(tiles, out);
  store<Tiles, 3>(tiles, out);
}

template <class Tiles>
void finish() {
  Tiles::release_thread();
}

bool always() { return true; }

template <class Tiles>
constexpr BatchKernel kBatch = {kQueries, packed_bytes, pack, dots<Tiles>, /*corpus_bias=*/false, in_place,
                                query_group_bytes, pack_queries, /*tile_major=*/true, finish<Tiles>};

}  // namespace

const SimdPath kAmxEmulatedPath = {"amx-emulated", false, always, kBatch<EmulatedTiles>, {}, nullptr,
                                   binary_distances_portable, SimdPath::Pick::on_request};
#if defined(__x86_64__) || defined(_M_X64)
// Picked where its batch kernel, measured at first use, beats the AVX-512 path's (simd_paths.h).
const SimdPath kAmxPath = {"amx", true, amx_usable, kBatch<AmxTiles>, {}, dots_direct_avx512vnni,
                           binary_distances_avx512, SimdPath::Pick::when_faster};
#endif

}  // namespace fastret
