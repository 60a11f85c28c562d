"""`fastret serve`: the encoder and an index over HTTP (FastAPI + uvicorn).

Endpoints:
  POST /embed            TEI-compatible: {"inputs", "normalize", "truncate", "prompt_name"} -> [[float]]
  POST /v1/embeddings    OpenAI-compatible: {"input", "model", "encoding_format"} -> {"object": "list", ...}
                         (unit-length rows, as OpenAI's)
  POST /search           {"query" | "queries", "k", "rescore", "filter", "fields", "hybrid", "binary",
                          "oversample", "rerank", "rerank_top"}
                         -> {"results": [[{"id", "score", "fields"}]]} ("fields" when asked for)
  POST /rerank           TEI-compatible, with --reranker: {"query", "texts", "raw_scores", "return_text",
                         "truncate"} -> [{"index", "score", "text"?}], best first
  POST /similarity       TEI-compatible: {"inputs": {"source_sentence", "sentences"}} -> [cosine]
  POST /tokenize         TEI-compatible: {"inputs", "add_special_tokens", "prompt_name"}
                         -> [[{"id", "text", "special", "start", "stop"}]]
  POST /                 as TEI for an embedding model: /similarity's body there, else /embed's
                         (what huggingface_hub's InferenceClient(base_url=...) posts)
  GET  /health, /info, /metrics (Prometheus text)

Each request's texts are tokenized (on the event loop when short, else in a thread), then queued
to one `dynamic_batching.Batcher`, which runs the texts of concurrent requests in shared,
token-budgeted forward passes in its worker thread. Errors are JSON in TEI's shape,
{"error": message, "error_type": kind}: 400 malformed JSON, 401 a missing or wrong API key, 413 too
many inputs, a too-long text (truncate=false) or a too-large body, 422 any other invalid request,
429 (with Retry-After) a full queue, 503 while shutting down.

Access (`ServeConfig`): with an API key, every endpoint but /health needs `Authorization: Bearer
KEY`, as in text-embeddings-inference; without one, listening beyond loopback logs a warning.
Browsers get CORS headers only for the origins the config names.
"""

from __future__ import annotations

import base64
import contextlib
import hmac
import json
import logging
import signal
import socket
import threading
import time
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Callable, Dict, List, Literal, Optional, Union

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from .. import __version__
from ..encode.encoder import Encoder
from ..rerank.reranker import Reranker
from ..search.rules import Searchable
from ..search.searchers import open_searchable
from ..search.text import TextSearch
from . import metrics
from .batching import Batcher, BatcherClosed, BatchReport, QueueFull
from .config import ServeConfig, exposure_warning

logger = logging.getLogger(__name__)


# Up to this many characters, a request's texts are tokenized on the event loop: that takes tens
# of microseconds, less than handing them to a thread; longer requests go to the thread pool.
_INLINE_TOKENIZE_CHARS = 4096
# answered without the API key: load balancers and orchestrators probe it
_OPEN_PATHS = frozenset({"/health"})


class ServeError(Exception):
    """An error answered as {"error": message, "error_type": kind} with `status`."""

    def __init__(self, status: int, message: str, error_type: str = "Validation", headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.error_type, self.headers = status, message, error_type, headers


# ---------------------------------------------------------------------------------- request bodies

class _Body(BaseModel):
    # strict: a number is not a str and "true" is not a bool; unknown fields are ignored, as
    # clients send extras (TEI's truncation_direction, OpenAI's user)
    model_config = ConfigDict(strict=True, extra="ignore")


class EmbedRequest(_Body):
    """TEI's POST /embed body."""

    inputs: Union[str, List[str]]
    normalize: bool = True
    truncate: Optional[bool] = None
    prompt_name: Optional[str] = None


class OpenAIEmbeddingRequest(_Body):
    """OpenAI's POST /v1/embeddings body (token-id arrays are not accepted: send text)."""

    input: Union[str, List[str]]
    model: Optional[str] = None
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: Optional[int] = None
    truncate: Optional[bool] = None
    prompt_name: Optional[str] = None


class SearchRequest(_Body):
    """POST /search body: one `query` or a list of `queries`."""

    query: Optional[str] = None
    queries: Optional[List[str]] = None
    k: int = Field(10, ge=1)
    rescore: bool = False
    truncate: Optional[bool] = None
    prompt_name: Optional[str] = None
    filter: Optional[Dict[str, Any]] = None  # the JSON operator form (fastret.search.filters)
    fields: Optional[List[str]] = None  # stored fields to return with each result
    hybrid: bool = False  # fuse with the store's BM25 index (fastret.search.hybrid defaults)
    binary: bool = False  # the binary first stage (Index.search(..., first_stage="binary"))
    # its candidates per result: "auto" (the default, fastret.search.binary.auto_oversample) or an int >= 1,
    # checked with the rest of the search (fastret.search.rules.check_first_stage)
    oversample: Optional[Union[int, str]] = None
    rerank: bool = False  # the top rerank_top re-ranked by the server's cross-encoder (--reranker)
    rerank_top: Optional[int] = None


class SimilarityInputs(_Body):
    source_sentence: str
    sentences: List[str]


class SimilarityRequest(_Body):
    """TEI's POST /similarity body (huggingface_hub's sentence_similarity)."""

    inputs: SimilarityInputs
    parameters: Optional[Dict[str, Any]] = None  # TEI's truncate / prompt_name may come here too


class TokenizeRequest(_Body):
    """TEI's POST /tokenize body."""

    inputs: Union[str, List[str]]
    add_special_tokens: bool = True
    prompt_name: Optional[str] = None


class RerankRequest(_Body):
    """TEI's POST /rerank body."""

    query: str
    texts: List[str]
    raw_scores: bool = False  # the logits; else their sigmoid (TEI's and sentence-transformers' default)
    return_text: bool = False
    truncate: Optional[bool] = None


# ---------------------------------------------------------------------------------- the service

class _Metrics:
    """The server's instruments (see GET /metrics)."""

    def __init__(self) -> None:
        seconds = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
        sizes = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
        self.requests = metrics.Counter("fastret_requests_total", "HTTP requests answered", ("endpoint", "status"))
        self.errors = metrics.Counter("fastret_errors_total", "requests answered with an error",
                                      ("endpoint", "error_type"))
        self.latency = metrics.Histogram("fastret_request_seconds", "time to answer a request", seconds,
                                         ("endpoint",))
        self.queue = metrics.Histogram("fastret_queue_seconds", "time a request's texts waited for a forward pass",
                                       seconds)
        self.batch_texts = metrics.Histogram("fastret_batch_texts", "texts per forward pass", sizes)
        self.batch_requests = metrics.Histogram("fastret_batch_requests", "requests sharing a forward pass", sizes)
        self.batch_tokens = metrics.Histogram("fastret_batch_tokens", "tokens per forward pass",
                                              tuple(64 * s for s in sizes))
        self.tokens = metrics.Counter("fastret_tokens_total", "tokens embedded")
        self.model_seconds = metrics.Counter("fastret_model_seconds_total", "time spent in forward passes")
        self.tokens_per_second = metrics.Gauge("fastret_tokens_per_second",
                                               "tokens embedded per second of forward passes, since start")
        self.queued_tokens = metrics.Gauge("fastret_queued_tokens", "tokens waiting for a forward pass")

    def record_batch(self, report: BatchReport) -> None:
        for seconds in report.queue_seconds:
            self.queue.observe(seconds)
        self.batch_texts.observe(report.texts)
        self.batch_requests.observe(report.jobs)
        self.batch_tokens.observe(report.tokens)
        self.tokens.inc(report.tokens)
        self.model_seconds.inc(report.run_seconds)
        busy = self.model_seconds.value()
        self.tokens_per_second.set(self.tokens.value() / busy if busy > 0 else 0.0)

    def render(self) -> str:
        return metrics.render([self.requests, self.errors, self.latency, self.queue, self.batch_texts,
                               self.batch_requests, self.batch_tokens, self.tokens, self.model_seconds,
                               self.tokens_per_second, self.queued_tokens])


class _Service:
    """What the routes share: the model, the index, the limits, the metrics and (while the app
    runs) the batcher whose worker thread runs the forward passes."""

    def __init__(self, encoder: Encoder, index: Searchable | None, index_path: Path | None, config: ServeConfig,
                 reranker: Reranker | None = None):
        self.encoder, self.index, self.index_path, self.config = encoder, index, index_path, config
        self.reranker = reranker
        self.model_name = config.model_name or Path(str(encoder.model_dir)).name
        self.stats = _Metrics()
        self.batcher: Batcher | None = None
        # one re-ranking at a time: concurrent forward passes would only share the same cores
        self.rerank_lock = threading.Lock()
        self.text_search = None if index is None else TextSearch(
            index, encoder, lexical=index_path if index_path is not None and index_path.is_dir() else None,
            mesh=config.mesh, reranker=reranker)

    def search_options(self, body: "SearchRequest") -> dict:
        """The search a /search body asks for, as `TextSearch.rank`'s keywords, checked before its
        queries are embedded.

        Raises:
            ServeError: 422 for arguments the search refuses (a bad filter, rescoring without float16
                copies, oversample without the binary stage, hybrid without a BM25 index), saying why.
        """
        options = {"filter": body.filter, "rescore": body.rescore or None, "hybrid": body.hybrid,
                   "first_stage": "binary" if body.binary else "int8", "oversample": body.oversample,
                   "rerank": body.rerank, "rerank_top": body.rerank_top}
        if body.rerank and self.reranker is None:
            raise ServeError(422, "\"rerank\": true needs a cross-encoder, and this server has none: start it with "
                                  "--reranker MODEL")
        try:
            options["filter"] = self.text_search.check(body.k, **options)  # parsed once
        except (ValueError, TypeError) as error:
            raise ServeError(422, str(error)) from None
        return options

    def search(self, texts: list[str], vectors: np.ndarray, body: "SearchRequest", options: dict):
        """The hits of a /search body (run in a worker thread).

        Raises:
            ServeError: 422 for what `TextSearch` refuses once the queries are known (texts and vectors
                that do not match, a filter naming a field of another type, a binary search of
                files without sign bits).
        """
        try:
            if not options["rerank"]:
                return self.text_search.search(texts, body.k, vectors=vectors, fields=body.fields, **options)
            with self.rerank_lock:
                return self.text_search.search(texts, body.k, vectors=vectors, fields=body.fields, **options)
        except (ValueError, TypeError) as error:
            raise ServeError(422, str(error)) from None

    def check_count(self, count: int, field: str) -> None:
        """A 413 ServeError for more than --max-client-batch-size texts in a request's `field`."""
        if count > self.config.max_client_batch_size:
            raise ServeError(413, f"{count} texts in {field}; at most {self.config.max_client_batch_size} per "
                                  "request (--max-client-batch-size): split the request")

    def check_truncation(self, truncated: list[bool], truncate: bool | None, field: str, limit: str) -> None:
        """A 413 ServeError when an input was longer than `limit` (tokens) and the request (or, when it
        does not say, --auto-truncate) does not allow cutting it; `field` names the inputs."""
        allow = self.config.auto_truncate if truncate is None else truncate
        if not allow and any(truncated):
            first = truncated.index(True)
            more = f" (and {sum(truncated) - 1} more)" if sum(truncated) > 1 else ""
            raise ServeError(413, f"{field}[{first}]{more} is longer than {limit} tokens; send \"truncate\": true "
                                  "to cut it")

    async def similarity(self, body: "SimilarityRequest") -> list[float]:
        """TEI's /similarity answer: the cosine of the source sentence's embedding with each sentence's."""
        parameters = body.parameters or {}
        truncate, prompt_name = parameters.get("truncate"), parameters.get("prompt_name")
        if not isinstance(truncate, (bool, type(None))) or not isinstance(prompt_name, (str, type(None))):
            raise ServeError(422, "parameters.truncate must be a bool and parameters.prompt_name a str")
        if not body.inputs.sentences:
            raise ServeError(422, "inputs.sentences is empty; send a non-empty list of str")
        rows, _ = await self.embed([body.inputs.source_sentence, *body.inputs.sentences], truncate, prompt_name,
                                   "inputs")
        rows = _unit_rows(rows)
        return (rows[1:] @ rows[0]).tolist()

    def tokens(self, texts: list[str], add_special_tokens: bool, prompt_name: str | None) -> list[list[dict]]:
        """TEI's /tokenize answer: per text its tokens as the model reads them (cut to max_length), with
        the characters each covers (start, stop; None for special tokens)."""
        encoder = self.encoder
        if not texts:
            raise ServeError(422, "inputs is empty; send a str or a non-empty list of str")
        self.check_count(len(texts), "inputs")
        try:
            prefix = encoder.prompt_prefix(prompt_name=prompt_name)
        except ValueError as error:
            raise ServeError(422, str(error)) from None
        inputs = [prefix + text for text in texts]
        found = encoder.tokenizer(inputs, add_special_tokens=add_special_tokens, truncation=True,
                                  max_length=encoder.max_length, return_offsets_mapping=True,
                                  return_special_tokens_mask=True)
        out = []
        for text, ids, offsets, special in zip(inputs, found["input_ids"], found["offset_mapping"],
                                               found["special_tokens_mask"]):
            pieces = encoder.tokenizer.convert_ids_to_tokens(ids)
            out.append([{"id": int(token), "text": piece if flag else text[start:stop], "special": bool(flag),
                         "start": None if flag else int(start), "stop": None if flag else int(stop)}
                        for token, piece, (start, stop), flag in zip(ids, pieces, offsets, special)])
        return out

    def rerank(self, body: "RerankRequest") -> list[dict]:
        """TEI's /rerank answer: every text's score against the query, best first (run in a worker thread).

        Raises:
            ServeError: 404 without a reranker; 422 no texts, an empty query; 413 too many texts, or
                a too-long pair with truncate false.
        """
        reranker, config = self.reranker, self.config
        if reranker is None:
            raise ServeError(404, "this server has no cross-encoder for /rerank: start it with --reranker MODEL")
        if not body.query.strip():
            raise ServeError(422, "query is empty or whitespace; send text")
        if not body.texts:
            raise ServeError(422, "texts is empty; send a non-empty list of str")
        self.check_count(len(body.texts), "texts")
        token_ids, type_ids, truncated = reranker.tokenize([(body.query, text) for text in body.texts])
        self.check_truncation(truncated, body.truncate, "the query with texts", f"the reranker's max length of "
                              f"{reranker.max_length}")
        with self.rerank_lock:
            scores = reranker.score_tokens(token_ids, type_ids, config.max_batch_texts, config.max_batch_tokens,
                                           "none" if body.raw_scores else "sigmoid")
        order = np.argsort(-scores, kind="stable")
        return [{"index": int(i), "score": float(scores[i]), **({"text": body.texts[i]} if body.return_text else {})}
                for i in order]

    @asynccontextmanager
    async def lifespan(self, app: FastAPI):
        """Start the batching worker with the app; when it stops, finish whatever is still queued
        (uvicorn has answered the requests in flight by then)."""
        config = self.config
        self.batcher = Batcher(self.forward, max_batch_tokens=config.max_batch_tokens,
                               max_wait_s=config.max_wait_ms / 1000, max_queue_tokens=config.max_queue_tokens,
                               on_batch=self.stats.record_batch)
        try:
            yield
        finally:
            self.batcher.close()

    def forward(self, items: list) -> np.ndarray:
        """Token ids (and type ids) of many requests' texts -> float32 [n, d]; the worker thread's job."""
        token_ids = [ids for ids, _ in items]
        type_ids = None if items[0][1] is None else [types for _, types in items]
        vectors, _, _ = self.encoder.embed_tokens(token_ids, type_ids, self.config.max_batch_texts,
                                                  self.config.max_batch_tokens, normalize=self.encoder.normalize)
        return vectors.numpy()

    async def embed(self, texts: list[str], truncate: bool | None, prompt_name: str | None,
                    field: str) -> tuple[np.ndarray, int]:
        """float32 [n, d] embeddings of `texts` (validated, tokenized, batched) and their token count."""
        encoder = self.encoder
        if not texts:
            raise ServeError(422, f"{field} is empty; send a str or a non-empty list of str")
        self.check_count(len(texts), field)
        for position, text in enumerate(texts):
            if not text.strip():
                raise ServeError(422, f"{field}[{position}] is empty or whitespace; send text")
        try:
            prefix = encoder.prompt_prefix(prompt_name=prompt_name)
        except ValueError as error:
            raise ServeError(422, str(error)) from None
        inputs = [encoder.prepare(text, position, prefix) for position, text in enumerate(texts)]
        if sum(len(text) for text in texts) <= _INLINE_TOKENIZE_CHARS:
            token_ids, type_ids, truncated = encoder.tokenize(inputs)
        else:
            token_ids, type_ids, truncated = await run_in_threadpool(encoder.tokenize, inputs)
        self.check_truncation(truncated, truncate, field, f"the model's max length of {encoder.max_length}")
        tokens = sum(len(ids) for ids in token_ids)
        items = list(zip(token_ids, type_ids if type_ids is not None else [None] * len(token_ids)))
        if self.batcher is None:
            raise BatcherClosed("the server is not running (its batching worker has not started)")
        rows = await self.batcher.submit(items, tokens)
        return rows, tokens


def create_app(encoder: Encoder, index: Searchable | None = None, index_path: str | Path | None = None,
               config: ServeConfig | None = None, reranker: Reranker | None = None):
    """The ASGI application serving `encoder` (and `index`, for /search).

    Args:
        encoder: the model; its texts are batched across requests by one worker thread.
        index: searched by /search (None: /search answers 422).
        index_path: where `index` came from (a store directory or an index file), for /info.
            Results are named by the index's document ids (`Index.documents`) when it has them,
            else by their int ids.
        config: limits, access rules and defaults; `ServeConfig()` when None. With `api_key`,
            every endpoint but /health answers 401 unless the request carries
            `Authorization: Bearer KEY`; with `cors_origins`, browsers on those origins may call it.
        reranker: the cross-encoder of /rerank and /search {"rerank": true} (None: /rerank
            answers 404, naming --reranker).

    Returns:
        the app (FastAPI inside a wrapper that checks the key and the body size and counts every
        request); the batching worker starts with it (lifespan) and drains when it stops.

    Raises:
        ValueError: the index's dimension differs from the encoder's.
    """
    config = config or ServeConfig()
    service = _Service(encoder, index, Path(index_path) if index_path is not None else None, config, reranker)
    app = FastAPI(title="fastret", version=__version__, lifespan=service.lifespan,
                  description="Embeddings (TEI- and OpenAI-compatible) and exact int8 search.")
    _add_embedding_routes(app, service)
    _add_search_route(app, service)
    _add_rerank_route(app, service)
    _add_status_routes(app, service)
    _add_error_handlers(app, service.stats)
    guarded = _Guard(app, service.stats, config.max_body_bytes, config.api_key)
    if not config.cors_origins:
        return guarded
    # outermost, so that it answers browsers' preflight requests (which carry no key) itself
    return CORSMiddleware(guarded, allow_origins=list(config.cors_origins), allow_methods=["GET", "POST"],
                          allow_headers=["Authorization", "Content-Type"])


def _json_response(content: Any, status: int = 200) -> Response:
    return Response(json.dumps(content, separators=(",", ":")), status, media_type="application/json")


def _add_embedding_routes(app: FastAPI, service: _Service) -> None:
    """POST /embed (TEI) and POST /v1/embeddings (OpenAI)."""
    encoder = service.encoder

    @app.post("/embed")
    async def embed(body: EmbedRequest) -> Response:
        texts = [body.inputs] if isinstance(body.inputs, str) else body.inputs
        rows, _ = await service.embed(texts, body.truncate, body.prompt_name, "inputs")
        return _json_response((_unit_rows(rows) if body.normalize and not encoder.normalize else rows).tolist())

    @app.post("/similarity")
    async def similarity(body: SimilarityRequest) -> Response:
        return _json_response(await service.similarity(body))

    @app.post("/tokenize")
    async def tokenize(body: TokenizeRequest) -> Response:
        texts = [body.inputs] if isinstance(body.inputs, str) else body.inputs
        return _json_response(service.tokens(texts, body.add_special_tokens, body.prompt_name))

    @app.post("/")
    async def root(request: Request) -> Response:
        try:
            data = json.loads(await request.body())
        except ValueError as error:
            raise ServeError(400, f"malformed JSON: {error}; send a JSON object") from None
        if not isinstance(data, dict):
            raise ServeError(422, "send a JSON object: /embed's {\"inputs\": ...} or /similarity's "
                                  "{\"inputs\": {\"source_sentence\": ..., \"sentences\": [...]}}")
        if isinstance(data.get("inputs"), dict):
            return await similarity(_validated(SimilarityRequest, data))
        return await embed(_validated(EmbedRequest, data))

    @app.post("/v1/embeddings")
    async def openai_embeddings(body: OpenAIEmbeddingRequest) -> Response:
        if body.dimensions is not None and body.dimensions != encoder.dim:
            raise ServeError(422, f"dimensions={body.dimensions}, but this model makes {encoder.dim}-d "
                                  "embeddings; leave dimensions out")
        texts = [body.input] if isinstance(body.input, str) else body.input
        rows, tokens = await service.embed(texts, body.truncate, body.prompt_name, "input")
        if not encoder.normalize:  # OpenAI's embeddings have length 1; clients compare them by dot product
            rows = _unit_rows(rows)
        if body.encoding_format == "base64":
            embeddings = [base64.b64encode(row.astype("<f4").tobytes()).decode() for row in rows]
        else:
            embeddings = rows.tolist()
        return _json_response({
            "object": "list",
            "data": [{"object": "embedding", "index": i, "embedding": e} for i, e in enumerate(embeddings)],
            "model": service.model_name,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        })


def _add_search_route(app: FastAPI, service: _Service) -> None:
    """POST /search: the query texts embedded, then the index searched (off the event loop)."""
    index, config = service.index, service.config

    @app.post("/search")
    async def search(body: SearchRequest) -> Response:
        if index is None:
            raise ServeError(422, "no index is loaded; start the server with --index STORE_OR_FILE")
        if (body.query is None) == (body.queries is None):
            raise ServeError(422, "send exactly one of \"query\" (a str) or \"queries\" (a list of str)")
        if body.k > config.max_k:
            raise ServeError(422, f"k={body.k}; at most {config.max_k} results per query")
        options = service.search_options(body)
        field = "query" if body.queries is None else "queries"
        texts = [body.query] if body.queries is None else body.queries
        vectors, _ = await service.embed(texts, body.truncate, body.prompt_name, field)
        hits = await run_in_threadpool(service.search, texts, vectors, body, options)
        results = [[{"id": str(hit.id), "score": hit.score, **({"fields": hit.fields} if body.fields is not None
                                                                else {})} for hit in row] for row in hits]
        return _json_response({"results": results})


def _add_rerank_route(app: FastAPI, service: _Service) -> None:
    """POST /rerank (TEI): the texts scored against the query by the cross-encoder (off the event loop)."""

    @app.post("/rerank")
    async def rerank(body: RerankRequest) -> Response:
        return _json_response(await run_in_threadpool(service.rerank, body))


def _add_status_routes(app: FastAPI, service: _Service) -> None:
    """GET /health, /info and /metrics."""
    encoder, index = service.encoder, service.index

    @app.get("/health")
    async def health() -> Response:
        if service.batcher is None or not service.batcher.alive():
            raise ServeError(503, "the batching worker is not running", "Unhealthy")
        return _json_response({"status": "ok"})

    @app.get("/info")
    async def info() -> Response:
        reranker = service.reranker
        return _json_response({
            "model_id": service.model_name, "model_dtype": str(encoder.dtype),
            "device": str(encoder.device), "dim": encoder.dim, "pooling": encoder.pooling,
            "normalize": encoder.normalize, "max_input_length": encoder.max_length,
            "prompts": sorted(encoder.prompts), "version": __version__, **service.config.public(),
            "index": None if index is None else {
                "name": None if service.index_path is None else service.index_path.name, "size": len(index),
                "dim": index.dim, "rescore": index.store_float16, "device": index.device},
            "reranker": None if reranker is None else {
                "model_id": Path(str(reranker.model_dir)).name, "model_dtype": str(reranker.dtype),
                "max_input_length": reranker.max_length},
        })

    @app.get("/metrics")
    async def prometheus() -> Response:
        service.stats.queued_tokens.set(service.batcher.queued_tokens if service.batcher is not None else 0)
        return Response(service.stats.render(), media_type=metrics.CONTENT_TYPE)


def _add_error_handlers(app: FastAPI, stats: _Metrics) -> None:
    """Every error answered in TEI's shape, {"error", "error_type"}, and counted."""

    def error_response(request: Request, error: ServeError) -> JSONResponse:
        stats.errors.inc(labels=(request.url.path, error.error_type))
        return JSONResponse({"error": error.message, "error_type": error.error_type}, error.status,
                            headers=error.headers)

    @app.exception_handler(ServeError)
    async def on_serve_error(request: Request, error: ServeError) -> JSONResponse:
        return error_response(request, error)

    @app.exception_handler(RequestValidationError)
    async def on_invalid_request(request: Request, error: RequestValidationError) -> JSONResponse:
        problems = error.errors()
        if any(isinstance(p.get("input"), (bytes, bytearray)) for p in problems):
            return error_response(request, ServeError(400, "the body must be JSON; send it with "
                                                           "Content-Type: application/json"))
        if any(p.get("type") == "json_invalid" for p in problems):
            detail = next(p for p in problems if p.get("type") == "json_invalid").get("ctx", {}).get("error", "")
            return error_response(request, ServeError(400, f"malformed JSON: {detail}; send a JSON object"))
        message = _describe(problems)
        if request.url.path == "/v1/embeddings" and any(_holds_ints(p.get("input")) for p in problems):
            message += ("; token-id arrays are not accepted, send text (LangChain's OpenAIEmbeddings: "
                        "check_embedding_ctx_length=False)")
        return error_response(request, ServeError(422, message))

    @app.exception_handler(QueueFull)
    async def on_queue_full(request: Request, error: QueueFull) -> JSONResponse:
        return error_response(request, ServeError(429, str(error), "Overloaded",
                                                  {"Retry-After": str(error.retry_after)}))

    @app.exception_handler(BatcherClosed)
    async def on_closed(request: Request, error: BatcherClosed) -> JSONResponse:
        return error_response(request, ServeError(503, str(error), "Unhealthy"))

    @app.exception_handler(StarletteHTTPException)
    async def on_http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        return error_response(request, ServeError(error.status_code, str(error.detail), "Validation", error.headers))

    @app.exception_handler(Exception)
    async def on_failure(request: Request, error: Exception) -> JSONResponse:
        return error_response(request, ServeError(500, f"{type(error).__name__}: {error}", "Backend"))


def _unit_rows(rows: np.ndarray) -> np.ndarray:
    """Rows [n, d] scaled to length 1 (as torch's F.normalize: a zero row stays zero)."""
    return rows / np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-12)


def _describe(problems: list[dict]) -> str:
    """FastAPI's validation errors as one sentence per field ('body.inputs: Input should be ...')."""
    lines = []
    for problem in problems:
        location = ".".join(str(part) for part in problem.get("loc", ()) if part != "body")
        got = problem.get("input")
        lines.append(f"{location or 'body'}: {problem.get('msg', 'invalid')}"
                     + (f" (got {json.dumps(got)[:60]})" if got is not None and not isinstance(got, dict) else ""))
    return "; ".join(dict.fromkeys(lines))


def _validated(model: type, data: dict):
    """`data` as the request body `model`, or a 422 ServeError describing what is wrong."""
    try:
        return model.model_validate(data)
    except ValidationError as error:
        raise ServeError(422, _describe([{**problem, "loc": ("body", *problem["loc"])}
                                         for problem in error.errors()])) from None


def _holds_ints(value: Any) -> bool:
    """Whether `value` is an int or a list holding ints (or lists of them): token ids."""
    if isinstance(value, list):
        return any(_holds_ints(v) for v in value)
    return isinstance(value, int) and not isinstance(value, bool)


class _Guard:
    """ASGI wrapper: refuses requests without the API key (401; /health needs none) and bodies over
    `max_body_bytes` (413) before they are buffered whole, and counts every request's status and
    latency."""

    def __init__(self, app: FastAPI, stats: _Metrics, max_body_bytes: int, api_key: str | None = None):
        self.app, self.stats, self.max_body_bytes = app, stats, max_body_bytes
        self.api_key = None if api_key is None else api_key.encode()

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start, endpoint, status = time.perf_counter(), scope.get("path", ""), [500]

        async def counting_send(message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            refusal = self._check_key(scope) if self.api_key is not None and endpoint not in _OPEN_PATHS else None
            if refusal is not None:
                self.stats.errors.inc(labels=(endpoint, "Unauthorized"))
                await _send_json(counting_send, 401, {"error": refusal, "error_type": "Unauthorized"},
                                 [(b"www-authenticate", b'Bearer realm="fastret"')])
                return
            body = await self._read_body(scope, receive)
            if body is None:  # too large: answered here
                self.stats.errors.inc(labels=(endpoint, "Validation"))
                await _send_json(counting_send, 413, {
                    "error": f"request body over {self.max_body_bytes} bytes (--max-body-bytes)",
                    "error_type": "Validation"})
                return
            replayed = False

            async def replay():
                nonlocal replayed
                if replayed:
                    return await receive()  # waits for the disconnect, as the app expects
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}

            await self.app(scope, replay, counting_send)
        finally:
            self.stats.requests.inc(labels=(endpoint, str(status[0])))
            self.stats.latency.observe(time.perf_counter() - start, labels=(endpoint,))

    def _check_key(self, scope) -> str | None:
        """None when the request carries `Authorization: Bearer KEY` with the server's key, else
        why not. The key is compared in constant time (hmac.compare_digest)."""
        header = next((value for name, value in scope.get("headers", ()) if name == b"authorization"), None)
        if header is None:
            return "this server needs an API key; send the header 'Authorization: Bearer KEY'"
        scheme, _, token = header.strip().partition(b" ")
        if scheme.lower() != b"bearer":
            return "the Authorization header must be 'Bearer KEY'"
        if not hmac.compare_digest(token.strip(), self.api_key):
            return "wrong API key"
        return None

    async def _read_body(self, scope, receive) -> bytes | None:
        """The whole body, or None once it exceeds the limit (by its Content-Length or its bytes)."""
        for name, value in scope.get("headers", ()):
            if name == b"content-length" and value.isdigit() and int(value) > self.max_body_bytes:
                return None
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return b"".join(chunks)  # the client left; the app will see an empty body
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)


async def _send_json(send, status: int, content: dict, headers: list[tuple[bytes, bytes]] = ()) -> None:
    body = json.dumps(content).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            *headers]})
    await send({"type": "http.response.body", "body": body})


def open_index(config: ServeConfig, model_device: Any = "cpu") -> Searchable | None:
    """What /search searches: `config.index` (a store directory or an index file) mapped from
    disk, or, with `shards` / `ray_address`, a ShardedIndex of it on Ray; None when the config
    names no index. It searches on `config.search_device` (`Index.to`); "auto" is the model's
    device (`model_device`) when that is a CUDA GPU and the index fits there (else the CPU, with a
    warning that says why), and the CPU for an index on Ray.

    Raises:
        ValueError: as `open_searchable` (e.g. an index that does not fit on the GPU named).
    """
    if config.index is None:
        return None
    auto = config.search_device == "auto"
    index = open_searchable(config.index, shards=config.shards, ray_address=config.ray_address,
                            replicas=config.replicas, device="cpu" if auto else config.search_device)
    if auto and str(model_device).startswith("cuda") and config.shards is None and config.ray_address is None:
        try:
            index.to(model_device)
        except ValueError as error:
            logger.warning(f"/search runs on the CPU, not on the model's {model_device}: {error}")
    return index


def serve(encoder: Encoder, config: ServeConfig | None = None, *,
          on_listening: Callable[[str], None] = print) -> None:
    """`fastret serve`: open the configured index, serve it and `encoder` until SIGINT/SIGTERM.

    Logs a warning when the server listens beyond loopback without an API key.

    Args:
        encoder: the model.
        config: address, access rules, limits (`ServeConfig()` when None).
        on_listening: called with "http://HOST:PORT" once the socket accepts connections.

    Raises:
        ValueError: the index's dimension differs from the encoder's, or the index cannot be read.
        OSError: the address cannot be listened on.
    """
    config = config or ServeConfig()
    reranker = None if config.reranker is None else Reranker(config.reranker, device=encoder.device,
                                                             preset=config.reranker_preset)
    app = create_app(encoder, open_index(config, encoder.device), config.index, config, reranker)
    warning = exposure_warning(config)
    if warning is not None:
        logger.warning(warning)
    run(app, config.host, config.port, max_connections=config.max_connections, on_listening=on_listening)


def run(app, host: str = "127.0.0.1", port: int = 8080, *, on_listening: Callable[[str], None] = print,
        graceful_timeout_s: float = 30.0, max_connections: int | None = 1024, log_level: str = "warning") -> None:
    """Serve `app` until SIGINT/SIGTERM; requests in flight are finished first.

    Args:
        app: from `create_app`.
        host, port: where to listen; port 0 picks a free port.
        on_listening: called with "http://HOST:PORT" once the socket accepts connections.
        graceful_timeout_s: how long shutdown waits for requests in flight.
        max_connections: more concurrent connections than this get 503 (bounds memory).
        log_level: uvicorn's log level.
    """
    import uvicorn

    sock = listening_socket(host, port)
    config = uvicorn.Config(app, log_level=log_level, access_log=False, lifespan="on",
                            timeout_graceful_shutdown=graceful_timeout_s, limit_concurrency=max_connections)
    server = uvicorn.Server(config)
    bound = sock.getsockname()[1]
    on_listening(f"http://{host if sock.family == socket.AF_INET else f'[{host}]'}:{bound}")
    with _sigterm_ends_cleanly():
        server.run(sockets=[sock])


@contextlib.contextmanager
def _sigterm_ends_cleanly():
    """uvicorn re-raises the SIGTERM it shut down for once it has finished, to let the previous
    handler act; here that handler ignores it, so a graceful stop exits with status 0."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, lambda number, frame: None)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def listening_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to (host, port) and listening (port 0: a free one), for uvicorn.

    Listening before uvicorn starts means connections made from then on wait in the backlog.
    The socket is created with IPPROTO_TCP named and TCP_NODELAY set: asyncio turns Nagle's
    algorithm off only on connections whose socket says TCP, and with proto 0 every keep-alive
    response after the first would send its body ~40 ms late (held back until the client's
    delayed ACK of the headers).
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind((host, port))
    sock.listen(2048)
    return sock
