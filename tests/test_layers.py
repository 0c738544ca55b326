"""The package map in docs/architecture.md, enforced: no import from a lower layer to a higher one,
Ray only in the backend, the runner and cluster probing, dev tools out of the product."""

import ast
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[1]
# lowest first; a module may import its own layer and the ones before it
LAYERS = [
    {"pipeline.errors"},
    {"pipeline.io"},
    {"pipeline.stages"},
    {
        "pipeline.settings",
        "pipeline.options",
        "pipeline.composed",
        "pipeline.output_settings",
        "pipeline.config",
        "pipeline.flags",
    },
    {"pipeline.ledger"},
    {"pipeline.planning"},
    {"pipeline.verify"},
    {"pipeline.backend"},
    {"pipeline.runner"},
    {"pipeline.cli", "pipeline.__main__"},
]
RAY_ALLOWED = ("pipeline.backend",)


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


def _modules(*packages: str):
    for package in packages:
        for path in sorted((ROOT / package).rglob("*.py")):
            yield ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__"), path


def _import_graph(*packages: str) -> dict[str, set[str]]:
    """module -> the modules of ``packages`` it imports (at the top or inside a function)."""
    known = dict(_modules(*packages))
    graph = {}
    for module, path in known.items():
        graph[module] = {n for n in imports(path) if n in known and n != module}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
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
    return found


def test_no_import_circle_in_the_product_or_the_dev_tools():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]  # the check finds one
    assert not _cycles(_import_graph("pipeline", "e5tools")), _cycles(_import_graph("pipeline", "e5tools"))


def test_no_private_name_is_imported_from_another_module():
    """``from pipeline.planning.plan import _sort_window``: a private helper used elsewhere is a public
    one without the name; make it public (or keep it where it is used)."""
    bad = []
    for module, path in _modules("pipeline", "e5tools", "jobs"):
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.ImportFrom)
                and node.module
                and node.module.split(".")[0] in ("pipeline", "e5tools")
            ):
                bad += [
                    f"{module} imports {node.module}.{a.name}"
                    for a in node.names
                    if a.name.startswith("_") and not a.name.endswith("__")
                ]
    assert not bad, bad


def test_the_one_reference_is_independent_of_the_product():
    """The model card's code must not import the product: a pooling bug there would pass parity."""
    tree = ast.parse((ROOT / "e5tools" / "reference.py").read_text())
    imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert not {m for m in imported if m.split(".")[0] in ("pipeline", "tests")}, imported
    for path in ("tests/reference.py", "e5tools/bench.py", "jobs/gpu_quick.py"):
        assert "e5tools.reference" in (ROOT / path).read_text(), f"{path} keeps a copy of the card's code"
