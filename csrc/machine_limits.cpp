// Read bandwidth and int8 multiply-add peak, measured (see machine_limits.h).
#include "machine_limits.h"

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <new>
#include <stdexcept>
#include <string>
#include <vector>

#include "simd_paths.h"

#ifdef _OPENMP
#include <omp.h>
#endif

namespace fastret {
namespace {

using Clock = std::chrono::steady_clock;

// L1 budget for the peak's working set (packed tile + queries + output): under the 32 KiB of
// current x86 and ARM cores, leaving room for the stack.
constexpr size_t kL1Budget = 24 * 1024;

struct FreeDeleter {
  void operator()(void* p) const { std::free(p); }
};

template <typename T>
std::unique_ptr<T[], FreeDeleter> aligned_array(size_t count) {
  const size_t bytes = (count * sizeof(T) + 63) / 64 * 64;
  void* p = std::aligned_alloc(64, bytes);
  if (p == nullptr) throw std::bad_alloc();
  return std::unique_ptr<T[], FreeDeleter>(static_cast<T*>(p));
}

// Where each read pass leaves its folded words, so that the compiler keeps the reads.
volatile uint64_t g_read_sink = 0;

double seconds_since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

// The words of one thread's contiguous part, xor-folded so that the reads cannot be dropped.
// Four independent chains keep the loads in flight; the compiler vectorizes them.
uint64_t fold(const uint64_t* words, size_t count) {
  uint64_t a = 0, b = 0, c = 0, d = 0;
  size_t i = 0;
  for (; i + 4 <= count; i += 4) {
    a ^= words[i];
    b ^= words[i + 1];
    c ^= words[i + 2];
    d ^= words[i + 3];
  }
  for (; i < count; ++i) a ^= words[i];
  return a ^ b ^ c ^ d;
}

// The largest dim_padded (a multiple of 32) whose packed tile, queries and output fit kL1Budget.
size_t l1_dim(const BatchKernel& kernel) {
  size_t dim = 32;
  while (kernel.packed_bytes(dim + 32) + kernel.group_bytes(dim + 32) +
             kMaxQueryRows * kTile * sizeof(int32_t) <=
         kL1Budget)
    dim += 32;
  return dim;
}

}  // namespace

double read_bandwidth(size_t bytes, int threads, int repeats) {
  if (bytes < (size_t(1) << 20))
    throw std::invalid_argument("read_bandwidth: bytes must be at least 1 MiB (and much larger "
                                "than the last-level cache), got " + std::to_string(bytes));
  if (threads < 1) throw std::invalid_argument("read_bandwidth: threads must be >= 1");
  if (repeats < 1) throw std::invalid_argument("read_bandwidth: repeats must be >= 1");
  const size_t words = bytes / sizeof(uint64_t);
  auto buffer = aligned_array<uint64_t>(words);
  uint64_t* data = buffer.get();

  // Each thread touches (and so maps, on its own NUMA node) the part it will read.
#pragma omp parallel for num_threads(threads) schedule(static)
  for (size_t i = 0; i < words; ++i) data[i] = i * 0x9E3779B97F4A7C15ull;

  double best = 0;
  uint64_t sink = 0;
  for (int pass = 0; pass < repeats; ++pass) {
    const Clock::time_point start = Clock::now();
#pragma omp parallel num_threads(threads) reduction(^ : sink)
    {
#ifdef _OPENMP
      const size_t t = static_cast<size_t>(omp_get_thread_num());
      const size_t n = static_cast<size_t>(omp_get_num_threads());
#else
      const size_t t = 0, n = 1;
#endif
      const size_t begin = t * words / n, end = (t + 1) * words / n;
      sink ^= fold(data + begin, end - begin);
    }
    best = std::max(best, static_cast<double>(words * sizeof(uint64_t)) / seconds_since(start));
    g_read_sink = sink;
  }
  return best;
}

double int8_peak(const SimdPath& path, int threads, double seconds, int repeats, bool narrow) {
  if (threads < 1) throw std::invalid_argument("int8_peak: threads must be >= 1");
  if (repeats < 1) throw std::invalid_argument("int8_peak: repeats must be >= 1");
  if (!(seconds > 0 && seconds <= 60))
    throw std::invalid_argument("int8_peak: seconds must be in (0, 60]");
  const bool use_narrow = narrow && path.narrow_batch.dots != nullptr;
  const BatchKernel& kernel = use_narrow ? path.narrow_batch : path.batch;
  const int max_code = use_narrow ? kNarrowQueryCode : 127;
  const size_t dim = l1_dim(kernel);
  const size_t rows = kernel.query_rows;
  const double window = seconds / repeats;

  // Per-thread buffers, allocated before the parallel region (no exceptions inside it).
  struct Work {
    std::vector<int8_t> corpus, queries;
    std::unique_ptr<uint8_t[], FreeDeleter> packed;
    std::unique_ptr<int32_t[], FreeDeleter> out;
    double rate = 0;
  };
  std::vector<Work> work(static_cast<size_t>(threads));
  for (size_t t = 0; t < work.size(); ++t) {
    Work& w = work[t];
    w.corpus.resize(kTile * dim);
    uint32_t x = 12345u + static_cast<uint32_t>(t);  // any codes: the timing does not depend on them
    for (int8_t& c : w.corpus) c = static_cast<int8_t>((x = x * 1664525u + 1013904223u) >> 24);
    std::vector<int8_t> plain(rows * dim);
    for (int8_t& c : plain)
      c = static_cast<int8_t>(int(((x = x * 1664525u + 1013904223u) >> 24) % (2 * max_code + 1)) - max_code);
    w.queries.resize(kernel.group_bytes(dim));
    if (kernel.pack_queries != nullptr)
      kernel.pack_queries(plain.data(), dim, w.queries.data());
    else
      w.queries = plain;
    w.packed = aligned_array<uint8_t>(kernel.packed_bytes(dim));
    w.out = aligned_array<int32_t>(kMaxQueryRows * kTile);
    kernel.pack(w.corpus.data(), kTile, dim, dim, w.packed.get());
  }
  const double macs_per_call = static_cast<double>(rows * kTile * dim);

#pragma omp parallel num_threads(threads)
  {
#ifdef _OPENMP
    Work& w = work[static_cast<size_t>(omp_get_thread_num())];
#else
    Work& w = work[0];
#endif
    for (int r = 0; r < 100; ++r)  // warm-up: caches, clocks
      kernel.dots(w.packed.get(), dim, w.queries.data(), rows, w.out.get());
    for (int pass = 0; pass < repeats; ++pass) {
      const Clock::time_point start = Clock::now();
      size_t calls = 0;
      double elapsed = 0;
      do {
        for (int r = 0; r < 64; ++r)
          kernel.dots(w.packed.get(), dim, w.queries.data(), rows, w.out.get());
        calls += 64;
        elapsed = seconds_since(start);
      } while (elapsed < window);
      w.rate = std::max(w.rate, calls * macs_per_call / elapsed);
    }
    if (kernel.finish != nullptr) kernel.finish();
  }
  double total = 0;
  for (const Work& w : work) total += w.rate;
  return total;
}

}  // namespace fastret
