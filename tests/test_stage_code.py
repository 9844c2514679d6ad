"""Every module a stage runs is in its key: STAGE_CODE covers each stage's import closure.

The closure of a stage is derived from its workflow script (``workflow/scripts/<stage>.py``):
every ``caopd`` module it imports, then every ``caopd`` module those import, transitively, with
imports inside functions included (they run when the stage calls the function) and imports under
``if TYPE_CHECKING:`` left out (they never run). A package's ``__init__.py`` runs with any of its
modules, so it is in the closure too. Each file of the closure must be named by an entry of
``STAGE_CODE[stage]`` (the file itself or a directory above it); an edit to a file that is not
would reuse an artifact built by other code.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from caopd.plan import COMPARE_CODE, INDEX_CODE, STAGE_CODE

ROOT = Path(__file__).resolve().parent.parent


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imported(tree: ast.AST) -> set[str]:
    """Dotted names of the ``caopd`` modules (or module attributes) a module imports at run time."""
    names: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names if a.name.split(".")[0] == "caopd")
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module and node.module.split(".")[0] == "caopd":
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return names


def _files(dotted: str) -> list[Path]:
    """The files that run when ``dotted`` is imported: its module and the packages above it;
    ``[]`` when ``dotted`` is an attribute (a function, a class), not a module."""
    parts = dotted.split(".")
    module = ROOT.joinpath(*parts)
    if (module / "__init__.py").is_file():
        found = [module / "__init__.py"]
    elif module.with_suffix(".py").is_file():
        found = [module.with_suffix(".py")]
    else:
        return []
    for i in range(1, len(parts)):
        init = ROOT.joinpath(*parts[:i], "__init__.py")
        if init.is_file():
            found.append(init)
    return found


def import_closure(script: Path) -> set[str]:
    """Repository-relative paths of every ``caopd`` file ``script`` runs by importing."""
    seen: set[Path] = set()
    todo = [script]
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        for dotted in _imported(ast.parse(path.read_text(), str(path))):
            todo.extend(f for f in _files(dotted) if f not in seen)
    return {p.relative_to(ROOT).as_posix() for p in seen if p != script}


def _covered(path: str, entries: tuple[str, ...]) -> bool:
    return any(path == e or path.startswith(e.rstrip("/") + "/") for e in entries)


@pytest.mark.parametrize("stage", sorted(STAGE_CODE))
def test_stage_code_covers_the_import_closure(stage):
    script = ROOT / "workflow" / "scripts" / f"{stage}.py"
    assert f"workflow/scripts/{stage}.py" in STAGE_CODE[stage]
    missing = sorted(p for p in import_closure(script) if not _covered(p, STAGE_CODE[stage]))
    assert not missing, f"STAGE_CODE[{stage!r}] lacks {missing}: add them in caopd/plan.py"


@pytest.mark.parametrize(("script", "entries"), [("compare", COMPARE_CODE), ("index", INDEX_CODE)])
def test_fixed_path_rules_fingerprint_their_closure(script, entries):
    path = ROOT / "workflow" / "scripts" / f"{script}.py"
    missing = sorted(p for p in import_closure(path) if not _covered(p, entries))
    assert not missing, f"{script} code lacks {missing}: add them in caopd/plan.py"


def test_every_entry_exists():
    for entries in (*STAGE_CODE.values(), COMPARE_CODE, INDEX_CODE):
        for entry in entries:
            assert (ROOT / entry).exists(), f"{entry}: named in caopd/plan.py but missing"


def test_the_closure_follows_imports_inside_functions():
    closure = import_closure(ROOT / "workflow" / "scripts" / "rollouts.py")
    assert "caopd/rollouts/expected_confidence.py" in closure  # imported inside a function
    assert "caopd/rollouts/__init__.py" in closure
