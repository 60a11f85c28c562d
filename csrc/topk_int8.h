// Exact top-k inner-product search over int8 vectors with per-vector float scales.
//
//   score(q, d) = (float(<q8, d8>) * s_q) * s_d        (float32, evaluated in this order)
//
// Results are ordered by score, higher first; equal scores are ordered by id, lower first.
// Query codes must lie in [-127, 127] (symmetric quantization; the caller validates that);
// corpus codes may be any int8.
//
// Plain C++17: pointers and sizes in, outputs last. No Python here (see bindings.cpp).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace fastret {

// Top-k for every query.
//   queries      int8  [n_queries, dim]   row-major
//   query_scales float [n_queries]
//   corpus       int8  [n_corpus, dim]    row-major
//   corpus_scales float [n_corpus]
//   ids          int64 [n_corpus] or nullptr (then the id of row i is i); used to break ties
//   out_scores   float [n_queries, k]
//   out_rows     int64 [n_queries, k]   corpus row numbers (map them to ids with ids[row])
// Throws std::invalid_argument for empty inputs, dim == 0, k == 0 or k > n_corpus.
void topk_int8(const int8_t* queries, const float* query_scales, size_t n_queries,
               const int8_t* corpus, const float* corpus_scales, const int64_t* ids,
               size_t n_corpus, size_t dim, size_t k,
               float* out_scores, int64_t* out_rows);

// The SIMD paths this build knows, best first, and which of them this CPU can run.
std::vector<std::string> simd_paths_compiled();
std::vector<std::string> simd_paths_supported();

// The path used by topk_int8 ("avx512vnni", "avx2", "neon" or "scalar"). The best supported path is
// chosen on first use; set_simd_path forces one (std::invalid_argument if unknown or unsupported).
std::string simd_path();
void set_simd_path(const std::string& name);

// Worker threads for one call; 0 means OpenMP's default (OMP_NUM_THREADS or all cores).
void set_num_threads(int n);
int num_threads();

}  // namespace fastret
