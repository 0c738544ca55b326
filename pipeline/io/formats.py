"""The input formats the reader knows, and how ``--input-format auto`` picks one by file extension."""

INPUT_FORMATS = ("auto", "text", "jsonl", "parquet")  # --input-format
FORMAT_BY_EXTENSION = {".txt": "text", ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl", ".parquet": "parquet"}
