"""The structure ARCHITECTURE.md promises: no import cycles, names resolved where configs are read,
one wiring module of bounded size, short functions, documented public API."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("distill", "teachers", "students")
#: the modules where registry names become objects (configs, stored specs, the command line)
RESOLVERS = {"distill.config", "distill.resolve", "distill.models.student", "distill.models.load", "distill.cli",
             "teachers", "students",
             "distill.losses", "distill.losses.registry", "distill.registry"}
REGISTRIES = ("STUDENTS", "TEACHERS", "LOSS_TERMS")
#: methods that implement a documented interface (nn.Module, timm, the trainer's Hook, onnxruntime's
#: CalibrationDataReader): the interface's docstring describes them
INTERFACE_METHODS = {"forward", "forward_features", "forward_head", "train", "before_train", "after_step", "after_train",
                     "close", "get_next", "rewind"}
#: functions allowed past the size limit, and why
LONG_FUNCTIONS = {"distill.data.synthetic": "the procedural face renderer draws one face in one pass"}


def _modules() -> dict[str, Path]:
    mods = {}
    for pkg in PACKAGES:
        for f in (ROOT / pkg).rglob("*.py"):
            parts = list(f.relative_to(ROOT).with_suffix("").parts)
            mods[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = f
    return mods


MODULES = _modules()
TREES = {m: ast.parse(f.read_text()) for m, f in MODULES.items()}


def _imports(mod: str) -> set[str]:
    """Every project module ``mod`` imports, at any depth (function-level imports count: they run too),
    plus the packages those imports initialise (importing ``a.b.c`` runs ``a/__init__`` and ``a/b/__init__``)."""
    is_pkg = MODULES[mod].name == "__init__.py"
    out: set[str] = set()
    for node in ast.walk(TREES[mod]):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = mod.split(".") if is_pkg else mod.split(".")[:-1]
                base = base[:len(base) - node.level + 1]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module or ""
            names = [f"{prefix}.{a.name}" if f"{prefix}.{a.name}" in MODULES else prefix for a in node.names]
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            continue
        for name in names:
            while name and name not in MODULES:
                name = name.rpartition(".")[0]
            parts = name.split(".")
            for k in range(1, len(parts) + 1):  # the module and the packages it initialises
                target = ".".join(parts[:k])
                if target in MODULES and not mod.startswith(target + ".") and target != mod:
                    out.add(target)
    return out


def _type_checking_imports(mod: str) -> set[int]:
    ids = set()
    for node in ast.walk(TREES[mod]):
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            ids |= {id(n) for n in ast.walk(node)}
    return ids


def test_no_import_cycles_among_the_packages_modules() -> None:
    graph = {m: _imports(m) for m in MODULES}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    assert not cycles, f"import cycles: {cycles}"


def test_registry_names_are_resolved_only_where_configs_are_read() -> None:
    offenders = []
    for mod, tree in TREES.items():
        if mod in RESOLVERS or mod.startswith("distill.losses."):  # term files register themselves
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Name) and node.id in REGISTRIES:
                offenders.append(f"{mod}:{node.lineno} uses {node.id}")
            if isinstance(node, ast.alias) and node.name in ("build_teacher", "check_teacher_weights"):
                offenders.append(f"{mod} imports {node.name}")
    assert not offenders, "registry lookups outside distill/config.py, resolve.py, models/student.py, cli.py:\n" + \
        "\n".join(offenders)


def test_the_pipeline_only_wires_and_stays_small() -> None:
    assert len((ROOT / "distill" / "pipeline.py").read_text().splitlines()) < 400


@pytest.mark.parametrize("mod", sorted(MODULES))
def test_functions_are_short(mod: str) -> None:
    if mod in LONG_FUNCTIONS:
        pytest.skip("exempt: " + LONG_FUNCTIONS[mod])
    long = [f"{node.name} ({node.end_lineno - node.lineno + 1} lines)" for node in ast.walk(TREES[mod])
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno >= 100]
    assert not long, f"{mod}: functions over 100 lines: {long}"


def test_fit_is_a_short_loop() -> None:
    fit = next(n for n in ast.walk(TREES["distill.train.trainer"]) if isinstance(n, ast.FunctionDef) and n.name == "fit")
    assert fit.end_lineno - fit.lineno + 1 <= 80


def _public(tree: ast.Module) -> list[tuple[str, ast.AST]]:
    out = []
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and not node.name.startswith("_"):
            out.append((node.name, node))
            if isinstance(node, ast.ClassDef):
                for item in node.body:
                    if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)) and not item.name.startswith("_") \
                            and item.name not in INTERFACE_METHODS \
                            and not any(isinstance(d, ast.Attribute) and d.attr == "setter"
                                        for d in item.decorator_list):
                        out.append((f"{node.name}.{item.name}", item))
    return out


@pytest.mark.parametrize("mod", sorted(MODULES))
def test_every_public_definition_has_a_docstring(mod: str) -> None:
    missing = [name for name, node in _public(TREES[mod]) if not ast.get_docstring(node)]
    assert not missing, f"{mod}: public definitions without a docstring: {missing}"
