"""The carry-over's pure steps (no Ray started): regrouping joined windows into whole records."""

import numpy as np
import pyarrow as pa
import pytest

from pipeline.backend.reuse import _first_of_each, _one_row_each, _windows_as_records
from pipeline.io import schemas
from pipeline.io.layout import TRUNCATE

pytestmark = pytest.mark.unit
DIM = 4


def joined_windows(parts: list[tuple[str, int, int, int]]) -> pa.Table:
    """(source, row, chunk, windows-the-record-has) rows as the join hands them over."""
    n = len(parts)
    emb = pa.FixedSizeListArray.from_arrays(pa.array(np.arange(n * DIM, dtype=np.float32)), DIM)
    return pa.table(
        {
            "id": [f"{s}:{r}" for s, r, _, _ in parts],
            "source": [s for s, _, _, _ in parts],
            "row": pa.array([r for _, r, _, _ in parts], pa.int64()),
            "text_hash": pa.array([bytes([r]) * 16 for _, r, _, _ in parts], pa.binary(16)),
            "embedding": emb,
            "n_tokens": pa.array([5] * n, pa.int32()),
            "truncated": [False] * n,
            "chunk": pa.array([c for _, _, c, _ in parts], pa.int32()),
            "char_start": pa.array([10 * c for _, _, c, _ in parts], pa.int64()),
            "char_end": pa.array([10 * c + 9 for _, _, c, _ in parts], pa.int64()),
            "windows": pa.array([w for _, _, _, w in parts], pa.int32()),
        }
    )


def test_a_record_whose_windows_are_split_between_blocks_is_left_to_encode():
    schema = schemas.chunk_embedded_schema(DIM)
    block = joined_windows(
        [("s", 1, 2, 3), ("s", 1, 0, 3), ("s", 1, 1, 3), ("s", 1, 1, 3)]  # whole (one window twice)
        + [("s", 2, 0, 3), ("s", 2, 1, 3)]  # window 2 is in another block
        + [("s", 3, 0, 1)]  # one window, whole
    )
    out = _windows_as_records(block, schema).to_pylist()
    assert [r["row"] for r in out] == [1, 3]
    assert [len(r["embedding"]) for r in out] == [3, 1] and out[0]["char_start"] == [0, 10, 20]
    assert _windows_as_records(joined_windows([("s", 2, 2, 3)]), schema).num_rows == 0


def test_joined_rows_are_one_per_input_row_and_the_pool_one_per_text():
    block = joined_windows([("s", 1, 0, 1), ("s", 1, 0, 1), ("s", 0, 0, 1)]).drop_columns(
        ["chunk", "char_start", "char_end", "windows"]
    )
    out = _one_row_each(block)
    assert out["row"].to_pylist() == [0, 1] and out["reject_reason"].null_count == 2
    assert list(_first_of_each(block, TRUNCATE)) == [0, 2]
