"""Every SIMD path against the reference, through the C++ test program tests/cpp/test_topk_paths.cpp
(no Python inside): built natively for the paths this CPU runs, and cross-compiled for aarch64 and
run under qemu-user for the NEON path, which no x86 machine can run natively.

The aarch64 tests need Debian's cross toolchain and qemu (`make cross-tools`, or
`apt-get install g++-aarch64-linux-gnu qemu-user`) and skip without them.
"""

import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

import fastret

ROOT = Path(__file__).resolve().parent.parent
PROGRAM = ROOT / "tests" / "cpp" / "test_topk_paths.cpp"
# The driver, every path and the AMX detection; OpenMP stays off (the pragmas are ignored) so that a
# static aarch64 build needs no libgomp; the Python tests cover the threading.
SOURCES = [PROGRAM, ROOT / "csrc" / "topk_int8.cpp", ROOT / "csrc" / "amx.cpp", ROOT / "csrc" / "machine_limits.cpp",
           *sorted((ROOT / "csrc").glob("simd_*.cpp"))]
CROSS_TOOLS = "aarch64-linux-gnu-g++ and qemu-aarch64 (make cross-tools, or apt-get install g++-aarch64-linux-gnu qemu-user)"


def build(compiler: str, out_dir: Path, *link_flags: str) -> Path:
    """Compiles the sources in parallel (the build stays a few seconds) and links the program."""
    flags = ["-std=c++17", "-O2", "-Wall", "-Wextra", "-Wno-unknown-pragmas", f"-I{ROOT / 'csrc'}"]

    def compile_one(source: Path) -> Path:
        obj = out_dir / (source.stem + ".o")
        result = subprocess.run([compiler, *flags, "-c", str(source), "-o", str(obj)],
                                capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, f"{compiler} failed on {source.name}:\n{result.stderr}"
        return obj

    with ThreadPoolExecutor(len(SOURCES)) as pool:
        objects = list(pool.map(compile_one, SOURCES))
    program = out_dir / "test_topk_paths"
    result = subprocess.run([compiler, *map(str, objects), *link_flags, "-o", str(program)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"linking failed:\n{result.stderr}"
    return program


def run(*command) -> tuple[list[str], str]:
    """Runs the program; returns the paths it tested and its output. Fails on any difference."""
    result = subprocess.run([str(c) for c in command], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "OK:" in result.stdout
    tested = next(line for line in result.stdout.splitlines() if line.startswith("paths tested:"))
    return tested.split(":", 1)[1].split(), result.stdout


def test_native_paths_match_the_reference(tmp_path):
    compiler = shutil.which("g++") or shutil.which("c++")
    if compiler is None:
        pytest.skip("needs a C++ compiler (g++ or c++) on PATH")
    tested, _ = run(build(compiler, tmp_path))
    assert tested == fastret.available_simd_paths()


@pytest.fixture(scope="module")
def aarch64_program(tmp_path_factory):
    compiler, qemu = shutil.which("aarch64-linux-gnu-g++"), shutil.which("qemu-aarch64")
    if compiler is None or qemu is None:
        pytest.skip(f"cross-testing the NEON path needs {CROSS_TOOLS}")
    return qemu, build(compiler, tmp_path_factory.mktemp("aarch64"), "-static")


def test_neon_path_matches_the_reference_under_qemu(aarch64_program):
    qemu, program = aarch64_program
    tested, _ = run(qemu, "-cpu", "max", program)  # "max": every extension qemu emulates, sdot and smmla too
    assert tested == ["i8mm", "neon", "amx-emulated", "scalar"]  # the tile kernels' emulation runs on ARM too


def test_neon_path_is_not_chosen_without_the_dot_product_extension(aarch64_program):
    qemu, program = aarch64_program
    tested, _ = run(qemu, "-cpu", "cortex-a53", program)  # Armv8.0: NEON without sdot
    assert tested == ["amx-emulated", "scalar"]


def test_i8mm_path_needs_the_matrix_extension(aarch64_program):
    qemu, program = aarch64_program
    tested, _ = run(qemu, "-cpu", "neoverse-n1", program)  # Armv8.2 with sdot, without smmla
    assert tested == ["neon", "amx-emulated", "scalar"]
