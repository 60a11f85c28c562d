"""`fastret serve` as users run it: a real server in a subprocess on 127.0.0.1, spoken to over HTTP."""

import asyncio
import base64
import json
import os
import re
import select
import signal
import subprocess
import sys
import tempfile
import threading
import time
import warnings

import numpy as np
import pytest

import fastret
from fastret.corpus import BUNDLED_NFCORPUS, find_file, iter_corpus, load_queries
from fastret.search.hybrid import HybridSearcher
from fastret.search.lexical import LexicalIndex

httpx = pytest.importorskip("httpx", reason="the server tests talk HTTP with httpx (pip install httpx)")
pytest.importorskip("fastapi", reason="fastret serve needs FastAPI (pip install 'fastret[serve]')")
pytest.importorskip("uvicorn", reason="fastret serve needs uvicorn (pip install 'fastret[serve]')")

HOST = "127.0.0.1"
START_TIMEOUT_S = 240  # a cold start imports torch and transformers; shared CI machines are slow
REQUEST_TIMEOUT_S = 120
LONG_TEXT = "statins " * 400  # > 256 tokens


def _die_with_parent() -> None:
    """Runs in the child: SIGTERM it when the test process dies, so no server outlives a crash."""
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class Server:
    """`fastret serve ARGS` on 127.0.0.1 (port 0: a free one), ready when it prints its address."""

    def __init__(self, *args: str, port: int = 0):
        env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}  # the kernels are tested elsewhere
        env["HF_HUB_OFFLINE"] = "1"
        self.log = tempfile.TemporaryFile()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "fastret", "serve", "--host", HOST, "--port", str(port), *map(str, args)],
            stdout=subprocess.PIPE, stderr=self.log, env=env, preexec_fn=_die_with_parent)
        try:
            self.url = self._wait_for_address()
            self.port = int(self.url.rsplit(":", 1)[1])
        except BaseException:
            self.stop(signal.SIGKILL)
            raise

    def _wait_for_address(self) -> str:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"fastret serve exited with status {self.process.returncode}:\n{self.stderr()}")
            ready, _, _ = select.select([self.process.stdout], [], [], 0.5)
            if ready:
                line = self.process.stdout.readline().decode()
                found = re.search(r"listening on (http://\S+)", line)
                if found:
                    return found.group(1)
        raise RuntimeError(f"fastret serve did not start in {START_TIMEOUT_S} s:\n{self.stderr()}")

    def stderr(self) -> str:
        self.log.seek(0)
        return self.log.read().decode(errors="replace")[-4000:]

    def rss_bytes(self) -> int:
        with open(f"/proc/{self.process.pid}/status") as status:
            return next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmRSS:"))

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        """Send `sig` and wait for the exit (SIGKILL after `timeout`); the exit status."""
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process.stdout.close()
        return self.process.returncode


def cosines(a, b):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def error_of(response, status: int, error_type: str = "Validation") -> str:
    """The error message of a TEI-shaped JSON error answer, after checking its status and shape."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error", "error_type"} and body["error_type"] == error_type, body
    return body["error"]


@pytest.fixture(scope="module")
def encoder(minilm_path):
    return fastret.Encoder(minilm_path, device="cpu")


@pytest.fixture(scope="module")
def queries():
    return list(load_queries(find_file(BUNDLED_NFCORPUS, "queries.jsonl")).values())


@pytest.fixture(scope="module")
def store(tmp_path_factory, encoder):
    """30 NFCorpus documents (text cut short, to encode quickly) in a 3-shard store with float16 copies,
    stored fields (a made-up year) and BM25."""
    directory = tmp_path_factory.mktemp("serve-store")
    corpus = directory / "corpus.jsonl"
    records = [json.dumps({"_id": doc_id, "title": title, "text": text[:300], "year": 2000 + position % 10})
               for (doc_id, title, text), position in zip(iter_corpus(find_file(BUNDLED_NFCORPUS, "corpus.jsonl")),
                                                          range(30))]
    corpus.write_text("\n".join(records) + "\n")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        encoder.encode_corpus(corpus, directory / "store", shard_size=12, store_float16=True, show_progress_bar=False,
                              fields=True, bm25=True)
    return directory / "store"


@pytest.fixture(scope="module")
def server(minilm_path, store, tiny_cross_encoder):
    running = Server("--model", minilm_path, "--index", store, "--served-model-name", "minilm",
                     "--max-client-batch-size", 16, "--max-body-bytes", 65536, "--max-wait-ms", 5,
                     "--reranker", tiny_cross_encoder)
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture
def client(server):
    with httpx.Client(base_url=server.url, timeout=REQUEST_TIMEOUT_S) as http:
        yield http


def embed(client, texts, **options):
    response = client.post("/embed", json={"inputs": texts, **options})
    assert response.status_code == 200, response.text
    return np.array(response.json(), dtype=np.float32)


# ---------------------------------------------------------------------------------- endpoints


def test_embed_equals_encoder_encode(client, encoder, queries):
    texts = queries[:5]
    rows = embed(client, texts)
    expected = encoder.encode(texts)
    assert rows.shape == (5, 384) and cosines(rows, expected).min() >= 0.99999
    np.testing.assert_allclose(rows, expected, atol=1e-5)
    single = embed(client, texts[2])
    assert single.shape == (1, 384)
    np.testing.assert_allclose(single[0], expected[2], atol=1e-5)
    # MiniLM normalizes by its own config; normalize=false keeps the model's convention, like encode
    np.testing.assert_allclose(np.linalg.norm(embed(client, texts, normalize=False), axis=1), 1, atol=1e-5)


def test_truncate_true_cuts_a_long_text_as_encode_does(client, encoder):
    rows = embed(client, [LONG_TEXT, "short"], truncate=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = encoder.encode([LONG_TEXT, "short"])
    assert cosines(rows, expected).min() >= 0.99999


def test_openai_embeddings(client, encoder, queries):
    texts = queries[:3]
    floats = client.post("/v1/embeddings", json={"input": texts, "model": "text-embedding-3-small"}).json()
    assert floats["object"] == "list" and floats["model"] == "minilm"
    assert [(d["object"], d["index"]) for d in floats["data"]] == [("embedding", 0), ("embedding", 1), ("embedding", 2)]
    rows = np.array([d["embedding"] for d in floats["data"]], dtype=np.float32)
    assert cosines(rows, encoder.encode(texts)).min() >= 0.99999
    token_ids, _, _ = encoder.tokenize([encoder.prepare(t, i) for i, t in enumerate(texts)])
    tokens = sum(len(ids) for ids in token_ids)
    assert floats["usage"] == {"prompt_tokens": tokens, "total_tokens": tokens}

    packed = client.post("/v1/embeddings", json={"input": texts, "encoding_format": "base64"}).json()
    decoded = np.stack([np.frombuffer(base64.b64decode(d["embedding"]), dtype="<f4") for d in packed["data"]])
    np.testing.assert_array_equal(decoded, rows)  # the same float32 values, bit for bit
    one = client.post("/v1/embeddings", json={"input": texts[1]}).json()
    assert len(one["data"]) == 1
    # alone, the text runs without padding: equal to float rounding
    np.testing.assert_allclose(np.array(one["data"][0]["embedding"], dtype=np.float32), rows[1], atol=1e-6)


def test_search_answers_with_the_store_document_ids(client, store, queries):
    index = fastret.Index.load(store)
    names = fastret.Store.open(store).doc_ids()
    texts = queries[:4]
    vectors = embed(client, texts)  # the server's own query vectors: the offline search must agree exactly
    for rescore in (False, True):
        scores, ids = index.search(vectors, 5, rescore=rescore)
        answer = client.post("/search", json={"queries": texts, "k": 5, "rescore": rescore})
        assert answer.status_code == 200, answer.text
        results = answer.json()["results"]
        assert [[hit["id"] for hit in hits] for hits in results] == [[names[i] for i in row] for row in ids]
        np.testing.assert_allclose([[hit["score"] for hit in hits] for hits in results], scores, rtol=1e-6)
    single = client.post("/search", json={"query": texts[0], "k": 100}).json()["results"]
    assert len(single) == 1 and len(single[0]) == 30  # k beyond the index: every document, best first
    assert single[0][0]["id"] == names[int(index.search(vectors[:1], 1)[1][0, 0])]
    assert all(hit["id"].startswith("MED-") for hit in single[0])


def test_search_with_the_binary_first_stage(client, store, queries):
    """"binary": true (with "oversample"): the results of Index.search(..., first_stage="binary")."""
    index = fastret.Index.load(store)
    names = fastret.Store.open(store).doc_ids()
    texts = queries[:6]
    vectors = embed(client, texts)
    for options in ({"oversample": 1}, {}, {"oversample": "auto"}, {"oversample": 1, "rescore": True}):
        scores, ids = index.search(vectors, 3, first_stage="binary", **options)
        answer = client.post("/search", json={"queries": texts, "k": 3, "binary": True, **options})
        assert answer.status_code == 200, answer.text
        results = answer.json()["results"]
        assert [[hit["id"] for hit in hits] for hits in results] == [[names[i] for i in row] for row in ids]
        np.testing.assert_allclose([[hit["score"] for hit in hits] for hits in results], scores, rtol=1e-6)
    assert not np.array_equal(index.search(vectors, 3, first_stage="binary", oversample=1)[1],
                              index.search(vectors, 3)[1])
    searcher = HybridSearcher(index, LexicalIndex.load(store))
    _, ids = searcher.search(texts, vectors, 3, first_stage="binary", oversample=1)
    answer = client.post("/search", json={"queries": texts, "k": 3, "hybrid": True, "binary": True, "oversample": 1})
    assert [[hit["id"] for hit in hits] for hits in answer.json()["results"]] == [[names[i] for i in row] for row in ids]


def test_search_filters_and_returns_stored_fields(client, store, queries):
    index = fastret.Index.load(store)
    names = fastret.Store.open(store).doc_ids()
    texts = queries[:3]
    vectors = embed(client, texts)
    spec = {"year": {"$gte": 2007}}  # 9 of the 30 documents pass
    _, ids = index.search(vectors, 12, filter=spec)
    answer = client.post("/search", json={"queries": texts, "k": 12, "filter": spec, "fields": ["title", "year"]})
    assert answer.status_code == 200, answer.text
    results = answer.json()["results"]
    assert [[hit["id"] for hit in hits] for hits in results] == [[names[i] for i in row if i >= 0] for row in ids]
    assert all(len(hits) == 9 for hits in results)
    for hit in results[0]:
        assert hit["fields"] == index.fields([names.index(hit["id"])], names=["title", "year"])[0]
        assert hit["fields"]["year"] >= 2007
    nothing = client.post("/search", json={"query": texts[0], "filter": {"year": 1900}})
    assert nothing.status_code == 200 and nothing.json() == {"results": [[]]}
    hybrid = client.post("/search", json={"query": texts[0], "k": 5, "filter": spec, "fields": ["year"],
                                          "hybrid": True})
    assert hybrid.status_code == 200, hybrid.text
    hits = hybrid.json()["results"][0]
    assert len(hits) == 5 and all(hit["fields"]["year"] >= 2007 for hit in hits)
    assert "fields" not in client.post("/search", json={"query": texts[0], "k": 1}).json()["results"][0][0]


def test_a_server_on_ray_shards_answers_as_one_index(minilm_path, store, client, queries):
    """`fastret serve --index STORE --shards 2`: /search runs on a ShardedIndex (2 actors on a local
    Ray) and answers what the server over one Index answers, to the last digit."""
    pytest.importorskip("ray", reason="needs ray (pip install 'fastret[distributed]')")
    sharded = Server("--model", minilm_path, "--index", store, "--shards", 2)
    try:
        with httpx.Client(base_url=sharded.url, timeout=REQUEST_TIMEOUT_S) as http:
            for rescore in (False, True):
                body = {"queries": queries[:4], "k": 7, "rescore": rescore}
                answer = http.post("/search", json=body)
                assert answer.status_code == 200, answer.text
                assert answer.json() == client.post("/search", json=body).json()
            info = http.get("/info").json()
            assert info["index"]["size"] == 30 and info["shards"] == 2 and info["ray_address"] is None
    finally:
        assert sharded.stop() == 0, sharded.stderr()  # a graceful SIGTERM ends with status 0


def test_rerank_equals_the_reranker_in_teis_shape(client, tiny_cross_encoder, queries):
    reranker = fastret.Reranker(tiny_cross_encoder, device="cpu")
    texts = ["Statins and breast cancer survival.", "Vitamin D in asthma.", "coffee", "Statin use and mortality."]
    response = client.post("/rerank", json={"query": queries[0], "texts": texts})
    assert response.status_code == 200, response.text
    ranked = response.json()
    expected = reranker.predict([(queries[0], text) for text in texts])
    assert [row["index"] for row in ranked] == np.argsort(-expected, kind="stable").tolist()
    np.testing.assert_allclose([row["score"] for row in ranked], np.sort(expected)[::-1], atol=1e-5)
    assert all(set(row) == {"index", "score"} for row in ranked)
    raw = client.post("/rerank", json={"query": queries[0], "texts": texts, "raw_scores": True,
                                       "return_text": True}).json()
    np.testing.assert_allclose([row["score"] for row in raw],
                               np.sort(reranker.predict([(queries[0], t) for t in texts], activation="none"))[::-1],
                               atol=1e-5)
    assert [row["text"] for row in raw] == [texts[row["index"]] for row in raw]
    assert "texts is empty" in error_of(client.post("/rerank", json={"query": "q", "texts": []}), 422)
    assert "at most 16 per request" in error_of(client.post("/rerank", json={"query": "q", "texts": ["t"] * 17}), 413)
    too_long = client.post("/rerank", json={"query": "q", "texts": ["ok", LONG_TEXT], "truncate": False})
    assert "texts[1] is longer than the reranker's max length of 128" in error_of(too_long, 413)
    assert client.post("/rerank", json={"query": "q", "texts": [LONG_TEXT], "truncate": True}).status_code == 200
    assert "query is empty" in error_of(client.post("/rerank", json={"query": " ", "texts": ["t"]}), 422)


def test_search_reranks_with_the_servers_cross_encoder(client, store, minilm_path, tiny_cross_encoder, queries):
    from fastret.search.text import TextSearch

    body = {"query": queries[1], "k": 3, "rerank": True, "rerank_top": 10, "fields": ["title"]}
    response = client.post("/search", json=body)
    assert response.status_code == 200, response.text
    got = response.json()["results"][0]
    expected = TextSearch.open(store, fastret.Encoder(minilm_path, device="cpu"),
                               reranker=fastret.Reranker(tiny_cross_encoder, device="cpu")).search(
        [queries[1]], 3, rerank=True, rerank_top=10, fields=["title"])[0]
    assert [hit["id"] for hit in got] == [hit.id for hit in expected]
    np.testing.assert_allclose([hit["score"] for hit in got], [hit.score for hit in expected], atol=1e-5)
    assert [hit["fields"] for hit in got] == [hit.fields for hit in expected]
    assert "rerank_top sets how many" in error_of(client.post("/search", json={"query": "q", "rerank_top": 5}), 422)


def test_huggingface_hubs_inference_client_and_openais_client_as_users_call_them(server, encoder, queries):
    from huggingface_hub import InferenceClient
    from openai import OpenAI

    hub = InferenceClient(base_url=server.url)
    vector = np.asarray(hub.feature_extraction(queries[0]), np.float32).reshape(-1)  # POST / as TEI serves it
    np.testing.assert_allclose(vector, encoder.encode([queries[0]])[0], atol=1e-4)
    similarities = hub.sentence_similarity(queries[0], other_sentences=queries[1:4])
    rows = encoder.encode(queries[:4], normalize_embeddings=True)
    np.testing.assert_allclose(similarities, rows[1:] @ rows[0], atol=1e-4)
    openai = OpenAI(base_url=server.url + "/v1", api_key="not-needed-here")
    floats = openai.embeddings.create(input=queries[:3], model="minilm", encoding_format="float")
    default = openai.embeddings.create(input=queries[:3], model="minilm")  # the client asks for base64
    assert floats.model == "minilm" and [d.index for d in floats.data] == [0, 1, 2]
    np.testing.assert_allclose([d.embedding for d in floats.data], encoder.encode(queries[:3]), atol=1e-4)
    np.testing.assert_allclose([d.embedding for d in default.data], [d.embedding for d in floats.data], atol=1e-6)


def test_similarity_tokenize_and_the_root_route_in_teis_shapes(client, encoder, queries):
    body = {"inputs": {"source_sentence": queries[0], "sentences": queries[1:3]}}
    rows = encoder.encode(queries[:3], normalize_embeddings=True)
    for path in ("/similarity", "/"):
        response = client.post(path, json=body)
        assert response.status_code == 200, response.text
        np.testing.assert_allclose(response.json(), rows[1:] @ rows[0], atol=1e-4)
    np.testing.assert_allclose(client.post("/", json={"inputs": [queries[0]]}).json(), encoder.encode(queries[:1]),
                               atol=1e-4)
    tokens = client.post("/tokenize", json={"inputs": ["Statins lower LDL", "x"]}).json()
    ids = encoder.tokenizer("Statins lower LDL")["input_ids"]
    assert [t["id"] for t in tokens[0]] == ids
    assert [t["special"] for t in tokens[0]] == [True] + [False] * (len(ids) - 2) + [True]
    assert tokens[0][0] == {"id": ids[0], "text": "[CLS]", "special": True, "start": None, "stop": None}
    assert "".join(t["text"] for t in tokens[0][1:-1]).lower() == "statinslowerldl"
    assert (tokens[0][1]["start"], tokens[0][-2]["stop"]) == (0, len("Statins lower LDL"))
    plain = client.post("/tokenize", json={"inputs": "x", "add_special_tokens": False}).json()
    assert [t["special"] for t in plain[0]] == [False]
    assert "sentences is empty" in error_of(client.post("/similarity", json={
        "inputs": {"source_sentence": "a", "sentences": []}}), 422)
    assert "inputs.source_sentence" in error_of(client.post("/", json={"inputs": {"sentences": ["a"]}}), 422)
    assert "malformed JSON" in error_of(client.post("/", content=b"{", headers={"content-type": "application/json"}),
                                        400)
    assert "unknown prompt_name" in error_of(client.post("/tokenize", json={"inputs": "x", "prompt_name": "nope"}),
                                             422)


def test_health_info_and_metrics(client, store):
    assert client.get("/health").json() == {"status": "ok"}
    info = client.get("/info").json()
    assert {k: info[k] for k in ("model_id", "dim", "pooling", "normalize", "max_input_length")} == {
        "model_id": "minilm", "dim": 384, "pooling": "mean", "normalize": True, "max_input_length": 256}
    assert info["index"] == {"name": store.name, "size": 30, "dim": 384, "rescore": True, "device": "cpu"}
    assert info["search_device"] == "auto"  # auto on a model on the CPU: the index searches on the CPU
    assert info["reranker"] == {"model_id": info["reranker"]["model_id"], "model_dtype": "torch.float32",
                                "max_input_length": 128}
    text = client.get("/info").text
    assert str(store.parent) not in text and "/tmp" not in text  # no local paths
    assert info["max_client_batch_size"] == 16 and info["max_batch_tokens"] == 16384

    def sample(text, name):
        found = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
        return float(found.group(1)) if found else 0.0

    before = client.get("/metrics").text
    embed(client, ["vitamin D", "coffee"])
    client.post("/embed", json={"inputs": []})
    response = client.get("/metrics")
    assert response.headers["content-type"].startswith("text/plain")
    after = response.text
    for name in ("fastret_queue_seconds", "fastret_batch_texts", "fastret_batch_tokens", "fastret_request_seconds",
                 "fastret_tokens_per_second", "fastret_queued_tokens", "fastret_model_seconds_total"):
        assert f"# TYPE {name} " in after
    ok, bad = 'fastret_requests_total{endpoint="/embed",status="200"}', 'fastret_requests_total{endpoint="/embed",status="422"}'
    assert sample(after, ok) == sample(before, ok) + 1 and sample(after, bad) == sample(before, bad) + 1
    assert sample(after, "fastret_batch_texts_sum") >= sample(before, "fastret_batch_texts_sum") + 2
    assert sample(after, "fastret_tokens_total") > sample(before, "fastret_tokens_total")
    assert sample(after, 'fastret_errors_total{endpoint="/embed",error_type="Validation"}') >= 1
    assert sample(after, "fastret_tokens_per_second") > 0


def test_openapi_docs_are_served(client):
    assert client.get("/docs").status_code == 200
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/embed", "/v1/embeddings", "/search", "/health", "/info", "/metrics"} <= set(paths)


# ---------------------------------------------------------------------------------- bad input

JSON = {"content-type": "application/json"}
BAD_REQUESTS = [
    # (method, path, JSON body or raw bytes, headers, status, message pattern)
    ("POST", "/embed", b'{"inputs": ', JSON, 400, "malformed JSON"),
    ("POST", "/embed", b"inputs=x", {"content-type": "application/x-www-form-urlencoded"}, 400,
     "must be JSON; send it with Content-Type: application/json"),
    ("POST", "/embed", {"inputs": 5}, None, 422, "inputs"),
    ("POST", "/embed", {"inputs": ["a", 3]}, None, 422, r"inputs\.list\[str\]\.1: Input should be a valid string"),
    ("POST", "/embed", {}, None, 422, "inputs: Field required"),
    ("POST", "/embed", [1, 2], None, 422, "Input should be a valid dictionary"),
    ("POST", "/embed", {"inputs": []}, None, 422, "inputs is empty"),
    ("POST", "/embed", {"inputs": ["ok", "  "]}, None, 422, r"inputs\[1\] is empty or whitespace"),
    ("POST", "/embed", {"inputs": "x", "normalize": "yes"}, None, 422, "normalize: Input should be a valid boolean"),
    ("POST", "/embed", {"inputs": ["x"] * 17}, None, 413, "17 texts in inputs; at most 16 per request"),
    ("POST", "/embed", {"inputs": ["ok", LONG_TEXT]}, None, 413,
     r"inputs\[1\] is longer than the model's max length of 256 tokens; send \"truncate\": true"),
    ("POST", "/embed", {"inputs": LONG_TEXT, "truncate": False}, None, 413, "max length of 256"),
    ("POST", "/embed", {"inputs": "x", "prompt_name": "query"}, None, 422, "unknown prompt_name 'query'"),
    ("POST", "/embed", {"inputs": ["word " * 20000]}, None, 413, "request body over 65536 bytes"),
    ("POST", "/v1/embeddings", {"input": [[101, 2023, 102]]}, None, 422, "token-id arrays are not accepted"),
    ("POST", "/v1/embeddings", {"input": "x", "encoding_format": "int8"}, None, 422, "encoding_format"),
    ("POST", "/v1/embeddings", {"input": "x", "dimensions": 128}, None, 422, "dimensions=128, but this model makes 384"),
    ("POST", "/v1/embeddings", {"input": ""}, None, 422, r"input\[0\] is empty"),
    ("POST", "/search", {"query": "x", "queries": ["y"]}, None, 422, "exactly one of"),
    ("POST", "/search", {"k": 3}, None, 422, "exactly one of"),
    ("POST", "/search", {"query": "x", "k": 0}, None, 422, "k: Input should be greater than or equal to 1"),
    ("POST", "/search", {"query": "x", "k": "3"}, None, 422, "k: Input should be a valid integer"),
    ("POST", "/search", {"query": "x", "k": 5000}, None, 422, "k=5000; at most 1000"),
    ("POST", "/search", {"queries": []}, None, 422, "queries is empty"),
    ("POST", "/search", {"query": "x", "filter": {"yeer": 1}}, None, 422, r'filter\["yeer"\]: unknown field'),
    ("POST", "/search", {"query": "x", "filter": {"year": {"$gt": "a"}}}, None, 422,
     r'filter\["year"\]\["\$gt"\]: field .year. holds numbers'),
    ("POST", "/search", {"query": "x", "filter": {"year": {"$near": 1}}}, None, 422, "unknown operator '\\$near'"),
    ("POST", "/search", {"query": "x", "filter": {"mesh": {"$under": "C04"}}}, None, 422, r"\$under needs the MeSH tree"),
    ("POST", "/search", {"query": "x", "filter": [1]}, None, 422, "filter: Input should be a valid dictionary"),
    ("POST", "/search", {"query": "x", "binary": True, "oversample": 0}, None, 422,
     "oversample must be >= 1 .binary candidates per result. or 'auto', got 0"),
    ("POST", "/search", {"query": "x", "binary": True, "oversample": "x"}, None, 422,
     "oversample must be 'auto' or an int >= 1 .binary candidates per result., got 'x'"),
    ("POST", "/search", {"query": "x", "binary": True, "oversample": 2.5}, None, 422, "oversample"),
    ("POST", "/search", {"query": "x", "oversample": 4}, None, 422,
     r"oversample \(binary candidates per result\) applies to the binary first stage only"),
    ("POST", "/search", {"query": "x", "binary": "yes"}, None, 422, "binary: Input should be a valid boolean"),
    ("GET", "/embed", None, None, 405, "Method Not Allowed"),
    ("POST", "/nothing", {}, None, 404, "Not Found"),
]


@pytest.mark.parametrize("method, path, body, headers, status, message", BAD_REQUESTS,
                         ids=[f"{r[1]}-{r[4]}-{i}" for i, r in enumerate(BAD_REQUESTS)])
def test_bad_requests_get_a_json_error_and_the_next_request_succeeds(client, method, path, body, headers, status,
                                                                      message):
    if isinstance(body, bytes):
        response = client.request(method, path, content=body, headers=headers)
    else:
        response = client.request(method, path, json=body)
    assert re.search(message, error_of(response, status)), response.text
    assert embed(client, "vitamin D").shape == (1, 384)


# ---------------------------------------------------------------------------------- concurrency


def test_200_concurrent_requests_get_the_offline_answers(server, encoder, queries):
    requests = [queries[i] if i % 3 else queries[i : i + 3] for i in range(200)]
    texts = sorted({t for r in requests for t in ([r] if isinstance(r, str) else r)})
    expected = dict(zip(texts, encoder.encode(texts, batch_size=512)))

    async def main():
        limits = httpx.Limits(max_connections=200, max_keepalive_connections=200)
        async with httpx.AsyncClient(base_url=server.url, limits=limits, timeout=REQUEST_TIMEOUT_S) as http:
            before = (await http.get("/metrics")).text
            answers = await asyncio.gather(*(http.post("/embed", json={"inputs": r}) for r in requests))
            return before, answers, (await http.get("/metrics")).text

    before, answers, after = asyncio.run(asyncio.wait_for(main(), 600))
    for request, answer in zip(requests, answers):
        assert answer.status_code == 200, answer.text
        request_texts = [request] if isinstance(request, str) else request
        assert cosines(answer.json(), [expected[t] for t in request_texts]).min() >= 0.99999

    def sample(text, name):
        return float(re.search(rf"^{name} (\S+)$", text, re.MULTILINE).group(1))

    calls = sample(after, "fastret_batch_requests_count") - sample(before, "fastret_batch_requests_count")
    served = sample(after, "fastret_batch_requests_sum") - sample(before, "fastret_batch_requests_sum")
    assert served == 200 and calls < 200  # requests shared forward passes


# ---------------------------------------------------------------------------------- overload, shutdown, restart


def test_overload_shutdown_and_restart(minilm_path, queries):
    """A small queue answers 429 with Retry-After and recovers, memory stays put; SIGTERM finishes the
    request in flight and exits 0; a restart on the same port answers the same."""
    options = ("--model", minilm_path, "--max-queue-tokens", 48, "--max-wait-ms", 300, "--max-batch-tokens", 64)
    server = Server(*options)
    try:
        with httpx.Client(base_url=server.url, timeout=REQUEST_TIMEOUT_S) as http:
            assert re.search("no index is loaded; start the server with --index",
                             error_of(http.post("/search", json={"query": "x"}), 422))
            reference = np.array(http.post("/embed", json={"inputs": queries[:8]}).json())

        async def burst():
            limits = httpx.Limits(max_connections=100, max_keepalive_connections=100)
            async with httpx.AsyncClient(base_url=server.url, limits=limits, timeout=REQUEST_TIMEOUT_S) as http:
                return await asyncio.gather(*(http.post("/embed", json={"inputs": queries[i]}) for i in range(100)))

        rss = [server.rss_bytes()]
        for _ in range(3):
            answers = asyncio.run(asyncio.wait_for(burst(), 300))
            rss.append(server.rss_bytes())
            refused = [a for a in answers if a.status_code == 429]
            assert refused and len(refused) < 100
            assert all(a.status_code in (200, 429) for a in answers)
            for answer in refused:
                assert "the batching queue is full" in error_of(answer, 429, "Overloaded")
                assert int(answer.headers["retry-after"]) >= 1
        assert max(rss) - rss[0] < 300 * 2**20, rss  # bounded: the queue does not grow with the load

        with httpx.Client(base_url=server.url, timeout=REQUEST_TIMEOUT_S) as http:
            np.testing.assert_allclose(http.post("/embed", json={"inputs": queries[:8]}).json(), reference, atol=1e-6)
            queued = re.compile(r"^fastret_queued_tokens (\S+)$", re.MULTILINE)
            in_flight = {}

            def send():
                in_flight["response"] = http.post("/embed", json={"inputs": queries[:2]})  # under the batch budget
                in_flight["answered"] = time.monotonic()

            sender = threading.Thread(target=send)
            sender.start()
            deadline = time.monotonic() + 60
            # the 300 ms wait window keeps the request queued; signal while it is
            while float(queued.search(httpx.get(f"{server.url}/metrics").text).group(1)) == 0:
                assert time.monotonic() < deadline and sender.is_alive(), "the request never queued"
            signalled = time.monotonic()
            status = server.stop(signal.SIGTERM)
            sender.join(REQUEST_TIMEOUT_S)
        assert status == 0, server.stderr()  # a graceful SIGTERM ends with status 0
        assert "Traceback" not in server.stderr(), server.stderr()
        assert in_flight["answered"] > signalled
        assert in_flight["response"].status_code == 200
        np.testing.assert_allclose(in_flight["response"].json(), reference[:2], atol=1e-6)

        port = server.port
        server = Server(*options, port=port)  # the same port, free again after a clean shutdown
        assert server.port == port
        with httpx.Client(base_url=server.url, timeout=REQUEST_TIMEOUT_S) as http:
            np.testing.assert_allclose(http.post("/embed", json={"inputs": queries[:8]}).json(), reference, atol=1e-6)
    finally:
        server.stop()


# ---------------------------------------------------------------------------------- the app factory, in process


def test_normalize_follows_the_request_on_a_model_that_does_not_normalize(tiny_encoder):
    from fastapi.testclient import TestClient

    from fastret.serve.app import create_app

    encoder = tiny_encoder
    assert not encoder.normalize
    texts = ["vitamin D", "statins and breast cancer"]
    with TestClient(create_app(encoder)) as http:
        raw = np.array(http.post("/embed", json={"inputs": texts, "normalize": False}).json())
        unit = np.array(http.post("/embed", json={"inputs": texts}).json())  # TEI's default: normalize
        openai = np.array([d["embedding"] for d in http.post("/v1/embeddings", json={"input": texts}).json()["data"]])
    np.testing.assert_allclose(raw, encoder.encode(texts), atol=1e-5)
    assert not np.allclose(np.linalg.norm(raw, axis=1), 1)
    np.testing.assert_allclose(unit, encoder.encode(texts, normalize_embeddings=True), atol=1e-5)
    np.testing.assert_allclose(openai, unit, atol=1e-6)


def test_a_server_without_a_reranker_says_how_to_get_one(tiny_encoder):
    from fastapi.testclient import TestClient

    from fastret.serve.app import create_app

    with TestClient(create_app(tiny_encoder)) as http:
        answer = http.post("/rerank", json={"query": "q", "texts": ["t"]})
        assert "start it with --reranker MODEL" in error_of(answer, 404)
        assert http.get("/info").json()["reranker"] is None



def test_an_index_of_another_dimension_is_refused(tiny_encoder):
    from fastret.serve.app import create_app

    with pytest.raises(ValueError, match="the model makes 32-d vectors but the index holds 384-d ones"):
        create_app(tiny_encoder, fastret.Index(384))


# ---------------------------------------------------------------------------------- access


KEY = "s3cret-key"
ORIGIN = "https://app.example.org"


@pytest.fixture(scope="module")
def tiny_encoder(tiny_bert):
    return fastret.Encoder(tiny_bert, device="cpu")


def guarded_client(encoder, **config):
    from fastapi.testclient import TestClient

    from fastret.serve.app import ServeConfig, create_app

    return TestClient(create_app(encoder, config=ServeConfig(**config)))


def test_with_an_api_key_every_endpoint_but_health_needs_it(tiny_encoder, monkeypatch):
    import hmac

    from fastret.serve import app as serve

    compared, constant_time = [], hmac.compare_digest
    monkeypatch.setattr(serve.hmac, "compare_digest", lambda a, b: compared.append((a, b)) or constant_time(a, b))
    with guarded_client(tiny_encoder, api_key=KEY) as http:
        for method, path in (("POST", "/embed"), ("POST", "/v1/embeddings"), ("POST", "/search"), ("GET", "/info"),
                             ("GET", "/metrics"), ("GET", "/docs"), ("GET", "/openapi.json"), ("GET", "/nothing"),
                             ("POST", "/"), ("POST", "/similarity"), ("POST", "/tokenize"), ("POST", "/rerank")):
            response = http.request(method, path, json={"inputs": "x", "input": "x", "query": "x"})
            assert "needs an API key" in error_of(response, 401, "Unauthorized"), path
            assert response.headers["www-authenticate"].startswith("Bearer")
        for header in (f"Bearer {KEY}x", f"Bearer {KEY[:-1]}", "Bearer ", f"Basic {KEY}", KEY):
            response = http.post("/embed", json={"inputs": "x"}, headers={"Authorization": header})
            assert re.search("wrong API key|must be 'Bearer KEY'", error_of(response, 401, "Unauthorized")), header
        assert http.get("/health").json() == {"status": "ok"}
        good = {"Authorization": f"Bearer {KEY}"}
        assert np.array(http.post("/embed", json={"inputs": "x"}, headers=good).json()).shape == (1, 32)
        assert http.post("/embed", json={"inputs": "x"}, headers={"authorization": f"bearer {KEY}"}).status_code == 200
        info = http.get("/info", headers=good)
        assert info.status_code == 200 and KEY not in info.text and "api_key" not in info.json()
        metrics_text = http.get("/metrics", headers=good).text
    assert (KEY.encode(), KEY.encode()) in compared  # the key is compared in constant time
    assert 'fastret_errors_total{endpoint="/embed",error_type="Unauthorized"}' in metrics_text


def test_cors_headers_only_for_the_origins_asked_for(tiny_encoder):
    preflight = {"Origin": ORIGIN, "Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "authorization,content-type"}
    with guarded_client(tiny_encoder) as http:  # no CORS unless asked
        assert "access-control-allow-origin" not in http.post("/embed", json={"inputs": "x"},
                                                             headers={"Origin": ORIGIN}).headers
        answer = http.options("/embed", headers=preflight)
        assert answer.status_code == 405 and "access-control-allow-origin" not in answer.headers
    with guarded_client(tiny_encoder, api_key=KEY, cors_origins=[ORIGIN]) as http:
        answer = http.options("/embed", headers=preflight)  # preflights carry no key
        assert answer.status_code == 200 and answer.headers["access-control-allow-origin"] == ORIGIN
        assert "authorization" in answer.headers["access-control-allow-headers"].lower()
        allowed = http.post("/embed", json={"inputs": "x"}, headers={"Origin": ORIGIN, "Authorization": f"Bearer {KEY}"})
        assert allowed.status_code == 200 and allowed.headers["access-control-allow-origin"] == ORIGIN
        refused = http.post("/embed", json={"inputs": "x"}, headers={"Origin": ORIGIN})
        assert refused.status_code == 401 and refused.headers["access-control-allow-origin"] == ORIGIN
        other = http.post("/embed", json={"inputs": "x"},
                          headers={"Origin": "https://evil.example", "Authorization": f"Bearer {KEY}"})
        assert "access-control-allow-origin" not in other.headers
        assert http.options("/embed", headers={**preflight, "Origin": "https://evil.example"}).status_code == 400


def test_connections_to_the_server_send_without_delay():
    """The server's connections have Nagle's algorithm off: otherwise each keep-alive response after
    the first holds its body back ~40 ms, until the client's delayed ACK of the headers."""
    import socket

    from fastret.serve.app import listening_socket

    async def main() -> int:
        options = asyncio.get_running_loop().create_future()

        async def accept(reader, writer):
            options.set_result(writer.get_extra_info("socket").getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
            writer.close()

        listener = listening_socket("127.0.0.1", 0)
        server = await asyncio.start_server(accept, sock=listener)
        async with server:
            _, writer = await asyncio.open_connection(*listener.getsockname())
            nodelay = await asyncio.wait_for(options, 10)
            writer.close()
        return nodelay

    assert asyncio.run(main()) != 0


def test_keep_alive_requests_are_not_held_back(server):
    """Five /health requests on one keep-alive connection: with Nagle's algorithm on, each after the
    first took >= 40 ms (a delayed ACK); /health takes well under a millisecond to answer."""
    import socket

    host, port = server.url.removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        stream = sock.makefile("rb")
        seconds = []
        for _ in range(5):
            start = time.perf_counter()
            sock.sendall(f"GET /health HTTP/1.1\r\nhost: {host}\r\n\r\n".encode())
            assert stream.readline().split()[1] == b"200"
            length = 0
            while (line := stream.readline()) not in (b"\r\n", b""):
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            assert json.loads(stream.read(length)) == {"status": "ok"}
            seconds.append(time.perf_counter() - start)
    assert sorted(seconds[1:])[1] < 0.035, f"keep-alive /health took {[round(s * 1000, 1) for s in seconds]} ms"
