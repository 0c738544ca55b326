"""One record at a time: the fields to read (``FieldSpec``), a JSON line or object parsed into
(id, text, title) or a reject reason, and the builder of ``schemas.RECORDS`` blocks (with each
row's ``text_hash``)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from pipeline.io import schemas
from pipeline.io.text_hash import text_hashes


@dataclass(frozen=True, kw_only=True)
class FieldSpec:
    text_field: str = "text"
    id_field: str = "id"
    title_field: str | None = None
    # chunked runs keep the title apart (every window gets it); otherwise it is joined to the text
    title_apart: bool = False
    prefix: str = ""  # the E5 prefix text: part of what the model reads, so of each record's text_hash


class BlockBuilder:
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


def check_text(value: Any, field_name: str) -> tuple[str | None, str | None]:
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


def record_from_json(obj: Any, fields: FieldSpec) -> tuple[str | None, str | None, str | None]:
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
    text, reason = check_text(obj[fields.text_field], fields.text_field)
    if reason is None and fields.title_field and not fields.title_apart:
        title = obj.get(fields.title_field)
        if isinstance(title, str) and title:
            text = f"{title} {text}".strip()
    return record_id, text, reason


def title_of(obj: Any, fields: FieldSpec) -> str | None:
    """The title kept apart from the text (chunked runs), or None."""
    if not (fields.title_apart and fields.title_field and isinstance(obj, dict)):
        return None
    title = obj.get(fields.title_field)
    return (title.strip() or None) if isinstance(title, str) else None


raw_decode = json.JSONDecoder().raw_decode


class Invalid:
    """A line that is not one JSON value, and why."""

    def __init__(self, reason: str):
        self.reason = reason


def parse_json(decoded: str) -> Any:
    """``json.loads`` with the reject reason for a line that is not one JSON value."""
    if not decoded.strip():
        return Invalid("blank line")
    try:
        return json.loads(decoded)
    except json.JSONDecodeError as e:
        return Invalid(f"invalid JSON: {e.msg} at column {e.colno}")
    except Exception as e:  # RecursionError (deep nesting), ValueError (huge numbers), ...
        return Invalid(f"invalid JSON: {type(e).__name__}: {str(e)[:200]}")


def reject_row(row: int, reason: str) -> dict:
    return {"row": row, "id": None, "text": None, "reject_reason": reason}
