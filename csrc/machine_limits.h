// Limits of the machine that bound exact search, measured on the machine itself:
//   one query over n vectors of dim bytes must read n * dim bytes, so it cannot beat
//   n * dim / read_bandwidth(); a large batch is bound by the kernel's multiply-add rate, whose
//   ceiling is int8_peak().
//
// Plain C++17, no Python (see bindings.cpp).
#pragma once

#include <cstddef>

namespace fastret {

// Bytes per second that `threads` threads (>= 1) read from a
// buffer of `bytes` bytes (choose it much larger than the last-level cache), each thread streaming
// its own contiguous part. Best of `repeats` passes, after one pass that maps the pages.
// Throws std::invalid_argument for bytes < 1 MiB, threads < 1 or repeats < 1.
double read_bandwidth(size_t bytes, int threads, int repeats);

struct SimdPath;

// Multiply-adds per second of a batch kernel of `path` (one the CPU supports), run by `threads`
// (>= 1) threads at once on a packed tile and queries small enough to stay in L1: the
// kernel's own instruction sequence with no memory stalls, the ceiling of batched search. With
// `narrow`, the kernel for query codes in [-kNarrowQueryCode, kNarrowQueryCode] (what fastret's
// query quantization produces) where the path has one; else the kernel for any query codes.
// Each thread keeps its best of `repeats` timed runs of about `seconds` / `repeats` each.
// Throws std::invalid_argument for threads < 1, repeats < 1 or seconds not in (0, 60].
double int8_peak(const SimdPath& path, int threads, double seconds, int repeats, bool narrow);

}  // namespace fastret
