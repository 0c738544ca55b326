"""The model's identity is pinned on the driver and checked against what its folder declares."""

import json
import shutil

import pytest

from pipeline.errors import UsageError
from pipeline.stages.model import ModelSource, folder_digest


@pytest.fixture
def model_copy(tmp_path, minilm_path):
    return shutil.copytree(minilm_path, tmp_path / "model")


@pytest.fixture(autouse=True)
def model_cache(tmp_path, monkeypatch):
    """Each test its own node cache of pinned model copies."""
    monkeypatch.setenv("E5_EMBED_MODEL_CACHE", str(tmp_path / "model-cache"))
    return tmp_path / "model-cache"


@pytest.mark.unit
def test_a_local_folder_is_identified_by_its_content(model_copy):
    source, identity = ModelSource(name_or_path=str(model_copy)).pinned()
    assert source.name_or_path == str(model_copy) and identity == "sha256:" + folder_digest(str(model_copy))
    assert source.digest == identity
    (model_copy / "README.md").write_text("edited")
    assert ModelSource(name_or_path=str(model_copy)).pinned()[1] != identity


@pytest.mark.unit
def test_every_byte_of_a_large_file_is_in_the_digest(tmp_path):
    """An adapter merged into the weights changes bytes in the middle of a large file: no sampling."""
    folder = tmp_path / "big"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    weights = bytearray(b"\x01" * (40 << 20))
    (folder / "model.safetensors").write_bytes(weights)
    before = folder_digest(str(folder))
    weights[20 << 20] ^= 0xFF  # one byte, far from both ends
    (folder / "model.safetensors").write_bytes(weights)
    assert folder_digest(str(folder)) != before


@pytest.mark.unit
def test_what_a_process_loads_is_what_the_driver_pinned(model_copy, tmp_path, minilm_path, model_cache):
    """Files replaced, or a symlink repointed, between the driver's pin and an actor's load: the actor
    fails with the two digests, never loads other weights under the pinned one."""
    link = tmp_path / "current"
    link.symlink_to(model_copy)
    pinned, identity = ModelSource(name_or_path=str(link)).pinned()
    shutil.rmtree(model_cache)  # another node: nothing copied there yet
    other = shutil.copytree(minilm_path, tmp_path / "other")
    (other / "README.md").write_text("another model's folder")
    link.unlink()
    link.symlink_to(other)  # repointed after the pin
    with pytest.raises(UsageError, match=r"changed after the run pinned it: it was sha256:\w+, it is now sha256:"):
        pinned.local_path()
    assert not any(model_cache.glob("sha256-*/.complete"))  # no copy filed under either digest
    link.unlink()
    link.symlink_to(model_copy)  # back to the pinned bytes: the node's verified copy is loaded
    loaded = pinned.local_path()
    assert loaded != str(link) and folder_digest(loaded) == identity.removeprefix("sha256:")
    (model_copy / "model.safetensors").write_bytes(b"replaced")  # the source changes once a copy is made ...
    assert folder_digest(pinned.local_path()) == identity.removeprefix("sha256:")  # ... the copy does not


@pytest.mark.unit
def test_a_hub_revision_is_pinned_to_its_commit_from_the_cache(tmp_path, minilm_path, monkeypatch):
    """The real huggingface_hub resolution, offline: a cache whose refs/main moves to a new commit."""
    import huggingface_hub.constants as hub

    cache = tmp_path / "hub"
    repo = cache / "models--acme--e5-test"
    first, second = "a" * 40, "b" * 40
    for sha in (first, second):
        shutil.copytree(minilm_path, repo / "snapshots" / sha)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(first)
    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    pinned, identity = ModelSource(name_or_path="acme/e5-test").pinned()
    assert identity == f"git:{first}" and pinned.revision == first
    assert pinned.local_path().endswith(first)  # what actors load: that commit, from the node's cache
    (repo / "refs" / "main").write_text(second)  # upstream moved on
    assert ModelSource(name_or_path="acme/e5-test").pinned()[1] == f"git:{second}"
    assert pinned.local_path().endswith(first)  # a pinned source does not move with it


@pytest.mark.unit
def test_a_folder_declaring_another_pooling_or_prompt_is_refused(model_copy):
    source = ModelSource(name_or_path=str(model_copy))
    source.check_declared("passage", "passage: ")  # MiniLM's folder declares mean pooling
    pooling = model_copy / "1_Pooling" / "config.json"
    pooling.write_text(json.dumps({"pooling_mode_cls_token": True, "pooling_mode_mean_tokens": False}))
    with pytest.raises(UsageError, match="declares pooling cls_token"):
        source.check_declared("passage", "passage: ")
    shutil.rmtree(model_copy / "1_Pooling")
    (model_copy / "config_sentence_transformers.json").write_text(json.dumps({"prompts": {"query": "Query: "}}))
    with pytest.raises(UsageError, match="declares the query prompt 'Query: '"):
        source.check_declared("query", "query: ")
    source.check_declared("passage", "passage: ")  # no passage prompt declared: nothing to disagree with


@pytest.mark.integration
def test_a_model_folder_in_object_storage_is_copied_once_per_node_and_embeds(
    ray_cluster, s3fs_client, bucket, minilm_path, tmp_path, monkeypatch
):
    """--model s3://…/ on moto's server: one verified copy in the node's model cache, a content digest
    in the metadata, and the whole job through it."""
    from pathlib import Path

    from pipeline.config import JobConfig
    from pipeline.runner import run_job

    for path in Path(minilm_path).rglob("*"):
        if path.is_file():
            s3fs_client.put_file(str(path), f"{bucket}/models/minilm/{path.relative_to(minilm_path)}")
    uri = f"s3://{bucket}/models/minilm/"
    monkeypatch.setenv("E5_EMBED_MODEL_CACHE", str(tmp_path / "cache"))
    first = ModelSource(name_or_path=uri).local_path()
    stamp = (Path(first) / ".complete").stat().st_mtime_ns
    assert ModelSource(name_or_path=uri).local_path() == first  # the second actor on the node: no copy
    assert (Path(first) / ".complete").stat().st_mtime_ns == stamp
    assert folder_digest(first) == folder_digest(minilm_path)  # a faithful copy
    s3fs_client.pipe(f"{bucket}/corpus/a.jsonl", b'{"id": "m1", "text": "a model from object storage"}\n')
    summary = run_job(
        JobConfig(inputs=(f"s3://{bucket}/corpus/",), output=str(tmp_path / "out"), model=uri, progress=False)
    )
    assert summary.status == "complete" and summary.rows_embedded == 1
    manifest = json.loads((tmp_path / "out" / "_manifest.json").read_text())
    assert manifest["metadata"]["model_sha"] == "sha256:" + folder_digest(minilm_path)


@pytest.mark.e2e
def test_a_pinned_hub_model_runs_with_the_hub_unreachable_and_no_actor_calls_it(tmp_path, minilm_path):
    """The whole job (own local Ray, tokenizer and encode actors) against a 'Hub' that counts and fails
    every request (HF_ENDPOINT on loopback, offline mode off): a model pinned to a commit in the node's
    cache is loaded by every process with zero Hub requests."""
    import http.server
    import os
    import subprocess

    from e5tools.jobrun import job_argv
    from tests.httpserve import serving

    seen: list[str] = []

    class Hub(http.server.BaseHTTPRequestHandler):
        def _fail(self):
            seen.append(f"{self.command} {self.path}")
            self.send_response(503)
            self.end_headers()

        do_GET = do_HEAD = do_POST = _fail

        def log_message(self, *args):
            pass

    with serving(Hub) as endpoint:
        sha = "c" * 40
        repo = tmp_path / "hub" / "models--acme--e5-test"
        shutil.copytree(minilm_path, repo / "snapshots" / sha)
        (repo / "refs").mkdir()
        (repo / "refs" / "main").write_text(sha)
        (tmp_path / "in.jsonl").write_text("".join(json.dumps({"text": f"doc {i} words"}) + "\n" for i in range(40)))
        env = {
            **os.environ,
            "RAY_ADDRESS": "",
            "HF_HUB_OFFLINE": "0",
            "HF_ENDPOINT": endpoint,
            "HF_HUB_CACHE": str(tmp_path / "hub"),
            "HF_HUB_ETAG_TIMEOUT": "2",
            "HF_HUB_DOWNLOAD_TIMEOUT": "2",
        }
        argv = job_argv(tmp_path / "in.jsonl", tmp_path / "out", "acme/e5-test", "--revision", sha)
        done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
        manifest = json.loads((tmp_path / "out" / "_manifest.json").read_text())
        assert (
            manifest["complete"]
            and manifest["rows_written"] == 40
            and manifest["metadata"]["model_sha"] == f"git:{sha}"
        )
        assert seen == []  # not one request to the Hub, from the driver or any actor


@pytest.mark.unit
@pytest.mark.parametrize("native, want", [(True, "bfloat16"), (False, "float16")])
def test_auto_dtype_wants_bf16_in_hardware_not_emulated(monkeypatch, native, want):
    """A T4 or V100 "supports" bf16 by emulation (torch's default answer): auto must pick fp16 there.
    No GPU here: torch.cuda.is_bf16_supported is replaced by a GPU that emulates bf16 (said so)."""
    import torch

    from pipeline.stages.model import resolve_dtype

    def is_bf16_supported(including_emulation: bool = True) -> bool:
        return native or including_emulation  # emulated on a pre-Ampere GPU, native on sm80+

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", is_bf16_supported)
    assert resolve_dtype("auto", "cuda") == want
    assert resolve_dtype("bfloat16", "cuda") == want
    assert resolve_dtype("auto", "cpu") == "float32"
