"""Load test: `fastret serve` against the plain FastAPI server people write around
`SentenceTransformer.encode`, both on this machine, over loopback only.

Servers (each started by this script as a subprocess on 127.0.0.1, on a free port; both answer
TEI's POST /embed {"inputs": [...]} -> [[float]] with the same JSON writer, so only the serving
differs):
  plain     FastAPI + uvicorn, a sync endpoint calling SentenceTransformer.encode(texts,
            normalize_embeddings=True) per request (FastAPI runs it in its thread pool)
  fastret   `fastret serve`: requests queued, texts of concurrent requests batched by tokens

Workloads, at each concurrency (default 1, 8, 64; a closed loop of that many clients, each sending
its next request when the last is answered):
  query     one NFCorpus query per request (all 3,237 queries, in turn)
  docs32    32 NFCorpus documents (title + text) per request

Client: this script, one asyncio HTTP/1.1 keep-alive connection per simulated client (a minimal
client, `Connection`: httpx's AsyncClient cost 7-15 ms of CPU per request at 64 connections, which on
a 2-core machine is taken from the server under test; this one costs well under 1 ms, reported as
client CPU ms / request).

Procedure: both servers first embed the same 64 queries and 32 documents; each server's rows are
compared with fastret.Encoder.encode of the same texts (cosine >= 0.99999) and the run stops if one
fails. Then each (workload, concurrency) runs on both servers in turn, after a warm-up of one
request per client; requests/s = answered requests / wall seconds, latency percentiles over the
answered requests; server CPU ms / request is the server process's user + system time (all
threads, from /proc) over the run and its warm-up, per request: less sensitive than wall time to
other work on the machine. Every request loop is bounded in count. Prints a markdown table and PASS/FAIL
lines for the acceptance (concurrency 64, queries: >= 3x the plain server's requests/s and a lower
p99); --json PATH writes everything with the machine and the load average.

    .venv/bin/python benchmarks/serve_load.py --json benchmarks/results/2026-11-30-cpu-serve-load.json
"""


import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import argparse  # noqa: E402
import asyncio  # noqa: E402
import contextlib  # noqa: E402
import json  # noqa: E402
import shlex  # noqa: E402
import signal  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import cpu_info, finish, verdict  # noqa: E402

HOST = "127.0.0.1"
START_TIMEOUT_S = 300
REQUEST_TIMEOUT_S = 600
# fastret serve's queue bound, raised from its default (262,144 tokens, which answers 429 to part of
# 64 clients x 32 documents of up to 256 tokens) so that, like the plain server, it queues them all
QUEUE_TOKENS = 64 * 32 * 256 * 2


# ---------------------------------------------------------------------------------- the plain server

def plain_app(model_path: str):
    """What users write: FastAPI, a sync endpoint, SentenceTransformer.encode per request."""
    from typing import List, Union

    from fastapi import FastAPI
    from fastapi.responses import Response
    from pydantic import BaseModel
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(model_path, device="cpu")
    app = FastAPI()

    class EmbedRequest(BaseModel):
        inputs: Union[str, List[str]]

    @app.post("/embed")
    def embed(body: EmbedRequest) -> Response:
        texts = [body.inputs] if isinstance(body.inputs, str) else body.inputs
        rows = model.encode(texts, normalize_embeddings=True)
        return Response(json.dumps(rows.tolist(), separators=(",", ":")), media_type="application/json")

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok"}

    return app


def run_plain_server(model_path: str, port: int) -> None:
    import uvicorn

    uvicorn.run(plain_app(model_path), host=HOST, port=port, log_level="warning", access_log=False)


# ---------------------------------------------------------------------------------- starting servers

def die_with_parent() -> None:
    """Runs in each server process: SIGTERM it when this script dies, however it dies."""
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def wait_healthy(url: str, process: subprocess.Popen) -> None:
    import httpx

    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server at {url} exited with status {process.returncode}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"the server at {url} did not become healthy in {START_TIMEOUT_S} s")


def start_servers(model_path: str, wait_ms: float) -> dict[str, tuple[str, subprocess.Popen]]:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}  # CPU: the torch pooling path
    servers = {}
    port = free_port()
    servers["plain"] = (f"http://{HOST}:{port}", subprocess.Popen(
        [sys.executable, __file__, "--plain-server", str(port), "--model", model_path], env=env,
        preexec_fn=die_with_parent))
    port = free_port()
    servers["fastret"] = (f"http://{HOST}:{port}", subprocess.Popen(
        [sys.executable, "-m", "fastret", "serve", "--model", model_path, "--host", HOST, "--port", str(port),
         "--max-wait-ms", str(wait_ms), "--max-queue-tokens", str(QUEUE_TOKENS)],
        env=env, stdout=subprocess.DEVNULL, preexec_fn=die_with_parent))
    for url, process in servers.values():
        wait_healthy(url, process)
    return servers


def stop_servers(servers: dict) -> None:
    for _, process in servers.values():
        if process.poll() is None:
            process.terminate()
    for _, process in servers.values():
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


# ---------------------------------------------------------------------------------- load

def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process `pid`, all its threads, so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Connection:
    """One keep-alive HTTP/1.1 connection speaking just enough of the protocol for this load test.

    httpx's AsyncClient spent 7-15 ms of CPU per request at 64 connections on the 2-core machine
    this was written on: more than a batched forward pass, taken from the servers under test. This
    client spends about 0.2-0.7 ms. Both servers answer with a Content-Length (no chunked bodies)."""

    def __init__(self, host: str, port: int):
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def connect(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        self.writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    async def post(self, path: str, body: bytes) -> bytes:
        """POST `body` (JSON) to `path`; the response body. RuntimeError on a status other than 200.

        Reconnects first if the server closed the connection while it was idle (uvicorn does after
        5 s: in the warm-up, early answers wait for the last)."""
        if self.reader is None or self.reader.at_eof():
            if self.writer is not None:
                await self.close()
            await self.connect()
        self.writer.write(b"POST %s HTTP/1.1\r\nhost: %s\r\ncontent-type: application/json\r\n"
                          b"content-length: %d\r\n\r\n%s" % (path.encode(), self.host.encode(), len(body), body))
        status = await self.reader.readline()
        length = None
        while (line := await self.reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        if length is None:
            raise RuntimeError(f"{path} answered {status!r} without a Content-Length")
        data = await self.reader.readexactly(length)
        if status.split()[1:2] != [b"200"]:
            raise RuntimeError(f"{path} answered {status.decode().strip()}: {data[:200]!r}")
        return data

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(ConnectionError):
                await self.writer.wait_closed()
            self.reader = self.writer = None


async def load(url: str, payloads: list, concurrency: int, requests: int) -> dict:
    """`requests` POST /embed from `concurrency` clients in a closed loop, each on its own keep-alive
    connection (after one warm-up request per client); requests/s and latency percentiles."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    # truncate: as SentenceTransformer.encode does (fastret serve answers 413 to over-long texts otherwise)
    bodies = [json.dumps({"inputs": payload, "truncate": True}).encode() for payload in payloads]
    connections = [Connection(host, int(port)) for _ in range(concurrency)]
    try:
        async def one(connection: Connection, i: int) -> float:
            start = time.perf_counter()
            await connection.post("/embed", bodies[i % len(bodies)])
            return time.perf_counter() - start

        await asyncio.gather(*(one(c, i) for i, c in enumerate(connections)))  # warm-up: allocator, caches
        latencies: list[float] = []
        next_request = iter(range(requests))

        async def client_loop(connection: Connection) -> None:
            for i in next_request:
                latencies.append(await one(connection, i))

        start, client_cpu = time.perf_counter(), time.process_time()
        await asyncio.gather(*(client_loop(c) for c in connections))
        wall, client_cpu = time.perf_counter() - start, time.process_time() - client_cpu
    finally:
        for connection in connections:
            await connection.close()
    latencies_ms = np.array(latencies) * 1000
    return {"requests": len(latencies), "seconds": round(wall, 3), "rps": round(len(latencies) / wall, 2),
            "p50_ms": round(float(np.percentile(latencies_ms, 50)), 2),
            "p99_ms": round(float(np.percentile(latencies_ms, 99)), 2),
            "client_cpu_ms_per_request": round(client_cpu * 1000 / len(latencies), 3)}


def check_embeddings(servers: dict, model_path: str, queries: list[str], docs: list[str]) -> dict:
    """Min row cosine of each server's /embed rows against fastret.Encoder.encode of the same texts."""
    import httpx

    import fastret

    encoder = fastret.Encoder(model_path)
    result = {}
    for texts, name in ((queries[:64], "queries"), (docs[:32], "docs")):
        offline = encoder.encode(texts)
        for server, (url, _) in servers.items():
            response = httpx.post(f"{url}/embed", json={"inputs": texts, "truncate": True}, timeout=REQUEST_TIMEOUT_S)
            if response.status_code != 200:
                raise RuntimeError(f"{server} /embed answered {response.status_code}: {response.text[:300]}")
            rows = np.array(response.json(), dtype=np.float64)
            cosine = (rows * offline).sum(1) / np.linalg.norm(rows, axis=1) / np.linalg.norm(offline, axis=1)
            result[f"{server}_{name}_min_cosine"] = round(float(cosine.min()), 7)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="model directory (default all-MiniLM-L6-v2)")
    parser.add_argument("--concurrency", default="1,8,64", help="comma-separated client counts")
    parser.add_argument("--workloads", default="query,docs32", help="comma-separated: query, docs32")
    parser.add_argument("--query-requests", type=int, default=30,
                        help="single-query requests per client at each concurrency (at least 50 in all)")
    parser.add_argument("--doc-requests", type=int, default=2,
                        help="32-document requests per client at each concurrency (at least 4, at most 64 in all)")
    parser.add_argument("--max-wait-ms", type=float, default=2.0, help="fastret serve --max-wait-ms")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    parser.add_argument("--plain-server", type=int, default=None, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args()

    from fastret.corpus import BUNDLED_NFCORPUS, find_file, load_corpus, load_queries
    from fastret.encode.presets import default_model_path

    model_path = str(args.model or default_model_path())
    if args.plain_server is not None:
        run_plain_server(model_path, args.plain_server)
        return 0

    queries = list(load_queries(find_file(BUNDLED_NFCORPUS, "queries.jsonl")).values())
    docs = load_corpus(find_file(BUNDLED_NFCORPUS, "corpus.jsonl")).documents()
    levels = [int(c) for c in args.concurrency.split(",")]
    workloads = [w for w in args.workloads.split(",") if w]
    if not set(workloads) <= {"query", "docs32"}:
        parser.error(f"--workloads: expected query and/or docs32, got {args.workloads!r}")
    load_before = os.getloadavg()
    print(f"load average before: {load_before[0]:.2f} {load_before[1]:.2f} {load_before[2]:.2f}")
    # a SIGTERM (a timeout, a Ctrl-C elsewhere) unwinds through the finally below, stopping the servers
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    servers = start_servers(model_path, args.max_wait_ms)
    try:
        equality = check_embeddings(servers, model_path, queries, docs)
        print(json.dumps(equality))
        if min(equality.values()) < 0.99999:
            print("FAIL  embeddings differ from fastret.Encoder.encode; not timing")
            return 1
        rows = []
        for workload in workloads:
            if workload == "query":
                payloads = queries
            else:
                payloads = [docs[i : i + 32] for i in range(0, len(docs) - 31, 32)]
            for concurrency in levels:
                if workload == "query":
                    requests = max(50, args.query_requests * concurrency)
                else:
                    requests = min(64, max(4, args.doc_requests * concurrency))
                for server, (url, process) in servers.items():
                    cpu_before = cpu_seconds(process.pid)
                    result = asyncio.run(load(url, payloads, concurrency, requests))
                    # the warm-up's `concurrency` requests are in the CPU time too
                    cpu_ms = (cpu_seconds(process.pid) - cpu_before) * 1000 / (result["requests"] + concurrency)
                    row = {"workload": workload, "concurrency": concurrency, "server": server, **result,
                           "server_cpu_ms_per_request": round(cpu_ms, 2),
                           "load_average_1m": round(os.getloadavg()[0], 2)}
                    rows.append(row)
                    print(json.dumps(row), flush=True)
    finally:
        stop_servers(servers)
    load_after = os.getloadavg()

    def find(workload, concurrency, server):
        return next(r for r in rows if (r["workload"], r["concurrency"], r["server"]) == (workload, concurrency, server))

    lines = ["| workload | clients | plain req/s | fastret req/s | ratio | plain p50 / p99 ms | fastret p50 / p99 ms "
             "| server CPU ms / request, plain / fastret |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for workload in workloads:
        for concurrency in levels:
            plain, fast = find(workload, concurrency, "plain"), find(workload, concurrency, "fastret")
            fast["rps_vs_plain"] = round(fast["rps"] / plain["rps"], 2)
            lines.append(f"| {workload} | {concurrency} | {plain['rps']:,.1f} | {fast['rps']:,.1f} | "
                         f"{fast['rps_vs_plain']:.2f}x | {plain['p50_ms']:,.1f} / {plain['p99_ms']:,.1f} | "
                         f"{fast['p50_ms']:,.1f} / {fast['p99_ms']:,.1f} | "
                         f"{plain['server_cpu_ms_per_request']:,.1f} / {fast['server_cpu_ms_per_request']:,.1f} |")
    print("\n" + "\n".join(lines))
    checks = []
    if 64 in levels and "query" in workloads:
        plain, fast = find("query", 64, "plain"), find("query", 64, "fastret")
        checks.append((verdict(fast["rps"] >= 3 * plain["rps"]),
                       f"64 clients, single queries: {fast['rps_vs_plain']:.2f}x the plain server's requests/s (>= 3x)"))
        checks.append((verdict(fast["p99_ms"] < plain["p99_ms"]),
                       f"64 clients, single queries: p99 {fast['p99_ms']:.1f} ms vs {plain['p99_ms']:.1f} ms (lower)"))
    checks.append((verdict(min(equality.values()) >= 0.99999),
                   f"embeddings equal fastret.Encoder.encode: min cosine {min(equality.values()):.7f} (>= 0.99999)"))
    print(f"load average after: {load_after[0]:.2f} {load_after[1]:.2f} {load_after[2]:.2f}")
    import fastapi
    import sentence_transformers
    import torch
    import uvicorn

    report = {"command": shlex.join([sys.executable, *sys.argv]), "machine": cpu_info(),
              "load_average_before": load_before, "load_average_after": load_after,
              "versions": {"torch": torch.__version__, "sentence_transformers": sentence_transformers.__version__,
                           "fastapi": fastapi.__version__, "uvicorn": uvicorn.__version__},
              "model": model_path, "max_wait_ms": args.max_wait_ms, "equality": equality, "results": rows,
              "table": "\n".join(lines)}
    return finish(checks, args.json, report)


if __name__ == "__main__":
    sys.exit(main())
