import gzip

import pytest

from fastret import corpus


def write(path, text, compress=False):
    path.parent.mkdir(parents=True, exist_ok=True)
    if compress:
        with gzip.open(path, "wt", encoding="utf-8") as f:
            f.write(text)
    else:
        path.write_text(text, encoding="utf-8")


@pytest.fixture
def beir(tmp_path):
    write(tmp_path / "corpus.jsonl.gz",
          '{"_id": "d1", "title": "Statins", "text": "lower cholesterol"}\n\n{"_id": "d2", "text": "no title"}\n',
          compress=True)
    write(tmp_path / "queries.jsonl", '{"_id": "q1", "text": "statin"}\n{"_id": "q2", "text": "unjudged"}\n')
    write(tmp_path / "qrels" / "test.tsv", "query-id\tcorpus-id\tscore\nq1\td1\t2\nq1\td2\t1\n")
    return tmp_path


def test_load_beir(beir):
    dataset = corpus.load_beir(beir)
    assert dataset.corpus.ids == ["d1", "d2"]
    assert dataset.corpus.documents() == ["Statins lower cholesterol", "no title"]
    assert dataset.queries == {"q1": "statin"}
    assert dataset.qrels == {"q1": {"d1": 2, "d2": 1}}
    assert dataset.unjudged_queries == 1


def test_bundled_nfcorpus_matches_its_published_size():
    dataset = corpus.load_beir(corpus.BUNDLED_NFCORPUS)
    assert len(dataset.corpus) == 3633
    assert len(dataset.queries) == 323
    assert sum(len(judged) for judged in dataset.qrels.values()) == 12334


def test_missing_files(tmp_path, beir):
    with pytest.raises(FileNotFoundError, match="is not a directory"):
        corpus.load_beir(tmp_path / "absent")
    with pytest.raises(FileNotFoundError, match=r"has no dev.tsv \(or dev.tsv.gz\)"):
        corpus.load_beir(beir, split="dev")


def test_bad_json_line_names_file_and_line(tmp_path):
    write(tmp_path / "corpus.jsonl", '{"_id": "a", "text": "x"}\n{"_id": "b", "text": \n')
    with pytest.raises(ValueError, match=r"corpus.jsonl:2: not valid JSON"):
        corpus.load_corpus(tmp_path / "corpus.jsonl")


@pytest.mark.parametrize("line, message", [
    ('{"text": "x"}', 'missing "_id"'),
    ('["_id", "a"]', "expected a JSON object, got list"),
    ('{"_id": "a", "text": 5}', '"title" and "text" must be strings'),
])
def test_bad_corpus_records(tmp_path, line, message):
    write(tmp_path / "corpus.jsonl", '{"_id": "ok", "text": "x"}\n' + line + "\n")
    with pytest.raises(ValueError, match=f"corpus.jsonl:2: {message}"):
        corpus.load_corpus(tmp_path / "corpus.jsonl")


def test_duplicate_document_ids(tmp_path):
    write(tmp_path / "corpus.jsonl", '{"_id": "a", "text": "x"}\n{"_id": "a", "text": "y"}\n')
    with pytest.raises(ValueError, match="corpus.jsonl: duplicate document id .a. \\(record 2\\)"):
        corpus.load_corpus(tmp_path / "corpus.jsonl")


@pytest.mark.parametrize("line, message", [
    ("q1\td1", "expected 3 tab-separated columns"),
    ("q1\td1\thigh", "score 'high' is not an integer"),
])
def test_malformed_qrels(tmp_path, line, message):
    write(tmp_path / "test.tsv", f"query-id\tcorpus-id\tscore\nq1\td0\t1\n{line}\n")
    with pytest.raises(ValueError, match=f"test.tsv:3: {message}"):
        corpus.load_qrels(tmp_path / "test.tsv")


def test_open_text_tells_gzip_by_its_bytes_not_its_name(tmp_path):
    write(tmp_path / "packed.jsonl", "gzipped ü\n", compress=True)  # no .gz suffix
    write(tmp_path / "plain.gz", "plain ü\n")  # a .gz suffix, not compressed
    for name, text in (("packed.jsonl", "gzipped ü\n"), ("plain.gz", "plain ü\n")):
        with corpus.open_text(tmp_path / name) as f:
            assert f.read() == text
