"""One error family: every exception class the product defines derives from ``E5EmbedError``, and
the CLI maps the family to exit codes in one place."""

import argparse
import ast
from pathlib import Path

import pytest

from pipeline import cli
from pipeline.backend.session import PipelineFailed
from pipeline.errors import E5EmbedError, JobError, TransientError, UsageError, is_transient, step_failed
from pipeline.io.sources import ShardReadError
from pipeline.io.streams import CorruptStream, ShortRead
from pipeline.ledger.lease import LeaseDamaged, LeaseHeld, LeaseLost

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]


def test_every_exception_the_product_defines_is_in_the_family():
    defined = []
    for path in sorted((ROOT / "pipeline").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef) and any(
                isinstance(b, ast.Name) and (b.id.endswith(("Error", "Exception")) or b.id in {"Exception"})
                for b in node.bases
            ):
                defined.append(f"{path.relative_to(ROOT)}:{node.name}")
    assert len(defined) >= 8, defined  # the scan finds them (E5EmbedError, UsageError, JobError, leases, reads)
    family = {
        UsageError,
        JobError,
        TransientError,
        ShortRead,
        LeaseHeld,
        LeaseLost,
        LeaseDamaged,
        ShardReadError,
        CorruptStream,
        PipelineFailed,
    }
    assert all(issubclass(c, E5EmbedError) for c in family)
    names = {c.__name__ for c in family} | {"E5EmbedError"}
    assert {d.rsplit(":", 1)[1] for d in defined} <= names, sorted(defined)


@pytest.mark.parametrize(
    "error, code, label",
    [
        (LeaseHeld("output o is being written by run r"), 1, "job failed"),
        (LeaseDamaged("the lease file o/_lease/1.json is damaged"), 2, "error"),
        (ShardReadError("s.jsonl changed after it was listed"), 1, "job failed"),
        (UsageError("--batch-size must be >= 1"), 2, "error"),
        (TransientError("cannot list input s3://b/x: OSError: SlowDown; a retry may succeed"), 1, "temporary failure"),
    ],
)
def test_the_cli_maps_the_family_once(monkeypatch, capsys, error, code, label):
    def handler(args: argparse.Namespace) -> int:
        raise error

    parser = cli.build_parser()
    real_parse = parser.parse_args
    monkeypatch.setattr(cli, "build_parser", lambda: parser)
    monkeypatch.setattr(
        parser, "parse_args", lambda argv: argparse.Namespace(**{**vars(real_parse(argv)), "handler": handler})
    )
    assert cli.main(["plan", "--gpus", "1"]) == code
    err = capsys.readouterr().err
    assert err == f"e5-embed: {label}: {error}\n"


def test_a_settings_check_is_a_usage_error_and_still_a_value_error():
    from pipeline.stages.chunking import ChunkSettings

    with pytest.raises(UsageError, match="overlap") as caught:
        ChunkSettings(tokens=64, overlap=60)
    assert isinstance(caught.value, ValueError) and caught.value.exit_code == 2


class _Response:
    def __init__(self, status):
        self.status_code = status


class HfHubHTTPError(Exception):  # the shape of huggingface_hub's (a requests HTTPError with a response)
    def __init__(self, status):
        super().__init__(f"{status} Client Error")
        self.response = _Response(status)


class ClientError(Exception):  # the shape of botocore's
    def __init__(self, status, code):
        super().__init__(f"An error occurred ({code})")
        self.response = {"Error": {"Code": code}, "ResponseMetadata": {"HTTPStatusCode": status}}


class LocalEntryNotFoundError(FileNotFoundError):  # the Hub's wrapper when it could not be reached
    pass


class OfflineModeIsEnabled(ConnectionError):
    pass


def _caused(outer: BaseException, cause: BaseException) -> BaseException:
    outer.__cause__ = cause
    return outer


@pytest.mark.parametrize(
    "error, transient",
    [
        (ConnectionResetError(104, "Connection reset by peer"), True),
        (TimeoutError("read timed out"), True),
        (OSError("[Errno 5] An error occurred (SlowDown) when calling ListObjectsV2"), True),
        (HfHubHTTPError(503), True),
        (HfHubHTTPError(429), True),
        (HfHubHTTPError(404), False),
        (HfHubHTTPError(401), False),
        (ClientError(503, "SlowDown"), True),
        (ClientError(403, "AccessDenied"), False),
        (_caused(LocalEntryNotFoundError("cannot find the snapshot"), ConnectionError("refused")), True),
        (_caused(LocalEntryNotFoundError("cannot find the snapshot"), OfflineModeIsEnabled("offline")), False),
        (LocalEntryNotFoundError("not in the cache"), False),
        (FileNotFoundError("s3://b/missing"), False),
        (PermissionError("Access Denied"), False),
        (ValueError("bad json"), False),
        (_caused(RuntimeError("wrapped"), ConnectionResetError()), True),
        (UsageError("bad flag"), False),
        (TransientError("moment"), True),
    ],
)
def test_one_classification_of_transient_and_permanent_errors(error, transient):
    assert is_transient(error) is transient
    made = step_failed("cannot list input s3://b/x", error)
    assert isinstance(made, TransientError if transient else UsageError)
    assert made.exit_code == (1 if transient else 2) and "s3://b/x" in str(made)
