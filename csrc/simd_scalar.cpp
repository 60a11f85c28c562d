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

uint32_t binary_distances_portable(const uint64_t* blocks, size_t n_rows, size_t words, const uint64_t* planes,
                               size_t query_bits, uint32_t* out) {
  return binary_distances_with(DifferingWords{}, blocks, n_rows, words, planes, query_bits, out);
}

const SimdPath kScalarPath = {"scalar", false, always, {kRows, packed_bytes, pack, dots}, {}, nullptr,
                              binary_distances_portable};

}  // namespace fastret
