// AMX GEMM micro-kernel, written against the tile operations of amx_tiles.h: the same code runs on
// the matrix units (AmxTiles) and, for tests on any CPU, in scalar emulation (EmulatedTiles).
//
// The packed weights' panels are already the VNNI layout TDPBSSD reads for B: row s of a panel is
// slice s (4 consecutive inputs) of its 16 channels, so 16 slices (64 inputs) of one panel are one
// B tile, loaded in place with a 64-byte stride. Per call:
//   for each block of 16 activation rows (A: 16 rows x 64 codes, a row stride of k_padded):
//     C_p = 0 for the call's panels p < 4 (tiles 0-3: 16 rows x 16 channels of int32)
//     for each step of 64 inputs: load A (tile 4); for each panel, load its B (tile 5), C_p += A B
//     store C_p into out (columns p * 16 ..)
// Signed by signed bytes: no bias, no column sums. A short row block or a short last step (k_padded
// is a multiple of 4, not of 64) goes through zero-padded scratch tiles, so every tile keeps its
// full shape and one configuration serves the call. |sum| <= k * 127 * 127 fits int32 for k <= 65536.
#include <algorithm>
#include <cstring>

#include "amx_tiles.h"
#include "gemm_int8_paths.h"

namespace fastret {
namespace {

constexpr size_t kPanels = 4;
static_assert(kPanels <= kMaxGemmPanels, "tile exceeds the driver's buffer");
static_assert(kPanel * 4 == kTileBytes, "a panel's slice is one tile row");

// C_P += A (tile 4) x the B of panel P, for the panels below n_panels.
template <class Tiles, int P>
void accumulate_panel(Tiles& tiles, const int8_t* b, size_t stride, size_t n_panels) {
  if (P >= static_cast<int>(n_panels)) return;
  tiles.template load<5>(b + P * stride, kTileBytes);
  tiles.template dot_int8<P, 4, 5>();
}

template <class Tiles, int P>
void store_panel(Tiles& tiles, int32_t* out, size_t ldo, size_t n_panels) {
  if (P < static_cast<int>(n_panels)) tiles.template store<P>(out + P * kPanel, ldo * sizeof(int32_t));
}

template <class Tiles>
void tile(const int8_t* a, size_t n_rows, const int8_t* panels, size_t n_panels, const int32_t* /*colsums*/,
          size_t k_padded, int32_t* out, size_t ldo) {
  alignas(64) int8_t a_pad[kTileRows * kTileBytes];
  alignas(64) int8_t b_pad[kMaxGemmPanels][kTileRows * kTileBytes];
  alignas(64) int32_t c_pad[kTileRows * kPanels * kPanel];
  const size_t panel_bytes = k_padded * kPanel;
  Tiles tiles;
  tiles.configure();
  for (size_t r0 = 0; r0 < n_rows; r0 += kTileRows) {
    const size_t rows = std::min(kTileRows, n_rows - r0);
    tiles.template zero<0>();
    tiles.template zero<1>();
    tiles.template zero<2>();
    tiles.template zero<3>();
    for (size_t k0 = 0; k0 < k_padded; k0 += kTileBytes) {
      const size_t width = std::min(kTileBytes, k_padded - k0);  // inputs in this step, a multiple of 4
      const int8_t* a_rows = a + r0 * k_padded + k0;
      if (rows == kTileRows && width == kTileBytes) {
        tiles.template load<4>(a_rows, k_padded);
      } else {
        std::memset(a_pad, 0, sizeof(a_pad));
        for (size_t r = 0; r < rows; ++r) std::memcpy(a_pad + r * kTileBytes, a_rows + r * k_padded, width);
        tiles.template load<4>(a_pad, kTileBytes);
      }
      const int8_t* b = panels + (k0 / 4) * kTileBytes;  // slice k0 / 4 of the first panel
      size_t b_stride = panel_bytes;
      if (width < kTileBytes) {  // the last step's slices, then zeros
        for (size_t p = 0; p < n_panels; ++p) {
          std::memset(b_pad[p], 0, sizeof(b_pad[p]));
          std::memcpy(b_pad[p], b + p * panel_bytes, (width / 4) * kTileBytes);
        }
        b = b_pad[0];
        b_stride = sizeof(b_pad[0]);
      }
      accumulate_panel<Tiles, 0>(tiles, b, b_stride, n_panels);
      accumulate_panel<Tiles, 1>(tiles, b, b_stride, n_panels);
      accumulate_panel<Tiles, 2>(tiles, b, b_stride, n_panels);
      accumulate_panel<Tiles, 3>(tiles, b, b_stride, n_panels);
    }
    int32_t* target = rows == kTileRows ? out + r0 * ldo : c_pad;
    const size_t ld = rows == kTileRows ? ldo : kPanels * kPanel;
    store_panel<Tiles, 0>(tiles, target, ld, n_panels);
    store_panel<Tiles, 1>(tiles, target, ld, n_panels);
    store_panel<Tiles, 2>(tiles, target, ld, n_panels);
    store_panel<Tiles, 3>(tiles, target, ld, n_panels);
    if (rows < kTileRows)
      for (size_t r = 0; r < rows; ++r)
        std::memcpy(out + (r0 + r) * ldo, c_pad + r * ld, n_panels * kPanel * sizeof(int32_t));
  }
  tiles.release();
}

}  // namespace

// The emulation runs the scalar helpers around the tile kernel; the real path the AVX2 ones.
const GemmPath kAmxEmulatedGemm = {"amx-emulated", kPanels, tile<EmulatedTiles>, nullptr, quantize_row_scalar,
                                   dequantize_scalar, gelu_scalar};
#if defined(__x86_64__) || defined(_M_X64)
const GemmPath kAmxGemm = {"amx", kPanels, tile<AmxTiles>, nullptr, quantize_row_avx2, dequantize_avx2, gelu_avx2};
#endif

}  // namespace fastret
