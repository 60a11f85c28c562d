"""`Encoder`: a drop-in, faster `SentenceTransformer.encode` for retrieval models.

Pipeline for one call:
  texts -> (prompt) -> tokenize (Rust tokenizer, truncation; on a GPU TOKENIZE_CHUNK texts at a
  time, one chunk ahead of the model in a background thread) -> sort each chunk by token length ->
  batches under a token budget, collated in a background thread: packed (no padding, on CUDA by
  default: `fastret.encode.packed`) or padded -> model forward (inference mode, varlen or SDPA
  attention, fp16/bf16 where asked) -> fused pool + L2-normalize (+ int8) kernel -> rows copied to
  the host while the next batch runs, written back in input order.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch

from ..kernels.pooling import check_quantizable, pool_normalize, pool_normalize_packed
from .batches import PackedBatch, collate, collate_packed, plan_batches, prefetch, warn_about_inputs
from .corpus_to_store import encode_corpus, torchrun_env
from .int8_linear import quantize_linear_layers
from .loading import (check_quantize, first_given, load_model, locate_model, resolve_dtype, resolve_max_length,
                      truncating_tokenizer)
from .packed import PackedModel, supports_packed
from .presets import POOLING_MODES, get_preset

PRECISIONS = ("float32", "int8")
# Texts tokenized at a time by `Encoder.embed` on a GPU, one such chunk ahead of the model (on the
# CPU the tokenizer and the model share the cores: there every call tokenizes once, up front).
TOKENIZE_CHUNK = 2048


class Encoder:
    """Text -> embeddings with a Hugging Face encoder, the sentence-transformers way, faster.

    Args:
        model_name_or_path: a local model directory (a sentence-transformers directory or a plain
            Hugging Face one), or a hub id where the network allows.
        device: "cpu", "cuda", "cuda:1", ...; default CUDA when available (under torchrun, each rank's
            cuda:LOCAL_RANK), else the CPU (always the CPU with `quantize`).
        dtype: weights and activations: float32 (CPU default), float16 (CUDA default), bfloat16, or
            "auto": on the CPU, bfloat16 where the CPU has AVX512-BF16 or AMX-BF16 instructions and
            float32 elsewhere (without them bf16 is emulated, several times slower: an explicit
            bfloat16 there warns); on CUDA, float16.
        pooling: "mean", "cls" or "last"; overrides the preset and the model's own config.
        normalize: L2-normalize embeddings; overrides the preset and the model's own config.
        max_length: tokens per text; longer texts are truncated (with one warning per call).
        preset: a seed model's conventions, see `fastret.encode.presets.PRESETS`.
        quantize: "int8" runs the model's linear layers on the C++ core's int8 GEMM (CPU and float32
            only; see `fastret.encode.int8_linear`): weights per output channel, activations per token.
        packed: run batches without padding (`fastret.encode.packed`: packed sequences, varlen
            attention, pooling on cu_seqlens): True, False (the model's own padded forward), or
            "auto" (default): packed on CUDA for the model types it wires (BERT family, GPT-NeoX,
            Llama, Qwen2, Mistral, Gemma), padded elsewhere. Both give the same embeddings to float
            rounding. `packed_model` holds the packed runner (None on the padded path).
        compile: run the packed model through torch.compile (`PackedModel(compile=True)`: inductor's
            fused kernels, the token count dynamic, no CUDA graphs); the same embeddings to float
            rounding. Off by default until a GPU run shows its gain (benchmarks/gpu_check.py's
            encode_paths step times it against the eager packed model). The first batches compile
            (seconds to minutes). Needs the packed path and float layers.

    Precedence: explicit arguments, then the preset, then the model's sentence-transformers
    config, then defaults (mean pooling, no normalization, the model's maximum length).

    Raises:
        ValueError: not a model directory, unknown preset or pooling, unsupported pooling in the
            model's config; quantize on a GPU or with a dtype other than float32; packed=True
            for a model type the packed path does not wire; compile=True on the padded path or
            with quantize.
        TypeError: arguments of the wrong type.
        RuntimeError: compile=True where torch.compile cannot build kernels (the message names the fix).
    """

    def __init__(self, model_name_or_path: str | Path, device: str | torch.device | None = None,
                 dtype: str | torch.dtype | None = None, pooling: str | None = None,
                 normalize: bool | None = None, max_length: int | None = None, preset: str | None = None,
                 quantize: str | None = None, packed: bool | str = "auto", compile: bool = False):
        from transformers import AutoModel, AutoTokenizer

        model_dir, st_config = locate_model(model_name_or_path)
        preset_config = get_preset(preset) if preset is not None else None
        self.device = torch.device(device) if device is not None else torch.device(
            torchrun_env().cuda_device if torch.cuda.is_available() and quantize is None else "cpu")
        # int8 layers read float32 activations: that is what "auto" means for them.
        self.dtype = resolve_dtype("float32" if quantize is not None and dtype in (None, "auto") else dtype,
                                    self.device)
        self.quantize = check_quantize(quantize, self.device, self.dtype)
        if not isinstance(compile, bool):
            raise TypeError(f"compile must be True or False, got {compile!r}")
        if compile and self.quantize is not None:
            raise ValueError("compile=True cannot trace the C++ int8 layers of quantize='int8'; use one of them")

        chosen = first_given(pooling, preset_config and preset_config.pooling, None)
        if chosen is None and "pooling_error" in st_config:
            raise ValueError(st_config["pooling_error"])
        self.pooling = first_given(chosen, st_config.get("pooling"), "mean")
        if self.pooling not in POOLING_MODES:
            raise ValueError(f"unknown pooling {self.pooling!r}; expected one of {', '.join(POOLING_MODES)}")
        self.normalize = bool(first_given(normalize, preset_config and preset_config.normalize,
                                    st_config.get("normalize"), False))
        self.text_pairs = bool(preset_config and preset_config.text_pairs)
        self.append_eos = bool(preset_config and preset_config.append_eos)
        self.prompts: dict[str, str] = {**st_config.get("prompts", {}),
                                        **(preset_config.prompts if preset_config else {})}
        self.lowercase = bool(st_config.get("do_lower_case", False))

        self.tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
        if not self.tokenizer.is_fast:
            raise ValueError(f"{model_dir}: fastret needs a fast (Rust) tokenizer (tokenizer.json)")
        self.model = load_model(AutoModel, model_dir).to(device=self.device, dtype=self.dtype).eval()
        if self.quantize == "int8":
            quantize_linear_layers(self.model)
        if packed is not True and packed is not False and packed != "auto":
            raise ValueError(f"packed must be True, False or 'auto', got {packed!r}")
        if packed == "auto":
            packed = self.device.type == "cuda" and supports_packed(self.model)
        if compile and not packed:
            raise ValueError("compile=True compiles the packed model and this encoder runs padded (packed=False, "
                             "or packed='auto' off CUDA or for a model type it does not wire): pass packed=True")
        # CLS pooling reads each text's first token only: a BERT-family model's last layer runs on those rows
        first_token_only = self.pooling == "cls" and self.model.config.model_type == "bert"
        self.packed_model: PackedModel | None = PackedModel(
            self.model, compile=compile, first_token_only=first_token_only) if packed else None

        self.max_length = resolve_max_length(self.model, self.tokenizer, max_length,
                                             preset_config and preset_config.max_length, st_config.get("max_length"))
        self._backend = truncating_tokenizer(self.tokenizer, self.max_length - 1 if self.append_eos else self.max_length)
        self._eos_id = self.tokenizer.eos_token_id
        if self.append_eos and self._eos_id is None:
            raise ValueError(f"{model_dir}: the preset appends EOS but the tokenizer has no eos_token")
        pad = self.tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else (self._eos_id if self._eos_id is not None else 0)
        self._uses_token_types = "token_type_ids" in self.tokenizer.model_input_names
        self.model_dir = model_dir
        # texts per tokenizer call in `embed`: chunks overlap the model on a GPU; None: all at once
        self.tokenize_chunk: int | None = TOKENIZE_CHUNK if self.device.type != "cpu" else None

    # ------------------------------------------------------------------ properties

    @property
    def dim(self) -> int:
        """Embedding dimension."""
        return int(self.model.config.hidden_size)

    def get_sentence_embedding_dimension(self) -> int:
        """Embedding dimension (sentence-transformers' name)."""
        return self.dim

    def __repr__(self) -> str:
        return (f"fastret.Encoder({str(self.model_dir)!r}, device={str(self.device)!r}, dtype={self.dtype}, "
                f"pooling={self.pooling!r}, normalize={self.normalize}, max_length={self.max_length}"
                + f", packed={self.packed_model is not None}"
                + (", compile=True" if self.packed_model is not None and self.packed_model.compile else "")
                + (f", quantize={self.quantize!r})" if self.quantize else ")"))

    # ------------------------------------------------------------------ encoding

    def encode(self, sentences: str | Sequence[Any], batch_size: int = 32, normalize_embeddings: bool | None = None,
               convert_to_numpy: bool = True, convert_to_tensor: bool = False,
               show_progress_bar: bool | None = None, prompt: str | None = None, prompt_name: str | None = None,
               precision: str = "float32", max_tokens_per_batch: int | None = None):
        """Embed texts, returned in input order (mirrors `SentenceTransformer.encode`).

        Args:
            sentences: a str, or a list of str (of (title, abstract) pairs with the medcpt-article
                preset). Texts are stripped of surrounding whitespace, as sentence-transformers does.
            batch_size: most texts per forward pass.
            normalize_embeddings: True forces L2 normalization; None or False keep the model's
                convention (as in sentence-transformers, False does not undo a Normalize module).
            convert_to_numpy: numpy output (default); False gives a list of 1-D tensors.
            convert_to_tensor: one torch tensor on the encoder's device.
            show_progress_bar: tqdm bar with texts/s; default on for more than 256 texts.
            prompt: a prefix for every text (wins over prompt_name).
            prompt_name: a named prefix from the model's config or the preset (e.g. "query").
            precision: "float32", or "int8" for (codes int8 [n, d], scales float32 [n]) equal to
                `fastret.quantize_int8` of the float32 embeddings (computed in the same kernel pass).
            max_tokens_per_batch: most tokens per batch (padded tokens on the padded path, the texts'
                own on the packed one); default batch_size * max_length. Texts are sorted by
                length, so short texts share larger batches.

        Returns:
            float32 [n, d] (numpy, tensor, or list of tensors); [d] for a single str. With
            precision="int8", a (codes, scales) tuple of the same kinds.

        Raises:
            TypeError: a text that is not a str (the message gives its position).
            ValueError: unknown precision or prompt_name, bad batch_size.
        """
        single = isinstance(sentences, str) or (self.text_pairs and isinstance(sentences, tuple))
        texts = [sentences] if single else sentences
        if not isinstance(texts, (list, tuple)):
            raise TypeError(f"sentences must be a str or a list of str, got {type(sentences).__name__}")
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
        prefix = self.prompt_prefix(prompt, prompt_name)
        inputs = [self.prepare(text, i, prefix) for i, text in enumerate(texts)]
        normalize = self.normalize or bool(normalize_embeddings)
        show = show_progress_bar if show_progress_bar is not None else len(inputs) > 256
        vectors, codes, scales = self.embed(inputs, batch_size, normalize, precision == "int8",
                                            max_tokens_per_batch, show)
        outputs = (vectors,) if codes is None else (codes, scales)
        if single:
            outputs = tuple(o[0] for o in outputs)
        if convert_to_tensor:
            outputs = tuple(o.to(self.device) for o in outputs)
        elif convert_to_numpy:
            outputs = tuple(o.numpy() for o in outputs)
        else:
            outputs = tuple(list(o) if o.ndim == 2 else o for o in outputs)
        return outputs[0] if codes is None else outputs

    def encode_corpus(self, corpus, out_dir, *, batch_size: int = 32, shard_size: int = 65536,
                      store_float16: bool = False, max_tokens_per_batch: int | None = None,
                      prompt: str | None = None, prompt_name: str | None = None, show_progress_bar: bool = True,
                      bm25: bool = False, fields: bool | list[str] | None = None):
        """Stream a corpus into a sharded, resumable embedding store in `out_dir`.

        Args:
            corpus: a BEIR corpus file (.jsonl or .jsonl.gz: {"_id", "title", "text"} per line), a
                BEIR directory holding one, or an iterable of such dicts or of str.
            out_dir: the store directory (created if missing). Rerunning with the same settings
                after an interruption skips the finished shards and ends with identical files.
            shard_size: documents per shard; memory holds a few shards (one read ahead, one
                encoding, one being written).
            store_float16: also store float16 vectors (for `Index.search(..., rescore=True)`).
            batch_size, max_tokens_per_batch, prompt, prompt_name: as in `encode`.
            show_progress_bar: tqdm bar with documents/s.
            bm25: also build a BM25 index of the documents in the store (for hybrid search,
                `fastret.search.hybrid`); reads the corpus a second time, so not for one-shot iterators.
            fields: also store each document's fields beside its shard (fastret.storage.fields), for
                `Index.fields` and filtered search: True for every key of the records but the
                id (title, text, year, mesh, ...), or a list of keys.

        Returns:
            the finished `fastret.storage.store.Store` (`Index.load(out_dir)` loads it as an index).

        Raises:
            ValueError: a malformed corpus line (file and line number; no partial shard is left),
                or a store in `out_dir` made with other settings.

        Under `torchrun`, each rank encodes every world_size-th shard and rank 0 writes the manifest.
        """
        return encode_corpus(self, corpus, out_dir, batch_size=batch_size, shard_size=shard_size,
                             store_float16=store_float16, max_tokens_per_batch=max_tokens_per_batch,
                             prompt=prompt, prompt_name=prompt_name, show_progress_bar=show_progress_bar,
                             bm25=bm25, fields=fields)

    def embed(self, inputs: list, batch_size: int, normalize: bool, quantize: bool,
              max_tokens_per_batch: int | None = None, show_progress_bar: bool = False,
              input_stats: dict | None = None):
        """Embed prepared inputs (see `prepare`): float32 [n, d], and int8 [n, d] + float32 [n] scales
        when `quantize` (else None, None); CPU tensors in input order.

        The inputs are tokenized `tokenize_chunk` at a time in a background thread, one chunk
        ahead of the model, so that on a GPU the tokenizer (CPU) and the model work at the same
        time; each chunk is cut into length-sorted batches of its own.

        Truncated and empty inputs are warned about, or, with `input_stats`, counted into it
        ("texts", "truncated", "empty") for the caller to report once."""
        stats = {"texts": len(inputs), "truncated": 0,
                 "empty": sum(1 for text in inputs if not (text if isinstance(text, str) else "".join(text)))}
        max_tokens = max_tokens_per_batch or batch_size * self.max_length
        outputs = self._allocate(len(inputs), quantize)
        step = self.tokenize_chunk or max(1, len(inputs))
        chunks = ((start, self.tokenize(inputs[start:start + step])) for start in range(0, len(inputs), step))
        from tqdm.auto import tqdm

        with tqdm(total=len(inputs), unit="text", desc="encode", disable=not show_progress_bar) as bar:
            for start, (token_ids, type_ids, truncated) in prefetch(chunks, depth=1):
                stats["truncated"] += sum(truncated)
                self._embed_into(outputs, start, token_ids, type_ids, batch_size, max_tokens, normalize, quantize, bar)
        if input_stats is None:
            warn_about_inputs(stats, self.max_length)
        else:
            for key, value in stats.items():
                input_stats[key] = input_stats.get(key, 0) + value
        return outputs

    # ------------------------------------------------------------------ the steps of `embed`, for callers
    # that tokenize first and run the model later (the HTTP server batches many requests' tokens)

    def prompt_prefix(self, prompt: str | None = None, prompt_name: str | None = None) -> str:
        """The text put before every input: `prompt`, else the named prompt, else "".

        Raises:
            TypeError: prompt is not a str.
            ValueError: prompt_name is not one of this encoder's prompts (the message lists them).
        """
        if prompt is not None:
            if not isinstance(prompt, str):
                raise TypeError(f"prompt must be a str, got {type(prompt).__name__}")
            return prompt
        if prompt_name is None:
            return ""
        if prompt_name not in self.prompts:
            known = ", ".join(sorted(self.prompts)) or "none"
            raise ValueError(f"unknown prompt_name {prompt_name!r}; this encoder's prompts: {known}")
        return self.prompts[prompt_name]

    def tokenize(self, inputs: list) -> tuple[list[list[int]], list[list[int]] | None, list[bool]]:
        """Token ids of prepared inputs (see `prepare`), as the model takes them.

        Args:
            inputs: n prepared inputs (str, or (str, str) pairs with the medcpt-article preset).

        Returns:
            (token_ids, type_ids, truncated): per input its token ids (special tokens included,
            cut to max_length, EOS appended where the preset asks), its token type ids (None for
            models without them), and whether it was longer than max_length.
        """
        encodings = self._backend.encode_batch(inputs, add_special_tokens=True)
        token_ids = [enc.ids for enc in encodings]
        if self.append_eos:
            token_ids = [ids + [self._eos_id] for ids in token_ids]
        type_ids = [enc.type_ids for enc in encodings] if self._uses_token_types else None
        if type_ids is not None and self.append_eos:
            type_ids = [types + [types[-1] if types else 0] for types in type_ids]
        return token_ids, type_ids, [bool(enc.overflowing) for enc in encodings]

    def embed_tokens(self, token_ids: list[list[int]], type_ids: list[list[int]] | None, max_texts: int,
                     max_tokens: int, normalize: bool, quantize: bool = False, show_progress_bar: bool = False):
        """Run the model on tokenized inputs (see `tokenize`), in length-sorted batches.

        Args:
            token_ids: n lists of token ids; type_ids: n lists of type ids, or None.
            max_texts: most texts per forward pass.
            max_tokens: most tokens per forward pass (texts x longest when padded, the texts' own
                when packed).
            normalize: L2-normalize the embeddings; quantize: also return int8 codes and scales.
            show_progress_bar: tqdm bar with texts/s.

        Returns:
            (vectors float32 [n, d], codes int8 [n, d] or None, scales float32 [n] or None), CPU
            tensors in input order.
        """
        outputs = self._allocate(len(token_ids), quantize)
        from tqdm.auto import tqdm

        with tqdm(total=len(token_ids), unit="text", desc="encode", disable=not show_progress_bar) as bar:
            self._embed_into(outputs, 0, token_ids, type_ids, max_texts, max_tokens, normalize, quantize, bar)
        return outputs

    def prepare(self, text: Any, position: int, prefix: str = ""):
        """One input as the tokenizer takes it: the prefixed, stripped str, or a (str, str) pair.

        Raises TypeError naming `position` for anything else."""
        if self.text_pairs and isinstance(text, (tuple, list)):
            if len(text) != 2 or not all(isinstance(part, str) for part in text):
                raise TypeError(f"sentences[{position}] must be a (title, abstract) pair of str, got {text!r:.80}")
            first, second = (prefix + text[0]).strip(), text[1].strip()
            return (first.lower(), second.lower()) if self.lowercase else (first, second)
        if not isinstance(text, str):
            expected = "a str or a (title, abstract) pair" if self.text_pairs else "a str"
            raise TypeError(f"sentences[{position}] is {type(text).__name__}; expected {expected}")
        text = (prefix + text).strip()
        return text.lower() if self.lowercase else text

    def _allocate(self, n: int, quantize: bool):
        """Empty CPU outputs for n texts: vectors float32 [n, d], codes int8 [n, d] and scales [n] (or None)."""
        vectors = torch.empty((n, self.dim), dtype=torch.float32)
        codes = torch.empty((n, self.dim), dtype=torch.int8) if quantize else None
        scales = torch.empty(n, dtype=torch.float32) if quantize else None
        return vectors, codes, scales

    def _embed_into(self, outputs, offset: int, token_ids, type_ids, max_texts: int, max_tokens: int,
                    normalize: bool, quantize: bool, bar) -> None:
        """Embed tokenized texts into rows offset.. of `outputs` (from `_allocate`), in length-sorted
        batches; collating runs one batch ahead in a thread; on CUDA each batch's results copy to
        the host while the next batch runs (the host waits for a batch only once the next one is
        queued); `bar` counts the texts."""
        if not token_ids:
            return
        if self.append_eos and any(not ids or ids[-1] != self._eos_id for ids in token_ids):
            raise RuntimeError("last-token pooling expected EOS at every row's last real token")
        pin = self.device.type == "cuda"
        packed = self.packed_model is not None

        def collated():
            for rows in plan_batches([len(ids) for ids in token_ids], max_texts, max_tokens, padded=not packed):
                ids = [token_ids[r] for r in rows]
                types = None if type_ids is None else [type_ids[r] for r in rows]
                if packed:
                    batch = collate_packed(ids, types)
                    yield rows, (batch.pin_memory() if pin else batch)
                else:
                    batch = collate(ids, types, self.pad_id)
                    yield rows, ({k: v.pin_memory() for k, v in batch.items()} if pin else batch)

        def write(rows, parts, copied) -> None:
            if copied is not None:
                copied.synchronize()
            if quantize:
                check_quantizable(parts[2])  # on the host now: free
            index = torch.from_numpy(rows + offset)
            for target, part in zip(outputs, parts):
                target[index] = part
            bar.update(len(rows))

        pending = None  # the previous batch: (rows, host tensors, CUDA event of their copy)
        with torch.inference_mode():
            for rows, batch in prefetch(collated()):
                pooled = self._forward(batch, normalize, quantize)
                parts = tuple(part.to("cpu", non_blocking=pin) for part in pooled)  # pinned when non_blocking
                copied = None
                if pin:
                    copied = torch.cuda.Event()
                    copied.record()
                if pending is not None:
                    write(*pending)
                pending = (rows, parts, copied)
            if pending is not None:
                write(*pending)

    def _forward(self, batch, normalize: bool, quantize: bool) -> tuple[torch.Tensor, ...]:
        """One collated batch (host tensors) through the model and the pooling kernel, on the
        encoder's device: (vectors,) or (vectors, codes, scales), queued without waiting."""
        if isinstance(batch, PackedBatch):
            batch = batch.to(self.device, non_blocking=True)
            hidden = self.packed_model(batch)  # [N, hidden]; [B, hidden] with first_token_only
            bounds = batch.cu_seqlens
            if self.packed_model.first_token_only:  # one row per text, already its first token
                bounds = torch.arange(batch.num_texts + 1, dtype=bounds.dtype, device=bounds.device)
            pooled = pool_normalize_packed(hidden, bounds, mode=self.pooling, normalize=normalize, quantize=quantize)
        else:
            batch = {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}
            hidden = self.model(**batch).last_hidden_state  # [B, L, hidden]
            pooled = pool_normalize(hidden, batch["attention_mask"], mode=self.pooling, normalize=normalize,
                                    quantize=quantize)
        return pooled if quantize else (pooled,)
