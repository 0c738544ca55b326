"""Where model weights and tokenizers come from, and how they are loaded.

``ModelSource`` names a Hugging Face Hub id (optionally pinned to a revision) or
a local folder. The driver checks it before any actor starts (fail fast, exit
2); each actor then loads it once. Hub downloads go through the node's Hugging
Face cache, whose file locks make it one download per node.

A folder (local or in object storage) is identified by a digest of every byte of
every file (``folder_digest``). The driver pins it; every process then loads the
node's content-addressed copy of exactly those bytes (``pinned_copy``), made and
verified once per node, so a folder changed or repointed mid-run fails the actor
instead of embedding with other weights under the pinned digest.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import posixpath
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from pipeline.errors import E5EmbedError, UsageError, step_failed

logger = logging.getLogger(__name__)

_FETCH_PATTERNS = ["*.json", "*.txt", "*.safetensors", "*.model"]
_COMMIT_SHA = re.compile(r"[0-9a-f]{40}")
_READ_BYTES = 8 << 20  # digest and copy in 8 MiB reads


def model_cache_root() -> str:
    return os.environ.get("E5_EMBED_MODEL_CACHE") or os.path.join(
        os.path.expanduser("~"), ".cache", "e5-embed", "models"
    )


def fetch_folder(uri: str, storage_options: Mapping[str, Any]) -> str:
    """A model folder in object storage, copied once per node into the local model cache.

    The copy's name is a digest of the URI and the listed files' names, sizes and ETags, so a
    changed folder is copied anew. A file lock makes one process per node copy while the others
    wait; the copy is checked (every file, its size) before it is renamed into place.
    """
    from pipeline.io.storage import Storage, strip_uri_credentials

    storage = Storage(uri, storage_options)
    root = storage.root
    try:
        listed = storage.walk_files()
    except Exception as e:
        raise step_failed(f"cannot list model folder {strip_uri_credentials(uri)}", e) from e
    files = sorted(
        (os.path.relpath(p, root), int(i.get("size") or 0), str(i.get("ETag") or i.get("mtime") or ""))
        for p, i in listed.items()
    )
    if not any(name == "config.json" for name, _, _ in files):
        raise UsageError(f"model folder {strip_uri_credentials(uri)} has no config.json")
    key = hashlib.sha256(repr((strip_uri_credentials(uri), files)).encode()).hexdigest()[:24]

    def fill(tmp: str) -> None:
        for name, size, _ in files:
            local = os.path.join(tmp, name)
            os.makedirs(os.path.dirname(local), exist_ok=True)
            storage.download(posixpath.join(root, name), local)
            if os.path.getsize(local) != size:
                raise UsageError(
                    f"model file {name} of {strip_uri_credentials(uri)} arrived with "
                    f"{os.path.getsize(local)} bytes, expected {size}"
                )

    return _cached_once(os.path.join(model_cache_root(), key), fill, strip_uri_credentials(uri))


def _cached_once(target: str, fill: Callable[[str], None], source: str) -> str:
    """``target`` in the node's model cache, made once per node: under a file lock, ``fill`` writes a
    private temporary folder (and raises if what it got is wrong), which is marked complete and
    renamed into place. Later callers find it complete without taking the lock."""
    import shutil

    import filelock

    if _is_complete(target):
        return target
    os.makedirs(os.path.dirname(target), exist_ok=True)
    with filelock.FileLock(target + ".lock"):
        if _is_complete(target):
            return target
        tmp = f"{target}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            fill(tmp)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        with open(os.path.join(tmp, ".complete"), "w", encoding="utf-8") as f:
            f.write(f"{source}\n")
        shutil.rmtree(target, ignore_errors=True)
        os.replace(tmp, target)
        logger.info("copied model %s to %s", source, target)
    return target


def _folder_files(folder: str) -> list[tuple[str, str]]:
    """(relative name, path) of every file loading may read, in a fixed order (dot-entries are the
    caches' own markers, never model files)."""
    found = []
    for root, dirs, files in os.walk(folder, followlinks=True):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(f for f in files if not f.startswith(".")):
            path = os.path.join(root, name)
            found.append((os.path.relpath(path, folder), path))
    return found


def _digest_files(folder: str, copy_to: str | None = None) -> str:
    """sha256 over each file's name, size and every byte; with ``copy_to``, the bytes hashed are the
    bytes written there (one pass: what is copied is what is hashed)."""
    h = hashlib.sha256()
    buffer = bytearray(_READ_BYTES)
    view = memoryview(buffer)
    for rel, path in _folder_files(folder):
        dest = None if copy_to is None else os.path.join(copy_to, rel)
        if dest is not None:
            os.makedirs(os.path.dirname(dest), exist_ok=True)
        with open(path, "rb") as f, open(dest, "wb") if dest else contextlib.nullcontext() as out:
            size = os.fstat(f.fileno()).st_size
            h.update(f"{rel}\0{size}\0".encode())
            read = 0
            while n := f.readinto(buffer):
                h.update(view[:n])
                read += n
                if out is not None:
                    out.write(view[:n])
            if read != size:
                raise OSError(f"{rel} changed while it was read ({size} bytes listed, {read} read)")
    return h.hexdigest()


def folder_digest(folder: str) -> str:
    """A content digest of a model folder: every file's name, size and every byte (sha256)."""
    return _digest_files(folder)


def _cache_dir(hex_digest: str) -> str:
    return os.path.join(model_cache_root(), f"sha256-{hex_digest}")


def _is_complete(folder: str) -> bool:
    """A cache folder whose fill finished (its ``.complete`` marker is written last)."""
    return os.path.isfile(os.path.join(folder, ".complete"))


def pinned_copy(folder: str, digest: str) -> str:
    """The node's copy of ``folder`` as it was when pinned to ``digest`` (``sha256:<hex>``).

    Made once per node (``_cached_once``): the bytes are hashed as they are copied, and a copy whose
    digest is not the pinned one is thrown away with a clear error (the folder changed, or a symlink
    was repointed, after the driver pinned it). Later processes on the node load the verified copy.
    """

    def fill(tmp: str) -> None:
        try:
            found = _digest_files(folder, copy_to=tmp)
        except OSError as e:
            raise UsageError(f"cannot copy model folder {folder!r}: {e}") from e
        if "sha256:" + found != digest:
            raise UsageError(
                f"model folder {folder!r} changed after the run pinned it: it was {digest}, it is now "
                f"sha256:{found}; no process may embed with other weights under the pinned digest"
            )

    return _cached_once(_cache_dir(digest.removeprefix("sha256:")), fill, folder)


@dataclass(frozen=True, kw_only=True)
class ModelInfo:
    """The shape of a BERT-style encoder, from its config.json."""

    name: str
    hidden_size: int
    num_layers: int
    num_heads: int
    intermediate_size: int
    vocab_size: int
    max_positions: int
    position_offset: int = 0  # RoBERTa/XLM-R number positions after the padding id: 514 positions, 512 tokens

    @property
    def max_tokens(self) -> int:
        """The longest input (special tokens included) the position table allows."""
        return self.max_positions - self.position_offset

    @property
    def parameters(self) -> int:
        h, f, L = self.hidden_size, self.intermediate_size, self.num_layers
        per_layer = 4 * h * h + 4 * h + 2 * h * f + f + h + 4 * h  # attn + ffn + 2 layer norms
        embeddings = (self.vocab_size + self.max_positions + 2) * h + 2 * h
        return L * per_layer + embeddings

    @classmethod
    def from_config(cls, name: str, config: Any) -> "ModelInfo":
        get = config.get if isinstance(config, dict) else lambda k, d=None: getattr(config, k, d)
        return cls(
            name=name,
            hidden_size=int(get("hidden_size")),
            num_layers=int(get("num_hidden_layers")),
            num_heads=int(get("num_attention_heads")),
            intermediate_size=int(get("intermediate_size")),
            vocab_size=int(get("vocab_size")),
            max_positions=int(get("max_position_embeddings")),
            position_offset=int(get("pad_token_id") or 0) + 1
            if get("model_type") in ("roberta", "xlm-roberta", "camembert")
            else 0,
        )


def _shape(name: str, layers: int, hidden: int, heads: int, ffn: int, vocab: int, positions: int) -> ModelInfo:
    return ModelInfo(
        name=name,
        hidden_size=hidden,
        num_layers=layers,
        num_heads=heads,
        intermediate_size=ffn,
        vocab_size=vocab,
        max_positions=positions,
        position_offset=2 if positions == 514 else 0,  # the XLM-R models: padding id 1
    )


# The E5 family's shapes, known offline (for ``e5-embed plan`` without a hub).
KNOWN_SHAPES = {
    s.name: s
    for s in [
        _shape("intfloat/e5-small-v2", 12, 384, 12, 1536, 30522, 512),
        _shape("intfloat/e5-base-v2", 12, 768, 12, 3072, 30522, 512),
        _shape("intfloat/e5-large-v2", 24, 1024, 16, 4096, 30522, 512),
        _shape("intfloat/multilingual-e5-small", 12, 384, 12, 1536, 250037, 512),
        _shape("intfloat/multilingual-e5-base", 12, 768, 12, 3072, 250002, 514),
        _shape("intfloat/multilingual-e5-large", 24, 1024, 16, 4096, 250002, 514),
    ]
}


def offline_info(name_or_path: str) -> ModelInfo:
    """A model's shape without any network: the E5 table, or a local folder's config.json."""
    import json

    if name_or_path in KNOWN_SHAPES:
        return KNOWN_SHAPES[name_or_path]
    config = os.path.join(name_or_path, "config.json")
    if os.path.isfile(config):
        with open(config, encoding="utf-8") as f:
            return ModelInfo.from_config(name_or_path, json.load(f))
    raise UsageError(
        f"unknown model {name_or_path!r}: use one of {', '.join(KNOWN_SHAPES)} or a local folder with config.json"
    )


@dataclass(frozen=True, kw_only=True)
class ModelSource:
    """A Hub id (``revision`` pins it), a local folder, or a folder in object storage
    (``s3://bucket/models/e5-base-v2/``, any fsspec URI, read with ``storage_options``)."""

    name_or_path: str
    revision: str | None = None
    # a folder's content digest (``sha256:<hex>``), set by ``pinned``: what every process must load
    digest: str | None = None
    storage_options: Mapping[str, Any] = field(default_factory=dict, hash=False, compare=False)

    @property
    def is_local(self) -> bool:
        return os.path.isdir(self.name_or_path)

    @property
    def is_remote_folder(self) -> bool:
        return "://" in self.name_or_path and not self.name_or_path.startswith("file://")

    def local_path(self) -> str:
        """A local folder holding the model: the folder itself, or the node's cached Hub snapshot.

        A source pinned to a commit sha (what the driver hands actors, see ``pinned``) is looked up
        in the node's cache without any network first: only the first actor on a node whose cache
        lacks it downloads (the cache's file locks make that one download per node).
        """
        if self.is_local or self.is_remote_folder:
            copy = _cache_dir(self.digest.removeprefix("sha256:")) if self.digest else None
            if copy is not None and _is_complete(copy):
                return copy  # this node's verified copy: no listing, no read
            folder = self.name_or_path if self.is_local else fetch_folder(self.name_or_path, self.storage_options)
            return folder if self.digest is None else pinned_copy(folder, self.digest)
        from huggingface_hub import snapshot_download

        if self.revision and _COMMIT_SHA.fullmatch(self.revision):
            try:
                return snapshot_download(
                    self.name_or_path, revision=self.revision, allow_patterns=_FETCH_PATTERNS, local_files_only=True
                )
            except Exception:  # not on this node yet: fetch it once
                pass
        try:
            return snapshot_download(self.name_or_path, revision=self.revision, allow_patterns=_FETCH_PATTERNS)
        except Exception as e:  # hub errors come in many types: a moment's (retry) or the model's (fix it)
            raise step_failed(
                f"cannot fetch model {self.name_or_path!r} (revision {self.revision or 'main'})", e
            ) from e

    def pinned(self) -> tuple["ModelSource", str]:
        """This model pinned to what it is now, and its identity for the output's metadata.

        A Hub model: the revision resolved to its commit sha (``main`` today may be another commit
        tomorrow); actors load exactly that sha. A folder: the digest of every byte of its files; this
        node's content-addressed copy is made now (``pinned_copy``: hashed again as it is copied, so a
        change between the two reads fails here) and every process loads a copy verified against it.
        """
        if self.is_local or self.is_remote_folder:
            folder = self.name_or_path if self.is_local else fetch_folder(self.name_or_path, self.storage_options)
            try:
                digest = "sha256:" + folder_digest(folder)
            except OSError as e:
                raise UsageError(f"cannot read model folder {folder!r}: {e}") from e
            pinned = replace(self, digest=digest)
            pinned.local_path()  # this node's verified copy, made now (the driver's node needs no second)
            return pinned, digest
        path = self.local_path()
        sha = os.path.basename(os.path.normpath(path))
        if not _COMMIT_SHA.fullmatch(sha):
            raise UsageError(f"cannot tell the commit of model {self.name_or_path!r} (snapshot folder {sha!r})")
        return ModelSource(name_or_path=self.name_or_path, revision=sha), "git:" + sha

    def pin_for_run(self, prefix_name: str, prefix_text: str) -> tuple["ModelSource", str]:
        """The model pinned on the driver (``pinned``), after a clear exit 2 for a missing or
        unreadable one, and checked against what its folder declares (pooling, prompts)."""
        self.info()
        model, model_sha = self.pinned()
        model.check_declared(prefix_name, prefix_text)
        logger.info("model %s at %s", self.name_or_path, model_sha)
        return model, model_sha

    def check_declared(self, prefix_name: str, prefix_text: str) -> None:
        """Refuse a model folder whose sentence-transformers files declare another pooling or prompt."""
        import json

        folder = self.local_path()
        pooling = os.path.join(folder, "1_Pooling", "config.json")
        if os.path.isfile(pooling):
            with open(pooling, encoding="utf-8") as f:
                declared = {k: v for k, v in json.load(f).items() if k.startswith("pooling_mode_") and v}
            if set(declared) != {"pooling_mode_mean_tokens"}:
                modes = ", ".join(k.removeprefix("pooling_mode_") for k in declared) or "none"
                raise UsageError(
                    f"model {self.name_or_path!r} declares pooling {modes} (1_Pooling/config.json); "
                    "this job applies E5's mean pooling and would produce other vectors"
                )
        st_config = os.path.join(folder, "config_sentence_transformers.json")
        if os.path.isfile(st_config):
            with open(st_config, encoding="utf-8") as f:
                prompts = json.load(f).get("prompts") or {}
            if prefix_name in prompts and prompts[prefix_name] != prefix_text:
                raise UsageError(
                    f"model {self.name_or_path!r} declares the {prefix_name} prompt "
                    f"{prompts[prefix_name]!r} (config_sentence_transformers.json), not {prefix_text!r}"
                )

    def info(self) -> ModelInfo:
        """Read and check config.json (driver side, before the pipeline starts)."""
        import json

        if os.path.exists(self.name_or_path) and not self.is_local:
            raise UsageError(f"--model {self.name_or_path!r} is a file, expected a folder or a Hub id")
        if self.is_local and not os.path.isfile(os.path.join(self.name_or_path, "config.json")):
            raise UsageError(f"model folder {self.name_or_path!r} has no config.json")
        try:
            with open(os.path.join(self.local_path(), "config.json"), encoding="utf-8") as f:
                return ModelInfo.from_config(self.name_or_path, json.load(f))
        except E5EmbedError:
            raise
        except Exception as e:
            raise step_failed(f"cannot read model {self.name_or_path!r}", e) from e

    def load_tokenizer(self):
        """The model's fast (Rust) tokenizer; straight from tokenizer.json when there is one,
        which keeps transformers out of the tokenizer actors (faster start-up)."""
        path = os.path.join(self.local_path(), "tokenizer.json")
        if os.path.isfile(path):
            from tokenizers import Tokenizer

            return Tokenizer.from_file(path)
        from transformers import AutoTokenizer

        quiet_transformers()
        tokenizer = AutoTokenizer.from_pretrained(self.local_path(), use_fast=True)
        if not getattr(tokenizer, "is_fast", False):
            raise UsageError(f"model {self.name_or_path!r} has no fast tokenizer (tokenizer.json)")
        return tokenizer.backend_tokenizer

    def load_model(self, *, dtype: str, device: str):
        import torch
        from transformers import AutoModel

        if dtype not in ("float32", "float16", "bfloat16"):
            raise ValueError(f"compute dtype must be float32, float16 or bfloat16 (resolved), not {dtype!r}")
        quiet_transformers()
        model = AutoModel.from_pretrained(
            self.local_path(),
            dtype=getattr(torch, dtype),
            attn_implementation="sdpa",
            add_pooling_layer=False,
        )
        return model.to(device).eval()


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda was asked for but this worker has no CUDA device")
    return device


def resolve_dtype(dtype: str, device: str) -> str:
    """``auto``: bf16 on GPUs that have it, else fp16 on GPU; float32 on CPU."""
    if device == "cuda" and dtype == "bfloat16":
        import torch

        if not _native_bf16(torch):  # compute capability < 8.0 (T4, V100): the plan's profile was wrong
            logger.warning("this GPU has no bfloat16; encoding in float16")
            return "float16"
    if dtype != "auto":
        return dtype
    if device == "cuda":
        import torch

        return "bfloat16" if _native_bf16(torch) else "float16"
    return "float32"


def _native_bf16(torch) -> bool:
    """bf16 in hardware: ``is_bf16_supported()`` counts emulation by default (True on a T4 or V100,
    where bf16 runs many times slower than fp16)."""
    return bool(torch.cuda.is_bf16_supported(including_emulation=False))


def quiet_transformers() -> None:
    """Keep per-actor model loading out of the job's log (no load reports or bars)."""
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
