"""``text``: one record per line, the line is the text; ids are derived (``<relpath>:<row>``)."""

from __future__ import annotations

from pipeline.io.formats.lines import LineFormat
from pipeline.io.records import FieldSpec, check_text


class TextFormat(LineFormat):
    name = "text"
    extensions = (".txt",)

    def parse(self, decoded: str, row: int, fields: FieldSpec) -> dict:
        text, reason = check_text(decoded, "line")
        return {"row": row, "id": None, "text": text, "reject_reason": reason}
