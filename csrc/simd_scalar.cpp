// Portable path: the packed tile is the rows themselves, zero padded to dim_padded.
#include <cstring>

#include "simd_paths.h"

namespace fastret {
namespace {

constexpr size_t kRows = 4;

bool always() { return true; }

size_t packed_bytes(size_t dim_padded) { return kTile * dim_padded; }

void pack(const int8_t* rows, size_t n_rows, size_t dim, size_t dim_padded, uint8_t* packed) {
  std::memset(packed, 0, kTile * dim_padded);
  for (size_t v = 0; v < n_rows; ++v) std::memcpy(packed + v * dim_padded, rows + v * dim, dim);
}

void dots(const uint8_t* packed, size_t dim_padded, const int8_t* queries, size_t n_rows,
          int32_t* out) {
  const int8_t* tile = reinterpret_cast<const int8_t*>(packed);
  for (size_t r = 0; r < n_rows; ++r) {
    const int8_t* q = queries + r * dim_padded;
    for (size_t v = 0; v < kTile; ++v) {
      const int8_t* d = tile + v * dim_padded;
      int32_t acc = 0;
      for (size_t i = 0; i < dim_padded; ++i) acc += int32_t(q[i]) * int32_t(d[i]);
      out[r * kTile + v] = acc;
    }
  }
}

}  // namespace

// Each row's planes counted one 64-bit word at a time and combined by Horner's rule, highest plane
// first (the row's word w at lane[w * kBitBlock]: simd_paths.h).
uint32_t binary_distances_portable(const uint64_t* blocks, size_t n_rows, size_t words, const uint64_t* planes,
                                   size_t query_bits, uint32_t* out) {
  uint32_t nearest = UINT32_MAX;
  for (size_t j = 0; j < n_rows; ++j) {
    const uint64_t* lane = bit_lane(blocks, j, words);
    uint32_t total = 0;
    for (size_t p = query_bits; p-- > 0;) {
      uint32_t differing = 0;
      for (size_t w = 0; w < words; ++w)
        differing += static_cast<uint32_t>(__builtin_popcountll(planes[p * words + w] ^ lane[w * kBitBlock]));
      total = 2 * total + differing;
    }
    out[j] = total;
    nearest = total < nearest ? total : nearest;
  }
  return nearest;
}

const SimdPath kScalarPath = {"scalar", false, always, {kRows, packed_bytes, pack, dots}, {}, nullptr,
                              binary_distances_portable};

}  // namespace fastret
