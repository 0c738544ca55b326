import gzip
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from pipeline.errors import UsageError
from pipeline.sources import FieldSpec, ShardDatasource, detect_format, list_shards, read_shards


def _read(folder, fields=FieldSpec(), skip=None, **kw):
    shards = list_shards([str(folder)], {}, **kw)
    tables = list(read_shards({}, shards, fields, 3, skip or {}))
    return pa.concat_tables(tables).to_pylist() if tables else []


def test_detect_format():
    assert detect_format("a/b.jsonl.gz") == ("jsonl", "gzip")
    assert detect_format("a/b.TXT.zst") == ("text", "zstd")
    assert detect_format("b.ndjson") == ("jsonl", None)
    assert detect_format("b.parquet") == ("parquet", None)
    assert detect_format("b.csv") == (None, None)
    assert detect_format("b.csv", "text") == ("text", None)


def test_every_format_and_compression(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "a.txt").write_text("first line\nsecond line\n")
    with gzip.open(tmp_path / "b.jsonl.gz", "wt") as f:
        f.write(json.dumps({"id": "x1", "text": "gz text"}) + "\n")
    (tmp_path / "sub" / "c.jsonl.zst").write_bytes(
        zstandard.ZstdCompressor().compress(json.dumps({"id": 7, "text": "zst text"}).encode() + b"\n"))
    pq.write_table(pa.table({"id": ["p1", None], "text": ["pq one", "pq two"]}), tmp_path / "d.parquet")
    (tmp_path / "_SUCCESS").write_text("")
    (tmp_path / "notes.csv").write_text("ignored")
    rows = _read(tmp_path)
    got = {(r["id"], r["text"]) for r in rows}
    assert got == {("a.txt:0", "first line"), ("a.txt:1", "second line"), ("x1", "gz text"),
                   ("7", "zst text"), ("p1", "pq one"), ("d.parquet:1", "pq two")}
    assert all(r["reject_reason"] is None for r in rows)
    assert {r["row"] for r in rows if r["source"].endswith("a.txt")} == {0, 1}


def test_derived_ids_are_stable_and_relative_to_the_input_root(tmp_path):
    (tmp_path / "in" / "deep").mkdir(parents=True)
    (tmp_path / "in" / "deep" / "s.txt").write_text("a\nb\n")
    first = [r["id"] for r in _read(tmp_path / "in")]
    second = [r["id"] for r in _read(tmp_path / "in")]
    assert first == second == ["deep/s.txt:0", "deep/s.txt:1"]


def test_title_joined_beir_style(tmp_path):
    (tmp_path / "t.jsonl").write_text(
        json.dumps({"id": 1, "title": "Title", "text": "body"}) + "\n" + json.dumps({"id": 2, "text": "no title"}) + "\n")
    rows = _read(tmp_path, FieldSpec(title_field="title"))
    assert [r["text"] for r in rows] == ["Title body", "no title"]


def test_custom_fields(tmp_path):
    (tmp_path / "t.jsonl").write_text(json.dumps({"doc_id": "A", "body": "hello"}) + "\n")
    rows = _read(tmp_path, FieldSpec(text_field="body", id_field="doc_id"))
    assert [(r["id"], r["text"]) for r in rows] == [("A", "hello")]


def test_bad_records_are_rejected_with_reasons_not_raised(tmp_path):
    lines = [
        json.dumps({"id": "ok", "text": "fine"}).encode(),
        b"{not json",
        json.dumps({"id": "m"}).encode(),
        json.dumps({"id": "n", "text": 5}).encode(),
        json.dumps({"id": "e", "text": "   "}).encode(),
        b'{"id": "u", "text": "\xff\xfe bad"}',
        b"[1, 2]",
        b"",
        json.dumps({"id": "emoji", "text": "caf\u00e9 \U0001F600 \u4e2d\u6587"}).encode(),
    ]
    (tmp_path / "bad.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    rows = _read(tmp_path)
    assert len(rows) == len(lines)  # every record accounted for
    reasons = {r["row"]: r["reject_reason"] for r in rows}
    assert reasons[0] is None and reasons[8] is None
    assert reasons[1].startswith("invalid JSON")
    assert reasons[2] == "missing text field 'text'"
    assert "not a string" in reasons[3]
    assert reasons[4] == "empty or whitespace-only text"
    assert reasons[5].startswith("invalid UTF-8")
    assert "not an object" in reasons[6]
    assert reasons[7] == "blank line"


def test_corrupt_compressed_shard_rejects_its_remainder(tmp_path):
    good = gzip.compress(b"".join(json.dumps({"text": f"t{i}"}).encode() + b"\n" for i in range(50)))
    (tmp_path / "c.jsonl.gz").write_bytes(good[: len(good) // 2] + b"garbage" * 10)
    (tmp_path / "fine.txt").write_text("still read\n")
    rows = _read(tmp_path)
    bad = [r for r in rows if r["reject_reason"]]
    assert len(bad) == 1 and bad[0]["reject_reason"].startswith("unreadable shard after row")
    assert any(r["text"] == "still read" for r in rows)


def test_empty_files_are_fine(tmp_path):
    (tmp_path / "empty.jsonl").write_text("")
    (tmp_path / "one.txt").write_text("x\n")
    assert [r["text"] for r in _read(tmp_path)] == ["x"]


def test_skip_ranges_drop_done_rows(tmp_path):
    (tmp_path / "s.txt").write_text("".join(f"line {i}\n" for i in range(10)))
    path = list_shards([str(tmp_path)], {})[0].path
    rows = _read(tmp_path, skip={path: [(0, 3), (5, 9)]})
    assert [r["row"] for r in rows] == [3, 4, 9]


def test_glob_and_list_inputs(tmp_path):
    for name in ("a.txt", "b.txt", "c.jsonl"):
        (tmp_path / name).write_text('{"text": "j"}\n' if name.endswith("jsonl") else "t\n")
    assert len(list_shards([str(tmp_path / "*.txt")], {})) == 2
    assert len(list_shards([str(tmp_path / "a.txt"), str(tmp_path / "c.jsonl")], {})) == 2


def test_missing_input_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError, match="input not found"):
        list_shards([str(tmp_path / "nope")], {})
    (tmp_path / "x.bin").write_text("?")
    with pytest.raises(UsageError, match="--input-format"):
        list_shards([str(tmp_path / "x.bin")], {})


def test_datasource_makes_one_task_per_large_shard(tmp_path):
    for i in range(3):
        (tmp_path / f"{i}.txt").write_text("a\n")
    source = ShardDatasource(shards=list_shards([str(tmp_path)], {}))
    assert len(source.get_read_tasks(3)) == 3
    assert len(source.get_read_tasks(1)) == 1
