"""`e5-embed verify` over real outputs (real MiniLM weights, a real local Ray run to make them):
a correct output holds and keeps its bytes; each seeded defect fails it naming the rows or the
file; a source row changed since the run is counted, not called wrong; bad requests are one line
with their remedy. One output is made per module and copied for each defect."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline import cli
from pipeline.config import JobConfig
from pipeline.runner import run_job

pytestmark = pytest.mark.scenario

TEXTS = [
    "gzip compresses files with the deflate algorithm",
    "the capital of France is Paris",
    "rivers carry sediment to the sea",
    "a recipe for sourdough bread needs a starter",
    "the tokenizer splits words into word pieces",
    "jupiter is the largest planet in the solar system",
    "the treaty was signed in seventeen eighty three",
    "photosynthesis turns light into chemical energy",
    "a binary search halves the interval each step",
    "the violin has four strings tuned in fifths",
    "glaciers carve valleys over thousands of years",
    "interest rates affect the price of bonds",
]


def write_corpus(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for s in range(2):
        rows = [{"id": f"{s}-{i}", "text": t} for i, t in enumerate(TEXTS[s * 6 : (s + 1) * 6])]
        rows.append({"id": f"{s}-blank", "text": "   "})  # rejected: no text
        (folder / f"s{s}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.fixture(scope="module")
def made(ray_cluster, tmp_path_factory, minilm_path) -> Path:
    root = tmp_path_factory.mktemp("verify")
    write_corpus(root / "corpus")
    config = JobConfig(inputs=(str(root / "corpus"),), output=str(root / "out"), model=minilm_path, progress=False,
                       rows_per_file=4, max_bad_fraction=0.5, iceberg_table="embeddings.docs")  # fmt: skip
    assert run_job(config).status == "complete"
    return root / "out"


def copy(made: Path, tmp_path: Path, name: str = "out") -> Path:
    out = tmp_path / name
    shutil.copytree(made, out)
    manifest = json.loads((out / "_manifest.json").read_text())
    manifest["retired_files"] = [p.replace(str(made), str(out)) for p in manifest["retired_files"]]
    (out / "_manifest.json").write_text(json.dumps(manifest))
    return out


def verify(out: Path, capsys, *args: str) -> tuple[int, dict, str]:
    capsys.readouterr()
    code = cli.main(["verify", "--output", str(out), "--json", *args])
    captured = capsys.readouterr()
    return code, (json.loads(captured.out) if captured.out.strip().startswith("{") else {}), captured.err


def digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def data_files(out: Path) -> list[Path]:
    return sorted(out.glob("part-*.parquet"))


def rewrite(path: Path, change) -> None:
    """A data file rewritten by hand: its footer (schema metadata) kept as it was."""
    table = pq.read_table(path)
    pq.write_table(change(table).replace_schema_metadata(table.schema.metadata), path)


def test_a_correct_output_holds_and_verify_writes_nothing(made, capsys):
    before = digest(made)
    code, report, err = verify(made, capsys, "--sample", "12", "--seed", "3")
    assert code == 0 and report["ok"] and err == "", err
    assert report["coverage"] == {"files": len(data_files(made)) + 1, "rows_listed": 14, "rows_embedded": 12,
                                  "rows_rejected": 2}  # fmt: skip
    v = report["vectors"]
    assert v["checked"] == 12 and v["min_cosine"] >= 0.9999 and v["threshold"] == 0.9999
    assert v["spread_between_texts"] > 0.1 and v["worst_error_in_spreads"] < 0.01  # real weights: texts differ
    assert digest(made) == before  # not a byte of the output changed (manifest, catalog, files)
    # the table's current snapshot: exactly the output's files
    code, report, _ = verify(made, capsys, "--iceberg-table", "embeddings.docs", "--sample", "4")
    assert code == 0 and report["snapshot"] and digest(made) == before
    # the same seed draws the same rows
    assert (
        verify(made, capsys, "--sample", "5", "--seed", "9")[1]["vectors"]
        == verify(made, capsys, "--sample", "5", "--seed", "9")[1]["vectors"]
    )


def test_a_vector_replaced_by_another_records_is_named(made, tmp_path, capsys):
    out = copy(made, tmp_path)
    first = data_files(out)[0]

    def swap(table: pa.Table) -> pa.Table:
        vectors = table["embedding"].to_pylist()
        vectors[0], vectors[1] = vectors[1], vectors[0]
        return table.set_column(table.schema.get_field_index("embedding"), "embedding",
                                pa.array(vectors, table.schema.field("embedding").type))  # fmt: skip

    ids = pq.read_table(first, columns=["id"])["id"].to_pylist()[:2]
    rewrite(first, swap)
    code, report, err = verify(out, capsys, "--sample", "12")
    assert code == 2 and not report["ok"]
    named = [d for d in report["defects"] if "stored vector at cosine" in d]
    assert len(named) == 2 and all(any(f"(id {i})" in d for d in named) for i in ids), report["defects"]
    assert "defect:" in err


def test_a_row_deleted_from_a_data_file_is_named(made, tmp_path, capsys):
    out = copy(made, tmp_path)
    victim = data_files(out)[0]
    rewrite(victim, lambda t: t.slice(1))  # the footer still claims the row
    code, report, _ = verify(out, capsys, "--sample", "0")
    assert code == 2
    assert any(victim.name in d and "footer says it holds" in d for d in report["defects"]), report["defects"]
    assert any("1 input row(s) missing" in d for d in report["defects"]), report["defects"]


def test_a_row_duplicated_across_two_files_is_named(made, tmp_path, capsys):
    out = copy(made, tmp_path)
    a, b = data_files(out)[:2]
    extra = pq.read_table(a).slice(0, 1)
    rewrite(b, lambda t: pa.concat_tables([t, extra.cast(t.schema)]))
    code, report, _ = verify(out, capsys, "--sample", "0")
    assert code == 2 and any("are in two files" in d for d in report["defects"]), report["defects"]


def test_a_data_file_from_another_model_is_named(made, tmp_path, capsys):
    out = copy(made, tmp_path)
    victim = data_files(out)[-1]
    table = pq.read_table(victim)
    meta = dict(table.schema.metadata)
    produced = json.loads(meta[b"e5_embed"])
    produced["model_sha"] = "sha256:" + "0" * 64
    meta[b"e5_embed"] = json.dumps(produced).encode()
    pq.write_table(table.replace_schema_metadata(meta), victim)
    code, report, _ = verify(out, capsys, "--sample", "0")
    assert code == 2 and any(victim.name in d and "model_sha" in d for d in report["defects"]), report["defects"]


def test_a_vector_off_by_more_than_the_dtype_tolerance_is_named(made, tmp_path, capsys):
    """What a lower-precision path beyond tolerance (or bit rot) leaves: one vector moved to cosine ~0.995."""
    out = copy(made, tmp_path)
    victim = data_files(out)[1]

    def nudge(table: pa.Table) -> pa.Table:
        vectors = np.asarray(table["embedding"].to_pylist(), np.float32)
        noise = np.random.default_rng(0).standard_normal(vectors.shape[1]).astype(np.float32)
        moved = vectors[0] + 0.1 * noise / np.linalg.norm(noise)
        vectors[0] = moved / np.linalg.norm(moved)
        return table.set_column(table.schema.get_field_index("embedding"), "embedding",
                                pa.array(vectors.tolist(), table.schema.field("embedding").type))  # fmt: skip

    rewrite(victim, nudge)
    code, report, _ = verify(out, capsys, "--sample", "12")
    assert code == 2 and report["vectors"]["min_cosine"] < 0.999
    assert len([d for d in report["defects"] if "stored vector at cosine 0.99" in d]) == 1, report["defects"]


def test_a_source_changed_since_the_run_is_counted_not_called_wrong(ray_cluster, tmp_path, minilm_path, capsys):
    write_corpus(tmp_path / "corpus")
    out = tmp_path / "out"
    run_job(JobConfig(inputs=(str(tmp_path / "corpus"),), output=str(out), model=minilm_path, progress=False,
                      max_bad_fraction=0.5))  # fmt: skip
    (tmp_path / "corpus" / "s1.jsonl").write_text(json.dumps({"id": "1-0", "text": "edited since"}) + "\n")
    code, report, _ = verify(out, capsys, "--sample", "12")
    assert code == 0 and report["vectors"]["changed_since_run"] == 6 and report["vectors"]["checked"] == 6


def test_bad_requests_are_one_line_with_their_remedy(made, tmp_path, capsys, tiny_e5_path):
    out = copy(made, tmp_path)
    cases = [
        (["--sample", "1000"], "more than the 12 rows the output holds: pass --sample 12"),
        (["--iceberg-table", "embeddings.docs", "--snapshot", "42"], "snapshot 42 does not exist"),
        (["--model", tiny_e5_path], "pass --model with a copy of the model it was made with"),
        (["--snapshot", "1"], "pass the table too"),
    ]
    for args, said in cases:
        code, _, err = verify(out, capsys, *args)
        assert code == 2 and said in err and len(err.strip().splitlines()) == 1, (args, err)
    (out / "_SUCCESS").unlink()
    code, _, err = verify(out, capsys)
    assert code == 2 and "is not complete (no _SUCCESS): finish it with `e5-embed run`" in err


def test_the_recomputation_runs_as_ray_tasks_on_a_cluster(made, ray_cluster):
    from pipeline.backend.verify_tasks import recompute_on_cluster
    from pipeline.verify.audit import VerifyRequest
    from pipeline.verify.audit import verify as audit

    request = VerifyRequest(output=str(made), sample=12, ray_address="auto")
    result = audit(request, recompute_on_cluster)
    assert result.exit_code == 0 and result.vectors.checked == 12 and min(result.vectors.cosines) >= 0.9999


def test_a_chunked_output_is_verified_window_by_window(ray_cluster, tmp_path, minilm_path, capsys):
    """Each sampled row is a window: what the model read is the prefix, the title and the window's
    characters of the record read again (the chunk stage's contract), encoded by the card's code."""
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    long = " ".join(TEXTS) * 3  # several 64-token windows
    rows = [{"id": "long", "title": "A long one", "text": long}, {"id": "short", "title": "", "text": TEXTS[0]}]
    (corpus / "a.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out"
    run_job(JobConfig(inputs=(str(corpus),), output=str(out), model=minilm_path, progress=False, chunk_tokens=64,
                      title_field="title"))  # fmt: skip
    windows = sum(pq.read_metadata(f).num_rows for f in data_files(out))
    code, report, err = verify(out, capsys, "--sample", str(windows))
    assert code == 0, (report.get("defects"), err)
    assert report["vectors"]["checked"] == windows > 2 and report["vectors"]["min_cosine"] >= 0.9999
    assert report["coverage"]["rows_embedded"] == 2  # records, not windows


def test_an_output_path_with_glob_characters_is_read_literally(made, tmp_path, capsys):
    out = copy(made, tmp_path, "o7[ab]*")
    (tmp_path / "o7a").mkdir()  # what the pattern would match, were it globbed
    code, report, err = verify(out, capsys, "--sample", "3")
    assert code == 0 and report["coverage"]["rows_embedded"] == 12, err


def test_a_store_that_fails_while_verify_reads_is_exit_1_with_a_way_out(
    ray_cluster, s3_server, bucket, tmp_path, minilm_path, capsys
):
    """The output's store stops answering for its data files while verify reads them: exit 1 (a
    retry may finish it), one line naming the output; never exit 0, never a defect (exit 2)."""
    from tests.faulty_proxy import FaultyProxy

    write_corpus(tmp_path / "corpus")
    out = f"s3://{bucket}/verified/"
    config = JobConfig(inputs=(str(tmp_path / "corpus"),), output=out, model=minilm_path, progress=False,
                       rows_per_file=4, max_bad_fraction=0.5)  # fmt: skip
    assert run_job(config).status == "complete"
    assert verify(out, capsys)[0] == 0  # the store answering: it holds
    down = lambda method, path: method == "GET" and "/part-" in path  # noqa: E731
    with FaultyProxy(s3_server.host, s3_server.port, fail_every=0, fail_when=down) as proxy:
        options = {"endpoint_url": proxy.endpoint_url, "config_kwargs": {"retries": {"max_attempts": 2}}}
        code, report, err = verify(out, capsys, "--storage-options", json.dumps(options))
        assert proxy.injected > 0
    assert code == 1 and not report, err
    assert len(err.strip().splitlines()) == 1 and "verify could not read" in err and "verified" in err
