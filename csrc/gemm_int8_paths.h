// The per-instruction-set micro-kernels behind gemm_int8 and linear_int8, and the packed weight
// layout they share.
//
// Packed weights: a header of kPackedHeader bytes (magic, n, k and the largest |w| as uint64), then
// output channels in
// panels of kPanel = 16; within panel p, for each 4-byte slice
// s of the input dimension (zero padded to k_padded, a multiple of 4),
//   panel_p[s * 64 + c * 4 + b] = w[p * 16 + c][s * 4 + b]          (int8; zero past n and k)
// so one 64-byte row of a panel holds slice s of 16 channels: a 32-byte load is 8 int32 lanes
// (AVX2), a 64-byte load is 16 (AVX-512), each lane matching a broadcast of an activation's slice s.
// After the n_panels panels come int32 column sums [n_panels * 16] (sum_i w[j][i]; 0 past n),
// which a path that biases activations to unsigned bytes subtracts.
//
// A path's tile function computes one exact int32 block, a few rows at a time (its micro-kernel's
// register tile) over the same weight panels, which stay in L1. A path may also have a faster
// tile_narrow, exact only for weights within [-kNarrowWeight, kNarrowWeight]; the driver uses it
// when the packed weights' largest |w| allows, and hands it the activations biased to unsigned
// bytes (a + 128, the sign bit flipped; the padding then reads 128 against zero weights). Both take:
//   a      int8 [n_rows, k_padded]          (row stride k_padded; codes in [-127, 127], or
//                                            for tile_narrow their uint8 a + 128)
//   panels n_panels <= path panels consecutive panels, colsums their column sums
//   out    int32 [n_rows, n_panels * 16]    (row stride ldo)
#pragma once

#include <cstddef>
#include <cstdint>

namespace fastret {

constexpr size_t kPanel = 16;           // output channels per packed panel
constexpr size_t kPackedHeader = 64;    // keeps the panels 64-byte aligned to the buffer
constexpr size_t kMaxGemmPanels = 4;    // the largest panels of any path
constexpr int kNarrowWeight = 63;       // tile_narrow's bound on |w| (7-bit weights)

// Quantizes one activation row x float32 [k] to codes int8 [k_padded] (zero padded) and its scale:
//   scale = max_i |x_i| / 127,  codes_i = clip(rint(x_i / scale), -127, 127)   (0 if scale == 0)
// Returns false if x holds NaN or inf (codes and scale are then unspecified).
using QuantizeRow = bool (*)(const float* x, size_t k, size_t k_padded, int8_t* codes, float* scale);

// Dequantizes an int32 tile [n_rows, n_cols] (row stride ldt) into out float32 (row stride ld_out):
//   out[r][c] = (float(tile[r][c]) * row_scales[r]) * col_scales[c] + bias[c]   (bias may be nullptr)
using DequantizeTile = void (*)(const int32_t* tile, size_t ldt, size_t n_rows, size_t n_cols,
                                const float* row_scales, const float* col_scales, const float* bias,
                                float* out, size_t ld_out);

using GemmTile = void (*)(const int8_t* a, size_t n_rows, const int8_t* panels, size_t n_panels,
                         const int32_t* colsums, size_t k_padded, int32_t* out, size_t ldo);

// Applies GELU in place to a float32 block [n_rows, n_cols] (row stride ld):
//   gelu(x) = 0.5 * x * (1 + erf(x / sqrt(2)))       (the exact form, as torch's default)
// with erf from Abramowitz & Stegun 7.1.26 (|error| <= 1.5e-7) and exp by range reduction and a
// degree-6 polynomial; every path runs the same float operations in the same order (no fused
// multiply-add), so the results are identical across paths.
using GeluBlock = void (*)(float* data, size_t n_rows, size_t n_cols, size_t ld);

// GeluBlock's constants, one copy for every path: exp(x), x in [kExpMin, 0], as 2^n * p(r) with
// x = n ln2 + r (ln2 split in two for the reduction) and Cephes' polynomial kExpP; erfc(z) =
// t * poly(t) * exp(-z^2), t = 1 / (1 + kErfP z), poly's coefficients kErfA (A&S 7.1.26).
namespace gelu_constants {
inline constexpr float kExpMin = -87.0f;
inline constexpr float kLog2e = 1.44269504088896341f;
inline constexpr float kLn2Hi = 0.693359375f, kLn2Lo = -2.12194440e-4f;
inline constexpr float kExpP[6] = {1.9875691500e-4f, 1.3981999507e-3f, 8.3334519073e-3f,
                                   4.1665795894e-2f, 1.6666665459e-1f, 5.0000001201e-1f};
inline constexpr float kErfP = 0.3275911f;
inline constexpr float kErfA[5] = {0.254829592f, -0.284496736f, 1.421413741f, -1.453152027f, 1.061405429f};
inline constexpr float kInvSqrt2 = 0.70710678118654752f;
}  // namespace gelu_constants

struct GemmPath {
  const char* name;  // the search's path of the same name selects it
  size_t panels;
  GemmTile tile;
  GemmTile tile_narrow;  // nullptr: tile serves every weight
  QuantizeRow quantize_row;
  DequantizeTile dequantize;
  GeluBlock gelu;
};

bool quantize_row_scalar(const float* x, size_t k, size_t k_padded, int8_t* codes, float* scale);
void dequantize_scalar(const int32_t* tile, size_t ldt, size_t n_rows, size_t n_cols,
                       const float* row_scales, const float* col_scales, const float* bias,
                       float* out, size_t ld_out);
void gelu_scalar(float* data, size_t n_rows, size_t n_cols, size_t ld);
#if defined(__x86_64__) || defined(_M_X64)
bool quantize_row_avx2(const float* x, size_t k, size_t k_padded, int8_t* codes, float* scale);
void dequantize_avx2(const int32_t* tile, size_t ldt, size_t n_rows, size_t n_cols,
                     const float* row_scales, const float* col_scales, const float* bias,
                     float* out, size_t ld_out);
void gelu_avx2(float* data, size_t n_rows, size_t n_cols, size_t ld);
#endif

extern const GemmPath kScalarGemm;
// The AMX kernel's tile operations in scalar code (gemm_int8_amx.cpp): any CPU, for tests.
extern const GemmPath kAmxEmulatedGemm;
#if defined(__x86_64__) || defined(_M_X64)
extern const GemmPath kAvx2Gemm;
extern const GemmPath kAvx512VnniGemm;
extern const GemmPath kAmxGemm;  // only where amx_usable() (amx_tiles.h)
#endif

}  // namespace fastret
