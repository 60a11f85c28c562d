"""Packed (unpadded) encoding against the padded reference: fastret.encode.packed.PackedModel
against each model family's own forward, fastret.encode.varlen_attention's backends against
attention run one text at a time, and Encoder(packed=True) against Encoder(packed=False) on
all-MiniLM-L6-v2 and the tiny test models."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import fastret
from fastret.encode.batches import collate, collate_packed
from fastret.encode.packed import PackedModel, supports_packed
from fastret.encode.varlen_attention import ATTENTION_BACKENDS, can_run, pick_backend, varlen_attention

LENGTHS = [9, 3, 17, 1, 5, 12]


def tiny(family, **overrides):
    """A 2-layer model of `family` with random weights, in eval mode, SDPA attention."""
    import transformers

    configs = {
        "bert": ("BertConfig", "BertModel", dict(type_vocab_size=2)),
        "gpt_neox": ("GPTNeoXConfig", "GPTNeoXModel", dict(use_parallel_residual=True)),
        "llama": ("LlamaConfig", "LlamaModel", dict(num_key_value_heads=2)),
        "qwen2": ("Qwen2Config", "Qwen2Model", dict(num_key_value_heads=2)),
        "gemma": ("GemmaConfig", "GemmaModel", dict(num_key_value_heads=1, head_dim=16)),
        "gpt2": ("GPT2Config", "GPT2Model", dict(n_embd=32, n_layer=1, n_head=4)),
    }
    config_name, model_name, extra = configs[family]
    config = getattr(transformers, config_name)(vocab_size=100, hidden_size=32, num_hidden_layers=2,
                                                num_attention_heads=4, intermediate_size=64,
                                                max_position_embeddings=64, **{**extra, **overrides})
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    return getattr(transformers, model_name)(config).eval()


def texts(lengths=LENGTHS, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(1, 100, (n,), generator=g).tolist() for n in lengths]


def padded_states(model, token_ids, type_ids=None):
    """The model's own forward on the right-padded batch, real tokens only, packed: [N, hidden]."""
    with torch.no_grad():
        hidden = model(**collate(token_ids, type_ids, pad_id=0)).last_hidden_state
    return torch.cat([hidden[b, : len(ids)] for b, ids in enumerate(token_ids)])


# --------------------------------------------------------------------------------- PackedModel


@pytest.mark.parametrize("fuse_qkv", [True, False])
@pytest.mark.parametrize("family, overrides", [
    ("bert", {}),
    ("gpt_neox", {}),
    ("gpt_neox", {"use_parallel_residual": False}),
    ("llama", {}),
    ("qwen2", {}),
    ("gemma", {}),
], ids=["bert", "neox-parallel", "neox-sequential", "llama-gqa", "qwen2-bias", "gemma-mqa"])
def test_packed_model_equals_the_padded_forward(family, overrides, fuse_qkv):
    model = tiny(family, **overrides)
    token_ids = texts()
    type_ids = None
    if family == "bert":  # two segments per text
        type_ids = [[0] * (len(ids) // 2) + [1] * (len(ids) - len(ids) // 2) for ids in token_ids]
    expected = padded_states(model, token_ids, type_ids)
    backends = ["padded", "nested"] if family == "bert" else ["padded"]
    for attention in backends:
        packed = PackedModel(model, attention=attention, fuse_qkv=fuse_qkv)
        with torch.no_grad():
            got = packed(collate_packed(token_ids, type_ids))
        assert got.shape == expected.shape
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5, msg=f"{family} {attention}")


def test_bert_without_type_ids_uses_type_zero():
    model = tiny("bert")
    token_ids = texts()
    with torch.no_grad():
        got = PackedModel(model)(collate_packed(token_ids, None))
    torch.testing.assert_close(got, padded_states(model, token_ids), atol=1e-5, rtol=1e-5)


def test_a_text_alone_gives_the_states_it_gives_in_a_batch():
    model = tiny("llama")
    packed = PackedModel(model)
    token_ids = texts()
    with torch.no_grad():
        together = packed(collate_packed(token_ids, None))
        alone = packed(collate_packed(token_ids[2:3], None))
    torch.testing.assert_close(together[12:29], alone, atol=1e-5, rtol=1e-5)  # text 2: tokens 12..28


def test_fused_qkv_follows_changes_to_the_weights():
    model = tiny("bert")
    packed = PackedModel(model, fuse_qkv=True)
    batch = collate_packed(texts(), None)
    with torch.no_grad():
        before = packed(batch)
        model.encoder.layer[0].attention.self.key.weight.mul_(1.5)  # in place: a new version
        after = packed(batch)
    assert not torch.allclose(before, after)
    torch.testing.assert_close(after, padded_states(model, texts()), atol=1e-5, rtol=1e-5)


def test_unwired_models_are_refused_with_the_reason():
    gpt2 = tiny("gpt2")
    assert not supports_packed(gpt2)
    with pytest.raises(ValueError, match="wires the model types bert, gpt_neox.*got 'gpt2'.*packed=False"):
        PackedModel(gpt2)
    relative = tiny("bert", position_embedding_type="relative_key")
    if getattr(relative.config, "position_embedding_type", "absolute") != "absolute":
        with pytest.raises(ValueError, match="position_embedding_type 'relative_key'"):
            PackedModel(relative)
    with pytest.raises(TypeError, match="takes a PackedBatch.*got dict"):
        PackedModel(tiny("bert"))(collate(texts(), None, 0))
    with pytest.raises(TypeError, match="fuse_qkv must be True or False"):
        PackedModel(tiny("bert"), fuse_qkv="yes")
    assert PackedModel(tiny("bert")).fuse_qkv and not PackedModel(tiny("llama")).fuse_qkv  # "auto"


# ---------------------------------------------------------------------------- varlen attention


def per_text_attention(q, k, v, lengths, causal, scale):
    out, start = [], 0
    for n in lengths:
        rows = slice(start, start + n)
        out.append(F.scaled_dot_product_attention(q[rows].transpose(0, 1), k[rows].transpose(0, 1),
                                                  v[rows].transpose(0, 1), is_causal=causal, scale=scale,
                                                  enable_gqa=q.shape[1] != k.shape[1]).transpose(0, 1))
        start += n
    return torch.cat(out)


@pytest.mark.parametrize("heads", [(4, 4), (4, 2)], ids=["mha", "gqa"])
@pytest.mark.parametrize("causal", [False, True])
def test_cpu_backends_equal_attention_one_text_at_a_time(causal, heads):
    batch = collate_packed(texts(), None)
    g = torch.Generator().manual_seed(3)
    n = sum(LENGTHS)
    q = torch.randn(n, heads[0], 8, generator=g)
    k, v = (torch.randn(n, heads[1], 8, generator=g) for _ in range(2))
    expected = per_text_attention(q, k, v, LENGTHS, causal, 0.3)
    cpu = torch.device("cpu")
    usable = [b for b in ATTENTION_BACKENDS if can_run(b, cpu, torch.float32, causal)]
    assert usable == (["padded"] if causal else ["nested", "padded"])
    for backend in usable:
        got = varlen_attention(q, k, v, batch, causal, 0.3, backend)
        torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-5, msg=backend)


def test_backend_choice_and_errors():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert pick_backend("auto", cpu, torch.float32, causal=False) == "padded"
    assert pick_backend("auto", cuda, torch.float32, causal=True) == "padded"  # fp32: no flash kernels
    assert pick_backend("auto", cuda, torch.float32, causal=False) == "nested"
    assert pick_backend("auto", cuda, torch.float16, causal=True) in ("flash_attn", "varlen", "padded")
    with pytest.raises(ValueError, match="attention must be 'auto' or one of flash_attn, varlen, nested, padded"):
        pick_backend("xformers", cpu, torch.float32, causal=False)
    with pytest.raises(ValueError, match=r"'nested' cannot run on cpu with torch.float32 \(causal\); "
                                         r"usable here: padded"):
        pick_backend("nested", cpu, torch.float32, causal=True)
    with pytest.raises(ValueError, match="'varlen' cannot run on cpu"):
        pick_backend("varlen", cpu, torch.float16, causal=False)


# ------------------------------------------------------------------------------------- Encoder


@pytest.fixture(scope="module")
def minilm_pair(minilm_path):
    return (fastret.Encoder(minilm_path, device="cpu", max_length=96),
            fastret.Encoder(minilm_path, device="cpu", max_length=96, packed=True))


def test_minilm_packed_equals_padded(minilm_pair, nfcorpus_docs):
    padded, packed = minilm_pair
    assert padded.packed_model is None and "packed=False" in repr(padded)
    assert packed.packed_model.attention == "padded" and "packed=True" in repr(packed)
    docs = nfcorpus_docs[:20] + ["a", "vitamin D", "statins and breast cancer", ""]  # 96-token cap: some truncated
    with pytest.warns(UserWarning):
        a = padded.encode(docs, batch_size=8)
    with pytest.warns(UserWarning):
        b = packed.encode(docs, batch_size=8)
    assert np.abs(a - b).max() <= 1e-5
    codes_a, scales_a = padded.encode(docs[20:], precision="int8")
    codes_b, scales_b = packed.encode(docs[20:], precision="int8")
    assert np.abs(codes_a.astype(int) - codes_b).max() <= 1 and np.allclose(scales_a, scales_b, rtol=1e-5)


def test_packed_batches_hold_more_texts_than_padded_ones(minilm_pair, nfcorpus_docs):
    padded, packed = minilm_pair
    token_ids, type_ids, _ = padded.tokenize([doc[:300] for doc in nfcorpus_docs[:12]] + ["a"] * 12)
    seen = {}
    for name, encoder in (("padded", padded), ("packed", packed)):
        calls = []
        forward = encoder._forward
        def spy(batch, *args, calls=calls, forward=forward):
            calls.append(batch)
            return forward(batch, *args)

        encoder._forward = spy
        try:
            vectors, _, _ = encoder.embed_tokens(token_ids, type_ids, max_texts=24, max_tokens=600, normalize=True)
        finally:
            del encoder._forward
        seen[name] = (len(calls), vectors)
    assert seen["packed"][0] < seen["padded"][0]  # the same budget in real tokens fits more texts
    assert torch.allclose(seen["packed"][1], seen["padded"][1], atol=1e-5)


@pytest.mark.parametrize("family, preset", [("tiny_bert", "medcpt-article"), ("tiny_neox", "bmretriever")])
def test_tiny_models_packed_equal_padded(request, family, preset):
    directory = request.getfixturevalue(family)
    docs = [("Statins", "Statins lower cholesterol " * 4), ("Vitamin D", "asthma"), ("a", "")]
    if preset == "bmretriever":
        docs = ["Statins lower cholesterol " * 4, "Query: vitamin D", "a", ""]
    padded = fastret.Encoder(directory, device="cpu", preset=preset)
    packed = fastret.Encoder(directory, device="cpu", preset=preset, packed=True)
    assert packed.packed_model.first_token_only is (preset == "medcpt-article")  # CLS pooling: the last layer on CLS
    assert np.abs(padded.encode(docs) - packed.encode(docs)).max() <= 1e-5


def test_int8_layers_run_packed(tiny_bert):
    docs = ["statins and breast cancer mortality", "vitamin D", "fish oil and the heart " * 5]
    padded = fastret.Encoder(tiny_bert, device="cpu", quantize="int8").encode(docs)
    packed = fastret.Encoder(tiny_bert, device="cpu", quantize="int8", packed=True).encode(docs)
    assert np.abs(padded - packed).max() <= 1e-5


def test_packed_option_is_checked(tiny_bert):
    assert fastret.Encoder(tiny_bert, device="cpu", packed="auto").packed_model is None  # auto: CUDA only
    with pytest.raises(ValueError, match="packed must be True, False or 'auto', got 'yes'"):
        fastret.Encoder(tiny_bert, device="cpu", packed="yes")
    with pytest.raises(ValueError, match="packed must be True, False or 'auto', got 1"):
        fastret.Encoder(tiny_bert, device="cpu", packed=1)


@pytest.mark.parametrize("fusions", [dict(fuse_add_norm=True), dict(fuse_bias_gelu=True),
                                     dict(fuse_add_norm=True, fuse_bias_gelu=True, fuse_qkv=False)], ids=str)
def test_bert_fusions_equal_the_padded_forward(fusions):
    model = tiny("bert")
    token_ids = texts()
    packed = PackedModel(model, **fusions)
    assert all(getattr(packed, name) is value for name, value in fusions.items())
    with torch.no_grad():
        got = packed(collate_packed(token_ids, None))
    torch.testing.assert_close(got, padded_states(model, token_ids), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("options", [dict(), dict(fuse_qkv=False), dict(fuse_bias_gelu=True, fuse_add_norm=True),
                                     dict(attention="nested")], ids=str)
def test_first_token_only_gives_the_first_rows_of_the_full_forward(options):
    model = tiny("bert")
    token_ids = texts()
    type_ids = [[0] * (len(ids) // 2) + [1] * (len(ids) - len(ids) // 2) for ids in token_ids]
    batch = collate_packed(token_ids, type_ids)
    packed = PackedModel(model, first_token_only=True, **options)
    assert "first_token_only=True" in repr(packed)
    with torch.no_grad():
        got = packed(batch)
    starts = np.cumsum([0] + [len(ids) for ids in token_ids])[:-1]
    assert got.shape == (len(token_ids), 32)
    torch.testing.assert_close(got, padded_states(model, token_ids, type_ids)[starts], atol=1e-5, rtol=1e-5)
    with torch.no_grad():  # one text, texts of one token, empty texts (zeros, as pooling gives them)
        for lengths in ([7], [1, 1, 4], [0, 5, 0, 2, 0]):
            some = texts(lengths, seed=3)
            real = [ids for ids in some if ids]
            want = torch.zeros(len(some), 32)
            want[[n for n, ids in enumerate(some) if ids]] = padded_states(model, real)[
                np.cumsum([0] + [len(ids) for ids in real])[:-1]]
            torch.testing.assert_close(packed(collate_packed(some, None)), want, atol=1e-5, rtol=1e-5)


def test_first_token_only_is_checked():
    with pytest.raises(ValueError, match="first_token_only serves BERT-family encoders .*, not llama"):
        PackedModel(tiny("llama"), first_token_only=True)
    with pytest.raises(TypeError, match="first_token_only must be True or False"):
        PackedModel(tiny("bert"), first_token_only="yes")


def test_fusions_are_refused_where_they_do_not_apply():
    with pytest.raises(ValueError, match="fuse BERT-family layers, not llama"):
        PackedModel(tiny("llama"), fuse_add_norm=True)
    with pytest.raises(ValueError, match="fuse_bias_gelu needs a GELU activation, the model has 'relu'"):
        PackedModel(tiny("bert", hidden_act="relu"), fuse_bias_gelu=True)
    with pytest.raises(TypeError, match="fuse_add_norm must be True or False"):
        PackedModel(tiny("bert"), fuse_add_norm=1)


def test_auto_attention_falls_back_only_before_its_first_batch():
    model = tiny("llama")
    packed = PackedModel(model)
    assert packed.attention == "padded" and packed._fallbacks == []  # the CPU has one choice
    packed.attention, packed._fallbacks = "nested", ["padded"]  # as if "auto" on a GPU had picked a failing one
    batch = collate_packed(texts(), None)
    with pytest.warns(RuntimeWarning, match="'nested' failed on the first batch.*no causal mask.*using 'padded'"):
        with torch.no_grad():
            got = packed(batch)
    torch.testing.assert_close(got, padded_states(model, texts()), atol=1e-5, rtol=1e-5)
    packed.attention, packed._fallbacks = "nested", ["padded"]  # after a batch has run: raised
    with pytest.raises(ValueError, match="no causal mask"):
        packed(batch)


# ------------------------------------------------------------------------------------- compiled


@pytest.mark.parametrize("family, options", [("bert", {}), ("llama", {"fuse_qkv": True})],
                         ids=["bert", "llama-gqa-fused-qkv"])
def test_compiled_forward_equals_eager_in_one_graph(family, options):
    from torch._dynamo.utils import counters

    model = tiny(family)
    eager, compiled = PackedModel(model, **options), PackedModel(model, compile=True, **options)
    assert compiled.compile and "compile=True" in repr(compiled)
    counters.clear()
    graphs = []
    # other token and text counts with the same longest text, then another longest text, then one text
    for seed, lengths in enumerate([LENGTHS, [17, 4, 4, 9], [20, 2], [6]]):
        token_ids = texts(lengths, seed)
        batch = collate_packed(token_ids, None)
        with torch.inference_mode():
            got, want = compiled(batch), eager(batch)
        assert (got - want).abs().max() <= 1e-4
        torch.testing.assert_close(got, padded_states(model, token_ids), atol=1e-4, rtol=1e-4)
        graphs.append(counters["stats"]["unique_graphs"])
    assert not counters["graph_break"]  # the whole forward in one graph
    assert graphs == [1, 1, 1, 2]  # shapes symbolic from the first compile; a single text compiles its own


def test_compiled_auto_attention_proves_its_backend_eagerly():
    from torch._dynamo.utils import counters

    model = tiny("llama")
    packed = PackedModel(model, compile=True)
    assert packed._fallbacks == []  # the CPU has one choice: compiled from the first batch
    packed._fallbacks = ["padded"]  # as "auto" on a GPU, where a flash kernel comes first
    counters.clear()
    batch = collate_packed(texts(), None)
    with torch.inference_mode():
        first = packed(batch)
        assert counters["stats"]["unique_graphs"] == 0  # eager: a failure here would be the backend's
        second = packed(batch)
    assert counters["stats"]["unique_graphs"] == 1  # the backend has run: compiled from now on
    torch.testing.assert_close(first, second, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(second, padded_states(model, texts()), atol=1e-4, rtol=1e-4)


def test_encoder_compiled_equals_eager(tiny_bert):
    from torch._dynamo.utils import counters

    docs = ["statins and breast cancer mortality", "vitamin D", "fish oil and the heart " * 5, "a"]
    eager = fastret.Encoder(tiny_bert, device="cpu", packed=True)
    compiled = fastret.Encoder(tiny_bert, device="cpu", packed=True, compile=True)
    assert compiled.packed_model.compile and "compile=True" in repr(compiled) and "compile" not in repr(eager)
    counters.clear()
    assert np.abs(compiled.encode(docs) - eager.encode(docs)).max() <= 1e-4
    assert counters["stats"]["unique_graphs"] == 1  # the encoder's batches ran compiled
    assert np.abs(compiled.encode(docs[:1]) - eager.encode(docs[:1])).max() <= 1e-4  # one text: its own graph
    assert counters["stats"]["unique_graphs"] == 2


def test_compile_option_is_checked(tiny_bert):
    with pytest.raises(TypeError, match="compile must be True or False, got 'yes'"):
        PackedModel(tiny("bert"), compile="yes")
    with pytest.raises(ValueError, match="compile fuses the residual add and LayerNorm itself"):
        PackedModel(tiny("bert"), compile=True, fuse_add_norm=True)
    with pytest.raises(ValueError, match="attention 'nested' breaks torch.compile's graph"):
        PackedModel(tiny("bert"), compile=True, attention="nested")
    with pytest.raises(TypeError, match="compile must be True or False, got 1"):
        fastret.Encoder(tiny_bert, device="cpu", packed=True, compile=1)
    with pytest.raises(ValueError, match=r"runs padded.*pass packed=True"):
        fastret.Encoder(tiny_bert, device="cpu", compile=True)  # packed="auto": padded on the CPU
    with pytest.raises(ValueError, match="cannot trace the C\\+\\+ int8 layers"):
        fastret.Encoder(tiny_bert, device="cpu", packed=True, quantize="int8", compile=True)


def test_compile_without_a_cpp_compiler_names_the_fix(monkeypatch):
    import torch._inductor.config

    model = tiny("bert")
    compiled = PackedModel(model, compile=True)  # a compiler is found: the check passes
    monkeypatch.setattr(torch._inductor.config.cpp, "cxx", ("/nonexistent/g++",))
    with pytest.raises(RuntimeError, match=r"C\+\+ compiler and found none.*install g\+\+.*compile=False"):
        PackedModel(model, compile=True)
    monkeypatch.setattr(torch._inductor.config, "fx_graph_cache", False)  # compile now, not from the cache
    with pytest.raises(RuntimeError, match=r"torch.compile failed on the packed bert model.*compile=False"):
        with torch.inference_mode():
            compiled(collate_packed(texts(), None))
