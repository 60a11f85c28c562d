"""The package's shape (docs/development.md): imports flow one way, no module uses another's private names,
and the kernels import nothing from the rest of the package."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "fastret"
# Private modules other modules may import: the C++ extension, and the kernels' shared Triton plumbing
# (for the kernels only).
PRIVATE_MODULES = {"fastret._core": "fastret", "fastret.kernels._triton": "fastret.kernels"}


def module_name(path):
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def resolve(module, node):
    """Absolute names a `from ... import ...` or `import ...` node refers to."""
    if isinstance(node, ast.Import):
        return [(alias.name, None) for alias in node.names]
    package = module if MODULES[module].name == "__init__.py" else module.rsplit(".", 1)[0]
    for _ in range(node.level - 1):
        package = package.rsplit(".", 1)[0]
    base = f"{package}.{node.module}" if node.level and node.module else (package if node.level else node.module)
    return [(base, alias.name) for alias in node.names]


def imports_of(module):
    """(imported fastret module, imported name or None) for every import anywhere in the module."""
    found = []
    for node in ast.walk(ast.parse(MODULES[module].read_text())):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            for base, name in resolve(module, node):
                if base and base.startswith("fastret"):
                    submodule = f"{base}.{name}" if name and f"{base}.{name}" in MODULES | PRIVATE_MODULES else None
                    found.append((submodule or base, None if submodule else name))
    return found


def graph():
    return {m: {target for target, _ in imports_of(m) if target in MODULES and target != m} for m in MODULES}


def test_no_import_cycles():
    edges = {m: {t for t in targets if not (m.startswith(t + ".") or t == "fastret")} for m, targets in graph().items()}
    state = {}

    def visit(module, stack):
        state[module] = "open"
        for target in sorted(edges[module]):
            if state.get(target) == "open":
                cycle = stack[stack.index(target):] + [target]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if target not in state:
                visit(target, stack + [target])
        state[module] = "done"

    for module in sorted(edges):
        if module not in state:
            visit(module, [module])


def test_no_module_uses_another_modules_private_names():
    offences = []
    for module in MODULES:
        for target, name in imports_of(module):
            if name and name.startswith("_") and not (name.startswith("__") and name.endswith("__")):
                offences.append(f"{module} imports {name} from {target}")
            private = any(part.startswith("_") for part in target.split(".")[1:])
            allowed = PRIVATE_MODULES.get(target)
            if private and not (allowed and (module == allowed or module.startswith(allowed + "."))):
                offences.append(f"{module} imports the private module {target}")
        tree = ast.parse(MODULES[module].read_text())
        bound = {alias.asname or alias.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
                 and node.level for alias in node.names}
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__")
                    and isinstance(node.value, ast.Name) and node.value.id in bound):
                offences.append(f"{module} uses {node.value.id}.{node.attr}")
    assert not offences, "\n".join(offences)


def test_kernels_import_nothing_from_the_rest_of_the_package():
    for module in MODULES:
        if module.startswith("fastret.kernels"):
            outside = [t for t, _ in imports_of(module) if not t.startswith("fastret.kernels")]
            assert not outside, f"{module} imports {outside}"


def test_the_checker_sees_a_cycle(tmp_path, monkeypatch):
    """The cycle test can fail: two modules importing each other (one inside a function) are caught."""
    fake = {"fastret.a": tmp_path / "a.py", "fastret.b": tmp_path / "b.py"}
    fake["fastret.a"].write_text("from . import b\n")
    fake["fastret.b"].write_text("def f():\n    from .a import g\n")
    monkeypatch.setattr(__import__(__name__), "MODULES", fake)
    with pytest.raises(pytest.fail.Exception, match="import cycle"):
        test_no_import_cycles()


def test_requires_python_is_what_the_code_runs_on():
    """The command line evaluates the config dataclasses' annotations (`int | None`, PEP 604) with
    typing.get_type_hints: Python 3.10 or newer. pyproject.toml, CMakeLists.txt and the README say the same."""
    import re
    import typing

    from fastret.serve.config import ServeConfig
    from fastret.train.loop import TrainConfig

    root = PACKAGE.parent
    declared = re.search(r'^requires-python = ">=(\d+)\.(\d+)"$', (root / "pyproject.toml").read_text(), re.M)
    assert declared and (int(declared.group(1)), int(declared.group(2))) == (3, 10)
    readme = " ".join((root / "README.md").read_text().split())
    assert "Python >= 3.10," in readme and "3.9" not in readme
    assert "find_package(Python 3.10 " in (root / "CMakeLists.txt").read_text()
    hints = {**typing.get_type_hints(TrainConfig), **typing.get_type_hints(ServeConfig)}
    assert hints["max_steps"] == int | None and hints["api_key"] == str | None


# The search rules written once (fastret.search.rules): a second copy of either is caught here. The torch
# backend's form of the tie rule (64-bit keys: float bits made order-preserving, then the id's rank)
# may only live in fastret.search.torch_backend.
RULES = {"tie rule": {"fastret.search.rules.rank"}, "rescoring": {"fastret.search.rules.float_products"}}
RANK_KEYS_HOME = "fastret.search.torch_backend"


def _name(node):
    """The called name of a call: `np.lexsort(...)` -> "lexsort", `sorted(...)` -> "sorted"."""
    func = node.func
    return func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else None


def _keyword(node, name):
    return next((k.value for k in node.keywords if k.arg == name), None)


def _is_true(value):
    return isinstance(value, ast.Constant) and value.value is True


def rule_sites(module, source):
    """{rule: set of "module.function"} where `source` ranks by score then id, or rescores.

    The tie rule: any lexsort; sorted/sort with a key (-score, id); a stable argsort/sort of
    negated values along an axis (rows of scores); a torch sort, descending and stable.
    Rescoring: a function that computes dot products (@, matmul, einsum, dot, bmm, a sum of
    products) and reads float16 copies. Rank keys: float bits made order-preserving
    (`bits ^ ((bits >> 31) & 0x7FFFFFFF)`), the torch backend's form of the tie rule.
    """
    found = {rule: set() for rule in RULES} | {"rank keys": set()}

    def visit(node, where):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            where = f"{where}.{node.name}"
            if not isinstance(node, ast.ClassDef):
                constants = {n.value for n in ast.walk(node) if isinstance(n, ast.Constant)}
                shifts_sign = any(isinstance(n, ast.BinOp) and isinstance(n.op, ast.RShift)
                                  and isinstance(n.right, ast.Constant) and n.right.value == 31 for n in ast.walk(node))
                if shifts_sign and 0x7FFFFFFF in constants:
                    found["rank keys"].add(where)
                names = {n.attr if isinstance(n, ast.Attribute) else getattr(n, "id", "") for n in ast.walk(node)}
                products = any(
                    (isinstance(n, ast.BinOp) and isinstance(n.op, ast.MatMult))
                    or (isinstance(n, ast.Call) and _name(n) in ("matmul", "einsum", "dot", "bmm"))
                    or (isinstance(n, ast.Call) and _name(n) == "sum" and any(
                        isinstance(m, ast.BinOp) and isinstance(m.op, ast.Mult) for m in ast.walk(n)))
                    for n in ast.walk(node))
                if products and any("float16" in name for name in names if name):
                    found["rescoring"].add(where)
        if isinstance(node, ast.Call):
            name, key = _name(node), _keyword(node, "key")
            first = node.args[0] if node.args else None
            negated_first = isinstance(first, ast.UnaryOp) and isinstance(first.op, ast.USub)
            stable = _is_true(_keyword(node, "stable")) or (
                isinstance(_keyword(node, "kind"), ast.Constant) and _keyword(node, "kind").value == "stable")
            along_axis = _keyword(node, "axis") is not None or _keyword(node, "dim") is not None
            if (name == "lexsort"
                    or (name in ("sorted", "sort") and isinstance(key, ast.Lambda) and isinstance(key.body, ast.Tuple)
                        and isinstance(key.body.elts[0], ast.UnaryOp) and isinstance(key.body.elts[0].op, ast.USub))
                    or (name in ("argsort", "sort") and negated_first and stable and along_axis)
                    or (name == "sort" and stable and _is_true(_keyword(node, "descending")))):
                found["tie rule"].add(where)
        for child in ast.iter_child_nodes(node):
            visit(child, where)

    visit(ast.parse(source), module)
    return found


def test_the_tie_rule_and_rescoring_are_written_once():
    """Ranking (higher score, then lower id) and rescoring live in fastret.search.rules; every searcher
    (Index, ShardedIndex, HybridSearcher, LexicalIndex, evaluation) calls them."""
    found = {rule: set() for rule in RULES} | {"rank keys": set()}
    for module, path in MODULES.items():
        if module.startswith("fastret.kernels."):  # they import nothing from the package (above): a kernel's
            continue  # reference ranks its own results, the contract the kernel is tested against
        for rule, sites in rule_sites(module, path.read_text()).items():
            found[rule] |= sites
    assert {rule: found[rule] for rule in RULES} == RULES
    assert found["rank keys"] and all(site.startswith(RANK_KEYS_HOME + ".") for site in found["rank keys"])


@pytest.mark.parametrize("copy", [
    "def f(ids, scores):\n    return np.lexsort((ids, -scores))\n",
    "def f(fused):\n    return sorted(fused.items(), key=lambda item: (-item[1], item[0]))\n",
    "def f(scores):\n    return np.argsort(-scores, axis=1, kind='stable')[:, :10]\n",
    "def f(exact):\n    return torch.sort(exact, dim=1, descending=True, stable=True)\n",
    "def f(segment, rows, q):\n    return torch.einsum('qcd,qd->qc', segment.float16[rows].float(), q)\n",
    "def f(float16, q):\n    return float16.astype(np.float32) @ q\n",
    "def f(float16, q):\n    return (float16.astype(np.float32) * q[:, None, :]).sum(-1)\n",
    "def f(scores):\n    bits = scores.view(torch.int32)\n    return bits ^ ((bits >> 31) & 0x7FFFFFFF)\n",
])
def test_the_rule_checker_sees_a_second_copy(copy):
    found = rule_sites("fastret.other", copy)
    assert set().union(*found.values()) == {"fastret.other.f"}
    assert rule_sites("fastret.other", "def f(lengths):\n    return np.argsort(-lengths, kind='stable')\n") == \
        {rule: set() for rule in found}  # a stable sort of one list is not a ranking of score rows


# The faces: they parse input, call fastret.search.text.TextSearch (or, for the BM25 baseline, a
# LexicalIndex) and present what it returns; the search's rules live in the library, once.
FACES = ("fastret.cli", "fastret.serve.app", "fastret.evaluate", "fastret.demo")
SEARCH_RULES = {"Filter", "HybridSearcher", "check_first_stage", "check_rescore"}
SEARCHERS = {"text_search", "search"}  # the receivers a face may call .search / .rank on: a TextSearch


def face_violations(source):
    """What a face's source does that belongs to TextSearch or below: a search rule imported or
    used, a searcher's search called directly, an error raised about oversample or rescoring."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and SEARCH_RULES & {alias.name for alias in node.names}:
            found.append(f"line {node.lineno}: imports {sorted(SEARCH_RULES & {a.name for a in node.names})}")
        elif isinstance(node, ast.Name) and node.id in SEARCH_RULES:
            found.append(f"line {node.lineno}: uses {node.id}")
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
              and node.func.attr in ("search", "rank", "rank_bm25")):
            receiver = node.func.value
            if isinstance(receiver, ast.Call):  # TextSearch(index).rank(...)
                receiver = receiver.func
                name = "search" if getattr(receiver, "id", None) == "TextSearch" else None
            else:
                name = receiver.id if isinstance(receiver, ast.Name) else getattr(receiver, "attr", None)
            if name not in SEARCHERS:
                found.append(f"line {node.lineno}: calls {name}.{node.func.attr} (search through TextSearch)")
        elif isinstance(node, ast.Raise) and node.exc is not None:
            text = " ".join(n.value for n in ast.walk(node.exc) if isinstance(n, ast.Constant) and isinstance(n.value, str))
            if "oversample" in text or "rescore" in text:
                found.append(f"line {node.lineno}: checks a search rule itself ({text[:60]!r})")
    return found


def test_no_face_builds_a_filter_checks_search_rules_or_calls_a_searcher():
    for face in FACES:
        assert face_violations(MODULES[face].read_text()) == [], face


@pytest.mark.parametrize("face", [
    "from .filters import Filter\n",
    "def run(index, body):\n    return index.search(body.vectors, 10)\n",
    "def run(args):\n    if args.oversample and not args.binary:\n        raise ValueError('--oversample needs --binary')\n",
    "def run(self, texts, vectors):\n    return HybridSearcher(self.index, self.bm25).search(texts, vectors, 10)\n",
])
def test_the_face_checker_sees_a_rule_in_a_face(face):
    assert face_violations(face)


# The wings, top to bottom (docs/development.md): a module imports its own wing or those below.
WINGS = [
    ("faces", ("fastret.cli", "fastret.demo", "fastret.__main__")),
    ("evaluation", ("fastret.evaluate", "fastret.bench")),
    ("serve", ("fastret.serve",)),
    ("train", ("fastret.train",)),
    ("rerank", ("fastret.rerank",)),
    ("encode", ("fastret.encode",)),
    ("search", ("fastret.search",)),
    ("storage", ("fastret.storage",)),
    ("shared", ("fastret.mesh", "fastret.corpus", "fastret.checks", "fastret.cpu", "fastret.quant")),
    ("kernels", ("fastret.kernels", "fastret._core")),
]


def wing_of(module):
    for depth, (_, prefixes) in enumerate(WINGS):
        if any(module == prefix or module.startswith(prefix + ".") for prefix in prefixes):
            return depth
    return None


def upward_imports(edges):
    """(importer, imported) pairs that go up the wings; the root package re-exports and is exempt."""
    return sorted((m, t) for m, targets in edges.items() if m != "fastret" for t in targets
                  if t != "fastret" and wing_of(t) < wing_of(m))


def test_every_module_has_a_wing_and_imports_flow_down():
    assert [m for m in MODULES if m != "fastret" and wing_of(m) is None] == []
    assert upward_imports(graph()) == []
    subpackages = {m.split(".")[1] for m in MODULES if m.count(".") >= 2 and m.split(".")[1] != "kernels"}
    root_modules = [m for m in MODULES if m.count(".") == 1 and MODULES[m].name != "__init__.py"]
    assert len(subpackages) >= 5 and len(root_modules) <= 12, (subpackages, root_modules)


def test_the_wing_checker_sees_an_upward_import():
    assert upward_imports({"fastret.storage.store": {"fastret.search.index"}}) == [
        ("fastret.storage.store", "fastret.search.index")]
