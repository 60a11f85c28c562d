"""Open a store or an index file as a `fastret.search.rules.Searchable`: an `Index` mapped in this process,
or a `fastret.search.distributed.ShardedIndex` whose shards are Ray actors. `fastret search`, `fastret serve`
and `fastret eval` open their `--index` here, so each of them searches on Ray the same way.
"""

from __future__ import annotations

import os
from typing import Any

from .index import Index
from .rules import Searchable


def open_searchable(path: str | os.PathLike, *, shards: int | None = None, ray_address: str | None = None,
                    replicas: int = 1, verify: bool = True, device: Any = "cpu") -> Searchable:
    """A store directory or an index file, searchable here or on Ray.

    Args:
        path: a store directory or an index file (`Index.load`).
        shards: spread the files over this many Ray actors (`ShardedIndex.load`); None with
            `ray_address`: one per node of the cluster; None without it: no Ray (an `Index`).
        ray_address: the Ray cluster to join (e.g. "10.0.0.1:6379" or "auto"); without it, but with
            `shards`, a local Ray is started (unless this process has joined one already).
        replicas: actors per shard.
        verify: check each file's checksum when it is opened (see `Index.load`).
        device: where an `Index` searches: "cpu" (the C++ core) or a CUDA GPU, its rows copied
            there now (`Index.to`); a Ray searcher's shards search on their CPUs.

    Returns:
        an `Index`, or a `ShardedIndex` whose actors share the CPUs Ray has free now (each
        searches with that many threads, at least one).

    Raises:
        ValueError: Ray is not installed, or as `Index.load` / `ShardedIndex.load` (e.g. more shards
            than files) and `Index.to`; a device other than "cpu" with Ray.
        FileNotFoundError: no such file or directory.
    """
    if shards is None and ray_address is None:
        return Index.load(path, verify=verify).to(device)
    if str(device) != "cpu":
        raise ValueError(f"an index on Ray searches on its actors' CPUs, not on {device}: search on one GPU "
                         "without shards or a Ray address, or on 'cpu'")
    try:
        import ray

        from .distributed import ShardedIndex
    except ImportError:
        raise ValueError("searching on Ray (shards or a Ray address) needs Ray: "
                         "pip install \"fastret[distributed]\"") from None
    if not ray.is_initialized():  # (a program may have joined a cluster already)
        ray.init(address=ray_address, include_dashboard=False, log_to_driver=False)
    actors = (shards or sum(1 for node in ray.nodes() if node.get("Alive"))) * replicas
    return ShardedIndex.load(path, shards, replicas=replicas, verify=verify,
                             num_cpus=ray.available_resources().get("CPU", 0.0) / actors)
