// Portable GEMM micro-kernel (reads the packed panels directly, int32 accumulation), and the
// portable activation quantizer and tile dequantizer.
#include <cfloat>
#include <cmath>
#include <cstdint>
#include <cstring>

#include "gemm_int8_paths.h"

namespace fastret {

bool quantize_row_scalar(const float* x, size_t k, size_t k_padded, int8_t* codes, float* scale) {
  float max_abs = 0.0f;
  bool finite = true;
  for (size_t i = 0; i < k; ++i) {
    const float v = std::fabs(x[i]);
    finite &= v <= FLT_MAX;  // false for inf and NaN
    max_abs = v > max_abs ? v : max_abs;
  }
  if (!finite) return false;
  *scale = max_abs / 127.0f;
  std::memset(codes, 0, k_padded);
  if (*scale == 0.0f) return true;
  for (size_t i = 0; i < k; ++i) {
    const float q = std::nearbyint(x[i] / *scale);  // round half to even, as torch.round / np.rint
    codes[i] = static_cast<int8_t>(q > 127.0f ? 127.0f : (q < -127.0f ? -127.0f : q));
  }
  return true;
}

void dequantize_scalar(const int32_t* tile, size_t ldt, size_t n_rows, size_t n_cols,
                       const float* row_scales, const float* col_scales, const float* bias,
                       float* out, size_t ld_out) {
  for (size_t r = 0; r < n_rows; ++r) {
    for (size_t c = 0; c < n_cols; ++c) {
      const float v = static_cast<float>(tile[r * ldt + c]) * row_scales[r] * col_scales[c];
      out[r * ld_out + c] = bias != nullptr ? v + bias[c] : v;
    }
  }
}

namespace {

using namespace gelu_constants;

// exp(x) for x in [-87, 0]: x = n ln2 + r, |r| <= ln2 / 2, exp(r) by Cephes' polynomial.
float exp_nonpositive(float x) {
  x = x < kExpMin ? kExpMin : x;
  const float n = std::nearbyint(x * kLog2e);
  const float r = (x - n * kLn2Hi) - n * kLn2Lo;
  float y = kExpP[0];
  for (int i = 1; i < 6; ++i) y = y * r + kExpP[i];
  y = (y * (r * r) + r) + 1.0f;
  int32_t bits;
  std::memcpy(&bits, &y, 4);
  bits += static_cast<int32_t>(n) << 23;
  std::memcpy(&y, &bits, 4);
  return y;
}

float gelu(float x) {
  const float z = std::fabs(x) * kInvSqrt2;
  const float t = 1.0f / (1.0f + kErfP * z);
  float poly = kErfA[4];
  for (int i = 3; i >= 0; --i) poly = poly * t + kErfA[i];
  const float erfc = (poly * t) * exp_nonpositive(-(z * z));  // erfc(|x| / sqrt 2)
  const float half_x = 0.5f * x;
  return x >= 0.0f ? x - half_x * erfc : half_x * erfc;  // 0.5 x (1 + erf): erf = 1 - erfc for x >= 0
}

void tile(const int8_t* a, size_t n_rows, const int8_t* panels, size_t n_panels,
          const int32_t* /*colsums*/, size_t k_padded, int32_t* out, size_t ldo) {
  const size_t slices = k_padded / 4;
  for (size_t r = 0; r < n_rows; ++r) {
    const int8_t* row = a + r * k_padded;
    for (size_t p = 0; p < n_panels; ++p) {
      const int8_t* panel = panels + p * k_padded * kPanel;
      int32_t acc[kPanel] = {0};
      for (size_t s = 0; s < slices; ++s)
        for (size_t c = 0; c < kPanel; ++c)
          for (size_t b = 0; b < 4; ++b)
            acc[c] += int32_t(row[s * 4 + b]) * int32_t(panel[s * 64 + c * 4 + b]);
      for (size_t c = 0; c < kPanel; ++c) out[r * ldo + p * kPanel + c] = acc[c];
    }
  }
}

}  // namespace

void gelu_scalar(float* data, size_t n_rows, size_t n_cols, size_t ld) {
  for (size_t r = 0; r < n_rows; ++r)
    for (size_t c = 0; c < n_cols; ++c) data[r * ld + c] = gelu(data[r * ld + c]);
}

const GemmPath kScalarGemm = {"scalar", 1, tile, nullptr, quantize_row_scalar, dequantize_scalar, gelu_scalar};

}  // namespace fastret
