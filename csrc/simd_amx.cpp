// AMX batch kernel of topk_int8 (simd_paths.h), written against the tile operations of
// amx_tiles.h: "amx" runs the instructions (where amx_usable()), "amx-emulated" the same kernel in
// scalar code on any CPU (tests). One or two queries, and the binary first stage, keep the
// AVX-512 path's kernels (the bandwidth ones); "amx-emulated" takes the scalar path's.
//
// The corpus is stored biased to unsigned (d + 128), as on the AVX-512 path, and multiplied as
// unsigned by the signed queries (TDPBSUD): each dot holds <q, d> + 128 * sum(q), which the caller
// removes (corpus_bias).
//
// Packed tile layout: for each 64-byte step s of the dimension (zero padded), each group g of 16
// of the tile's 64 rows, a B tile of 16 slices of 4 bytes x 16 rows (TDPBSUD's layout):
//   packed[((s * 4 + g) * 16 + k) * 64 + v * 4 + b] = rows[g * 16 + v][s * 64 + k * 4 + b] ^ 0x80
// (0x80, a zero, past the rows and the dimension). dots: for 16 queries (tile 4), per step, C_g
// (tiles 0-3: 16 queries x 16 rows of int32) += A x B_g, then C_g to out[q][g * 16 ..].
#include <algorithm>
#include <cstring>

#include "amx_tiles.h"
#include "simd_paths.h"

namespace fastret {
namespace {

constexpr size_t kQueries = kTileRows;        // queries per dots call: one A tile
constexpr size_t kGroups = kTile / kTileRows;  // B tiles per step
constexpr size_t kStep = kTileBytes;           // dimensions per step
constexpr size_t kBTile = kTileRows * kTileBytes;
static_assert(kQueries <= kMaxQueryRows, "the driver's buffers hold one A tile of queries");
static_assert(kGroups == 4, "4 int32 accumulator tiles");

size_t steps(size_t dim_padded) { return (dim_padded + kStep - 1) / kStep; }

size_t packed_bytes(size_t dim_padded) { return steps(dim_padded) * kGroups * kBTile; }

void pack(const int8_t* rows, size_t n_rows, size_t dim, size_t dim_padded, uint8_t* packed) {
  std::memset(packed, 0x80, packed_bytes(dim_padded));
  for (size_t r = 0; r < n_rows; ++r) {
    const size_t g = r / kTileRows, v = r % kTileRows;
    for (size_t i = 0; i < dim; ++i) {
      const size_t s = i / kStep, k = (i % kStep) / 4, b = i % 4;
      packed[((s * kGroups + g) * kTileRows + k) * kTileBytes + v * 4 + b] =
          static_cast<uint8_t>(rows[r * dim + i]) ^ 0x80;
    }
  }
}

template <class Tiles, int G>
void accumulate(Tiles& tiles, const uint8_t* step) {
  tiles.template load<5>(step + G * kBTile, kTileBytes);
  tiles.template dot_int8_ub<G, 4, 5>();
}

template <class Tiles>
void dots(const uint8_t* packed, size_t dim_padded, const int8_t* queries, size_t n_rows, int32_t* out) {
  alignas(64) int8_t a_pad[kQueries * kStep];
  alignas(64) int32_t c_pad[kQueries * kTile];
  Tiles tiles;
  tiles.configure();
  tiles.template zero<0>();
  tiles.template zero<1>();
  tiles.template zero<2>();
  tiles.template zero<3>();
  for (size_t s = 0; s < steps(dim_padded); ++s) {
    const size_t width = std::min(kStep, dim_padded - s * kStep);
    if (n_rows == kQueries && width == kStep) {
      tiles.template load<4>(queries + s * kStep, dim_padded);
    } else {  // a short step or block of queries: zeros past them
      std::memset(a_pad, 0, sizeof(a_pad));
      for (size_t q = 0; q < n_rows; ++q) std::memcpy(a_pad + q * kStep, queries + q * dim_padded + s * kStep, width);
      tiles.template load<4>(a_pad, kStep);
    }
    const uint8_t* step = packed + s * kGroups * kBTile;
    accumulate<Tiles, 0>(tiles, step);
    accumulate<Tiles, 1>(tiles, step);
    accumulate<Tiles, 2>(tiles, step);
    accumulate<Tiles, 3>(tiles, step);
  }
  int32_t* target = n_rows == kQueries ? out : c_pad;
  tiles.template store<0>(target, kTile * sizeof(int32_t));
  tiles.template store<1>(target + kTileRows, kTile * sizeof(int32_t));
  tiles.template store<2>(target + 2 * kTileRows, kTile * sizeof(int32_t));
  tiles.template store<3>(target + 3 * kTileRows, kTile * sizeof(int32_t));
  tiles.release();
  if (n_rows < kQueries) std::memcpy(out, c_pad, n_rows * kTile * sizeof(int32_t));
}

bool always() { return true; }

}  // namespace

const SimdPath kAmxEmulatedPath = {"amx-emulated", true, always, {kQueries, packed_bytes, pack, dots<EmulatedTiles>},
                                   {}, nullptr, binary_distances_portable, /*automatic=*/false};
#if defined(__x86_64__) || defined(_M_X64)
// Not picked on its own until measured faster than the AVX-512 path on an AMX Xeon (benchmarks/amx_gemm.py
// and search_vs_faiss.py); FASTRET_SIMD=amx asks for it.
const SimdPath kAmxPath = {"amx", true, amx_usable, {kQueries, packed_bytes, pack, dots<AmxTiles>}, {},
                           dots_direct_avx512vnni, binary_distances_avx512, /*automatic=*/false};
#endif

}  // namespace fastret
