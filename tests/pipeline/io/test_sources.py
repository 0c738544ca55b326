import gzip
import json
import random

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard
from fsspec.implementations.local import LocalFileSystem

from pipeline.backend.datasource import read_groups
from pipeline.errors import UsageError
from pipeline.io.formats import detect_format
from pipeline.io.listing import list_inputs, list_shards
from pipeline.io.records import FieldSpec
from pipeline.io.shard import Shard
from pipeline.io.sources import ShardReader, ShardReadError, read_shards
from pipeline.io.storage import Storage
from tests.rewrites import rewrite_keeping_size_and_mtime

pytestmark = pytest.mark.unit


def _read(folder, fields=None, skip=None, **kw):
    shards = list_shards([str(folder)], {}, **kw)
    tables = list(read_shards({}, shards, fields or FieldSpec(), 3, skip or {}))
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
        zstandard.ZstdCompressor().compress(json.dumps({"id": 7, "text": "zst text"}).encode() + b"\n")
    )
    pq.write_table(pa.table({"id": ["p1", None], "text": ["pq one", "pq two"]}), tmp_path / "d.parquet")
    (tmp_path / "_SUCCESS").write_text("")
    (tmp_path / "notes.csv").write_text("ignored")
    with pytest.raises(
        UsageError, match=r"1 input file\(s\) of unknown format: .*notes\.csv; .*--ignore-unknown-files"
    ):
        list_shards([str(tmp_path)], {})  # not skipped with exit 0 while the output is called complete
    listing = list_inputs([str(tmp_path)], {}, ignore_unknown=True)
    assert [p.rsplit("/", 1)[1] for p in listing.ignored] == ["notes.csv"]
    rows = _read(tmp_path, ignore_unknown=True)
    got = {(r["id"], r["text"]) for r in rows}
    assert got == {
        ("a.txt:0", "first line"),
        ("a.txt:1", "second line"),
        ("x1", "gz text"),
        ("7", "zst text"),
        ("p1", "pq one"),
        ("d.parquet:1", "pq two"),
    }
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
        json.dumps({"id": 1, "title": "Title", "text": "body"})
        + "\n"
        + json.dumps({"id": 2, "text": "no title"})
        + "\n"
    )
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
        json.dumps({"id": "emoji", "text": "caf\u00e9 \U0001f600 \u4e2d\u6587"}).encode(),
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


def _local(filesystem):
    """A Storage over an injected (possibly flaky) local filesystem."""
    return Storage("/", filesystem=filesystem)


def _reader(folder, name, **kw):
    shard = next(s for s in list_shards([str(folder)], {}) if s.path.endswith(name))
    return ShardReader(_local(LocalFileSystem()), shard, FieldSpec(), **kw)


@pytest.mark.parametrize("compress", ["gzip", "zstd"])
def test_cut_shard_keeps_what_decodes_and_reports_its_remainder_not_a_record(tmp_path, compress):
    """A shard cut to 20% of its bytes: the decodable rows are records; the rest is a remainder
    with an unknown row count (not one 'rejected record'), so the job can refuse to call it complete."""
    rng = random.Random(0)  # text that compresses like prose, over several zstd blocks
    words = ["".join(rng.choice("abcdefghij") for _ in range(rng.randint(2, 9))) for _ in range(500)]
    raw = b"".join(
        json.dumps({"id": i, "text": " ".join(rng.choices(words, k=30))}).encode() + b"\n" for i in range(10000)
    )
    data = gzip.compress(raw) if compress == "gzip" else zstandard.ZstdCompressor().compress(raw)
    name = "c.jsonl.gz" if compress == "gzip" else "c.jsonl.zst"
    (tmp_path / name).write_bytes(data[: len(data) // 5])
    reader = _reader(tmp_path, name)
    records = list(reader)
    assert 0 < len(records) < 10000 and all(r["reject_reason"] is None for r in records)
    assert [r["row"] for r in records] == list(range(len(records)))
    assert reader.rows == len(records) and "truncated" in reader.remainder


def test_garbage_after_a_gzip_header_is_a_remainder(tmp_path):
    (tmp_path / "g.jsonl.gz").write_bytes(b"\x1f\x8b\x08\x00garbage-not-gzip")
    reader = _reader(tmp_path, "g.jsonl.gz")
    assert list(reader) == [] and reader.rows == 0 and reader.remainder.startswith("gzip")


class _FlakyFS(LocalFileSystem):
    """A real local filesystem whose reads fail with a connection reset every few reads."""

    def __init__(self, fail_reads: set[int], error: type[OSError] = ConnectionResetError):
        super().__init__()
        self.fail_reads, self.error, self.reads = fail_reads, error, 0

    def open(self, path, mode="rb", **kw):
        f = super().open(path, mode, **kw)
        fs = self
        real = f.read

        def read(n=-1):
            fs.reads += 1
            if fs.reads in fs.fail_reads:
                raise fs.error("connection reset by peer")
            return real(n)

        f.read = read
        return f


def test_transient_read_errors_reopen_and_continue_without_losing_or_repeating_rows(tmp_path, monkeypatch):
    monkeypatch.setattr("pipeline.io.streams.READ_CHUNK", 64)
    (tmp_path / "s.jsonl").write_text("".join(json.dumps({"id": i, "text": f"text {i}"}) + "\n" for i in range(200)))
    shard = list_shards([str(tmp_path)], {})[0]
    reader = ShardReader(_local(_FlakyFS({5, 40, 41})), shard, FieldSpec(), backoff_s=0)
    rows = [r["row"] for r in reader]
    assert rows == list(range(200)) and reader.rows == 200 and reader.remainder is None


def test_persistent_io_errors_fail_the_shard_by_name(tmp_path):
    (tmp_path / "s.jsonl").write_text(json.dumps({"text": "x"}) + "\n")
    shard = list_shards([str(tmp_path)], {})[0]
    reader = ShardReader(_local(_FlakyFS(set(range(1, 100)), TimeoutError)), shard, FieldSpec(), backoff_s=0)
    with pytest.raises(ShardReadError, match="s.jsonl.*after 4 attempt"):
        list(reader)


def test_a_shard_changed_since_listing_is_refused(tmp_path):
    (tmp_path / "s.jsonl").write_text(json.dumps({"text": "x"}) + "\n")
    shard = list_shards([str(tmp_path)], {})[0]
    (tmp_path / "s.jsonl").write_text(json.dumps({"text": "other and longer"}) + "\n")
    with pytest.raises(ShardReadError, match="changed after it was listed"):
        list(ShardReader(_local(LocalFileSystem()), shard, FieldSpec()))


@pytest.mark.parametrize("how", ["cp -p", "rsync -a"])
def test_a_rewrite_that_keeps_size_and_mtime_changes_the_version(tmp_path, how):
    """Size + mtime is not a version: ``cp -p`` and ``rsync -a`` keep both over new content."""
    (tmp_path / "s.jsonl").write_text(json.dumps({"text": "1234"}) + "\n")
    (before,) = list_shards([str(tmp_path)], {})
    rewrite_keeping_size_and_mtime(tmp_path / "s.jsonl", how)
    (after,) = list_shards([str(tmp_path)], {})
    assert after.size == before.size and after.fingerprint != before.fingerprint
    with pytest.raises(ShardReadError, match="changed after it was listed"):
        list(ShardReader(_local(LocalFileSystem()), before, FieldSpec()))
    assert list_shards([str(tmp_path)], {})[0].fingerprint == after.fingerprint  # stable while untouched


def test_a_store_without_versions_is_said_not_silent(tmp_path):
    """An HTTP server that sends neither ETag nor Last-Modified: the shard is listed unversioned
    (the job warns and records it), and a change of size is still seen."""
    import http.server

    from pipeline.io.listing import unversioned
    from tests.httpserve import serving

    (tmp_path / "s.jsonl").write_text(json.dumps({"text": "xxxx"}) + "\n")

    class Bare(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a, **kw):
            super().__init__(*a, directory=str(tmp_path), **kw)

        def send_header(self, key, value):
            if key.lower() not in ("last-modified", "etag"):
                super().send_header(key, value)

        def log_message(self, *a):
            pass

    with serving(Bare) as base:
        (shard,) = list_shards([f"{base}/s.jsonl"], {})
        assert shard.version == "" and unversioned([shard]) == [shard]
        assert [r["text"] for r in _read_shard(shard)] == ["xxxx"]
        (tmp_path / "s.jsonl").write_text(json.dumps({"text": "longer now"}) + "\n")
        with pytest.raises(ShardReadError, match="changed after it was listed"):
            _read_shard(shard)


def _read_shard(shard):
    return list(ShardReader(Storage(shard.uri, {}), shard, FieldSpec()))


def test_hostile_records_are_rejected_one_by_one(tmp_path):
    lines = [
        json.dumps({"id": "a", "text": "fine"}).encode(),
        b"[" * 100_000 + b"]" * 100_000,  # RecursionError in json
        b'{"id": "n", "text": "x", "v": ' + b"9" * 5000 + b"}",  # ValueError: int digits limit
        b'{"id": "big", "text": "' + b"y" * 400_000 + b'"}',  # over --max-record-bytes
        json.dumps({"id": "z", "text": "also fine"}).encode(),
    ]
    (tmp_path / "h.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    reader = _reader(tmp_path, "h.jsonl", max_record_bytes=300_000)
    rows = list(reader)
    assert [r["row"] for r in rows] == [0, 1, 2, 3, 4] and reader.rows == 5
    assert [r["id"] for r in rows if not r["reject_reason"]] == ["a", "z"]
    reasons = [r["reject_reason"] for r in rows[1:4]]
    assert reasons[0].startswith("invalid JSON: RecursionError") and reasons[1].startswith("invalid JSON: ValueError")
    assert reasons[2].startswith("record larger than --max-record-bytes")


def test_cr_only_line_ends_and_a_utf8_bom(tmp_path):
    (tmp_path / "mac.txt").write_bytes("\ufefffirst\rsecond\r\nthird\r".encode())
    assert [(r["row"], r["text"]) for r in _read(tmp_path)] == [(0, "first"), (1, "second"), (2, "third")]
    (tmp_path / "mac.txt").unlink()
    (tmp_path / "b.jsonl").write_bytes(b"\xef\xbb\xbf" + json.dumps({"id": "x", "text": "bom"}).encode() + b"\n")
    assert [(r["id"], r["reject_reason"]) for r in _read(tmp_path)] == [("x", None)]


def test_paths_with_glob_characters_are_literal(tmp_path):
    (tmp_path / "o[ab]").mkdir()
    (tmp_path / "o[ab]" / "x.txt").write_text("literal\n")
    (tmp_path / "oa").mkdir()
    (tmp_path / "oa" / "y.txt").write_text("other folder\n")
    shards = list_shards([str(tmp_path / "o[ab]")], {})
    assert [s.relpath for s in shards] == ["x.txt"]  # the folder named 'o[ab]', not 'oa'


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


def test_a_file_named_by_an_input_is_read_whatever_its_name(tmp_path):
    """Side-file skipping (`_`, `.`) applies inside listed folders only, never to a file the operator named."""
    (tmp_path / "_part-0.jsonl").write_text('{"id": "u", "text": "underscore"}\n')
    (tmp_path / ".hidden.txt").write_text("dot\n")
    (tmp_path / "kept.txt").write_text("kept\n")
    assert [s.relpath for s in list_shards([str(tmp_path)], {})] == ["kept.txt"]  # a folder: side files skipped
    named = list_shards([str(tmp_path / "_part-0.jsonl"), str(tmp_path / ".hidden.txt")], {})
    assert sorted(s.relpath for s in named) == [".hidden.txt", "_part-0.jsonl"]


def test_derived_ids_are_unique_across_inputs_and_independent_of_their_order(tmp_path):
    """Two day folders that both hold part-0.txt: their derived ids must not collide."""
    for day in ("day-1", "day-2"):
        (tmp_path / day).mkdir()
        (tmp_path / day / "part-0.txt").write_text(f"{day} line\n")
    forward = [str(tmp_path / "day-1"), str(tmp_path / "day-2")]

    def ids(inputs):
        shards = list_shards(inputs, {})
        return [r["id"] for t in read_shards({}, shards, FieldSpec(), 10, {}) for r in t.to_pylist()]

    assert ids(forward) == ids(forward[::-1]) == ["day-1/part-0.txt:0", "day-2/part-0.txt:0"]
    assert ids(forward[:1]) == ["part-0.txt:0"]  # one input: relative to it, as before


def test_the_same_file_reached_twice_is_one_shard(tmp_path):
    (tmp_path / "corpus").mkdir()
    (tmp_path / "corpus" / "a.txt").write_text("one\ntwo\n")
    (tmp_path / "alias").symlink_to(tmp_path / "corpus")
    inputs = [str(tmp_path / "alias"), str(tmp_path / "corpus"), str(tmp_path / "corpus" / "a.txt")]
    for order in (inputs, inputs[::-1]):
        [shard] = list_shards(order, {})
        assert shard.path.endswith("alias/a.txt")  # the same name whatever the order of the flags


def test_missing_input_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError, match="input not found"):
        list_shards([str(tmp_path / "nope")], {})
    (tmp_path / "x.bin").write_text("?")
    with pytest.raises(UsageError, match="--input-format"):
        list_shards([str(tmp_path / "x.bin")], {})


def test_a_shard_replaced_between_a_transient_error_and_the_retry_is_refused(tmp_path, monkeypatch):
    """The retry re-opens the shard: it must be the same object whose first rows were already read."""
    monkeypatch.setattr("pipeline.io.streams.READ_CHUNK", 64)
    path = tmp_path / "s.jsonl"
    path.write_text("".join(json.dumps({"id": i, "text": f"text {i}"}) + "\n" for i in range(100)))
    shard = list_shards([str(tmp_path)], {})[0]

    class ReplacedOnError(_FlakyFS):
        def open(self, p, mode="rb", **kw):
            f = super().open(p, mode, **kw)
            read = f.read

            def replaced_then_reset(n=-1):
                if self.reads == 3:
                    path.write_text("".join(json.dumps({"id": f"new{i}", "text": "other"}) + "\n" for i in range(120)))
                return read(n)

            f.read = replaced_then_reset
            return f

    with pytest.raises(ShardReadError, match="changed after it was listed"):
        list(ShardReader(_local(ReplacedOnError({4})), shard, FieldSpec(), backoff_s=0))


def _reference_reason(line: str) -> str | None:
    """What json.loads says about one line: the reject reason the fast parse must reproduce."""
    if not line.strip():
        return "blank line"
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as e:
        return f"invalid JSON: {e.msg} at column {e.colno}"
    except ValueError as e:
        return f"invalid JSON: ValueError: {str(e)[:200]}"
    if not isinstance(obj, dict):
        return f"JSON record is not an object (got {type(obj).__name__})"
    text = obj.get("text")
    if text is None:
        return "missing text field 'text'"
    if not isinstance(text, str):
        return f"text field 'text' is not a string (got {type(text).__name__})"
    if not text.strip():
        return "empty or whitespace-only text"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return "text is not valid Unicode (lone surrogate)"
    return None


def test_the_fast_json_parse_rejects_exactly_what_json_loads_rejects(tmp_path):
    lines = [
        '{"text": "plain"}',
        '   {"text": "leading blanks"}',
        '{"text": "trailing blanks"}   \t',
        '{"text": "a"} {"text": "b"}',  # two values on one line
        '{"text": "a"}x',
        '{"text": "\\ud800 lone surrogate"}',
        '{"text": "caf\\u00e9 fine"}',
        '{"text": "\\u00a0\\u2003"}',  # whitespace-only beyond ASCII
        '{"text": ""}',
        '{"text": NaN}',
        '{"text": "x", "text": 5}',  # a duplicate key: the last one wins, as in json.loads
        "[1, 2]",
        '"just a string"',
        "\t ",
        '{"text": "unterminated',
        '\ufeff{"text": "BOM after row 0"}',
        '{"text": "tab\\tinside"}',
        '{"text": "big number", "n": ' + "9" * 5000 + "}",  # ValueError: int digits limit
        '{"text": "huge float", "n": 1e999}',  # inf, as json.loads reads it
    ]
    (tmp_path / "f.jsonl").write_text("x\n" + "\n".join(lines) + "\n", encoding="utf-8")
    rows = _read(tmp_path)
    assert len(rows) == len(lines) + 1
    assert [r["reject_reason"] for r in rows[1:]] == [_reference_reason(line) for line in lines]
    assert rows[1]["text"] == "plain" and rows[3]["text"] == "trailing blanks"


@pytest.mark.parametrize(
    ("shards", "size", "parallelism", "tasks"),
    [
        (200, 300 << 10, 200, 16),  # many small shards: a task's Ray overhead outweighs a shard's read
        (3, 10, 3, 3),  # a few tiny shards keep their parallelism
        (1000, 1 << 20, 200, 125),  # 1 GB: tasks of 8 MiB
        (100, 100 << 20, 200, 100),  # big shards: one task each
        (10, 1 << 30, 2, 10),  # never more than 64 MiB a task unless one shard is larger
    ],
)
def test_read_groups_size_tasks_by_bytes(shards, size, parallelism, tasks):
    listed = [Shard(f"s{i:05d}", f"s{i:05d}", size, "jsonl", None) for i in range(shards)]
    groups = read_groups(listed, parallelism)
    assert len(groups) == tasks
    assert [s for g in groups for s in g] == listed  # every shard once, in order
    sizes = [sum(s.size for s in g) for g in groups]
    assert max(sizes) - min(sizes) <= size  # about equal bytes per task


def test_side_files_skipped_inside_an_input_folder_are_said_and_listed(tmp_path, caplog):
    """`_`-prefixed shards and folders were skipped with exit 0 and no word (issue 38, F7)."""
    from pipeline.io.listing import list_inputs

    (tmp_path / "_part-0.jsonl").write_text('{"id": "u", "text": "underscore"}\n')
    (tmp_path / "_staging").mkdir()
    (tmp_path / "_staging" / "part-1.jsonl").write_text('{"id": "s", "text": "staged"}\n')
    (tmp_path / "kept.txt").write_text("kept\n")
    with caplog.at_level("WARNING"):
        listing = list_inputs([str(tmp_path)], {})
    assert [s.relpath for s in listing.shards] == ["kept.txt"]
    assert [p.rsplit("/", 2)[-1] for p in listing.side_files] == ["_part-0.jsonl", "part-1.jsonl"]
    assert "skipped 2 file(s) under `_`/`.` names" in caplog.text
    (tmp_path / "kept.txt").unlink()
    with pytest.raises(UsageError, match=r"no input files found .*only 2 side file\(s\)"):
        list_inputs([str(tmp_path)], {})


def test_max_record_bytes_applies_to_parquet_input(tmp_path):
    """A 300 MB text in a Parquet shard was embedded (--max-record-bytes applied to line formats
    only; issue 38, F3). Now it is a reject with that reason, its text never made a Python string."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipeline.io.listing import list_shards
    from pipeline.io.records import FieldSpec
    from pipeline.io.sources import ShardReader
    from pipeline.io.storage import Storage

    big = "word " * 50_000  # 250 KB
    pq.write_table(
        pa.table({"id": ["a", "big", "c"], "text": ["small one", big, "small two"], "title": ["t", "t", "u" * 100]}),
        tmp_path / "p.parquet",
    )
    [shard] = list_shards([str(tmp_path)], {})
    fields = FieldSpec(title_field="title")
    rows = list(ShardReader(Storage(str(tmp_path)), shard, fields, max_record_bytes=64 * 1024))
    assert [r["reject_reason"] for r in rows[:1] + rows[2:]] == [None, None]
    assert rows[1]["text"] is None and rows[1]["reject_reason"] == (
        f"record larger than --max-record-bytes ({len(big) + 1} > {64 * 1024} bytes)"
    )
    tight = list(ShardReader(Storage(str(tmp_path)), shard, fields, max_record_bytes=100))
    assert [r["reject_reason"] is None for r in tight] == [True, False, False]  # the title counts too


class _ShortFS(LocalFileSystem):
    """A real local filesystem whose first ``short_opens`` opens end early (EOF after ``cut`` bytes),
    as a ranged GET answered 206 with an empty body does."""

    def __init__(self, short_opens: int, cut: int):
        super().__init__()
        self.short_opens, self.cut, self.opens = short_opens, cut, 0

    def open(self, path, mode="rb", **kw):
        f = super().open(path, mode, **kw)
        self.opens += 1
        if self.opens > self.short_opens:
            return f
        real, given = f.read, [0]

        def read(n=-1):
            if given[0] >= self.cut:
                return b""
            data = real(min(n, self.cut - given[0]) if n and n > 0 else self.cut - given[0])
            given[0] += len(data)
            return data

        f.read = read
        return f


@pytest.mark.parametrize("compressed", [False, True])
def test_a_short_read_is_retried_never_taken_as_the_end(tmp_path, monkeypatch, compressed):
    """One answer cut short (issue 38, F1): taken as end of file, it lost the rest of the shard and
    embedded a cut line as its prefix, under _SUCCESS. Bytes read are compared with the listed size:
    a short read is transient (re-opened, every row once, no prefix); a store that keeps cutting
    fails the shard by name."""
    import gzip

    monkeypatch.setattr("pipeline.io.streams.READ_CHUNK", 64)
    lines = "".join(json.dumps({"id": i, "text": f"text number {i}"}) + "\n" for i in range(100)).encode()
    name = "s.jsonl.gz" if compressed else "s.jsonl"
    (tmp_path / name).write_bytes(gzip.compress(lines) if compressed else lines)
    shard = list_shards([str(tmp_path)], {})[0]
    cut = shard.size // 2 + 7  # mid-line (mid-stream when compressed)
    rows = list(ShardReader(_local(_ShortFS(1, cut)), shard, FieldSpec(), backoff_s=0))
    assert [r["row"] for r in rows] == list(range(100))
    assert [r["text"] for r in rows] == [f"text number {i}" for i in range(100)]  # no cut line as a record
    with pytest.raises(ShardReadError, match=r"s\.jsonl.*after 4 attempt.*ended early"):
        list(ShardReader(_local(_ShortFS(99, cut)), shard, FieldSpec(), backoff_s=0))


@pytest.mark.parametrize("name", ["ClientPayloadError", "FlexibleChecksumError"])
def test_a_body_cut_mid_transfer_or_a_failed_checksum_is_retried(tmp_path, name):
    """aiohttp's ClientPayloadError and botocore's FlexibleChecksumError are not OSErrors: the shard
    reader's retries never applied to them, so one short fault failed the job (issue 38, F4)."""
    error = type(name, (Exception,), {})  # the library's class, by its name: the one classification's key
    (tmp_path / "s.jsonl").write_text("".join(json.dumps({"id": i, "text": f"t {i}"}) + "\n" for i in range(50)))
    shard = list_shards([str(tmp_path)], {})[0]
    flaky = _FlakyFS({1}, error)
    rows = [r["row"] for r in ShardReader(_local(flaky), shard, FieldSpec(), backoff_s=0)]
    assert rows == list(range(50))
