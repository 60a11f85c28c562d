"""fastret/mesh.py: MeshTree parsing (tab-separated, NLM mtrees, NLM ASCII descriptors; detected),
lookups (ids, names, tree numbers, ancestors, depth, weights, node ids), encoding of label sets
into padded node lists, unknown labels (skipped, counted, one warning per tree), and file errors
with file:line. Small synthetic trees in tmp files, and the real MeSH 2015 tree when present."""

import gzip
import json
import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from fastret.mesh import EncodedLabels, MeshTree, UnknownMeshLabelWarning

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"  # ../shared/data relative to the project root
REAL_TREE = SHARED / "mesh" / "mesh2015_tree_numbers.tsv"
REAL_ABSTRACTS = SHARED / "mesh_abstracts" / "pubmedqa_train.jsonl"

# (id, name, tree number): D3 sits at two positions; C04.588.894, C04.588.894.797, C17,
# C17.800.090 and B01 are nodes only as prefixes of other positions
RECORDS = [
    ("D1", "Neoplasms", "C04"),
    ("D2", "Neoplasms by Site", "C04.588"),
    ("D3", "Breast Neoplasms", "C04.588.180"),
    ("D3", "Breast Neoplasms", "C17.800.090.500"),
    ("D4", "Skin Diseases", "C17.800"),
    ("D5", "Lung Neoplasms", "C04.588.894.797.520"),
    ("D6", "Humans", "B01.050"),
]
NODES = sorted(
    ["C04", "C04.588", "C04.588.180", "C17", "C17.800", "C17.800.090", "C17.800.090.500",
     "C04.588.894", "C04.588.894.797", "C04.588.894.797.520", "B01", "B01.050"]
)  # fmt: skip


def write_tsv(path, records=RECORDS, header=True):
    lines = ["mesh_id\tmesh_name\tmesh_tree_number"] if header else []
    lines += ["\t".join(r) for r in records]
    path.write_text("\n".join(lines) + "\n")
    return path


def write_mtrees(path, records=RECORDS):
    path.write_text("".join(f"{name};{tree_number}\n" for _, name, tree_number in records))
    return path


def write_ascii(path, records=RECORDS):
    by_id = {}
    for descriptor, name, tree_number in records:
        by_id.setdefault(descriptor, (name, []))[1].append(tree_number)
    out = []
    for descriptor, (name, tree_numbers) in by_id.items():
        out += ["*NEWRECORD", "RECTYPE = D", f"MH = {name}", "AQ = BL CF CI", "ENTRY = Something|T047|NON"]
        out += [f"MN = {t}" for t in tree_numbers]
        out += ["MS = A note.", f"UI = {descriptor}", ""]
    out += ["*NEWRECORD", "RECTYPE = D", "MH = Female", "UI = D005260", ""]  # a check tag: no MN
    path.write_text("\n".join(out))
    return path


@pytest.fixture
def tree(tmp_path):
    return MeshTree.from_file(write_tsv(tmp_path / "tree.tsv"))


def expected_ids(*tree_numbers):
    """Node ids of all prefixes of the given tree numbers, ascending."""
    prefixes = {".".join(t.split(".")[: k + 1]) for t in tree_numbers for k in range(t.count(".") + 1)}
    return sorted(NODES.index(p) for p in prefixes)


# ------------------------------------------------------------------------------------- parsing


def test_tab_separated_file(tree, tmp_path):
    assert len(tree) == 6 and tree.n_nodes == len(NODES) and tree.nodes == tuple(NODES)
    assert list(tree) == ["D1", "D2", "D3", "D4", "D5", "D6"] and tree.has_ids
    assert tree.tree_numbers("D3") == ("C04.588.180", "C17.800.090.500")
    assert tree.tree_numbers("Breast Neoplasms") == tree.tree_numbers("D3")
    assert tree.name("D5") == "Lung Neoplasms" and tree.name("Humans") == "Humans"
    assert "D3" in tree and "Skin Diseases" in tree and "D7" not in tree and 3 not in tree
    assert tree.max_depth == 5 and tree.source == str(tmp_path / "tree.tsv")
    assert repr(tree) == f"MeshTree(6 descriptors, 12 nodes, max depth 5, source='{tmp_path / 'tree.tsv'}')"
    # without the header, with CRLF line ends and blank lines: the same tree
    text = (write_tsv(tmp_path / "bare.tsv", header=False).read_text()).replace("\n", "\r\n\r\n")
    (tmp_path / "crlf.tsv").write_bytes(text.encode())
    for name in ("bare.tsv", "crlf.tsv"):
        other = MeshTree.from_file(tmp_path / name)
        assert other.nodes == tree.nodes and other.tree_id == tree.tree_id
        assert other.tree_numbers("D3") == tree.tree_numbers("D3")


def test_mtrees_file_is_keyed_by_name(tree, tmp_path):
    named = MeshTree.from_file(write_mtrees(tmp_path / "mtrees2015.bin"))
    assert not named.has_ids and "keyed by name" in repr(named)
    assert named.nodes == tree.nodes and named.tree_id == tree.tree_id  # same hierarchy, same ids
    assert len(named) == 6 and "Breast Neoplasms" in named and "D3" not in named
    assert named.tree_numbers("Breast Neoplasms") == ("C04.588.180", "C17.800.090.500")
    assert named.ancestor_ids("Breast Neoplasms") == tree.ancestor_ids("D3")
    with pytest.raises(KeyError, match=r"'D3' is not a descriptor name \(this tree has no ids\)"):
        named.tree_numbers("D3")


def test_nlm_ascii_descriptor_file(tree, tmp_path):
    ascii_tree = MeshTree.from_file(write_ascii(tmp_path / "d2015.bin"))
    assert ascii_tree.has_ids and ascii_tree.nodes == tree.nodes and len(ascii_tree) == 6
    assert ascii_tree.tree_numbers("D3") == tree.tree_numbers("D3") and ascii_tree.name("D6") == "Humans"
    assert "D005260" not in ascii_tree  # a descriptor without a tree position is not in the tree


def test_gzip_file(tree, tmp_path):
    path = tmp_path / "tree.tsv.gz"
    path.write_bytes(gzip.compress(write_tsv(tmp_path / "plain.tsv").read_bytes()))
    assert MeshTree.from_file(path).tree_id == tree.tree_id


def test_records_constructor_and_consistency_checks():
    assert MeshTree(RECORDS).nodes == tuple(NODES)
    with pytest.raises(ValueError, match=r"record 1: tree number C04 belongs to both 'D1' and 'D9'"):
        MeshTree([("D1", "Neoplasms", "C04"), ("D9", "Other", "C04")])
    with pytest.raises(ValueError, match=r"record 1: descriptor 'D1' is named both 'Neoplasms' and 'Tumors'"):
        MeshTree([("D1", "Neoplasms", "C04"), ("D1", "Tumors", "C05")])
    with pytest.raises(ValueError, match=r"record 1: the name 'Neoplasms' is given to both 'D1' and 'D2'"):
        MeshTree([("D1", "Neoplasms", "C04"), ("D2", "Neoplasms", "C05")])
    with pytest.raises(ValueError, match=r"record 0: 'C4\.1' is not a MeSH tree number"):
        MeshTree([("D1", "Neoplasms", "C4.1")])
    with pytest.raises(TypeError, match=r"record 0: expected \(descriptor_id or None, name, tree_number\)"):
        MeshTree([("D1", "Neoplasms", 4)])


# ------------------------------------------------------------------------------------- lookups


def test_ancestors_are_every_prefix_of_every_position(tree):
    assert tree.ancestors("C04.588.180") == ("C04", "C04.588", "C04.588.180")
    assert tree.ancestors("D1") == ("C04",)
    assert tree.ancestors("D3") == tuple(NODES[i] for i in expected_ids("C04.588.180", "C17.800.090.500"))
    assert tree.ancestors("Breast Neoplasms") == tree.ancestors("D3")
    assert len(tree.ancestors("D3")) == 7  # 3 + 4, no overlap between the two positions
    assert tree.ancestor_ids("D3") == tuple(expected_ids("C04.588.180", "C17.800.090.500"))
    assert tree.ancestor_ids("C17.800.090") == tuple(expected_ids("C17.800.090"))
    with pytest.raises(KeyError, match=r"'D7' is not a descriptor id or name"):
        tree.ancestors("D7")
    with pytest.raises(TypeError, match=r"must be a str .*got int"):
        tree.ancestors(3)


def test_node_ids_follow_sorted_tree_numbers_with_ancestors_first(tree):
    assert [tree.node_id(n) for n in NODES] == list(range(len(NODES)))
    assert [tree.node(i) for i in range(tree.n_nodes)] == NODES
    for node in NODES:  # a node's ancestors all have smaller ids
        ids = tree.ancestor_ids(node)
        assert ids[-1] == tree.node_id(node) and list(ids) == sorted(ids)
    assert tree.descriptor("C17.800.090.500") == "D3" and tree.descriptor("C17.800.090") is None
    with pytest.raises(KeyError, match=r"'C05' is not a tree node"):
        tree.node_id("C05")


def test_depth_and_weight(tree):
    assert tree.depth("C04") == 1 and tree.depth("C04.588") == 2 and tree.depth("C04.588.894.797.520") == 5
    assert tree.depth(tree.node_id("C17.800.090")) == 3
    for node in NODES:
        depth = node.count(".") + 1
        assert tree.weight(node) == np.float32(math.log(depth + 1))
        assert tree.node_depths[tree.node_id(node)] == depth
    assert tree.weight("C04") == pytest.approx(math.log(2)) and tree.weight("B01.050") == pytest.approx(math.log(3))
    np.testing.assert_array_equal(tree.node_weights, np.log(tree.node_depths + 1.0).astype(np.float32))
    with pytest.raises(ValueError, match="read-only"):
        tree.node_weights[0] = 1.0
    with pytest.raises(KeyError, match=r"'D3' is a descriptor, which may sit at several positions"):
        tree.depth("D3")
    with pytest.raises(IndexError, match=r"node id 12 is out of range \[0, 12\)"):
        tree.depth(12)
    with pytest.raises(TypeError, match=r"tree number must be a str like 'C04.557', got float"):
        tree.depth(1.0)


# ------------------------------------------------------------------------------------ encoding


def test_encode_pads_sorted_unique_rows(tree):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # all labels known: no warning
        enc = tree.encode([["D3"], ["D1", "D2", "D1"], [], ["Lung Neoplasms", "D6"], ["D2", "Neoplasms by Site"]])
    assert isinstance(enc, EncodedLabels) and len(enc) == 5
    assert enc.nodes.dtype == torch.int32 and enc.weights.dtype == torch.float32 and enc.unknown.dtype == torch.int32
    rows = [
        expected_ids("C04.588.180", "C17.800.090.500"),
        expected_ids("C04.588"),  # D1's node is D2's ancestor; the repeated D1 counts once
        [],
        expected_ids("C04.588.894.797.520", "B01.050"),
        expected_ids("C04.588"),  # an id and its name are one descriptor
    ]
    width = max(len(r) for r in rows)
    assert enc.nodes.shape == enc.weights.shape == (5, width) == (5, 7)
    for b, row in enumerate(rows):
        assert enc.nodes[b].tolist() == row + [-1] * (width - len(row))
        expected_w = [np.float32(math.log(NODES[i].count(".") + 2)) for i in row] + [0.0] * (width - len(row))
        assert enc.weights[b].tolist() == expected_w
    assert enc.unknown.tolist() == [0] * 5 and enc.lengths.tolist() == [len(r) for r in rows]
    assert enc.n_nodes == 12 and enc.tree_id == tree.tree_id and enc.device == torch.device("cpu")


def test_encode_empty_batches(tree):
    enc = tree.encode([])
    assert enc.nodes.shape == (0, 0) and enc.unknown.shape == (0,)
    enc = tree.encode([[], []])
    assert enc.nodes.shape == (2, 0) and enc.weights.shape == (2, 0)


def test_unknown_labels_are_skipped_counted_and_warned_about_once(tree):
    with pytest.warns(UnknownMeshLabelWarning) as record:
        enc = tree.encode([["D1", "D2024", "D0999"], ["D0999"], ["D3"], ["D0999", "Female"]])
    assert len(record) == 1
    message = str(record[0].message)
    assert message.startswith("5 MeSH labels (3 distinct) are not in MeshTree(6 descriptors")
    assert "'D0999' (3x), 'D2024' (1x), 'Female' (1x)" in message
    assert "2 of 4 documents have no known label left" in message and "once per tree" in message
    assert record[0].filename == __file__  # points at the caller of encode
    assert enc.unknown.tolist() == [2, 1, 0, 2]
    assert enc.nodes[1].tolist() == [-1] * enc.nodes.shape[1] and not enc.weights[1].any()
    assert enc.nodes[0].tolist()[:1] == expected_ids("C04")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the second batch with unknown labels is counted, not warned
        again = tree.encode([["D0999", "D5"]])
    assert again.unknown.tolist() == [1]
    assert tree.unknown_labels == {"D0999": 4, "D2024": 1, "Female": 1}
    other = MeshTree(RECORDS)  # once per tree: another tree warns again
    with pytest.warns(UnknownMeshLabelWarning, match=r"1 MeSH labels \(1 distinct\).*'D0999' \(1x\)"):
        other.encode([["D0999"]])


def test_encode_explains_bad_label_lists(tree):
    with pytest.raises(TypeError, match=r"got a single str; for one document with one label pass \[\[label\]\]"):
        tree.encode("D1")
    with pytest.raises(TypeError, match=r"label_lists\[1\] must be a list of descriptor ids/names, got str 'D1'"):
        tree.encode([["D1"], "D1"])
    with pytest.raises(TypeError, match=r"label_lists\[0\] holds 7 \(int\)"):
        tree.encode([["D1", 7]])
    with pytest.raises(TypeError, match=r"label_lists\[0\] must be a list.*got NoneType"):
        tree.encode([None])


def test_encoded_labels_select_move_and_print(tree):
    with pytest.warns(UnknownMeshLabelWarning):
        enc = tree.encode([["D3"], ["D1"], ["D0999"], ["D5", "D6"]])
    assert enc[1].nodes.tolist() == [tree.encode([["D1"]]).nodes[0].tolist() + [-1] * 6]
    assert enc[-1].nodes.shape == (1, 7) and enc[-1].lengths.tolist() == [7]
    assert torch.equal(enc[np.int64(2)].nodes, enc[2].nodes) and torch.equal(enc[torch.tensor(0)].nodes, enc[0].nodes)
    with pytest.raises(IndexError, match=r"document 4 is out of range for 4 documents"):
        enc[4]
    assert enc[1:3].unknown.tolist() == [0, 1] and len(enc[1:3]) == 2
    picked = enc[torch.tensor([3, 0])]
    assert torch.equal(picked.nodes, enc.nodes[[3, 0]]) and picked.unknown.tolist() == [0, 0]
    assert torch.equal(enc[[True, False, True, False]].nodes, enc.nodes[[0, 2]])
    assert torch.equal(enc.to("cpu").nodes, enc.nodes) and enc.to("meta").device.type == "meta"
    assert repr(enc) == "EncodedLabels(documents=4, width=7, nodes/doc=3.8, empty=1, unknown labels=1, device=cpu)"
    assert enc[2].tree_id == enc.tree_id and enc[2].n_nodes == 12


def test_encoded_labels_checks_its_fields():
    nodes, weights, unknown = torch.full((2, 3), -1, dtype=torch.int32), torch.zeros(2, 3), torch.zeros(2, dtype=torch.int32)
    with pytest.raises(TypeError, match=r"EncodedLabels.nodes must be torch.int32, got torch.int64"):
        EncodedLabels(nodes.long(), weights, unknown, 5, "x")
    with pytest.raises(TypeError, match=r"EncodedLabels.weights must be a torch.Tensor, got list"):
        EncodedLabels(nodes, weights.tolist(), unknown, 5, "x")
    with pytest.raises(ValueError, match=r"must both be \[B, L\], got \(2, 3\) and \(2, 2\)"):
        EncodedLabels(nodes, weights[:, :2], unknown, 5, "x")
    with pytest.raises(ValueError, match=r"unknown must be \[B\] = \[2\], got \(3,\)"):
        EncodedLabels(nodes, weights, torch.zeros(3, dtype=torch.int32), 5, "x")


# ---------------------------------------------------------------------------------- bad files


@pytest.mark.parametrize(
    "text, line, match",
    [
        pytest.param("just some text\nmore\n", 1, r"not a MeSH tree file: 'just some text'", id="neither"),
        pytest.param("\n\n{\"a\": 1}\n", 3, r"not a MeSH tree file", id="json-after-blank-lines"),
        pytest.param("h1\th2\th3\nD1\tNeoplasms\tC04\nD2\tNeoplasms by Site\n", 3,
                     r"expected `mesh_id<TAB>mesh_name<TAB>tree_number`.*'D2\\tNeoplasms by Site'", id="tsv-2-fields"),
        pytest.param("D1\tNeoplasms\tC04\n\nD2\tX\tC04.58\n", 3, r"tree number like 'C04.557.337', got 'D2\\tX\\tC04.58'",
                     id="tsv-bad-tree-number"),
        pytest.param("D1\tNeoplasms\tC04\nmesh_id\tmesh_name\tmesh_tree_number\n", 2, r"expected `mesh_id", id="late-header"),
        pytest.param("Neoplasms;C04\nNeoplasms by Site;C04.588\nD2\tX\tC04.588\n", 3,
                     r"expected `Name;TreeNumber` \(NLM mtrees", id="mtrees-then-tsv"),
        pytest.param("Neoplasms;C04\n;C05\n", 2, r"`Name;TreeNumber`.*got ';C05'", id="mtrees-no-name"),
        pytest.param("*NEWRECORD\nMH = Neoplasms\nMN = C04\nUI = D1\nnot a field\n", 5,
                     r"expected `KEY = value` lines inside `\*NEWRECORD` records", id="ascii-bad-line"),
        pytest.param("*NEWRECORD\nMH = Neoplasms\nMN = C04\n\n*NEWRECORD\nMH = X\nUI = D2\n", 1,
                     r"descriptor record without a UI \(id\) or MH \(name\) line", id="ascii-no-ui"),
        pytest.param("D1\tNeoplasms\tC04\nD2\tTumors\tC04\n", 2, r"tree number C04 belongs to both 'D1' and 'D2'",
                     id="tree-number-twice"),
    ],
)
def test_bad_files_name_the_first_bad_line(tmp_path, text, line, match):
    path = tmp_path / "bad.txt"
    path.write_text(text)
    with pytest.raises(ValueError, match=rf"^{path}:{line}: .*{match}"):
        MeshTree.from_file(path)


def test_unreadable_empty_and_missing_files(tmp_path):
    (tmp_path / "binary.bin").write_bytes(b"\x00\xff\xfe\x80 not text")
    with pytest.raises(ValueError, match=r"binary.bin: not UTF-8 text .*expected tab-separated"):
        MeshTree.from_file(tmp_path / "binary.bin")
    (tmp_path / "empty.tsv").write_text("\n\n")
    with pytest.raises(ValueError, match=r"empty.tsv: no tree positions found"):
        MeshTree.from_file(tmp_path / "empty.tsv")
    (tmp_path / "header-only.tsv").write_text("mesh_id\tmesh_name\tmesh_tree_number\n")
    with pytest.raises(ValueError, match=r"header-only.tsv: no tree positions found"):
        MeshTree.from_file(tmp_path / "header-only.tsv")
    (tmp_path / "cut.gz").write_bytes(gzip.compress(b"D1\tNeoplasms\tC04\n" * 100)[:30])
    with pytest.raises(ValueError, match=r"cut.gz: cannot be read"):
        MeshTree.from_file(tmp_path / "cut.gz")
    with pytest.raises(FileNotFoundError, match=r"no MeSH tree file at .*nowhere.tsv"):
        MeshTree.from_file(tmp_path / "nowhere.tsv")


# ----------------------------------------------------------------------------- the real tree


@pytest.fixture(scope="module")
def real_tree():
    if not REAL_TREE.is_file():
        pytest.skip(f"the shared MeSH 2015 tree is not at {REAL_TREE} (../shared/data relative to the project)")
    return MeshTree.from_file(REAL_TREE)


def test_real_tree(real_tree):
    # 56,341 positions of 27,453 descriptors (the data README says 27,455: the terms file's count,
    # which includes Female and Male, descriptors without a tree position in MeSH 2015)
    assert len(real_tree) == 27453 and real_tree.n_nodes == 56341 and real_tree.max_depth == 12
    assert real_tree.tree_numbers("D000001") == ("D03.438.221.173",)
    assert real_tree.name("D000001") == "Calcimycin" and real_tree.tree_numbers("Calcimycin") == ("D03.438.221.173",)
    assert real_tree.ancestors("D000001") == ("D03", "D03.438", "D03.438.221", "D03.438.221.173")
    assert len(real_tree.tree_numbers("Temefos")) == 3 and len(real_tree.ancestors("Temefos")) == 12
    assert real_tree.depth("C04") == 1 and real_tree.depth("C04.557") == 2 and real_tree.depth("C04.557.337") == 3
    assert real_tree.descriptor("C04") == real_tree._key("Neoplasms")
    assert "D005260" not in real_tree and "D008297" not in real_tree  # Female, Male: no tree position
    assert real_tree.nodes[:4] == ("A01", "A01.111", "A01.236", "A01.236.249")  # pre-order
    assert real_tree.node_depths[:4].tolist() == [1, 2, 2, 3]


def test_real_abstract_labels(real_tree):
    if not REAL_ABSTRACTS.is_file():
        pytest.skip(f"the shared MeSH-labelled abstracts are not at {REAL_ABSTRACTS}")
    labels = [json.loads(line)["mesh_ids"] for line in REAL_ABSTRACTS.open()]
    tree = MeshTree.from_file(REAL_TREE)  # a fresh tree: its first unknown label warns
    with pytest.warns(UnknownMeshLabelWarning, match=r"^769 MeSH labels \(15 distinct\) .*'D005260' \(400x\)"):
        enc = tree.encode(labels)
    assert len(enc) == 500 and sum(map(len, labels)) == 7200 and int(enc.unknown.sum()) == 769
    lengths = enc.lengths
    assert int(lengths.min()) > 0 and enc.nodes.shape[1] == int(lengths.max()) == 199
    valid = enc.nodes >= 0
    assert bool((enc.nodes[:, 1:][valid[:, 1:]] > enc.nodes[:, :-1][valid[:, 1:]]).all())  # strictly ascending
    first = enc.nodes[0][valid[0]].tolist()
    expected = sorted({i for label in labels[0] if label in tree for i in tree.ancestor_ids(label)})
    assert first == expected


def test_descendants_of_a_tree_number_or_a_descriptor(tree, tmp_path):
    assert tree.descendants("C04") == ("D1", "D2", "D3", "D5")
    assert tree.descendants("C04.588.894") == ("D5",)  # a node that is only a prefix
    assert tree.descendants("Skin Diseases") == ("D3", "D4")  # by name; D3 also sits under C17.800
    assert tree.descendants("D3") == ("D3",)  # both of its positions are leaves
    assert tree.descendants("B01") == ("D6",)
    with pytest.raises(KeyError, match="'X99' is not a descriptor id or name"):
        tree.descendants("X99")
    by_name = MeshTree.from_file(write_mtrees(tmp_path / "mtrees.bin"))
    assert by_name.descendants("C17") == ("Breast Neoplasms", "Skin Diseases")
