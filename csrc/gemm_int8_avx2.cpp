// AVX2 GEMM micro-kernel (no VNNI): signed x signed int8 products through the sign trick,
//   maddubs(|a|, sign(w, a)) = pairs of a*w summed to int16,
// then madd with ones widens them to int32. |a|, |w| <= 127 keep each pair within int16
// (2 * 127 * 127 = 32258 < 32767), so the product is exact; sign(w, a) needs w != -128, which
// pack_int8_weights guarantees.
//
// Activations are quantized per row here too, 32 floats per step, and tiles dequantized 8 at a time,
// with the portable versions' arithmetic (IEEE division, round half to even, the same order of
// multiplications, no fused multiply-add), so the results are identical.
//
// Narrow weights (|w| <= 63, what Int8Linear makes) take a faster kernel without the sign trick:
// activations biased to unsigned (a + 128 <= 255, an xor of the sign bit, done by the driver) times
// the signed weights,
//   maddubs(a + 128, w): each int16 pair <= 2 * 255 * 63 = 32130 < 32767, exact,
// three fewer instructions per row and step; the weights' column sums remove the bias (as VNNI's).
//
// Tile: up to 4 activation rows x 1 panel (16 channels = 2 vectors of 8 int32).
#if defined(__x86_64__) || defined(_M_X64)

#include <immintrin.h>

#include <cfloat>
#include <cmath>
#include <cstring>

#include "gemm_int8_paths.h"

#define FASTRET_AVX2 __attribute__((target("avx2")))

namespace fastret {
namespace {

// int32 [8] = clip(rint(x[0..8) / scale), -127, 127)
FASTRET_AVX2 inline __m256i codes8(const float* x, __m256 scale) {
  const __m256 q = _mm256_round_ps(_mm256_div_ps(_mm256_loadu_ps(x), scale),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  return _mm256_cvtps_epi32(_mm256_min_ps(_mm256_max_ps(q, _mm256_set1_ps(-127.0f)),
                                          _mm256_set1_ps(127.0f)));
}

}  // namespace

FASTRET_AVX2 bool quantize_row_avx2(const float* x, size_t k, size_t k_padded, int8_t* codes,
                                    float* scale) {
  const __m256 abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
  const __m256 largest = _mm256_set1_ps(FLT_MAX);
  __m256 max8 = _mm256_setzero_ps();
  __m256 finite8 = _mm256_castsi256_ps(_mm256_set1_epi32(-1));
  size_t i = 0;
  for (; i + 8 <= k; i += 8) {
    const __m256 v = _mm256_and_ps(_mm256_loadu_ps(x + i), abs_mask);
    finite8 = _mm256_and_ps(finite8, _mm256_cmp_ps(v, largest, _CMP_LE_OQ));  // false for inf, NaN
    max8 = _mm256_max_ps(max8, v);
  }
  alignas(32) float lanes[8];
  _mm256_store_ps(lanes, max8);
  float max_abs = 0.0f;
  bool finite = _mm256_movemask_ps(finite8) == 0xff;
  for (float lane : lanes) max_abs = lane > max_abs ? lane : max_abs;
  for (size_t j = i; j < k; ++j) {
    const float v = std::fabs(x[j]);
    finite &= v <= FLT_MAX;
    max_abs = v > max_abs ? v : max_abs;
  }
  if (!finite) return false;
  *scale = max_abs / 127.0f;
  std::memset(codes, 0, k_padded);
  if (*scale == 0.0f) return true;

  const __m256 s = _mm256_set1_ps(*scale);
  const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
  i = 0;
  for (; i + 32 <= k; i += 32) {
    // packs work per 128-bit lane: the permute restores the order of the 32 codes.
    const __m256i p01 = _mm256_packs_epi32(codes8(x + i, s), codes8(x + i + 8, s));
    const __m256i p23 = _mm256_packs_epi32(codes8(x + i + 16, s), codes8(x + i + 24, s));
    const __m256i bytes = _mm256_permutevar8x32_epi32(_mm256_packs_epi16(p01, p23), order);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(codes + i), bytes);
  }
  for (; i < k; ++i) {
    const float q = std::nearbyint(x[i] / *scale);
    codes[i] = static_cast<int8_t>(q > 127.0f ? 127.0f : (q < -127.0f ? -127.0f : q));
  }
  return true;
}

FASTRET_AVX2 void dequantize_avx2(const int32_t* tile, size_t ldt, size_t n_rows, size_t n_cols,
                                  const float* row_scales, const float* col_scales,
                                  const float* bias, float* out, size_t ld_out) {
  for (size_t r = 0; r < n_rows; ++r) {
    const __m256 row_scale = _mm256_set1_ps(row_scales[r]);
    const int32_t* src = tile + r * ldt;
    float* dst = out + r * ld_out;
    size_t c = 0;
    for (; c + 8 <= n_cols; c += 8) {
      const __m256 acc = _mm256_cvtepi32_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + c)));
      __m256 v = _mm256_mul_ps(_mm256_mul_ps(acc, row_scale), _mm256_loadu_ps(col_scales + c));
      if (bias != nullptr) v = _mm256_add_ps(v, _mm256_loadu_ps(bias + c));
      _mm256_storeu_ps(dst + c, v);
    }
    for (; c < n_cols; ++c) {
      const float v = static_cast<float>(src[c]) * row_scales[r] * col_scales[c];
      dst[c] = bias != nullptr ? v + bias[c] : v;
    }
  }
}

namespace {

// gelu_scalar's steps on 8 lanes (the same operations in the same order; see GeluBlock).
FASTRET_AVX2 inline __m256 exp_nonpositive8(__m256 x) {
  using namespace gelu_constants;
  x = _mm256_max_ps(x, _mm256_set1_ps(kExpMin));
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(kLog2e)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m256 r = _mm256_sub_ps(_mm256_sub_ps(x, _mm256_mul_ps(n, _mm256_set1_ps(kLn2Hi))),
                                 _mm256_mul_ps(n, _mm256_set1_ps(kLn2Lo)));
  __m256 y = _mm256_set1_ps(kExpP[0]);
  for (int i = 1; i < 6; ++i) y = _mm256_add_ps(_mm256_mul_ps(y, r), _mm256_set1_ps(kExpP[i]));
  y = _mm256_add_ps(_mm256_add_ps(_mm256_mul_ps(y, _mm256_mul_ps(r, r)), r), _mm256_set1_ps(1.0f));
  const __m256i bits = _mm256_add_epi32(_mm256_castps_si256(y), _mm256_slli_epi32(_mm256_cvtps_epi32(n), 23));
  return _mm256_castsi256_ps(bits);
}

FASTRET_AVX2 inline __m256 gelu8(__m256 x) {
  using namespace gelu_constants;
  const __m256 abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
  const __m256 z = _mm256_mul_ps(_mm256_and_ps(x, abs_mask), _mm256_set1_ps(kInvSqrt2));
  const __m256 t = _mm256_div_ps(_mm256_set1_ps(1.0f),
                                 _mm256_add_ps(_mm256_set1_ps(1.0f), _mm256_mul_ps(_mm256_set1_ps(kErfP), z)));
  __m256 poly = _mm256_set1_ps(kErfA[4]);
  for (int i = 3; i >= 0; --i) poly = _mm256_add_ps(_mm256_mul_ps(poly, t), _mm256_set1_ps(kErfA[i]));
  const __m256 minus_z2 = _mm256_sub_ps(_mm256_setzero_ps(), _mm256_mul_ps(z, z));
  const __m256 erfc = _mm256_mul_ps(_mm256_mul_ps(poly, t), exp_nonpositive8(minus_z2));
  const __m256 half_x_erfc = _mm256_mul_ps(_mm256_mul_ps(_mm256_set1_ps(0.5f), x), erfc);
  const __m256 nonnegative = _mm256_cmp_ps(x, _mm256_setzero_ps(), _CMP_GE_OQ);
  return _mm256_blendv_ps(half_x_erfc, _mm256_sub_ps(x, half_x_erfc), nonnegative);
}

}  // namespace

FASTRET_AVX2 void gelu_avx2(float* data, size_t n_rows, size_t n_cols, size_t ld) {
  for (size_t r = 0; r < n_rows; ++r) {
    float* row = data + r * ld;
    size_t c = 0;
    for (; c + 8 <= n_cols; c += 8) _mm256_storeu_ps(row + c, gelu8(_mm256_loadu_ps(row + c)));
    if (c < n_cols) gelu_scalar(row + c, 1, n_cols - c, 0);
  }
}

namespace {

constexpr size_t kRows = 4;
constexpr size_t kNarrowRows = 3;

// Row r's step (only if the instantiation has that row): broadcast the row's 4-byte slice s and
// accumulate it against the panel's two weight vectors.
#define FASTRET_ROW_STEP(r)                                                                   \
  if constexpr (R > r) {                                                                      \
    int32_t slice;                                                                            \
    std::memcpy(&slice, a + (r) * k_padded + s * 4, 4);                                       \
    const __m256i x = _mm256_set1_epi32(slice);                                               \
    const __m256i x_abs = _mm256_abs_epi8(x);                                                 \
    acc##r##0 = _mm256_add_epi32(                                                             \
        acc##r##0, _mm256_madd_epi16(_mm256_maddubs_epi16(x_abs, _mm256_sign_epi8(w0, x)), ones)); \
    acc##r##1 = _mm256_add_epi32(                                                             \
        acc##r##1, _mm256_madd_epi16(_mm256_maddubs_epi16(x_abs, _mm256_sign_epi8(w1, x)), ones)); \
  }
// The same step for narrow weights, whose activations come biased to unsigned: one maddubs per vector.
#define FASTRET_NARROW_ROW_STEP(r)                                                                \
  if constexpr (R > r) {                                                                          \
    int32_t slice;                                                                                \
    std::memcpy(&slice, a + (r) * k_padded + s * 4, 4);                                           \
    const __m256i x = _mm256_set1_epi32(slice);                                                   \
    acc##r##0 = _mm256_add_epi32(acc##r##0, _mm256_madd_epi16(_mm256_maddubs_epi16(x, w0), ones)); \
    acc##r##1 = _mm256_add_epi32(acc##r##1, _mm256_madd_epi16(_mm256_maddubs_epi16(x, w1), ones)); \
  }
#define FASTRET_ROW_STORE(r)                                                          \
  if constexpr (R > r) {                                                              \
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + (r) * ldo), acc##r##0);      \
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + (r) * ldo + 8), acc##r##1);  \
  }
#define FASTRET_NARROW_ROW_STORE(r)                                                                          \
  if constexpr (R > r) {                                                                                     \
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + (r) * ldo), _mm256_sub_epi32(acc##r##0, bias0));     \
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + (r) * ldo + 8), _mm256_sub_epi32(acc##r##1, bias1)); \
  }

// R <= 4 rows x 16 channels: 8 accumulators held in registers (named, not an array: GCC keeps an
// array of vectors partly on the stack), 2 weight loads per slice shared by the rows, and per row
// one broadcast and its absolute value: 14 of the 16 registers.
template <size_t R>
FASTRET_AVX2 void tile_rows(const int8_t* a, const int8_t* panel, size_t k_padded, int32_t* out,
                            size_t ldo) {
  static_assert(R >= 1 && R <= kRows, "the micro-kernel is written out for 4 rows");
  const __m256i ones = _mm256_set1_epi16(1);
  __m256i acc00 = _mm256_setzero_si256(), acc01 = acc00, acc10 = acc00, acc11 = acc00;
  __m256i acc20 = acc00, acc21 = acc00, acc30 = acc00, acc31 = acc00;
  const size_t slices = k_padded / 4;
  for (size_t s = 0; s < slices; ++s) {
    // slice s of channels 0..7 and 8..15 (4 bytes each)
    const __m256i w0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(panel + s * 64));
    const __m256i w1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(panel + s * 64 + 32));
    FASTRET_ROW_STEP(0) FASTRET_ROW_STEP(1) FASTRET_ROW_STEP(2) FASTRET_ROW_STEP(3)
  }
  FASTRET_ROW_STORE(0) FASTRET_ROW_STORE(1) FASTRET_ROW_STORE(2) FASTRET_ROW_STORE(3)
}

// R <= 4 rows x 16 channels for weights within [-63, 63] and activations biased to unsigned bytes
// (a + 128, which the driver makes once for the whole block: an xor per step here made GCC spill
// accumulators to the stack); the accumulators hold <a + 128, w>, and 128 * the column sums come
// off at the store. 8 accumulators, 2 weight vectors, the ones and a broadcast: no spills.
template <size_t R>
FASTRET_AVX2 void narrow_tile_rows(const int8_t* a, const int8_t* panel, const int32_t* colsums,
                                   size_t k_padded, int32_t* out, size_t ldo) {
  static_assert(R >= 1 && R <= kNarrowRows, "the micro-kernel is written out for 3 rows");
  const __m256i ones = _mm256_set1_epi16(1);
  __m256i acc00 = _mm256_setzero_si256(), acc01 = acc00, acc10 = acc00, acc11 = acc00;
  __m256i acc20 = acc00, acc21 = acc00;
  const size_t slices = k_padded / 4;
  for (size_t s = 0; s < slices; ++s) {
    const __m256i w0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(panel + s * 64));
    const __m256i w1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(panel + s * 64 + 32));
    FASTRET_NARROW_ROW_STEP(0) FASTRET_NARROW_ROW_STEP(1) FASTRET_NARROW_ROW_STEP(2)
  }
  const __m256i bias0 = _mm256_slli_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(colsums)), 7);
  const __m256i bias1 = _mm256_slli_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(colsums + 8)), 7);
  FASTRET_NARROW_ROW_STORE(0) FASTRET_NARROW_ROW_STORE(1) FASTRET_NARROW_ROW_STORE(2)
}

#undef FASTRET_ROW_STEP
#undef FASTRET_NARROW_ROW_STEP
#undef FASTRET_ROW_STORE
#undef FASTRET_NARROW_ROW_STORE

void tile(const int8_t* a, size_t n_rows, const int8_t* panels, size_t /*n_panels: always 1*/,
          const int32_t* /*colsums*/, size_t k_padded, int32_t* out, size_t ldo) {
  size_t r = 0;
  for (; r + kRows <= n_rows; r += kRows) tile_rows<kRows>(a + r * k_padded, panels, k_padded, out + r * ldo, ldo);
  a += r * k_padded;
  out += r * ldo;
  switch (n_rows - r) {
    case 1: return tile_rows<1>(a, panels, k_padded, out, ldo);
    case 2: return tile_rows<2>(a, panels, k_padded, out, ldo);
    case 3: return tile_rows<3>(a, panels, k_padded, out, ldo);
    default: return;
  }
}

void narrow_tile(const int8_t* a, size_t n_rows, const int8_t* panels, size_t /*n_panels: always 1*/,
                 const int32_t* colsums, size_t k_padded, int32_t* out, size_t ldo) {
  size_t r = 0;
  for (; r + kNarrowRows <= n_rows; r += kNarrowRows)
    narrow_tile_rows<kNarrowRows>(a + r * k_padded, panels, colsums, k_padded, out + r * ldo, ldo);
  a += r * k_padded;
  out += r * ldo;
  switch (n_rows - r) {
    case 1: return narrow_tile_rows<1>(a, panels, colsums, k_padded, out, ldo);
    case 2: return narrow_tile_rows<2>(a, panels, colsums, k_padded, out, ldo);
    default: return;
  }
}

}  // namespace

const GemmPath kAvx2Gemm = {"avx2", 1, tile, narrow_tile, quantize_row_avx2, dequantize_avx2, gelu_avx2};

}  // namespace fastret

#endif
