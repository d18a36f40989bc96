"""The house rules of src/ (docs/ARCHITECTURE.md), read from the import graph with ``ast``:
no import circle (a package counts as its ``__init__``, lazy imports inside functions count
too), no private name imported across modules, no core module importing the CLI, napari or
Qt, and no source file over the line budget."""
from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "seg_explain"
BUDGET = 700
FRONT_ENDS = ("seg_explain._napari", "seg_explain.commands", "seg_explain.cli")


def _modules() -> dict[str, Path]:
    out = {}
    for p in SRC.rglob("*.py"):
        parts = ("seg_explain",) + p.relative_to(SRC).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = p
    return out


MODS = _modules()


def _imports(mod: str, path: Path):
    """``(target module, imported name or None, line)`` of every import in ``path``."""
    is_pkg = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            for a in node.names:
                yield a.name, None, node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = mod.split(".") if is_pkg else mod.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for a in node.names:
                yield target, a.name, node.lineno


def _edges() -> dict[str, set[str]]:
    edges: dict[str, set[str]] = {m: set() for m in MODS}
    for m, p in MODS.items():
        for target, name, _ in _imports(m, p):
            sub = f"{target}.{name}" if name else None
            dst = sub if sub in MODS else target
            while dst and dst not in MODS:          # "import seg_explain.x.y" -> the deepest module we have
                dst = dst.rpartition(".")[0]
            if dst and dst != m and dst.startswith("seg_explain"):
                edges[m].add(dst)
                parent = dst.rpartition(".")[0]
                while parent:                        # importing a.b.c runs a/__init__ and a.b/__init__
                    if parent in MODS and parent != m and not m.startswith(parent + "."):
                        edges[m].add(parent)
                    parent = parent.rpartition(".")[0]
    return edges


def _circles(edges) -> list[list[str]]:
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def test_the_graph_sees_lazy_and_package_imports():
    """The checker itself: a lazy import inside a function and an import of a package count."""
    edges = _edges()
    assert "seg_explain.dataset" in edges["seg_explain"]                      # lazy, in agg2exp()
    assert "seg_explain.dataset.api" in edges["seg_explain"]
    assert "seg_explain.aggregate" in edges["seg_explain.dataset.kinds"]      # lazy, in compute()


def test_no_import_circle():
    assert _circles(_edges()) == []


def test_no_private_name_imported_across_modules():
    bad = []
    for m, p in MODS.items():
        for target, name, line in _imports(m, p):
            if (name and name.startswith("_") and not name.startswith("__") and target.startswith("seg_explain")
                    and f"{target}.{name}" not in MODS and target != m):
                bad.append(f"{p.relative_to(SRC)}:{line} imports {target}.{name}")
    assert bad == []


def test_the_core_imports_no_front_end():
    bad = []
    for m, p in MODS.items():
        if m.startswith(FRONT_ENDS):
            continue
        for target, _, line in _imports(m, p):
            if target.startswith(FRONT_ENDS + ("napari", "qtpy", "PyQt5", "PyQt6", "PySide2", "PySide6",
                                              "magicgui", "superqt")):
                bad.append(f"{p.relative_to(SRC)}:{line} imports {target}")
    assert bad == []


def test_no_source_file_over_the_budget():
    big = {str(p.relative_to(SRC)): n for p in MODS.values()
           if (n := p.read_text(encoding="utf-8").count("\n")) > BUDGET}
    assert big == {}
