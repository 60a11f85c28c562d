// AVX-512 VNNI GEMM micro-kernel: vpdpbusd multiplies unsigned by signed bytes and adds groups of 4
// into int32. Activations are biased to unsigned (a + 128, an xor of the sign bit), so each
// accumulator holds <a, w> + 128 * sum(w); the column sums stored with the packed weights remove
// the bias. |<a + 128, w>| <= k * 255 * 128 stays inside int32 for k <= 65536.
//
// Tile: up to 6 activation rows x 4 panels (64 channels, 4 vectors of 16 int32): 24 accumulators,
// 4 weight loads per slice shared by the rows, 1 broadcast per row (29 of 32 registers).
#if defined(__x86_64__) || defined(_M_X64)

#include <immintrin.h>

#include <cstring>

#include "gemm_int8_paths.h"

#define FASTRET_AVX512 __attribute__((target("avx512f,avx512bw,avx512vnni")))

namespace fastret {
namespace {

constexpr size_t kRows = 6;
constexpr size_t kPanels = 4;
static_assert(kPanels <= kMaxGemmPanels, "tile exceeds the driver's buffer");

template <size_t R, size_t P>
FASTRET_AVX512 void tile_rows(const int8_t* a, const int8_t* panels, const int32_t* colsums,
                              size_t k_padded, int32_t* out, size_t ldo) {
  const __m512i sign_bit = _mm512_set1_epi8(static_cast<char>(0x80));
  __m512i acc[R][P];
  for (size_t r = 0; r < R; ++r)
    for (size_t p = 0; p < P; ++p) acc[r][p] = _mm512_setzero_si512();
  const size_t slices = k_padded / 4;
  const size_t panel_bytes = k_padded * kPanel;
  for (size_t s = 0; s < slices; ++s) {
    __m512i w[P];  // slice s of 16 channels per panel
    for (size_t p = 0; p < P; ++p) w[p] = _mm512_loadu_si512(panels + p * panel_bytes + s * 64);
    for (size_t r = 0; r < R; ++r) {
      int32_t slice;
      std::memcpy(&slice, a + r * k_padded + s * 4, 4);
      const __m512i x = _mm512_xor_si512(_mm512_set1_epi32(slice), sign_bit);  // a + 128
      for (size_t p = 0; p < P; ++p) acc[r][p] = _mm512_dpbusd_epi32(acc[r][p], x, w[p]);
    }
  }
  for (size_t p = 0; p < P; ++p) {
    const __m512i bias = _mm512_slli_epi32(_mm512_loadu_si512(colsums + p * kPanel), 7);
    for (size_t r = 0; r < R; ++r)
      _mm512_storeu_si512(out + r * ldo + p * kPanel, _mm512_sub_epi32(acc[r][p], bias));
  }
}

template <size_t R>
void tile_panels(const int8_t* a, const int8_t* panels, size_t n_panels, const int32_t* colsums,
                 size_t k_padded, int32_t* out, size_t ldo) {
  switch (n_panels) {
    case 1: return tile_rows<R, 1>(a, panels, colsums, k_padded, out, ldo);
    case 2: return tile_rows<R, 2>(a, panels, colsums, k_padded, out, ldo);
    case 3: return tile_rows<R, 3>(a, panels, colsums, k_padded, out, ldo);
    default: return tile_rows<R, 4>(a, panels, colsums, k_padded, out, ldo);
  }
}

void tile(const int8_t* a, size_t n_rows, const int8_t* panels, size_t n_panels,
          const int32_t* colsums, size_t k_padded, int32_t* out, size_t ldo) {
  size_t r = 0;
  for (; r + kRows <= n_rows; r += kRows)
    tile_panels<kRows>(a + r * k_padded, panels, n_panels, colsums, k_padded, out + r * ldo, ldo);
  a += r * k_padded;
  out += r * ldo;
  switch (n_rows - r) {
    case 1: return tile_panels<1>(a, panels, n_panels, colsums, k_padded, out, ldo);
    case 2: return tile_panels<2>(a, panels, n_panels, colsums, k_padded, out, ldo);
    case 3: return tile_panels<3>(a, panels, n_panels, colsums, k_padded, out, ldo);
    case 4: return tile_panels<4>(a, panels, n_panels, colsums, k_padded, out, ldo);
    case 5: return tile_panels<5>(a, panels, n_panels, colsums, k_padded, out, ldo);
    default: return;
  }
}

}  // namespace

// Activation quantization, dequantization and GELU are a small share of the work: AVX2's serve.
const GemmPath kAvx512VnniGemm = {"avx512vnni", kPanels, tile, nullptr, quantize_row_avx2,
                                  dequantize_avx2, gelu_avx2};

}  // namespace fastret

#endif
