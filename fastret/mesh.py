"""The MeSH descriptor hierarchy, and MeSH label sets encoded for `fastret.mesh_similarity`.

MeSH places every descriptor at one or more positions ("tree numbers") of a forest: `C04` is a
root, `C04.557` its child, `C04.557.337` a grandchild. Here every prefix of a tree number (split on
".") is a tree node; a descriptor's nodes are the union, over its positions, of the position and
all its ancestors. For node c:

    depth(c) = number of "."-separated parts      ("C04" -> 1, "C04.557" -> 2)
    w_c      = ln(depth(c) + 1)                     (deeper, more specific nodes weigh more)

A document with labels D gets the weighted multi-hot vector v[c] = w_c for every node c of a
descriptor in D (0 elsewhere), and SimL(p, q) = cosine(v_p, v_q) (`fastret.mesh_similarity`).

Node ids are dense integers 0 .. n_nodes-1 in sorted tree-number order, which is the forest's
pre-order (a node sorts before its descendants, since "." sorts before every digit), so they are
deterministic for a given tree and an ancestor's id is below its descendants'.

Files (`MeshTree.from_file`, optionally gzip-compressed; the format is detected):

    tab-separated   `mesh_id<TAB>mesh_name<TAB>tree_number` per line, an optional header line
                    (fastret's shared `mesh2015_tree_numbers.tsv`)
    NLM mtrees      `Name;TreeNumber` per line (`mtrees2015.bin`); descriptors are named only
    NLM ASCII       `*NEWRECORD` records with `MH = name`, `MN = tree number`, `UI = id` lines
                    (`d2015.bin`)

Labels are looked up as descriptor ids ("D000001") first, then as names ("Calcimycin").
Labels the tree does not know (descriptors newer than the tree's release, or without a tree
position) are skipped and counted, with one warning per tree.
"""

from __future__ import annotations

import bisect
import hashlib
import re
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Dict, Iterable, Iterator, List, Optional, Tuple, Union

import numpy as np

from .corpus import open_text

if TYPE_CHECKING:  # torch is imported where labels are encoded for the kernel, not for filters
    import torch

__all__ = ["EncodedLabels", "MeshTree", "UnknownMeshLabelWarning"]

_TREE_NUMBER = re.compile(r"[A-Z][0-9]{2}(?:\.[0-9]{3})*\Z")  # C04, C04.557, C04.557.337 ...
_ASCII_FIELD = re.compile(r"([A-Z]+) = (.*)\Z")
_FORMATS = (
    "tab-separated `mesh_id<TAB>mesh_name<TAB>tree_number` lines (optional header), "
    "NLM mtrees `Name;TreeNumber` lines (e.g. `Calcimycin;D03.633.100.221.173`), "
    "or an NLM ASCII descriptor file (`*NEWRECORD` records with MH/MN/UI fields)"
)
_SHOWN_UNKNOWN = 5  # labels named in the unknown-label warning


class UnknownMeshLabelWarning(UserWarning):
    """Some labels passed to `MeshTree.encode` are not in the tree and were skipped."""


# -------------------------------------------------------------------------------- encoded labels


@dataclass(frozen=True, repr=False, eq=False)
class EncodedLabels:
    """A batch of MeSH label sets as padded tree-node lists, ready for `fastret.mesh_similarity`.

    Attributes:
        nodes: int32 [B, L]: row b holds the ids of document b's tree nodes, strictly ascending,
            then -1 padding to the batch's width L (the longest row; an all -1 row for a document
            without known labels).
        weights: float32 [B, L]: w_c = ln(depth(c) + 1) beside each node, 0 at padding.
        unknown: int32 [B] (CPU): labels of each document the tree did not know (skipped).
        n_nodes: nodes in the tree that produced the ids (ids are below it).
        tree_id: fingerprint of that tree; `mesh_similarity` refuses to compare batches encoded
            with different trees (their node ids mean different things).

    `len(enc)` is B; `enc[index]` selects documents (an int, slice, list or tensor of indices, or a
    bool mask) keeping the width; `enc.to(device)` moves nodes and weights.
    """

    nodes: torch.Tensor
    weights: torch.Tensor
    unknown: torch.Tensor
    n_nodes: int
    tree_id: str

    def __post_init__(self):
        import torch

        for name, dtype in (("nodes", torch.int32), ("weights", torch.float32), ("unknown", torch.int32)):
            value = getattr(self, name)
            if not isinstance(value, torch.Tensor):
                raise TypeError(f"EncodedLabels.{name} must be a torch.Tensor, got {type(value).__name__}")
            if value.dtype != dtype:
                raise TypeError(f"EncodedLabels.{name} must be {dtype}, got {value.dtype}")
        if self.nodes.ndim != 2 or self.weights.shape != self.nodes.shape:
            raise ValueError(
                f"EncodedLabels.nodes and .weights must both be [B, L], got {tuple(self.nodes.shape)} "
                f"and {tuple(self.weights.shape)}"
            )
        if tuple(self.unknown.shape) != (self.nodes.shape[0],):
            raise ValueError(
                f"EncodedLabels.unknown must be [B] = [{self.nodes.shape[0]}], got {tuple(self.unknown.shape)}"
            )
        if self.weights.device != self.nodes.device:
            raise ValueError(
                f"EncodedLabels.nodes is on {self.nodes.device} but .weights on {self.weights.device}"
            )

    def __len__(self) -> int:
        return self.nodes.shape[0]

    def __getitem__(self, index) -> "EncodedLabels":
        import torch

        if isinstance(index, torch.Tensor) and index.ndim == 0:
            index = int(index)
        if isinstance(index, (int, np.integer)) and not isinstance(index, bool):
            index = int(index)
            if not -len(self) <= index < len(self):
                raise IndexError(f"document {index} is out of range for {len(self)} documents")
            index = slice(index, index + 1 if index != -1 else None)  # keep the batch axis
        if isinstance(index, torch.Tensor):
            rows_cpu = index.cpu()
            rows_dev = index.to(self.nodes.device)
        else:
            rows_cpu = rows_dev = index
        return EncodedLabels(
            self.nodes[rows_dev], self.weights[rows_dev], self.unknown[rows_cpu], self.n_nodes, self.tree_id
        )

    @property
    def device(self) -> torch.device:
        return self.nodes.device

    @property
    def lengths(self) -> torch.Tensor:
        """int32 [B]: nodes per document (the non-padding entries of each row)."""
        import torch

        return (self.nodes >= 0).sum(dim=1, dtype=torch.int32)

    def to(self, device: Union[str, torch.device]) -> "EncodedLabels":
        """The same labels with nodes and weights on `device` (unknown stays on the CPU)."""
        return EncodedLabels(self.nodes.to(device), self.weights.to(device), self.unknown, self.n_nodes, self.tree_id)

    def __repr__(self) -> str:
        B, L = self.nodes.shape
        lengths = self.lengths
        mean = float(lengths.float().mean()) if B else 0.0
        empty = int((lengths == 0).sum())
        return (
            f"EncodedLabels(documents={B}, width={L}, nodes/doc={mean:.1f}, empty={empty}, "
            f"unknown labels={int(self.unknown.sum())}, device={self.device})"
        )


# ------------------------------------------------------------------------------------------ tree


class MeshTree:
    """The MeSH hierarchy: descriptors, their tree positions, and the tree nodes above them.

    Build one with `MeshTree.from_file(path)` (see the module docstring for the formats), or from
    records directly. `len(tree)` is the number of descriptors, `label in tree` tells whether a
    descriptor id or name is known, and iteration yields the descriptor keys (ids, or names for
    an mtrees file).

    Args:
        records: iterable of (descriptor_id, name, tree_number) triples, one per tree position;
            descriptor_id may be None when descriptors are known by name only (mtrees), and then
            the name is the key. A 4th element, if given, says where the record came from (e.g.
            "file:line") and replaces "record k" in error messages.
        source: where the records came from, for messages (e.g. the file path).

    Raises:
        ValueError: a malformed tree number, an empty key, or inconsistent records (one id with two
            names, one name for two ids, one tree number for two descriptors).
    """

    def __init__(self, records: Iterable[Tuple[Optional[str], str, str]], *, source: Optional[str] = None):
        self.source = source
        positions: Dict[str, List[str]] = {}
        names: Dict[str, str] = {}  # key -> name
        by_name: Dict[str, str] = {}  # name -> key
        owner: Dict[str, str] = {}  # tree number -> key
        has_ids = False
        for k, record in enumerate(records):
            where = f"record {k}"
            if isinstance(record, tuple) and len(record) == 4:  # (descriptor, name, tree number, where)
                record, where = record[:3], record[3]
            descriptor, name, tree_number = record
            if not isinstance(name, str) or not isinstance(tree_number, str) or not (
                descriptor is None or isinstance(descriptor, str)
            ):
                raise TypeError(f"{where}: expected (descriptor_id or None, name, tree_number) strings, got {record!r}")
            if not _TREE_NUMBER.match(tree_number):
                raise ValueError(
                    f"{where}: {tree_number!r} is not a MeSH tree number (a letter, two digits, then "
                    "'.'-separated groups of three digits, e.g. 'C04.557.337')"
                )
            key = descriptor if descriptor is not None else name
            if not key:
                raise ValueError(f"{where}: empty descriptor id and name")
            has_ids = has_ids or descriptor is not None
            if names.setdefault(key, name) != name:
                raise ValueError(f"{where}: descriptor {key!r} is named both {names[key]!r} and {name!r}")
            if name and by_name.setdefault(name, key) != key:
                raise ValueError(f"{where}: the name {name!r} is given to both {by_name[name]!r} and {key!r}")
            if owner.setdefault(tree_number, key) != key:
                raise ValueError(
                    f"{where}: tree number {tree_number} belongs to both {owner[tree_number]!r} and {key!r}"
                )
            places = positions.setdefault(key, [])
            if tree_number not in places:
                places.append(tree_number)

        nodes = sorted({prefix for tree_number in owner for prefix in _prefixes(tree_number)})
        self._nodes: Tuple[str, ...] = tuple(nodes)
        self._node_index: Dict[str, int] = {node: i for i, node in enumerate(nodes)}
        depths = np.fromiter((node.count(".") + 1 for node in nodes), dtype=np.int32, count=len(nodes))
        self._depths = depths
        self._weights = np.log(depths.astype(np.float64) + 1.0).astype(np.float32)  # w_c = ln(depth + 1)
        self._depths.setflags(write=False)
        self._weights.setflags(write=False)
        self._positions: Dict[str, Tuple[str, ...]] = {key: tuple(sorted(p)) for key, p in positions.items()}
        self._names = names
        self._by_name = by_name
        self._owner = owner
        self._has_ids = has_ids
        self._ancestor_cache: Dict[str, np.ndarray] = {}
        self._unknown: Counter = Counter()
        self._warned = False
        digest = hashlib.sha1("\n".join(nodes).encode()).hexdigest()
        self.tree_id: str = digest[:16]

    # ---------------------------------------------------------------------------------- loading

    @classmethod
    def from_file(cls, path: Union[str, Path]) -> "MeshTree":
        """Load a MeSH tree file; the format (tab-separated, mtrees, ASCII descriptors) is detected.

        Args:
            path: the file (gzip-compressed or not).

        Returns:
            The tree.

        Raises:
            FileNotFoundError: no such file.
            ValueError: the file is in none of the formats, or a line breaks the format detected
                from the first line; the message gives `path:line` of the first bad line.
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no MeSH tree file at {path}")
        records = list(_read_records(path))
        if not records:
            raise ValueError(f"{path}: no tree positions found; expected {_FORMATS}")
        return cls(records, source=str(path))

    # ------------------------------------------------------------------------------- properties

    @property
    def n_nodes(self) -> int:
        """Tree nodes (every prefix of every tree number); node ids are 0 .. n_nodes-1."""
        return len(self._nodes)

    @property
    def max_depth(self) -> int:
        return int(self._depths.max()) if len(self._nodes) else 0

    @property
    def has_ids(self) -> bool:
        """Whether descriptors are keyed by id (tab-separated, ASCII files) or by name only (mtrees)."""
        return self._has_ids

    @property
    def nodes(self) -> Tuple[str, ...]:
        """Every node's tree number, indexed by node id (sorted)."""
        return self._nodes

    @property
    def node_depths(self) -> np.ndarray:
        """int32 [n_nodes] (read-only): depth of each node id."""
        return self._depths

    @property
    def node_weights(self) -> np.ndarray:
        """float32 [n_nodes] (read-only): w_c = ln(depth(c) + 1) of each node id."""
        return self._weights

    @property
    def unknown_labels(self) -> Dict[str, int]:
        """Every label `encode` skipped so far, with how often (across calls)."""
        return dict(self._unknown)

    def __len__(self) -> int:
        return len(self._positions)

    def __iter__(self) -> Iterator[str]:
        return iter(self._positions)

    def __contains__(self, label: object) -> bool:
        return isinstance(label, str) and self._key(label) is not None

    def __repr__(self) -> str:
        source = f", source={self.source!r}" if self.source else ""
        keyed = "" if self._has_ids else ", keyed by name"
        return (
            f"MeshTree({len(self)} descriptors, {self.n_nodes} nodes, max depth {self.max_depth}"
            f"{keyed}{source})"
        )

    # ---------------------------------------------------------------------------------- lookups

    def _key(self, label: str) -> Optional[str]:
        if label in self._positions:
            return label
        return self._by_name.get(label)

    def _require(self, label: object) -> str:
        if not isinstance(label, str):
            raise TypeError(f"a MeSH label must be a str (descriptor id or name), got {type(label).__name__}")
        key = self._key(label)
        if key is None:
            what = "descriptor id or name" if self._has_ids else "descriptor name (this tree has no ids)"
            raise KeyError(f"{label!r} is not a {what} in {self!r}")
        return key

    def name(self, label: str) -> str:
        """The descriptor's name (label: its id or name)."""
        return self._names[self._require(label)]

    def descriptor(self, tree_number: str) -> Optional[str]:
        """The descriptor placed at `tree_number` (its id, or its name in an mtrees tree), or None
        for a node that is only a prefix of other positions."""
        self._node_id(tree_number)
        return self._owner.get(tree_number)

    def tree_numbers(self, label: str) -> Tuple[str, ...]:
        """The descriptor's positions, sorted (label: its id or name)."""
        return self._positions[self._require(label)]

    def descendants(self, label: str) -> Tuple[str, ...]:
        """Every descriptor at or below a tree number or a descriptor, itself included, sorted.

        Args:
            label: a tree number ("C04": every descriptor placed at C04 or under it) or a
                descriptor id or name (every descriptor under any of its positions).

        Returns:
            Descriptor keys (ids, or names in a tree keyed by name).

        Raises:
            KeyError: the label is neither a tree node nor a descriptor of this tree.
        """
        if isinstance(label, str) and label not in self._positions and label in self._node_index:
            tops: Tuple[str, ...] = (label,)
        else:
            tops = self._positions[self._require(label)]
        found = set()
        for top in tops:
            # pre-order: a node's subtree is the nodes from it up to the first one not under it
            # ("/" sorts right after ".")
            start = self._node_index[top]
            stop = bisect.bisect_left(self._nodes, top + "/", lo=start)
            found.update(self._owner[node] for node in self._nodes[start:stop] if node in self._owner)
        return tuple(sorted(found))

    def ancestors(self, label: str) -> Tuple[str, ...]:
        """All tree nodes above a descriptor or a tree number, itself included, in node-id order.

        Args:
            label: a descriptor id or name (the union over its positions) or a tree number.

        Returns:
            Tree numbers, e.g. ancestors("C04.557.337") == ("C04", "C04.557", "C04.557.337").

        Raises:
            KeyError: the label is not in the tree.
        """
        return tuple(self._nodes[i] for i in self.ancestor_ids(label))

    def ancestor_ids(self, label: str) -> Tuple[int, ...]:
        """Node ids of `ancestors(label)`, ascending."""
        if isinstance(label, str) and label not in self._positions and label in self._node_index:
            return tuple(self._node_index[p] for p in _prefixes(label))
        return tuple(int(i) for i in self._ancestors_of(self._require(label)))

    def node_id(self, tree_number: str) -> int:
        """The dense id of a tree node."""
        return self._node_id(tree_number)

    def node(self, node_id: int) -> str:
        """The tree number of a node id."""
        return self._nodes[self._node_index_of(node_id)]

    def depth(self, node: Union[str, int]) -> int:
        """Depth of a tree node (tree number or node id): "C04" -> 1, "C04.557" -> 2."""
        return int(self._depths[self._node_index_of(node)])

    def weight(self, node: Union[str, int]) -> float:
        """w_c = ln(depth(c) + 1) of a tree node (tree number or node id), as float32 stores it."""
        return float(self._weights[self._node_index_of(node)])

    def _node_id(self, tree_number: object) -> int:
        if not isinstance(tree_number, str):
            raise TypeError(f"a tree number must be a str like 'C04.557', got {type(tree_number).__name__}")
        node_id = self._node_index.get(tree_number)
        if node_id is None:
            hint = ""
            if self._key(tree_number) is not None:
                hint = (
                    f"; {tree_number!r} is a descriptor, which may sit at several positions: "
                    "see tree.tree_numbers(label)"
                )
            raise KeyError(f"{tree_number!r} is not a tree node of {self!r}{hint}")
        return node_id

    def _node_index_of(self, node: object) -> int:
        if isinstance(node, (int, np.integer)) and not isinstance(node, bool):
            if not 0 <= node < len(self._nodes):
                raise IndexError(f"node id {node} is out of range [0, {len(self._nodes)})")
            return int(node)
        return self._node_id(node)

    def _ancestors_of(self, key: str) -> np.ndarray:
        ids = self._ancestor_cache.get(key)
        if ids is None:
            union = {self._node_index[p] for t in self._positions[key] for p in _prefixes(t)}
            ids = np.array(sorted(union), dtype=np.int32)
            ids.setflags(write=False)
            self._ancestor_cache[key] = ids
        return ids

    # --------------------------------------------------------------------------------- encoding

    def encode(
        self, label_lists: Iterable[Iterable[str]], *, device: Union[str, torch.device, None] = None
    ) -> EncodedLabels:
        """Encode one label set per document as padded node lists + depth weights.

        Each document's nodes are the union of its labels' ancestors (`ancestors`), as node ids
        sorted ascending, padded with -1 to the longest row of the batch. Labels the tree does not
        know are skipped and counted (per document in `.unknown`, across calls in
        `tree.unknown_labels`); the first call that meets one warns (UnknownMeshLabelWarning), once
        per tree. A document without known labels gets an all-padding row (similarity 0 to all).

        Args:
            label_lists: one list of descriptor ids or names per document, e.g.
                [["D000001", "D000002"], ["Calcimycin"], []].
            device: where to put nodes and weights (default: CPU).

        Returns:
            EncodedLabels with nodes int32 [B, L], weights float32 [B, L], unknown int32 [B].

        Raises:
            TypeError: label_lists is a str, or a document's labels are a str or hold a non-str.
        """
        if isinstance(label_lists, (str, bytes)):
            raise TypeError(
                "label_lists must be a list of label lists (one per document), got a single str; "
                "for one document with one label pass [[label]]"
            )
        rows: List[np.ndarray] = []
        unknown: List[int] = []
        skipped: Counter = Counter()
        for doc_index, labels in enumerate(label_lists):
            if isinstance(labels, (str, bytes)) or not isinstance(labels, Iterable):
                raise TypeError(
                    f"label_lists[{doc_index}] must be a list of descriptor ids/names, got "
                    f"{type(labels).__name__} {labels!r:.60}; wrap a single document's labels in a list: [[...]]"
                )
            parts = []
            missing = 0
            for label in labels:
                if not isinstance(label, str):
                    raise TypeError(
                        f"label_lists[{doc_index}] holds {label!r} ({type(label).__name__}); MeSH labels are "
                        "str descriptor ids (e.g. 'D000001') or names"
                    )
                key = self._key(label)
                if key is None:
                    missing += 1
                    skipped[label] += 1
                else:
                    parts.append(self._ancestors_of(key))
            if len(parts) == 1:
                rows.append(parts[0])
            elif parts:
                rows.append(np.unique(np.concatenate(parts)))  # sorted union
            else:
                rows.append(np.empty(0, dtype=np.int32))
            unknown.append(missing)

        B = len(rows)
        width = max((len(r) for r in rows), default=0)
        nodes = np.full((B, width), -1, dtype=np.int32)
        weights = np.zeros((B, width), dtype=np.float32)
        for b, row in enumerate(rows):
            nodes[b, : len(row)] = row
            weights[b, : len(row)] = self._weights[row]
        if skipped:
            self._unknown.update(skipped)
            if not self._warned:
                self._warned = True
                self._warn_unknown(skipped, sum(unknown), sum(len(r) == 0 for r in rows), B)
        import torch

        return EncodedLabels(
            torch.from_numpy(nodes).to(device) if device is not None else torch.from_numpy(nodes),
            torch.from_numpy(weights).to(device) if device is not None else torch.from_numpy(weights),
            torch.tensor(unknown, dtype=torch.int32),
            self.n_nodes,
            self.tree_id,
        )

    def _warn_unknown(self, skipped: Counter, n_skipped: int, n_empty: int, n_docs: int) -> None:
        shown = ", ".join(f"{label!r} ({n}x)" for label, n in skipped.most_common(_SHOWN_UNKNOWN))
        more = f" and {len(skipped) - _SHOWN_UNKNOWN} more" if len(skipped) > _SHOWN_UNKNOWN else ""
        empty = (
            f"; {n_empty} of {n_docs} documents have no known label left (all-padding rows, similarity 0)"
            if n_empty
            else ""
        )
        warnings.warn(
            f"{n_skipped} MeSH labels ({len(skipped)} distinct) are not in {self!r} and were skipped: "
            f"{shown}{more}{empty}. Such labels are descriptors newer than the tree's release, or "
            "descriptors without a tree position (in MeSH 2015 the check tags Female/Male). Counts: "
            "EncodedLabels.unknown per document, tree.unknown_labels over all calls; this warning is "
            "shown once per tree.",
            UnknownMeshLabelWarning,
            stacklevel=3,
        )


# ------------------------------------------------------------------------------------- file parsing


def _prefixes(tree_number: str) -> Iterator[str]:
    """"C04.557.337" -> "C04", "C04.557", "C04.557.337"."""
    end = tree_number.find(".")
    while end != -1:
        yield tree_number[:end]
        end = tree_number.find(".", end + 1)
    yield tree_number


def _read_records(path: Path) -> Iterator[Tuple[Optional[str], str, str, str]]:
    """(descriptor id or None, name, tree number, "path:line") per tree position in the file."""
    try:
        with open_text(path) as f:
            lines = [(n, line.rstrip("\n")) for n, line in enumerate(f, start=1)]
    except UnicodeDecodeError as error:
        raise ValueError(f"{path}: not UTF-8 text ({error}); expected {_FORMATS}") from None
    except (OSError, EOFError) as error:  # e.g. a truncated .gz
        raise ValueError(f"{path}: cannot be read ({error}); expected {_FORMATS}") from None
    content = [(n, line) for n, line in lines if line.strip()]
    if not content:
        return
    first_n, first = content[0]
    if first.strip() == "*NEWRECORD":
        yield from _ascii_records(path, content)
    elif "\t" in first:
        yield from _tsv_records(path, content)
    elif ";" in first and _TREE_NUMBER.match(first.rsplit(";", 1)[1].strip()):
        yield from _mtrees_records(path, content)
    else:
        raise ValueError(f"{path}:{first_n}: not a MeSH tree file: {first[:80]!r}; expected {_FORMATS}")


def _tsv_records(path: Path, content: List[Tuple[int, str]]):
    for k, (n, line) in enumerate(content):
        fields = line.split("\t")
        if len(fields) == 3 and k == 0 and not _TREE_NUMBER.match(fields[2].strip()):
            continue  # header, e.g. "mesh_id  mesh_name  mesh_tree_number"
        descriptor, name, tree_number = fields if len(fields) == 3 else ("", "", "")
        tree_number = tree_number.strip()
        if not descriptor.strip() or not _TREE_NUMBER.match(tree_number):
            raise ValueError(
                f"{path}:{n}: expected `mesh_id<TAB>mesh_name<TAB>tree_number` (the format of the first "
                f"line) with a tree number like 'C04.557.337', got {line[:100]!r}"
            )
        yield descriptor.strip(), name.strip(), tree_number, f"{path}:{n}"


def _mtrees_records(path: Path, content: List[Tuple[int, str]]):
    for n, line in content:
        name, sep, tree_number = line.rpartition(";")
        tree_number = tree_number.strip()
        if not sep or not name.strip() or not _TREE_NUMBER.match(tree_number):
            raise ValueError(
                f"{path}:{n}: expected `Name;TreeNumber` (NLM mtrees, the format of the first line) "
                f"with a tree number like 'C04.557.337', got {line[:100]!r}"
            )
        yield None, name.strip(), tree_number, f"{path}:{n}"


def _ascii_records(path: Path, content: List[Tuple[int, str]]):
    record: Dict[str, List[str]] = {}
    start = 0

    def finish():
        if not record:
            return
        if "UI" not in record or "MH" not in record:
            raise ValueError(f"{path}:{start}: descriptor record without a UI (id) or MH (name) line")
        for tree_number in record.get("MN", []):
            if not _TREE_NUMBER.match(tree_number):
                raise ValueError(f"{path}:{start}: record {record['UI'][0]}: {tree_number!r} is not a tree number")
            yield record["UI"][0], record["MH"][0], tree_number, f"{path}:{start}"
        # a descriptor without MN lines has no tree position: it is not part of the tree

    for n, line in content:
        if line.strip() == "*NEWRECORD":
            yield from finish()
            record, start = {}, n
            continue
        match = _ASCII_FIELD.match(line.strip())
        if match is None or not start:
            raise ValueError(
                f"{path}:{n}: expected `KEY = value` lines inside `*NEWRECORD` records (NLM ASCII "
                f"descriptors, the format of the first line), got {line[:100]!r}"
            )
        record.setdefault(match.group(1), []).append(match.group(2).strip())
    yield from finish()
