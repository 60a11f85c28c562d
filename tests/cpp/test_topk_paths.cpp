// Exactness of every SIMD path of topk_int8, without Python: each path this CPU supports must
// return the same scores (bit for bit) and rows as a brute-force reference on random inputs,
// dims 1..1024 (odd ones and every remainder of the kernels' widths), ties, extreme codes,
// k = 1 / 10 / n, one query (the direct kernels) and batches (the packed kernels), with query codes
// over all of [-127, 127] (the full batch kernels) and within [-63, 63] (the narrow ones); and a
// segment read only at picked rows, against the reference over just the rows searched. Also each
// path's binary first-stage kernel against a bit-by-bit count, for 1..13 words and 1..8 query bits.
//
// Built and run by tests/test_simd_cross.py, natively and, for the NEON path, cross-compiled for
// aarch64 and run under qemu-user. Prints the paths it ran; exits 1 on the first difference.
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "simd_paths.h"
#include "topk_int8.h"

namespace {

struct Case {
  size_t n_queries, n_corpus, dim, k;
  std::vector<int8_t> queries, corpus;
  std::vector<float> query_scales, corpus_scales;
  std::vector<int64_t> ids;  // empty: the id of row i is i
};

struct Result {
  std::vector<float> scores;
  std::vector<int64_t> rows;
};

// The documented semantics, computed the slow way: score = (float(<q, d>) * s_q) * s_d, higher
// first, ties to the lower id.
Result reference(const Case& c) {
  Result out{std::vector<float>(c.n_queries * c.k), std::vector<int64_t>(c.n_queries * c.k)};
  std::vector<float> scores(c.n_corpus);
  std::vector<int64_t> order(c.n_corpus);
  for (size_t q = 0; q < c.n_queries; ++q) {
    for (size_t v = 0; v < c.n_corpus; ++v) {
      int64_t dot = 0;
      for (size_t i = 0; i < c.dim; ++i)
        dot += int64_t(c.queries[q * c.dim + i]) * int64_t(c.corpus[v * c.dim + i]);
      scores[v] = (static_cast<float>(dot) * c.query_scales[q]) * c.corpus_scales[v];
    }
    std::iota(order.begin(), order.end(), 0);
    const auto id = [&](int64_t row) { return c.ids.empty() ? row : c.ids[row]; };
    std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) {
      return scores[a] > scores[b] || (scores[a] == scores[b] && id(a) < id(b));
    });
    for (size_t i = 0; i < c.k; ++i) {
      out.scores[q * c.k + i] = scores[order[i]];
      out.rows[q * c.k + i] = order[i];
    }
  }
  return out;
}

// The corpus as two segments (cut at a third, so tiles of both end short), searched in one call:
// the result must be the concatenated corpus's.
Result search(const Case& c) {
  Result out{std::vector<float>(c.n_queries * c.k), std::vector<int64_t>(c.n_queries * c.k)};
  const size_t cut = c.n_corpus / 3;
  const int64_t* ids = c.ids.empty() ? nullptr : c.ids.data();
  const fastret::Segment segments[2] = {
      {c.corpus.data(), c.corpus_scales.data(), ids, nullptr, cut},
      {c.corpus.data() + cut * c.dim, c.corpus_scales.data() + cut, ids ? ids + cut : nullptr, nullptr,
       c.n_corpus - cut}};
  fastret::topk_int8(c.queries.data(), c.query_scales.data(), c.n_queries, segments, 2, c.dim, c.k,
                     out.scores.data(), out.rows.data());
  return out;
}

// Segment 0 whole and segment 1 read only at its rows r with r % 3 != 1 (picked rows), with
// k = min(k, rows searched). `searched` receives the global rows searched, ascending.
Result search_picked(const Case& c, std::vector<int64_t>& searched) {
  const size_t cut = c.n_corpus / 3;
  std::vector<int64_t> picked;
  for (size_t r = 0; r < c.n_corpus - cut; ++r)
    if (r % 3 != 1) picked.push_back(static_cast<int64_t>(r));
  searched.resize(cut);
  std::iota(searched.begin(), searched.end(), 0);
  for (int64_t r : picked) searched.push_back(static_cast<int64_t>(cut) + r);
  const size_t k = std::min(c.k, searched.size());
  Result out{std::vector<float>(c.n_queries * k), std::vector<int64_t>(c.n_queries * k)};
  const int64_t* ids = c.ids.empty() ? nullptr : c.ids.data();
  fastret::Segment segments[2] = {
      {c.corpus.data(), c.corpus_scales.data(), ids, nullptr, cut},
      {c.corpus.data() + cut * c.dim, c.corpus_scales.data() + cut, ids ? ids + cut : nullptr, nullptr,
       c.n_corpus - cut}};
  segments[1].picked = picked.data();
  segments[1].n_picked = picked.size();
  fastret::topk_int8(c.queries.data(), c.query_scales.data(), c.n_queries, segments, 2, c.dim, k,
                     out.scores.data(), out.rows.data());
  return out;
}

// The reference over only the `searched` rows of c (each keeping its id), as rows of c.
Result reference_of_rows(const Case& c, const std::vector<int64_t>& searched) {
  Case sub{c.n_queries, searched.size(), c.dim, std::min(c.k, searched.size()), c.queries, {}, c.query_scales, {}, {}};
  for (int64_t row : searched) {
    sub.corpus.insert(sub.corpus.end(), c.corpus.begin() + row * c.dim, c.corpus.begin() + (row + 1) * c.dim);
    sub.corpus_scales.push_back(c.corpus_scales[row]);
    sub.ids.push_back(c.ids.empty() ? row : c.ids[row]);
  }
  Result out = reference(sub);
  for (int64_t& row : out.rows) row = searched[row];
  return out;
}

// Random codes (queries in [-max_query_code, max_query_code], corpus in [-128, 127]); with `ties`,
// the corpus repeats a few distinct rows and scales, and ids are a shuffled range, so ties must go
// to the lower id; `extreme` codes sit at the bounds.
Case make_case(std::mt19937& rng, size_t n_queries, size_t n_corpus, size_t dim, size_t k,
               bool ties, bool extreme, int max_query_code) {
  Case c{n_queries, n_corpus, dim, k, {}, {}, {}, {}, {}};
  std::uniform_int_distribution<int> query_code(-max_query_code, max_query_code), corpus_code(-128, 127);
  std::uniform_real_distribution<float> scale(0.001f, 0.02f);
  c.queries.resize(n_queries * dim);
  for (int8_t& x : c.queries)
    x = static_cast<int8_t>(extreme ? (rng() % 2 ? max_query_code : -max_query_code) : query_code(rng));
  c.query_scales.resize(n_queries);
  for (float& s : c.query_scales) s = scale(rng);
  const size_t distinct = ties ? std::min<size_t>(n_corpus, 3) : n_corpus;
  std::vector<int8_t> rows(distinct * dim);
  for (int8_t& x : rows) x = static_cast<int8_t>(extreme ? (rng() % 2 ? 127 : -128) : corpus_code(rng));
  std::vector<float> row_scales(distinct);
  for (float& s : row_scales) s = scale(rng);
  c.corpus.resize(n_corpus * dim);
  c.corpus_scales.resize(n_corpus);
  for (size_t v = 0; v < n_corpus; ++v) {
    std::memcpy(&c.corpus[v * dim], &rows[(v % distinct) * dim], dim);
    c.corpus_scales[v] = row_scales[v % distinct];
  }
  if (ties) {
    c.ids.resize(n_corpus);
    std::iota(c.ids.begin(), c.ids.end(), 1000);
    std::shuffle(c.ids.begin(), c.ids.end(), rng);
  }
  return c;
}

bool same(const Result& a, const Result& b) {
  return a.rows == b.rows &&
         std::memcmp(a.scores.data(), b.scores.data(), a.scores.size() * sizeof(float)) == 0;
}

// sum_p 2^p * popcount(planes[p] xor row), one bit at a time.
uint32_t binary_distance_reference(const uint64_t* row, const uint64_t* planes, size_t words, size_t query_bits) {
  uint32_t total = 0;
  for (size_t p = 0; p < query_bits; ++p)
    for (size_t w = 0; w < words; ++w)
      for (size_t b = 0; b < 64; ++b) total += static_cast<uint32_t>(((planes[p * words + w] ^ row[w]) >> b) & 1) << p;
  return total;
}

// Row-major sign bits [n_rows, words] in the kernels' blocked layout (simd_paths.h), padding zero.
std::vector<uint64_t> blocked(const std::vector<uint64_t>& rows, size_t n_rows, size_t words) {
  const size_t block = fastret::kBitBlock;
  std::vector<uint64_t> out((n_rows + block - 1) / block * words * block, 0);
  for (size_t j = 0; j < n_rows; ++j)
    for (size_t w = 0; w < words; ++w) out[((j / block) * words + w) * block + j % block] = rows[j * words + w];
  return out;
}

// Every path's binary_distances against the reference; returns false (and says where) on a difference.
bool binary_kernels_agree(const std::vector<std::string>& paths, std::mt19937& rng) {
  std::uniform_int_distribution<uint64_t> word;
  for (size_t words = 1; words <= 13; ++words) {
    for (size_t query_bits = 1; query_bits <= fastret::kMaxQueryBits; ++query_bits) {
      for (bool nearest_last : {false, true}) {
        const size_t n_rows = 1 + (words * 7 + query_bits) % 70;
        std::vector<uint64_t> rows(n_rows * words), planes(query_bits * words);
        for (uint64_t& x : rows) x = word(rng);
        for (uint64_t& x : planes) x = word(rng);
        rows[0] = 0;  // extremes: nothing and everything differs
        for (size_t w = 0; w < words; ++w) rows[(n_rows - 1) * words + w] = ~planes[w];
        if (nearest_last)  // the last row (often beside padding rows) the nearest: the query's signs
          for (size_t w = 0; w < words; ++w) rows[(n_rows - 1) * words + w] = planes[(query_bits - 1) * words + w];
        const std::vector<uint64_t> blocks = blocked(rows, n_rows, words);
        std::vector<uint32_t> got(blocks.size() / words);  // whole blocks: kernels may fill the padding
        for (const std::string& path : paths) {
          fastret::set_simd_path(path);
          const uint32_t nearest = fastret::active_simd_path().binary_distances(blocks.data(), n_rows, words,
                                                                                planes.data(), query_bits, got.data());
          uint32_t expected_nearest = UINT32_MAX;
          for (size_t j = 0; j < n_rows; ++j) {
            const uint32_t expected = binary_distance_reference(&rows[j * words], planes.data(), words, query_bits);
            expected_nearest = std::min(expected_nearest, expected);
            if (got[j] != expected) {
              std::printf("FAIL: path %s binary_distances, words %zu, query_bits %zu, row %zu\n", path.c_str(), words,
                          query_bits, j);
              return false;
            }
          }
          if (nearest != expected_nearest) {  // the padding rows (zero bits: often the nearest) must not count
            std::printf("FAIL: path %s binary_distances returned %u, the nearest row is at %u (words %zu, bits %zu)\n",
                        path.c_str(), nearest, expected_nearest, words, query_bits);
            return false;
          }
        }
      }
    }
  }
  return true;
}

}  // namespace

int main() {
  const std::vector<std::string> paths = fastret::simd_paths_supported();
  std::printf("paths compiled:");
  for (const std::string& p : fastret::simd_paths_compiled()) std::printf(" %s", p.c_str());
  std::printf("\npaths tested:");
  for (const std::string& p : paths) std::printf(" %s", p.c_str());
  std::printf("\n");

  // Every remainder of the kernels' widths (4-byte slices, 16/32/64-byte chunks), odd dims, and
  // the sizes of real models, up to 1024.
  std::vector<size_t> dims;
  for (size_t d = 1; d <= 70; ++d) dims.push_back(d);
  for (size_t d : {95, 96, 97, 127, 128, 129, 255, 256, 257, 383, 384, 385, 511, 512, 513, 767,
                   768, 769, 1000, 1023, 1024})
    dims.push_back(d);
  std::mt19937 rng(20261130);
  size_t cases = 0;
  for (size_t dim : dims) {
    // Corpus sizes around the 64-vector tile and the 8-row direct blocks; 1, 2 (direct kernels)
    // and larger batches (packed kernels, with partial query groups).
    for (size_t n_corpus : {size_t(1), size_t(9), size_t(64), size_t(133)}) {
      for (size_t n_queries : {size_t(1), size_t(2), size_t(7)}) {
        for (int variant = 0; variant < 4; ++variant) {
          const bool ties = variant == 1, extreme = variant >= 2;
          // Narrow query codes (the batch kernels' fast form) in every other case, and at their
          // bounds in variant 3.
          const int max_query_code = variant == 3 || (dim + n_corpus) % 2 == 0 ? 63 : 127;
          const size_t ks[] = {1, std::min<size_t>(10, n_corpus), n_corpus};
          const size_t k = ks[(dim + n_corpus + n_queries + variant) % 3];
          const Case c = make_case(rng, n_queries, n_corpus, dim, k, ties, extreme, max_query_code);
          const Result expected = reference(c);
          std::vector<int64_t> searched;
          for (const std::string& path : paths) {
            fastret::set_simd_path(path);
            const bool whole_ok = same(search(c), expected);
            const Result picked = search_picked(c, searched);
            if (!whole_ok || !same(picked, reference_of_rows(c, searched))) {
              std::printf("FAIL: path %s, dim %zu, n_corpus %zu, n_queries %zu, k %zu, %s, query codes "
                          "within +-%d%s\n",
                          path.c_str(), dim, n_corpus, n_queries, k,
                          ties ? "ties" : extreme ? "extreme codes" : "random codes", max_query_code,
                          whole_ok ? ", picked rows" : "");
              return 1;
            }
          }
          ++cases;
        }
      }
    }
  }
  if (!binary_kernels_agree(paths, rng)) return 1;
  std::printf("OK: %zu cases, each path equal to the reference; binary kernels too\n", cases);
  return 0;
}
