import numpy as np
import pytest
import torch

import fastret
from fastret.rerank import Reranker

QUERY = "statins and breast cancer mortality"
TEXTS = ["Statin use after diagnosis was associated with lower breast cancer mortality in a Finnish cohort.",
         "Vitamin D supplementation and asthma exacerbations in children.",
         "",
         "breast " * 200,  # longer than max_length: truncated
         "Cholesterol-lowering drugs and cancer.",
         "Statins"]


def test_scores_equal_sentence_transformers_cross_encoder(tiny_cross_encoder):
    from sentence_transformers import CrossEncoder

    reference = CrossEncoder(str(tiny_cross_encoder), device="cpu")
    ours = Reranker(tiny_cross_encoder, device="cpu")
    assert ours.max_length == 128
    pairs = [(QUERY, text) for text in TEXTS] + [("a much longer query " * 30, TEXTS[0])]
    with pytest.warns(UserWarning, match="longer than max_length=128"):
        got = ours.predict(pairs, batch_size=3)
    expected = reference.predict(pairs, batch_size=3)  # its default activation for one label
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert np.all((got > 0) & (got < 1))
    with pytest.warns(UserWarning):
        raw = ours.predict(pairs, activation="none")
    expected_raw = reference.predict(pairs, activation_fn=torch.nn.Identity())
    np.testing.assert_allclose(raw, expected_raw, atol=1e-5)
    np.testing.assert_allclose(1 / (1 + np.exp(-raw)), got, atol=1e-6)
    # ranking, as CrossEncoder.rank
    with pytest.warns(UserWarning):
        ranked = ours.rank(QUERY, TEXTS, top_k=3)
    theirs = reference.rank(QUERY, TEXTS, top_k=3)
    assert [i for i, _ in ranked] == [row["corpus_id"] for row in theirs]
    np.testing.assert_allclose([s for _, s in ranked], [row["score"] for row in theirs], atol=1e-5)


def test_batching_and_int8_keep_the_scores(tiny_cross_encoder):
    reranker = fastret.Reranker(tiny_cross_encoder, device="cpu")
    pairs = [(QUERY, text) for text in TEXTS[:3] + TEXTS[4:]] * 3
    whole = reranker.predict(pairs, batch_size=64)
    np.testing.assert_allclose(reranker.predict(pairs, batch_size=1), whole, atol=1e-6)
    np.testing.assert_allclose(reranker.predict(pairs, batch_size=4, max_tokens_per_batch=40), whole, atol=1e-6)
    int8 = Reranker(tiny_cross_encoder, device="cpu", quantize="int8")
    np.testing.assert_allclose(int8.predict(pairs, activation="none"), reranker.predict(pairs, activation="none"),
                               atol=0.05)
    assert reranker.predict([]).shape == (0,)
    assert "max_length=128" in repr(reranker) and "int8" in repr(int8)


def test_packed_scoring_equals_the_models_padded_forward(tiny_cross_encoder):
    pairs = [(QUERY, text) for text in TEXTS[:3] + TEXTS[4:]] * 3 + [("q", "t")]
    packed, padded = Reranker(tiny_cross_encoder, device="cpu"), Reranker(tiny_cross_encoder, device="cpu", packed=False)
    assert packed.packed_model is not None and padded.packed_model is None
    assert "packed=True" in repr(packed) and "packed=False" in repr(padded)
    for batch_size, budget in ((32, None), (4, 40), (1, None)):
        np.testing.assert_allclose(packed.predict(pairs, batch_size, "none", budget),
                                   padded.predict(pairs, batch_size, "none", budget), atol=1e-6)
    int8 = Reranker(tiny_cross_encoder, device="cpu", quantize="int8")
    int8_padded = Reranker(tiny_cross_encoder, device="cpu", quantize="int8", packed=False)
    assert int8.packed_model is not None
    np.testing.assert_allclose(int8.predict(pairs, activation="none"), int8_padded.predict(pairs, activation="none"),
                               atol=1e-5)
    assert packed.default_max_tokens(64) == 2048 and padded.default_max_tokens(64) == 64 * 128


def test_packed_scoring_needs_a_bert_sequence_classifier(tiny_cross_encoder, tmp_path):
    from transformers import RobertaConfig, RobertaForSequenceClassification

    config = RobertaConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                           intermediate_size=64, max_position_embeddings=130, type_vocab_size=2, num_labels=1)
    RobertaForSequenceClassification(config).save_pretrained(tmp_path / "roberta")
    for path in tiny_cross_encoder.iterdir():
        if path.name.startswith(("tokenizer", "vocab", "special")):
            (tmp_path / "roberta" / path.name).write_bytes(path.read_bytes())
    assert Reranker(tmp_path / "roberta", device="cpu").packed_model is None  # auto: the model's own forward
    with pytest.raises(ValueError, match="packed scoring cannot run this model: a BERT-family sequence classifier "
                                         "is needed, this is a RobertaForSequenceClassification"):
        Reranker(tmp_path / "roberta", device="cpu", packed=True)
    with pytest.raises(ValueError, match="packed must be True, False or 'auto', got 'yes'"):
        Reranker(tiny_cross_encoder, device="cpu", packed="yes")


def test_bad_input_is_refused_clearly(tiny_cross_encoder, tiny_bert, tmp_path):
    reranker = Reranker(tiny_cross_encoder, device="cpu", preset="medcpt-cross")
    assert reranker.max_length == 128  # the preset's 512, within the model's limit
    with pytest.raises(TypeError, match=r"pairs\[1\] must be a \(query, text\) pair of str"):
        reranker.predict([("q", "t"), ("q", 3)])
    with pytest.raises(TypeError, match="pairs must be a sequence"):
        reranker.predict("q")
    with pytest.raises(ValueError, match="activation must be one of sigmoid, none"):
        reranker.predict([("q", "t")], activation="softmax")
    with pytest.raises(ValueError, match="batch_size must be a positive int"):
        reranker.predict([("q", "t")], batch_size=0)
    with pytest.raises(TypeError, match=r"texts\[0\] must be a str"):
        reranker.rank("q", [None])
    with pytest.raises(ValueError, match="top_k must be a positive int"):
        reranker.rank("q", ["t"], top_k=0)
    with pytest.raises(ValueError, match="unknown reranker preset 'medcpt'; expected one of medcpt-cross"):
        Reranker(tiny_cross_encoder, preset="medcpt")
    with pytest.raises(ValueError, match="one output .* this model has 2 labels"):
        from transformers import BertForSequenceClassification

        model = BertForSequenceClassification.from_pretrained(tiny_cross_encoder, num_labels=2,
                                                              ignore_mismatched_sizes=True)
        model.save_pretrained(tmp_path / "two")
        for path in tiny_cross_encoder.iterdir():
            if path.name.startswith(("tokenizer", "vocab", "special")):
                (tmp_path / "two" / path.name).write_bytes(path.read_bytes())
        Reranker(tmp_path / "two", device="cpu")
    with pytest.raises(ValueError, match="not found"):
        Reranker(tmp_path / "missing")


def reranked_reference(index, reranker, texts, vectors, k, depth, fields=("title", "text")):
    """Dense top `depth`, scored by the reranker over title + text, stable top k (the stage, the slow way)."""
    _, ids = index.search(vectors, depth)
    out = []
    for text, row in zip(texts, ids):
        row = row[row >= 0]
        stored = index.fields(row, names=list(fields))
        documents = [" ".join(str(f[name]) for name in fields if name in f) for f in stored]
        scores = reranker.predict([(text, d) for d in documents])
        order = np.argsort(-scores, kind="stable")[:k]
        out.append((row[order].tolist(), scores[order]))
    return out


@pytest.fixture(scope="module")
def searched(tiny_cross_encoder):
    from conftest import unit_rows

    rng = np.random.default_rng(5)
    index = fastret.Index(16)
    records = [{"title": f"Article {i} on statins" if i % 3 else f"Paper {i}", "text": TEXTS[i % len(TEXTS)][:200],
                "year": 2000 + i % 20} for i in range(60)]
    records[7].pop("text")  # a document with a title only
    index.add(unit_rows(rng, 60, 16), fields=records)
    return index, Reranker(tiny_cross_encoder, device="cpu"), unit_rows(rng, 3, 16)


def test_text_search_reranks_the_first_stage_top_candidates(searched):
    from fastret.search.text import TextSearch

    index, reranker, vectors = searched
    texts = ["statins and breast cancer", "vitamin D", "cholesterol drugs"]
    search = TextSearch(index, reranker=reranker)
    scores, ids = search.rank(texts, 5, vectors=vectors, rerank=True, rerank_top=20)
    for (expected_ids, expected_scores), got_ids, got_scores in zip(
            reranked_reference(index, reranker, texts, vectors, 5, 20), ids, scores):
        assert got_ids.tolist() == expected_ids
        np.testing.assert_allclose(got_scores, expected_scores, atol=1e-6)
    # with a filter: only passing documents are re-ranked; rerank_top below k re-ranks k
    scores, ids = search.rank(texts, 4, vectors=vectors, rerank=True, rerank_top=2, filter={"year": {"$lt": 2003}})
    assert set(ids.ravel().tolist()) <= {i for i in range(60) if i % 20 < 3}
    assert (ids >= 0).sum(axis=1).tolist() == [4, 4, 4]
    hits = search.search(texts[:1], 3, vectors=vectors[:1], rerank=True, fields=["title"])
    assert [h.id for h in hits[0]] == reranked_reference(index, reranker, texts[:1], vectors[:1], 3, 60)[0][0]
    assert all("title" in h.fields for h in hits[0])


def test_rerank_arguments_are_checked_before_any_work(searched, tiny_cross_encoder):
    from fastret.search.text import TextSearch

    index, reranker, vectors = searched
    with pytest.raises(ValueError, match="re-ranking needs a cross-encoder: .* --reranker MODEL"):
        TextSearch(index).rank(["q"], 3, vectors=vectors[:1], rerank=True)
    search = TextSearch(index, reranker=reranker)
    with pytest.raises(ValueError, match="rerank_top sets how many candidates .* ask for re-ranking too"):
        search.rank(["q"], 3, vectors=vectors[:1], rerank_top=10)
    with pytest.raises(ValueError, match="rerank_top must be an int >= 1"):
        search.rank(["q"], 3, vectors=vectors[:1], rerank=True, rerank_top=0)
    bare = fastret.Index(16)
    bare.add(vectors)
    with pytest.raises(ValueError, match="these documents have none: encode the corpus with --fields"):
        TextSearch(bare, reranker=reranker).rank(["q"], 2, vectors=vectors[:1], rerank=True)


def test_cli_search_with_a_reranker(tmp_path, tiny_bert, tiny_cross_encoder, capsys):
    import json

    from fastret import cli
    from fastret.search.text import TextSearch

    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"_id": f"d{i}", "title": f"T{i}", "text": TEXTS[i % len(TEXTS)][:120]})
                              + "\n" for i in range(12)))
    common = ["--model", str(tiny_bert), "--device", "cpu"]
    assert cli.main(["encode", str(corpus), str(tmp_path / "store"), *common, "--fields", "--no-progress"]) == 0
    capsys.readouterr()
    search = ["search", str(tmp_path / "store"), "statins and cancer", "-k", "3", *common, "--json"]
    assert cli.main([*search, "--reranker", str(tiny_cross_encoder), "--rerank-top", "8"]) == 0
    got = json.loads(capsys.readouterr().out)["results"]
    expected = TextSearch.open(tmp_path / "store", fastret.Encoder(tiny_bert, device="cpu"),
                               reranker=Reranker(tiny_cross_encoder, device="cpu")).search(
        ["statins and cancer"], 3, rerank=True, rerank_top=8)[0]
    assert [hit["id"] for hit in got] == [hit.id for hit in expected]
    np.testing.assert_allclose([hit["score"] for hit in got], [hit.score for hit in expected], atol=1e-6)
    assert cli.main([*search, "--rerank-top", "8"]) == 2
    assert "--rerank-top and --reranker-preset are for re-ranking: pass --reranker MODEL" in capsys.readouterr().err
