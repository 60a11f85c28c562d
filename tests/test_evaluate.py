import json
import math

import numpy as np
import pytest

import fastret
from fastret import evaluate


def test_trec_metrics_by_hand():
    qrels = {"q1": {"a": 1}, "q2": {"b": 2, "c": 1}}
    run = {"q1": {f"x{i}": 20.0 - i for i in range(10)} | {"a": 5.0},  # a at rank 11
           "q2": {"b": 3.0, "z": 2.0, "c": 1.0}}
    metrics = evaluate.trec_metrics(qrels, run)
    assert metrics["MRR@10"] == pytest.approx((0.0 + 1.0) / 2)
    assert metrics["Recall@100"] == pytest.approx((1.0 + 1.0) / 2)
    dcg = 2 / math.log2(2) + 1 / math.log2(4)  # trec_eval: gain = relevance (not 2^rel - 1)
    ideal = 2 / math.log2(2) + 1 / math.log2(3)
    assert metrics["nDCG@10"] == pytest.approx((0.0 + dcg / ideal) / 2)


@pytest.fixture
def self_retrieval_dataset(tmp_path):
    """Each query is word for word its relevant document, so every method should rank it first."""
    topics = ["statins lower cholesterol", "vitamin d and asthma", "fish oil heart rhythm",
              "coffee and liver enzymes", "sodium intake blood pressure", "fiber and colon cancer"]
    with open(tmp_path / "corpus.jsonl", "w") as f:
        for i, topic in enumerate(topics):
            f.write(json.dumps({"_id": f"d{i}", "title": "", "text": topic}) + "\n")
    with open(tmp_path / "queries.jsonl", "w") as f:
        for i, topic in enumerate(topics):
            f.write(json.dumps({"_id": f"q{i}", "text": topic}) + "\n")
        f.write(json.dumps({"_id": "unjudged", "text": "nothing"}) + "\n")
    (tmp_path / "qrels").mkdir()
    (tmp_path / "qrels" / "test.tsv").write_text(
        "query-id\tcorpus-id\tscore\n" + "".join(f"q{i}\td{i}\t1\n" for i in range(len(topics))))
    return tmp_path


def test_evaluate_retrieval_runs_every_method(tiny_bert, self_retrieval_dataset):
    encoder = fastret.Encoder(tiny_bert, device="cpu", normalize=True)
    report = evaluate.evaluate_retrieval(encoder, self_retrieval_dataset, show_progress_bar=False)
    assert (report.queries, report.skipped_queries) == (6, 1)
    assert list(report.metrics) == list(evaluate.METHODS)
    for method, values in report.metrics.items():
        assert values["MRR@10"] == 1.0, method
        assert values["Recall@100"] == 1.0, method
    assert "| int8+rescore | 1.0000 | 1.0000 | 1.0000 |" in report.table()
    with pytest.raises(ValueError, match="unknown methods"):
        evaluate.evaluate_retrieval(encoder, self_retrieval_dataset, methods=("dense",))


def test_evaluate_retrieval_searches_a_given_index(tiny_bert, self_retrieval_dataset, tmp_path):
    """A store of the corpus (fastret encode) is searched instead of fresh embeddings: the runs name the
    right documents; an index that does not hold the corpus in its order, or float32, is refused."""
    encoder = fastret.Encoder(tiny_bert, device="cpu", normalize=True)
    encoder.encode_corpus(self_retrieval_dataset / "corpus.jsonl", tmp_path / "store", shard_size=4,
                          store_float16=True, show_progress_bar=False)
    index = fastret.Index.load(tmp_path / "store")
    methods = ("int8", "int8+rescore", "hybrid")
    report = evaluate.evaluate_retrieval(encoder, self_retrieval_dataset, methods=methods, show_progress_bar=False,
                                         index=index)
    assert list(report.metrics) == list(methods)
    for method, values in report.metrics.items():
        assert values["MRR@10"] == 1.0 and values["Recall@100"] == 1.0, method
    with pytest.raises(ValueError, match="float32 method needs the corpus' float embeddings"):
        evaluate.evaluate_retrieval(encoder, self_retrieval_dataset, methods=("float32",), index=index)
    index.delete([2])
    with pytest.raises(ValueError, match="does not hold .*corpus in its order"):
        evaluate.evaluate_retrieval(encoder, self_retrieval_dataset, methods=("int8",), index=index)
    shuffled = fastret.Index(index.dim)
    shuffled.add(np.ones((6, index.dim), np.float32), documents=[f"d{i}" for i in (1, 0, 2, 3, 4, 5)])
    assert not evaluate.holds_corpus(shuffled, [f"d{i}" for i in range(6)])


class RecordingIndex(fastret.Index):
    """An Index that notes the options of each search."""

    def search(self, queries, k=10, **options):
        self.asked.append(options)
        return super().search(queries, k, **options)


def test_the_binary_method_searches_behind_the_binary_first_stage(tiny_bert, self_retrieval_dataset, tmp_path):
    encoder = fastret.Encoder(tiny_bert, device="cpu", normalize=True)
    encoder.encode_corpus(self_retrieval_dataset / "corpus.jsonl", tmp_path / "store", show_progress_bar=False)
    index = RecordingIndex.load(tmp_path / "store")
    index.asked = []
    report = evaluate.evaluate_retrieval(encoder, self_retrieval_dataset, methods=("int8", "binary"),
                                         show_progress_bar=False, index=index)
    stages = [(asked["first_stage"], asked["oversample"]) for asked in index.asked]
    assert stages == [("int8", "auto"), ("binary", "auto")]  # binary: the default oversample
    index.asked = []
    evaluate.evaluate_retrieval(encoder, self_retrieval_dataset, methods=("binary",), show_progress_bar=False,
                                index=index, oversample=3)
    assert [(asked["first_stage"], asked["oversample"]) for asked in index.asked] == [("binary", 3)]
    with pytest.raises(ValueError, match="oversample must be >= 1"):
        evaluate.evaluate_retrieval(encoder, self_retrieval_dataset, methods=("binary",), index=index, oversample=0)
    assert report.metrics["binary"]["MRR@10"] == 1.0
    assert "binary" in evaluate.METHODS and "binary" not in evaluate.default_methods()


def test_instructions_for_instruction_presets(tiny_neox, tiny_bert):
    bm = fastret.Encoder(tiny_neox, device="cpu", preset="bmretriever")
    assert evaluate.query_prompt(bm, "NFCorpus") == (
        "Given a question, retrieve relevant documents that best answer the question\nQuery: ")
    with pytest.raises(ValueError, match="no instruction known for dataset 'pubmed'"):
        evaluate.query_prompt(bm, "pubmed")
    assert evaluate.query_prompt(fastret.Encoder(tiny_bert, device="cpu"), "nfcorpus") is None


def test_sentence_similarity_plumbing(tiny_bert, tmp_path):
    encoder = fastret.Encoder(tiny_bert, device="cpu", normalize=True)
    pairs = [("statins", "cholesterol"), ("asthma", "vitamin"), ("heart", "fish oil"), ("coffee", "liver")]
    a, b = encoder.encode([p[0] for p in pairs]), encoder.encode([p[1] for p in pairs])
    gold = (a * b).sum(1) * 4 + 1  # a linear map of the model's own cosines: correlation 1
    lines = ["sentence1\tsentence2\tscore"] + [f"{x}\t{y}\t{g}" for (x, y), g in zip(pairs, gold)]
    (tmp_path / "pairs.tsv").write_text("\n".join(lines) + "\n")
    result = evaluate.sentence_similarity(encoder, tmp_path / "pairs.tsv")
    assert result["pairs"] == 4
    assert result["pearson"] == pytest.approx(1.0, abs=1e-4)
    assert result["spearman"] == pytest.approx(1.0)


def test_sentence_pairs_errors(tmp_path):
    (tmp_path / "bad.tsv").write_text("a\tb\t1\nc\td\n")
    with pytest.raises(ValueError, match=r"bad.tsv:2: expected 3 tab-separated columns"):
        evaluate.read_sentence_pairs(tmp_path / "bad.tsv")
    (tmp_path / "bad2.tsv").write_text("a\tb\t1\nc\td\thigh\n")
    with pytest.raises(ValueError, match=r"bad2.tsv:2: score 'high' is not a number"):
        evaluate.read_sentence_pairs(tmp_path / "bad2.tsv")


def test_question_to_abstract(tiny_bert, tmp_path):
    encoder = fastret.Encoder(tiny_bert, device="cpu", normalize=True)
    records = [{"question": text, "abstract": text} for text in ("statins", "asthma in children", "fish oil")]
    (tmp_path / "qa.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    assert evaluate.question_to_abstract(encoder, tmp_path / "qa.jsonl") == {"recall@1": 1.0, "questions": 3}
    (tmp_path / "bad.jsonl").write_text(json.dumps({"question": "q"}) + "\n")
    with pytest.raises(ValueError, match=r"bad.jsonl:1: needs a \"question\" and a non-empty \"abstract\""):
        evaluate.question_to_abstract(encoder, tmp_path / "bad.jsonl")


def test_exact_float_search_blocks_and_ties():
    docs = np.repeat(np.eye(4, dtype=np.float32), 2, axis=0)  # rows 2i and 2i+1 equal
    queries = np.tile(np.eye(4, dtype=np.float32), (100, 1))  # 400 queries: two blocks
    scores, rows = evaluate.exact_float_search(queries, docs, 2)
    np.testing.assert_array_equal(rows[:4], [[0, 1], [2, 3], [4, 5], [6, 7]])
    assert rows.shape == (400, 2) and (scores == 1).all()


class KeywordReranker:
    """A cross-encoder stand-in that scores a document by the query words it holds: on the
    self-retrieval set it puts each query's own document first (a real one is tested in test_reranker)."""

    def __init__(self):
        self.pairs = []

    def predict(self, pairs, batch_size=32):
        self.pairs += pairs
        return np.array([len(set(q.split()) & set(d.split())) for q, d in pairs], np.float32)


def test_evaluate_retrieval_adds_reranked_runs(tiny_bert, self_retrieval_dataset, tmp_path):
    encoder = fastret.Encoder(tiny_bert, device="cpu", normalize=True)
    reranker = KeywordReranker()
    methods = ("int8", "bm25", "hybrid")
    report = evaluate.evaluate_retrieval(encoder, self_retrieval_dataset, methods=methods, show_progress_bar=False,
                                         reranker=reranker, rerank_top=3)
    assert list(report.metrics) == ["int8", "bm25", "hybrid", "int8+rerank", "hybrid+rerank"]
    assert report.metrics["int8+rerank"]["MRR@10"] == 1.0 and report.metrics["hybrid+rerank"]["MRR@10"] == 1.0
    assert len(reranker.pairs) == 2 * 6 * 6  # k = 100 > the 6 documents: every document of every query, twice
    assert all(d in {"statins lower cholesterol", "vitamin d and asthma", "fish oil heart rhythm",
                     "coffee and liver enzymes", "sodium intake blood pressure", "fiber and colon cancer"}
               for _, d in reranker.pairs)  # the stored title ("") and text, joined
    with pytest.raises(ValueError, match="rerank_top must be an int >= 1"):
        evaluate.evaluate_retrieval(encoder, self_retrieval_dataset, methods=methods, reranker=reranker, rerank_top=0)
    encoder.encode_corpus(self_retrieval_dataset / "corpus.jsonl", tmp_path / "store", shard_size=4,
                          show_progress_bar=False)  # no stored fields
    with pytest.raises(ValueError, match="these documents have none: encode the corpus with --fields"):
        evaluate.evaluate_retrieval(encoder, self_retrieval_dataset, methods=("int8",), show_progress_bar=False,
                                    index=fastret.Index.load(tmp_path / "store"), reranker=reranker)
