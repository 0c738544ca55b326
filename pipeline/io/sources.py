"""Reading sharded text: shard discovery and a reader that parses every record into
``schemas.RECORDS`` without ever failing on one bad record. Plain functions over files: the
Ray Data datasource (``pipeline.backend.datasource``) is a thin shell over ``read_shards``.

Ray's built-in ``read_json``/``read_text`` stop the whole job on one broken line
and don't expose row numbers, which stable ids and exactly-once resume need, so
shards are parsed here, one read task per shard (or a few small ones).
"""

from __future__ import annotations

import fnmatch
import gzip
import json
import logging
import os
import posixpath
import time
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.errors import JobError, UsageError
from pipeline.io import schemas
from pipeline.io.formats import FORMAT_BY_EXTENSION
from pipeline.io.storage import Storage, escape_controls, has_pattern, strip_uri_credentials
from pipeline.io.text_hash import text_hashes

logger = logging.getLogger(__name__)

COMPRESSION_BY_EXTENSION = {".gz": "gzip", ".zst": "zstd", ".zstd": "zstd"}
TARGET_BYTES_PER_READ_TASK = 64 << 20
MIN_BYTES_PER_READ_TASK = 8 << 20
MIN_READ_TASKS = 16


@dataclass(frozen=True)
class Shard:
    path: str  # filesystem path as fsspec names it (bucket/key for S3)
    relpath: str  # relative to the input root: the stable part of derived ids
    size: int
    format: str
    compression: str | None
    protocol: str = "file"
    version: str = ""  # ETag / generation / mtime at listing time: (size, version) is the fingerprint

    @property
    def uri(self) -> str:
        return f"{self.protocol}://{self.path}"

    @property
    def fingerprint(self) -> tuple[int, str]:
        return (self.size, self.version)

    @property
    def version_key(self) -> str:
        """The fingerprint as one string: what data files record for the rows they hold of it."""
        return f"{self.size}:{self.version}"


@dataclass(frozen=True, kw_only=True)
class FieldSpec:
    text_field: str = "text"
    id_field: str = "id"
    title_field: str | None = None
    # chunked runs keep the title apart (every window gets it); otherwise it is joined to the text
    title_apart: bool = False
    prefix: str = ""  # the E5 prefix text: part of what the model reads, so of each record's text_hash


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


def _version(info: Mapping[str, Any]) -> str:
    """What changes when an object is rewritten: its ETag (S3, HTTP), generation (GCS), or on a
    local disk its inode and ctime (with mtime). Size + mtime alone is not enough: ``cp -p`` and
    ``rsync -a`` keep both, but a rewrite cannot keep the ctime (set by the kernel on every change,
    ``utime`` included) and a rename-into-place brings a new inode. Metadata changes (``chmod``,
    a new hard link) also move the ctime: such a shard counts as changed (refused, never mixed).
    '' when the store gives none of these (see ``unversioned``)."""
    if "ino" in info and "mtime" in info:  # a POSIX filesystem (fsspec's local info)
        return f"local:ino={info['ino']},ctime={info.get('created')!r},mtime={info['mtime']!r}"
    for key in (
        "ETag",
        "etag",
        "generation",
        "version_id",
        "VersionId",
        "Content-MD5",
        "Digest",
        "mtime",
        "LastModified",
        "last_modified",
        "Last-Modified",
        "created",
    ):
        value = info.get(key)
        if value not in (None, ""):
            return f"{key}:{value.isoformat() if hasattr(value, 'isoformat') else value}".replace('"', "")
    return ""


def unversioned(shards: Sequence[Shard]) -> list[Shard]:
    """Shards whose store gave no version: a rewrite that keeps their size cannot be detected."""
    return [s for s in shards if not s.version]


def _list_input(storage: Storage) -> tuple[str, dict[str, Any], bool]:
    """(root, {path: info}, single_file) for one --input, literally.

    A folder/prefix is walked; a file is itself. Only when neither exists and the last path
    component holds ``*``, ``?`` or ``[`` is that component a name pattern, matched against the
    listing of its (literal) parent folder: the path itself is never expanded as a glob.
    """
    path = storage.root
    storage.forget_listings()
    if storage.is_dir(path):
        return path, storage.walk_files(path), False
    if storage.is_file(path):
        return posixpath.dirname(path), {path: storage.info(path)}, True
    parent, name = posixpath.split(path)
    if has_pattern(name) and storage.is_dir(parent):
        listed = dict(storage.files_in(parent))
        return parent, {p: i for p, i in listed.items() if fnmatch.fnmatchcase(posixpath.basename(p), name)}, False
    raise UsageError(f"input not found: {strip_uri_credentials(storage.uri)}")


@dataclass(frozen=True)
class Listing:
    shards: list[Shard]
    ignored: list[str]  # files of unknown format inside listed folders (skipped with --ignore-unknown-files)


def list_shards(
    inputs: Sequence[str],
    storage_options: Mapping[str, Any],
    input_format: str = "auto",
    *,
    ignore_unknown: bool = False,
) -> list[Shard]:
    """The shards of ``list_inputs`` (for callers that record nothing about ignored files)."""
    return list_inputs(inputs, storage_options, input_format, ignore_unknown=ignore_unknown).shards


def list_inputs(
    inputs: Sequence[str],
    storage_options: Mapping[str, Any],
    input_format: str = "auto",
    *,
    ignore_unknown: bool = False,
) -> Listing:
    """Expand folders/prefixes, name patterns and files into a sorted, de-duplicated shard list.

    A file named by an ``--input`` is read whatever its name; inside a listed folder, ``_``/``.``
    side files are skipped. A file reached twice (overlapping inputs, a symlink) is one shard.
    Derived ids (``<relpath>:<row>``) are relative to the inputs' common root, so two inputs that
    both hold ``part-0.jsonl`` cannot collide and the order of ``--input`` flags changes nothing.
    A file of unknown format inside a listed folder is refused by name (exit 2) unless
    ``ignore_unknown``: then it is skipped and listed in ``Listing.ignored`` (the manifest keeps it).
    """
    listed: list[tuple[str, Storage, str, dict[str, Any], bool]] = []
    for uri in inputs:
        storage = Storage(uri, storage_options)
        try:
            root, found, single_file = _list_input(storage)
        except UsageError:
            raise
        except Exception as e:  # listing happens before any work: every failure here is the input's
            raise UsageError(f"cannot list input {strip_uri_credentials(uri)}: {type(e).__name__}: {e}") from e
        listed.append((uri, storage, root, found, single_file))
    id_root = _common_root([root for _, _, root, _, _ in listed])
    shards: dict[str, Shard] = {}
    unknown: list[str] = []
    for uri, storage, root, found, single_file in listed:
        for p, info in sorted(found.items()):
            if not single_file and _is_side_file(posixpath.relpath(p, root) if root else p):
                continue
            fmt, compression = detect_format(p, input_format)
            if fmt is None:
                if single_file:
                    raise UsageError(
                        f"cannot tell the format of {strip_uri_credentials(uri)}; "
                        "pass --input-format text|jsonl|parquet"
                    )
                unknown.append(p)
                continue
            key = os.path.realpath(p) if storage.is_local else p
            if key in shards and shards[key].path <= p:
                continue  # the same file by another name: one shard, under the first name in sort order
            rel = posixpath.relpath(p, id_root) if id_root else p
            shards[key] = Shard(p, rel, int(info.get("size") or 0), fmt, compression, storage.protocol, _version(info))
    unknown = sorted(set(unknown))
    if unknown and not ignore_unknown:
        raise UsageError(
            f"{len(unknown)} input file(s) of unknown format: {', '.join(unknown[:5])}"
            f"{' …' if len(unknown) > 5 else ''}; pass --input-format to read them as one format, or "
            "--ignore-unknown-files to skip them (they are listed in the manifest)"
        )
    if unknown:
        logger.warning("skipped %d input file(s) of unknown format (--ignore-unknown-files)", len(unknown))
    if not shards:
        raise UsageError(f"no input files found in {', '.join(strip_uri_credentials(u) for u in inputs)}")
    return Listing(sorted(shards.values(), key=lambda s: s.path), unknown)


def _common_root(roots: Sequence[str]) -> str:
    """The deepest folder holding every input root ('' when they share none: full paths then)."""
    try:
        return posixpath.commonpath(roots) if roots else ""
    except ValueError:  # absolute and relative (local and object-store paths) mixed
        return ""


# --------------------------------------------------------------------------- parsing


class _BlockBuilder:
    """Accumulates records into RECORDS-schema tables of at most ``rows`` rows."""

    _COLUMNS = ("id", "source", "row", "reject_reason", "text", "title")  # add()'s order

    def __init__(self, rows: int, fields: FieldSpec):
        self.rows = rows
        self.prefix, self.title_apart = fields.prefix, fields.title_apart
        self._lists: tuple[list, ...] = tuple([] for _ in self._COLUMNS)

    def add(
        self, id: str | None, source: str, row: int, reject_reason: str | None, text: str | None, title: str | None
    ) -> None:
        ids, sources, rows, reasons, texts, titles = self._lists
        ids.append(id)
        sources.append(source)
        rows.append(row)
        reasons.append(reject_reason)
        texts.append(text)
        titles.append(title)

    def __len__(self) -> int:
        return len(self._lists[2])

    def full(self) -> bool:
        return len(self) >= self.rows

    def take(self) -> pa.Table:
        columns = dict(zip(self._COLUMNS, self._lists))
        titles = [t or "" for t in columns["title"]] if self.title_apart else None
        columns["text_hash"] = text_hashes(self.prefix, columns["text"], titles)
        table = pa.Table.from_pydict(columns, schema=schemas.RECORDS)
        self._lists = tuple([] for _ in self._COLUMNS)
        return table


# A shard is read in chunks of this many (compressed) bytes; decompressed output per step is
# bounded by the same amount for gzip, and by one zstd block window for zstd.
READ_CHUNK = 1 << 20
COMPRESSED_PIECE = 16 << 10
DEFAULT_MAX_RECORD_BYTES = 16 << 20
TRANSIENT_ATTEMPTS = 4  # per shard, before the read task fails (and Ray retries it)
UTF8_BOM = b"\xef\xbb\xbf"


class CorruptStream(JobError):
    """The compressed stream cannot be decoded further: the rest of the shard is lost."""


class ShardReadError(JobError):
    """A shard could not be read (I/O kept failing, or it changed since it was listed)."""


def _raw_chunks(f, piece: int = READ_CHUNK) -> Iterator[bytes]:
    while True:
        data = f.read(READ_CHUNK)
        if not data:
            return
        for i in range(0, len(data), piece):
            yield data[i : i + piece]


def _gzip_chunks(raw: Iterator[bytes]) -> Iterator[bytes]:
    """Multi-member gzip; truncation or garbage raises CorruptStream (never ends quietly).
    Output per step is bounded (``max_length``), so a small bomb cannot fill memory."""
    d = zlib.decompressobj(wbits=31)
    in_member = False
    try:
        for data in raw:
            while data:
                if d.eof:  # a next member, or zero padding after the last one
                    if not data.strip(b"\x00"):
                        break
                    d = zlib.decompressobj(wbits=31)
                in_member = True
                out = d.decompress(data, READ_CHUNK)
                if out:
                    yield out
                data = d.unused_data if d.eof else d.unconsumed_tail
                if d.eof:
                    in_member = False
        if in_member:
            tail = d.flush()
            if tail:
                yield tail
            raise CorruptStream("gzip stream ends before its end-of-stream marker (truncated)")
    except zlib.error as e:
        raise CorruptStream(f"gzip: {e}") from e


def _zstd_chunks(raw: Iterator[bytes]) -> Iterator[bytes]:
    """Multi-frame zstd; a truncated last frame raises CorruptStream (zstandard's stream reader
    would end quietly with what it had)."""
    import zstandard

    dctx = zstandard.ZstdDecompressor()
    d = dctx.decompressobj()
    in_frame = False
    try:
        for data in raw:
            while data:
                in_frame = True
                out = d.decompress(data)
                if out:
                    yield out
                if d.eof:
                    data, d, in_frame = d.unused_data, dctx.decompressobj(), False
                else:
                    data = b""
        if in_frame and not d.eof:
            raise CorruptStream("zstd stream ends inside a frame (truncated)")
    except zstandard.ZstdError as e:
        raise CorruptStream(f"zstd: {e}") from e


def _chunks(f, shard: Shard) -> Iterator[bytes]:
    if shard.compression is None:
        return _raw_chunks(f)
    # Compressed input goes to the decoder in small pieces: a corrupt stream loses at most
    # the output of one piece beyond what was already decoded.
    raw = _raw_chunks(f, COMPRESSED_PIECE)
    return _gzip_chunks(raw) if shard.compression == "gzip" else _zstd_chunks(raw)


class TooLong:
    """Stands for a line longer than the record limit (its bytes were not kept)."""

    def __init__(self, size: int):
        self.size = size


def split_lines(chunks: Iterator[bytes], max_bytes: int) -> Iterator[bytes | TooLong]:
    """Lines ending in ``\n``, ``\r\n`` or a lone ``\r``, without their endings. A line longer
    than ``max_bytes`` is yielded as ``TooLong`` and never held in memory whole."""
    buf = b""
    skipping = 0  # > 0: inside an over-long line, this many bytes dropped so far
    pending_cr = False  # the previous chunk ended in "\r": a "\n" starting this one belongs to it
    for data in chunks:
        if pending_cr:
            pending_cr = False
            if data[:1] == b"\n":
                data = data[1:]
        if not data:
            continue
        lines = (buf + data).splitlines(keepends=True) if not skipping else data.splitlines(keepends=True)
        buf = b""
        last = lines[-1]
        complete = lines if last.endswith((b"\n", b"\r")) else lines[:-1]
        for line in complete:
            body = line.rstrip(b"\r\n") if line.endswith(b"\r\n") else line[:-1]
            if skipping:
                yield TooLong(skipping + len(body))
                skipping = 0
            elif len(body) > max_bytes:
                yield TooLong(len(body))
            else:
                yield body
        if last.endswith(b"\r"):
            pending_cr = True
        elif complete is not lines:  # an unfinished line
            if skipping:
                skipping += len(last)
            elif len(last) > max_bytes:
                skipping = len(last)
            else:
                buf = last
    if skipping:
        yield TooLong(skipping)
    elif buf:
        yield buf


def _check_text(value: Any, field_name: str) -> tuple[str | None, str | None]:
    """(text, reject_reason)."""
    if value is None:
        return None, f"missing text field {field_name!r}"
    if not isinstance(value, str):
        return None, f"text field {field_name!r} is not a string (got {type(value).__name__})"
    if not value or value.isspace():
        return None, "empty or whitespace-only text"
    if not value.isascii():
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
    if reason is None and fields.title_field and not fields.title_apart:
        title = obj.get(fields.title_field)
        if isinstance(title, str) and title:
            text = f"{title} {text}".strip()
    return record_id, text, reason


def _title_of(obj: Any, fields: FieldSpec) -> str | None:
    """The title kept apart from the text (chunked runs), or None."""
    if not (fields.title_apart and fields.title_field and isinstance(obj, dict)):
        return None
    title = obj.get(fields.title_field)
    return (title.strip() or None) if isinstance(title, str) else None


def _is_transient(e: BaseException) -> bool:
    """I/O that may work on a retry (resets, timeouts, throttling, expired credentials). Not: an
    object replaced while it was read (s3fs ``FileExpired``: its ETag changed), which is a change."""
    if type(e).__name__ == "FileExpired":
        return False
    return isinstance(e, OSError) and not isinstance(e, (gzip.BadGzipFile, FileNotFoundError))


_raw_decode = json.JSONDecoder().raw_decode


class _Invalid:
    """A line that is not one JSON value, and why."""

    def __init__(self, reason: str):
        self.reason = reason


def _parse_json(decoded: str) -> Any:
    """``json.loads`` with the reject reason for a line that is not one JSON value."""
    if not decoded.strip():
        return _Invalid("blank line")
    try:
        return json.loads(decoded)
    except json.JSONDecodeError as e:
        return _Invalid(f"invalid JSON: {e.msg} at column {e.colno}")
    except Exception as e:  # RecursionError (deep nesting), ValueError (huge numbers), ...
        return _Invalid(f"invalid JSON: {type(e).__name__}: {str(e)[:200]}")


def _reject(row: int, reason: str) -> dict:
    return {"row": row, "id": None, "text": None, "reject_reason": reason}


class ShardReader:
    """Iterates one shard's records (dicts: row, id, text, reject_reason); never raises on bad data.

    After iteration, ``rows`` is the shard's row count (rows before the remainder when the
    compressed stream broke off) and ``remainder`` says why the rest could not be decoded.
    Transient I/O errors re-open the shard and continue after the last row (``attempts``
    times, with backoff); then ``ShardReadError``. A shard whose fingerprint differs from the
    one it was listed with is refused (``ShardReadError``).
    """

    def __init__(
        self,
        storage: Storage,
        shard: Shard,
        fields: FieldSpec,
        skip: Sequence[tuple[int, int]] = (),
        *,
        max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES,
        attempts: int = TRANSIENT_ATTEMPTS,
        backoff_s: float = 1.0,
        check_fingerprint: bool = True,
    ):
        self.storage, self.shard, self.fields = storage, shard, fields
        self.skip = tuple(skip)
        self.max_record_bytes = max_record_bytes
        self.attempts = attempts
        self.backoff_s = backoff_s
        self.check_fingerprint = check_fingerprint
        self.rows: int | None = None
        self.remainder: str | None = None

    def __iter__(self) -> Iterator[dict]:
        done = _RowFilter(self.skip)
        next_row = 0  # rows below this were yielded (or skipped) already
        for attempt in range(1, self.attempts + 1):
            try:
                # on every attempt: a re-opened shard must be the one whose earlier rows were read
                self._verify_fingerprint()
                for row, rec in self._rows(start=next_row):
                    next_row = row + 1
                    if rec is not None and not done(row):
                        yield rec
                self._verify_fingerprint()  # and at the end: nothing replaced it while it was read
                self.rows = next_row
                return
            except CorruptStream as e:
                self._verify_fingerprint()
                self.rows, self.remainder = next_row, str(e)
                logger.warning("%s: unreadable after row %d: %s", escape_controls(self.shard.path), next_row, e)
                return
            except ShardReadError:
                raise
            except Exception as e:
                if not _is_transient(e) or attempt == self.attempts:
                    raise ShardReadError(
                        f"cannot read shard {self.shard.uri} (after {attempt} attempt(s), "
                        f"row {next_row}): {type(e).__name__}: {e}"
                    ) from e
                logger.warning(
                    "%s: %s: %s; re-opening at row %d (attempt %d/%d)",
                    escape_controls(self.shard.path),
                    type(e).__name__,
                    e,
                    next_row,
                    attempt + 1,
                    self.attempts,
                )
                time.sleep(self.backoff_s * 2 ** (attempt - 1))

    def _verify_fingerprint(self) -> None:
        if not self.check_fingerprint:
            return  # an unversioned shard still has its size checked
        info = self.storage.info(self.shard.path)
        now = (int(info.get("size") or 0), _version(info))
        if now != self.shard.fingerprint:
            raise ShardReadError(
                f"input shard {self.shard.uri} changed after it was listed "
                f"(size/version {self.shard.fingerprint} -> {now}); rerun to pick it up"
            )

    def _rows(self, start: int) -> Iterator[tuple[int, dict | None]]:
        """(row, record) from ``start`` on; record None for rows before ``start`` (not parsed)."""
        if self.shard.format == "parquet":
            yield from self._parquet_rows(start)
            return
        with self.storage.open(self.shard.path) as f:
            for row, line in enumerate(split_lines(_chunks(f, self.shard), self.max_record_bytes)):
                if row < start:
                    yield row, None
                    continue
                if row == 0 and isinstance(line, bytes) and line.startswith(UTF8_BOM):
                    line = line[len(UTF8_BOM) :]
                yield row, self._parse_line(line, row)

    def _parse_line(self, line: bytes | TooLong, row: int) -> dict:
        if isinstance(line, TooLong):
            return _reject(row, f"record larger than --max-record-bytes ({line.size} > {self.max_record_bytes} bytes)")
        try:
            decoded = line.decode("utf-8")
        except UnicodeDecodeError as e:
            return _reject(row, f"invalid UTF-8 at byte {e.start}")
        if self.shard.format == "text":
            text, reason = _check_text(decoded, "line")
            return {"row": row, "id": None, "text": text, "reject_reason": reason}
        # The common case: one value, nothing around it; anything else takes json.loads' path and its
        # reject reasons. (Nesting right at Python's recursion limit may parse here one or two levels
        # deeper than json.loads would, as it always varied with the caller's stack depth.)
        try:
            obj, end = _raw_decode(decoded)
            if end != len(decoded):
                obj = _parse_json(decoded)
        except Exception:
            obj = _parse_json(decoded)
        if isinstance(obj, _Invalid):
            return _reject(row, obj.reason)
        try:
            record_id, text, reason = _record_from_json(obj, self.fields)
            title = _title_of(obj, self.fields) if reason is None else None
        except Exception as e:  # a record must never fail its shard
            return _reject(row, f"unusable record: {type(e).__name__}: {str(e)[:200]}")
        return {"row": row, "id": record_id, "text": text, "title": title, "reject_reason": reason}

    def _parquet_rows(self, start: int) -> Iterator[tuple[int, dict | None]]:
        row = 0
        with self.storage.open(self.shard.path) as f:
            try:
                pf = pq.ParquetFile(f)
                names = set(pf.schema_arrow.names)
                total = pf.metadata.num_rows
            except pa.ArrowInvalid as e:
                raise CorruptStream(f"parquet: {e}") from e
            if self.fields.text_field not in names:
                for row in range(total):
                    yield (
                        row,
                        {
                            "row": row,
                            "id": None,
                            "text": None,
                            "reject_reason": f"parquet shard has no column {self.fields.text_field!r}",
                        },
                    )
                return
            wanted = [
                c for c in (self.fields.id_field, self.fields.text_field, self.fields.title_field) if c and c in names
            ]
            batches = pf.iter_batches(columns=wanted, batch_size=8192)
            while True:
                try:
                    batch = next(batches)
                except StopIteration:
                    return
                except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
                    raise CorruptStream(f"parquet: {e}") from e
                if row + batch.num_rows <= start:
                    for _ in range(batch.num_rows):
                        yield row, None
                        row += 1
                    continue
                for obj in batch.to_pylist():
                    if row < start:
                        yield row, None
                    else:
                        try:
                            record_id, text, reason = _record_from_json(obj, self.fields)
                            title = _title_of(obj, self.fields) if reason is None else None
                        except Exception as e:
                            record_id, text, reason = None, None, f"unusable record: {type(e).__name__}"
                            title = None
                        yield row, {"row": row, "id": record_id, "text": text, "title": title, "reject_reason": reason}
                    row += 1


class _RowFilter:
    """True for rows inside already-done [start, end) ranges (sorted)."""

    def __init__(self, ranges: Sequence[tuple[int, int]]):
        self._ranges = sorted(ranges)
        self._i = 0

    def __call__(self, row: int) -> bool:
        while self._i < len(self._ranges) and self._ranges[self._i][1] <= row:
            self._i += 1
        return self._i < len(self._ranges) and self._ranges[self._i][0] <= row


def read_shards(
    storage_options: Mapping[str, Any],
    shards: Sequence[Shard],
    fields: FieldSpec,
    rows_per_block: int,
    skip: Mapping[str, Sequence[tuple[int, int]]],
    *,
    max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES,
    on_shard_end: Callable[[Shard, int, str | None], None] | None = None,
) -> Iterator[pa.Table]:
    """RECORDS-schema blocks for the shards in order; ``on_shard_end(shard, rows, remainder)`` is
    called when a shard has been read to its end (the ledger records it)."""
    builder = _BlockBuilder(rows_per_block, fields)
    for shard in shards:
        reader = ShardReader(
            Storage(shard.uri, storage_options),
            shard,
            fields,
            skip.get(shard.path, ()),
            max_record_bytes=max_record_bytes,
        )
        for rec in reader:
            row = rec["row"]
            record_id = rec["id"]
            builder.add(
                f"{shard.relpath}:{row}" if record_id is None else record_id,
                shard.path,
                row,
                rec["reject_reason"],
                rec["text"],
                rec.get("title"),
            )
            if builder.full():
                yield builder.take()
        if on_shard_end is not None:
            on_shard_end(shard, int(reader.rows or 0), reader.remainder)
    if len(builder):
        yield builder.take()


def read_groups(shards: Sequence[Shard], parallelism: int) -> list[list[Shard]]:
    """Shards grouped into read tasks of consecutive shards of about equal bytes: about
    ``parallelism`` tasks, fewer when that would make tasks under MIN_BYTES_PER_READ_TASK (but not
    fewer than MIN_READ_TASKS), more when it would make a task read over TARGET_BYTES_PER_READ_TASK.

    Many small shards share a task: a read task costs tens of milliseconds of CPU in Ray itself
    (more than reading a 300 KB shard), and Ray's parallelism (at least 200) is about blocks, which
    a task yields many of. A shard is never split, and a big one is a task of its own.
    """
    if not shards:
        return []
    total = sum(s.size for s in shards)
    wanted = min(parallelism, max(MIN_READ_TASKS, -(-total // MIN_BYTES_PER_READ_TASK)))
    tasks = min(len(shards), max(wanted, -(-total // TARGET_BYTES_PER_READ_TASK), 1))
    per_task = total / tasks
    groups: list[list[Shard]] = []
    group: list[Shard] = []
    read = 0  # bytes of all shards so far: task k ends nearest to k x per_task (no drift to the end)
    for i, shard in enumerate(shards):
        group.append(shard)
        read += shard.size
        shards_left = len(shards) - i - 1
        groups_left = tasks - len(groups) - 1  # after closing this one
        if groups_left > 0 and (read >= (len(groups) + 1) * per_task - shard.size / 2 or shards_left == groups_left):
            groups.append(group)
            group = []
    if group:
        groups.append(group)
    return groups
