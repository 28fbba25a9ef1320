"""The code keeps its shape: import contracts hold, no module imports itself in a loop, ruff and mypy find nothing."""
from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
PACKAGES = ("broker", "ledger", "catalog", "peer", "console", "bench")

# importer -> imported -> where ("path:line") the importer names it
Graph = dict[str, dict[str, list[str]]]


def _run(*cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)


def _modules(root: Path, packages: Iterable[str]) -> dict[str, Path]:
    """Dotted name -> file, for every module of ``packages`` under ``root``."""
    found: dict[str, Path] = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join(parts)] = path
    return found


def import_graph(root: Path, packages: Iterable[str]) -> Graph:
    """Every import between our modules, wherever it is written.

    Imports inside functions and under ``if TYPE_CHECKING:`` count too: a loop
    hidden in a function is still a loop, only one that bites later. ``from
    pkg import name`` points at ``pkg.name`` when that is a module, else at
    ``pkg`` itself (whose ``__init__`` then supplies the name).
    """
    modules = _modules(root, packages)
    graph: Graph = {name: {} for name in modules}
    for name, path in modules.items():
        is_package = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if not isinstance(node, ast.Import | ast.ImportFrom):
                continue
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                base = node.module or ""
                if node.level:
                    anchor = name.split(".")
                    anchor = anchor[: len(anchor) - node.level + (1 if is_package else 0)]
                    base = ".".join(anchor + ([base] if base else []))
                targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                           for alias in node.names]
            for target in targets:
                # ``import a.b.c`` where only ``a.b`` is ours resolves to the longest known prefix.
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                if target and target != name:
                    where = f"{path.relative_to(root)}:{node.lineno}"
                    graph[name].setdefault(target, []).append(where)
    return graph


def cycles(graph: Graph) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, {}):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component: list[str] = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(found)


def _describe(graph: Graph, component: list[str]) -> str:
    members = set(component)
    lines = [" <-> ".join(component)]
    for a in component:
        for b, where in sorted(graph[a].items()):
            if b in members:
                lines.append(f"    {a} -> {b}  ({', '.join(where)})")
    return "\n".join(lines)


def unexplained_lazy_imports(root: Path, packages: Iterable[str]) -> list[str]:
    """Every import inside a function of ``packages`` with no comment saying why it is lazy ("path:line: code").

    The reason is a comment naming "lazy", on the import's first line or the line above it. A run of
    imports with nothing between them shares the comment above its first. At module level an import
    needs no reason; inside a function it must earn its place (a fast start-up, an optional heavy
    dependency), and a bare one is usually a cycle being hidden.
    """
    found: list[str] = []
    for path in _modules(root, packages).values():
        lines = path.read_text().splitlines()
        tree = ast.parse("\n".join(lines), filename=str(path))
        explained: dict[int, bool] = {}  # end line of an import in a function -> has a reason
        nested = (node for fn in ast.walk(tree) if isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef)
                  for node in ast.walk(fn) if isinstance(node, ast.Import | ast.ImportFrom))
        for node in sorted(set(nested), key=lambda n: n.lineno):
            own, above = lines[node.lineno - 1], lines[node.lineno - 2].strip() if node.lineno > 1 else ""
            ok = ("#" in own and "lazy" in own.partition("#")[2].lower()) or (
                above.startswith("#") and "lazy" in above.lower()) or explained.get(node.lineno - 1, False)
            explained[node.end_lineno or node.lineno] = ok
            if not ok:
                found.append(f"{path.relative_to(root)}:{node.lineno}: {own.strip()}")
    return sorted(found)


def test_every_import_inside_a_function_says_why_it_is_lazy() -> None:
    found = unexplained_lazy_imports(ROOT, PACKAGES)
    assert not found, ("imports inside functions without a '# lazy: why' comment (move them to the top of the "
                       "module unless they keep a start-up fast):\n" + "\n".join(found))


def test_the_lazy_import_check_refuses_a_bare_one(tmp_path: Path) -> None:
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("import json\n")
    (pkg / "ok.py").write_text(
        "def f():\n"
        "    # lazy: heavy, and only f needs it\n"
        "    import decimal\n"
        "    from fractions import Fraction\n"
        "\n"
        "    import zlib  # lazy: only here\n"
        "    return decimal, Fraction, zlib\n")
    (pkg / "bare.py").write_text(
        "def f():\n"
        "    # the answer\n"
        "    import json\n"
        "    import csv  # noqa: F401\n"
        "\n"
        "    class Inner:\n"
        "        def g(self):\n"
        "            import uuid\n"
        "            return uuid\n"
        "    return json, Inner\n")

    assert unexplained_lazy_imports(tmp_path, ["pkg"]) == [
        "pkg/bare.py:3: import json", "pkg/bare.py:4: import csv  # noqa: F401", "pkg/bare.py:8: import uuid"]


def test_import_contracts_hold() -> None:
    out = _run(str(BIN / "lint-imports"))
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    assert "0 broken" in out.stdout


def test_no_two_modules_import_each_other_directly_or_in_a_loop() -> None:
    graph = import_graph(ROOT, PACKAGES)
    assert len(graph) > 50  # the walk found our code, not an empty tree
    found = cycles(graph)
    assert not found, "import cycles:\n" + "\n".join(_describe(graph, c) for c in found)


def test_the_cycle_finder_sees_loops_hidden_in_functions_and_type_checking(tmp_path: Path) -> None:
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("def f():\n    from pkg import b\n")
    (pkg / "b.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .c import X\n")
    (pkg / "c.py").write_text("import pkg.a\nX = 1\n")
    (pkg / "d.py").write_text("from pkg.a import f\n")  # imports into the loop, is not part of it

    graph = import_graph(tmp_path, ["pkg"])

    assert cycles(graph) == [["pkg.a", "pkg.b", "pkg.c"]]
    assert graph["pkg.b"] == {"pkg.c": ["pkg/b.py:3"]}


def test_ruff_is_clean() -> None:
    out = _run(sys.executable, "-m", "ruff", "check", ".")
    assert out.returncode == 0, out.stdout[-3000:]


def test_mypy_is_clean_on_every_package() -> None:
    # No flags: the configuration in pyproject.toml is the one anyone running mypy gets.
    out = _run(sys.executable, "-m", "mypy", *PACKAGES)
    assert out.returncode == 0, out.stdout[-3000:]
