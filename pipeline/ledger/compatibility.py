"""The output format's versions, and how an output made before a fact was recorded is read: one
table instead of a "made before X was recorded" branch in each module that reads metadata.

Every file's ``e5_embed`` metadata and the manifest carry ``format_version``. An output of the
current version records every fact below (a value may still be None where it is unknown, e.g. no
model digest for a model given by name only). Outputs made before the version was recorded read as
version 0: for each fact they lack, the table says how it reads (``reads_as``) or why it is refused
(``refused``, with the way out). A new recorded fact is one row here and ``FORMAT_VERSION`` + 1;
the modules that ask (``ledger.identity``, ``ledger.output``, ``ledger.reuse``) do not change.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pipeline.errors import UsageError
from pipeline.io.schemas import FORMAT_VERSION  # what this build writes
from pipeline.io.schemas import FORMAT_VERSION_KEY as KEY


@dataclass(frozen=True)
class Fact:
    key: str  # the metadata key
    before: str  # "made before ...": when it was not recorded yet
    lacking: str  # what an output without it cannot show (the refusal's words)
    refused: str | None = None  # when an output lacking it is refused: for what, and the way out
    reads_as: str | None = None  # when it is read instead: as what (said in the docs' table)
    accepts_any: bool = False  # lacking it, the output matches any value of it (resumed without it)


# What outputs made before each fact was recorded lack, and how they are read (docs/exactly-once.md,
# "Compatibility"). Version 1 is the first to record format_version itself: it records all of them.
FACTS = (
    Fact(
        "model_sha",
        "this job recorded model digests",
        "the model that made it cannot be checked against this run's digest",
        refused="resuming or extending it: use --overwrite or another --output",
    ),
    Fact(
        "text_hash",
        "rows carried a text_hash",
        "its rows carry no fingerprint of their text, so its vectors cannot be matched to texts",
        refused="lending vectors (--reuse-from, --update): embed it again, or leave it out",
    ),
    Fact(
        "compute_dtype",
        "the compute dtype was recorded",
        "its vectors cannot be shown to be computed in this run's dtype (--dtype auto: bf16 on a GPU, float32 on CPU)",
        refused="extending it from a run whose dtype was 'auto': use --overwrite or another --output",
        reads_as="the asked --dtype where it was not 'auto'",
    ),
    Fact(
        "input_format",
        "input_format was recorded",
        "the format its shards were read as",
        reads_as="any format (resumed without it)",
        accepts_any=True,
    ),
    Fact(
        "derived_ids",
        "ids of several inputs were made relative to their common root",
        "ids relative to the inputs' common root (several inputs)",
        reads_as="ids relative to each input: another identity, refused as different settings",
    ),
)
BY_KEY = {f.key: f for f in FACTS}


def version(metadata: Mapping[str, Any]) -> int:
    """The format version an output (its metadata or manifest) was made with; 0 before it was recorded."""
    value = metadata.get(KEY)
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def lacks(metadata: Mapping[str, Any], key: str) -> bool:
    """The output was made before ``key`` was recorded (a current output records it, even as None)."""
    return key not in metadata and version(metadata) < FORMAT_VERSION


def matches_any(metadata: Mapping[str, Any], key: str) -> bool:
    """An output made before ``key`` was recorded, whose use does not need it: any value matches."""
    fact = BY_KEY.get(key)
    return fact is not None and fact.accepts_any and lacks(metadata, key)


def refuse_lacking(metadata: Mapping[str, Any], key: str, what: str) -> None:
    """``what`` ("<an output or one of its files> was made") lacks ``key`` (or holds no value for
    it), which its use needs: refused with the table's words and way out."""
    if BY_KEY[key].refused is not None and metadata.get(key) in (None, ""):
        refuse(key, what)


def refuse(key: str, what: str) -> None:
    """``what`` ("... was made") is known to lack ``key``: the table's words and way out."""
    fact = BY_KEY[key]
    raise UsageError(f"{what} before {fact.before}: {fact.lacking}; {fact.refused}")


def describe() -> list[tuple[str, str, str]]:
    """(fact, what an output without it lacks, how it is read) for the docs' table."""
    return [(f.key, f.lacking, f"refused for {f.refused}" if f.refused else f"read as {f.reads_as}") for f in FACTS]


def markdown_rows() -> list[str]:
    """The docs' table rows (docs/exactly-once.md, "Compatibility"; a test keeps them equal)."""
    return [f"| `{key}` | {lacking} | {how} |" for key, lacking, how in describe()]
