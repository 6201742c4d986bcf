"""The package layout: data flows one way.

Rule: the packages form one order,

    core < body < dataset < render < model < evaluation < training

and a module may import (at the top or inside a function, ``import`` or ``from ... import``) only from its own
package and from the packages before it. So ``core`` imports none of them; ``body`` (the SMPL skeleton and body
models) only ``core``; ``dataset`` never imports ``render`` (rendering reads AMASS files and clips, which are
dataset's, not the other way round); ``model`` (the network) never imports ``training`` or ``evaluation``;
``evaluation`` (metrics, protocols, the one split encoder) never imports ``training``, which uses evaluation's
encoder and metrics for its validation. Nothing in the packages imports the top-level scripts ``train.py`` /
``evaluate.py`` (thin wrappers around ``training.cli`` / ``evaluation.cli``), ``scripts/`` or ``tests/``.

Every ``.py`` file of the packages is read with :mod:`ast` (nothing is imported or run).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
ORDER = ("core", "body", "dataset", "render", "model", "evaluation", "training")
#: top-level names no package module may import
FORBIDDEN = {"train", "evaluate", "scripts", "tests"}


def _modules(root: Path = REPO) -> list[tuple[str, Path]]:
    out = []
    for pkg in ORDER:
        for path in sorted((root / pkg).rglob("*.py")):
            out.append((pkg, path))
    return out


def _imported(path: Path, root: Path = REPO) -> list[tuple[int, str]]:
    """(line, dotted module name) of every import in the file (relative imports resolved)."""
    parts = list(path.relative_to(root).with_suffix("").parts)
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
            found.append((node.lineno, name))
    return found


def _violations(root: Path = REPO) -> list[str]:
    bad = []
    for pkg, path in _modules(root):
        allowed = set(ORDER[: ORDER.index(pkg) + 1])
        for line, name in _imported(path, root):
            top = name.split(".")[0]
            where = f"{path.relative_to(root)}:{line}"
            if top in FORBIDDEN:
                bad.append(f"{where}: imports {name} (a script or test, not a package)")
            elif top in ORDER and top not in allowed:
                bad.append(f"{where}: {pkg} imports {name} ({top} comes after {pkg} in {' < '.join(ORDER)})")
    return bad


def test_every_package_exists_and_has_modules():
    for pkg in ORDER:
        assert (REPO / pkg / "__init__.py").is_file(), pkg
    assert len(_modules()) > 40


def test_imports_follow_the_package_order():
    bad = _violations()
    assert not bad, "imports against the data flow:\n" + "\n".join(bad)


@pytest.mark.parametrize("source, expect", [
    ("from render.avatars import REGIONS\n", "dataset imports render.avatars"),
    ("def f():\n    import training.loop\n", "dataset imports training.loop"),
    ("import train\n", "imports train (a script"),
    ("from tests.fixtures import tiny_shards\n", "imports tests.fixtures (a script"),
])
def test_the_check_sees_top_level_and_lazy_imports(tmp_path, source, expect):
    for pkg in ORDER:
        (tmp_path / pkg).mkdir()
    (tmp_path / "dataset" / "x.py").write_text(source)
    (tmp_path / "render" / "ok.py").write_text("from dataset.clip import Clip\nfrom body.model import load_body\n")
    bad = _violations(tmp_path)
    assert len(bad) == 1 and expect in bad[0], bad


def test_relative_imports_resolve_to_their_package(tmp_path):
    f = tmp_path / "model" / "sub" / "a.py"
    f.parent.mkdir(parents=True)
    f.write_text("from . import b\nfrom ..config import C\nfrom .c import d\n")
    assert [n for _, n in _imported(f, tmp_path)] == ["model.sub", "model.config", "model.sub.c"]
