"""Scale rehearsal: the real job with a near-free encoder, to expose what grows with the corpus.

``python -m e5tools.rehearsal.scale --out DIR`` runs ``e5-embed run`` (a subprocess, a local Ray cluster)
with a 1-layer, 32-wide random BERT over E5's real vocabulary, so the model costs almost nothing
and listing, reading, tokenizing, writing and the ledger are what is measured. Each step writes
its result to ``DIR/scale.json`` as it finishes:

- ``records``: records grow at fixed shards and output files: the driver's peak memory, each
  phase of the run (from the manifest's run record) and tokens/s;
- ``files``: shards and output files grow at fixed records;
- ``resume``: a no-op rerun over the largest output, and a rerun after 10% of its files were
  deleted;
- ``manifest``: a manifest holding ``--runs`` run records and the largest shard list, its size
  and the time to load and save it;
- ``duplicates``: the duplicate-id check on the largest output, driver path and Ray path;
- ``listing``: listing ``--s3-objects`` objects on a moto S3 server;
- ``cpu_side``: the whole job's CPU (every process, the machine's count) per token against the raw
  Rust tokenizer on the same records, by role (``e5tools.rehearsal.cpu_account``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from e5tools.jobrun import job_argv, run_sampled
from e5tools.rehearsal.corpus import texts_pool, write_corpus

logger = logging.getLogger("e5tools.rehearsal.scale")


def _driver_peak_mb(pid: int) -> float:
    """VmHWM: a process's own peak resident memory (0 once it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def run_job(corpus: Path, out: Path, model: str, rows_per_file: int, *extra: str) -> dict[str, Any]:
    """One ``e5-embed run`` in a subprocess: wall time, the driver's peak RSS, the run record."""
    cmd = job_argv(corpus, out, model, "--rows-per-file", str(rows_per_file), "--status-interval-s", "30", *extra)
    env = {**os.environ, "RAY_ADDRESS": "", "HF_HUB_OFFLINE": "1"}
    wall, stdout, peak = run_sampled(cmd, env, _driver_peak_mb, interval_s=0.5)
    manifest_path = out / "_manifest.json"
    manifest = json.loads(manifest_path.read_text())
    run = manifest["runs"][-1] if manifest["runs"] else {}
    return {
        "wall_s": round(wall, 2),
        "driver_peak_mb": round(peak, 1),
        "summary": stdout.strip().splitlines()[-1] if stdout.strip() else "",
        "phases": run.get("phases", {}),
        "rows_embedded": run.get("rows_embedded"),
        "tokens": run.get("tokens"),
        "embed_tokens_per_s": round(run["tokens"] / run["phases"]["embed"], 1)
        if run.get("phases", {}).get("embed")
        else None,
        "data_files": len(list(out.glob("part-*.parquet"))),
        "manifest_bytes": manifest_path.stat().st_size,
        "manifest_runs": len(manifest["runs"]),
    }


def manifest_cost(output: Path, runs: int) -> dict[str, Any]:
    """A manifest with ``runs`` run records over the output's shard list: size, load and save time."""
    from pipeline.io.storage import Storage
    from pipeline.ledger.manifest import Manifest

    storage = Storage(str(output))
    manifest = Manifest.load(storage)
    template = manifest.runs[-1]
    manifest.runs = [dict(template, run_id=f"r{i}") for i in range(runs)]
    t0 = time.perf_counter()
    manifest.save(storage, lambda: None)
    save_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    Manifest.load(storage)
    load_s = time.perf_counter() - t0
    return {
        "runs": runs,
        "input_shards": len(manifest.input_shards),
        "bytes": (output / "_manifest.json").stat().st_size,
        "save_s": round(save_s, 3),
        "load_s": round(load_s, 3),
    }


def duplicate_check_cost(output: Path, rows: int) -> dict[str, Any]:
    from pipeline.backend.dataset import ray_session
    from pipeline.backend.duplicates import duplicate_ids_on_cluster
    from pipeline.io.layout import TRUNCATE
    from pipeline.io.storage import Storage
    from pipeline.ledger.duplicates import on_driver

    storage = Storage(str(output))
    files = [str(p) for p in sorted(output.glob("part-*.parquet"))]
    t0 = time.perf_counter()
    driver = on_driver(storage, files, TRUNCATE)
    driver_s = time.perf_counter() - t0
    with ray_session(None):  # this process's Ray if it has one (tests), else a local one, stopped after
        t0 = time.perf_counter()
        cluster = duplicate_ids_on_cluster(storage, files, rows=rows)
        cluster_s = time.perf_counter() - t0
    assert driver.duplicate_ids == cluster.duplicate_ids == 0
    return {"rows": rows, "files": len(files), "driver_s": round(driver_s, 2), "cluster_s": round(cluster_s, 2)}


def listing_cost(objects: int) -> dict[str, Any]:
    import s3fs

    from e5tools.demo import patched_env
    from e5tools.local_s3 import LocalS3Server
    from pipeline.io.listing import list_shards

    with LocalS3Server() as s3, patched_env(s3.env()):
        options = {"endpoint_url": s3.endpoint_url}  # this server, whatever S3 this process used before
        fs = s3fs.S3FileSystem(skip_instance_cache=True, **options)
        fs.mkdir("scale")
        t0 = time.perf_counter()
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(16) as pool:
            list(pool.map(lambda i: fs.pipe(f"scale/in/s-{i:06d}.jsonl", b'{"text": "x"}\n'), range(objects)))
        put_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        shards = list_shards(["s3://scale/in/"], options)
        list_s = time.perf_counter() - t0
    assert len(shards) == objects
    return {"objects": objects, "list_s": round(list_s, 2), "upload_s": round(put_s, 1)}


def markdown(report: dict[str, Any]) -> str:
    """The measured tables for docs/scale.md."""
    lines = [f"Model: {report.get('model')}; machine: {report.get('machine')}.", ""]

    def runs_table(title: str, rows: list[dict[str, Any]]) -> None:
        lines.extend(
            [
                f"**{title}**",
                "",
                "| records | shards | data files | wall s | driver peak MB | list inputs s | output scan s | "
                "first tokenize batch at s | first encode batch at s | embed s | tokens/s (embed) | reconcile s | "
                "duplicate ids s | manifest KB |",
                "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
            ]
        )
        for r in rows:
            p = r["phases"]
            lines.append(
                f"| {r['records']:,} | {r['shards']:,} | {r['data_files']:,} | {r['wall_s']:.0f} | "
                f"{r['driver_peak_mb']:.0f} | {p.get('list_inputs', 0):.2f} | {p.get('prepare_output', 0):.2f} | "
                f"{p.get('first_tokenize_batch_at', 0):.1f} | {p.get('first_encode_batch_at', 0):.1f} | "
                f"{p.get('embed', 0):.0f} | {r['embed_tokens_per_s'] or 0:,.0f} | {p.get('reconcile', 0):.2f} | "
                f"{p.get('duplicate_ids', 0):.2f} | {r['manifest_bytes'] / 1024:.0f} |"
            )
        lines.append("")

    if report.get("records"):
        runs_table("Records grow; shards and output files fixed", report["records"])
    if report.get("files"):
        runs_table("Shards and output files grow; records fixed", report["files"])
    if report.get("resume"):
        r = report["resume"]
        noop, redo = r["noop"], r["after_deleting_10pct"]
        lines.append(
            f"- rerun on the complete output ({r['files']:,} files, {r['shards']:,} shards; a no-op, which records "
            f"no run): wall {noop['wall_s']:.1f} s, driver peak {noop['driver_peak_mb']:.0f} MB"
        )
        lines.append(
            f"- rerun after deleting 10% of its files: `{redo['summary']}`; driver peak {redo['driver_peak_mb']:.0f} "
            f"MB; phases {redo['phases']}"
        )
    if report.get("manifest"):
        m = report["manifest"]
        lines.append(
            f"- manifest with {m['runs']} runs and {m['input_shards']:,} input shards: {m['bytes'] / 1e6:.2f} MB, "
            f"save {m['save_s']} s, load {m['load_s']} s"
        )
    if report.get("duplicates"):
        d = report["duplicates"]
        lines.append(
            f"- duplicate-id check over {d['rows']:,} rows in {d['files']:,} files: driver path {d['driver_s']} s, "
            f"Ray path {d['cluster_s']} s (with its Ray start)"
        )
    if report.get("listing"):
        li = report["listing"]
        lines.append(f"- listing {li['objects']:,} objects on moto's S3 server: {li['list_s']} s")
    if report.get("cpu_side", {}).get("runs"):
        from e5tools.rehearsal.cpu_account import markdown as cpu_markdown

        lines += ["", cpu_markdown(report["cpu_side"])]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m e5tools.rehearsal.scale", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="folder for scale.json (and the work folders)")
    parser.add_argument("--records", default="250000,500000,1000000,2000000", help="record counts (curve)")
    parser.add_argument("--curve-shards", type=int, default=2000)
    parser.add_argument("--curve-files", type=int, default=1000)
    parser.add_argument("--shards", default="2000,20000", help="shard counts at --files-records records")
    parser.add_argument("--files-records", type=int, default=200_000)
    parser.add_argument("--rows-per-file", type=int, default=40, help="for the shards curve (5k files at 200k)")
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--s3-objects", type=int, default=20_000)
    parser.add_argument("--steps", default="records,files,resume,manifest,duplicates,listing,cpu_side")
    parser.add_argument("--cpu-side-records", default="100000,400000", help="the CPU-side step's two sizes")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")

    from e5tools.random_model import write_random_bert

    work = Path(args.out)
    work.mkdir(parents=True, exist_ok=True)
    report_path = work / "scale.json"
    report: dict[str, Any] = json.loads(report_path.read_text()) if report_path.exists() else {}

    def save() -> None:
        report_path.write_text(json.dumps(report, indent=2))

    model = write_random_bert(str(work / "model-1x32"), layers=1, hidden=32, heads=2, ffn=64, seed=0)
    report["model"] = "random BertModel, 1 layer, hidden 32, E5's uncased WordPiece vocabulary (near-free encoder)"
    report["machine"] = f"{os.cpu_count()} cores"
    pool = texts_pool()
    steps = set(args.steps.split(","))
    largest: tuple[Path, int] | None = None

    if "records" in steps:
        report["records"] = []
        for n in (int(x) for x in args.records.split(",")):
            corpus, out = work / "corpus-records", work / "out-records"
            write_corpus(corpus, n, args.curve_shards, pool)
            shutil.rmtree(out, ignore_errors=True)
            result = run_job(corpus, out, model, max(1, n // args.curve_files))
            result.update(records=n, shards=args.curve_shards)
            report["records"].append(result)
            save()
            logger.info("records %d: %s", n, result)
            largest = (out, n)
    if "files" in steps:
        report["files"] = []
        for shards in (int(x) for x in args.shards.split(",")):
            corpus, out = work / f"corpus-shards-{shards}", work / f"out-shards-{shards}"
            write_corpus(corpus, args.files_records, shards, pool)
            shutil.rmtree(out, ignore_errors=True)
            result = run_job(corpus, out, model, args.rows_per_file)
            result.update(records=args.files_records, shards=shards)
            report["files"].append(result)
            save()
            logger.info("shards %d: %s", shards, result)
        if "resume" in steps:
            noop = run_job(corpus, out, model, args.rows_per_file)
            files = sorted(out.glob("part-*.parquet"))
            for f in random.Random(1).sample(files, len(files) // 10):
                f.unlink()
            (out / "_SUCCESS").unlink()
            redo = run_job(corpus, out, model, args.rows_per_file)
            report["resume"] = {"shards": shards, "files": len(files), "noop": noop, "after_deleting_10pct": redo}
            save()
            logger.info("resume: %s", report["resume"])
        if "manifest" in steps:
            report["manifest"] = manifest_cost(out, args.runs)
            save()
    if "duplicates" in steps and largest is not None:
        report["duplicates"] = duplicate_check_cost(*largest)
        save()
    if "listing" in steps:
        report["listing"] = listing_cost(args.s3_objects)
        save()
    if "cpu_side" in steps:
        from e5tools.rehearsal.cpu_account import cpu_side_curve

        report["cpu_side"] = cpu_side_curve(work, tuple(int(x) for x in args.cpu_side_records.split(",")))
        save()
    (work / "scale.md").write_text(markdown(report))
    logger.info("wrote %s and scale.md", report_path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
