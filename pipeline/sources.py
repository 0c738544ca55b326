"""Reading sharded text: shard discovery and a Ray Data datasource that parses
every record into ``schemas.RECORDS`` without ever failing on one bad record.

Ray's built-in ``read_json``/``read_text`` stop the whole job on one broken line
and don't expose row numbers, which stable ids and exactly-once resume need, so
shards are parsed here, one read task per shard (or a few small ones).
"""

from __future__ import annotations

import gzip
import io
import json
import logging
import posixpath
import zlib
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator, Mapping, Sequence

import pyarrow as pa
import pyarrow.parquet as pq
from ray.data.block import BlockMetadata
from ray.data.datasource import Datasource, ReadTask

from pipeline import schemas
from pipeline.errors import UsageError
from pipeline.storage import Storage, glob_root, is_glob

logger = logging.getLogger(__name__)

FORMAT_BY_EXTENSION = {".txt": "text", ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl", ".parquet": "parquet"}
COMPRESSION_BY_EXTENSION = {".gz": "gzip", ".zst": "zstd", ".zstd": "zstd"}
TARGET_BYTES_PER_READ_TASK = 64 << 20


@dataclass(frozen=True)
class Shard:
    path: str  # filesystem path as fsspec names it (bucket/key for S3)
    relpath: str  # relative to the input root: the stable part of derived ids
    size: int
    format: str
    compression: str | None
    protocol: str = "file"

    @property
    def uri(self) -> str:
        return f"{self.protocol}://{self.path}"


@dataclass(frozen=True, kw_only=True)
class FieldSpec:
    text_field: str = "text"
    id_field: str = "id"
    title_field: str | None = None


def detect_format(path: str, override: str = "auto") -> tuple[str | None, str | None]:
    """(format, compression) from the file name; format None when unknown."""
    name = posixpath.basename(path).lower()
    stem, ext = posixpath.splitext(name)
    compression = COMPRESSION_BY_EXTENSION.get(ext)
    if compression:
        ext = posixpath.splitext(stem)[1]
    fmt = override if override != "auto" else FORMAT_BY_EXTENSION.get(ext)
    return fmt, compression


def _is_side_file(path: str) -> bool:
    return any(part.startswith(("_", ".")) for part in path.split("/") if part)


def list_shards(inputs: Sequence[str], storage_options: Mapping[str, Any], input_format: str = "auto") -> list[Shard]:
    """Expand folders/prefixes, globs and files into a sorted, de-duplicated shard list."""
    shards: dict[str, Shard] = {}
    for uri in inputs:
        storage = Storage(uri, storage_options)
        fs, path = storage.fs, storage.root
        try:
            single_file = False
            if is_glob(path):
                root = glob_root(path)
                found = {p: info for p, info in fs.glob(path, detail=True).items() if info.get("type") == "file"}
            elif fs.isdir(path):
                root = path
                found = fs.find(path, detail=True)
            elif fs.isfile(path):
                single_file = True
                root = posixpath.dirname(path)
                found = {path: fs.info(path)}
            else:
                raise UsageError(f"input not found: {uri}")
        except UsageError:
            raise
        except Exception as e:  # listing happens before any work: every failure here is the input's
            raise UsageError(f"cannot list input {uri}: {type(e).__name__}: {e}") from e
        skipped = 0
        for p, info in sorted(found.items()):
            rel = posixpath.relpath(p, root) if root else p
            if _is_side_file(rel):
                continue
            fmt, compression = detect_format(p, input_format)
            if fmt is None:
                if single_file:
                    raise UsageError(f"cannot tell the format of {uri}; pass --input-format text|jsonl|parquet")
                skipped += 1
                continue
            shards.setdefault(p, Shard(p, rel, int(info.get("size") or 0), fmt, compression, storage.protocol))
        if skipped:
            logger.warning("input %s: skipped %d file(s) with unknown extensions", uri, skipped)
    if not shards:
        raise UsageError(f"no input files found in {', '.join(inputs)}")
    return sorted(shards.values(), key=lambda s: s.path)


# --------------------------------------------------------------------------- parsing


class _BlockBuilder:
    """Accumulates records into RECORDS-schema tables of at most ``rows`` rows."""

    def __init__(self, rows: int):
        self.rows = rows
        self._cols: dict[str, list] = {name: [] for name in schemas.RECORDS.names}

    def add(self, *, id: str | None, source: str, row: int, reject_reason: str | None, text: str | None) -> None:
        self._cols["id"].append(id)
        self._cols["source"].append(source)
        self._cols["row"].append(row)
        self._cols["reject_reason"].append(reject_reason)
        self._cols["text"].append(text)

    def __len__(self) -> int:
        return len(self._cols["row"])

    def full(self) -> bool:
        return len(self) >= self.rows

    def take(self) -> pa.Table:
        table = pa.Table.from_pydict(self._cols, schema=schemas.RECORDS)
        self._cols = {name: [] for name in schemas.RECORDS.names}
        return table


def _open_stream(fs, shard: Shard) -> io.BufferedIOBase:
    raw = fs.open(shard.path, "rb")
    if shard.compression == "gzip":
        return io.BufferedReader(gzip.GzipFile(fileobj=raw))
    if shard.compression == "zstd":
        import zstandard

        return io.BufferedReader(zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True))
    return raw


def _corruption_errors() -> tuple[type[BaseException], ...]:
    errors: list[type[BaseException]] = [OSError, EOFError, zlib.error, gzip.BadGzipFile]
    try:
        import zstandard

        errors.append(zstandard.ZstdError)
    except ImportError:  # pragma: no cover - zstandard is a dependency
        pass
    return tuple(errors)


def _check_text(value: Any, field_name: str) -> tuple[str | None, str | None]:
    """(text, reject_reason)."""
    if value is None:
        return None, f"missing text field {field_name!r}"
    if not isinstance(value, str):
        return None, f"text field {field_name!r} is not a string (got {type(value).__name__})"
    if not value.strip():
        return None, "empty or whitespace-only text"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return None, "text is not valid Unicode (lone surrogate)"
    return value, None


def _record_from_json(obj: Any, fields: FieldSpec) -> tuple[str | None, str | None, str | None]:
    """(id, text, reject_reason) from one parsed JSON object or Parquet row."""
    if not isinstance(obj, dict):
        return None, None, f"JSON record is not an object (got {type(obj).__name__})"
    raw_id = obj.get(fields.id_field)
    record_id = None
    if isinstance(raw_id, bool) or not (raw_id is None or isinstance(raw_id, (str, int))):
        return None, None, f"id field {fields.id_field!r} is not a string or integer"
    if raw_id is not None:
        record_id = str(raw_id)
    if fields.text_field not in obj:
        return record_id, None, f"missing text field {fields.text_field!r}"
    text, reason = _check_text(obj[fields.text_field], fields.text_field)
    if reason is None and fields.title_field:
        title = obj.get(fields.title_field)
        if isinstance(title, str) and title:
            text = f"{title} {text}".strip()
    return record_id, text, reason


def _lines(stream: io.BufferedIOBase) -> Iterator[bytes]:
    for line in stream:
        yield line.rstrip(b"\r\n") if line.endswith(b"\n") else line


def parse_shard(fs, shard: Shard, fields: FieldSpec, skip: Sequence[tuple[int, int]] = ()) -> Iterator[dict]:
    """Yield one dict per input record: id, row, text, reject_reason. Never raises on bad data."""
    done = _RowFilter(skip)
    if shard.format == "parquet":
        yield from _parse_parquet(fs, shard, fields, done)
        return
    row = -1
    try:
        with _open_stream(fs, shard) as stream:
            for row, line in enumerate(_lines(stream)):
                if done(row):
                    continue
                yield _parse_line(line, row, shard, fields)
    except _corruption_errors() as e:
        # The remainder of a corrupt shard cannot be read; account for it with one reject.
        yield {
            "row": row + 1,
            "id": None,
            "text": None,
            "reject_reason": f"unreadable shard after row {row + 1}: {type(e).__name__}: {e}",
        }


def _parse_line(line: bytes, row: int, shard: Shard, fields: FieldSpec) -> dict:
    try:
        decoded = line.decode("utf-8")
    except UnicodeDecodeError as e:
        return {"row": row, "id": None, "text": None, "reject_reason": f"invalid UTF-8 at byte {e.start}"}
    if shard.format == "text":
        text, reason = _check_text(decoded, "line")
        return {"row": row, "id": None, "text": text, "reject_reason": reason}
    if not decoded.strip():
        return {"row": row, "id": None, "text": None, "reject_reason": "blank line"}
    try:
        obj = json.loads(decoded)
    except json.JSONDecodeError as e:
        return {"row": row, "id": None, "text": None, "reject_reason": f"invalid JSON: {e.msg} at column {e.colno}"}
    record_id, text, reason = _record_from_json(obj, fields)
    return {"row": row, "id": record_id, "text": text, "reject_reason": reason}


def _parse_parquet(fs, shard: Shard, fields: FieldSpec, done: "_RowFilter") -> Iterator[dict]:
    row = 0
    try:
        with fs.open(shard.path, "rb") as f:
            pf = pq.ParquetFile(f)
            names = set(pf.schema_arrow.names)
            wanted = [c for c in (fields.id_field, fields.text_field, fields.title_field) if c and c in names]
            if fields.text_field not in names:
                for row in range(pf.metadata.num_rows):
                    if not done(row):
                        yield {"row": row, "id": None, "text": None,
                               "reject_reason": f"parquet shard has no column {fields.text_field!r}"}
                return
            for batch in pf.iter_batches(columns=wanted, batch_size=8192):
                for obj in batch.to_pylist():
                    if not done(row):
                        record_id, text, reason = _record_from_json(obj, fields)
                        yield {"row": row, "id": record_id, "text": text, "reject_reason": reason}
                    row += 1
    except (pa.ArrowException, *_corruption_errors()) as e:
        yield {"row": row, "id": None, "text": None,
               "reject_reason": f"unreadable shard after row {row}: {type(e).__name__}: {e}"}


class _RowFilter:
    """True for rows inside already-done [start, end) ranges (sorted)."""

    def __init__(self, ranges: Sequence[tuple[int, int]]):
        self._ranges = sorted(ranges)
        self._i = 0

    def __call__(self, row: int) -> bool:
        while self._i < len(self._ranges) and self._ranges[self._i][1] <= row:
            self._i += 1
        return self._i < len(self._ranges) and self._ranges[self._i][0] <= row


def read_shards(storage_options: Mapping[str, Any], shards: Sequence[Shard], fields: FieldSpec,
                rows_per_block: int, skip: Mapping[str, Sequence[tuple[int, int]]]) -> Iterator[pa.Table]:
    builder = _BlockBuilder(rows_per_block)
    for shard in shards:
        fs = Storage(shard.uri, storage_options).fs
        for rec in parse_shard(fs, shard, fields, skip.get(shard.path, ())):
            builder.add(
                id=rec["id"] if rec["id"] is not None else f"{shard.relpath}:{rec['row']}",
                source=shard.path,
                row=rec["row"],
                reject_reason=rec["reject_reason"],
                text=rec["text"],
            )
            if builder.full():
                yield builder.take()
    if len(builder):
        yield builder.take()


@dataclass
class ShardDatasource(Datasource):
    """Ray Data datasource over a list of shards; one read task per shard or group of small ones."""

    shards: Sequence[Shard]
    storage_options: Mapping[str, Any] = field(default_factory=dict)
    fields: FieldSpec = field(default_factory=FieldSpec)
    rows_per_block: int = 4096
    skip: Mapping[str, Sequence[tuple[int, int]]] = field(default_factory=dict)

    def estimate_inmemory_data_size(self) -> int | None:
        return sum(s.size for s in self.shards) or None

    def get_name(self) -> str:
        return "ReadShards"

    def _groups(self) -> Iterable[list[Shard]]:
        group: list[Shard] = []
        size = 0
        for shard in self.shards:
            group.append(shard)
            size += shard.size
            if size >= TARGET_BYTES_PER_READ_TASK:
                yield group
                group, size = [], 0
        if group:
            yield group

    def get_read_tasks(self, parallelism: int, per_task_row_limit: int | None = None, data_context=None) -> list[ReadTask]:
        tasks = []
        groups = list(self._groups())
        # Keep at least ``parallelism`` tasks when there are enough shards.
        if len(groups) < min(parallelism, len(self.shards)):
            groups = [[s] for s in self.shards]
        for group in groups:
            args = (dict(self.storage_options), tuple(group), self.fields, self.rows_per_block,
                    {s.path: tuple(self.skip.get(s.path, ())) for s in group})
            meta = BlockMetadata(num_rows=None, size_bytes=sum(s.size for s in group) or None, exec_stats=None,
                                 input_files=tuple(s.path for s in group))
            tasks.append(ReadTask(lambda a=args: read_shards(*a), meta, schema=schemas.RECORDS,
                                  per_task_row_limit=per_task_row_limit))
        return tasks
