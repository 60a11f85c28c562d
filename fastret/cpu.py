"""CPU search settings: which SIMD path the C++ core uses, and how many threads.

The best path the CPU supports is chosen at import. Set the environment variable
``FASTRET_SIMD=avx512vnni|avx2|scalar`` before importing fastret, or call `set_simd_path`, to force
one (tests do this to cover every path).
"""

from __future__ import annotations

import os

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
