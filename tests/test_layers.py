"""The package map in docs/architecture.md, enforced: no import from a lower layer to a higher one,
Ray only in the backend, the runner and cluster probing, dev tools out of the product."""

import ast
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[1]
# lowest first; a module may import its own layer and the ones before it
LAYERS = [
    {"pipeline.errors", "pipeline.flags"},
    {"pipeline.io"},
    {"pipeline.config"},
    {"pipeline.stages"},
    {"pipeline.ledger"},
    {"pipeline.planning"},
    {"pipeline.backend"},
    {"pipeline.runner"},
    {"pipeline.cli", "pipeline.__main__"},
]
RAY_ALLOWED = ("pipeline.backend", "pipeline.runner", "pipeline.planning.capacity", "pipeline.planning.plan")


def layer_of(module: str) -> int:
    for i, group in enumerate(LAYERS):
        if any(module == g or module.startswith(g + ".") for g in group):
            return i
    raise AssertionError(f"{module} is in no layer of the package map")


def imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names}
    return found


def product_modules():
    for path in sorted((ROOT / "pipeline").rglob("*.py")):
        module = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        if module != "pipeline":
            yield module, path


def test_no_import_goes_up_a_layer():
    bad = []
    for module, path in product_modules():
        mine = layer_of(module)
        for name in imports(path):
            if name.startswith("pipeline.") and name != "pipeline.__version__":
                try:
                    theirs = layer_of(name)
                except AssertionError:
                    continue  # 'from pipeline.io import schemas' -> pipeline.io.schemas is covered too
                if theirs > mine:
                    bad.append(f"{module} imports {name}")
    assert not bad, bad


def test_ray_only_in_the_backend_runner_and_cluster_probing():
    bad = [
        f"{m} imports {n}"
        for m, p in product_modules()
        for n in imports(p)
        if (n == "ray" or n.startswith("ray.")) and not m.startswith(RAY_ALLOWED)
    ]
    assert not bad, bad


def test_the_product_does_not_import_dev_tools():
    bad = [
        f"{m} imports {n}"
        for m, p in product_modules()
        for n in imports(p)
        if n.split(".")[0] in ("e5tools", "tests", "moto", "sentence_transformers", "duckdb")
    ]
    assert not bad, bad


def test_every_subpackage_is_in_the_architecture_map():
    text = (ROOT / "docs" / "architecture.md").read_text()
    for sub in sorted(p.name for p in (ROOT / "pipeline").iterdir() if (p / "__init__.py").exists()):
        assert f"`pipeline/{sub}/`" in text, sub


def test_storage_is_the_only_io_boundary():
    """No product module reaches past Storage for the fsspec object, or builds its own filesystem."""
    bad = []
    for module, path in product_modules():
        if module == "pipeline.io.storage":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and node.attr in ("fs", "_fs", "_resolved"):
                bad.append(f"{module}:{node.lineno} uses .{node.attr}")
        bad += [f"{module} imports {n}" for n in imports(path) if n.split(".")[0] in ("fsspec", "s3fs")]
    assert not bad, bad
