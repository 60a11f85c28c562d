"""`fastret serve`: the encoder and an index over HTTP (FastAPI + uvicorn).

Endpoints:
  POST /embed            TEI-compatible: {"inputs", "normalize", "truncate", "prompt_name"} -> [[float]]
  POST /v1/embeddings    OpenAI-compatible: {"input", "model", "encoding_format"} -> {"object": "list", ...}
                         (unit-length rows, as OpenAI's)
  POST /search           {"query" | "queries", "k", "rescore"} -> {"results": [[{"id", "score"}]]}
  GET  /health, /info, /metrics (Prometheus text)

Each request's texts are tokenized (on the event loop when short, else in a thread), then queued
to one `Batcher`, which runs the texts of concurrent requests in shared, token-budgeted forward
passes in its worker thread. Errors are JSON in
TEI's shape, {"error": message, "error_type": kind}: 400 malformed JSON, 413 too many inputs, a
too-long text (truncate=false) or a too-large body, 422 any other invalid request, 429 (with
Retry-After) a full queue, 503 while shutting down.
"""

from __future__ import annotations

import base64
import json
import socket
import time
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, List, Literal, Optional, Union

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from . import __version__, metrics
from .batcher import Batcher, BatcherClosed, BatchReport, QueueFull
from .encoder import Encoder
from .index import Index


# Up to this many characters, a request's texts are tokenized on the event loop: that takes tens
# of microseconds, less than handing them to a thread; longer requests go to the thread pool.
_INLINE_TOKENIZE_CHARS = 4096


@dataclass
class ServeConfig:
    """The server's limits and defaults (the `fastret serve` options of the same names).

    Attributes:
        max_batch_tokens: most tokens per forward pass (texts of several requests together).
        max_batch_texts: most texts per forward pass.
        max_wait_ms: how long the oldest queued request may wait for others to share its pass.
        max_queue_tokens: most tokens waiting; beyond it requests get 429 with Retry-After.
        max_client_batch_size: most texts in one request (413 beyond).
        max_body_bytes: largest request body (413 beyond).
        auto_truncate: truncate texts longer than the model's max length when a request does not
            say (`"truncate": null`); otherwise they get 413.
        max_k: most results per query for /search.
        model_name: the model's name in /info and /v1/embeddings answers; default the model
            directory's name.
        shards: search the index on this many Ray actors (`fastret.searchers.open_searchable`).
        ray_address: search the index on the Ray cluster at this address.
    """

    max_batch_tokens: int = 16384
    max_batch_texts: int = 512
    max_wait_ms: float = 2.0
    max_queue_tokens: int = 262144
    max_client_batch_size: int = 256
    max_body_bytes: int = 8 * 2**20
    auto_truncate: bool = False
    max_k: int = 1000
    model_name: Optional[str] = None
    shards: Optional[int] = None
    ray_address: Optional[str] = None


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


def create_app(encoder: Encoder, index: Index | None = None, index_path: str | Path | None = None,
               config: ServeConfig | None = None) -> FastAPI:
    """The FastAPI application serving `encoder` (and `index`, for /search).

    Args:
        encoder: the model; its texts are batched across requests by one worker thread.
        index: searched by /search (None: /search answers 422).
        index_path: where `index` came from (a store directory or an index file), for /info.
            Results are named by the index's document ids (`Index.documents`) when it has them,
            else by their int ids.
        config: limits and defaults; `ServeConfig()` when None.

    Returns:
        the app; the batching worker starts with it (lifespan) and drains when it stops.

    Raises:
        ValueError: the index's dimension differs from the encoder's.
    """
    config = config or ServeConfig()
    if index is not None and index.dim != encoder.dim:
        raise ValueError(f"the model makes {encoder.dim}-d vectors but the index holds {index.dim}-d ones; "
                         "serve the index with the model that built it")
    index_path = Path(index_path) if index_path is not None else None
    model_name = config.model_name or Path(str(encoder.model_dir)).name
    stats = _Metrics()
    state: dict[str, Batcher] = {}

    def forward(items: list) -> np.ndarray:
        """Token ids (and type ids) of many requests' texts -> float32 [n, d]; the worker thread's job."""
        token_ids = [ids for ids, _ in items]
        type_ids = None if items[0][1] is None else [types for _, types in items]
        vectors, _, _ = encoder.embed_tokens(token_ids, type_ids, config.max_batch_texts, config.max_batch_tokens,
                                             normalize=encoder.normalize)
        return vectors.numpy()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        state["batcher"] = Batcher(forward, max_batch_tokens=config.max_batch_tokens,
                                   max_wait_s=config.max_wait_ms / 1000, max_queue_tokens=config.max_queue_tokens,
                                   on_batch=stats.record_batch)
        try:
            yield
        finally:  # uvicorn has answered the requests in flight; finish whatever is still queued
            state["batcher"].close()

    app = FastAPI(title="fastret", version=__version__, lifespan=lifespan,
                  description="Embeddings (TEI- and OpenAI-compatible) and exact int8 search.")

    async def embed_texts(texts: list[str], truncate: bool | None, prompt_name: str | None,
                          field: str) -> tuple[np.ndarray, int]:
        """float32 [n, d] embeddings of `texts` (validated, tokenized, batched) and their token count."""
        if not texts:
            raise ServeError(422, f"{field} is empty; send a str or a non-empty list of str")
        if len(texts) > config.max_client_batch_size:
            raise ServeError(413, f"{len(texts)} texts in {field}; at most {config.max_client_batch_size} per "
                                  "request (--max-client-batch-size): split the request")
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
        allow = config.auto_truncate if truncate is None else truncate
        if not allow and any(truncated):
            first = truncated.index(True)
            more = f" (and {sum(truncated) - 1} more)" if sum(truncated) > 1 else ""
            raise ServeError(413, f"{field}[{first}]{more} is longer than the model's max length of "
                                  f"{encoder.max_length} tokens; send \"truncate\": true to cut it")
        tokens = sum(len(ids) for ids in token_ids)
        items = list(zip(token_ids, type_ids if type_ids is not None else [None] * len(token_ids)))
        rows = await state["batcher"].submit(items, tokens)
        return rows, tokens

    def json_response(content: Any, status: int = 200) -> Response:
        return Response(json.dumps(content, separators=(",", ":")), status, media_type="application/json")

    @app.post("/embed")
    async def embed(body: EmbedRequest) -> Response:
        texts = [body.inputs] if isinstance(body.inputs, str) else body.inputs
        rows, _ = await embed_texts(texts, body.truncate, body.prompt_name, "inputs")
        return json_response((_unit_rows(rows) if body.normalize and not encoder.normalize else rows).tolist())

    @app.post("/v1/embeddings")
    async def openai_embeddings(body: OpenAIEmbeddingRequest) -> Response:
        if body.dimensions is not None and body.dimensions != encoder.dim:
            raise ServeError(422, f"dimensions={body.dimensions}, but this model makes {encoder.dim}-d "
                                  "embeddings; leave dimensions out")
        texts = [body.input] if isinstance(body.input, str) else body.input
        rows, tokens = await embed_texts(texts, body.truncate, body.prompt_name, "input")
        if not encoder.normalize:  # OpenAI's embeddings have length 1; clients compare them by dot product
            rows = _unit_rows(rows)
        if body.encoding_format == "base64":
            embeddings = [base64.b64encode(row.astype("<f4").tobytes()).decode() for row in rows]
        else:
            embeddings = rows.tolist()
        return json_response({
            "object": "list",
            "data": [{"object": "embedding", "index": i, "embedding": e} for i, e in enumerate(embeddings)],
            "model": model_name,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        })

    @app.post("/search")
    async def search(body: SearchRequest) -> Response:
        if index is None:
            raise ServeError(422, "no index is loaded; start the server with --index STORE_OR_FILE")
        if (body.query is None) == (body.queries is None):
            raise ServeError(422, "send exactly one of \"query\" (a str) or \"queries\" (a list of str)")
        if body.k > config.max_k:
            raise ServeError(422, f"k={body.k}; at most {config.max_k} results per query")
        if body.rescore and not index.store_float16:
            raise ServeError(422, "rescore=true needs float16 copies in the index; encode the store with "
                                  "--float16, or search without rescore")
        field = "query" if body.queries is None else "queries"
        texts = [body.query] if body.queries is None else body.queries
        vectors, _ = await embed_texts(texts, body.truncate, body.prompt_name, field)
        k = min(body.k, len(index))
        scores, ids = await run_in_threadpool(index.search, vectors, k, rescore=body.rescore)
        names = index.documents(ids) if index.has_documents else ids.astype(str).astype(object)
        return json_response({"results": [
            [{"id": str(name), "score": float(score)} for name, score in zip(row_names, row_scores)]
            for row_names, row_scores in zip(names, scores)]})

    @app.get("/health")
    async def health() -> Response:
        batcher = state.get("batcher")
        if batcher is None or not batcher.alive():
            raise ServeError(503, "the batching worker is not running", "Unhealthy")
        return json_response({"status": "ok"})

    @app.get("/info")
    async def info() -> Response:
        return json_response({
            "model_id": model_name, "model_dir": str(encoder.model_dir), "model_dtype": str(encoder.dtype),
            "device": str(encoder.device), "dim": encoder.dim, "pooling": encoder.pooling,
            "normalize": encoder.normalize, "max_input_length": encoder.max_length,
            "prompts": sorted(encoder.prompts), "version": __version__, **asdict(config),
            "index": None if index is None else {
                "path": None if index_path is None else str(index_path), "size": len(index), "dim": index.dim,
                "rescore": index.store_float16},
        })

    @app.get("/metrics")
    async def prometheus() -> Response:
        batcher = state.get("batcher")
        stats.queued_tokens.set(batcher.queued_tokens if batcher is not None else 0)
        return Response(stats.render(), media_type=metrics.CONTENT_TYPE)

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

    return _Guard(app, stats, config.max_body_bytes)


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


def _holds_ints(value: Any) -> bool:
    """Whether `value` is an int or a list holding ints (or lists of them): token ids."""
    if isinstance(value, list):
        return any(_holds_ints(v) for v in value)
    return isinstance(value, int) and not isinstance(value, bool)


class _Guard:
    """ASGI wrapper: refuses bodies over `max_body_bytes` (413) before they are buffered whole, and
    counts every request's status and latency."""

    def __init__(self, app: FastAPI, stats: _Metrics, max_body_bytes: int):
        self.app, self.stats, self.max_body_bytes = app, stats, max_body_bytes

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start, endpoint, status = time.perf_counter(), scope.get("path", ""), [500]

        async def counting_send(message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
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


async def _send_json(send, status: int, content: dict) -> None:
    body = json.dumps(content).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


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
    server.run(sockets=[sock])


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
