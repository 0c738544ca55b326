"""Chunked tokenizing against the model card's tokenizer: every window is exactly the tokens of
``passage: `` + title + its text span, and every character that is not a space is in a window."""

import numpy as np
import pytest
from transformers import AutoTokenizer

from e5tools.sample_text import passages
from pipeline.stages.chunk_tokenize import ChunkTokenizeStage
from pipeline.stages.chunking import ChunkSettings
from pipeline.stages.embedder import records_table
from pipeline.stages.model import ModelSource

pytestmark = pytest.mark.unit

ODD = [
    "Tabs\tand\nnewlines\r\nand  double  spaces, punctuation!!! (brackets) [x] {y} a-b_c",
    "東京都は日本の首都です。" * 40,  # no spaces at all: CJK characters are words of their own
    "caf\u00e9 na\u00efve \U0001f600 emoji \u00c5ngstr\u00f6m " * 30,
    "x" * 700 + " tail",  # one word longer than the tokenizer's 100-char word limit
    "https://example.com/" + "a/b-c_d.e?f=g&" * 120,  # a long URL: punctuation-only breaks
]


@pytest.fixture(scope="module")
def reference(minilm_path):
    return AutoTokenizer.from_pretrained(minilm_path)


def texts() -> list[str]:
    paragraphs = [text for _, text in passages(90)]
    long_docs = [" ".join(paragraphs[i : i + 9]) for i in range(0, 90, 9)]
    return long_docs + ODD + ["one short line"]


def stage(minilm_path, **chunk):
    return ChunkTokenizeStage(
        model=ModelSource(name_or_path=minilm_path), prefix="passage: ", chunk=ChunkSettings(**chunk)
    )


@pytest.mark.parametrize("tokens,overlap", [(64, 16), (512, 32), (128, 0)])
def test_windows_are_the_reference_tokens_of_their_text_and_cover_it(minilm_path, reference, tokens, overlap):
    docs = texts()
    titles = [None, "A title: with words", None] * (len(docs) // 3 + 1)
    out = stage(minilm_path, tokens=tokens, overlap=overlap)(records_table(docs, titles=titles[: len(docs)]))
    for text, title, row in zip(docs, titles, out.to_pylist()):
        assert row["reject_reason"] is None and not row["truncated"]
        head = "passage: " + (title + " " if title else "")
        covered = np.zeros(len(text), dtype=bool)
        for ids, start, end, n in zip(row["input_ids"], row["char_start"], row["char_end"], row["n_tokens"]):
            assert ids == reference(head + text[start:end])["input_ids"]
            assert n == len(ids) <= tokens
            covered[start:end] = True
        assert row["char_start"] == sorted(row["char_start"])
        missed = [c for c, hit in zip(text, covered) if not hit and not c.isspace()]
        assert not missed, missed[:20]
    assert max(len(r) for r in out["input_ids"].to_pylist()) > 2  # long documents became several windows


def test_the_cap_truncates_and_a_huge_record_is_cut_before_tokenizing(minilm_path, reference):
    text = "word " * 2_000_000  # 10 MB, 2M tokens
    capped = stage(minilm_path, tokens=64, overlap=0, max_chunks=3)
    row = capped(records_table([text])).to_pylist()[0]
    assert row["truncated"] and len(row["input_ids"]) == 3
    assert row["input_ids"][0] == reference("passage: " + text[row["char_start"][0] : row["char_end"][0]])["input_ids"]
    # the cap bounds what is tokenized: far less than the whole record (3 windows x 64 x 24 chars)
    assert capped._cutoff < len(text) // 100


def test_records_that_cannot_be_chunked_are_rejected_with_a_reason(minilm_path):
    out = stage(minilm_path, tokens=16, overlap=0)(
        records_table(
            ["fine text here", "\x00\x01\x02", "body", None],
            titles=[None, None, "a " * 40, None],
            rejects=[None, None, None, "empty"],
        )
    ).to_pylist()
    assert out[0]["reject_reason"] is None
    assert out[1]["reject_reason"] == "text has no tokens" and out[1]["input_ids"] is None
    assert out[2]["reject_reason"].startswith("title too long for --chunk-tokens 16")
    assert out[3]["reject_reason"] == "empty"
