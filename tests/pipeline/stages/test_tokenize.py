import pytest
from transformers import AutoTokenizer

from pipeline.io import schemas
from pipeline.stages.embedder import records_table
from pipeline.stages.model import ModelSource
from pipeline.stages.tokenize import TokenizeStage

pytestmark = pytest.mark.unit


def records(texts, rejects=None):
    return records_table(texts, source="s", rejects=rejects)


@pytest.fixture(scope="module")
def stage(minilm_path):
    return TokenizeStage(model=ModelSource(name_or_path=minilm_path), prefix="passage: ", max_length=512)


def test_ids_equal_the_reference_tokenizer(stage, minilm_path):
    texts = ["Hello, World!", "caf\u00e9 \U0001f600 \u4e2d\u6587 ok", "word " * 700, "x"]
    out = stage(records(texts))
    assert out.schema == schemas.TOKENIZED
    ref = AutoTokenizer.from_pretrained(minilm_path)(["passage: " + t for t in texts], max_length=512, truncation=True)
    assert out["input_ids"].to_pylist() == ref["input_ids"]
    assert out["n_tokens"].to_pylist() == [len(x) for x in ref["input_ids"]]
    assert out["truncated"].to_pylist() == [False, False, True, False]


def test_long_documents_are_cut_exactly(stage, minilm_path):
    tok = AutoTokenizer.from_pretrained(minilm_path)
    long_words = "alpha beta gamma " * 20000  # far past the character cutoff
    spaces_then_words = " " * 50000 + "word " * 300  # a cut would lose these words: must not change ids
    short_after_cut = "tiny " * 10 + "y" * 20000  # one giant token-less run after the cut point
    texts = [long_words, spaces_then_words, short_after_cut]
    out = stage(records(texts))
    ref = tok(["passage: " + t for t in texts], max_length=512, truncation=True)["input_ids"]
    assert out["input_ids"].to_pylist() == ref
    assert out["truncated"].to_pylist()[0] is True


def test_prefix_none_and_query(minilm_path):
    source = ModelSource(name_or_path=minilm_path)
    tok = AutoTokenizer.from_pretrained(minilm_path)
    for prefix in ("", "query: "):
        out = TokenizeStage(model=source, prefix=prefix, max_length=16)(records(["some words here"]))
        assert (
            out["input_ids"].to_pylist()[0]
            == tok(prefix + "some words here", max_length=16, truncation=True)["input_ids"]
        )


def test_rejected_rows_pass_through_without_tokens(stage):
    out = stage(records([None, "ok"], rejects=["invalid JSON", None]))
    assert out["input_ids"].to_pylist()[0] is None
    assert out["reject_reason"].to_pylist() == ["invalid JSON", None]
    assert out["n_tokens"].to_pylist()[0] == 0
