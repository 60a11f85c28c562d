// pybind11 bindings for fastret._core. Arrays must arrive C-contiguous with the exact dtype
// (noconvert): the Python layer validates user input and gives the helpful messages; this layer
// refuses anything else rather than copying or casting silently.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <vector>
#include <stdexcept>
#include <string>
#include <utility>

#include "amx_tiles.h"
#include "gemm_int8.h"
#include "machine_limits.h"
#include "simd_paths.h"
#include "topk_binary.h"
#include "topk_int8.h"

namespace py = pybind11;

namespace {

// A measurement's thread count: `threads`, or the search's own for 0.
int search_threads(int threads, const char* what) {
  if (threads < 0) throw std::invalid_argument(std::string(what) + ": threads must be >= 0 (0 = default)");
  return threads > 0 ? threads : fastret::num_threads();
}

template <typename T>
using Array = py::array_t<T, py::array::c_style>;

void require(bool ok, const std::string& message) {
  if (!ok) throw std::invalid_argument(message);
}

// `object` as an array of exactly T (C-contiguous), without a copy; kept alive in `keep`.
template <typename T>
Array<T> exact_array(const py::handle& object, const std::string& what, std::vector<py::object>& keep) {
  if (!py::isinstance<Array<T>>(object))
    throw py::type_error(what + " must be a C-contiguous numpy array of " +
                         py::str(py::dtype::of<T>()).cast<std::string>());
  auto array = py::reinterpret_borrow<Array<T>>(object);
  keep.push_back(array);
  return array;
}

// One segment from Python: (codes int8 [n, dim], scales float32 [n], ids int64 [n],
// deleted uint64 [ceil(n / 64)] or None[, picked int64 [m] or None]). Its arrays are held in `keep`
// for the call.
fastret::Segment segment_from(const py::handle& item, size_t position, size_t dim,
                              std::vector<py::object>& keep) {
  const std::string where = "segment " + std::to_string(position);
  require(py::isinstance<py::tuple>(item), where + ": expected a tuple (codes, scales, ids, deleted or None)");
  const auto parts = py::reinterpret_borrow<py::tuple>(item);
  require(parts.size() == 4 || parts.size() == 5,
          where + ": expected (codes, scales, ids, deleted or None[, picked rows or None])");
  const auto codes = exact_array<int8_t>(parts[0], where + " codes", keep);
  const auto scales = exact_array<float>(parts[1], where + " scales", keep);
  const auto ids = exact_array<int64_t>(parts[2], where + " ids", keep);
  require(codes.ndim() == 2 && static_cast<size_t>(codes.shape(1)) == dim,
          where + ": codes must be 2-D [n, " + std::to_string(dim) + "]");
  const size_t n = codes.shape(0);
  require(scales.ndim() == 1 && static_cast<size_t>(scales.shape(0)) == n,
          where + ": scales must be 1-D with one scale per vector (" + std::to_string(n) + ")");
  require(ids.ndim() == 1 && static_cast<size_t>(ids.shape(0)) == n,
          where + ": ids must be 1-D with one id per vector (" + std::to_string(n) + ")");
  const uint64_t* deleted = nullptr;
  if (!parts[3].is_none()) {
    const auto bits = exact_array<uint64_t>(parts[3], where + " deleted bitmap", keep);
    require(bits.ndim() == 1 && static_cast<size_t>(bits.shape(0)) == (n + 63) / 64,
            where + ": the deleted bitmap must be uint64 [" + std::to_string((n + 63) / 64) + "]");
    deleted = bits.data();
  }
  fastret::Segment segment{codes.data(), scales.data(), ids.data(), deleted, n};
  if (parts.size() == 5 && !parts[4].is_none()) {
    const auto picked = exact_array<int64_t>(parts[4], where + " picked rows", keep);
    require(picked.ndim() == 1, where + ": picked rows must be 1-D int64");
    const int64_t* rows = picked.data();
    const size_t m = picked.shape(0);
    for (size_t i = 0; i < m; ++i)
      if (rows[i] < 0 || static_cast<size_t>(rows[i]) >= n || (i > 0 && rows[i] <= rows[i - 1]))
        throw std::invalid_argument(where + ": picked rows must be strictly ascending rows in [0, " +
                                    std::to_string(n) + "), got " + std::to_string(rows[i]) + " at position " +
                                    std::to_string(i));
    segment.picked = rows;
    segment.n_picked = m;
  }
  return segment;
}

// (n_queries, dim) of a search call's queries [n_queries, dim] and their scales [n_queries].
std::pair<size_t, size_t> query_shape(const Array<int8_t>& queries, const Array<float>& query_scales) {
  require(queries.ndim() == 2, "queries must be 2-D [n_queries, dim], got ndim=" +
                                   std::to_string(queries.ndim()));
  const size_t n_queries = queries.shape(0);
  require(query_scales.ndim() == 1 && static_cast<size_t>(query_scales.shape(0)) == n_queries,
          "query_scales must be 1-D with one scale per query (" + std::to_string(n_queries) + ")");
  return {n_queries, static_cast<size_t>(queries.shape(1))};
}

// The segments of a search call (segment_from each), with k checked against their rows before the
// outputs, whose size depends on k, are allocated.
std::vector<fastret::Segment> searched_segments(const py::sequence& segments, size_t dim, size_t k,
                                                size_t n_queries, std::vector<py::object>& keep) {
  std::vector<fastret::Segment> parts;
  size_t n_corpus = 0;
  for (size_t s = 0; s < segments.size(); ++s) {
    parts.push_back(segment_from(segments[s], s, dim, keep));
    n_corpus += parts.back().count;
  }
  require(k >= 1 && k <= n_corpus && n_queries > 0,
          "k must be in [1, " + std::to_string(n_corpus) + "] and the query batch non-empty, got k=" +
              std::to_string(k) + ", n_queries=" + std::to_string(n_queries));
  return parts;
}

py::tuple topk_int8(const Array<int8_t>& queries, const Array<float>& query_scales,
                    const py::sequence& segments, size_t k) {
  const auto [n_queries, dim] = query_shape(queries, query_scales);
  // Exact dtypes only (the strict casts below refuse float64 scales, say): the Python layer converts.
  std::vector<py::object> keep;
  const std::vector<fastret::Segment> parts = searched_segments(segments, dim, k, n_queries, keep);

  Array<float> scores({n_queries, k});
  Array<int64_t> rows({n_queries, k});
  float* scores_data = scores.mutable_data();
  int64_t* rows_data = rows.mutable_data();
  {
    py::gil_scoped_release release;
    fastret::topk_int8(queries.data(), query_scales.data(), n_queries, parts.data(), parts.size(),
                       dim, k, scores_data, rows_data);
  }
  return py::make_tuple(scores, rows);
}

// The set rows of each bool mask (fastret.search.narrowed); the masks are scanned on the search's
// threads.
py::list picked_rows(const py::sequence& masks) {
  std::vector<py::object> keep;
  std::vector<const uint8_t*> data;
  std::vector<size_t> sizes;
  std::vector<std::vector<int64_t>> rows(masks.size());
  for (size_t i = 0; i < masks.size(); ++i) {
    const auto mask = exact_array<bool>(masks[i], "mask " + std::to_string(i), keep);
    require(mask.ndim() == 1, "mask " + std::to_string(i) + " must be 1-D");
    data.push_back(reinterpret_cast<const uint8_t*>(mask.data()));
    sizes.push_back(mask.shape(0));
  }
  {
    py::gil_scoped_release release;
    fastret::picked_rows_of(data.data(), sizes.data(), masks.size(), rows);
  }
  py::list out;
  for (size_t i = 0; i < masks.size(); ++i) {
    Array<int64_t> picked(static_cast<py::ssize_t>(rows[i].size()));
    std::copy(rows[i].begin(), rows[i].end(), picked.mutable_data());
    out.append(std::move(picked));
  }
  return out;
}

py::tuple topk_binary(const Array<int8_t>& queries, const Array<float>& query_scales, const Array<uint64_t>& planes,
                      const py::sequence& segments, const py::sequence& bits, size_t k, size_t candidates,
                      const py::object& codes_files) {
  const auto [n_queries, dim] = query_shape(queries, query_scales);
  const size_t words = (dim + 63) / 64;
  require(planes.ndim() == 3 && static_cast<size_t>(planes.shape(0)) == n_queries &&
              static_cast<size_t>(planes.shape(2)) == words,
          "planes must be uint64 [n_queries, query_bits, " + std::to_string(words) + "] (fastret.binary.query_planes)");
  require(bits.size() == segments.size(), "topk_binary: one bits array per segment");
  std::vector<py::object> keep;
  const std::vector<fastret::Segment> parts = searched_segments(segments, dim, k, n_queries, keep);
  std::vector<const uint64_t*> bit_blocks;
  for (size_t s = 0; s < parts.size(); ++s) {
    const auto segment_bits = exact_array<uint64_t>(bits[s], "segment " + std::to_string(s) + " bits", keep);
    const size_t blocks = (parts[s].count + fastret::kBitBlock - 1) / fastret::kBitBlock;
    require(segment_bits.ndim() == 3 && static_cast<size_t>(segment_bits.shape(0)) == blocks &&
                static_cast<size_t>(segment_bits.shape(1)) == words &&
                static_cast<size_t>(segment_bits.shape(2)) == fastret::kBitBlock,
            "segment " + std::to_string(s) + ": bits must be uint64 [" + std::to_string(blocks) + ", " +
                std::to_string(words) + ", " + std::to_string(fastret::kBitBlock) + "] (fastret.binary.sign_bits)");
    bit_blocks.push_back(segment_bits.data());
  }
  std::vector<fastret::CodesFile> files(parts.size());
  if (!codes_files.is_none()) {
    const auto given = codes_files.cast<py::sequence>();
    require(given.size() == segments.size(), "topk_binary: codes_files must hold one (fd, offset) or None per segment");
    for (size_t s = 0; s < files.size(); ++s) {
      if (given[s].is_none()) continue;
      const auto [fd, offset] = given[s].cast<std::pair<int, uint64_t>>();
      require(fd >= 0, "topk_binary: segment " + std::to_string(s) + ": a codes file needs an open descriptor");
      files[s] = fastret::CodesFile{fd, offset};
    }
  }
  Array<float> scores({n_queries, k});
  Array<int64_t> rows({n_queries, k});
  float* scores_data = scores.mutable_data();
  int64_t* rows_data = rows.mutable_data();
  {
    py::gil_scoped_release release;
    fastret::topk_binary(queries.data(), query_scales.data(), planes.data(), n_queries, planes.shape(1),
                         parts.data(), bit_blocks.data(), files.data(), parts.size(), dim, k, candidates,
                         scores_data, rows_data);
  }
  return py::make_tuple(scores, rows);
}

// The n and k of packed weights (std::invalid_argument unless pack_int8_weights made them).
std::pair<size_t, size_t> packed_shape(const Array<uint8_t>& packed) {
  require(packed.ndim() == 1, "packed weights must be 1-D uint8 (from pack_int8_weights)");
  size_t n = 0, k = 0;
  fastret::packed_weights_shape(packed.data(), packed.shape(0), &n, &k);
  return {n, k};
}

Array<uint8_t> pack_int8_weights(const Array<int8_t>& weights) {
  require(weights.ndim() == 2, "weights must be 2-D [n, k] (one row per output channel), got ndim=" +
                                   std::to_string(weights.ndim()));
  const size_t n = weights.shape(0), k = weights.shape(1);
  require(n >= 1 && k >= 1, "weights must be non-empty, got shape [" + std::to_string(n) + ", " +
                                std::to_string(k) + "]");
  Array<uint8_t> packed(static_cast<py::ssize_t>(fastret::packed_weights_bytes(n, k)));
  uint8_t* packed_data = packed.mutable_data();
  {
    py::gil_scoped_release release;
    fastret::pack_int8_weights(weights.data(), n, k, packed_data);
  }
  return packed;
}

Array<int32_t> gemm_int8(const Array<int8_t>& a, const Array<uint8_t>& packed, const std::optional<std::string>& kernel) {
  const auto [n, k] = packed_shape(packed);
  require(a.ndim() == 2 && static_cast<size_t>(a.shape(1)) == k && a.shape(0) >= 1,
          "activations must be 2-D [m >= 1, " + std::to_string(k) + "] for these weights");
  const size_t m = a.shape(0);
  Array<int32_t> out({m, n});
  int32_t* out_data = out.mutable_data();
  {
    py::gil_scoped_release release;
    fastret::gemm_int8(a.data(), m, packed.data(), out_data, kernel ? kernel->c_str() : nullptr);
  }
  return out;
}

Array<float> linear_int8(const Array<float>& x, const Array<uint8_t>& packed,
                         const Array<float>& weight_scales, const std::optional<Array<float>>& bias,
                         bool gelu) {
  const auto [n, k] = packed_shape(packed);
  require(x.ndim() == 2 && static_cast<size_t>(x.shape(1)) == k && x.shape(0) >= 1,
          "x must be 2-D [m >= 1, " + std::to_string(k) + "] for these weights");
  const size_t m = x.shape(0);
  require(weight_scales.ndim() == 1 && static_cast<size_t>(weight_scales.shape(0)) == n,
          "weight_scales must be 1-D with one scale per output channel (" + std::to_string(n) + ")");
  const float* bias_data = nullptr;
  if (bias) {
    require(bias->ndim() == 1 && static_cast<size_t>(bias->shape(0)) == n,
            "bias must be 1-D with one value per output channel (" + std::to_string(n) + ")");
    bias_data = bias->data();
  }
  Array<float> out({m, n});
  float* out_data = out.mutable_data();
  {
    py::gil_scoped_release release;
    fastret::linear_int8(x.data(), m, packed.data(), weight_scales.data(), bias_data, gelu, out_data);
  }
  return out;
}

}  // namespace

PYBIND11_MODULE(_core, m) {
  m.doc() = "fastret's C++ core: exact int8 top-k and int8 GEMM with runtime SIMD dispatch.";
  m.def("topk_int8", &topk_int8, py::arg("queries").noconvert(), py::arg("query_scales").noconvert(),
        py::arg("segments"), py::arg("k"),
        "Exact top-k of (float(<q8, d8>) * s_q) * s_d over segments [(codes, scales, ids, deleted\n"
        "bitmap or None)], ties to the lower id, deleted rows skipped; returns (scores float32\n"
        "[q, k], global rows int64 [q, k]); a short result ends in (-inf, -1). Query codes in\n"
        "[-127, 127]; a block whose codes all lie in [-63, 63] may take a faster kernel.");
  m.def("topk_binary", &topk_binary, py::arg("queries").noconvert(), py::arg("query_scales").noconvert(),
        py::arg("planes").noconvert(), py::arg("segments"), py::arg("bits"), py::arg("k"), py::arg("candidates"),
        py::arg("codes_files") = py::none(),
        "Binary first stage (the `candidates` best rows by sign bits against the query planes), re-ranked by "
        "exact int8 score: (int8 scores float32 [q, k], global rows int64 [q, k]), as topk_int8's. codes_files: "
        "per segment None or (fd, offset): its candidates' codes are read with pread at offset + row * dim.");
  m.def("picked_rows", &picked_rows, py::arg("masks"), "The set rows (int64, ascending) of each bool mask.");
  m.def("simd_path", &fastret::simd_path, "The active SIMD path.");
  m.def("set_simd_path", &fastret::set_simd_path, py::arg("name"),
        "Force a SIMD path: 'avx512vnni', 'avx2', 'neon' or 'scalar'.");
  m.def("simd_paths_compiled", &fastret::simd_paths_compiled, "SIMD paths in this build, best first.");
  m.def("simd_paths_supported", &fastret::simd_paths_supported,
        "SIMD paths this CPU can run, best first.");
  m.def("set_num_threads", &fastret::set_num_threads, py::arg("n"),
        "Threads per search; 0 restores OpenMP's default (OMP_NUM_THREADS or all cores).");
  m.def("num_threads", &fastret::num_threads, "Threads a search will use.");

  // ------------------------------------------------------------------ machine limits
  // Measurements of this machine, for benchmarks; both run with the GIL released.
  m.def("read_bandwidth",
        [](size_t bytes, int threads, int repeats) {
          return fastret::read_bandwidth(bytes, search_threads(threads, "read_bandwidth"), repeats);
        },
        py::arg("bytes"), py::arg("threads"), py::arg("repeats"), py::call_guard<py::gil_scoped_release>(),
        "Bytes/s that `threads` threads (0 = search default) read from a `bytes`-byte buffer, best pass.");
  m.def("int8_peak",
        [](int threads, double seconds, int repeats, bool narrow) {
          return fastret::int8_peak(fastret::active_simd_path(), search_threads(threads, "int8_peak"), seconds,
                                    repeats, narrow);
        },
        py::arg("threads"), py::arg("seconds"), py::arg("repeats"), py::arg("narrow"),
        py::call_guard<py::gil_scoped_release>(),
        "Multiply-adds/s of the active SIMD path's batch kernel (narrow: for query codes in\n"
        "[-63, 63], where the path has one) on L1-resident data, all threads.");

  // int8 GEMM for CPU int8 linear layers (same SIMD path and threads as the search).
  m.def("pack_int8_weights", &pack_int8_weights, py::arg("weights").noconvert(),
        "Pack int8 weights [n, k] (codes in [-127, 127]) once for gemm_int8 / linear_int8;\n"
        "returns uint8 [bytes], recording n and k.");
  m.def("gemm_int8", &gemm_int8, py::arg("a").noconvert(), py::arg("packed").noconvert(),
        py::arg("kernel") = py::none(),
        "Exact int32 [m, n] = a int8 [m, k] (codes in [-127, 127]) times the packed weights' transpose, on the\n"
        "active path's micro-kernel or the one named by kernel (a path's name; 'amx' where the CPU has AMX;\n"
        "'amx-emulated': the AMX kernel's tile operations in scalar code, on any CPU).");
  m.def("amx_usable", &fastret::amx_usable,
        "True when this CPU has AMX-INT8 tiles that this process may use (CPUID, XCR0, Linux's permission).");
  m.def("linear_int8", &linear_int8, py::arg("x").noconvert(), py::arg("packed").noconvert(),
        py::arg("weight_scales").noconvert(), py::arg("bias").noconvert() = py::none(),
        py::arg("gelu") = false,
        "float32 [m, n]: x float32 [m, k] quantized per row, int8 GEMM, times both scales, plus bias;\n"
        "then GELU (the erf form) if gelu.");
}
