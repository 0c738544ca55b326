"""Which outputs may lend their vectors (--reuse-from): only those made the same way, with text_hash."""

import json

import pytest

from pipeline.config import JobConfig
from pipeline.errors import UsageError
from pipeline.io.listing import list_shards
from pipeline.io.storage import Storage
from pipeline.ledger.identity import VECTOR_KEYS
from pipeline.ledger.output import OutputState
from pipeline.ledger.reuse import reuse_from_pool
from pipeline.stages.model import offline_info

pytestmark = pytest.mark.unit


def _output(tmp_path, name, **kw):
    (tmp_path / "in").mkdir(exist_ok=True)
    (tmp_path / "in" / "a.txt").write_text("x\n")
    config = JobConfig(inputs=(str(tmp_path / "in"),), output=str(tmp_path / name), model="intfloat/e5-small-v2", **kw)
    meta = config.output_settings().metadata(offline_info("intfloat/e5-small-v2"), "git:" + "a" * 40)
    OutputState(Storage(config.output)).prepare(config.output_settings(), meta, list_shards(config.inputs, {}))
    return config, meta


def test_a_reuse_source_made_before_text_hash_or_with_other_settings_is_refused(tmp_path):
    config, meta = _output(tmp_path, "old")
    assert reuse_from_pool([config.output], str(tmp_path / "new"), {}, meta, VECTOR_KEYS) == []  # compatible, empty
    with pytest.raises(UsageError, match="is the --output itself"):
        reuse_from_pool([config.output], config.output, {}, meta, VECTOR_KEYS)
    _, other = _output(tmp_path, "other", max_length=128)
    with pytest.raises(UsageError, match=r"other settings \(max_length: 512 \(this run: 128\)"):
        reuse_from_pool([config.output], str(tmp_path / "new"), {}, other, VECTOR_KEYS)
    manifest = tmp_path / "old" / "_manifest.json"
    made = json.loads(manifest.read_text())
    made["metadata"].pop("text_hash")  # as outputs were written before rows carried one
    manifest.write_text(json.dumps(made))
    with pytest.raises(UsageError, match="made before rows carried a text_hash"):
        reuse_from_pool([config.output], str(tmp_path / "new"), {}, meta, VECTOR_KEYS)
    with pytest.raises(UsageError, match="not an e5-embed output"):
        reuse_from_pool([str(tmp_path / "in")], str(tmp_path / "new"), {}, meta, VECTOR_KEYS)


def test_text_hash_is_what_the_model_reads():
    import hashlib

    from pipeline.io.text_hash import text_hash, text_hashes

    assert text_hash("passage: ", "hello") == hashlib.blake2b(b"passage: hello", digest_size=16).digest()
    assert text_hash("passage: ", "hello") != text_hash("query: ", "hello")
    assert text_hash("passage: ", "b", title="a") != text_hash("passage: ", "ab", title="")
    column = text_hashes("q: ", ["x", None])
    assert column.type.byte_width == 16 and column.null_count == 1


def test_the_chunked_fingerprint_is_unambiguous_whatever_the_title_and_text_hold():
    """The NUL join made ("data", "base\0systems") and ("data\0base", "systems") one fingerprint."""
    import hashlib

    from pipeline.io.text_hash import text_hash

    pairs = [("data", "base\0systems"), ("data\0base", "systems"), ("", "data\0base\0systems"), ("data\0", "base")]
    hashes = {text_hash("passage: ", text, title) for title, text in pairs}
    assert len(hashes) == len(pairs)
    assert text_hash("passage: ", "x", "t") != text_hash("passage: t", "x", "")  # the prefix is a part too
    # the truncating scheme is unchanged: recomputable downstream from the joined text alone
    assert text_hash("passage: ", "hello") == hashlib.blake2b(b"passage: hello", digest_size=16).digest()


def test_outputs_of_the_first_chunked_scheme_are_refused_by_name_and_truncating_ones_still_read():
    from pipeline.io import text_hash
    from pipeline.ledger.identity import identity, refuse_legacy_chunked

    legacy = {"text_hash": text_hash.LEGACY_SCHEME}
    refuse_legacy_chunked(legacy, "o was made")  # a truncating output: the same function, still read
    assert identity(legacy, "text_hash") == text_hash.SCHEME
    with pytest.raises(UsageError, match="first chunked text_hash scheme.*--overwrite"):
        refuse_legacy_chunked({**legacy, "chunking": {"tokens": 64}}, "o was made")
    assert identity({**legacy, "chunking": {"tokens": 64}}, "text_hash") != text_hash.CHUNKED_SCHEME
