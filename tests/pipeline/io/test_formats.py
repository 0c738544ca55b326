"""The ``Format`` protocol, held by every registered format: the same rows from any start row, a
count only where the file stores it, one format per extension, and an unknown name refused with
the valid ones."""

import gzip
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.errors import UsageError
from pipeline.io.formats import FORMATS, INPUT_FORMATS, detect_format, format_of
from pipeline.io.listing import list_shards
from pipeline.io.records import FieldSpec
from pipeline.io.shard import Shard
from pipeline.io.storage import Storage

pytestmark = pytest.mark.unit

TEXTS = ["first", "", "third \u00e9", "fourth"]  # the empty one is a reject in every format


def _text(path):
    path.with_suffix(".txt").write_text("\n".join(TEXTS) + "\n")


def _jsonl(path):
    with gzip.open(path.with_suffix(".jsonl.gz"), "wt") as f:  # compressed: the format never sees it
        f.writelines(json.dumps({"id": f"r{i}", "text": t}) + "\n" for i, t in enumerate(TEXTS))


def _parquet(path):
    pq.write_table(pa.table({"id": [f"r{i}" for i in range(len(TEXTS))], "text": TEXTS}), path.with_suffix(".parquet"))


WRITERS = {"text": _text, "jsonl": _jsonl, "parquet": _parquet}  # a new format adds its writer here


def _write(folder, name):
    WRITERS[name](folder / "part")
    (shard,) = list_shards([str(folder)], {})
    return shard


def test_every_registered_format_is_tested():
    assert set(WRITERS) == set(FORMATS)


@pytest.mark.parametrize("name", sorted(FORMATS))
def test_every_format_yields_every_row_from_any_start(tmp_path, name):
    shard = _write(tmp_path, name)
    fmt = format_of(shard)
    assert shard.format == fmt.name == name
    storage = Storage(shard.uri, {})
    whole = list(fmt.rows(storage, shard, FieldSpec(), 0, 1 << 20))
    assert [row for row, _ in whole] == list(range(len(TEXTS)))
    assert [r["text"] for _, r in whole] == ["first", None, "third \u00e9", "fourth"]
    assert [r["reject_reason"] is not None for _, r in whole] == [False, True, False, False]
    later = list(fmt.rows(storage, shard, FieldSpec(), 2, 1 << 20))
    assert [r for _, r in later[:2]] == [None, None] and later[2:] == whole[2:]
    # over the record limit: a reject with its reason, in every format
    small = list(fmt.rows(storage, shard, FieldSpec(), 0, 5))
    assert "larger than --max-record-bytes" in small[2][1]["reject_reason"]
    # a count only where the file stores it, and then exact
    assert fmt.count(storage, shard) == (len(TEXTS) if fmt.counts_rows else None)


def test_one_format_per_extension_and_the_flag_lists_them_all():
    extensions = [e for f in FORMATS.values() for e in f.extensions]
    assert len(extensions) == len(set(extensions))
    assert set(INPUT_FORMATS) == {"auto", "text", "jsonl", "parquet"}
    assert detect_format("x/A.NDJSON.zst") == ("jsonl", "zstd")


def test_an_unknown_format_is_refused_with_the_valid_ones():
    shard = Shard("p/x.csv", "x.csv", 3, "csv", None)
    with pytest.raises(UsageError, match=r"unknown input format 'csv'; valid: text, jsonl, parquet"):
        format_of(shard)
