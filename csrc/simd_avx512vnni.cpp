// AVX-512 VNNI path: vpdpbusd multiplies unsigned by signed bytes and adds groups of 4 into int32.
// The corpus is stored biased to unsigned (d + 128), so each dot holds <q, d> + 128 * sum(q);
// the caller subtracts the query's bias (exact in int32 for dim < 65,000).
//
// Packed tile layout: 4 groups of 16 vectors; for each 4-byte slice s of the dimension,
//   packed[(s * 4 + g) * 64 + v * 4 + b] = rows[g * 16 + v][s * 4 + b] ^ 0x80
// so one 64-byte load holds slice s of 16 vectors, matching a broadcast of the query's slice s.
#if defined(__x86_64__) || defined(_M_X64)

#include <immintrin.h>

#include <cstring>

#include "simd_paths.h"

#define FASTRET_AVX512 __attribute__((target("avx512f,avx512bw,avx512vnni")))

namespace fastret {
namespace {

constexpr size_t kRows = 6;      // queries per dots call: 6 x 4 accumulators + 4 loads + 1 broadcast
constexpr size_t kGroup = 16;    // vectors per 64-byte register
constexpr size_t kGroups = kTile / kGroup;

bool supported() {
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512vnni");
}

size_t packed_bytes(size_t dim_padded) { return kTile * dim_padded; }

// Transposes 16 rows of 16 dwords in place: r[c] then holds dword c of rows 0..15.
FASTRET_AVX512 void transpose16x16(__m512i r[16]) {
  __m512i t[16], u[16];
  for (int i = 0; i < 8; ++i) {
    t[2 * i] = _mm512_unpacklo_epi32(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm512_unpackhi_epi32(r[2 * i], r[2 * i + 1]);
  }
  for (int i = 0; i < 4; ++i) {  // u[4i + m], 128-bit lane L: column 4L + m of rows 4i..4i+3
    u[4 * i + 0] = _mm512_unpacklo_epi64(t[4 * i], t[4 * i + 2]);
    u[4 * i + 1] = _mm512_unpackhi_epi64(t[4 * i], t[4 * i + 2]);
    u[4 * i + 2] = _mm512_unpacklo_epi64(t[4 * i + 1], t[4 * i + 3]);
    u[4 * i + 3] = _mm512_unpackhi_epi64(t[4 * i + 1], t[4 * i + 3]);
  }
  for (int m = 0; m < 4; ++m) {  // gather lane L of u[m], u[4+m], u[8+m], u[12+m]
    const __m512i x0 = _mm512_shuffle_i32x4(u[m], u[4 + m], 0x44);
    const __m512i x1 = _mm512_shuffle_i32x4(u[m], u[4 + m], 0xEE);
    const __m512i y0 = _mm512_shuffle_i32x4(u[8 + m], u[12 + m], 0x44);
    const __m512i y1 = _mm512_shuffle_i32x4(u[8 + m], u[12 + m], 0xEE);
    r[m] = _mm512_shuffle_i32x4(x0, y0, 0x88);
    r[4 + m] = _mm512_shuffle_i32x4(x0, y0, 0xDD);
    r[8 + m] = _mm512_shuffle_i32x4(x1, y1, 0x88);
    r[12 + m] = _mm512_shuffle_i32x4(x1, y1, 0xDD);
  }
}

FASTRET_AVX512 void pack(const int8_t* rows, size_t n_rows, size_t dim, size_t dim_padded,
                         uint8_t* packed) {
  const size_t slices = dim_padded / 4;
  const __m512i bias = _mm512_set1_epi8(static_cast<char>(0x80));
  for (size_t g = 0; g < kGroups; ++g) {
    for (size_t chunk = 0; chunk * 64 < dim_padded; ++chunk) {
      const size_t begin = chunk * 64;
      const size_t bytes = dim > begin ? (dim - begin < 64 ? dim - begin : 64) : 0;
      const __mmask64 mask = bytes == 64 ? ~__mmask64(0) : ((__mmask64(1) << bytes) - 1);
      __m512i r[16];
      for (size_t v = 0; v < kGroup; ++v) {
        const size_t row = g * kGroup + v;
        r[v] = row < n_rows ? _mm512_maskz_loadu_epi8(mask, rows + row * dim + begin)
                            : _mm512_setzero_si512();
      }
      transpose16x16(r);
      const size_t first = chunk * 16;
      for (size_t c = 0; c < 16 && first + c < slices; ++c) {
        _mm512_storeu_si512(packed + ((first + c) * kGroups + g) * 64, _mm512_xor_si512(r[c], bias));
      }
    }
  }
}

// Row r's step (only if the instantiation has that row): broadcast the query's 4-byte slice s
// and accumulate it against the 4 groups.
#define FASTRET_ROW_STEP(r)                                               \
  if constexpr (R > r) {                                                  \
    int32_t slice;                                                        \
    std::memcpy(&slice, queries + (r) * dim_padded + s * 4, 4);           \
    const __m512i q = _mm512_set1_epi32(slice);                           \
    a##r##0 = _mm512_dpbusd_epi32(a##r##0, d0, q);                        \
    a##r##1 = _mm512_dpbusd_epi32(a##r##1, d1, q);                        \
    a##r##2 = _mm512_dpbusd_epi32(a##r##2, d2, q);                        \
    a##r##3 = _mm512_dpbusd_epi32(a##r##3, d3, q);                        \
  }
#define FASTRET_ROW_ZERO(r) \
  __m512i a##r##0 = _mm512_setzero_si512(), a##r##1 = a##r##0, a##r##2 = a##r##0, a##r##3 = a##r##0;
#define FASTRET_ROW_STORE(r)                                      \
  if constexpr (R > r) {                                          \
    _mm512_storeu_si512(out + (r) * kTile + 0 * kGroup, a##r##0); \
    _mm512_storeu_si512(out + (r) * kTile + 1 * kGroup, a##r##1); \
    _mm512_storeu_si512(out + (r) * kTile + 2 * kGroup, a##r##2); \
    _mm512_storeu_si512(out + (r) * kTile + 3 * kGroup, a##r##3); \
  }

// R <= 6 query rows x 64 vectors: up to 24 accumulators held in registers (named, not an array:
// GCC keeps an array of vectors on the stack), plus 4 corpus loads and 1 broadcast per slice.
template <size_t R>
FASTRET_AVX512 void dots_rows(const uint8_t* packed, size_t dim_padded, const int8_t* queries,
                              int32_t* out) {
  static_assert(R >= 1 && R <= 6 && kGroups == 4, "the micro-kernel is written out for 6 x 4");
  FASTRET_ROW_ZERO(0) FASTRET_ROW_ZERO(1) FASTRET_ROW_ZERO(2)
  FASTRET_ROW_ZERO(3) FASTRET_ROW_ZERO(4) FASTRET_ROW_ZERO(5)
  const size_t slices = dim_padded / 4;
  for (size_t s = 0; s < slices; ++s) {
    const uint8_t* p = packed + s * kGroups * 64;
    const __m512i d0 = _mm512_loadu_si512(p);
    const __m512i d1 = _mm512_loadu_si512(p + 64);
    const __m512i d2 = _mm512_loadu_si512(p + 128);
    const __m512i d3 = _mm512_loadu_si512(p + 192);
    FASTRET_ROW_STEP(0) FASTRET_ROW_STEP(1) FASTRET_ROW_STEP(2)
    FASTRET_ROW_STEP(3) FASTRET_ROW_STEP(4) FASTRET_ROW_STEP(5)
  }
  FASTRET_ROW_STORE(0) FASTRET_ROW_STORE(1) FASTRET_ROW_STORE(2)
  FASTRET_ROW_STORE(3) FASTRET_ROW_STORE(4) FASTRET_ROW_STORE(5)
}

void dots(const uint8_t* packed, size_t dim_padded, const int8_t* queries, size_t n_rows,
          int32_t* out) {
  switch (n_rows) {
    case 1: return dots_rows<1>(packed, dim_padded, queries, out);
    case 2: return dots_rows<2>(packed, dim_padded, queries, out);
    case 3: return dots_rows<3>(packed, dim_padded, queries, out);
    case 4: return dots_rows<4>(packed, dim_padded, queries, out);
    case 5: return dots_rows<5>(packed, dim_padded, queries, out);
    default: return dots_rows<6>(packed, dim_padded, queries, out);
  }
}

#undef FASTRET_ROW_STEP
#undef FASTRET_ROW_ZERO
#undef FASTRET_ROW_STORE

// One query against rows read in place, 4 rows at a time (4 independent accumulator chains).
// Bytes past dim load as zero on both sides, so the biased corpus byte 0x80 meets a zero query.
FASTRET_AVX512 void dots_direct(const int8_t* rows, size_t n_rows, size_t dim, const int8_t* query,
                                int32_t* out) {
  const __m512i bias = _mm512_set1_epi8(static_cast<char>(0x80));
  const size_t chunks = (dim + 63) / 64;
  const size_t tail = dim - (chunks - 1) * 64;
  const __mmask64 last = tail == 64 ? ~__mmask64(0) : ((__mmask64(1) << tail) - 1);
  size_t v = 0;
  for (; v + 4 <= n_rows; v += 4) {
    const int8_t* r = rows + v * dim;
    __m512i a0 = _mm512_setzero_si512(), a1 = a0, a2 = a0, a3 = a0;
    for (size_t c = 0; c < chunks; ++c) {
      const __mmask64 m = c + 1 == chunks ? last : ~__mmask64(0);
      const size_t at = c * 64;
      const __m512i q = _mm512_maskz_loadu_epi8(m, query + at);
      a0 = _mm512_dpbusd_epi32(a0, _mm512_xor_si512(_mm512_maskz_loadu_epi8(m, r + at), bias), q);
      a1 = _mm512_dpbusd_epi32(a1, _mm512_xor_si512(_mm512_maskz_loadu_epi8(m, r + dim + at), bias), q);
      a2 = _mm512_dpbusd_epi32(a2, _mm512_xor_si512(_mm512_maskz_loadu_epi8(m, r + 2 * dim + at), bias), q);
      a3 = _mm512_dpbusd_epi32(a3, _mm512_xor_si512(_mm512_maskz_loadu_epi8(m, r + 3 * dim + at), bias), q);
    }
    out[v] = _mm512_reduce_add_epi32(a0);
    out[v + 1] = _mm512_reduce_add_epi32(a1);
    out[v + 2] = _mm512_reduce_add_epi32(a2);
    out[v + 3] = _mm512_reduce_add_epi32(a3);
  }
  for (; v < n_rows; ++v) {
    __m512i a = _mm512_setzero_si512();
    for (size_t c = 0; c < chunks; ++c) {
      const __mmask64 m = c + 1 == chunks ? last : ~__mmask64(0);
      const __m512i d = _mm512_xor_si512(_mm512_maskz_loadu_epi8(m, rows + v * dim + c * 64), bias);
      a = _mm512_dpbusd_epi32(a, d, _mm512_maskz_loadu_epi8(m, query + c * 64));
    }
    out[v] = _mm512_reduce_add_epi32(a);
  }
}

#define FASTRET_VPOPCNTDQ __attribute__((target("avx512f,avx512vpopcntdq")))

// VPOPCNTDQ (Ice Lake, Zen 4 on; not Skylake-X or Cascade Lake, which take the AVX2 kernel).
bool has_vpopcntdq() {
  static const bool yes = __builtin_cpu_supports("avx512vpopcntdq");
  return yes;
}

// One register holds word w of a block's 8 rows (simd_paths.h): per word, each plane's differing
// bits are counted for the 8 rows at once, in one accumulator per plane (QueryBits of them, in
// registers); the planes' counts are combined by Horner's rule at the end of the block. Two blocks
// go together: each plane's broadcast word serves both, and their sums are independent chains.
template <size_t QueryBits>
FASTRET_VPOPCNTDQ inline void count_block_pair(const uint64_t* first, const uint64_t* second, size_t words,
                                              const uint64_t* planes, __m512i* totals) {
  __m512i counts[2][QueryBits];
  for (size_t p = 0; p < QueryBits; ++p) counts[0][p] = counts[1][p] = _mm512_setzero_si512();
  for (size_t w = 0; w < words; ++w) {
    const __m512i bits0 = _mm512_loadu_si512(first + w * kBitBlock);
    const __m512i bits1 = _mm512_loadu_si512(second + w * kBitBlock);
    for (size_t p = 0; p < QueryBits; ++p) {
      const __m512i plane = _mm512_set1_epi64(static_cast<long long>(planes[p * words + w]));
      counts[0][p] = _mm512_add_epi64(counts[0][p], _mm512_popcnt_epi64(_mm512_xor_si512(bits0, plane)));
      counts[1][p] = _mm512_add_epi64(counts[1][p], _mm512_popcnt_epi64(_mm512_xor_si512(bits1, plane)));
    }
  }
  for (size_t half = 0; half < 2; ++half) {
    __m512i total = counts[half][QueryBits - 1];
    for (size_t p = QueryBits - 1; p-- > 0;) total = _mm512_add_epi64(_mm512_slli_epi64(total, 1), counts[half][p]);
    totals[half] = total;
  }
}

template <size_t QueryBits>
FASTRET_VPOPCNTDQ uint32_t binary_distances_vpopcntdq(const uint64_t* blocks, size_t n_rows, size_t words,
                                                      const uint64_t* planes, uint32_t* out) {
  static_assert(kBitBlock == 8, "one 512-bit register per word of a block");
  const size_t n_blocks = (n_rows + kBitBlock - 1) / kBitBlock;
  __m512i nearest = _mm512_set1_epi64(UINT32_MAX);
  for (size_t b = 0; b < n_blocks; b += 2) {
    const uint64_t* first = blocks + b * words * kBitBlock;
    const bool pair = b + 1 < n_blocks;  // an odd last block is counted twice, kept once
    __m512i totals[2];
    count_block_pair<QueryBits>(first, pair ? first + words * kBitBlock : first, words, planes, totals);
    for (size_t half = 0; half < (pair ? 2u : 1u); ++half) {
      const size_t j = (b + half) * kBitBlock;
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + j), _mm512_cvtepi64_epi32(totals[half]));
      const __mmask8 rows =
          n_rows - j >= kBitBlock ? __mmask8(0xFF) : static_cast<__mmask8>((1u << (n_rows - j)) - 1);
      nearest = _mm512_mask_min_epu64(nearest, rows, nearest, totals[half]);  // the padding rows left out
    }
  }
  return static_cast<uint32_t>(_mm512_reduce_min_epu64(nearest));
}

using VpopcntdqKernel = uint32_t (*)(const uint64_t*, size_t, size_t, const uint64_t*, uint32_t*);
constexpr VpopcntdqKernel kVpopcntdqKernels[] = {
    binary_distances_vpopcntdq<1>, binary_distances_vpopcntdq<2>, binary_distances_vpopcntdq<3>,
    binary_distances_vpopcntdq<4>, binary_distances_vpopcntdq<5>, binary_distances_vpopcntdq<6>,
    binary_distances_vpopcntdq<7>, binary_distances_vpopcntdq<8>};
static_assert(sizeof(kVpopcntdqKernels) / sizeof(kVpopcntdqKernels[0]) == kMaxQueryBits, "one kernel per B");

}  // namespace

uint32_t binary_distances_avx512(const uint64_t* blocks, size_t n_rows, size_t words, const uint64_t* planes,
                                 size_t query_bits, uint32_t* out) {
  if (has_vpopcntdq()) return kVpopcntdqKernels[query_bits - 1](blocks, n_rows, words, planes, out);
  return binary_distances_avx2(blocks, n_rows, words, planes, query_bits, out);
}

void dots_direct_avx512vnni(const int8_t* rows, size_t n_rows, size_t dim, const int8_t* query, int32_t* out) {
  dots_direct(rows, n_rows, dim, query, out);
}

const SimdPath kAvx512VnniPath = {"avx512vnni", true, supported, {kRows, packed_bytes, pack, dots, true}, {},
                                  dots_direct, binary_distances_avx512};

}  // namespace fastret

#endif
