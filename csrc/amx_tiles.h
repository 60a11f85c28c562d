// The few AMX tile operations fastret's tile kernels are written against, in two implementations
// with one interface, so that a kernel's layout and blocking are tested on every CPU (the
// emulation) and run on the matrix units where the CPU has them (the intrinsics):
//
//   configure()                    every tile 16 rows x 64 bytes (palette 1); tiles undefined until
//                                  zeroed or loaded (the instructions: once per thread, until release)
//   zero<T>()                      tile T = 0
//   load<T>(ptr, stride)           tile T row r = the 64 bytes at ptr + r * stride   (TILELOADD)
//   store<T>(ptr, stride)          the 16 int32 of tile T's row r to ptr + r * stride (TILESTORED)
//   dot_int8<C, A, B>()            TDPBSSD: C[m][n] += sum_{k < 16} sum_{j < 4} A[m][4k + j] * B[k][4n + j]
//                                  (A and B signed bytes, C int32: B in the VNNI layout, 4 consecutive
//                                  k of a column side by side)
//   release()                      TILERELEASE: back to the init state (no tile state to save)
//   release_thread()               (static) release, if this thread configured the tiles: for a
//                                  kernel that configures per call and releases once per thread
//
// Tiles 0-7; T, C, A, B are template arguments because the instructions encode the tile numbers.
// Every tile keeps the full shape: a kernel pads short row blocks and a short last K step with
// zeros in a scratch buffer (a zero byte adds nothing), so one configuration serves a whole call
// (LDTILECFG zeroes the tiles, so it cannot change shape mid-accumulation).
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#endif

namespace fastret {

constexpr size_t kTileRows = 16;
constexpr size_t kTileBytes = 64;  // bytes per tile row: 64 int8, or 16 int32

// True when this CPU has AMX-TILE and AMX-INT8, the OS saves tile state, and Linux granted this
// process the permission to use it (arch_prctl ARCH_REQ_XCOMP_PERM, asked once).
bool amx_usable();

// The scalar emulation: the same results, bit for bit, on any CPU (tests, and the layout's reference).
class EmulatedTiles {
 public:
  void configure() { std::memset(tiles_, 0, sizeof(tiles_)); }
  template <int T>
  void zero() {
    std::memset(tiles_[T], 0, sizeof(tiles_[T]));
  }
  template <int T>
  void load(const void* ptr, size_t stride) {
    for (size_t r = 0; r < kTileRows; ++r)
      std::memcpy(tiles_[T][r], static_cast<const uint8_t*>(ptr) + r * stride, kTileBytes);
  }
  template <int T>
  void store(void* ptr, size_t stride) const {
    for (size_t r = 0; r < kTileRows; ++r)
      std::memcpy(static_cast<uint8_t*>(ptr) + r * stride, tiles_[T][r], kTileBytes);
  }
  template <int C, int A, int B>
  void dot_int8() {
    for (size_t m = 0; m < kTileRows; ++m)
      for (size_t n = 0; n < kTileBytes / 4; ++n) {
        int32_t sum;
        std::memcpy(&sum, tiles_[C][m] + 4 * n, 4);
        for (size_t k = 0; k < kTileRows; ++k)
          for (size_t j = 0; j < 4; ++j)
            sum += int32_t(static_cast<int8_t>(tiles_[A][m][4 * k + j])) *
                   int32_t(static_cast<int8_t>(tiles_[B][k][4 * n + j]));
        std::memcpy(tiles_[C][m] + 4 * n, &sum, 4);
      }
  }
  void release() {}
  static void release_thread() {}

 private:
  uint8_t tiles_[8][kTileRows][kTileBytes];
};

#if defined(__x86_64__) || defined(_M_X64)
#define FASTRET_AMX __attribute__((target("amx-tile,amx-int8")))

// The instructions themselves (only where amx_usable()). The compiler's tile intrinsics take the
// tile number as a literal (it is pasted into the register name), so each tile operation a kernel
// uses is defined for its tiles below.
class AmxTiles {
 public:
  FASTRET_AMX void configure() {
    if (configured_) return;  // LDTILECFG costs more than a short kernel call: once per thread
    alignas(64) uint8_t config[64] = {};
    config[0] = 1;  // palette 1
    for (int t = 0; t < 8; ++t) {
      const uint16_t colsb = kTileBytes;
      std::memcpy(config + 16 + 2 * t, &colsb, 2);
      config[48 + t] = kTileRows;
    }
    _tile_loadconfig(config);
    configured_ = true;
  }
  template <int T>
  void zero();
  template <int T>
  void load(const void* ptr, size_t stride);
  template <int T>
  void store(void* ptr, size_t stride) const;
  template <int C, int A, int B>
  void dot_int8();
  FASTRET_AMX void release() {
    _tile_release();
    configured_ = false;
  }
  static void release_thread() {
    if (configured_) AmxTiles().release();
  }

 private:
  static inline thread_local bool configured_ = false;
};

#define FASTRET_AMX_TILE(T)                                                                                 \
  template <>                                                                                               \
  FASTRET_AMX inline void AmxTiles::zero<T>() {                                                             \
    _tile_zero(T);                                                                                          \
  }                                                                                                         \
  template <>                                                                                               \
  FASTRET_AMX inline void AmxTiles::load<T>(const void* ptr, size_t stride) {                               \
    _tile_loadd(T, ptr, stride);                                                                            \
  }                                                                                                         \
  template <>                                                                                               \
  FASTRET_AMX inline void AmxTiles::store<T>(void* ptr, size_t stride) const {                              \
    _tile_stored(T, ptr, stride);                                                                           \
  }
FASTRET_AMX_TILE(0)
FASTRET_AMX_TILE(1)
FASTRET_AMX_TILE(2)
FASTRET_AMX_TILE(3)
FASTRET_AMX_TILE(4)
FASTRET_AMX_TILE(5)
FASTRET_AMX_TILE(6)
#undef FASTRET_AMX_TILE

#define FASTRET_AMX_DOT(C, A, B)                                                                            \
  template <>                                                                                               \
  FASTRET_AMX inline void AmxTiles::dot_int8<C, A, B>() {                                                   \
    _tile_dpbssd(C, A, B);                                                                                  \
  }
FASTRET_AMX_DOT(0, 4, 5)
FASTRET_AMX_DOT(1, 4, 5)
FASTRET_AMX_DOT(2, 4, 5)
FASTRET_AMX_DOT(3, 4, 5)
FASTRET_AMX_DOT(0, 5, 4)
FASTRET_AMX_DOT(1, 6, 4)
FASTRET_AMX_DOT(2, 5, 4)
FASTRET_AMX_DOT(3, 6, 4)
#undef FASTRET_AMX_DOT
#endif

}  // namespace fastret
