"""Loading a Hugging Face model the way fastret's model wrappers (`fastret.Encoder`,
`fastret.Reranker`) do: where it is, in which dtype, its weights with SDPA attention, a private
truncating tokenizer, and the first of several settings that is given.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch

from ..cpu import bf16_instruction_sets
from .model_dir import read_model_dir

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
          "half": torch.float16, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}
QUANTIZE_MODES = ("int8",)



def first_given(*choices):
    """The first choice that is not None (None if all are)."""
    return next((choice for choice in choices if choice is not None), None)


def resolve_max_length(model, tokenizer, *choices) -> int:
    """Tokens per input: the first of `choices` that is given (else the model's own limit, or 512
    when it states none), never beyond the model's position embeddings or the tokenizer's limit.

    Raises:
        ValueError: a chosen length that is not an int >= 2.
    """
    limits = [v for v in (getattr(model.config, "max_position_embeddings", None), tokenizer.model_max_length)
              if isinstance(v, int) and 0 < v < 10**6]
    wanted = first_given(*choices, min(limits) if limits else 512)
    if isinstance(wanted, bool) or not isinstance(wanted, int) or wanted < 2:
        raise ValueError(f"max_length must be an int >= 2, got {wanted!r}")
    return min([wanted, *limits])


def resolve_dtype(dtype, device: torch.device) -> torch.dtype:
    if dtype is None or dtype == "auto":
        if device.type == "cuda":
            return torch.float16
        return torch.bfloat16 if dtype == "auto" and bf16_instruction_sets() else torch.float32
    if isinstance(dtype, torch.dtype):
        resolved = dtype
    elif isinstance(dtype, str) and dtype.lower() in DTYPES:
        resolved = DTYPES[dtype.lower()]
    else:
        raise ValueError(f"dtype must be float32, float16, bfloat16 or 'auto', got {dtype!r}")
    if resolved not in (torch.float32, torch.float16, torch.bfloat16):
        raise ValueError(f"dtype must be float32, float16 or bfloat16, got {resolved}")
    if resolved == torch.bfloat16 and device.type == "cpu" and not bf16_instruction_sets():
        warnings.warn("bfloat16 on this CPU is emulated (it has no AVX512-BF16 or AMX-BF16 instructions) and "
                      "several times slower than float32; use dtype='auto' or float32, or quantize='int8'",
                      RuntimeWarning, stacklevel=3)
    return resolved


def check_quantize(quantize, device: torch.device, dtype: torch.dtype) -> str | None:
    if quantize is None:
        return None
    if quantize not in QUANTIZE_MODES:
        raise ValueError(f"quantize must be one of {QUANTIZE_MODES} or None, got {quantize!r}")
    if device.type != "cpu":
        raise ValueError(f"quantize={quantize!r} runs on the CPU's int8 kernels; got device {device}. "
                         "Pass device='cpu', or leave quantize unset on a GPU")
    if dtype != torch.float32:
        raise ValueError(f"quantize={quantize!r} takes a float32 model (the int8 layers read float32 "
                         f"activations); got dtype {dtype}. Leave dtype unset or pass float32")
    return quantize


def locate_model(name_or_path: str | Path) -> tuple[Path | str, dict]:
    """The directory holding config.json, and the sentence-transformers conventions found there."""
    if not isinstance(name_or_path, (str, Path)):
        raise TypeError(f"model_name_or_path must be a str or Path, got {type(name_or_path).__name__}")
    path = Path(name_or_path).expanduser()
    if not path.exists():
        if isinstance(name_or_path, str) and name_or_path.count("/") == 1 and not name_or_path.startswith((".", "/")):
            return _download(name_or_path)
        raise ValueError(f"model {str(name_or_path)!r} not found: no such directory (and not a hub id 'org/name')")
    if not path.is_dir():
        raise ValueError(f"{path} is a file; pass the model directory (the one holding config.json)")
    return read_model_dir(path)


def _download(repo_id: str) -> tuple[Path, dict]:
    try:
        from huggingface_hub import snapshot_download

        return read_model_dir(Path(snapshot_download(repo_id)))
    except Exception as error:  # offline, unknown repo, ...
        raise ValueError(f"model {repo_id!r} is not a local directory and could not be fetched from the hub "
                         f"({type(error).__name__}: {error}); pass a local model directory") from None


def load_model(auto_model, model_dir: Path):
    """The model with SDPA attention where the architecture supports it."""
    try:
        return auto_model.from_pretrained(str(model_dir), attn_implementation="sdpa")
    except (ValueError, ImportError):
        return auto_model.from_pretrained(str(model_dir))
    except OSError as error:
        raise ValueError(f"{model_dir}: could not load the model weights ({error})") from None


def truncating_tokenizer(tokenizer, max_length: int):
    """A copy of the Rust tokenizer with our truncation and no padding (the shared one stays as is)."""
    from tokenizers import Tokenizer

    backend = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
    backend.enable_truncation(max_length=max_length)
    backend.no_padding()
    return backend
