"""The package layout: one install name, data flows one way, no import circles.

Everything installs under the one package ``lavimo`` (the repository root is that package; its folders are the
subpackages), and the subpackages form one order,

    core < body < dataset < render < model < evaluation < training < search

A module may import (at the top or inside a function, ``import`` or ``from ... import``) only from its own
subpackage and from those before it, always by the ``lavimo.`` name (a bare ``import model`` would pick up a user's
own ``model.py``). So ``core`` imports none of them; ``body`` (the SMPL skeleton and body models) only ``core``;
``dataset`` never imports ``render`` (rendering reads AMASS files and clips, which are dataset's, not the other way
round); ``model`` (the network) never imports ``training`` or ``evaluation``; ``evaluation`` (metrics, protocols,
the one split encoder) never imports ``training``, which uses evaluation's encoder and metrics for its validation;
``search`` (the index, queries and the page: the pipeline's last stage) may use all of them but none uses it.
Nothing in the subpackages imports ``lavimo.train`` / ``lavimo.evaluate`` (the entry points ``train.py`` /
``evaluate.py``), ``scripts/`` or ``tests/``. And no module imports itself back through others: the graph of
imports between modules (function-level imports included) has no cycle.

Every ``.py`` file of the packages is read with :mod:`ast` (nothing is imported or run).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
ORDER = ("core", "body", "dataset", "render", "model", "evaluation", "training", "search")
#: names no package module may import: the entry points, the scripts and the tests
FORBIDDEN = {"lavimo.train", "lavimo.evaluate", "train", "evaluate", "scripts", "tests"}


def _modules(root: Path = REPO) -> list[tuple[str, Path]]:
    out = []
    for pkg in ORDER:
        for path in sorted((root / pkg).rglob("*.py")):
            out.append((pkg, path))
    return out


def _module_name(path: Path, root: Path = REPO) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(["lavimo", *(parts[:-1] if parts[-1] == "__init__" else parts)])


def _imported(path: Path, root: Path = REPO) -> list[tuple[int, str]]:
    """(line, dotted module name) of every import in the file, relative imports resolved to their ``lavimo.`` name;
    ``from P import n`` yields ``P.n`` when that is a module of the tree, else ``P``."""
    parts = ["lavimo", *path.relative_to(root).with_suffix("").parts]
    package = parts[:-1]  # the package a relative import starts from (also for __init__.py)
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            subs = [f"{name}.{a.name}" for a in node.names if _is_module(f"{name}.{a.name}", root)]
            found += [(node.lineno, n) for n in subs] or [(node.lineno, name)]
    return found


def _is_module(name: str, root: Path) -> bool:
    parts = name.split(".")
    if parts[0] != "lavimo" or len(parts) < 2:
        return False
    rel = root.joinpath(*parts[1:])
    return rel.with_suffix(".py").is_file() or (rel / "__init__.py").is_file()


def _violations(root: Path = REPO) -> list[str]:
    bad = []
    for pkg, path in _modules(root):
        allowed = set(ORDER[: ORDER.index(pkg) + 1])
        for line, name in _imported(path, root):
            top, _, rest = name.partition(".")
            sub = rest.split(".")[0] if top == "lavimo" else ""
            where = f"{path.relative_to(root)}:{line}"
            if name in FORBIDDEN or top in FORBIDDEN or any(name.startswith(f + ".") for f in FORBIDDEN):
                bad.append(f"{where}: imports {name} (a script or test, not a package)")
            elif top in ORDER:
                bad.append(f"{where}: imports the bare name {name} (use lavimo.{name}: a user's own {top} would "
                           f"shadow it)")
            elif sub in ORDER and sub not in allowed:
                bad.append(f"{where}: {pkg} imports {name} ({sub} comes after {pkg} in {' < '.join(ORDER)})")
    return bad


def _cycles(root: Path = REPO) -> list[list[str]]:
    """The strongly connected components (more than one module, or a module importing itself) of the import graph."""
    graph: dict[str, set[str]] = {}
    for _, path in _modules(root):
        me = _module_name(path, root)
        graph.setdefault(me, set())
        for _, name in _imported(path, root):
            while name and not _is_module(name, root):
                name = name.rpartition(".")[0]
            if name and name != me and not me.startswith(name + "."):  # a parent package's __init__ is not a loop
                graph[me].add(name)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph.get(v, ())):
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
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_every_package_exists_and_has_modules():
    for pkg in ORDER:
        assert (REPO / pkg / "__init__.py").is_file(), pkg
    assert len(_modules()) > 40


def test_imports_follow_the_package_order():
    bad = _violations()
    assert not bad, "imports against the data flow:\n" + "\n".join(bad)


def test_no_import_cycles():
    cycles = _cycles()
    assert not cycles, "modules that import each other (directly or through others):\n" + "\n".join(
        " <-> ".join(c) for c in cycles)


def test_the_cycle_check_sees_a_function_level_circle(tmp_path):
    for pkg in ORDER:
        (tmp_path / pkg).mkdir()
        (tmp_path / pkg / "__init__.py").write_text("")
    (tmp_path / "search" / "cli.py").write_text("from lavimo.search.server import serve\n")
    (tmp_path / "search" / "server.py").write_text("def f():\n    from lavimo.search import cli\n")
    (tmp_path / "search" / "query.py").write_text("from . import server\n")
    assert _cycles(tmp_path) == [["lavimo.search.cli", "lavimo.search.server"]]


@pytest.mark.parametrize("source, expect", [
    ("from lavimo.render.avatars import REGIONS\n", "dataset imports lavimo.render.avatars"),
    ("def f():\n    import lavimo.training.loop\n", "dataset imports lavimo.training.loop"),
    ("import lavimo.train\n", "imports lavimo.train (a script"),
    ("from model.config import C\n", "imports the bare name model.config"),
    ("from tests.fixtures import tiny_shards\n", "imports tests.fixtures (a script"),
])
def test_the_check_sees_top_level_and_lazy_imports(tmp_path, source, expect):
    for pkg in ORDER:
        (tmp_path / pkg).mkdir()
    (tmp_path / "dataset" / "x.py").write_text(source)
    (tmp_path / "render" / "ok.py").write_text("from lavimo.dataset.clip import Clip\nfrom lavimo.body.model import load_body\n")
    bad = _violations(tmp_path)
    assert len(bad) == 1 and expect in bad[0], bad


def test_relative_imports_resolve_to_their_package(tmp_path):
    f = tmp_path / "model" / "sub" / "a.py"
    f.parent.mkdir(parents=True)
    f.write_text("from . import b\nfrom ..config import C\nfrom .c import d\n")
    (f.parent / "b.py").write_text("")
    assert [n for _, n in _imported(f, tmp_path)] == ["lavimo.model.sub.b", "lavimo.model.config", "lavimo.model.sub.c"]


def test_the_install_lists_every_subpackage_under_the_one_name():
    import tomllib

    setup = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert setup["package-dir"] == {"lavimo": "."}
    on_disk = {_module_name(p) for pkg in (*ORDER, "assets") for p in (REPO / pkg).rglob("__init__.py")}
    data_only = {name for name in setup["package-data"] if name not in on_disk | {"lavimo"}}
    assert all(not (REPO / name.removeprefix("lavimo.").replace(".", "/") / "__init__.py").exists()
               and any((REPO / name.removeprefix("lavimo.").replace(".", "/")).iterdir()) for name in data_only)
    assert set(setup["packages"]) == on_disk | {"lavimo"} | data_only
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert all(target.startswith("lavimo.") for target in scripts.values()), scripts
