"""The package's shape (DESIGN.md): imports flow one way, no module uses another's private names,
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
    typing.get_type_hints: Python 3.10 or newer. pyproject.toml and CMakeLists.txt say the same."""
    import re
    import typing

    from fastret.serve_config import ServeConfig
    from fastret.train import TrainConfig

    root = PACKAGE.parent
    declared = re.search(r'^requires-python = ">=(\d+)\.(\d+)"$', (root / "pyproject.toml").read_text(), re.M)
    assert declared and (int(declared.group(1)), int(declared.group(2))) == (3, 10)
    assert "find_package(Python 3.10 " in (root / "CMakeLists.txt").read_text()
    hints = {**typing.get_type_hints(TrainConfig), **typing.get_type_hints(ServeConfig)}
    assert hints["max_steps"] == int | None and hints["api_key"] == str | None
