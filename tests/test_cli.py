import dataclasses
import json
import re
import subprocess
import sys

import numpy as np
import pytest

import fastret

from fastret import cli


def write_corpus(path, count, bad_line=None):
    lines = [json.dumps({"_id": f"d{i}", "title": "T", "text": f"text number {i}"}) for i in range(count)]
    if bad_line:
        lines[bad_line - 1] = "not json"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_encode_writes_a_store_and_prints_json(tmp_path, tiny_bert, capsys):
    corpus = write_corpus(tmp_path / "corpus.jsonl", 9)
    status = cli.main(["encode", str(corpus), str(tmp_path / "out"), "--model", str(tiny_bert), "--device", "cpu",
                       "--shard-size", "4", "--float16", "--no-progress", "--json"])
    assert status == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["documents"] == 9 and summary["shards"] == 3 and summary["dim"] == 32
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["complete"] and manifest["float16"] and manifest["shard_size"] == 4


def test_encode_with_int8_linear_layers(tmp_path, tiny_bert, capsys):
    corpus = write_corpus(tmp_path / "corpus.jsonl", 5)
    args = [str(corpus), "--model", str(tiny_bert), "--device", "cpu", "--no-progress", "--json"]
    assert cli.main(["encode", args[0], str(tmp_path / "f32"), *args[1:]]) == 0
    assert cli.main(["encode", args[0], str(tmp_path / "i8"), *args[1:], "--quantize", "int8"]) == 0
    stores = [fastret.Index.load(tmp_path / name) for name in ("f32", "i8")]
    assert len(stores[1]) == 5
    with pytest.raises(SystemExit):
        cli.main(["encode", args[0], str(tmp_path / "x"), "--quantize", "int4"])
    assert "invalid choice: 'int4'" in capsys.readouterr().err


def test_errors_name_the_bad_file_and_line(tmp_path, tiny_bert, capsys):
    corpus = write_corpus(tmp_path / "corpus.jsonl", 5, bad_line=3)
    status = cli.main(["encode", str(corpus), str(tmp_path / "out"), "--model", str(tiny_bert), "--no-progress"])
    assert status == 2
    assert "fastret encode: error:" in (err := capsys.readouterr().err) and "corpus.jsonl:3: not valid JSON" in err
    status = cli.main(["encode", str(tmp_path / "none.jsonl"), str(tmp_path / "o"), "--model", str(tiny_bert)])
    assert status == 2
    assert "none.jsonl not found" in capsys.readouterr().err


def test_bad_arguments_are_usage_errors(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["encode", "c.jsonl", "out", "--batch-size", "0"])
    assert exit_info.value.code == 2
    assert "--batch-size: expected a positive integer, got 0" in capsys.readouterr().err


def test_python_dash_m_and_help():
    result = subprocess.run([sys.executable, "-m", "fastret", "encode", "--help"], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0
    assert "resume" in result.stdout and "--shard-size" in result.stdout


@pytest.fixture
def store(tmp_path, tiny_bert):
    corpus = write_corpus(tmp_path / "corpus.jsonl", 12)
    assert cli.main(["encode", str(corpus), str(tmp_path / "store"), "--model", str(tiny_bert), "--device", "cpu",
                     "--shard-size", "5", "--float16", "--no-progress"]) == 0
    return tmp_path / "store"


def test_index_and_search(store, tmp_path, tiny_bert, capsys):
    capsys.readouterr()
    assert cli.main(["index", str(store), str(tmp_path / "docs.frt"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["vectors"] == 12
    single = fastret.Index.load(tmp_path / "docs.frt")
    assert single.documents(np.array([3, 11])).tolist() == ["d3", "d11"]
    assert not list(tmp_path.glob("*.ids.json"))  # document ids live in the index file
    for target in (store, tmp_path / "docs.frt"):
        status = cli.main(["search", str(target), "T text number 7", "-k", "3", "--rescore", "--model", str(tiny_bert),
                           "--device", "cpu", "--json"])
        assert status == 0
        result = json.loads(capsys.readouterr().out)
        assert result["query"] == "T text number 7" and len(result["results"]) == 3
        assert result["results"][0]["id"].startswith("d")


def test_search_with_a_filter_shows_stored_fields(tmp_path, tiny_bert, capsys):
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"_id": f"d{i}", "title": f"T{i}", "text": f"text number {i}",
                                          "year": 2000 + i, "mesh": [["Neoplasms"], ["Lung Neoplasms"], ["Humans"]][i % 3]})
                              + "\n" for i in range(8)))
    tree = tmp_path / "tree.tsv"
    tree.write_text("mesh_id\tmesh_name\tmesh_tree_number\nD1\tNeoplasms\tC04\nD2\tLung Neoplasms\tC04.588.894\n"
                    "D3\tHumans\tB01.050.150\n")
    common = ["--model", str(tiny_bert), "--device", "cpu"]
    assert cli.main(["encode", str(corpus), str(tmp_path / "store"), *common, "--shard-size", "3", "--fields",
                     "--no-progress"]) == 0
    capsys.readouterr()
    search = ["search", str(tmp_path / "store"), "text number 7", "-k", "5", *common]
    assert cli.main([*search, "--filter", '{"year": {"$gte": 2005}}', "--show", "title,year", "--json"]) == 0
    results = json.loads(capsys.readouterr().out)["results"]
    assert sorted(hit["id"] for hit in results) == ["d5", "d6", "d7"]  # fewer pass than k
    assert all(hit["fields"] == {"title": f"T{hit['id'][1:]}", "year": 2000 + int(hit["id"][1:])} for hit in results)
    assert cli.main([*search, "--filter", '{"year": 2003}', "--show", "year"]) == 0
    assert re.search(r"  1  \S+  d3  year=2003\n", capsys.readouterr().out)
    assert cli.main([*search, "--filter", '{"year": {"$gte": "2005"}}']) == 2
    assert re.search(r'filter\["year"\]\["\$gte"\]: field .year. holds numbers', capsys.readouterr().err)
    assert cli.main([*search, "--filter", '{"year": ']) == 2
    assert "filter is not valid JSON" in capsys.readouterr().err
    assert cli.main([*search, "--filter", '{"mesh": {"$under": "C04"}}', "--mesh", str(tree), "--json"]) == 0
    under = [hit["id"] for hit in json.loads(capsys.readouterr().out)["results"]]
    assert len(under) == 5 and set(under) <= {"d0", "d1", "d3", "d4", "d6", "d7"}  # not the "Humans" ones
    assert cli.main([*search, "--filter", '{"mesh": {"$under": "C04"}}']) == 2
    assert "$under needs the MeSH tree" in capsys.readouterr().err
    assert cli.main([*search, "--mesh", str(tree)]) == 2
    assert "--mesh is for $under in --filter" in capsys.readouterr().err
    # encode wrote the field indexes with the fields; a store from before them gets them from `index --field-indexes`
    shards = sorted((tmp_path / "store").glob("shard-*.frt"))
    indexes = sorted((tmp_path / "store").glob("shard-*.fields.index"))
    assert len(indexes) == len(shards) == 3
    for path in indexes:
        path.unlink()
    assert cli.main(["index", str(tmp_path / "store"), "--field-indexes", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["field_indexes_written"] == [str(s) for s in shards]
    assert sorted((tmp_path / "store").glob("shard-*.fields.index")) == indexes
    assert cli.main(["index", str(tmp_path / "store"), "--field-indexes"]) == 0
    assert "field indexes written for 0 segment file(s)" in capsys.readouterr().out
    assert cli.main([*search, "--filter", '{"mesh": {"$under": "C04"}}', "--mesh", str(tree), "--json"]) == 0
    assert [hit["id"] for hit in json.loads(capsys.readouterr().out)["results"]] == under
    assert cli.main(["index", str(tmp_path / "store"), str(tmp_path / "x.frt"), "--field-indexes"]) == 2
    assert "--field-indexes writes the field indexes of SOURCE in place" in capsys.readouterr().err


def test_search_with_the_binary_first_stage(store, tiny_bert, capsys):
    """--binary [--oversample N]: the results of Index.search(..., first_stage="binary"), id for id."""
    texts = ["T text number 7", "text number 2", "number 11 T", "T"]
    common = ["search", str(store), *texts, "-k", "3", "--model", str(tiny_bert), "--device", "cpu", "--json"]
    index = fastret.Index.load(store)
    vectors = fastret.Encoder(tiny_bert, device="cpu").encode(texts)
    capsys.readouterr()
    for extra, options in ((["--oversample", "1"], {"oversample": 1}), ([], {}), (["--oversample", "auto"], {}),
                           (["--oversample", "1", "--rescore"], {"oversample": 1, "rescore": True})):
        assert cli.main(common + ["--binary", *extra]) == 0
        printed = [json.loads(line)["results"] for line in capsys.readouterr().out.splitlines()]
        scores, ids = index.search(vectors, 3, first_stage="binary", **options)
        assert [[hit["id"] for hit in hits] for hits in printed] == index.documents(ids).tolist()
        np.testing.assert_allclose([[hit["score"] for hit in hits] for hits in printed], scores, rtol=1e-6)
    exact = index.search(vectors, 3)[1]
    assert not np.array_equal(index.search(vectors, 3, first_stage="binary", oversample=1)[1], exact)
    assert cli.main(common + ["--oversample", "4"]) == 2
    assert "oversample (binary candidates per result) applies to the binary first stage only" in (
        capsys.readouterr().err)
    for bad in ("0", "x", "-3"):
        with pytest.raises(SystemExit):
            cli.main(common + ["--binary", "--oversample", bad])
        assert f"--oversample: expected 'auto' or a positive integer, got '{bad}'" in capsys.readouterr().err


def test_search_on_ray_shards_prints_what_one_index_prints(store, tiny_bert, ray_session, capsys):
    """`--shards 2` spreads the store's 3 files over 2 Ray actors; the output is the same, line for line."""
    capsys.readouterr()
    common = ["search", str(store), "T text number 7", "text number 2", "-k", "4", "--model", str(tiny_bert),
              "--device", "cpu", "--json"]
    for extra in ([], ["--rescore"]):
        assert cli.main(common + extra) == 0
        plain = capsys.readouterr().out.splitlines()
        assert cli.main(common + extra + ["--shards", "2", "--replicas", "2"]) == 0
        sharded = capsys.readouterr().out.splitlines()
        assert len(plain) == 2 and sharded == plain
        assert json.loads(sharded[0])["results"][0]["id"].startswith("d")
    assert cli.main(common + ["--shards", "4"]) == 2  # more shards than files
    assert "shards must be an int in [1, 3]" in capsys.readouterr().err


def test_search_refuses_a_model_of_another_dimension(store, minilm_path, capsys):
    assert cli.main(["search", str(store), "query", "--model", str(minilm_path), "--device", "cpu"]) == 2
    assert "the model makes 384-d vectors but" in capsys.readouterr().err


def test_index_from_npy(tmp_path, capsys):
    import numpy as np

    np.save(tmp_path / "v.npy", np.random.default_rng(0).standard_normal((7, 5)).astype(np.float32))
    assert cli.main(["index", str(tmp_path / "v.npy"), str(tmp_path / "v.frt"), "--float16"]) == 0
    index = __import__("fastret").Index.load(tmp_path / "v.frt")
    assert (len(index), index.dim, index.store_float16) == (7, 5, True)
    assert cli.main(["index", str(tmp_path / "nothing.txt"), str(tmp_path / "x.frt")]) == 2
    assert "expected a store directory or a .npy file" in capsys.readouterr().err


def test_index_binary_writes_missing_sign_bits_of_a_store_or_file(store, tmp_path, capsys):
    from conftest import sidecar

    shards = sorted(store.glob("shard-*.frt"))
    for shard in shards:
        sidecar(shard).unlink()  # as a store written before bits were kept
    assert cli.main(["index", str(store), "--binary", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["bits_written"] == [str(s) for s in shards]
    assert all(sidecar(s).is_file() for s in shards)
    assert cli.main(["index", str(store), "--binary"]) == 0
    assert "sign bits written for 0 segment file(s)" in capsys.readouterr().out
    assert cli.main(["index", str(store), str(tmp_path / "x.frt"), "--binary"]) == 2
    assert "--binary writes the sign bits of SOURCE in place" in capsys.readouterr().err
    assert cli.main(["index", str(tmp_path / "missing"), "--binary"]) == 2
    assert "no such store directory or index file" in capsys.readouterr().err


def four_document_dataset(directory):
    """A BEIR directory of four documents and one judged query ("fish oil" -> d2)."""
    directory.mkdir()
    topics = ["statins cholesterol", "asthma children", "fish oil", "coffee liver"]
    (directory / "corpus.jsonl").write_text(
        "".join(json.dumps({"_id": f"d{i}", "text": t}) + "\n" for i, t in enumerate(topics)))
    (directory / "queries.jsonl").write_text(json.dumps({"_id": "q", "text": "fish oil"}) + "\n")
    (directory / "qrels").mkdir()
    (directory / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq\td2\t1\n")
    return directory


def test_eval_prints_metrics(tmp_path, tiny_bert, capsys):
    status = cli.main(["eval", str(four_document_dataset(tmp_path / "d")), "--model", str(tiny_bert), "--device",
                       "cpu", "--methods", "int8,binary,bm25", "--no-progress", "--json"])
    assert status == 0
    report = json.loads(capsys.readouterr().out)
    assert list(report["metrics"]) == ["int8", "binary", "bm25"] and report["queries"] == 1
    assert report["metrics"]["bm25"]["MRR@10"] == 1.0


def test_eval_with_a_reranker_adds_reranked_runs(tmp_path, tiny_bert, tiny_cross_encoder, capsys):
    dataset = four_document_dataset(tmp_path / "d")
    common = [str(dataset), "--model", str(tiny_bert), "--device", "cpu", "--no-progress", "--json"]
    assert cli.main(["eval", *common, "--methods", "int8,bm25", "--reranker", str(tiny_cross_encoder),
                     "--rerank-top", "3"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert list(report["metrics"]) == ["int8", "bm25", "int8+rerank"]
    assert cli.main(["eval", *common, "--rerank-top", "3"]) == 2
    assert "pass --reranker MODEL too" in capsys.readouterr().err


def test_eval_searches_a_store(tmp_path, tiny_bert, capsys):
    """`fastret eval --index STORE`: the store is searched (here, or on Ray with --shards/--ray: the same
    open_searchable as search and serve) instead of embedding the corpus again."""
    (tmp_path / "d").mkdir()
    topics = ["statins cholesterol", "asthma children", "fish oil", "coffee liver", "salt", "green tea"]
    (tmp_path / "d" / "corpus.jsonl").write_text(
        "".join(json.dumps({"_id": f"d{i}", "text": t}) + "\n" for i, t in enumerate(topics)))
    (tmp_path / "d" / "queries.jsonl").write_text(
        "".join(json.dumps({"_id": f"q{i}", "text": t}) + "\n" for i, t in enumerate(topics)))
    (tmp_path / "d" / "qrels").mkdir()
    (tmp_path / "d" / "qrels" / "test.tsv").write_text(
        "query-id\tcorpus-id\tscore\n" + "".join(f"q{i}\td{i}\t1\n" for i in range(len(topics))))
    common = ["--model", str(tiny_bert), "--device", "cpu"]
    assert cli.main(["encode", str(tmp_path / "d"), str(tmp_path / "store"), *common, "--shard-size", "2",
                     "--float16", "--no-progress"]) == 0
    capsys.readouterr()
    assert cli.main(["eval", str(tmp_path / "d"), "--index", str(tmp_path / "store"), *common, "--no-progress",
                     "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out)["metrics"]
    assert list(metrics) == ["int8", "int8+rescore", "bm25"]
    from fastret import evaluate

    direct = evaluate.evaluate_retrieval(fastret.Encoder(tiny_bert, device="cpu"), tmp_path / "d",
                                         methods=tuple(metrics), index=fastret.Index.load(tmp_path / "store"),
                                         show_progress_bar=False)
    assert direct.metrics == metrics and metrics["bm25"]["MRR@10"] == 1.0
    assert cli.main(["eval", str(tmp_path / "d"), "--shards", "2", *common]) == 2
    assert "pass --index STORE too" in capsys.readouterr().err


def test_bench_runs_small_and_reports_ratios(minilm_path, capsys):
    assert cli.main(["bench", "--n", "2000", "--dim", "32", "--queries", "20", "--docs", "4", "--json",
                     "--model", str(minilm_path)]) == 0
    results = json.loads(capsys.readouterr().out)
    engines = [row["engine"] for row in results["search"]]
    assert engines[-1] == "fastret int8" and results["search"][-1]["recall"] >= 0.9
    assert results["search"][0]["qps_vs_first"] == 1.0
    expected = ["fastret (torch.float32)", "fastret (int8 linear layers)"]
    if fastret.cpu.bf16_instruction_sets():
        expected.append("fastret (torch.bfloat16)")
    assert [row["engine"] for row in results["encode"]][-len(expected):] == expected


def test_train_options_mirror_train_config(tmp_path):
    import dataclasses

    from fastret.train.loop import TrainConfig

    args = cli.build_parser().parse_args(["train", "--model", "m", "--data", "a.jsonl", "b.jsonl", "--mesh-tree", "t",
                                          "--output-dir", "o", "--max-steps", "5", "--tau", "0.1", "--no-amp",
                                          "--target-modules", "query", "value"])
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)}
    config = TrainConfig(**values)
    assert config.data == ["a.jsonl", "b.jsonl"] and config.max_steps == 5 and config.tau == 0.1
    assert config.amp is False and config.target_modules == ["query", "value"] and config.lora_rank == 8


def test_hybrid_search_over_a_store_with_bm25(tmp_path, tiny_bert, ray_session, capsys):
    corpus = write_corpus(tmp_path / "corpus.jsonl", 12)
    common = ["--model", str(tiny_bert), "--device", "cpu"]
    assert cli.main(["encode", str(corpus), str(tmp_path / "store"), *common, "--shard-size", "5", "--float16",
                     "--bm25", "--no-progress"]) == 0
    capsys.readouterr()
    for fusion in ("rrf", "weighted"):
        assert cli.main(["search", str(tmp_path / "store"), "T text number 7", "-k", "4", "--hybrid",
                         "--fusion", fusion, "--json", *common]) == 0
        hits = json.loads(capsys.readouterr().out)["results"]
        assert len(hits) == 4 and all(hit["id"].startswith("d") for hit in hits)
    # --shards 2 --hybrid: the dense side on 2 Ray actors, BM25 here; the same output, line for line
    search = ["search", str(tmp_path / "store"), "T text number 7", "number 3", "-k", "5", "--hybrid", "--json",
              "--fusion", "weighted", "--rescore", *common]
    assert cli.main(search) == 0
    plain = capsys.readouterr().out.splitlines()
    assert cli.main(search + ["--shards", "2"]) == 0
    assert capsys.readouterr().out.splitlines() == plain and len(plain) == 2
    # a store without BM25, then built from its corpus; a corpus that does not match is refused
    assert cli.main(["encode", str(corpus), str(tmp_path / "plain"), *common, "--no-progress"]) == 0
    assert cli.main(["search", str(tmp_path / "plain"), "x", "--hybrid", *common]) == 2
    assert "has no lexical index; build one with `fastret index" in capsys.readouterr().err
    other = write_corpus(tmp_path / "other.jsonl", 11)
    assert cli.main(["index", str(tmp_path / "plain"), "--bm25", "--corpus", str(other)]) == 2
    assert "does not hold the documents of" in capsys.readouterr().err
    assert cli.main(["index", str(tmp_path / "plain"), "--bm25", "--corpus", str(corpus), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["documents"] == 12
    assert cli.main(["search", str(tmp_path / "plain"), "T text number 3", "--hybrid", "--json", *common]) == 0
    assert cli.main(["index", str(tmp_path / "plain")]) == 2
    # --hybrid --binary: the dense side behind the binary first stage
    from fastret.search.hybrid import HybridSearcher
    from fastret.search.lexical import LexicalIndex

    texts = ["T text number 3", "number 8", "T"]
    capsys.readouterr()
    assert cli.main(["search", str(tmp_path / "plain"), *texts, "-k", "4", "--candidates", "4", "--hybrid",
                     "--fusion", "rrf", "--binary", "--oversample", "1", "--json", *common]) == 0
    printed = [[hit["id"] for hit in json.loads(line)["results"]] for line in capsys.readouterr().out.splitlines()]
    index = fastret.Index.load(tmp_path / "plain")
    vectors = fastret.Encoder(tiny_bert, device="cpu").encode(texts)
    searcher = HybridSearcher(index, LexicalIndex.load(tmp_path / "plain"))
    ids = searcher.search(texts, vectors, 4, method="rrf", candidates=4, first_stage="binary", oversample=1)[1]
    assert printed == index.documents(ids).tolist()
    assert not np.array_equal(ids, searcher.search(texts, vectors, 4, method="rrf", candidates=4)[1])


def test_serve_options_mirror_serve_config(monkeypatch):
    from fastret.serve.config import API_KEY_ENV, ServeConfig

    monkeypatch.delenv(API_KEY_ENV, raising=False)
    parse = cli.build_parser().parse_args
    args = parse(["serve"])
    assert ServeConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(ServeConfig)}) == ServeConfig()
    assert (args.host, args.port, args.index, args.api_key, args.cors_origins) == ("127.0.0.1", 8080, None, None, [])
    args = parse(["serve", "--max-batch-tokens", "64", "--auto-truncate", "--served-model-name", "m",
                  "--cors-origin", "https://a.example", "--cors-origin", "https://b.example", "--max-k", "7"])
    assert (args.max_batch_tokens, args.auto_truncate, args.model_name, args.max_k) == (64, True, "m", 7)
    assert args.cors_origins == ["https://a.example", "https://b.example"]
    assert (args.shards, args.ray_address) == (None, None)
    args = parse(["serve", "--index", "store", "--shards", "2", "--ray", "auto"])
    assert (args.shards, args.ray_address) == (2, "auto")


def test_serve_api_key_comes_from_the_option_or_the_environment(monkeypatch, capsys):
    from fastret.serve.config import API_KEY_ENV

    monkeypatch.setenv(API_KEY_ENV, "from-env")
    parser = cli.build_parser()
    assert parser.parse_args(["serve"]).api_key == "from-env"
    assert parser.parse_args(["serve", "--api-key", "from-flag"]).api_key == "from-flag"
    with pytest.raises(SystemExit):
        parser.parse_args(["serve", "--help"])
    serve_help = capsys.readouterr().out
    assert "from-env" not in serve_help and f"${API_KEY_ENV}" in serve_help  # --help never shows the key


@pytest.mark.parametrize("option, message", [
    (["--port", "70000"], r"port must be in \[0, 65535\], got 70000"),
    (["--max-wait-ms", "-1"], r"max_wait_ms must be in \[0, 60000\), got -1.0"),
    (["--max-batch-texts", "0"], r"max_batch_texts must be an int >= 1, got 0"),
    (["--api-key", " "], r"api_key is empty"),
    (["--cors-origin", "example.org"], r"CORS origin 'example.org': expected scheme://host"),
    (["--shards", "2"], r"shards, ray_address and replicas search an index: set index \(--index STORE\) too"),
    (["--index", "store", "--shards", "0"], r"shards must be an int >= 1, got 0"),
])
def test_serve_bad_options_are_usage_errors(capsys, option, message):
    assert cli.main(["serve", *option]) == 2
    assert re.search(message, capsys.readouterr().err)


@pytest.mark.parametrize("host, key, warned", [("0.0.0.0", None, True), ("0.0.0.0", "k", False),
                                               ("127.0.0.1", None, False)])
def test_serve_warns_when_listening_beyond_loopback_without_a_key(tiny_bert, monkeypatch, caplog, capsys,
                                                                   host, key, warned):
    pytest.importorskip("fastapi", reason="fastret serve needs FastAPI")
    from fastret.serve import app as serve
    from fastret.serve.config import API_KEY_ENV

    monkeypatch.delenv(API_KEY_ENV, raising=False)
    ran = []
    monkeypatch.setattr(serve, "run", lambda app, host, port, **options: ran.append((host, port, options)))
    key_option = ["--api-key", key] if key else []
    assert cli.main(["serve", "--model", str(tiny_bert), "--device", "cpu", "--host", host, "--port", "0",
                     "--max-connections", "9", *key_option]) == 0
    assert [(h, p, options["max_connections"]) for h, p, options in ran] == [(host, 0, 9)]
    assert ("without an API key" in caplog.text) == warned
