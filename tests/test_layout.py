"""Imports point one way: brainhands -> {brain, gateway} -> hands (design §1), checked over the source's AST."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PARTS = ("hands", "gateway", "brain", "brainhands")
#: What each part may import of ours. Generated contracts (hands.v1, gateway.v1, brain.v1) may be shared sideways.
ALLOWED = {
    "hands": {"hands"},
    "gateway": {"gateway", "hands"},
    "brain": {"brain", "hands"},
    "brainhands": {"brainhands", "brain", "gateway", "hands"},
}
GENERATED = {"hands.v1", "gateway.v1", "brain.v1"}


def _imports(path: Path):
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.lineno, node.module
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) in (
            "import_module", "__import__"
        ):
            # importlib by string: allowed for a user's module (a name held in a variable), never for one of ours.
            if node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str):
                yield node.lineno, node.args[0].value


def _violations(part: str) -> list[str]:
    found = []
    for path in sorted((ROOT / part).rglob("*.py")):
        rel = path.relative_to(ROOT)
        if rel.parts[1:2] == ("v1",) or "demo_workspace" in rel.parts:
            continue
        for line, module in _imports(path):
            top = module.split(".")[0]
            if top not in PARTS:
                continue
            if ".".join(module.split(".")[:2]) in GENERATED:
                continue
            if top not in ALLOWED[part]:
                found.append(f"{rel}:{line} imports {module}")
    return found


def test_imports_point_one_way():
    """A part that imports a higher layer (even lazily, inside a function) is reported with its line."""
    violations = [v for part in PARTS for v in _violations(part)]
    assert violations == []


def test_the_check_sees_an_import_against_the_direction(tmp_path, monkeypatch):
    """The checker itself: an upward import inside a function body is found."""
    fake = tmp_path / "hands"
    fake.mkdir()
    (fake / "bad.py").write_text("def f():\n    from brain.loop import Brain\n    import brainhands.cli\n")
    monkeypatch.setattr(__import__(__name__, fromlist=["ROOT"]), "ROOT", tmp_path)
    assert _violations("hands") == ["hands/bad.py:2 imports brain.loop", "hands/bad.py:3 imports brainhands.cli"]


def test_no_lazy_import_shims():
    """No module-level __getattr__ loaders and no importlib by string for our own modules."""
    shims = []
    for part in PARTS:
        for path in sorted((ROOT / part).rglob("*.py")):
            tree = ast.parse(path.read_text())
            if any(isinstance(n, ast.FunctionDef) and n.name == "__getattr__" for n in tree.body):
                shims.append(str(path.relative_to(ROOT)))
    assert shims == []
