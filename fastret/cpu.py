"""CPU settings: which SIMD path the C++ core uses (int8 search and int8 GEMM), how many threads,
whether the CPU computes bfloat16 natively; and the machine's limits that bound a search (read
bandwidth, int8 multiply-add peak), measured.

The best path the CPU supports is chosen on first use (a matrix-unit path, amx or i8mm, where
its batch kernel measures faster than the vector path's). Set the environment variable
``FASTRET_SIMD=amx|avx512vnni|avx2|i8mm|neon|amx-emulated|scalar`` before importing fastret, or call
`set_simd_path`, to force one (tests do this to cover every path).
"""

from __future__ import annotations

import os
from pathlib import Path

from . import _core


def simd_path() -> str:
    """The SIMD path the CPU search runs: 'avx512vnni' or 'avx2' (x86), 'neon' (ARM) or 'scalar'."""
    return _core.simd_path()


def available_simd_paths() -> list[str]:
    """The SIMD paths this CPU can run, best first."""
    return list(_core.simd_paths_supported())


def set_simd_path(name: str) -> None:
    """Force a SIMD path for every later search.

    Raises:
        ValueError: unknown name, or a path this CPU cannot run.
    """
    if not isinstance(name, str):
        raise TypeError(f"SIMD path must be a str, got {type(name).__name__}")
    _core.set_simd_path(name)


def set_num_threads(n: int) -> None:
    """Threads per CPU search; 0 restores the default (OMP_NUM_THREADS, else all cores)."""
    if isinstance(n, bool) or not isinstance(n, int):
        raise TypeError(f"number of threads must be an int, got {type(n).__name__}")
    _core.set_num_threads(n)


def get_num_threads() -> int:
    """Threads a CPU search will use."""
    return _core.num_threads()


def read_bandwidth(nbytes: int = 512 << 20, threads: int = 0, repeats: int = 3) -> float:
    """Bytes per second the machine reads: a multi-threaded sequential read of a buffer.

    One query over n vectors of d int8 codes reads n * d bytes, so it cannot take less than
    n * d / read_bandwidth() seconds.

    Args:
        nbytes: buffer size; keep it much larger than the last-level cache (>= 1 MiB).
        threads: reading threads; 0 = the search default (`get_num_threads`).
        repeats: timed passes; the best is returned.

    Returns:
        Bytes per second (float).

    Raises:
        TypeError: a non-int argument.
        ValueError: nbytes < 1 MiB, threads < 0 or repeats < 1.
    """
    _require_ints(nbytes=nbytes, threads=threads, repeats=repeats)
    return _core.read_bandwidth(nbytes, threads, repeats)


def int8_peak(threads: int = 0, seconds: float = 1.0, repeats: int = 50, narrow: bool = True) -> float:
    """Multiply-adds per second of the active SIMD path's batch kernel on data held in L1.

    The kernel's own instruction sequence with no memory stalls, run by every thread at once: the
    ceiling of a large batch (queries x vectors x dim multiply-adds).

    Args:
        threads: threads running the kernel at once; 0 = the search default.
        seconds: total measuring time, in (0, 60].
        repeats: timed runs per thread (seconds / repeats each); each thread keeps its best, so
            short runs find the moments when other processes leave the core alone.
        narrow: time the kernel that searches with fastret's own query codes (in [-63, 63]; the
            AVX2 path has a faster kernel for them); False: the kernel for any codes in
            [-127, 127]. Paths with one kernel for both give the same figure either way.

    Returns:
        Multiply-adds per second over all threads (float).

    Raises:
        TypeError: a non-int threads/repeats, a non-number seconds or a non-bool narrow.
        ValueError: threads < 0, repeats < 1 or seconds outside (0, 60].
    """
    _require_ints(threads=threads, repeats=repeats)
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)):
        raise TypeError(f"seconds must be a number, got {type(seconds).__name__}")
    if not isinstance(narrow, bool):
        raise TypeError(f"narrow must be True or False, got {type(narrow).__name__}")
    return _core.int8_peak(threads, float(seconds), repeats, narrow)


def _require_ints(**values) -> None:
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{name} must be an int, got {type(value).__name__}")


# x86 flags (as Linux names them in /proc/cpuinfo) of instructions that compute bf16 matmuls;
# without them torch emulates bf16 on the CPU, several times slower than float32.
BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def bf16_instruction_sets(cpuinfo: str | None = None) -> list[str]:
    """The CPU's bf16 matmul instruction sets among `BF16_FLAGS`, e.g. ['avx512_bf16', 'amx_bf16'].

    Args:
        cpuinfo: text in the format of Linux's /proc/cpuinfo; default: read /proc/cpuinfo. Where it
            cannot be read (another OS), no set is reported, so bf16 is never chosen automatically.

    Returns:
        the flags present on the first processor's "flags" line, in `BF16_FLAGS` order.
    """
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return []
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            flags = set(value.split())
            return [flag for flag in BF16_FLAGS if flag in flags]
    return []


def _apply_environment() -> None:
    forced = os.environ.get("FASTRET_SIMD", "").strip()
    if forced:
        try:
            _core.set_simd_path(forced)
        except ValueError as error:
            raise ValueError(
                f"FASTRET_SIMD={forced!r}: {error}; this CPU supports {available_simd_paths()}"
            ) from None


_apply_environment()
