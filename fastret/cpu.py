"""CPU settings: which SIMD path the C++ core uses (int8 search and int8 GEMM), how many threads,
and whether the CPU computes bfloat16 natively.

The best path the CPU supports is chosen at import. Set the environment variable
``FASTRET_SIMD=avx512vnni|avx2|scalar`` before importing fastret, or call `set_simd_path`, to force
one (tests do this to cover every path).
"""

from __future__ import annotations

import os
from pathlib import Path

from . import _core


def simd_path() -> str:
    """The SIMD path the CPU search runs: 'avx512vnni', 'avx2' or 'scalar'."""
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
