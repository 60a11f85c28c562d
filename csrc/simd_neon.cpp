// ARM NEON path with the dot-product extension (Armv8.2 and later: Apple M1 on, AWS Graviton 2 on):
// sdot multiplies signed by signed bytes and adds groups of 4 into int32 lanes, so no bias and no
// sign trick are needed. Compiled per function (no -march) and chosen at run time from the CPU's
// features, like the x86 paths.
//
// Packed tile layout: 4 quads of 4 groups of 4 vectors; for each quad, 4-byte slice s and group j,
//   packed[((quad * slices + s) * 4 + j) * 16 + v * 4 + b] = rows[(quad * 4 + j) * 4 + v][s * 4 + b]
// so one quad's slice is 64 contiguous bytes: 4 registers of 4 vectors each, matching a broadcast
// of the query's slice s.
#if defined(__aarch64__)

#include <arm_neon.h>

#include <algorithm>
#include <cstring>

#if defined(__linux__)
#include <asm/hwcap.h>
#include <sys/auxv.h>
#elif defined(__APPLE__)
#include <sys/sysctl.h>
#endif

#include "simd_paths.h"

#define FASTRET_DOTPROD __attribute__((target("arch=armv8.2-a+dotprod")))

namespace fastret {
namespace {

constexpr size_t kRows = 4;          // queries per dots call: 16 accumulators + 4 corpus + 1 query
constexpr size_t kGroup = 4;         // vectors per 16-byte register
constexpr size_t kQuadGroups = 4;    // groups scored together
constexpr size_t kQuads = kTile / (kGroup * kQuadGroups);
constexpr size_t kDirectRows = 4;    // rows a direct call scores at once

bool supported() {
#if defined(__linux__)
  return (getauxval(AT_HWCAP) & HWCAP_ASIMDDP) != 0;
#elif defined(__APPLE__)
  int value = 0;
  size_t size = sizeof(value);
  return sysctlbyname("hw.optional.arm.FEAT_DotProd", &value, &size, nullptr, 0) == 0 && value != 0;
#else
  return false;
#endif
}

size_t packed_bytes(size_t dim_padded) { return kTile * dim_padded; }

void pack(const int8_t* rows, size_t n_rows, size_t dim, size_t dim_padded, uint8_t* packed) {
  const size_t slices = dim_padded / 4;
  std::memset(packed, 0, packed_bytes(dim_padded));
  for (size_t row = 0; row < n_rows; ++row) {
    const size_t group = row / kGroup, quad = group / kQuadGroups, j = group % kQuadGroups;
    uint8_t* base = packed + (quad * slices * kQuadGroups + j) * 16 + (row % kGroup) * 4;
    for (size_t s = 0; s * 4 < dim; ++s)
      std::memcpy(base + s * kQuadGroups * 16, rows + row * dim + s * 4, dim - s * 4 < 4 ? dim - s * 4 : 4);
  }
}

// R queries against one quad (16 vectors): acc[r][j] holds vectors 4j..4j+3 of the quad.
template <size_t R>
FASTRET_DOTPROD void dots_quad(const uint8_t* quad, size_t slices, size_t dim_padded,
                               const int8_t* queries, int32_t* out) {
  int32x4_t acc[R][kQuadGroups];
  for (size_t r = 0; r < R; ++r)
    for (size_t j = 0; j < kQuadGroups; ++j) acc[r][j] = vdupq_n_s32(0);
  for (size_t s = 0; s < slices; ++s) {
    const int8_t* p = reinterpret_cast<const int8_t*>(quad + s * kQuadGroups * 16);
    const int8x16_t d0 = vld1q_s8(p), d1 = vld1q_s8(p + 16), d2 = vld1q_s8(p + 32),
                    d3 = vld1q_s8(p + 48);
    for (size_t r = 0; r < R; ++r) {
      int32_t slice;
      std::memcpy(&slice, queries + r * dim_padded + s * 4, 4);
      const int8x16_t q = vreinterpretq_s8_s32(vdupq_n_s32(slice));
      acc[r][0] = vdotq_s32(acc[r][0], d0, q);
      acc[r][1] = vdotq_s32(acc[r][1], d1, q);
      acc[r][2] = vdotq_s32(acc[r][2], d2, q);
      acc[r][3] = vdotq_s32(acc[r][3], d3, q);
    }
  }
  for (size_t r = 0; r < R; ++r)
    for (size_t j = 0; j < kQuadGroups; ++j) vst1q_s32(out + r * kTile + j * kGroup, acc[r][j]);
}

template <size_t R>
FASTRET_DOTPROD void dots_rows(const uint8_t* packed, size_t dim_padded, const int8_t* queries,
                               int32_t* out) {
  const size_t slices = dim_padded / 4;
  for (size_t quad = 0; quad < kQuads; ++quad)
    dots_quad<R>(packed + quad * slices * kQuadGroups * 16, slices, dim_padded, queries,
                 out + quad * kQuadGroups * kGroup);
}

void dots(const uint8_t* packed, size_t dim_padded, const int8_t* queries, size_t n_rows,
          int32_t* out) {
  switch (n_rows) {
    case 1: return dots_rows<1>(packed, dim_padded, queries, out);
    case 2: return dots_rows<2>(packed, dim_padded, queries, out);
    case 3: return dots_rows<3>(packed, dim_padded, queries, out);
    default: return dots_rows<4>(packed, dim_padded, queries, out);
  }
}

// 16 bytes of a row from `begin`, zero filled past dim.
FASTRET_DOTPROD int8x16_t load_tail(const int8_t* row, size_t dim, size_t begin) {
  int8_t tail[16] = {0};
  std::memcpy(tail, row + begin, dim - begin);
  return vld1q_s8(tail);
}

}  // namespace

// One query against rows read where they are, kDirectRows rows at a time.
FASTRET_DOTPROD void dots_direct_neon(const int8_t* rows, size_t n_rows, size_t dim, const int8_t* query,
                                 int32_t* out) {
  const size_t full = dim / 16;
  const bool has_tail = dim % 16 != 0;
  const int8x16_t q_tail = has_tail ? load_tail(query, dim, full * 16) : vdupq_n_s8(0);
  size_t v = 0;
  for (; v + kDirectRows <= n_rows; v += kDirectRows) {
    const int8_t* r = rows + v * dim;
    int32x4_t a0 = vdupq_n_s32(0), a1 = a0, a2 = a0, a3 = a0;
    for (size_t c = 0; c < full; ++c) {
      const int8x16_t q = vld1q_s8(query + c * 16);
      a0 = vdotq_s32(a0, vld1q_s8(r + c * 16), q);
      a1 = vdotq_s32(a1, vld1q_s8(r + dim + c * 16), q);
      a2 = vdotq_s32(a2, vld1q_s8(r + 2 * dim + c * 16), q);
      a3 = vdotq_s32(a3, vld1q_s8(r + 3 * dim + c * 16), q);
    }
    if (has_tail) {
      a0 = vdotq_s32(a0, load_tail(r, dim, full * 16), q_tail);
      a1 = vdotq_s32(a1, load_tail(r + dim, dim, full * 16), q_tail);
      a2 = vdotq_s32(a2, load_tail(r + 2 * dim, dim, full * 16), q_tail);
      a3 = vdotq_s32(a3, load_tail(r + 3 * dim, dim, full * 16), q_tail);
    }
    out[v] = vaddvq_s32(a0);
    out[v + 1] = vaddvq_s32(a1);
    out[v + 2] = vaddvq_s32(a2);
    out[v + 3] = vaddvq_s32(a3);
  }
  for (; v < n_rows; ++v) {
    const int8_t* row = rows + v * dim;
    int32x4_t a = vdupq_n_s32(0);
    for (size_t c = 0; c < full; ++c) a = vdotq_s32(a, vld1q_s8(row + c * 16), vld1q_s8(query + c * 16));
    if (has_tail) a = vdotq_s32(a, load_tail(row, dim, full * 16), q_tail);
    out[v] = vaddvq_s32(a);
  }
}

// Two rows at a time: one 128-bit register holds word w of rows j and j + 1 (the blocked layout,
// simd_paths.h); vcnt counts each byte's bits and pairwise widening adds sum them per row.
uint32_t binary_distances_neon(const uint64_t* blocks, size_t n_rows, size_t words, const uint64_t* planes,
                               size_t query_bits, uint32_t* out) {
  uint32_t nearest = UINT32_MAX;
  for (size_t j = 0; j < n_rows; j += 2) {  // kBitBlock is even: rows j and j + 1 share a block
    const uint64_t* lanes = bit_lane(blocks, j, words);
    uint64x2_t total = vdupq_n_u64(0);
    for (size_t p = query_bits; p-- > 0;) {
      const uint64_t* plane = planes + p * words;
      uint64x2_t count = vdupq_n_u64(0);
      for (size_t w = 0; w < words; ++w) {
        const uint8x16_t bytes = vcntq_u8(
            vreinterpretq_u8_u64(veorq_u64(vld1q_u64(lanes + w * kBitBlock), vdupq_n_u64(plane[w]))));
        count = vpadalq_u32(count, vpaddlq_u16(vpaddlq_u8(bytes)));
      }
      total = vaddq_u64(vshlq_n_u64(total, 1), count);
    }
    out[j] = static_cast<uint32_t>(vgetq_lane_u64(total, 0));
    out[j + 1] = static_cast<uint32_t>(vgetq_lane_u64(total, 1));  // a padding row's when j + 1 == n_rows
    nearest = std::min(nearest, j + 1 < n_rows ? std::min(out[j], out[j + 1]) : out[j]);
  }
  return nearest;
}

const SimdPath kNeonPath = {"neon", false, supported, {kRows, packed_bytes, pack, dots}, {}, dots_direct_neon,
                            binary_distances_neon};

}  // namespace fastret

#endif
