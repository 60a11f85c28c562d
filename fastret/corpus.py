"""Reading corpora: BEIR-format data (corpus.jsonl, queries.jsonl and qrels/<split>.tsv, each
optionally .gz), JSONL files, and the one way a document's title and text become one input.

    corpus.jsonl    {"_id": str, "title": str, "text": str} per line
    queries.jsonl   {"_id": str, "text": str} per line
    qrels/test.tsv  header "query-id<TAB>corpus-id<TAB>score", then one judgement per line

Malformed input is reported with its file and line number.
"""

from __future__ import annotations

import gzip
import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

PACKAGE_ROOT = Path(__file__).resolve().parent.parent
BUNDLED_NFCORPUS = PACKAGE_ROOT / "data" / "nfcorpus"


@dataclass
class Corpus:
    """Documents in file order."""

    ids: list[str] = field(default_factory=list)
    titles: list[str] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.ids)

    def documents(self) -> list[str]:
        """Each document's title and text as one input (`document_text`)."""
        return [document_text(title, text) for title, text in zip(self.titles, self.texts)]


def document_text(title: str, text: str) -> str:
    """Title and text joined by a space (the BEIR / sentence-transformers convention)."""
    return f"{title} {text}".strip()


def document_input(title: str, text: str, text_pairs: bool) -> str | tuple[str, str]:
    """A (title, text) pair for pair encoders (MedCPT articles), else `document_text`."""
    return (title, text) if text_pairs else document_text(title, text)


@dataclass
class BeirDataset:
    corpus: Corpus
    queries: dict[str, str]  # query id -> text, only queries with judgements in the split
    qrels: dict[str, dict[str, int]]  # query id -> {doc id: relevance}
    unjudged_queries: int  # queries in queries.jsonl with no judgement in this split


def find_file(directory: Path, name: str) -> Path:
    """`directory/name` or `directory/name.gz`."""
    for candidate in (directory / name, directory / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"{directory} has no {name} (or {name}.gz); is it a BEIR dataset directory?")


def open_text(path: str | os.PathLike) -> io.TextIOBase:
    """A UTF-8 text file for reading, gzip-compressed or not (told by its first bytes, not its name)."""
    with open(path, "rb") as f:
        gzipped = f.read(2) == b"\x1f\x8b"
    raw = gzip.open(path, "rb") if gzipped else open(path, "rb")
    return io.TextIOWrapper(raw, encoding="utf-8")


def read_jsonl(path: str | Path) -> Iterator[tuple[int, dict]]:
    """(line number, object) for each non-empty line; ValueError names file:line on bad JSON."""
    path = Path(path)
    with open_text(path) as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}:{number}: not valid JSON ({error.msg})") from None
            if not isinstance(record, dict):
                raise ValueError(f"{path}:{number}: expected a JSON object, got {type(record).__name__}")
            yield number, record


def _record_id(path: Path, number: int, record: dict) -> str:
    value = record.get("_id")
    if value is None or value == "":
        raise ValueError(f"{path}:{number}: missing \"_id\"")
    return str(value)


def iter_corpus(path: str | Path) -> Iterator[tuple[str, str, str]]:
    """(document id, title, text) per record of a BEIR corpus file, in file order."""
    for doc_id, title, text, _ in iter_corpus_records(path):
        yield doc_id, title, text


def iter_corpus_records(path: str | Path) -> Iterator[tuple[str, str, str, dict]]:
    """(document id, title, text, the whole record) per record of a BEIR corpus file, in file order."""
    path = Path(path)
    for number, record in read_jsonl(path):
        doc_id = _record_id(path, number, record)
        title, text = record.get("title") or "", record.get("text") or ""
        if not isinstance(title, str) or not isinstance(text, str):
            raise ValueError(f"{path}:{number}: \"title\" and \"text\" must be strings")
        yield doc_id, title, text, record


def count_records(path: str | Path) -> int:
    """Non-empty lines of a JSONL file (no parsing: for progress bars)."""
    with open_text(Path(path)) as lines:
        return sum(1 for line in lines if line.strip())


def load_corpus(path: str | Path) -> Corpus:
    """Read a BEIR corpus file (.jsonl or .jsonl.gz); duplicate ids are an error."""
    corpus, seen = Corpus(), set()
    for doc_id, title, text in iter_corpus(path):
        if doc_id in seen:
            raise ValueError(f"{path}: duplicate document id {doc_id!r} (record {len(corpus) + 1})")
        seen.add(doc_id)
        corpus.ids.append(doc_id)
        corpus.titles.append(title)
        corpus.texts.append(text)
    return corpus


def load_queries(path: str | Path) -> dict[str, str]:
    """Read a BEIR queries file into {query id: text}."""
    path = Path(path)
    queries = {}
    for number, record in read_jsonl(path):
        text = record.get("text")
        if not isinstance(text, str):
            raise ValueError(f"{path}:{number}: \"text\" must be a string")
        queries[_record_id(path, number, record)] = text
    return queries


def load_qrels(path: str | Path) -> dict[str, dict[str, int]]:
    """Read a qrels TSV (header, then query-id, corpus-id, integer score) into nested dicts."""
    path = Path(path)
    qrels: dict[str, dict[str, int]] = {}
    with open_text(path) as lines:
        for number, line in enumerate(lines, 1):
            parts = line.rstrip("\n").split("\t")
            if number == 1 and parts[0] == "query-id":
                continue
            if not line.strip():
                continue
            if len(parts) != 3:
                raise ValueError(f"{path}:{number}: expected 3 tab-separated columns "
                                 f"(query-id, corpus-id, score), got {len(parts)}")
            try:
                score = int(parts[2])
            except ValueError:
                raise ValueError(f"{path}:{number}: score {parts[2]!r} is not an integer") from None
            qrels.setdefault(parts[0], {})[parts[1]] = score
    return qrels


def load_beir(directory: str | Path, split: str = "test") -> BeirDataset:
    """Load a BEIR dataset directory; only queries judged in `split` are kept (the rest counted)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"{directory} is not a directory")
    corpus = load_corpus(find_file(directory, "corpus.jsonl"))
    all_queries = load_queries(find_file(directory, "queries.jsonl"))
    qrels = load_qrels(find_file(directory / "qrels", f"{split}.tsv"))
    queries = {qid: text for qid, text in all_queries.items() if qid in qrels}
    return BeirDataset(corpus, queries, qrels, unjudged_queries=len(all_queries) - len(queries))


def corpus_file(corpus: str | os.PathLike) -> Path:
    """The corpus file of a path: the file itself, or a BEIR directory's corpus.jsonl(.gz)."""
    path = Path(corpus)
    if path.is_dir():
        return find_file(path, "corpus.jsonl")
    if not path.is_file():
        raise FileNotFoundError(f"corpus {path} not found (expected a .jsonl / .jsonl.gz file or a BEIR directory)")
    return path


def iter_documents(corpus: Any, text_pairs: bool = False) -> Iterator[tuple[str, str | tuple[str, str]]]:
    """(document id, input) in corpus order, the input as `document_input` makes it.

    Args:
        corpus: a BEIR corpus file or directory, or an iterable of str (ids are their positions)
            or of {"_id" (or "id"), "title", "text"} dicts.

    Raises:
        TypeError: an item that is neither.
        ValueError: a malformed corpus line (file:line).
    """
    for doc_id, model_input, _ in iter_document_records(corpus, text_pairs):
        yield doc_id, model_input


def iter_document_records(corpus: Any, text_pairs: bool = False) -> Iterator[tuple[str, Any, dict]]:
    """(document id, input, the document's record) in corpus order: `iter_documents` with each
    document's whole record (a str document's is {"text": it}), for its stored fields."""
    if isinstance(corpus, (str, os.PathLike)):
        for doc_id, title, text, record in iter_corpus_records(corpus_file(corpus)):
            yield doc_id, document_input(title, text, text_pairs), record
        return
    if not isinstance(corpus, Iterable):
        raise TypeError(f"corpus must be a path or an iterable of documents, got {type(corpus).__name__}")
    for position, item in enumerate(corpus):
        if isinstance(item, str):
            yield str(position), item, {"text": item}
        elif isinstance(item, dict):
            title, text = item.get("title") or "", item.get("text") or ""
            yield str(item.get("_id", item.get("id", position))), document_input(title, text, text_pairs), item
        else:
            raise TypeError(f"corpus item {position} is {type(item).__name__}; expected a str or a "
                            "{'_id', 'title', 'text'} dict")


def stored_fields(record: dict, names: Sequence[str] | None) -> dict:
    """The fields of a corpus record to store (fastret.storage.fields): those in `names`, or (None) every
    key but the document id ("_id", "id")."""
    if names is None:
        return {key: value for key, value in record.items() if key not in ("_id", "id")}
    return {name: record[name] for name in names if name in record}


def count_documents(corpus: Any) -> int | None:
    """How many documents `iter_documents` will yield, when known without parsing (progress bars)."""
    if isinstance(corpus, (str, os.PathLike)):
        return count_records(corpus_file(corpus))
    return len(corpus) if hasattr(corpus, "__len__") else None
