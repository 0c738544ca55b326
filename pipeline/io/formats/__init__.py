"""Input formats: one ``Format`` per file (``text``, ``jsonl``, ``parquet``), registered in
``registry.FORMATS``. A new format is one module here plus its line in the registry."""

from pipeline.io.formats.base import Format, Row
from pipeline.io.formats.registry import FORMATS, INPUT_FORMATS, detect_format, format_of

__all__ = ["FORMATS", "INPUT_FORMATS", "Format", "Row", "detect_format", "format_of"]
