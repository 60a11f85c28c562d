import json
import warnings

import numpy as np
import pytest
import torch

import fastret
from fastret.kernels.pooling import pool_normalize_ref
from fastret.encode.presets import bmretriever_query_prompt


def cosines(a, b):
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


@pytest.fixture(scope="module")
def st_reference(minilm_path, nfcorpus_docs):
    """sentence-transformers' own embeddings of 48 NFCorpus documents of mixed lengths and 8 queries."""
    from sentence_transformers import SentenceTransformer

    texts = nfcorpus_docs[:40] + [doc[:80] for doc in nfcorpus_docs[40:48]] + [
        "statins and breast cancer", "vitamin D", "Do cholesterol drugs work?", "a", "fish oil",
        "omega-3 fatty acids and heart disease risk in adults", "coffee", "sodium intake"]
    model = SentenceTransformer(str(minilm_path), device="cpu")
    return texts, model.encode(texts, batch_size=16, convert_to_numpy=True)


def test_minilm_matches_sentence_transformers_in_fp32(minilm_path, st_reference):
    texts, expected = st_reference
    encoder = fastret.Encoder(minilm_path, device="cpu")
    assert (encoder.pooling, encoder.normalize, encoder.max_length, encoder.dim) == ("mean", True, 256, 384)
    got = encoder.encode(texts, batch_size=16)
    assert got.dtype == np.float32 and got.shape == expected.shape
    assert cosines(got, expected).min() >= 0.99999


@pytest.mark.filterwarnings("ignore:bfloat16 on this CPU is emulated")
def test_minilm_bf16_is_close(minilm_path, st_reference):
    texts, expected = st_reference
    got = fastret.Encoder(minilm_path, device="cpu", dtype="bfloat16").encode(texts)
    assert cosines(got, expected).min() >= 0.999


def test_minilm_with_int8_linear_layers_stays_close(minilm_path, st_reference):
    texts, expected = st_reference
    encoder = fastret.Encoder(minilm_path, device="cpu", quantize="int8")
    assert not any(isinstance(m, torch.nn.Linear) for m in encoder.model.modules())
    assert "quantize='int8'" in repr(encoder)
    cos = cosines(encoder.encode(texts, batch_size=16), expected)
    assert cos.mean() >= 0.995 and cos.min() >= 0.99, (cos.mean(), cos.min())


@pytest.mark.parametrize("family,preset", [("tiny_bert", None), ("tiny_neox", "bmretriever")])
def test_int8_linear_layers_serve_both_model_families(request, family, preset):
    directory = request.getfixturevalue(family)
    texts = ["statins and breast cancer mortality", "vitamin D", "fish oil and the heart " * 5]
    floats = fastret.Encoder(directory, device="cpu", preset=preset).encode(texts)
    int8 = fastret.Encoder(directory, device="cpu", preset=preset, quantize="int8").encode(texts)
    assert cosines(floats, int8).min() >= 0.99


def test_quantize_options_are_checked(tiny_bert):
    with pytest.raises(ValueError, match="quantize must be one of \\('int8',\\) or None, got 'int4'"):
        fastret.Encoder(tiny_bert, device="cpu", quantize="int4")
    with pytest.raises(ValueError, match="runs on the CPU's int8 kernels; got device cuda"):
        fastret.Encoder(tiny_bert, device="cuda", quantize="int8")
    with pytest.raises(ValueError, match="takes a float32 model .* got dtype torch.bfloat16"):
        fastret.Encoder(tiny_bert, device="cpu", dtype="bfloat16", quantize="int8")
    encoder = fastret.Encoder(tiny_bert, dtype="auto", quantize="int8")
    assert (encoder.device.type, encoder.dtype) == ("cpu", torch.float32)


@pytest.mark.parametrize("sets", [[], ["avx512_bf16"], ["amx_bf16"]])
def test_auto_dtype_picks_bf16_only_with_bf16_instructions(tiny_bert, monkeypatch, sets):
    monkeypatch.setattr(fastret.encode.loading, "bf16_instruction_sets", lambda: sets)
    auto = fastret.Encoder(tiny_bert, device="cpu", dtype="auto")
    assert auto.dtype == (torch.bfloat16 if sets else torch.float32)
    assert fastret.Encoder(tiny_bert, device="cpu").dtype == torch.float32
    if sets:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            fastret.Encoder(tiny_bert, device="cpu", dtype="bfloat16")
    else:
        with pytest.warns(RuntimeWarning, match="bfloat16 on this CPU is emulated .*no AVX512-BF16 or AMX-BF16"):
            fastret.Encoder(tiny_bert, device="cpu", dtype="bfloat16")


def test_int8_output_equals_quantizing_the_float_output(minilm_path, st_reference):
    texts, _ = st_reference
    encoder = fastret.Encoder(minilm_path, device="cpu")
    floats = encoder.encode(texts)
    codes, scales = encoder.encode(texts, precision="int8")
    expected_codes, expected_scales = fastret.quantize_int8(floats)
    np.testing.assert_array_equal(codes, expected_codes)
    np.testing.assert_array_equal(scales, expected_scales)


def test_output_kinds_and_order(tiny_bert):
    encoder = fastret.Encoder(tiny_bert, device="cpu")
    texts = ["a much longer text about statins and cholesterol than the others", "short", "mid length text"]
    full = encoder.encode(texts)
    one_by_one = np.stack([encoder.encode(text) for text in texts])
    assert encoder.encode(texts[0]).shape == (32,)
    np.testing.assert_allclose(full, one_by_one, atol=1e-5)
    tensor = encoder.encode(texts, convert_to_tensor=True)
    assert isinstance(tensor, torch.Tensor) and tensor.shape == (3, 32)
    rows = encoder.encode(texts, convert_to_numpy=False)
    assert isinstance(rows, list) and len(rows) == 3 and rows[0].shape == (32,)
    empty = encoder.encode([])
    assert empty.shape == (0, 32) and empty.dtype == np.float32


@pytest.mark.parametrize("budget", [None, 8, 40])
def test_batching_does_not_change_results(tiny_bert, nfcorpus_docs, budget):
    encoder = fastret.Encoder(tiny_bert, device="cpu", max_length=64)
    texts = [doc[: 20 + 13 * i] for i, doc in enumerate(nfcorpus_docs[:20])]
    expected = encoder.encode(texts, batch_size=1)
    got = encoder.encode(texts, batch_size=6, max_tokens_per_batch=budget)
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_tokenizing_in_chunks_keeps_order_and_results(tiny_bert, nfcorpus_docs):
    """Chunks tokenized ahead of the model (on a GPU; here forced, 7 texts each, the last one short)
    give the embeddings, int8 codes and truncation warning of one whole pass, in input order."""
    encoder = fastret.Encoder(tiny_bert, device="cpu", max_length=32)
    texts = [doc[: 20 + 13 * i] for i, doc in enumerate(nfcorpus_docs[:20])]
    expected = encoder.encode(texts, batch_size=1)
    expected_codes, expected_scales = encoder.encode(texts, batch_size=1, precision="int8")
    assert encoder.tokenize_chunk is None  # the CPU tokenizes once: the model needs its cores
    encoder.tokenize_chunk = 7
    with pytest.warns(UserWarning, match=r"\d+ of 20 texts were longer than max_length=32"):
        got = encoder.encode(texts, batch_size=4)
    np.testing.assert_allclose(got, expected, atol=1e-5)
    codes, scales = encoder.encode(texts, batch_size=4, precision="int8")
    assert np.abs(codes.astype(int) - expected_codes).max() <= 1
    np.testing.assert_allclose(scales, expected_scales, rtol=1e-5)


def manual_forward(model_dir, tokens, mode, normalize):
    """Reference: the Hugging Face model run directly, then pool_normalize_ref."""
    from transformers import AutoModel

    model = AutoModel.from_pretrained(str(model_dir)).eval()
    with torch.no_grad():
        hidden = model(**tokens).last_hidden_state
    return pool_normalize_ref(hidden, tokens["attention_mask"], mode=mode, normalize=normalize).numpy()


@pytest.mark.parametrize("mode", ["mean", "cls", "last"])
def test_pooling_modes_match_the_model_run_directly(tiny_bert, mode):
    from transformers import AutoTokenizer

    texts = ["Statins lower cholesterol.", "Vitamin D and asthma in children with eczema", "fish"]
    encoder = fastret.Encoder(tiny_bert, device="cpu", pooling=mode, normalize=mode != "mean")
    tokens = AutoTokenizer.from_pretrained(str(tiny_bert))(texts, padding=True, return_tensors="pt")
    expected = manual_forward(tiny_bert, tokens, mode, mode != "mean")
    np.testing.assert_allclose(encoder.encode(texts), expected, atol=1e-5)


@pytest.mark.parametrize("side", ["left", "right"])
def test_bmretriever_matches_its_reference_recipe(tiny_neox, side):
    """BMRetriever: truncate to max_length - 1, append EOS, pad (either side), last-token pooling."""
    from transformers import AutoTokenizer

    encoder = fastret.Encoder(tiny_neox, device="cpu", preset="bmretriever", max_length=48)
    instruction = "Find passages"
    queries = ["vitamin D", "Do statins lower cholesterol in people with heart disease risk? " * 3]
    prompt = bmretriever_query_prompt(instruction)
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_neox))
    tokenizer.padding_side = side
    batch = tokenizer([prompt + q for q in queries], max_length=47, truncation=True, padding=False,
                      return_attention_mask=False)
    batch["input_ids"] = [ids + [tokenizer.eos_token_id] for ids in batch["input_ids"]]
    tokens = tokenizer.pad(batch, padding=True, return_attention_mask=True, return_tensors="pt")
    expected = manual_forward(tiny_neox, tokens, "last", True)
    with pytest.warns(UserWarning, match="1 of 2 texts were longer than max_length=48 tokens"):
        got = encoder.encode(queries, prompt=prompt)
    np.testing.assert_allclose(got, expected, atol=1e-5)
    passage = encoder.encode(["statins"], prompt_name="passage")
    np.testing.assert_allclose(passage, encoder.encode(["Represent this passage\npassage: statins"]), atol=1e-6)


def test_medcpt_article_encodes_title_abstract_pairs(tiny_bert):
    from transformers import AutoTokenizer

    encoder = fastret.Encoder(tiny_bert, device="cpu", preset="medcpt-article", max_length=32)
    articles = [("Statin use and breast cancer survival", "A nationwide cohort study from Finland."),
                ("Vitamin D", "Supplementation and asthma exacerbations in children " * 4)]
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_bert))
    tokens = tokenizer([a for a, _ in articles], [b for _, b in articles], truncation=True, max_length=32,
                       padding=True, return_tensors="pt")
    assert tokens["token_type_ids"].any()
    expected = manual_forward(tiny_bert, tokens, "cls", False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        np.testing.assert_allclose(encoder.encode(articles), expected, atol=1e-5)
    with pytest.raises(TypeError, match=r"sentences\[1\] must be a \(title, abstract\) pair"):
        encoder.encode([articles[0], ("only one",)])


def write_sentence_transformers_dir(root, tiny_bert, pooling_config, normalize):
    import shutil

    shutil.copytree(tiny_bert, root)
    modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
               {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]
    if normalize:
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"})
    (root / "modules.json").write_text(json.dumps(modules))
    (root / "1_Pooling").mkdir()
    (root / "1_Pooling" / "config.json").write_text(json.dumps(pooling_config))
    (root / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 40}))
    (root / "config_sentence_transformers.json").write_text(json.dumps({"prompts": {"query": "query: "}}))
    return root


@pytest.mark.parametrize("config, expected", [
    ({"pooling_mode": "cls"}, "cls"),
    ({"pooling_mode": "lasttoken"}, "last"),
    ({"pooling_mode_mean_tokens": True, "pooling_mode_cls_token": False}, "mean"),
])
def test_reads_a_sentence_transformers_directory(tmp_path, tiny_bert, config, expected):
    root = write_sentence_transformers_dir(tmp_path / "st", tiny_bert, config, normalize=True)
    encoder = fastret.Encoder(root, device="cpu")
    assert (encoder.pooling, encoder.normalize, encoder.max_length) == (expected, True, 40)
    assert encoder.prompts == {"query": "query: "}
    np.testing.assert_allclose(encoder.encode(["x"], prompt_name="query"), encoder.encode(["query: x"]), atol=1e-6)


def test_explicit_arguments_override_preset_and_config(tmp_path, tiny_bert):
    root = write_sentence_transformers_dir(tmp_path / "st", tiny_bert, {"pooling_mode": "cls"}, normalize=False)
    encoder = fastret.Encoder(root, device="cpu", preset="minilm", pooling="last", max_length=16)
    assert (encoder.pooling, encoder.normalize, encoder.max_length) == ("last", True, 16)


# ---------------------------------------------------------------------------------- bad input


def test_unsupported_pooling_in_config(tmp_path, tiny_bert):
    root = write_sentence_transformers_dir(tmp_path / "st", tiny_bert, {"pooling_mode": "max"}, normalize=False)
    with pytest.raises(ValueError, match=r"pooling \['max'\] is not supported.*pass pooling=\.\.\. to override"):
        fastret.Encoder(root)
    assert fastret.Encoder(root, pooling="mean").pooling == "mean"


def test_not_a_model(tmp_path):
    with pytest.raises(ValueError, match="is not a Hugging Face model directory"):
        fastret.Encoder(tmp_path)
    with pytest.raises(ValueError, match="not found: no such directory"):
        fastret.Encoder(tmp_path / "missing" / "model")
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(ValueError, match="is a file; pass the model directory"):
        fastret.Encoder(tmp_path / "weights.bin")
    with pytest.raises(TypeError, match="must be a str or Path"):
        fastret.Encoder(42)


def test_bad_options(tiny_bert):
    with pytest.raises(ValueError, match="unknown preset 'e5'; expected one of: bge, biohicl, bmretriever"):
        fastret.Encoder(tiny_bert, preset="e5")
    with pytest.raises(ValueError, match="unknown pooling 'max'; expected one of mean, cls, last"):
        fastret.Encoder(tiny_bert, pooling="max")
    with pytest.raises(ValueError, match="dtype must be float32, float16, bfloat16 or 'auto'"):
        fastret.Encoder(tiny_bert, dtype="int8")
    encoder = fastret.Encoder(tiny_bert, device="cpu")
    with pytest.raises(ValueError, match="precision must be one of"):
        encoder.encode(["x"], precision="binary")
    with pytest.raises(ValueError, match="unknown prompt_name 'query'; this encoder's prompts: none"):
        encoder.encode(["x"], prompt_name="query")
    with pytest.raises(ValueError, match="batch_size must be an int >= 1"):
        encoder.encode(["x"], batch_size=0)


def test_bad_texts(tiny_bert):
    encoder = fastret.Encoder(tiny_bert, device="cpu", max_length=16)
    with pytest.raises(TypeError, match=r"sentences\[2\] is int; expected a str"):
        encoder.encode(["a", "b", 3])
    with pytest.raises(TypeError, match=r"sentences\[0\] is NoneType"):
        encoder.encode([None])
    with pytest.raises(TypeError, match="must be a str or a list of str, got dict"):
        encoder.encode({"a": 1})
    with pytest.warns(UserWarning, match="2 of 3 texts are empty or whitespace"):
        blank = encoder.encode(["", "   ", "text"])
    assert np.isfinite(blank).all()
    with pytest.warns(UserWarning, match="1 of 2 texts were longer than max_length=16 tokens and were truncated"):
        encoder.encode(["word " * 100, "short"])


def test_tokenize_then_embed_tokens_equals_encode(tiny_bert, nfcorpus_docs):
    encoder = fastret.Encoder(tiny_bert, device="cpu", max_length=32)
    texts = ["vitamin D", nfcorpus_docs[0], "fish oil and omega-3"]
    inputs = [encoder.prepare(text, i, encoder.prompt_prefix()) for i, text in enumerate(texts)]
    token_ids, type_ids, truncated = encoder.tokenize(inputs)
    assert truncated == [False, True, False]
    assert len(token_ids[1]) == 32 and [len(ids) for ids in token_ids] == [len(types) for types in type_ids]
    vectors, codes, scales = encoder.embed_tokens(token_ids, type_ids, max_texts=2, max_tokens=40, normalize=True)
    assert codes is None and scales is None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = encoder.encode(texts, normalize_embeddings=True)
    np.testing.assert_allclose(vectors.numpy(), expected, atol=1e-5)


def test_prompt_prefix(tiny_bert):
    encoder = fastret.Encoder(tiny_bert, device="cpu", preset="bge")
    assert encoder.prompt_prefix() == ""
    assert encoder.prompt_prefix("Q: ", "query") == "Q: "
    assert encoder.prompt_prefix(prompt_name="query") == encoder.prompts["query"]
    with pytest.raises(ValueError, match="unknown prompt_name 'nope'; this encoder's prompts: query"):
        encoder.prompt_prefix(prompt_name="nope")
    with pytest.raises(TypeError, match="prompt must be a str"):
        encoder.prompt_prefix(prompt=3)
