"""`ServeConfig`: what `fastret serve` is told, one field per command-line option.

Kept apart from serve.py, which needs FastAPI and uvicorn, so that the command line builds the
`serve` options from these fields (each field's metadata holds its help) without importing them.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

from ..search.ray_options import RAY_ADDRESS_HELP, REPLICAS_HELP, SHARDS_HELP

API_KEY_ENV = "FASTRET_API_KEY"


def _option(default: Any, help: str, *, flag: str | None = None, env: str | None = None,
            secret: bool = False) -> Any:
    """A field and its command-line option: `help`; `flag` when the option is not --field-name;
    `env`, an environment variable that gives the default; `secret`, kept out of repr."""
    metadata = {"help": help, **({"flag": flag} if flag else {}), **({"env": env} if env else {})}
    return field(default=default, metadata=metadata, repr=not secret)


@dataclass
class ServeConfig:
    """The server's address, access rules, limits and defaults (`fastret serve --help` shows each).

    `api_key` never appears in repr or `public()`; with it set, every endpoint but /health needs
    `Authorization: Bearer KEY` (else 401), as in text-embeddings-inference.
    """

    host: str = _option("127.0.0.1", "address to listen on; beyond loopback, set an API key")
    port: int = _option(8080, "port (0 picks a free one)")
    index: str | None = _option(None, "a store directory or an index file to search (POST /search)")
    api_key: str | None = _option(
        None, "require 'Authorization: Bearer KEY' on every endpoint but /health (401 otherwise); "
              f"prefer the environment variable {API_KEY_ENV}, as a command line is visible to other users",
        env=API_KEY_ENV, secret=True)
    cors_origins: Sequence[str] = _option(
        (), "allow browser pages from ORIGIN (e.g. https://app.example.org, or * for any) to call the "
            "server; repeat for several; none by default (no CORS headers)", flag="--cors-origin")
    max_connections: int = _option(1024, "most concurrent connections, 503 beyond")
    max_batch_tokens: int = _option(16384, "most tokens per forward pass, over all requests in it")
    max_batch_texts: int = _option(512, "most texts per forward pass")
    max_wait_ms: float = _option(2.0, "how long a request may wait for others to share its forward pass")
    max_queue_tokens: int = _option(262144, "most tokens waiting; more requests get 429 with Retry-After")
    max_client_batch_size: int = _option(256, "most texts per request, 413 beyond")
    max_body_bytes: int = _option(8 * 2**20, "largest request body, 413 beyond")
    auto_truncate: bool = _option(False, "truncate too-long texts when a request does not say (default: 413)")
    max_k: int = _option(1000, "most results per query for /search")
    model_name: str | None = _option(None, "the model's name in answers (default: the model directory's name)",
                                        flag="--served-model-name")
    search_device: str = _option(
        "auto", "where /search runs: cpu (the C++ core), cuda or cuda:N (the index's rows resident in that GPU's "
                "memory), or auto: the model's GPU when the model runs on one and the index fits there, else the CPU")
    shards: int | None = _option(None, SHARDS_HELP)
    ray_address: str | None = _option(None, RAY_ADDRESS_HELP, flag="--ray")
    replicas: int = _option(1, REPLICAS_HELP)
    mesh: str | None = _option(None, "a MeSH tree file (fastret.MeshTree.from_file) for $under in /search filters")
    reranker: str | None = _option(None, "a cross-encoder model directory (fastret.Reranker, e.g. "
                                         "MedCPT-Cross-Encoder) for POST /rerank and /search {\"rerank\": true}")
    reranker_preset: str | None = _option(None, "the cross-encoder's preset (medcpt-cross)")

    def __post_init__(self) -> None:
        for name in ("max_connections", "max_batch_tokens", "max_batch_texts", "max_queue_tokens",
                     "max_client_batch_size", "max_body_bytes", "max_k", "replicas",
                     *(("shards",) if self.shards is not None else ())):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        if isinstance(self.port, bool) or not isinstance(self.port, int) or not 0 <= self.port < 65536:
            raise ValueError(f"port must be in [0, 65535], got {self.port!r}")
        if not 0 <= self.max_wait_ms < 60_000:
            raise ValueError(f"max_wait_ms must be in [0, 60000), got {self.max_wait_ms!r}")
        if self.reranker is None and self.reranker_preset is not None:
            raise ValueError("reranker_preset is the cross-encoder's preset: set reranker (--reranker MODEL) too")
        if self.index is None and (self.shards is not None or self.ray_address is not None or self.replicas != 1):
            raise ValueError("shards, ray_address and replicas search an index: set index (--index STORE) too")
        if not isinstance(self.search_device, str) or not (
                self.search_device in ("auto", "cpu") or re.fullmatch(r"cuda(:\d+)?", self.search_device)):
            raise ValueError(f"search_device must be auto, cpu, cuda or cuda:N, got {self.search_device!r}")
        if self.search_device.startswith("cuda") and (self.shards is not None or self.ray_address is not None):
            raise ValueError("an index on Ray searches on its actors' CPUs: drop search_device (--search-device) "
                             "or shards and ray_address")
        if self.api_key is not None and (not isinstance(self.api_key, str) or not self.api_key.strip()):
            raise ValueError("api_key is empty; pass a secret (e.g. `openssl rand -hex 32`), or none for no key")
        if isinstance(self.cors_origins, str):
            raise TypeError(f"cors_origins must be a list of origins, got the str {self.cors_origins!r}; "
                            "wrap it in a list")
        self.cors_origins = tuple(self.cors_origins)
        for origin in self.cors_origins:
            if origin != "*" and not (isinstance(origin, str) and origin.startswith(("http://", "https://"))):
                raise ValueError(f"CORS origin {origin!r}: expected scheme://host[:port] (e.g. "
                                 "https://app.example.org) or *")

    def public(self) -> dict:
        """The settings as a dict for /info: everything but the API key, and files by their names
        (where they lie on the server's disk is not the clients' business)."""
        values = asdict(self)
        del values["api_key"]
        for name in ("index", "mesh", "reranker"):
            if values[name] is not None:
                values[name] = Path(values[name]).name
        return values


def is_loopback(host: str) -> bool:
    """Whether `host` is reachable only from this machine: localhost, 127.0.0.0/8 or ::1."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a host name: it may resolve to any address
        return False


def exposure_warning(config: ServeConfig) -> str | None:
    """A warning for a server that listens beyond this machine without an API key, else None."""
    if config.api_key is not None or is_loopback(config.host):
        return None
    return (f"fastret serve listens on {config.host}, beyond this machine, without an API key: anyone who "
            f"can reach port {config.port} can embed and search. Set {API_KEY_ENV} (or --api-key), or "
            "listen on 127.0.0.1 behind a proxy that authenticates")
