"""Hugging Face encoders run on packed batches: no pad token in any matmul.

A padded batch [B, L] spends B x L tokens of work on sum(lengths) real ones; a length-sorted
token-budget batch keeps that waste small, but not zero, and attention masks cost their own
passes. Here the B texts of a `fastret.encode.batches.PackedBatch` go through the model as one
[N, hidden] matrix (N = the real tokens): embeddings with each token's position in its own text,
every linear layer and norm over [N, hidden], attention per text (`varlen_attention`), and the
output [N, hidden] pooled by `fastret.kernels.pooling.pool_normalize_packed`. The model's own
modules (its nn.Linear or int8 layers, norms, activations, rotary tables) compute every step; only
the wiring between them is written here, once per family:

    "bert"                      post-norm encoder, absolute positions (BERT, MiniLM, BGE, MedCPT)
    "gpt_neox"                  pre-norm decoder, partial rotary, parallel residual (Pythia, BMRetriever-1B)
    "llama", "qwen2", "mistral", "gemma"
                                pre-norm decoder, RMSNorm, rotary, grouped-query attention, gated MLP
                                (Gemma's embedding scale is inside its embedding module: BMRetriever-2B)

The padded path (the model's own forward) is the reference: the same inputs give the same
hidden states at real tokens, to float rounding (the tests compare them).

Fusions, each a switch so that its gain is measured on its own (benchmarks/gpu_encode_paths.py):
fuse_qkv (one GEMM for q, k and v; by default on for BERT-family encoders, whose weight copy is
small, and off for decoders, where it would copy a large model's attention weights), and for
BERT-family layers fuse_add_norm
(residual add + LayerNorm in one Triton kernel, `fastret.kernels.add_layer_norm`) and
fuse_bias_gelu (the intermediate GEMM with its bias and GELU in the epilogue,
torch._addmm_activation: cuBLASLt on CUDA, where the GELU is the tanh approximation; exact on
the CPU), both off until a GPU run shows their gain.

compile=True runs the family's forward through torch.compile (inductor: its own fused kernels for
the elementwise steps and norms between the GEMMs), off until a GPU run shows its gain (see
`PackedModel` for the shape handling and why there are no CUDA graphs).
"""

from __future__ import annotations

import importlib.util
import types
import warnings

import torch
import torch.nn.functional as F
from torch import nn

from ..kernels.add_layer_norm import add_layer_norm
from .batches import PackedBatch
from .varlen_attention import auto_backends, first_token_attention, pick_backend, varlen_attention

PACKED_MODEL_TYPES = ("bert", "gpt_neox", "llama", "qwen2", "mistral", "gemma")
GELU_ACTIVATIONS = ("gelu", "gelu_new", "gelu_pytorch_tanh", "gelu_fast")
# What varies from one PackedBatch to the next, by the names torch.compile gives them (the family
# forwards take it as `batch`): its tensors' one dimension (tokens or texts) and the longest and
# shortest text; symbolic from the first compile, so that other batches reuse the compiled code.
COMPILE_DYNAMIC = ",".join(f"L['batch'].{name}" for name in (
    "input_ids", "position_ids", "token_type_ids", "cu_seqlens", "lengths", "padded_index", "max_seqlen", "min_seqlen"))


def supports_packed(model: nn.Module) -> bool:
    """Whether `PackedModel` can run `model` (a Hugging Face base model, e.g. from AutoModel)."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    return model_type in PACKED_MODEL_TYPES and _unsupported(model) is None


class PackedModel:
    """A Hugging Face base model run on `PackedBatch`es: `packed(batch)` -> hidden [N, hidden].

    Args:
        model: a BertModel, GPTNeoXModel, LlamaModel, Qwen2Model, MistralModel or GemmaModel (eval
            mode), its weights on the device and in the dtype to run.
        attention: "auto" or one of `fastret.encode.varlen_attention.ATTENTION_BACKENDS`. With
            "auto", a backend that fails on the first batch (a kernel this GPU or build lacks)
            is replaced by the next of `auto_backends`, with a RuntimeWarning; once a batch has
            run, errors are raised.
        fuse_qkv: True, False or "auto" (True for the BERT family, False for decoders): one GEMM
            for the query, key and value projections: their weights concatenated
            once (a copy, made again if a projection module or its weights change, e.g. after an
            optimizer step or a LoRA wrap); only where all three are nn.Linear (int8 layers keep
            three calls).
        fuse_add_norm: BERT family: residual add + LayerNorm in one kernel (nn.LayerNorm only).
        fuse_bias_gelu: BERT family with a GELU activation: the intermediate layer's bias and GELU
            in its GEMM's epilogue (nn.Linear only; tanh-approximate GELU on CUDA).
        compile: run the forward through `torch.compile` (inductor, its default mode): the
            elementwise steps and norms between the GEMMs become generated fused kernels (so
            fuse_add_norm, a hand-written one, is refused beside it). Shapes: a packed batch's
            token count, text count and longest text vary from batch to batch, so they are
            symbolic from the first compile (`COMPILE_DYNAMIC`; the weights stay static) and one
            graph serves every batch; a batch of a single text compiles one more (torch
            specializes sizes of 1). Each compile takes seconds to minutes, once. Each PackedModel
            compiles its own (torch's limit of 8 graphs per function applies to each). No CUDA
            graphs ("reduce-overhead"): a graph replays one recorded shape, so packed batches
            would record anew nearly every batch, unless padded to a few bucket sizes, which
            brings back the padding this path removes; and at encoding batch sizes (tens of
            thousands of tokens) a BERT-base forward is milliseconds of GPU work against its ~200
            kernel launches, queued ahead because nothing waits for the device. The "nested"
            attention backend breaks the graph (its nested tensors read device values): it is
            refused with compile, and "auto" passes over it. With "auto", batches run eagerly
            while the backend has not run and fallbacks are left (a failure then is the backend's,
            not the compiler's), compiled from then on.

        first_token_only: BERT family: compute the last layer for each text's first token only
            and return those rows, [B, hidden] (all that CLS pooling and a cross-encoder's pooler
            read; zeros for an empty text, as pooling gives): the keys and values of that layer
            still come from every token, but its query, attention output and feed-forward run on
            B rows instead of N (a sixth of MiniLM's work, a twelfth of BERT-base's). The rows
            equal the full forward's first rows, to float rounding.

    Raises:
        ValueError: a model type or configuration this module does not wire (the message says
            which), an attention backend that cannot run on the model's device and dtype,
            compile with fuse_add_norm or with "nested" attention, or first_token_only on a decoder.
        TypeError: a switch that is not True or False.
        RuntimeError: compile where inductor cannot build kernels (no C++ compiler for the CPU, no
            Triton for CUDA; the message names the fix).
    """

    def __init__(self, model: nn.Module, attention: str = "auto", fuse_qkv: bool | str = "auto",
                 fuse_add_norm: bool = False, fuse_bias_gelu: bool = False, compile: bool = False,
                 first_token_only: bool = False):
        model_type = getattr(getattr(model, "config", None), "model_type", None)
        if model_type not in PACKED_MODEL_TYPES:
            raise ValueError(f"packed encoding wires the model types {', '.join(PACKED_MODEL_TYPES)}; "
                             f"got {model_type!r} (use the padded path: packed=False)")
        problem = _unsupported(model)
        if problem is not None:
            raise ValueError(f"packed encoding cannot run this {model_type} model: {problem} (use packed=False)")
        if fuse_qkv == "auto":
            fuse_qkv = model_type == "bert"
        flags = {"fuse_qkv": fuse_qkv, "fuse_add_norm": fuse_add_norm, "fuse_bias_gelu": fuse_bias_gelu,
                 "compile": compile, "first_token_only": first_token_only}
        for name, flag in flags.items():
            if not isinstance(flag, bool):
                raise TypeError(f"{name} must be True or False, got {flag!r}")
        if first_token_only and model_type != "bert":
            raise ValueError(f"first_token_only serves BERT-family encoders (CLS pooling, cross-encoders), not "
                             f"{model_type}")
        if (fuse_add_norm or fuse_bias_gelu) and model_type != "bert":
            raise ValueError(f"fuse_add_norm and fuse_bias_gelu fuse BERT-family layers, not {model_type}")
        if fuse_bias_gelu and getattr(model.config, "hidden_act", None) not in GELU_ACTIVATIONS:
            raise ValueError(f"fuse_bias_gelu needs a GELU activation, the model has {model.config.hidden_act!r}")
        if compile and fuse_add_norm:
            raise ValueError("compile fuses the residual add and LayerNorm itself (inductor); fuse_add_norm is the "
                             "eager path's kernel: set one of them")
        if compile and attention == "nested":
            raise ValueError("attention 'nested' breaks torch.compile's graph (its nested tensors read device "
                             "values); with compile use 'auto', 'padded' or a flash kernel")
        weight = next(model.parameters())
        self.model = model
        self.config = model.config
        self.causal = model_type != "bert"
        if attention == "auto":  # the first that can run here; the others are fallbacks for the first batch
            candidates = [name for name in auto_backends(weight.device, weight.dtype, self.causal)
                          if not (compile and name == "nested")]
            self.attention, self._fallbacks = candidates[0], candidates[1:]
        else:
            self.attention, self._fallbacks = pick_backend(attention, weight.device, weight.dtype, self.causal), []
        if compile:
            problem = _compile_problem(weight.device)
            if problem is not None:
                raise RuntimeError(f"compile=True: {problem}, or run eagerly (compile=False)")
        self._proven = False  # a batch has run with self.attention
        self.fuse_qkv, self.fuse_add_norm, self.fuse_bias_gelu = fuse_qkv, fuse_add_norm, fuse_bias_gelu
        self.compile = compile
        self.first_token_only = first_token_only
        self._fused: dict[int, tuple] = {}  # layer -> (key of the projections it was made from, weight, bias)
        self._qkv: list = []  # this forward's fused projections per layer (see `_fused_projections`)
        self._eager = {"bert": self._bert, "gpt_neox": self._gpt_neox}.get(model_type, self._llama)
        self._compiled = torch.compile(_own_code(self._eager)) if compile else None

    def __repr__(self) -> str:
        return (f"PackedModel({self.config.model_type}, attention={self.attention!r}, fuse_qkv={self.fuse_qkv}, "
                f"fuse_add_norm={self.fuse_add_norm}, fuse_bias_gelu={self.fuse_bias_gelu}, compile={self.compile}"
                + (", first_token_only=True)" if self.first_token_only else ")"))

    def __call__(self, batch: PackedBatch) -> torch.Tensor:
        """Hidden states of the batch's tokens, [N, hidden] in the model's dtype ([B, hidden], each
        text's first token, with first_token_only; inference: run it under torch.inference_mode or
        no_grad). Reads no device value on the host."""
        if not isinstance(batch, PackedBatch):
            raise TypeError(f"PackedModel takes a PackedBatch (fastret.encode.batches.collate_packed), "
                            f"got {type(batch).__name__}")
        window = getattr(self.config, "sliding_window", None)
        if not getattr(self.config, "use_sliding_window", True):
            window = None
        if window is not None and batch.max_seqlen > window:
            raise ValueError(f"a text of {batch.max_seqlen} tokens is longer than the model's sliding window "
                             f"({window}), which packed attention does not apply; use packed=False")
        while True:
            compiled = self._compiled is not None and (self._proven or not self._fallbacks)
            self._qkv = self._fused_projections()
            try:
                hidden = self._run_compiled(batch) if compiled else self._eager(batch)
            except torch.OutOfMemoryError:
                raise
            except Exception as error:  # only until one batch has run; then raised
                if self._proven or not self._fallbacks:
                    raise
                failed, self.attention = self.attention, self._fallbacks.pop(0)
                warnings.warn(f"packed attention {failed!r} failed on the first batch ({type(error).__name__}: "
                              f"{str(error)[:200]}); using {self.attention!r}", RuntimeWarning, stacklevel=2)
                continue
            self._proven = True
            return hidden

    def _run_compiled(self, batch: PackedBatch) -> torch.Tensor:
        """The compiled forward, what varies from batch to batch symbolic from the first compile
        (`COMPILE_DYNAMIC`); a failure of torch.compile itself raised as a RuntimeError that says so."""
        from torch._dynamo.exc import TorchDynamoException

        try:
            with torch.compiler.config.patch(dynamic_sources=COMPILE_DYNAMIC):
                return self._compiled(batch)
        except TorchDynamoException as error:
            reason = next(iter(str(error).strip().splitlines()), "")[:300]  # the rest: the chained error
            raise RuntimeError(f"torch.compile failed on the packed {self.config.model_type} model (attention "
                               f"{self.attention!r}): {type(error).__name__}: {reason}; run it eagerly "
                               f"(compile=False)") from error

    # ------------------------------------------------------------------ the families

    def _bert(self, batch: PackedBatch) -> torch.Tensor:
        emb = self.model.embeddings
        types = (emb.token_type_embeddings(batch.token_type_ids) if batch.token_type_ids is not None
                 else emb.token_type_embeddings.weight[0])  # type 0 everywhere: one row, broadcast
        x = emb.LayerNorm(emb.word_embeddings(batch.input_ids) + types + emb.position_embeddings(batch.position_ids))
        heads = self.config.num_attention_heads
        layers = self.model.encoder.layer
        for i, layer in enumerate(layers):  # x [N, hidden] throughout
            if self.first_token_only and i == len(layers) - 1:
                return self._bert_layer_on_first_tokens(i, x, batch)
            attention = layer.attention
            q, k, v = self._project(i, x, heads, heads)  # [N, heads, head_dim] each
            a = varlen_attention(q, k, v, batch, False, _scale(attention.self, q), self.attention)
            x = self._add_norm(attention.output.LayerNorm, attention.output.dense(a.flatten(1)), x)
            x = self._add_norm(layer.output.LayerNorm, layer.output.dense(self._intermediate(layer.intermediate, x)), x)
        return x

    def _bert_layer_on_first_tokens(self, i: int, x: torch.Tensor, batch: PackedBatch) -> torch.Tensor:
        """BERT layer i for each text's first token only: x [N, hidden] -> [B, hidden]. Keys and
        values from every token; the query, attention output and feed-forward of the B first rows."""
        layer = self.model.encoder.layer[i]
        attention, heads = layer.attention, self.config.num_attention_heads
        # an empty text's first row is another's (clamped into range): its output is zeroed below
        first = x.index_select(0, batch.cu_seqlens[:-1].long().clamp(max=x.shape[0] - 1))  # [B, hidden]
        q, k, v = self._project(i, x, heads, heads, queries=first)  # q [B, ...], k and v [N, heads, head_dim]
        a = first_token_attention(q, k, v, batch, _scale(attention.self, q))  # [B, heads, head_dim]
        y = self._add_norm(attention.output.LayerNorm, attention.output.dense(a.flatten(1)), first)
        y = self._add_norm(layer.output.LayerNorm, layer.output.dense(self._intermediate(layer.intermediate, y)), y)
        return torch.where((batch.lengths > 0)[:, None], y, y.new_zeros(()))  # [B, hidden]

    def _gpt_neox(self, batch: PackedBatch) -> torch.Tensor:
        x = self.model.embed_in(batch.input_ids)  # [N, hidden]
        cos, sin = (t[0] for t in self.model.rotary_emb(x[None], batch.position_ids[None]))  # [N, rotary dims]
        heads = self.config.num_attention_heads
        for layer in self.model.layers:
            attention = layer.attention
            qkv = attention.query_key_value(layer.input_layernorm(x)).view(x.shape[0], heads, -1)
            q, k, v = qkv.chunk(3, dim=-1)  # [N, heads, head_dim] each
            q, k = _rotary(q, cos, sin), _rotary(k, cos, sin)
            a = attention.dense(varlen_attention(q, k, v, batch, True, _scale(attention, q), self.attention).flatten(1))
            if layer.use_parallel_residual:
                x = layer.mlp(layer.post_attention_layernorm(x)) + a + x
            else:
                a = a + x
                x = layer.mlp(layer.post_attention_layernorm(a)) + a
        return self.model.final_layer_norm(x)

    def _llama(self, batch: PackedBatch) -> torch.Tensor:
        x = self.model.embed_tokens(batch.input_ids)  # [N, hidden]
        cos, sin = (t[0] for t in self.model.rotary_emb(x[None], batch.position_ids[None]))  # [N, head_dim]
        heads, kv_heads = self.config.num_attention_heads, self.config.num_key_value_heads
        for i, layer in enumerate(self.model.layers):
            attention = layer.self_attn
            q, k, v = self._project(i, layer.input_layernorm(x), heads, kv_heads)
            q, k = _rotary(q, cos, sin), _rotary(k, cos, sin)
            a = varlen_attention(q, k, v, batch, True, _scale(attention, q), self.attention)  # [N, heads, head_dim]
            x = x + attention.o_proj(a.flatten(1))
            x = x + layer.mlp(layer.post_attention_layernorm(x))
        return self.model.norm(x)

    # ------------------------------------------------------------------ shared steps

    def _add_norm(self, norm: nn.Module, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """norm(y + x) for [N, hidden] y and x: one kernel with fuse_add_norm."""
        if self.fuse_add_norm and type(norm) is nn.LayerNorm and norm.weight is not None and norm.bias is not None:
            return add_layer_norm(y, x, norm.weight, norm.bias, norm.eps)
        return norm(y + x)

    def _intermediate(self, intermediate: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """A BERT layer's dense + activation of x [N, hidden]: one GEMM with fuse_bias_gelu."""
        dense = intermediate.dense
        if self.fuse_bias_gelu and type(dense) is nn.Linear and dense.bias is not None:
            return torch._addmm_activation(dense.bias, x, dense.weight.t(), use_gelu=True)
        return intermediate(x)

    def _projections(self, i: int) -> tuple[nn.Module, nn.Module, nn.Module]:
        """Layer i's query, key and value projections (BERT, Llama family)."""
        if self.config.model_type == "bert":
            attention = self.model.encoder.layer[i].attention.self
            return attention.query, attention.key, attention.value
        attention = self.model.layers[i].self_attn
        return attention.q_proj, attention.k_proj, attention.v_proj

    def _project(self, i: int, x: torch.Tensor, heads: int, kv_heads: int, queries: torch.Tensor | None = None):
        """Layer i's q [M, heads, head_dim] of `queries` [M, hidden] (default x), k and v
        [N, kv_heads, head_dim] of x [N, hidden]: one GEMM with the fused weights when the queries
        are x, their q rows and k + v rows apart when they are not."""
        fused = self._qkv[i] if self._qkv else None
        n = x.shape[0]
        if fused is None:
            q_proj, k_proj, v_proj = self._projections(i)
            q = q_proj(x if queries is None else queries)
            return q.view(q.shape[0], heads, -1), k_proj(x).view(n, kv_heads, -1), v_proj(x).view(n, kv_heads, -1)
        if queries is None:
            qkv = F.linear(x, *fused).view(n, heads + 2 * kv_heads, -1)  # [N, q + k + v heads, head_dim]
            return qkv.split((heads, kv_heads, kv_heads), dim=1)  # three views
        weight, bias = fused  # rows: q, then k and v
        rows = weight.shape[0] * heads // (heads + 2 * kv_heads)
        q = F.linear(queries, weight[:rows], None if bias is None else bias[:rows]).view(queries.shape[0], heads, -1)
        kv = F.linear(x, weight[rows:], None if bias is None else bias[rows:]).view(n, 2 * kv_heads, -1)
        return (q, *kv.split((kv_heads, kv_heads), dim=1))

    def _fused_projections(self) -> list:
        """Each layer's `_fused_weights` (or None), [] without fuse_qkv or for GPT-NeoX (whose layers
        have one q/k/v projection already). Made eagerly before each forward, so that a compiled
        forward reads ready tensors and traces no cache lookups."""
        if not self.fuse_qkv or self.config.model_type == "gpt_neox":
            return []
        layers = self.model.encoder.layer if self.config.model_type == "bert" else self.model.layers
        return [self._fused_weights(i, self._projections(i)) for i in range(len(layers))]

    def _fused_weights(self, i: int, projections) -> tuple[torch.Tensor, torch.Tensor | None] | None:
        """(weight [q + k + v, hidden], bias or None) of three nn.Linear (whose heads share one
        head_dim, as in every wired family), made once and again whenever a module, weight or bias
        is replaced or changed in place; else None."""
        if not all(type(p) is nn.Linear for p in projections):
            return None
        tensors = [t for p in projections for t in (p.weight, p.bias)]
        key = tuple((id(t), t._version) if t is not None else None for t in tensors)
        cached = self._fused.get(i)
        if cached is not None and cached[0] == key:
            return cached[2:]
        biases = [p.bias for p in projections]
        if any(b is None for b in biases) and not all(b is None for b in biases):
            return None
        with torch.no_grad():
            weight = torch.cat([p.weight for p in projections])
            bias = None if biases[0] is None else torch.cat(biases)
        self._fused[i] = (key, tensors, weight, bias)  # tensors: their ids stay theirs
        return self._fused[i][2:]


def _scale(attention: nn.Module, q: torch.Tensor) -> float:
    """The attention module's softmax scale: its own `scaling` (transformers >= 4.48 and a model's
    own choice, e.g. Gemma's), else 1 / sqrt(head_dim) of q [N, heads, head_dim]."""
    return float(getattr(attention, "scaling", q.shape[-1] ** -0.5))


def _rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary embedding of x [N, heads, head_dim] at each token's position: cos, sin [N, R] (R <=
    head_dim: the first R dimensions rotate, as in the models' apply_rotary_pos_emb)."""
    cos, sin = cos[:, None, :], sin[:, None, :]  # [N, 1, R]
    rotary = cos.shape[-1]
    part, rest = x[..., :rotary], x[..., rotary:]
    half = rotary // 2
    rotated = torch.cat((-part[..., half:], part[..., :half]), dim=-1)  # rotate_half
    return torch.cat((part * cos + rotated * sin, rest), dim=-1)


def _own_code(method):
    """`method` bound to a copy of its function with a code object of its own. torch.compile keeps
    compiled graphs, and counts them against its recompile limit (8), per code object: without a
    copy every PackedModel of a process would share one budget for its family's forward (a model
    in fp16 and one in bf16 with two variants each would spend it, and later ones run eagerly)."""
    function = method.__func__
    copy = types.FunctionType(function.__code__.replace(), function.__globals__, function.__name__,
                              function.__defaults__, function.__closure__)
    return types.MethodType(copy, method.__self__)


def _compile_problem(device: torch.device) -> str | None:
    """Why inductor cannot build kernels for `device` in this process (with the fix), or None."""
    if device.type == "cuda" and importlib.util.find_spec("triton") is None:
        return "inductor generates Triton kernels for CUDA and Triton is not installed: pip install triton"
    if device.type == "cpu":
        from torch._inductor.cpp_builder import get_cpp_compiler

        try:
            get_cpp_compiler()
        except Exception as error:  # inductor's own search: InvalidCxxCompiler where none runs
            return (f"inductor builds CPU kernels with a C++ compiler and found none ({type(error).__name__}): "
                    f"install g++ (apt-get install g++) or set CXX to one before Python starts")
    return None


def _unsupported(model: nn.Module) -> str | None:
    """Why this model's configuration is outside what the packed wiring computes, or None."""
    config = model.config
    if config.model_type == "bert":
        if getattr(config, "position_embedding_type", "absolute") not in (None, "absolute"):
            return f"position_embedding_type {config.position_embedding_type!r} (only absolute)"
        if getattr(config, "is_decoder", False) or getattr(config, "add_cross_attention", False):
            return "a decoder BERT (is_decoder / add_cross_attention)"
    if getattr(config, "layer_types", None) and any(t != "full_attention" for t in config.layer_types):
        return f"layer types {sorted(set(config.layer_types))} (only full attention)"
    return None
