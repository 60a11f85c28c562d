// AMX detection: CPUID says the CPU has the tiles and their int8 products, XCR0 says the OS saves
// tile state, and Linux (5.16+) lets a process use them only after it asks (arch_prctl
// ARCH_REQ_XCOMP_PERM for XFEATURE_XTILEDATA), once.
#include "amx_tiles.h"

#if defined(__x86_64__) && defined(__linux__)
#include <cpuid.h>
#include <sys/syscall.h>
#include <unistd.h>
#endif

namespace fastret {
namespace {

#if defined(__x86_64__) && defined(__linux__)
constexpr unsigned kAmxTile = 1u << 24, kAmxInt8 = 1u << 25;  // CPUID.(7,0):EDX
constexpr unsigned long long kXtileState = (1ull << 17) | (1ull << 18);  // XCR0: XTILECFG, XTILEDATA
constexpr long kArchReqXcompPerm = 0x1023;
constexpr long kXfeatureXtiledata = 18;

bool detect() {
  unsigned a, b, c, d;
  if (!__get_cpuid_count(7, 0, &a, &b, &c, &d) || (d & (kAmxTile | kAmxInt8)) != (kAmxTile | kAmxInt8)) return false;
  if (!__get_cpuid(1, &a, &b, &c, &d) || !(c & bit_OSXSAVE)) return false;
  unsigned lo, hi;
  __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
  if (((static_cast<unsigned long long>(hi) << 32 | lo) & kXtileState) != kXtileState) return false;
  return syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) == 0;
}
#else
bool detect() { return false; }
#endif

}  // namespace

bool amx_usable() {
  static const bool usable = detect();
  return usable;
}

}  // namespace fastret
