// Driver for the int8 GEMM: weight packing, path dispatch, tiling and threads.
//
// Work layout for one product a int8 [m, k] x w^T:
//   tasks = blocks of kRowBlock activation rows x blocks of weight panels (about kWeightBlockBytes
//   of packed weights, L2-resident); OpenMP threads take tasks dynamically. Inside a task, each
//   group of the path's panels is swept over the block's rows in one tile call, so the panel group
//   stays in L1 while the rows stream from L2. Each int32 block goes straight to the caller's store
//   (a copy for gemm_int8, dequantization for linear_int8).
#include "gemm_int8.h"

#include <algorithm>
#include <atomic>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

#include "amx_tiles.h"
#include "gemm_int8_paths.h"
#include "topk_int8.h"

namespace fastret {
namespace {

// vpdpbusd accumulates (a + 128) * w: |sum| <= k * 255 * 128 must stay inside int32.
constexpr size_t kMaxK = 65536;
constexpr size_t kRowBlock = 64;
constexpr size_t kWeightBlockBytes = 128 * 1024;
constexpr uint64_t kPackedMagic = 0x32574938544652ULL;  // "FRT8IW2"

struct PackedHeader {
  uint64_t magic, n, k, max_abs;  // max_abs: the largest |w|, which picks the tile kernel
};

const GemmPath* const kGemmPaths[] = {
#if defined(__x86_64__) || defined(_M_X64)
    &kAvx512VnniGemm, &kAvx2Gemm,
#endif
    &kScalarGemm};

// The micro-kernel of the search's active SIMD path (a path without one runs the portable kernel):
// the AMX paths' is the AMX tile kernel (emulated with the emulated path).
const GemmPath& active_gemm_path() {
  const std::string name = simd_path();
  for (const GemmPath* path : kGemmPaths)
    if (name == path->name) return *path;
  if (name == kAmxEmulatedGemm.name) return kAmxEmulatedGemm;
#if defined(__x86_64__) || defined(_M_X64)
  if (name == kAmxGemm.name) return kAmxGemm;  // the search path exists only where amx_usable()
#endif
  return kScalarGemm;
}

// A micro-kernel by name (gemm_int8's `kernel`): a path's, "amx" where the CPU has it, or
// "amx-emulated" (the AMX kernel's tile operations in scalar code, on any CPU).
const GemmPath& gemm_path_named(const std::string& name) {
  for (const GemmPath* path : kGemmPaths)
    if (name == path->name) return *path;
  if (name == kAmxEmulatedGemm.name) return kAmxEmulatedGemm;
#if defined(__x86_64__) || defined(_M_X64)
  if (name == kAmxGemm.name) {
    if (!amx_usable())
      throw std::invalid_argument("gemm_int8: kernel 'amx' needs a CPU with AMX-INT8 (and Linux's permission "
                                  "to use its tiles); this one has none: use 'amx-emulated' to test the kernel");
    return kAmxGemm;
  }
#endif
  std::string known;
  for (const GemmPath* path : kGemmPaths) known += std::string(path->name) + ", ";
  throw std::invalid_argument("gemm_int8: unknown kernel '" + name + "'; expected one of " + known +
                              "amx, amx-emulated");
}

size_t round_up(size_t x, size_t multiple) { return (x + multiple - 1) / multiple * multiple; }

void check_weights(const char* what, size_t n, size_t k) {
  if (n == 0) throw std::invalid_argument(std::string(what) + ": n (output channels) must be at least 1");
  if (k == 0) throw std::invalid_argument(std::string(what) + ": k (input features) must be at least 1");
  if (k > kMaxK)
    throw std::invalid_argument(std::string(what) + ": k = " + std::to_string(k) + " exceeds the supported " +
                                std::to_string(kMaxK) + " (int32 accumulators would overflow)");
}

// Multiplies a int8 [m, k_padded] (zero padded, codes in [-127, 127]; the caller's scratch, which
// the narrow kernel's bias to unsigned overwrites) by the packed weights' transpose and hands every
// int32 tile to store(row0, n_rows, col0, n_cols, tile, ldo).
template <typename Store>
void multiply(const GemmPath& path, int8_t* a, size_t m, const uint8_t* packed, const PackedHeader& header,
              size_t k_padded, const Store& store) {
  const size_t n = static_cast<size_t>(header.n);
  const bool narrow = path.tile_narrow != nullptr && header.max_abs <= static_cast<uint64_t>(kNarrowWeight);
  const GemmTile kernel = narrow ? path.tile_narrow : path.tile;
  if (narrow) {
    uint8_t* bytes = reinterpret_cast<uint8_t*>(a);
    for (size_t i = 0; i < m * k_padded; ++i) bytes[i] ^= 0x80;  // a + 128 as unsigned
  }
  const size_t n_panels = (n + kPanel - 1) / kPanel;
  const size_t panel_bytes = k_padded * kPanel;
  packed += kPackedHeader;
  const int8_t* panels = reinterpret_cast<const int8_t*>(packed);
  const int32_t* colsums = reinterpret_cast<const int32_t*>(packed + n_panels * panel_bytes);
  const size_t block_panels =
      round_up(std::max<size_t>(1, kWeightBlockBytes / panel_bytes), path.panels);
  const size_t panel_blocks = (n_panels + block_panels - 1) / block_panels;
  const size_t tasks = (m + kRowBlock - 1) / kRowBlock * panel_blocks;
  const int threads = static_cast<int>(std::max<size_t>(
      1, std::min<size_t>(static_cast<size_t>(std::max(num_threads(), 1)), tasks)));

#pragma omp parallel for schedule(dynamic) num_threads(threads)
  for (size_t task = 0; task < tasks; ++task) {
    alignas(64) int32_t tile[kRowBlock * kMaxGemmPanels * kPanel];
    const size_t row_begin = task / panel_blocks * kRowBlock;
    const size_t row_end = std::min(m, row_begin + kRowBlock);
    const size_t panel_begin = task % panel_blocks * block_panels;
    const size_t panel_end = std::min(n_panels, panel_begin + block_panels);
    for (size_t p0 = panel_begin; p0 < panel_end; p0 += path.panels) {
      const size_t n_tile_panels = std::min(path.panels, panel_end - p0);
      const size_t ldo = n_tile_panels * kPanel;
      const size_t col0 = p0 * kPanel;
      const size_t n_cols = std::min(ldo, n - col0);
      kernel(a + row_begin * k_padded, row_end - row_begin, panels + p0 * panel_bytes,
             n_tile_panels, colsums + p0 * kPanel, k_padded, tile, ldo);
      store(row_begin, row_end - row_begin, col0, n_cols, tile, ldo);
    }
  }
}

// The header of a buffer packed_weights_shape accepted.
PackedHeader read_header(const uint8_t* packed) {
  PackedHeader header;
  std::memcpy(&header, packed, sizeof(header));
  return header;
}

}  // namespace

size_t packed_weights_bytes(size_t n, size_t k) {
  const size_t n_panels = (n + kPanel - 1) / kPanel;
  return kPackedHeader + n_panels * kPanel * (round_up(k, 4) + sizeof(int32_t));
}

void packed_weights_shape(const uint8_t* packed, size_t bytes, size_t* n, size_t* k) {
  PackedHeader header{};
  if (bytes >= sizeof(header)) std::memcpy(&header, packed, sizeof(header));
  if (bytes < kPackedHeader || header.magic != kPackedMagic || header.n == 0 || header.k == 0 ||
      header.k > kMaxK || header.n > bytes || header.max_abs > 127 ||
      packed_weights_bytes(header.n, header.k) != bytes)
    throw std::invalid_argument("not packed int8 weights (make them with pack_int8_weights)");
  *n = static_cast<size_t>(header.n);
  *k = static_cast<size_t>(header.k);
}

void pack_int8_weights(const int8_t* weights, size_t n, size_t k, uint8_t* packed) {
  check_weights("pack_int8_weights", n, k);
  const size_t k_padded = round_up(k, 4);
  const size_t n_panels = (n + kPanel - 1) / kPanel;
  std::memset(packed, 0, packed_weights_bytes(n, k));
  uint8_t* const start = packed;
  packed += kPackedHeader;
  int8_t* panels = reinterpret_cast<int8_t*>(packed);
  std::vector<int32_t> colsums(n_panels * kPanel, 0);
  uint64_t max_abs = 0;
  for (size_t j = 0; j < n; ++j) {
    int8_t* panel = panels + (j / kPanel) * k_padded * kPanel;
    const size_t c = j % kPanel;
    for (size_t i = 0; i < k; ++i) {
      const int8_t w = weights[j * k + i];
      if (w == -128)
        throw std::invalid_argument("pack_int8_weights: weight codes must lie in [-127, 127]; "
                                    "output channel " + std::to_string(j) +
                                    " holds -128 (quantize symmetrically)");
      panel[(i / 4) * 4 * kPanel + c * 4 + i % 4] = w;
      colsums[j] += w;
      max_abs = std::max<uint64_t>(max_abs, static_cast<uint64_t>(w < 0 ? -w : w));
    }
  }
  const PackedHeader header{kPackedMagic, n, k, max_abs};
  std::memcpy(start, &header, sizeof(header));
  std::memcpy(packed + n_panels * k_padded * kPanel, colsums.data(), colsums.size() * sizeof(int32_t));
}

void gemm_int8(const int8_t* a, size_t m, const uint8_t* packed, int32_t* out, const char* kernel) {
  const PackedHeader header = read_header(packed);
  const size_t n = static_cast<size_t>(header.n), k = static_cast<size_t>(header.k);
  if (m == 0) throw std::invalid_argument("gemm_int8: the activation matrix has no rows");
  const size_t k_padded = round_up(k, 4);
  std::vector<int8_t> padded(m * k_padded, 0);
  for (size_t r = 0; r < m; ++r) {
    for (size_t i = 0; i < k; ++i) {
      if (a[r * k + i] == -128)
        throw std::invalid_argument("gemm_int8: activation codes must lie in [-127, 127]; row " +
                                    std::to_string(r) + " holds -128 (quantize symmetrically)");
    }
    std::memcpy(padded.data() + r * k_padded, a + r * k, k);
  }
  multiply(kernel == nullptr ? active_gemm_path() : gemm_path_named(kernel), padded.data(), m, packed, header,
           k_padded, [&](size_t r0, size_t n_rows, size_t col0, size_t n_cols, const int32_t* tile, size_t ldo) {
             for (size_t r = 0; r < n_rows; ++r)
               std::memcpy(out + (r0 + r) * n + col0, tile + r * ldo, n_cols * sizeof(int32_t));
           });
}

void linear_int8(const float* x, size_t m, const uint8_t* packed, const float* weight_scales,
                 const float* bias, bool gelu, float* out) {
  const PackedHeader header = read_header(packed);
  const size_t n = static_cast<size_t>(header.n), k = static_cast<size_t>(header.k);
  if (m == 0) throw std::invalid_argument("linear_int8: the input has no rows");
  const GemmPath& path = active_gemm_path();
  const size_t k_padded = round_up(k, 4);
  std::vector<int8_t> codes(m * k_padded);
  std::vector<float> scales(m);
  std::atomic<bool> finite{true};
  const int threads = static_cast<int>(std::min<size_t>(m, static_cast<size_t>(std::max(num_threads(), 1))));
#pragma omp parallel for schedule(static) num_threads(threads)
  for (size_t r = 0; r < m; ++r) {
    if (!path.quantize_row(x + r * k, k, k_padded, codes.data() + r * k_padded, &scales[r]))
      finite.store(false, std::memory_order_relaxed);
  }
  if (!finite.load())
    throw std::invalid_argument("linear_int8: the input holds NaN or inf; int8 quantization needs finite values");

  multiply(path, codes.data(), m, packed, header, k_padded,
           [&](size_t r0, size_t n_rows, size_t col0, size_t n_cols, const int32_t* tile, size_t ldo) {
             path.dequantize(tile, ldo, n_rows, n_cols, scales.data() + r0, weight_scales + col0,
                             bias != nullptr ? bias + col0 : nullptr, out + r0 * n + col0, n);
             if (gelu) path.gelu(out + r0 * n + col0, n_rows, n_cols, n);  // while the block is in L1
           });
}

}  // namespace fastret
