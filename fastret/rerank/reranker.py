"""`Reranker`: a cross-encoder scoring (query, text) pairs, the sentence-transformers way, in
fastret's batches.

A cross-encoder reads the query and a text together ("[CLS] query [SEP] text [SEP]") and gives one
logit: how well the text answers the query. It is too slow to score a corpus, so it re-ranks the
few candidates a first stage found (MedCPT's third part, MedCPT-Cross-Encoder, re-ranks the
articles its query and article encoders retrieved; TEI serves such models at `POST /rerank`).

Scores equal sentence-transformers' `CrossEncoder.predict` for the same model: pairs tokenized
together and truncated longest-first to max_length, the model's single logit, and the sigmoid of
it unless raw scores are asked for (`activation`), as `CrossEncoder` and TEI's `raw_scores` do.
Pairs run in length-sorted batches under a token budget, on the device and in the dtype an
`Encoder` would pick, int8 linear layers on the CPU with `quantize="int8"`. A BERT-family
cross-encoder (BertForSequenceClassification: MedCPT-Cross-Encoder, the ms-marco MiniLM ones) runs
packed by default: the pairs of a batch back to back with no pad token in any matmul
(`fastret.encode.packed`, one GEMM for q, k and v), the last layer computed for each pair's first
token only (the one row the pooler reads), then the model's own pooler and classifier; on the CPU
the intermediate layer's bias and GELU ride in its GEMM (exact there) and batches hold at most
CPU_PACKED_TOKENS tokens.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..encode.batches import collate, collate_packed, plan_batches, prefetch, warn_about_inputs
from ..encode.int8_linear import quantize_linear_layers
from ..encode.loading import (check_quantize, load_model, locate_model, resolve_dtype, resolve_max_length,
                              truncating_tokenizer)
from ..encode.packed import PackedModel, supports_packed

ACTIVATIONS = ("sigmoid", "none")
# Tokens per packed batch on the CPU: the matmuls keep their speed at a couple of thousand rows,
# and a batch's activations stay in cache (re-ranking an NFCorpus top 100 with a BERT-base
# cross-encoder on 2 Zen 3 cores, 4 runs each: 2,048 tokens 45.6-52.9 s, 1,024 52.4-52.7 s,
# 4,096 53.9-56.3 s, 8,192 53.4-60.1 s; with MiniLM's shape no budget stood out).
CPU_PACKED_TOKENS = 2048


@dataclass(frozen=True)
class RerankerPreset:
    """A cross-encoder's conventions: the pair's length in tokens (None: the model's limit)."""

    max_length: int | None = None


RERANKER_PRESETS = {
    # ncbi/MedCPT-Cross-Encoder: a PubMedBERT over "[query] [SEP] [article]" (title and abstract
    # joined), 512 tokens, one logit.
    "medcpt-cross": RerankerPreset(max_length=512),
}


class Reranker:
    """(query, text) pairs -> relevance scores with a cross-encoder.

    Args:
        model_name_or_path: a local Hugging Face sequence-classification model directory with one
            label (a BERT-family cross-encoder, e.g. MedCPT-Cross-Encoder), or a hub id where the
            network allows.
        device, dtype, quantize: as `fastret.Encoder` (CUDA in float16 when there is a GPU; on the
            CPU float32, "auto" for bfloat16 where the CPU has it, or quantize="int8").
        max_length: tokens per pair; longer pairs are truncated longest-first (one warning per call).
        preset: a seed model's conventions (`RERANKER_PRESETS`: "medcpt-cross").
        packed: score batches without padding (see the module docstring): "auto" (default) where
            the model is a BertForSequenceClassification (with float linear layers or int8 ones),
            True to insist, False for the model's own padded forward (the reference: same scores
            to float rounding).

    Raises:
        ValueError: not a model directory, a model with other than one label, an unknown preset.
        TypeError: arguments of the wrong type.
    """

    def __init__(self, model_name_or_path: str | Path, device: str | torch.device | None = None,
                 dtype: str | torch.dtype | None = None, max_length: int | None = None, preset: str | None = None,
                 quantize: str | None = None, packed: bool | str = "auto"):
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        if packed is not True and packed is not False and packed != "auto":
            raise ValueError(f"packed must be True, False or 'auto', got {packed!r}")

        if preset is not None and preset not in RERANKER_PRESETS:
            raise ValueError(f"unknown reranker preset {preset!r}; expected one of {', '.join(RERANKER_PRESETS)}")
        model_dir, _ = locate_model(model_name_or_path)
        self.device = torch.device(device) if device is not None else torch.device(
            "cuda" if torch.cuda.is_available() and quantize is None else "cpu")
        self.dtype = resolve_dtype("float32" if quantize is not None and dtype in (None, "auto") else dtype, self.device)
        self.quantize = check_quantize(quantize, self.device, self.dtype)
        self.tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
        if not self.tokenizer.is_fast:
            raise ValueError(f"{model_dir}: fastret needs a fast (Rust) tokenizer (tokenizer.json)")
        model = load_model(AutoModelForSequenceClassification, model_dir)
        if model.config.num_labels != 1:
            raise ValueError(f"{model_dir}: a cross-encoder with one output (a relevance logit) is expected; this "
                             f"model has {model.config.num_labels} labels")
        self.model = model.to(device=self.device, dtype=self.dtype).eval()
        if self.quantize == "int8":
            quantize_linear_layers(self.model)
        wired = _packed_head(self.model)
        if packed is True and wired is not None:
            raise ValueError(f"{model_dir}: packed scoring cannot run this model: {wired} (use packed=False)")
        self.packed_model = None
        if packed is not False and wired is None:
            on_cpu = self.device.type == "cpu"
            self.packed_model = PackedModel(self.model.bert, fuse_bias_gelu=on_cpu and self.quantize is None,
                                            first_token_only=True)
        self.max_length = resolve_max_length(self.model, self.tokenizer, max_length,
                                             preset and RERANKER_PRESETS[preset].max_length)
        self._backend = truncating_tokenizer(self.tokenizer, self.max_length)
        pad = self.tokenizer.pad_token_id
        self.pad_id = 0 if pad is None else pad
        self._uses_token_types = "token_type_ids" in self.tokenizer.model_input_names
        self.model_dir = model_dir

    def __repr__(self) -> str:
        return (f"fastret.Reranker({str(self.model_dir)!r}, device={str(self.device)!r}, dtype={self.dtype}, "
                f"max_length={self.max_length}" + (f", quantize={self.quantize!r}" if self.quantize else "")
                + f", packed={self.packed_model is not None})")

    def predict(self, pairs: Sequence[tuple[str, str]], batch_size: int = 32, activation: str = "sigmoid",
                max_tokens_per_batch: int | None = None, show_progress_bar: bool = False) -> np.ndarray:
        """Scores of (query, text) pairs, as `CrossEncoder.predict` gives them.

        Args:
            pairs: n (query, text) pairs of str.
            batch_size: most pairs per forward pass.
            activation: "sigmoid" (scores in (0, 1), CrossEncoder's default for one label) or
                "none" (the raw logits, TEI's raw_scores).
            max_tokens_per_batch: most tokens per forward pass (padded: pairs x longest); default
                `default_max_tokens(batch_size)`.
            show_progress_bar: a tqdm bar over the pairs.

        Returns:
            float32 [n], in the order of `pairs`.

        Raises:
            TypeError: a pair that is not two str.
            ValueError: a bad batch_size or activation.
        """
        checked = _checked_pairs(pairs)
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        token_ids, type_ids, truncated = self.tokenize(checked)
        warn_about_inputs({"texts": len(checked), "truncated": sum(truncated)}, self.max_length)
        return self.score_tokens(token_ids, type_ids, batch_size, max_tokens_per_batch or self.default_max_tokens(batch_size),
                                 activation, show_progress_bar)

    def default_max_tokens(self, batch_size: int) -> int:
        """Tokens per batch when the caller gives no budget: batch_size x max_length, at most
        CPU_PACKED_TOKENS when packed on the CPU."""
        budget = batch_size * self.max_length
        if self.packed_model is not None and self.device.type == "cpu":
            budget = min(budget, max(CPU_PACKED_TOKENS, self.max_length))
        return budget

    # ------------------------------------------------------------------ the steps of `predict`, for
    # callers that check the tokens before scoring them (the HTTP server refuses over-long pairs)

    def tokenize(self, pairs: Sequence[tuple[str, str]]) -> tuple[list[list[int]], list[list[int]] | None, list[bool]]:
        """Token ids of (query, text) pairs of str, as the model takes them: (token_ids, type_ids
        (None for models without them), whether each pair was longer than max_length)."""
        encodings = self._backend.encode_batch(list(pairs), add_special_tokens=True)
        type_ids = [enc.type_ids for enc in encodings] if self._uses_token_types else None
        return [enc.ids for enc in encodings], type_ids, [bool(enc.overflowing) for enc in encodings]

    def score_tokens(self, token_ids: list[list[int]], type_ids: list[list[int]] | None, max_pairs: int,
                     max_tokens: int, activation: str = "sigmoid", show_progress_bar: bool = False) -> np.ndarray:
        """float32 [n] scores of tokenized pairs (`tokenize`), in length-sorted batches of at most
        `max_pairs` pairs and `max_tokens` padded tokens; `activation` as `predict`."""
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {', '.join(ACTIVATIONS)}, got {activation!r}")
        scores = np.empty(len(token_ids), np.float32)
        packed = self.packed_model is not None

        def collated():
            for rows in plan_batches([len(ids) for ids in token_ids], max_pairs, max_tokens, padded=not packed):
                ids = [token_ids[r] for r in rows]
                types = None if type_ids is None else [type_ids[r] for r in rows]
                yield rows, collate_packed(ids, types) if packed else collate(ids, types, self.pad_id)

        from tqdm.auto import tqdm

        with torch.inference_mode(), tqdm(total=len(token_ids), unit="pair", desc="rerank",
                                          disable=not show_progress_bar) as bar:
            for rows, batch in prefetch(collated()) if token_ids else ():
                logits = (self._packed_logits(batch.to(self.device)) if packed else
                          self.model(**{k: v.to(self.device) for k, v in batch.items()}).logits[:, 0]).float()
                if activation == "sigmoid":
                    logits = torch.sigmoid(logits)
                scores[rows] = logits.cpu().numpy()
                bar.update(len(rows))
        return scores

    def _packed_logits(self, batch) -> torch.Tensor:
        """[B] logits of a PackedBatch: the packed encoder (its last layer on each pair's first
        token only), then the model's pooler and classifier, as BertForSequenceClassification
        applies them."""
        first = self.packed_model(batch)  # [B, hidden]
        return self.model.classifier(self.model.bert.pooler(first[:, None, :]))[:, 0]

    def rank(self, query: str, texts: Sequence[str], top_k: int | None = None, activation: str = "sigmoid",
             batch_size: int = 32) -> list[tuple[int, float]]:
        """(position in `texts`, score) of the best `top_k` texts for `query` (all by default),
        best first; equal scores keep the texts' order.

        Raises:
            TypeError: a query or text that is not a str.
            ValueError: top_k < 1, and as `predict`.
        """
        if not isinstance(query, str):
            raise TypeError(f"query must be a str, got {type(query).__name__}")
        if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
            raise ValueError(f"top_k must be a positive int or None, got {top_k!r}")
        scores = self.predict([(query, text) for text in _checked_texts(texts)], batch_size, activation)
        order = np.argsort(-scores, kind="stable")[:top_k]
        return [(int(i), float(scores[i])) for i in order]


def _checked_pairs(pairs) -> list[tuple[str, str]]:
    """`pairs` as a list of (str, str); TypeError naming the first bad one."""
    if isinstance(pairs, (str, bytes)) or not isinstance(pairs, Sequence):
        raise TypeError(f"pairs must be a sequence of (query, text) pairs of str, got {type(pairs).__name__}")
    out = []
    for position, pair in enumerate(pairs):
        if not isinstance(pair, (tuple, list)) or len(pair) != 2 or not all(isinstance(p, str) for p in pair):
            raise TypeError(f"pairs[{position}] must be a (query, text) pair of str, got {pair!r:.80}")
        out.append((pair[0], pair[1]))
    return out


def _checked_texts(texts) -> list[str]:
    if isinstance(texts, str) or not isinstance(texts, Sequence):
        raise TypeError(f"texts must be a sequence of str, got {type(texts).__name__}")
    for position, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"texts[{position}] must be a str, got {type(text).__name__}")
    return list(texts)


def _packed_head(model: torch.nn.Module) -> str | None:
    """Why packed scoring cannot run `model`, or None: it needs a BertForSequenceClassification
    (a BERT encoder the packed path wires, its pooler, a linear classifier)."""
    bert = getattr(model, "bert", None)
    if bert is None or not supports_packed(bert):
        return f"a BERT-family sequence classifier is needed, this is a {type(model).__name__}"
    if getattr(bert, "pooler", None) is None or not hasattr(model, "classifier"):
        return "the model has no pooler or classifier to apply to the first token"
    return None
