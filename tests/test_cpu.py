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
    result = run_python("import fastret", FASTRET_SIMD="sve2")
    assert result.returncode != 0
    assert "FASTRET_SIMD='sve2': unknown SIMD path 'sve2'; expected one of" in result.stderr


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


# ---------------------------------------------------------------------------------- machine limits


def test_read_bandwidth_is_plausible():
    one = fastret.cpu.read_bandwidth(64 << 20, threads=1, repeats=2)
    assert 0.5e9 < one < 1e12  # bytes/s: any machine since DDR2, below any HBM part


def test_int8_peak_follows_the_active_path():
    before = fastret.simd_path()
    peaks = {}
    try:
        for path in fastret.available_simd_paths():
            fastret.set_simd_path(path)
            for narrow in (True, False):
                peaks[path, narrow] = fastret.cpu.int8_peak(threads=1, seconds=0.3, repeats=3, narrow=narrow)
    finally:
        fastret.set_simd_path(before)
    for (path, narrow), peak in peaks.items():
        assert 1e8 < peak < 1e13, (path, narrow, peak)  # multiply-adds/s of one thread
        if path not in ("scalar", "amx-emulated"):  # the emulation is the tiles' scalar model, for tests
            # SIMD kernels do many products per instruction
            assert peak > 2 * peaks["scalar", narrow], peaks


def test_machine_limits_validate_arguments():
    with pytest.raises(ValueError, match="at least 1 MiB"):
        fastret.cpu.read_bandwidth(1000)
    with pytest.raises(ValueError, match="threads must be >= 0"):
        fastret.cpu.read_bandwidth(1 << 20, threads=-1)
    with pytest.raises(TypeError, match="nbytes must be an int"):
        fastret.cpu.read_bandwidth(2.5e6)
    with pytest.raises(ValueError, match=r"seconds must be in \(0, 60\]"):
        fastret.cpu.int8_peak(seconds=0)
    with pytest.raises(ValueError, match="repeats must be >= 1"):
        fastret.cpu.int8_peak(repeats=0)
    with pytest.raises(TypeError, match="seconds must be a number"):
        fastret.cpu.int8_peak(seconds="1")
    with pytest.raises(TypeError, match="narrow must be True or False"):
        fastret.cpu.int8_peak(seconds=0.1, narrow=1)


def test_bf16_instruction_sets_read_the_cpu_flags():
    zen3 = "processor\t: 0\nflags\t\t: fpu sse2 avx avx2 fma\n\nprocessor\t: 1\nflags\t\t: fpu avx2\n"
    sapphire_rapids = "processor\t: 0\nflags\t\t: avx2 avx512f avx512_vnni amx_bf16 avx512_bf16 amx_tile\n"
    assert fastret.cpu.bf16_instruction_sets(zen3) == []
    assert fastret.cpu.bf16_instruction_sets(sapphire_rapids) == ["avx512_bf16", "amx_bf16"]
    assert fastret.cpu.bf16_instruction_sets("Features\t: fp asimd\n") == []
    assert set(fastret.cpu.bf16_instruction_sets()) <= set(fastret.cpu.BF16_FLAGS)
