// ARM path with the int8 matrix multiply extension (Armv8.6 I8MM: AWS Graviton 3 on, Apple M2 on):
// SMMLA multiplies a 2x8 block of signed bytes by another's transpose into a 2x2 block of int32,
// twice the multiply-adds of SDOT per instruction. The batch kernel scores 2 corpus rows against
// 2 queries per instruction; one or two queries, and the binary first stage, keep the NEON path's
// kernels (simd_neon.cpp). Compiled per function (no -march), chosen at run time: picked where the
// CPU has I8MM and its batch kernel, measured at first use, beats the NEON one (simd_paths.h).
//
// Packed tile layout: 8 blocks of 4 row pairs; for each block b, 8-byte step s and pair i, the
// 16 bytes of rows 2p and 2p + 1 (p = 4b + i) over dimensions 8s .. 8s + 7:
//   packed[((b * steps + s) * 4 + i) * 16 + h * 8 + c] = rows[2p + h][8s + c]      (zero past both)
// The queries, laid out once per search, in groups of 8 (4 pairs) the same way:
//   group[(s * 4 + t) * 16 + h * 8 + c] = queries[2t + h][8s + c]
// Per block and step: 4 corpus and 4 query registers, 16 SMMLA into 16 accumulators; accumulator
// (i, t) holds rows 2p, 2p + 1 x queries 2t, 2t + 1, stored tile major (out[row * 8 + query]).
#if defined(__aarch64__)

#include <arm_neon.h>

#include <cstring>

#if defined(__linux__)
#include <asm/hwcap.h>
#include <sys/auxv.h>
#elif defined(__APPLE__)
#include <sys/sysctl.h>
#endif

#include "simd_paths.h"

#define FASTRET_I8MM __attribute__((target("arch=armv8.2-a+dotprod+i8mm")))

namespace fastret {
namespace {

constexpr size_t kQueries = 8;  // queries per dots call: 4 pairs
constexpr size_t kPairs = 4;    // row pairs (and query pairs) per block
constexpr size_t kBlocks = kTile / (2 * kPairs);
constexpr size_t kStep = 8;  // dimensions per SMMLA
constexpr size_t kPairBytes = 2 * kStep;
static_assert(kQueries <= kMaxQueryRows, "the driver's buffers hold one group of queries");

bool supported() {
#if defined(__linux__) && defined(HWCAP2_I8MM)
  return (getauxval(AT_HWCAP) & HWCAP_ASIMDDP) != 0 && (getauxval(AT_HWCAP2) & HWCAP2_I8MM) != 0;
#elif defined(__APPLE__)
  int value = 0;
  size_t size = sizeof(value);
  return sysctlbyname("hw.optional.arm.FEAT_I8MM", &value, &size, nullptr, 0) == 0 && value != 0;
#else
  return false;
#endif
}

size_t steps(size_t dim_padded) { return (dim_padded + kStep - 1) / kStep; }

size_t packed_bytes(size_t dim_padded) { return kTile * steps(dim_padded) * kStep; }

// The 8 bytes of `row` over dimensions [8s, 8s + 8), zero past dim, to `out`.
void copy_step(const int8_t* row, size_t dim, size_t s, int8_t* out) {
  if (8 * s < dim) std::memcpy(out, row + 8 * s, dim - 8 * s < kStep ? dim - 8 * s : kStep);
}

void pack(const int8_t* rows, size_t n_rows, size_t dim, size_t dim_padded, uint8_t* packed) {
  const size_t n_steps = steps(dim_padded);
  std::memset(packed, 0, packed_bytes(dim_padded));
  int8_t* out = reinterpret_cast<int8_t*>(packed);
  for (size_t row = 0; row < n_rows; ++row) {
    const size_t p = row / 2, b = p / kPairs, i = p % kPairs, h = row % 2;
    for (size_t s = 0; s < n_steps; ++s)
      copy_step(rows + row * dim, dim, s, out + ((b * n_steps + s) * kPairs + i) * kPairBytes + h * kStep);
  }
}

size_t query_group_bytes(size_t dim_padded) { return kQueries * steps(dim_padded) * kStep; }

void pack_queries(const int8_t* queries, size_t dim_padded, int8_t* out) {
  const size_t n_steps = steps(dim_padded);
  std::memset(out, 0, query_group_bytes(dim_padded));
  for (size_t q = 0; q < kQueries; ++q)
    for (size_t s = 0; s < n_steps; ++s)
      copy_step(queries + q * dim_padded, dim_padded, s, out + (s * kPairs + q / 2) * kPairBytes + (q % 2) * kStep);
}

FASTRET_I8MM void dots(const uint8_t* tile, size_t dim_padded, const int8_t* queries, size_t /*n_rows*/,
                       int32_t* out) {
  const size_t n_steps = steps(dim_padded);
  const int8_t* packed = reinterpret_cast<const int8_t*>(tile);
  for (size_t b = 0; b < kBlocks; ++b) {
    int32x4_t acc[kPairs][kPairs];
    for (size_t i = 0; i < kPairs; ++i)
      for (size_t t = 0; t < kPairs; ++t) acc[i][t] = vdupq_n_s32(0);
    const int8_t* block = packed + b * n_steps * kPairs * kPairBytes;
    for (size_t s = 0; s < n_steps; ++s) {
      const int8_t* c = block + s * kPairs * kPairBytes;
      const int8_t* q = queries + s * kPairs * kPairBytes;
      const int8x16_t c0 = vld1q_s8(c), c1 = vld1q_s8(c + 16), c2 = vld1q_s8(c + 32), c3 = vld1q_s8(c + 48);
      const int8x16_t q0 = vld1q_s8(q), q1 = vld1q_s8(q + 16), q2 = vld1q_s8(q + 32), q3 = vld1q_s8(q + 48);
      const int8x16_t rows[kPairs] = {c0, c1, c2, c3};
      for (size_t i = 0; i < kPairs; ++i) {
        acc[i][0] = vmmlaq_s32(acc[i][0], rows[i], q0);
        acc[i][1] = vmmlaq_s32(acc[i][1], rows[i], q1);
        acc[i][2] = vmmlaq_s32(acc[i][2], rows[i], q2);
        acc[i][3] = vmmlaq_s32(acc[i][3], rows[i], q3);
      }
    }
    for (size_t i = 0; i < kPairs; ++i) {
      const size_t row = 2 * (b * kPairs + i);
      for (size_t t = 0; t < kPairs; ++t) {
        vst1_s32(out + row * kQueries + 2 * t, vget_low_s32(acc[i][t]));
        vst1_s32(out + (row + 1) * kQueries + 2 * t, vget_high_s32(acc[i][t]));
      }
    }
  }
}

}  // namespace

const SimdPath kI8mmPath = {"i8mm",
                            false,
                            supported,
                            {kQueries, packed_bytes, pack, dots, /*corpus_bias=*/false, /*in_place=*/nullptr,
                             query_group_bytes, pack_queries, /*tile_major=*/true},
                            {},
                            dots_direct_neon,
                            binary_distances_neon,
                            SimdPath::Pick::when_faster};

}  // namespace fastret

#endif
