"""``jsonl``: one JSON object per line; its id, text and title fields as ``FieldSpec`` names them."""

from __future__ import annotations

from pipeline.io.formats.lines import LineFormat
from pipeline.io.records import FieldSpec, Invalid, parse_json, raw_decode, record_from_json, reject_row, title_of


class JsonlFormat(LineFormat):
    name = "jsonl"
    extensions = (".jsonl", ".ndjson", ".json")

    def parse(self, decoded: str, row: int, fields: FieldSpec) -> dict:
        # The common case: one value, nothing around it; anything else takes json.loads' path and its
        # reject reasons. (Nesting right at Python's recursion limit may parse here one or two levels
        # deeper than json.loads would, as it always varied with the caller's stack depth.)
        try:
            obj, end = raw_decode(decoded)
            if end != len(decoded):
                obj = parse_json(decoded)
        except Exception:
            obj = parse_json(decoded)
        if isinstance(obj, Invalid):
            return reject_row(row, obj.reason)
        try:
            record_id, text, reason = record_from_json(obj, fields)
            title = title_of(obj, fields) if reason is None else None
        except Exception as e:  # a record must never fail its shard
            return reject_row(row, f"unusable record: {type(e).__name__}: {str(e)[:200]}")
        return {"row": row, "id": record_id, "text": text, "title": title, "reject_reason": reason}
