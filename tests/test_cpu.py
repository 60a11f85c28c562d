import os
import subprocess
import sys

import pytest

import fastret
from fastret import _core


def run_python(code, **env):
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, **env}, timeout=120)


def test_best_supported_path_is_active_by_default():
    result = run_python("import fastret; print(fastret.simd_path())", FASTRET_SIMD="")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == fastret.available_simd_paths()[0]


def test_paths_are_listed_best_first():
    compiled = _core.simd_paths_compiled()
    assert compiled[-1] == "scalar"
    assert set(fastret.available_simd_paths()) <= set(compiled)
    assert "scalar" in fastret.available_simd_paths()


@pytest.mark.parametrize("path", fastret.available_simd_paths())
def test_environment_variable_forces_a_path(path):
    result = run_python("import fastret; print(fastret.simd_path())", FASTRET_SIMD=path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == path


def test_bad_environment_variable_fails_the_import_clearly():
    result = run_python("import fastret", FASTRET_SIMD="neon")
    assert result.returncode != 0
    assert "FASTRET_SIMD='neon': unknown SIMD path 'neon'; expected one of" in result.stderr


def test_set_simd_path_validates():
    with pytest.raises(ValueError, match="unknown SIMD path 'sse9'"):
        fastret.set_simd_path("sse9")
    with pytest.raises(TypeError, match="must be a str"):
        fastret.set_simd_path(3)
    unsupported = [p for p in _core.simd_paths_compiled() if p not in fastret.available_simd_paths()]
    for path in unsupported:
        with pytest.raises(ValueError, match="not supported by this CPU"):
            fastret.set_simd_path(path)


def test_thread_count_follows_omp_num_threads_and_the_setter():
    result = run_python("import fastret; print(fastret.get_num_threads()); fastret.set_num_threads(3); "
                        "print(fastret.get_num_threads())", OMP_NUM_THREADS="1")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["1", "3"]
    with pytest.raises(ValueError, match=">= 0"):
        fastret.set_num_threads(-1)
    with pytest.raises(TypeError, match="must be an int"):
        fastret.set_num_threads("2")


def test_bf16_instruction_sets_read_the_cpu_flags():
    zen3 = "processor\t: 0\nflags\t\t: fpu sse2 avx avx2 fma\n\nprocessor\t: 1\nflags\t\t: fpu avx2\n"
    sapphire_rapids = "processor\t: 0\nflags\t\t: avx2 avx512f avx512_vnni amx_bf16 avx512_bf16 amx_tile\n"
    assert fastret.cpu.bf16_instruction_sets(zen3) == []
    assert fastret.cpu.bf16_instruction_sets(sapphire_rapids) == ["avx512_bf16", "amx_bf16"]
    assert fastret.cpu.bf16_instruction_sets("Features\t: fp asimd\n") == []
    assert set(fastret.cpu.bf16_instruction_sets()) <= set(fastret.cpu.BF16_FLAGS)
