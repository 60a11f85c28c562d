// Exact int8 matrix products for the linear layers of an int8 encoder on the CPU.
//
//   gemm_int8:   out[m][j] = sum_i a[m][i] * w[j][i]                       (int32, exact)
//   linear_int8: a = per-row (per-token) symmetric int8 quantization of x,
//                  s_m = max_i |x[m][i]| / 127,  a[m][i] = clip(rint(x[m][i] / s_m), -127, 127)
//                out[m][j] = (float(sum_i a[m][i] * w[j][i]) * s_m) * w_scale[j] + bias[j]   (float32)
//                then, if asked, GELU (the erf form) of each output, fused into the same pass
//
// The weights w int8 [n, k] are packed once (pack_int8_weights) into a layout that every SIMD path
// reads, so a packed buffer stays valid when the path changes. The path and the thread count are
// the search's: simd_path() and num_threads() from topk_int8.h.
//
// Plain C++17: pointers and sizes in, outputs last. No Python here (see bindings.cpp).
#pragma once

#include <cstddef>
#include <cstdint>

namespace fastret {

// Bytes of the packed form of n x k weights.
size_t packed_weights_bytes(size_t n, size_t k);

// Packs weights int8 [n, k] (row j = output channel j; codes in [-127, 127]) into
// packed uint8 [packed_weights_bytes(n, k)], which records n and k.
// Throws std::invalid_argument for n == 0, k == 0, k > 65536 or a code of -128.
void pack_int8_weights(const int8_t* weights, size_t n, size_t k, uint8_t* packed);

// The n and k recorded in a packed buffer of `bytes` bytes.
// Throws std::invalid_argument if the buffer is not one that pack_int8_weights made.
void packed_weights_shape(const uint8_t* packed, size_t bytes, size_t* n, size_t* k);

// out int32 [m, n] = a int8 [m, k] times the packed weights' transpose, exactly, on the active
// path's micro-kernel, or the one named by `kernel` (a path's name, "amx" where the CPU has AMX,
// or "amx-emulated": the AMX kernel's tile operations in scalar code, for tests on any CPU).
// Activation codes must lie in [-127, 127]; throws std::invalid_argument otherwise, for m == 0,
// and for an unknown kernel or "amx" without AMX.
void gemm_int8(const int8_t* a, size_t m, const uint8_t* packed, int32_t* out, const char* kernel = nullptr);

// out float32 [m, n] from x float32 [m, k] (see the formula above); bias may be nullptr; gelu
// applies GELU to the outputs.
// Throws std::invalid_argument for m == 0 or a row of x holding NaN or inf.
void linear_int8(const float* x, size_t m, const uint8_t* packed, const float* weight_scales,
                 const float* bias, bool gelu, float* out);

}  // namespace fastret
