"""The int8 GEMM of the CPU int8 encoder on each micro-kernel this CPU runs, AMX tiles included
where the CPU has them: exactness against numpy and GOP/s, in one run.

    .venv/bin/python benchmarks/amx_gemm.py --json benchmarks/results/DATE-cpu-amx-gemm.json

Shapes are the linear layers of a BERT-family encoder on a batch of tokens (--tokens rows): the
attention projections (hidden x hidden), the feed-forward up (hidden x 4 hidden) and down (4
hidden x hidden), at MiniLM's 384 and BERT-base's 768. Kernels: every SIMD path's (avx512vnni,
avx2, scalar where present) and "amx" where `_core.amx_usable()`; "amx-emulated" is checked for
exactness on the smallest shape only (it is the scalar model of the tiles, not a speed path).
Beside them, torch's float matmul on the same shapes (bfloat16 where the CPU has bf16 instructions,
AMX-BF16 included, and float32), the other way the encoder can run: int8 on the tiles against bf16
on the tiles is the comparison `Encoder(dtype="auto")` is decided by (docs/int8-encoder.md).
Without AMX the table still runs and says so: the command is ready for a Xeon with AMX.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

import numpy as np

from fastret import _core, get_num_threads
from fastret.cpu import bf16_instruction_sets
from harness import cpu_info, finish, verdict

TARGET_VS_VNNI = 4.0


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=4096, help="activation rows (tokens in a batch)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", type=Path, default=None)
    return parser.parse_args()


def torch_rate(codes: np.ndarray, weights: np.ndarray, dtype: str, repeats: int) -> float:
    """GOP/s of torch's `a @ w.T` at `dtype` on the shape of codes [m, k] x weights [n, k]."""
    import torch

    a = torch.from_numpy(codes).to(getattr(torch, dtype))
    w = torch.from_numpy(weights).to(getattr(torch, dtype))
    a @ w.T
    start = time.perf_counter()
    for _ in range(repeats):
        a @ w.T
    return 2 * a.shape[0] * w.shape[0] * a.shape[1] / ((time.perf_counter() - start) / repeats) / 1e9


def shapes() -> list[tuple[str, int, int]]:
    return [(f"{name} {hidden}", n, k) for hidden in (384, 768)
            for name, n, k in (("qkv/out", hidden, hidden), ("ffn up", 4 * hidden, hidden), ("ffn down", hidden, 4 * hidden))]


def main() -> int:
    args = parse_args()
    rng = np.random.default_rng(0)
    kernels = [p for p in _core.simd_paths_supported() if p not in ("neon", "i8mm", "amx-emulated")]
    floats = (["bfloat16"] if bf16_instruction_sets() else []) + ["float32"]
    columns = kernels + [f"torch {dtype}" for dtype in floats]
    print(f"kernels: {', '.join(kernels)} (AMX {'usable' if _core.amx_usable() else 'not on this CPU'}), "
          f"threads {get_num_threads()}", flush=True)
    rows, exact = [], True
    for label, n, k in shapes():
        weights = rng.integers(-127, 128, (n, k)).astype(np.int8)
        codes = rng.integers(-127, 128, (args.tokens, k)).astype(np.int8)
        packed = _core.pack_int8_weights(weights)
        expected = codes[:64].astype(np.int64) @ weights.astype(np.int64).T
        row = {"shape": label, "m": args.tokens, "n": n, "k": k}
        for kernel in kernels + (["amx-emulated"] if label == "qkv/out 384" else []):
            exact &= bool(np.array_equal(_core.gemm_int8(codes[:64], packed, kernel=kernel), expected))
            if kernel == "amx-emulated":
                continue
            _core.gemm_int8(codes, packed, kernel=kernel)
            start = time.perf_counter()
            for _ in range(args.repeats):
                _core.gemm_int8(codes, packed, kernel=kernel)
            seconds = (time.perf_counter() - start) / args.repeats
            row[kernel] = 2 * args.tokens * n * k / seconds / 1e9
        for dtype in floats:
            row[f"torch {dtype}"] = torch_rate(codes, weights, dtype, args.repeats)
        rows.append(row)
        print("  " + f"{label:14s} " + "  ".join(f"{name} {row[name]:8.1f} GOP/s" for name in columns), flush=True)
    checks = [(verdict(exact), "every kernel equals numpy's int64 product (amx-emulated on the smallest shape)")]
    if "amx" in kernels and "avx512vnni" in kernels:
        worst = min(row["amx"] / row["avx512vnni"] for row in rows)
        checks.append((verdict(worst >= TARGET_VS_VNNI),
                       f"AMX >= {TARGET_VS_VNNI}x the AVX-512 VNNI kernel on every shape (worst {worst:.2f}x)"))
    if "amx" in kernels and "bfloat16" in floats:
        worst = min(row["amx"] / row["torch bfloat16"] for row in rows)
        checks.append((verdict(worst >= 1.0), f"int8 on AMX at least torch's bfloat16 (AMX-BF16) on every shape "
                                              f"(worst {worst:.2f}x): the rule dtype='auto' follows"))
    report = {"command": shlex.join([sys.executable, *sys.argv]), "machine": cpu_info(),
              "amx_usable": _core.amx_usable(), "threads": get_num_threads(), "kernels": kernels, "rows": rows}
    return finish(checks, args.json, report)


if __name__ == "__main__":
    sys.exit(main())
