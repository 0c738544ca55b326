"""The package as users install it: a built wheel in a clean virtualenv, used from another directory."""

import ast
import json
import re
import subprocess
import sys
import tomllib
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# What `e5-embed plan` needs at run time (no torch, no Ray, no transformers): installed into the clean venv.
PLAN_RUNTIME = ("fsspec", "pyyaml", "numpy", "pyarrow")
# import name -> distribution name, where they differ
DISTRIBUTION_OF = {"yaml": "pyyaml"}


def _run(argv, **kw):
    done = subprocess.run(argv, capture_output=True, text=True, timeout=600, **kw)
    assert done.returncode == 0, (argv, done.stdout[-2000:], done.stderr[-3000:])
    return done


# A Python warning class in the build's output (setuptools' SetuptoolsDeprecationWarning,
# BuildBackendWarning, ...): the backend complaining about this project's metadata. pip's own
# "WARNING: ..." lines (about this machine's index settings) are not warning classes.
BUILD_WARNING = re.compile(r"\b[A-Z]\w*Warning\b")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel, built with a current setuptools in pip's isolated build environment; a build that
    warns about this project's metadata fails here the day the warning appears, not the day builds break."""
    out = tmp_path_factory.mktemp("wheels")
    built = _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-v", "-w", str(out), str(ROOT)])
    warnings = sorted(
        {line.strip() for line in (built.stdout + built.stderr).splitlines() if BUILD_WARNING.search(line)}
    )
    assert not warnings, "the build backend warns about this project:\n" + "\n".join(warnings[:20])
    [wheel] = out.glob("e5_embed-*.whl")
    return wheel


def _declared() -> set[str]:
    """The runtime dependencies pyproject.toml declares (distribution names, lower case)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return {re.split(r"[<>=!\[; ]", req.strip())[0].lower() for req in project["dependencies"]}


def _requires(wheel: Path) -> set[str]:
    with zipfile.ZipFile(wheel) as z:
        [meta] = [n for n in z.namelist() if n.endswith(".dist-info/METADATA")]
        lines = z.read(meta).decode().splitlines()
    required = set()
    for line in lines:
        if line.startswith("Requires-Dist:") and "extra ==" not in line:
            required.add(re.split(r"[<>=!\[; ]", line.split(":", 1)[1].strip())[0].lower())
    return required


@pytest.mark.unit
def test_the_project_declares_every_third_party_package_the_product_imports():
    stdlib = set(sys.stdlib_module_names)
    imported = set()
    for path in (ROOT / "pipeline").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                imported.add(node.module.split(".")[0])
    third_party = {DISTRIBUTION_OF.get(m, m) for m in imported - stdlib - {"pipeline", "__future__"}}
    missing = third_party - _declared()
    assert not missing, f"imported by the product but not declared in pyproject.toml: {sorted(missing)}"


@pytest.mark.rehearsal
def test_wheel_plans_with_the_packaged_profiles_in_a_clean_venv_from_another_directory(tmp_path, wheel):
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True, system_site_packages=False, clear=True).create(env_dir)
    python = str(env_dir / "bin" / "python")
    _run([python, "-m", "pip", "install", "-q", "--no-deps", str(wheel)])
    assert _requires(wheel) == _declared() and set(PLAN_RUNTIME) <= _requires(
        wheel
    )  # the wheel says what pyproject says
    _run([python, "-m", "pip", "install", "-q", "-c", str(ROOT / "constraints.txt"), *PLAN_RUNTIME])
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}  # nothing of this session's environment
    result = _run(
        [python, "-m", "pipeline", "plan", "--gpus", "8", "--accelerator", "H100", "--json"], cwd=elsewhere, env=env
    )
    plan = json.loads(result.stdout)
    assert plan["profile"] == "H100" and plan["scheduler_config"] == "packaged scheduler.yaml"
    assert "no scheduler config" not in result.stderr
    clean = subprocess.run([python, "-c", "import torch"], cwd=elsewhere, env=env, capture_output=True, timeout=60)
    assert clean.returncode != 0  # really a clean venv: none of this session's packages are visible
    located = subprocess.run(
        [python, "-c", "import pipeline; print(pipeline.__file__)"],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
    )
    assert located.stdout.startswith(str(env_dir))  # the wheel's copy in the clean venv, not the checkout
    with zipfile.ZipFile(wheel) as z:  # what a package index shows (core metadata 2.4, PEP 639)
        names = z.namelist()
        # demo and bench ship (the demo extra); the repository-only rehearsals do not
        assert "e5tools/bench.py" in names and "e5tools/demo.py" in names
        assert not [n for n in names if n.startswith("e5tools/rehearsal/")], names
        [meta] = [n for n in z.namelist() if n.endswith(".dist-info/METADATA")]
        metadata = z.read(meta).decode()
        assert any(n.endswith(".dist-info/licenses/LICENSE") for n in z.namelist())
    for line in ("License-Expression: Apache-2.0", "License-File: LICENSE", "Requires-Python: >=3.11"):
        assert line in metadata.splitlines(), metadata[:2000]
    shown = _run([python, "-m", "pip", "show", "-v", "e5-embed"], cwd=elsewhere, env=env).stdout
    assert "Name: e5-embed" in shown and "Summary: Ray Data streaming job" in shown, shown
    assert "Programming Language :: Python :: 3.11" in shown and "Author: e5-embed maintainers" in shown, shown
