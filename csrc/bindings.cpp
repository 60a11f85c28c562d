// pybind11 bindings for fastret._core. Arrays must arrive C-contiguous with the exact dtype
// (noconvert): the Python layer validates user input and gives the helpful messages; this layer
// refuses anything else rather than copying or casting silently.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <optional>
#include <stdexcept>
#include <string>

#include "machine_limits.h"
#include "topk_int8.h"

namespace py = pybind11;

namespace {

template <typename T>
using Array = py::array_t<T, py::array::c_style>;

void require(bool ok, const std::string& message) {
  if (!ok) throw std::invalid_argument(message);
}

py::tuple topk_int8(const Array<int8_t>& queries, const Array<float>& query_scales,
                    const Array<int8_t>& corpus, const Array<float>& corpus_scales,
                    const std::optional<Array<int64_t>>& ids, size_t k) {
  require(queries.ndim() == 2, "queries must be 2-D [n_queries, dim], got ndim=" +
                                   std::to_string(queries.ndim()));
  require(corpus.ndim() == 2,
          "corpus must be 2-D [n_corpus, dim], got ndim=" + std::to_string(corpus.ndim()));
  const size_t n_queries = queries.shape(0), dim = queries.shape(1), n_corpus = corpus.shape(0);
  require(static_cast<size_t>(corpus.shape(1)) == dim,
          "queries have dim " + std::to_string(dim) + " but the corpus has dim " +
              std::to_string(corpus.shape(1)));
  require(query_scales.ndim() == 1 && static_cast<size_t>(query_scales.shape(0)) == n_queries,
          "query_scales must be 1-D with one scale per query (" + std::to_string(n_queries) + ")");
  require(corpus_scales.ndim() == 1 && static_cast<size_t>(corpus_scales.shape(0)) == n_corpus,
          "corpus_scales must be 1-D with one scale per corpus vector (" +
              std::to_string(n_corpus) + ")");
  const int64_t* id_data = nullptr;
  if (ids) {
    require(ids->ndim() == 1 && static_cast<size_t>(ids->shape(0)) == n_corpus,
            "ids must be 1-D with one id per corpus vector (" + std::to_string(n_corpus) + ")");
    id_data = ids->data();
  }
  // Checked before allocating the outputs, whose size depends on k.
  require(k >= 1 && k <= n_corpus && n_queries > 0,
          "k must be in [1, " + std::to_string(n_corpus) + "] and the query batch non-empty, got k=" +
              std::to_string(k) + ", n_queries=" + std::to_string(n_queries));

  Array<float> scores({n_queries, k});
  Array<int64_t> rows({n_queries, k});
  float* scores_data = scores.mutable_data();
  int64_t* rows_data = rows.mutable_data();
  {
    py::gil_scoped_release release;
    fastret::topk_int8(queries.data(), query_scales.data(), n_queries, corpus.data(),
                       corpus_scales.data(), id_data, n_corpus, dim, k, scores_data, rows_data);
  }
  return py::make_tuple(scores, rows);
}

}  // namespace

PYBIND11_MODULE(_core, m) {
  m.doc() = "fastret's C++ core: exact int8 top-k with runtime SIMD dispatch.";
  m.def("topk_int8", &topk_int8, py::arg("queries").noconvert(), py::arg("query_scales").noconvert(),
        py::arg("corpus").noconvert(), py::arg("corpus_scales").noconvert(),
        py::arg("ids").noconvert() = py::none(), py::arg("k"),
        "Exact top-k of (float(<q8, d8>) * s_q) * s_d, ties to the lower id;\n"
        "returns (scores float32 [q, k], corpus rows int64 [q, k]).");
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
  m.def("read_bandwidth", &fastret::read_bandwidth, py::arg("bytes"), py::arg("threads"),
        py::arg("repeats"), py::call_guard<py::gil_scoped_release>(),
        "Bytes/s that `threads` threads (0 = search default) read from a `bytes`-byte buffer, best pass.");
  m.def("int8_peak", &fastret::int8_peak, py::arg("threads"), py::arg("seconds"), py::arg("repeats"),
        py::call_guard<py::gil_scoped_release>(),
        "Multiply-adds/s of the active SIMD path's dots kernel on L1-resident data, all threads.");
}
