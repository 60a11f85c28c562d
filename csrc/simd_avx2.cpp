// AVX2 path (no VNNI). AVX2's only byte multiply, maddubs, multiplies unsigned by signed bytes and
// sums each pair into a saturating int16, so an exact int8 dot product needs care. Both batch
// kernels bias the corpus to unsigned u = d + 128; their dots hold <q, u> = <q, d> + 128 * sum(q),
// and the caller subtracts the query's bias.
//
// Narrow batch (query codes in [-63, 63], what fastret's query quantization produces): a pair
// maddubs(u, q) is at most 2 * 255 * 63 = 32,130 < 32,767, exact, and one madd with ones widens
// it to int32. Two multiply-pipe instructions per 32 products; a call keeps 4 queries x 16 vectors
// of int32 accumulators in registers, so each broadcast query slice feeds two maddubs.
//   Packed tile: 4 blocks of 16 vectors, each block contiguous (12 KB at dim 768); for 4-byte
//   slice s and half h (vectors 0-7 or 8-15 of the block),
//   packed[((b * slices + s) * 2 + h) * 32 + v * 4 + i] = rows[b * 16 + h * 8 + v][s * 4 + i] + 128
//
// Full batch (any query codes): u is split into nibbles, u = 16 * hi + lo with hi, lo in [0, 15].
// A pair maddubs(lo, q) is at most 2 * 15 * 128 = 3840, so eight steps of pairs add up in int16
// (30,720 < 32,767) before one madd per nibble widens them to int32 (the hi sums with weight 16).
// That is 2.25 multiply-pipe instructions per 32 products, where the sign trick below needs 3
// (sign, maddubs, madd).
//   Packed tile: 8 groups of 8 vectors, each group contiguous; for slice s and nibble h (0 = lo,
//   1 = hi), packed[((g * slices + s) * 2 + h) * 32 + v * 4 + i] = nibble h of
//   (rows[g * 8 + v][s * 4 + i] + 128), so one 32-byte load holds slice s of 8 vectors, matching a
//   broadcast of the query's slice s.
//
// On Zen 3 maddubs, madd and sign share the multiply pipes, which bind both batch kernels: the
// narrow one runs 1.45-1.6x the full one's products per second.
//
// Direct (one or two queries, rows read in place): the sign trick,
//   maddubs(|d|, sign(q, d)) = pairs of q * d summed to int16 (|pair| <= 2 * 128 * 127 = 32,512),
// then madd with ones widens to int32. It is exact for any corpus code and query codes in
// [-127, 127]; memory bandwidth, not the multiply pipes, binds a single query.
#if defined(__x86_64__) || defined(_M_X64)

#include <immintrin.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <cstring>
#include <vector>

#include "simd_paths.h"

#define FASTRET_AVX2 __attribute__((target("avx2")))

namespace fastret {

// The bits set in each byte of x, by two 16-entry lookups (vpshufb) on its nibbles.
static FASTRET_AVX2 inline __m256i count_bytes(__m256i x, __m256i bit_counts, __m256i nibble) {
  return _mm256_add_epi8(_mm256_shuffle_epi8(bit_counts, _mm256_and_si256(x, nibble)),
                         _mm256_shuffle_epi8(bit_counts, _mm256_and_si256(_mm256_srli_epi16(x, 4), nibble)));
}

// The binary first stage without a vector popcount (before AVX-512 VPOPCNTDQ), two kernels.
//
// Bit counts (any query bits): one register holds word w of 4 rows of a block (simd_paths.h), and
// each byte's bits are counted by two 16-entry table lookups (vpshufb on its nibbles). Byte counts
// add up over at most 31 words (31 * 8 < 256) before vpsadbw sums each 64-bit lane's bytes: one
// row's count per lane, no shuffle across rows. Each query plane costs a full count.
//
// Query tables (3 or 4 query bits, the default 4; fast scan): a row's distance is a sum over its
// dimensions, out = sum_i (b_i ? T - m_i : m_i) with m_i the query's level index (bits of the
// planes) and T = 2^query_bits - 1, so each nibble of a row's bits (4 dimensions) adds one of 16
// values that depend only on the query: one vpshufb looks up 32 rows' nibbles at once, whatever
// the query bits, where bit counts pay once per plane. That needs a register of the same byte of
// 32 rows, so 32 rows (4 blocks) are transposed in registers first, a word at a time:
//   8 loads  R[2c + h] = word w of rows 8c + 4h .. 8c + 4h + 3            (4 rows x 8 bytes)
//   vpshufb  in each 128-bit lane [row a: bytes 0-7][row a+1: bytes 0-7] -> 16-bit units
//            [byte 0 of a, a+1][byte 1 of a, a+1] ...                      (unit j: byte j)
//   unpack   the 8 x 8 units of the registers' low lanes (and of their high lanes, the same
//            instructions) transposed: Z[j] holds unit j of 32 rows, byte j of each
// Z[j]'s byte p belongs to row 4 i + 2 L + (p & 1), L = p / 16 its lane, i = (p % 16) / 2 its unit
// (store_in_row_order puts the sums back in row order). Lookups
// of two bytes (4 nibbles, each <= 4T = 60) add up in bytes (<= 240), then widen into 16-bit sums
// of even and odd bytes (the two rows of each unit), exact up to 1,024 dimensions (kFastScanWords;
// longer rows take the bit counts).

// The kernel of bit counts on the blocks [block0, block_end) of a tile (rows of those blocks into
// out[8 * block0 ..]), and the least distance of their valid rows (j < n_rows).
static FASTRET_AVX2 uint32_t bit_count_distances(const uint64_t* blocks, size_t block0, size_t block_end,
                                                 size_t n_rows, size_t words, const uint64_t* planes,
                                                 size_t query_bits, uint32_t* out) {
  constexpr size_t kWordsPerSum = 31;
  const __m256i nibble = _mm256_set1_epi8(0x0f);
  const __m256i bit_counts = _mm256_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4,  //
                                              0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4);
  const __m256i zero = _mm256_setzero_si256();
  const __m256i lane_index = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  const __m256i interleaved = _mm256_setr_epi32(0, 2, 4, 6, 1, 3, 5, 7);
  __m256i nearest = _mm256_set1_epi32(-1);  // UINT32_MAX in each lane
  for (size_t j = block0 * kBitBlock; j < block_end * kBitBlock; j += kBitBlock) {
    const uint64_t* block = blocks + (j / kBitBlock) * words * kBitBlock;
    __m256i total[2] = {zero, zero};  // uint64 lanes: rows 0-3, rows 4-7
    for (size_t p = query_bits; p-- > 0;) {
      __m256i count[2] = {zero, zero};
      for (size_t w0 = 0; w0 < words; w0 += kWordsPerSum) {
        __m256i bytes[2] = {zero, zero};
        for (size_t w = w0; w < std::min(words, w0 + kWordsPerSum); ++w) {
          const __m256i plane = _mm256_set1_epi64x(static_cast<long long>(planes[p * words + w]));
          for (size_t half = 0; half < 2; ++half) {
            const __m256i bits = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(block + w * kBitBlock + 4 * half));
            bytes[half] = _mm256_add_epi8(bytes[half], count_bytes(_mm256_xor_si256(bits, plane), bit_counts, nibble));
          }
        }
        for (size_t half = 0; half < 2; ++half) count[half] = _mm256_add_epi64(count[half], _mm256_sad_epu8(bytes[half], zero));
      }
      for (size_t half = 0; half < 2; ++half) total[half] = _mm256_add_epi64(_mm256_slli_epi64(total[half], 1), count[half]);
    }
    // rows 0-3 in the low halves of total[0]'s lanes, 4-7 in total[1]'s: [r0 r4 r1 r5 r2 r6 r3 r7] -> in order
    const __m256i mixed = _mm256_blend_epi32(total[0], _mm256_slli_epi64(total[1], 32), 0xAA);
    const __m256i rows = _mm256_permutevar8x32_epi32(mixed, interleaved);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + j), rows);
    const __m256i valid = _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(std::min(n_rows - j, kBitBlock))),
                                             lane_index);  // the padding rows left out
    nearest = _mm256_min_epu32(nearest, _mm256_blendv_epi8(_mm256_set1_epi32(-1), rows, valid));
  }
  alignas(32) uint32_t lanes[8];
  _mm256_store_si256(reinterpret_cast<__m256i*>(lanes), nearest);
  return *std::min_element(lanes, lanes + 8);
}

constexpr size_t kFastScanRows = 4 * kBitBlock;  // rows a fast-scan group transposes at once
constexpr size_t kFastScanWords = 16;            // the longest rows (1,024 dims) looked up by query tables

// Word w of 32 rows (4 blocks from `group`) as 8 registers Z[j], Z[j]'s bytes byte j of each row.
static FASTRET_AVX2 inline void transpose_word(const uint64_t* group, size_t words, size_t w, __m256i z[8]) {
  // in each 128-bit lane: bytes of row a at 0-7, of row a+1 at 8-15 -> unit j = (byte j of a, byte j of a+1)
  const __m256i pair_bytes = _mm256_setr_epi8(0, 8, 1, 9, 2, 10, 3, 11, 4, 12, 5, 13, 6, 14, 7, 15,  //
                                              0, 8, 1, 9, 2, 10, 3, 11, 4, 12, 5, 13, 6, 14, 7, 15);
  __m256i r[8];
  for (size_t c = 0; c < 4; ++c)
    for (size_t h = 0; h < 2; ++h)
      r[2 * c + h] = _mm256_shuffle_epi8(
          _mm256_loadu_si256(reinterpret_cast<const __m256i*>(group + (c * words + w) * kBitBlock + 4 * h)),
          pair_bytes);
  // an 8 x 8 transpose of 16-bit units in each 128-bit lane: r[i] unit j -> z[j] unit i
  __m256i a[8], b[8];
  for (size_t i = 0; i < 4; ++i) {
    a[2 * i] = _mm256_unpacklo_epi16(r[2 * i], r[2 * i + 1]);
    a[2 * i + 1] = _mm256_unpackhi_epi16(r[2 * i], r[2 * i + 1]);
  }
  for (size_t i = 0; i < 2; ++i)  // a[4i + h] holds units 4h .. 4h + 3 of two pairs: b[4i + 2h + u] units 4h + 2u, + 1
    for (size_t half = 0; half < 2; ++half) {
      b[4 * i + 2 * half] = _mm256_unpacklo_epi32(a[4 * i + half], a[4 * i + 2 + half]);
      b[4 * i + 2 * half + 1] = _mm256_unpackhi_epi32(a[4 * i + half], a[4 * i + 2 + half]);
    }
  for (size_t q = 0; q < 4; ++q) {
    z[2 * q] = _mm256_unpacklo_epi64(b[q], b[4 + q]);
    z[2 * q + 1] = _mm256_unpackhi_epi64(b[q], b[4 + q]);
  }
}

// The 16 sums of a query's nibble tables: table[(w * 16 + k) * 16 + x] = sum over dimensions
// i = 64 w + 4 k + t (t < 4) of (bit t of x ? T - m_i : m_i).
static void build_fast_scan_table(const uint64_t* planes, size_t query_bits, size_t words, uint8_t* table) {
  const uint32_t top = (1u << query_bits) - 1;
  for (size_t w = 0; w < words; ++w)
    for (size_t k = 0; k < 16; ++k) {
      uint32_t m[4];
      for (size_t t = 0; t < 4; ++t) {
        m[t] = 0;
        for (size_t p = 0; p < query_bits; ++p)
          m[t] |= static_cast<uint32_t>((planes[p * words + w] >> (4 * k + t)) & 1) << p;
      }
      for (uint32_t x = 0; x < 16; ++x) {
        uint32_t sum = 0;
        for (size_t t = 0; t < 4; ++t) sum += (x >> t) & 1 ? top - m[t] : m[t];
        table[(w * 16 + k) * 16 + x] = static_cast<uint8_t>(sum);
      }
    }
}

// Each thread's tables of the queries it scanned last, by where their planes are (a block's queries
// take turns tile after tile: building a query's tables costs more than a tile's lookups), checked
// against the planes themselves, so a new query at a reused address gets new tables.
class FastScanTables {
 public:
  const uint8_t* of(const uint64_t* planes, size_t query_bits, size_t words) {
    // a multiplicative hash: queries' planes lie a fixed stride apart, which a plain modulo would fold together
    Slot& slot = slots_[(static_cast<uint64_t>(reinterpret_cast<uintptr_t>(planes)) * 0x9E3779B97F4A7C15ULL) >> 56];
    const size_t n = query_bits * words;
    if (slot.planes.size() != n || !std::equal(slot.planes.begin(), slot.planes.end(), planes)) {
      slot.planes.assign(planes, planes + n);
      slot.table.resize(words * 16 * 16);
      build_fast_scan_table(planes, query_bits, words, slot.table.data());
    }
    return slot.table.data();
  }

 private:
  static constexpr size_t kSlots = 256;  // the hash's top 8 bits
  struct Slot {
    std::vector<uint64_t> planes;  // query_bits x words: the query the table is for
    std::vector<uint8_t> table;
  };
  std::array<Slot, kSlots> slots_;
};

// A group's distances, the 16-bit sums of its even and odd bytes, as 32-bit in row order (out[0..31]):
// even[8 L + i] is row 4 i + 2 L and odd[8 L + i] row 4 i + 2 L + 1 (transpose_word), so the pairs
// (even, odd)[u] interleaved across the lanes are rows 0-15, then 16-31.
static FASTRET_AVX2 inline void store_in_row_order(__m256i even, __m256i odd, uint32_t* out) {
  const __m256i across_lanes = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
  const __m256i halves[2] = {
      _mm256_permutevar8x32_epi32(_mm256_unpacklo_epi16(even, odd), across_lanes),   // rows 0-15 (16-bit)
      _mm256_permutevar8x32_epi32(_mm256_unpackhi_epi16(even, odd), across_lanes)};  // rows 16-31
  for (size_t h = 0; h < 2; ++h) {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + 16 * h),
                        _mm256_cvtepu16_epi32(_mm256_castsi256_si128(halves[h])));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + 16 * h + 8),
                        _mm256_cvtepu16_epi32(_mm256_extracti128_si256(halves[h], 1)));
  }
}

// How far ahead of the group being looked up its bits are prefetched. One 4-bit query over 10M x 384
// mapped bits (oversample 1, two threads, Zen 3, in turns in one process): 22.8 ms (median) with the
// hardware's prefetchers alone, 18.4-18.6 ms 1.5 to 4.5 KB ahead, 19.5 ms 9 KB ahead; reading the
// 458 MiB there takes 14-18 ms.
constexpr size_t kFastScanPrefetchBytes = 3072;

// Distances of the 32 rows of each whole group of 4 blocks (into out), by query tables; returns the
// least distance of the valid rows (j < n_rows) among them.
static FASTRET_AVX2 uint32_t fast_scan_distances(const uint64_t* blocks, size_t n_groups, size_t n_rows, size_t words,
                                                 const uint8_t* table, uint32_t* out) {
  const __m256i nibble = _mm256_set1_epi8(0x0f);
  const __m256i low_bytes = _mm256_set1_epi16(0x00ff);
  const size_t group_bytes = 4 * words * kBitBlock * sizeof(uint64_t);
  // past this call's groups: the next tile's bits, or nothing (a prefetch never faults)
  const uintptr_t ahead = group_bytes * std::max<size_t>(1, kFastScanPrefetchBytes / group_bytes);
  __m256i nearest = _mm256_set1_epi32(-1);  // UINT32_MAX in each lane, over whole groups
  uint32_t nearest_partial = UINT32_MAX;     // over the valid rows of a last group with padding rows
  for (size_t g = 0; g < n_groups; ++g) {
    const uint64_t* group = blocks + g * 4 * words * kBitBlock;
    const uintptr_t next = reinterpret_cast<uintptr_t>(group) + ahead;
    for (size_t line = 0; line < group_bytes; line += 64)
      _mm_prefetch(reinterpret_cast<const char*>(next + line), _MM_HINT_T0);
    __m256i even = _mm256_setzero_si256(), odd = _mm256_setzero_si256();  // 16-bit sums of bytes 0, 2, .. / 1, 3, ..
    for (size_t w = 0; w < words; ++w) {
      __m256i z[8];
      transpose_word(group, words, w, z);
      const uint8_t* word_table = table + w * 16 * 16;
      for (size_t j = 0; j < 8; j += 2) {
        __m256i sum = _mm256_setzero_si256();  // 4 lookups of <= 60: <= 240 a byte
        for (size_t jj = j; jj < j + 2; ++jj) {
          const __m256i lo_table = _mm256_broadcastsi128_si256(
              _mm_loadu_si128(reinterpret_cast<const __m128i*>(word_table + (2 * jj) * 16)));
          const __m256i hi_table = _mm256_broadcastsi128_si256(
              _mm_loadu_si128(reinterpret_cast<const __m128i*>(word_table + (2 * jj + 1) * 16)));
          sum = _mm256_add_epi8(sum, _mm256_shuffle_epi8(lo_table, _mm256_and_si256(z[jj], nibble)));
          sum = _mm256_add_epi8(
              sum, _mm256_shuffle_epi8(hi_table, _mm256_and_si256(_mm256_srli_epi16(z[jj], 4), nibble)));
        }
        even = _mm256_add_epi16(even, _mm256_and_si256(sum, low_bytes));
        odd = _mm256_add_epi16(odd, _mm256_srli_epi16(sum, 8));
      }
    }
    uint32_t* group_out = out + g * kFastScanRows;
    store_in_row_order(even, odd, group_out);
    const size_t valid = n_rows - g * kFastScanRows;  // a whole group starts before n_rows
    if (valid >= kFastScanRows) {
      for (size_t part = 0; part < kFastScanRows; part += 8)
        nearest = _mm256_min_epu32(nearest, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(group_out + part)));
    } else {
      for (size_t j = 0; j < valid; ++j) nearest_partial = std::min(nearest_partial, group_out[j]);
    }
  }
  alignas(32) uint32_t lanes[8];
  _mm256_store_si256(reinterpret_cast<__m256i*>(lanes), nearest);
  return std::min(nearest_partial, *std::min_element(lanes, lanes + 8));
}

FASTRET_AVX2 uint32_t binary_distances_avx2(const uint64_t* blocks, size_t n_rows, size_t words,
                                            const uint64_t* planes, size_t query_bits, uint32_t* out) {
  const size_t n_blocks = (n_rows + kBitBlock - 1) / kBitBlock;
  size_t fast_groups = 0;
  uint32_t nearest = UINT32_MAX;
  // 3 or 4 bits: a nibble adds at most 4T <= 60, four of them fit a byte, and the 16-bit sums of at
  // most kFastScanWords words stay exact (15 x 64 x 16 < 65,536); longer rows' tables would also
  // crowd each thread's cache of them (4 KiB a query at 1,024 dims)
  if (query_bits >= 3 && query_bits <= 4 && words <= kFastScanWords) {
    static thread_local FastScanTables tables;
    fast_groups = n_blocks / 4;
    nearest = fast_scan_distances(blocks, fast_groups, n_rows, words, tables.of(planes, query_bits, words), out);
  }
  if (4 * fast_groups < n_blocks)  // the blocks after the last whole group, and every block of 1-2 query bits
    nearest = std::min(nearest, bit_count_distances(blocks, 4 * fast_groups, n_blocks, n_rows, words, planes,
                                                    query_bits, out));
  return nearest;
}

namespace {

constexpr size_t kRows = 4;      // queries per dots call: 8 int16 + 2 corpus + 1 query registers
constexpr size_t kNarrowRows = 4;  // queries per narrow dots call: 8 int32 + 2 corpus + 1 query
constexpr size_t kGroup = 8;     // vectors per 32-byte register
constexpr size_t kGroups = kTile / kGroup;
constexpr size_t kBlock = 2 * kGroup;  // vectors per narrow block (two registers)
constexpr size_t kBlocks = kTile / kBlock;
constexpr size_t kStepsPerWiden = 8;  // slices summed in int16 before widening (8 * 3840 < 32,767)
constexpr size_t kDirectRows = 8;     // rows a direct call scores at once
constexpr size_t kPrefetchBlocks = 2; // how many blocks of kDirectRows ahead dots_direct prefetches

bool supported() { return __builtin_cpu_supports("avx2"); }

size_t packed_bytes(size_t dim_padded) { return 2 * kTile * dim_padded; }

size_t narrow_packed_bytes(size_t dim_padded) { return kTile * dim_padded; }

// Transposes 8 rows of 8 dwords: out[c] holds dword c of rows 0..7.
FASTRET_AVX2 void transpose8x8(__m256i r[8]) {
  __m256i t[8], u[8];
  for (int i = 0; i < 4; ++i) {
    t[2 * i] = _mm256_unpacklo_epi32(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm256_unpackhi_epi32(r[2 * i], r[2 * i + 1]);
  }
  for (int i = 0; i < 2; ++i) {  // u[4i + m], lane L: column 4L + m of rows 4i..4i+3
    u[4 * i + 0] = _mm256_unpacklo_epi64(t[4 * i], t[4 * i + 2]);
    u[4 * i + 1] = _mm256_unpackhi_epi64(t[4 * i], t[4 * i + 2]);
    u[4 * i + 2] = _mm256_unpacklo_epi64(t[4 * i + 1], t[4 * i + 3]);
    u[4 * i + 3] = _mm256_unpackhi_epi64(t[4 * i + 1], t[4 * i + 3]);
  }
  for (int m = 0; m < 4; ++m) {
    r[m] = _mm256_permute2x128_si256(u[m], u[4 + m], 0x20);
    r[4 + m] = _mm256_permute2x128_si256(u[m], u[4 + m], 0x31);
  }
}

// Up to 32 bytes of a row starting at `begin`, zero filled past dim.
FASTRET_AVX2 __m256i load_row_chunk(const int8_t* row, size_t dim, size_t begin) {
  if (begin + 32 <= dim) return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(row + begin));
  alignas(32) int8_t tail[32] = {0};
  if (begin < dim) std::memcpy(tail, row + begin, dim - begin);
  return _mm256_load_si256(reinterpret_cast<const __m256i*>(tail));
}

// Transposes the tile into slices and stores each: slice s of group g (8 vectors, biased to
// u = d + 128) goes to its place in the full (nibbles) or narrow layout.
template <bool kNarrow>
FASTRET_AVX2 void pack_tile(const int8_t* rows, size_t n_rows, size_t dim, size_t dim_padded,
                            uint8_t* packed) {
  const size_t slices = dim_padded / 4;
  const __m256i bias = _mm256_set1_epi8(static_cast<char>(0x80));
  const __m256i low_nibble = _mm256_set1_epi8(0x0F);
  for (size_t g = 0; g < kGroups; ++g) {
    uint8_t* group = kNarrow ? packed + (g / 2) * slices * 64 + (g % 2) * 32 : packed + g * slices * 64;
    for (size_t chunk = 0; chunk * 32 < dim_padded; ++chunk) {
      __m256i r[8];
      for (size_t v = 0; v < kGroup; ++v) {
        const size_t row = g * kGroup + v;
        r[v] = row < n_rows ? load_row_chunk(rows + row * dim, dim, chunk * 32)
                            : _mm256_setzero_si256();
      }
      transpose8x8(r);
      const size_t first = chunk * 8;
      for (size_t c = 0; c < 8 && first + c < slices; ++c) {
        const __m256i u = _mm256_xor_si256(r[c], bias);
        uint8_t* at = group + (first + c) * 64;
        if (kNarrow) {
          _mm256_storeu_si256(reinterpret_cast<__m256i*>(at), u);
        } else {
          _mm256_storeu_si256(reinterpret_cast<__m256i*>(at), _mm256_and_si256(u, low_nibble));
          _mm256_storeu_si256(reinterpret_cast<__m256i*>(at + 32),
                              _mm256_and_si256(_mm256_srli_epi16(u, 4), low_nibble));
        }
      }
    }
  }
}

void pack(const int8_t* rows, size_t n_rows, size_t dim, size_t dim_padded, uint8_t* packed) {
  pack_tile<false>(rows, n_rows, dim, dim_padded, packed);
}

void narrow_pack(const int8_t* rows, size_t n_rows, size_t dim, size_t dim_padded, uint8_t* packed) {
  pack_tile<true>(rows, n_rows, dim, dim_padded, packed);
}

// Slice s (4 bytes) of query row r, in every dword lane.
FASTRET_AVX2 inline __m256i broadcast_slice(const int8_t* queries, size_t r, size_t dim_padded, size_t s) {
  int32_t slice;
  std::memcpy(&slice, queries + r * dim_padded + s * 4, 4);
  return _mm256_set1_epi32(slice);
}

// One slice s of R queries against one group: lo[r] and hi[r] gather int16 pairs.
template <size_t R>
FASTRET_AVX2 inline void group_step(const uint8_t* group, size_t s, size_t dim_padded,
                                    const int8_t* queries, __m256i lo[R], __m256i hi[R]) {
  const __m256i d_lo = _mm256_load_si256(reinterpret_cast<const __m256i*>(group + s * 64));
  const __m256i d_hi = _mm256_load_si256(reinterpret_cast<const __m256i*>(group + s * 64 + 32));
  for (size_t r = 0; r < R; ++r) {
    const __m256i q = broadcast_slice(queries, r, dim_padded, s);
    lo[r] = _mm256_add_epi16(lo[r], _mm256_maddubs_epi16(d_lo, q));
    hi[r] = _mm256_add_epi16(hi[r], _mm256_maddubs_epi16(d_hi, q));
    asm("" : "+x"(lo[r]), "+x"(hi[r]));
  }
}

// R queries against one group of 8 vectors, kStepsPerWiden slices between widenings. Full runs of
// slices are unrolled: GCC then keeps every accumulator in place (a rolled loop costs a register
// copy per accumulator and step, and the front end becomes the bottleneck).
template <size_t R>
FASTRET_AVX2 void dots_group(const uint8_t* group, size_t slices, size_t dim_padded,
                             const int8_t* queries, int32_t* out) {
  const __m256i ones = _mm256_set1_epi16(1);
  const __m256i sixteens = _mm256_set1_epi16(16);
  __m256i acc[R];
  for (size_t r = 0; r < R; ++r) acc[r] = _mm256_setzero_si256();
  for (size_t s0 = 0; s0 < slices; s0 += kStepsPerWiden) {
    __m256i lo[R], hi[R];
    for (size_t r = 0; r < R; ++r) lo[r] = hi[r] = _mm256_setzero_si256();
    if (s0 + kStepsPerWiden <= slices) {
#pragma GCC unroll 8
      for (size_t s = s0; s < s0 + kStepsPerWiden; ++s)
        group_step<R>(group, s, dim_padded, queries, lo, hi);
    } else {
      for (size_t s = s0; s < slices; ++s) group_step<R>(group, s, dim_padded, queries, lo, hi);
    }
    for (size_t r = 0; r < R; ++r)
      acc[r] = _mm256_add_epi32(acc[r], _mm256_add_epi32(_mm256_madd_epi16(lo[r], ones),
                                                         _mm256_madd_epi16(hi[r], sixteens)));
  }
  for (size_t r = 0; r < R; ++r)
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + r * kTile), acc[r]);
}

// R queries (|q| <= 63) against one narrow block of 16 vectors: each broadcast query slice meets
// both halves of the block. Unrolled by four slices, which keeps the accumulators in registers.
template <size_t R>
FASTRET_AVX2 void narrow_dots_block(const uint8_t* block, size_t slices, size_t dim_padded,
                                    const int8_t* queries, int32_t* out) {
  const __m256i ones = _mm256_set1_epi16(1);
  __m256i first[R], second[R];  // int32 sums for vectors 0-7 and 8-15
  for (size_t r = 0; r < R; ++r) first[r] = second[r] = _mm256_setzero_si256();
#pragma GCC unroll 4
  for (size_t s = 0; s < slices; ++s) {
    const __m256i u0 = _mm256_load_si256(reinterpret_cast<const __m256i*>(block + s * 64));
    const __m256i u1 = _mm256_load_si256(reinterpret_cast<const __m256i*>(block + s * 64 + 32));
    for (size_t r = 0; r < R; ++r) {
      const __m256i q = broadcast_slice(queries, r, dim_padded, s);
      first[r] = _mm256_add_epi32(first[r], _mm256_madd_epi16(_mm256_maddubs_epi16(u0, q), ones));
      second[r] = _mm256_add_epi32(second[r], _mm256_madd_epi16(_mm256_maddubs_epi16(u1, q), ones));
    }
  }
  for (size_t r = 0; r < R; ++r) {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + r * kTile), first[r]);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + r * kTile + kGroup), second[r]);
  }
}

// R queries against a packed tile, one contiguous part (a full group of 8 vectors or a narrow
// block of 16) after the other.
template <size_t R, bool kNarrow>
FASTRET_AVX2 void dots_rows(const uint8_t* packed, size_t dim_padded, const int8_t* queries,
                            int32_t* out) {
  const size_t slices = dim_padded / 4;
  constexpr size_t kWidth = kNarrow ? kBlock : kGroup;
  for (size_t p = 0; p < kTile / kWidth; ++p) {
    const uint8_t* part = packed + p * slices * 64;
    if (kNarrow)
      narrow_dots_block<R>(part, slices, dim_padded, queries, out + p * kWidth);
    else
      dots_group<R>(part, slices, dim_padded, queries, out + p * kWidth);
  }
}

static_assert(kRows == 4 && kNarrowRows == 4, "dots_tile's switch covers 1 to 4 queries");

template <bool kNarrow>
void dots_tile(const uint8_t* packed, size_t dim_padded, const int8_t* queries, size_t n_rows,
               int32_t* out) {
  switch (n_rows) {
    case 1: return dots_rows<1, kNarrow>(packed, dim_padded, queries, out);
    case 2: return dots_rows<2, kNarrow>(packed, dim_padded, queries, out);
    case 3: return dots_rows<3, kNarrow>(packed, dim_padded, queries, out);
    default: return dots_rows<4, kNarrow>(packed, dim_padded, queries, out);
  }
}

// The int32 sums of 8 accumulators, one per lane: lane i = sum of a[i]'s 8 lanes.
FASTRET_AVX2 __m256i sum_lanes8(const __m256i a[8]) {
  const __m256i h01 = _mm256_hadd_epi32(a[0], a[1]), h23 = _mm256_hadd_epi32(a[2], a[3]);
  const __m256i h45 = _mm256_hadd_epi32(a[4], a[5]), h67 = _mm256_hadd_epi32(a[6], a[7]);
  const __m256i h0123 = _mm256_hadd_epi32(h01, h23), h4567 = _mm256_hadd_epi32(h45, h67);
  // h0123: [a0..a3 over lanes 0-3 | a0..a3 over lanes 4-7]; likewise h4567 for a4..a7.
  return _mm256_add_epi32(_mm256_permute2x128_si256(h0123, h4567, 0x20),
                          _mm256_permute2x128_si256(h0123, h4567, 0x31));
}

FASTRET_AVX2 int32_t sum_lanes(__m256i a) {
  const __m128i x = _mm_add_epi32(_mm256_castsi256_si128(a), _mm256_extracti128_si256(a, 1));
  const __m128i y = _mm_add_epi32(x, _mm_shuffle_epi32(x, 0x4E));
  return _mm_cvtsi128_si32(_mm_add_epi32(y, _mm_shuffle_epi32(y, 0xB1)));
}

// q * d for 32 byte pairs, as 8 int32 partial sums.
FASTRET_AVX2 inline __m256i dot32(__m256i q, __m256i d, __m256i ones) {
  return _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_abs_epi8(d), _mm256_sign_epi8(q, d)), ones);
}

// 128 * sum(q) over dim bytes: the bias the batched dots carry, which direct dots carry too so
// that the caller treats both alike.
FASTRET_AVX2 int32_t query_bias(const int8_t* query, size_t dim) {
  const __m256i ones8 = _mm256_set1_epi8(1), ones = _mm256_set1_epi16(1);
  __m256i acc = _mm256_setzero_si256();
  for (size_t c = 0; c * 32 < dim; ++c)
    acc = _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(ones8, load_row_chunk(query, dim, c * 32)), ones));
  return 128 * sum_lanes(acc);
}

// The row's last partial chunk (dim % 32 != 0): read on into the following rows where they exist,
// harmless against the zero query bytes past dim; copied otherwise.
FASTRET_AVX2 __m256i tail_chunk(const int8_t* row, size_t dim, const int8_t* end) {
  const size_t begin = dim / 32 * 32;
  return row + begin + 32 <= end ? _mm256_loadu_si256(reinterpret_cast<const __m256i*>(row + begin))
                                 : load_row_chunk(row, dim, begin);
}

// <query, row> over the 32 bytes of chunk c, as 8 int32 partial sums.
FASTRET_AVX2 inline __m256i chunk_dot(const int8_t* row, const int8_t* query, size_t c, __m256i ones) {
  return dot32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(query + c * 32)),
               _mm256_loadu_si256(reinterpret_cast<const __m256i*>(row + c * 32)), ones);
}

// <query, row> as 8 int32 partial sums, the row read front to back (one sequential stream) in two
// accumulator chains for the adds' latency; the last partial chunk as tail_chunk reads it.
FASTRET_AVX2 inline __m256i row_dots(const int8_t* row, const int8_t* query, size_t dim, __m256i q_tail,
                                     const int8_t* end, __m256i ones) {
  const size_t full = dim / 32;
  __m256i even = _mm256_setzero_si256(), odd = even;
  size_t c = 0;
  for (; c + 2 <= full; c += 2) {
    even = _mm256_add_epi32(even, chunk_dot(row, query, c, ones));
    odd = _mm256_add_epi32(odd, chunk_dot(row, query, c + 1, ones));
  }
  if (c < full) even = _mm256_add_epi32(even, chunk_dot(row, query, c, ones));
  if (dim % 32 != 0) odd = _mm256_add_epi32(odd, dot32(q_tail, tail_chunk(row, dim, end), ones));
  return _mm256_add_epi32(even, odd);
}

// One query against rows read where they are, kDirectRows rows at a time (one horizontal
// reduction per 8 rows), prefetching kPrefetchBlocks blocks ahead: a block is only
// kDirectRows * dim bytes, too short a stream for the hardware prefetchers to ramp up on.
FASTRET_AVX2 void dots_direct(const int8_t* rows, size_t n_rows, size_t dim, const int8_t* query,
                              int32_t* out) {
  const __m256i ones = _mm256_set1_epi16(1);
  const __m256i q_tail = load_row_chunk(query, dim, dim / 32 * 32);
  const int8_t* const end = rows + n_rows * dim;
  const __m256i bias = _mm256_set1_epi32(query_bias(query, dim));
  size_t v = 0;
  for (; v + kDirectRows <= n_rows; v += kDirectRows) {
    const int8_t* r = rows + v * dim;
    const int8_t* ahead = r + kPrefetchBlocks * kDirectRows * dim;
    const int8_t* ahead_end = std::min(ahead + kDirectRows * dim, end);
    for (; ahead < ahead_end; ahead += 64) _mm_prefetch(reinterpret_cast<const char*>(ahead), _MM_HINT_T0);
    __m256i acc[kDirectRows];
    for (size_t i = 0; i < kDirectRows; ++i) acc[i] = row_dots(r + i * dim, query, dim, q_tail, end, ones);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + v), _mm256_add_epi32(sum_lanes8(acc), bias));
  }
  for (; v < n_rows; ++v)
    out[v] = sum_lanes(row_dots(rows + v * dim, query, dim, q_tail, end, ones)) + _mm256_cvtsi256_si32(bias);
}

}  // namespace

const SimdPath kAvx2Path = {"avx2", true, supported,
                            {kRows, packed_bytes, pack, dots_tile<false>, true},
                            {kNarrowRows, narrow_packed_bytes, narrow_pack, dots_tile<true>, true},
                            dots_direct, binary_distances_avx2};

}  // namespace fastret

#endif
