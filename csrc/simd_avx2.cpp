// AVX2 path (no VNNI): signed x signed int8 products through the sign trick,
//   maddubs(|d|, sign(q, d)) = pairs of q*d summed to int16,
// then madd with ones widens to int32. |d| <= 128 and |q| <= 127 keep each pair within int16
// (2 * 128 * 127 = 32512), so corpus codes may be -128; query codes must not be.
//
// Packed tile layout: 8 groups of 8 vectors; for each 4-byte slice s of the dimension,
//   packed[(s * 8 + g) * 32 + v * 4 + b] = rows[g * 8 + v][s * 4 + b]
// so one 32-byte load holds slice s of 8 vectors, matching a broadcast of the query's slice s.
#if defined(__x86_64__) || defined(_M_X64)

#include <immintrin.h>

#include <cstring>

#include "simd_paths.h"

#define FASTRET_AVX2 __attribute__((target("avx2")))

namespace fastret {
namespace {

constexpr size_t kRows = 2;      // queries per dots call
constexpr size_t kGroup = 8;     // vectors per 32-byte register
constexpr size_t kGroups = kTile / kGroup;

bool supported() { return __builtin_cpu_supports("avx2"); }

size_t packed_bytes(size_t dim_padded) { return kTile * dim_padded; }

// Transposes 8 rows of 8 dwords: out[c] holds dword c of rows 0..7.
FASTRET_AVX2 void transpose8x8(__m256i r[8]) {
  __m256i t[8], u[8];
  for (int i = 0; i < 4; ++i) {
    t[2 * i] = _mm256_unpacklo_epi32(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm256_unpackhi_epi32(r[2 * i], r[2 * i + 1]);
  }
  for (int i = 0; i < 2; ++i) {  // u[4i + m], lane L: column 4L + m of rows 4i..4i+3
    u[4 * i + 0] = _mm256_unpacklo_epi64(t[4 * i], t[4 * i + 2]);
    u[4 * i + 1] = _mm256_unpackhi_epi64(t[4 * i], t[4 * i + 2]);
    u[4 * i + 2] = _mm256_unpacklo_epi64(t[4 * i + 1], t[4 * i + 3]);
    u[4 * i + 3] = _mm256_unpackhi_epi64(t[4 * i + 1], t[4 * i + 3]);
  }
  for (int m = 0; m < 4; ++m) {
    r[m] = _mm256_permute2x128_si256(u[m], u[4 + m], 0x20);
    r[4 + m] = _mm256_permute2x128_si256(u[m], u[4 + m], 0x31);
  }
}

FASTRET_AVX2 void pack(const int8_t* rows, size_t n_rows, size_t dim, size_t dim_padded,
                       uint8_t* packed) {
  const size_t slices = dim_padded / 4;
  for (size_t g = 0; g < kGroups; ++g) {
    for (size_t chunk = 0; chunk * 32 < dim_padded; ++chunk) {
      const size_t begin = chunk * 32;
      const size_t bytes = dim > begin ? (dim - begin < 32 ? dim - begin : 32) : 0;
      __m256i r[8];
      for (size_t v = 0; v < kGroup; ++v) {
        const size_t row = g * kGroup + v;
        if (row >= n_rows || bytes == 0) {
          r[v] = _mm256_setzero_si256();
        } else if (bytes == 32) {
          r[v] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(rows + row * dim + begin));
        } else {
          alignas(32) int8_t tail[32] = {0};
          std::memcpy(tail, rows + row * dim + begin, bytes);
          r[v] = _mm256_load_si256(reinterpret_cast<const __m256i*>(tail));
        }
      }
      transpose8x8(r);
      const size_t first = chunk * 8;
      for (size_t c = 0; c < 8 && first + c < slices; ++c) {
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(packed + ((first + c) * kGroups + g) * 32),
                            r[c]);
      }
    }
  }
}

// Half a tile: 4 groups (32 vectors) starting at group g0, against kRows queries.
template <size_t R>
FASTRET_AVX2 void dots_half(const uint8_t* packed, size_t dim_padded, const int8_t* queries,
                            size_t g0, int32_t* out) {
  const __m256i ones = _mm256_set1_epi16(1);
  __m256i acc[R][4];
  for (size_t r = 0; r < R; ++r)
    for (int j = 0; j < 4; ++j) acc[r][j] = _mm256_setzero_si256();
  const size_t slices = dim_padded / 4;
  for (size_t s = 0; s < slices; ++s) {
    const uint8_t* p = packed + (s * kGroups + g0) * 32;
    __m256i d[4], d_abs[4];
    for (int j = 0; j < 4; ++j) {
      d[j] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + j * 32));
      d_abs[j] = _mm256_abs_epi8(d[j]);
    }
    for (size_t r = 0; r < R; ++r) {
      int32_t slice;
      std::memcpy(&slice, queries + r * dim_padded + s * 4, 4);
      const __m256i q = _mm256_set1_epi32(slice);
      for (int j = 0; j < 4; ++j) {
        const __m256i pairs = _mm256_maddubs_epi16(d_abs[j], _mm256_sign_epi8(q, d[j]));
        acc[r][j] = _mm256_add_epi32(acc[r][j], _mm256_madd_epi16(pairs, ones));
      }
    }
  }
  for (size_t r = 0; r < R; ++r)
    for (int j = 0; j < 4; ++j)
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + r * kTile + (g0 + j) * kGroup), acc[r][j]);
}

void dots(const uint8_t* packed, size_t dim_padded, const int8_t* queries, size_t n_rows,
          int32_t* out) {
  if (n_rows == 1) {
    dots_half<1>(packed, dim_padded, queries, 0, out);
    dots_half<1>(packed, dim_padded, queries, 4, out);
  } else {
    dots_half<2>(packed, dim_padded, queries, 0, out);
    dots_half<2>(packed, dim_padded, queries, 4, out);
  }
}

}  // namespace

const SimdPath kAvx2Path = {"avx2", kRows, false, supported, packed_bytes, pack, dots, nullptr};

}  // namespace fastret

#endif
