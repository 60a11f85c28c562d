"""The on-disk embedding store that `Encoder.encode_corpus` writes and `Index.load` reads.

    out_dir/
      manifest.json           settings, and the finished shards in order (no timestamps, so two
                              runs over the same corpus write identical bytes)
      shard-00000.frt         a fastret index file: int8 codes, scales, global row numbers as ids,
                              optional float16 copies (see index_file.py)
      shard-00000.ids.json    the documents' ids, in row order

Shard k holds documents [k * shard_size, (k + 1) * shard_size) of the corpus. Each file is
written to a temporary name and renamed; a shard is finished exactly when its .frt file exists
(its ids file is written first), so an interrupted run resumes by skipping finished shards.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import index_file
from .atomic import atomic_write

MANIFEST = "manifest.json"
FORMAT = "fastret-store"
VERSION = 1


class StoreError(ValueError):
    """A store directory that is missing, incomplete, or made with other settings."""


def shard_name(number: int) -> str:
    return f"shard-{number:05d}"


def write_atomic(path: Path, data: bytes) -> None:
    with atomic_write(path) as f:
        f.write(data)


def write_shard(directory: Path, number: int, doc_ids: list[str], first_row: int, codes: np.ndarray,
                scales: np.ndarray, float16: np.ndarray | None) -> None:
    """Write shard `number` (ids file first, then the index file that marks it finished)."""
    name = shard_name(number)
    write_atomic(directory / f"{name}.ids.json", json.dumps(doc_ids, ensure_ascii=False).encode())
    rows = np.arange(first_row, first_row + len(codes), dtype=np.int64)
    index_file.write(directory / f"{name}.frt", index_file.IndexArrays(codes, scales, rows, float16))


def finished_shards(directory: Path) -> list[int]:
    """Numbers of the shards whose index file exists, ascending."""
    return sorted(int(p.name[len("shard-"):-len(".frt")]) for p in directory.glob("shard-*.frt"))


def write_manifest(directory: Path, settings: dict, complete: bool) -> dict:
    """Record `settings` and the finished shards (with their sizes); returns the manifest."""
    shards = []
    for number in finished_shards(directory):
        header = index_file.read_header(directory / f"{shard_name(number)}.frt")
        shards.append({"name": shard_name(number), "count": header.count})
    manifest = {"format": FORMAT, "version": VERSION, **settings, "complete": complete,
                "count": sum(s["count"] for s in shards), "shards": shards}
    write_atomic(directory / MANIFEST, (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode())
    return manifest


def read_manifest(directory: str | os.PathLike) -> dict:
    path = Path(directory) / MANIFEST
    if not path.is_file():
        raise StoreError(f"{directory} is not a fastret store (no {MANIFEST})")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise StoreError(f"{path}: not valid JSON ({error.msg})") from None
    if manifest.get("format") != FORMAT:
        raise StoreError(f"{path} is not a fastret store manifest")
    if manifest.get("version") != VERSION:
        raise StoreError(f"{path}: store version {manifest.get('version')}; this fastret reads {VERSION}")
    return manifest


@dataclass
class Store:
    """A finished store: its manifest, document ids, and vectors as one `Index`."""

    directory: Path
    manifest: dict

    @classmethod
    def open(cls, directory: str | os.PathLike) -> "Store":
        """Open a store written by `encode_corpus`; StoreError if it is incomplete."""
        directory = Path(directory)
        manifest = read_manifest(directory)
        if not manifest.get("complete"):
            raise StoreError(f"{directory}: the store is incomplete ({manifest['count']} documents in "
                             f"{len(manifest['shards'])} shards so far); rerun the encode command to finish it")
        return cls(directory, manifest)

    def __len__(self) -> int:
        return int(self.manifest["count"])

    @property
    def dim(self) -> int:
        return int(self.manifest["dim"])

    def doc_ids(self) -> list[str]:
        """Document ids in row order (row i of the index is document doc_ids()[i])."""
        ids: list[str] = []
        for shard in self.manifest["shards"]:
            ids.extend(json.loads((self.directory / f"{shard['name']}.ids.json").read_text()))
        return ids

    def to_index(self, verify: bool = True):
        """All shards as one in-memory `fastret.Index` (float16 copies included if stored)."""
        from .index import Index

        parts = [index_file.read(self.directory / f"{s['name']}.frt", mmap=True, verify=verify)
                 for s in self.manifest["shards"]]
        index = Index(self.dim, store_float16=bool(self.manifest.get("float16")))
        if parts:
            index._set_arrays(
                np.concatenate([p.codes for p in parts]), np.concatenate([p.scales for p in parts]),
                np.concatenate([p.ids for p in parts]),
                np.concatenate([p.float16 for p in parts]) if index.store_float16 else None)
        return index
