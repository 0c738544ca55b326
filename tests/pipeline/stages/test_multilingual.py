"""Multilingual E5's shape (XLM-R: Unigram/Metaspace tokenizer, 514 positions, padding id 1, no token
types) through the tokenizer stages, with a tokenizer trained here on text in several scripts
(no Hub) and a random-init XLMRobertaModel (weights random, said so)."""

import numpy as np
import pytest
from transformers import AutoTokenizer

from e5tools.sample_text import MULTILINGUAL_SENTENCES
from pipeline.stages.chunk_tokenize import ChunkTokenizeStage
from pipeline.stages.chunking import ChunkSettings
from pipeline.stages.embedder import records_table
from pipeline.stages.model import ModelSource
from pipeline.stages.tokenize import TokenizeStage

pytestmark = pytest.mark.unit

SENTENCES = MULTILINGUAL_SENTENCES


def corpus(n: int, seed: int = 0) -> list[str]:
    """Documents mixing the scripts, with odd whitespace (tabs, newlines, double and no-break spaces)."""
    rng = np.random.default_rng(seed)
    joins = [" ", "  ", "\n", "\t", " \u00a0", "\r\n", ""]
    docs = []
    for _ in range(n):
        parts = [SENTENCES[j] for j in rng.integers(0, len(SENTENCES), size=int(rng.integers(1, 60)))]
        docs.append("".join(p + joins[int(rng.integers(0, len(joins)))] for p in parts).strip() or "x")
    return docs


@pytest.fixture(scope="module")
def reference(xlmr_path):
    return AutoTokenizer.from_pretrained(xlmr_path)


@pytest.mark.parametrize("max_length", [32, 512])
def test_truncating_tokenizer_equals_the_reference_on_every_script(xlmr_path, reference, max_length):
    docs = corpus(60) + [
        "敏捷的棕色狐狸跳过了懒狗。" * 4000,
        ("The quick brown fox " * 5000) + "x",
        " " * 30000 + "fox",
    ]
    stage = TokenizeStage(model=ModelSource(name_or_path=xlmr_path), prefix="passage: ", max_length=max_length)
    out = stage(records_table(docs))
    ref = reference(["passage: " + d for d in docs], max_length=max_length, truncation=True)["input_ids"]
    for got, want, doc in zip(out["input_ids"].to_pylist(), ref, docs):
        assert got == want, doc[:80]
    assert ref[0][0] == reference.bos_token_id and 1 not in sum(ref, [])  # <s> first, no padding id inside


@pytest.mark.parametrize("tokens,overlap", [(48, 8), (256, 32)])
def test_chunk_windows_equal_the_reference_tokens_of_their_span(xlmr_path, reference, tokens, overlap):
    docs = corpus(30, seed=1)
    titles = [None, "Ein Titel: mit Wörtern", "标题"] * 10
    stage = ChunkTokenizeStage(
        model=ModelSource(name_or_path=xlmr_path),
        prefix="passage: ",
        chunk=ChunkSettings(tokens=tokens, overlap=overlap),
    )
    out = stage(records_table(docs, titles=titles[: len(docs)]))
    several = inside_runs = 0
    for text, title, row in zip(docs, titles, out.to_pylist()):
        assert row["reject_reason"] is None and not row["truncated"]
        head = "passage: " + (title + " " if title else "")
        covered = np.zeros(len(text), dtype=bool)
        whole = reference(text, add_special_tokens=False)["input_ids"]
        for ids, start, end in zip(row["input_ids"], row["char_start"], row["char_end"]):
            # Metaspace words start after a space (NFKC makes a no-break space one); a tab or newline is
            # part of a word. A window starting at a word is exactly its text's tokens:
            if start == 0 or text[start - 1] in " \u00a0":
                assert ids == reference(head + text[start:end])["input_ids"], (title, text[start:end][:60])
            else:  # inside a run without spaces (CJK, Thai): the document's own tokens of that span
                head_ids = reference(head.rstrip())["input_ids"][:-1]
                assert ids[: len(head_ids)] == head_ids and ids[-1] == reference.eos_token_id
                inside = ids[len(head_ids) : -1]
                assert any(whole[k : k + len(inside)] == inside for k in range(len(whole))), text[start:end][:60]
                inside_runs += 1
            assert len(ids) <= tokens
            covered[start:end] = True
        missed = [c for c, hit in zip(text, covered) if not hit and not c.isspace()]
        assert not missed, missed[:20]
        several += len(row["input_ids"]) > 1
    assert several > 5 and inside_runs > 0


def test_long_texts_are_cut_only_where_the_pre_tokenizer_splits(xlmr_path, minilm_path, reference):
    from pipeline.stages.tokenize import cut_characters

    assert cut_characters(ModelSource(name_or_path=xlmr_path).load_tokenizer()) == " "  # Metaspace: not at \n
    assert cut_characters(ModelSource(name_or_path=minilm_path).load_tokenizer()) == " \n"
    # newlines inside a long run of one Metaspace word, spaces only far before the cut point
    docs = ["fox " * 3 + "\n".join(["敏捷的棕色狐狸跳过了懒狗"] * 3000), "fox\n" * 9000 + "dog " * 10]
    stage = TokenizeStage(model=ModelSource(name_or_path=xlmr_path), prefix="query: ", max_length=64)
    out = stage(records_table(docs))
    ref = reference(["query: " + d for d in docs], max_length=64, truncation=True)["input_ids"]
    assert out["input_ids"].to_pylist() == ref and out["truncated"].to_pylist() == [True, True]
