"""What every kernel file shares: an optional Triton import, and the per-call choice between the
Triton kernels and the plain-torch reference.

    CUDA tensor                       -> Triton
    CPU tensor with TRITON_INTERPRET=1 -> Triton in its interpreter (how CI tests the kernels)
    CPU tensor otherwise              -> the torch reference
"""

import os

import torch

try:
    import triton
    import triton.language as tl

    IMPORT_ERROR = None
except ImportError as _error:  # the torch reference paths still work without triton

    class _MissingTriton:
        """Stands in for triton and triton.language so kernel definitions still import."""

        constexpr = object

        @staticmethod
        def jit(fn):
            return fn

    triton = tl = _MissingTriton()
    IMPORT_ERROR = _error


def interpret_requested() -> bool:
    """TRITON_INTERPRET as Triton reads it, looked up now (not when this module was imported)."""
    return os.environ.get("TRITON_INTERPRET", "").strip().lower() in ("1", "true", "yes", "on")


def use_triton(device: torch.device) -> bool:
    """A plain `if`, decided per call: CUDA -> Triton; CPU -> torch, or Triton's interpreter on request."""
    return device.type == "cuda" or (device.type == "cpu" and interpret_requested())


def require_triton(op: str, device: torch.device, kernel) -> None:
    """Raise unless `op`'s kernels (`kernel` is one of them) can run on `device` in this process."""
    if IMPORT_ERROR is not None:
        where = "a CUDA tensor" if device.type == "cuda" else "TRITON_INTERPRET=1"
        raise RuntimeError(
            f"{op} on {where} needs triton, which failed to import ({IMPORT_ERROR}); install it "
            "(pip install triton), or pass CPU tensors without TRITON_INTERPRET=1 to use the torch reference"
        )
    if device.type == "cpu":
        # triton fixes compiled vs interpreted when it is imported (its own tl.zeros, tl.sum... are
        # jitted then), so the interpreter cannot be switched on afterwards
        from triton.runtime.interpreter import InterpretedFunction

        if not isinstance(kernel, InterpretedFunction):
            raise RuntimeError(
                "TRITON_INTERPRET=1 was set after triton was imported, so the kernels cannot run in "
                "Triton's interpreter; set it before importing fastret or triton (e.g. in the shell: "
                "TRITON_INTERPRET=1 python ...), or unset it to use the torch reference on CPU"
            )
