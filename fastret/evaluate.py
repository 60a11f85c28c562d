"""Retrieval quality on BEIR datasets, sentence similarity, and question -> abstract retrieval.

Metrics are trec_eval's own (through pytrec-eval-terrier): nDCG@10, Recall@100 and MRR@10 (the
reciprocal rank of the first relevant document within the top 10, 0 past it). Every dense run
searches the same embeddings up to four ways: exact float32, fastret int8, int8 + float16
rescoring, and "binary" (the int8 index behind the binary first stage, `first_stage="binary"`,
oversample "auto" unless told; not among `default_methods`); beside them BM25
(fastret.search.lexical, bm25s) and the hybrid of int8 + rescore and BM25 (fastret.search.hybrid, with its
dev-chosen defaults). The int8, binary and hybrid runs search any `fastret.search.rules.Searchable`:
one built here from the embeddings, or one given (a store of the corpus written by `fastret
encode`, searched here or on Ray). With a cross-encoder (`reranker`), each of the int8, int8 +
rescore, binary and hybrid runs is also re-ranked ("int8+rerank", ...): its top `rerank_top`
scored again over the documents' title and text (fastret.search.text's re-ranking stage).
"""

from __future__ import annotations

import csv
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .corpus import BeirDataset, document_text, load_beir, read_jsonl
from .search.index import Index
from .search.lexical import LexicalIndex
from .search.rules import Searchable, take_top
from .search.text import TextSearch

# Instructions for instruction-following retrievers (BMRetriever uses E5-Mistral's BEIR wording).
INSTRUCTIONS = {
    "nfcorpus": "Given a question, retrieve relevant documents that best answer the question",
    "scifact": "Given a scientific claim, retrieve documents that support or refute the claim",
    "trec-covid": "Given a query on COVID-19, retrieve documents that answer the query",
    "scidocs": "Given a scientific paper title, retrieve paper abstracts that are cited by the given paper",
}
METHODS = ("float32", "int8", "int8+rescore", "binary", "bm25", "hybrid")
MEASURES = {"nDCG@10": "ndcg_cut_10", "Recall@100": "recall_100", "MRR@10": "recip_rank"}
RERANKED = "+rerank"  # a run's name with re-ranking: "int8+rerank"


@dataclass
class RetrievalReport:
    """Mean metrics per method, and what was measured."""

    dataset: str
    split: str
    queries: int
    skipped_queries: int  # queries without judgements in the split
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)

    def table(self) -> str:
        """A markdown table of the metrics."""
        names = list(MEASURES)
        lines = [f"| {self.dataset} ({self.split}, {self.queries} queries) | " + " | ".join(names) + " |",
                 "|---|" + "---:|" * len(names)]
        for method, values in self.metrics.items():
            lines.append(f"| {method} | " + " | ".join(f"{values[n]:.4f}" for n in names) + " |")
        return "\n".join(lines)


def trec_metrics(qrels: dict[str, dict[str, int]], run: dict[str, dict[str, float]]) -> dict[str, float]:
    """Mean nDCG@10, Recall@100 and MRR@10 over the judged queries (trec_eval semantics)."""
    import pytrec_eval

    # trec_eval ranks by score, then by doc id, both descending: cut at 10 the same way
    top10 = {qid: dict(sorted(docs.items(), key=lambda item: (item[1], item[0]), reverse=True)[:10])
             for qid, docs in run.items()}
    full = pytrec_eval.RelevanceEvaluator(qrels, {"ndcg_cut.10", "recall.100"}).evaluate(run)
    mrr = pytrec_eval.RelevanceEvaluator(qrels, {"recip_rank"}).evaluate(top10)
    judged = [qid for qid in qrels if qid in run]
    return {
        "nDCG@10": statistics.fmean(full[q]["ndcg_cut_10"] for q in judged),
        "Recall@100": statistics.fmean(full[q]["recall_100"] for q in judged),
        "MRR@10": statistics.fmean(mrr[q]["recip_rank"] for q in judged),
    }


def as_run(query_ids: list[str], doc_ids: list[str], scores: np.ndarray, rows: np.ndarray) -> dict:
    """{query id: {doc id: score}} from top-k rows [q, k] (rows < 0 mark empty slots)."""
    return {qid: {doc_ids[r]: float(s) for s, r in zip(q_scores, q_rows) if r >= 0}
            for qid, q_scores, q_rows in zip(query_ids, scores, rows)}


def exact_float_search(queries: np.ndarray, docs: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact float32 inner-product top-k (ties to the lower row), in query blocks."""
    scores_out, rows_out = [], []
    rows = np.arange(len(docs))
    for start in range(0, len(queries), 256):
        scores, found = take_top(k, queries[start : start + 256] @ docs.T, rows)
        scores_out.append(scores)
        rows_out.append(found)
    return np.concatenate(scores_out), np.concatenate(rows_out)


def query_prompt(encoder, dataset_name: str) -> str | None:
    """The query prefix an instruction-following preset needs for this dataset, else None."""
    if not encoder.append_eos:  # only the BMRetriever-style preset takes instructions
        return encoder.prompts.get("query")
    from .encode.presets import bmretriever_query_prompt

    instruction = INSTRUCTIONS.get(dataset_name.lower())
    if instruction is None:
        raise ValueError(f"no instruction known for dataset {dataset_name!r}; known: {', '.join(INSTRUCTIONS)}")
    return bmretriever_query_prompt(instruction)


def default_methods(index: Searchable | None = None) -> tuple[str, ...]:
    """The methods `fastret eval` runs unless told: float32, int8, int8+rescore and bm25; searching a
    given index, int8, int8+rescore (when it keeps float16 copies) and bm25."""
    if index is None:
        return ("float32", "int8", "int8+rescore", "bm25")
    return ("int8", "int8+rescore", "bm25") if index.store_float16 else ("int8", "bm25")


def evaluate_retrieval(encoder, dataset: str | Path | BeirDataset, split: str = "test", *,
                       methods: tuple[str, ...] = METHODS, k: int = 100, batch_size: int = 32,
                       rescore_factor: int = 4, name: str | None = None,
                       show_progress_bar: bool = True, index: Searchable | None = None,
                       oversample: int | str = "auto", reranker: Any = None,
                       rerank_top: int | None = None) -> RetrievalReport:
    """Embed a BEIR dataset with `encoder`, search it each way in `methods`, and score the runs.

    Args:
        encoder: a `fastret.Encoder`.
        dataset: a BEIR directory (corpus, queries, qrels/<split>.tsv) or a loaded `BeirDataset`.
        methods: any of "float32", "int8", "int8+rescore", "binary", "bm25", "hybrid" ("binary":
            int8 search behind the binary first stage, with `oversample`).
        k: results per query (Recall@100 needs k >= 100).
        name: the dataset's name, for per-dataset instructions (default: the directory name).
        oversample: the binary method's candidates per result ("auto" or an int, as `Index.search`).
        index: search this `Searchable` (an `Index`, a `ShardedIndex`: see
            `fastret.search.searchers.open_searchable`) instead of embedding the corpus here: it must hold
            the corpus in its order (ids 0..n-1 named by the corpus' document ids, as
            `fastret encode` writes a store). "float32" needs the corpus' embeddings and is refused.
        reranker: a cross-encoder (`fastret.Reranker`): every int8, int8+rescore, binary and hybrid run
            is also re-ranked, as "<method>+rerank", its top `rerank_top` (default 100, at least k)
            scored over the documents' title and text (an index given must hold them as stored
            fields: `fastret encode --fields`).

    Raises:
        ValueError: unknown method, a dataset with no judged query, an index that does not hold
            the corpus, or "float32" with an index.
    """
    TextSearch(index, reranker=reranker).check(first_stage="binary", oversample=oversample,
                                              rerank=reranker is not None, rerank_top=rerank_top)  # before any work
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown methods {unknown}; expected any of {', '.join(METHODS)}")
    if index is not None and "float32" in methods:
        raise ValueError("the float32 method needs the corpus' float embeddings, which an index does not keep; "
                         "leave float32 out of the methods, or search without an index")
    if not isinstance(dataset, BeirDataset):
        name = name or Path(dataset).name
        dataset = load_beir(dataset, split)
    name = name or "dataset"
    if not dataset.queries:
        raise ValueError(f"{name}: no query in the {split} split has judgements")
    query_ids = list(dataset.queries)
    query_texts = [dataset.queries[q] for q in query_ids]
    documents = dataset.corpus.documents()
    k = min(k, len(documents))
    report = RetrievalReport(name, split, len(query_ids), dataset.unjudged_queries)
    runs: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    dense = [m for m in methods if m not in ("bm25", "hybrid")]
    if index is not None and not holds_corpus(index, dataset.corpus.ids):
        raise ValueError(f"the index does not hold {name}'s corpus in its order (ids 0..{len(documents) - 1} named "
                         "by the corpus' document ids); encode the corpus with `fastret encode` and search that store")
    lexical = LexicalIndex.build(documents) if {"bm25", "hybrid"} & set(methods) else None
    if dense or "hybrid" in methods:
        start = time.perf_counter()
        if index is None:
            docs = encoder.encode(documents, batch_size=batch_size, show_progress_bar=show_progress_bar,
                                  prompt_name="passage" if "passage" in encoder.prompts else None)
            index = Index(docs.shape[1], store_float16=bool({"int8+rescore", "hybrid"} & set(methods)))
            index.add(docs, fields=None if reranker is None else [
                {"title": title, "text": text} for title, text in zip(dataset.corpus.titles, dataset.corpus.texts)])
        queries = encoder.encode(query_texts, batch_size=batch_size, prompt=query_prompt(encoder, name))
        report.seconds["encode"] = time.perf_counter() - start
        search = TextSearch(index, lexical=lexical, reranker=reranker)
        options = {"int8": {}, "int8+rescore": {"rescore": True, "rescore_factor": rescore_factor},
                   "binary": {"first_stage": "binary", "oversample": oversample}, "hybrid": {"hybrid": True}}
        searches = {"float32": lambda: exact_float_search(queries, docs, k)}
        for method, chosen in options.items():
            searches[method] = lambda chosen=chosen: search.rank(query_texts, k, vectors=queries, **chosen)
            searches[method + RERANKED] = lambda chosen=chosen: search.rank(
                query_texts, k, vectors=queries, rerank=True, rerank_top=rerank_top, batch_size=batch_size, **chosen)
        ran = dense + (["hybrid"] if "hybrid" in methods else [])
        if reranker is not None:
            ran += [method + RERANKED for method in ran if method in options]
        for method in ran:
            start = time.perf_counter()
            runs[method] = searches[method]()
            report.seconds[method] = time.perf_counter() - start
    if "bm25" in methods:
        start = time.perf_counter()
        runs["bm25"] = TextSearch(index, lexical=lexical).rank_bm25(query_texts, k)
        report.seconds["bm25"] = time.perf_counter() - start

    for method in [m for m in methods if m in runs] + [m for m in runs if m not in methods]:
        scores, rows = runs[method]
        report.metrics[method] = trec_metrics(dataset.qrels, as_run(query_ids, dataset.corpus.ids, scores, rows))
    return report


def holds_corpus(index: Searchable, doc_ids: list[str]) -> bool:
    """Whether `index` holds exactly the corpus `doc_ids`, in order: ids 0..n-1, id i named doc_ids[i]."""
    rows = np.arange(len(doc_ids))
    return (len(index) == len(doc_ids) and index.has_documents and bool(index.contains(rows).all())
            and index.documents(rows).tolist() == list(doc_ids))


def read_sentence_pairs(path: str | Path) -> tuple[list[str], list[str], np.ndarray]:
    """A TSV of sentence1, sentence2, gold score (a header line is skipped if its score is not a number)."""
    path = Path(path)
    first, second, gold = [], [], []
    with open(path, encoding="utf-8", newline="") as f:
        for number, row in enumerate(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE), 1):
            if not row or not "".join(row).strip():
                continue
            if len(row) < 3:
                raise ValueError(f"{path}:{number}: expected 3 tab-separated columns (sentence1, sentence2, score)")
            try:
                score = float(row[2])
            except ValueError:
                if number == 1:
                    continue  # header
                raise ValueError(f"{path}:{number}: score {row[2]!r} is not a number") from None
            first.append(row[0])
            second.append(row[1])
            gold.append(score)
    if len(gold) < 2:
        raise ValueError(f"{path}: need at least 2 sentence pairs, found {len(gold)}")
    return first, second, np.asarray(gold, dtype=np.float64)


def sentence_similarity(encoder, path: str | Path, batch_size: int = 32) -> dict[str, float]:
    """Pearson and Spearman correlation of embedding cosine with gold scores (e.g. BIOSSES)."""
    from scipy.stats import pearsonr, spearmanr

    first, second, gold = read_sentence_pairs(path)
    a = encoder.encode(first, batch_size=batch_size)
    b = encoder.encode(second, batch_size=batch_size)
    cosine = (a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)
    return {"pearson": float(pearsonr(cosine, gold)[0]), "spearman": float(spearmanr(cosine, gold)[0]),
            "pairs": len(gold)}


def question_to_abstract(encoder, path: str | Path, batch_size: int = 32) -> dict[str, Any]:
    """Recall@1 of retrieving each question's own abstract among all abstracts (PubMedQA-style JSONL
    with "question", "abstract" and optional "title" per line), exact int8 search."""
    path = Path(path)
    questions, abstracts = [], []
    for number, record in read_jsonl(path):
        question, abstract = record.get("question"), record.get("abstract")
        if not isinstance(question, str) or not isinstance(abstract, str) or not abstract.strip():
            raise ValueError(f"{path}:{number}: needs a \"question\" and a non-empty \"abstract\" string")
        questions.append(question)
        abstracts.append(document_text(record.get("title") or "", abstract))
    if not questions:
        raise ValueError(f"{path}: no records")
    docs = encoder.encode(abstracts, batch_size=batch_size)
    queries = encoder.encode(questions, batch_size=batch_size, prompt=encoder.prompts.get("query"))
    index = Index(docs.shape[1])
    index.add(docs)
    _, rows = TextSearch(index).rank(questions, 1, vectors=queries)
    return {"recall@1": float((rows[:, 0] == np.arange(len(questions))).mean()), "questions": len(questions)}
