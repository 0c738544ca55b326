"""CPU seconds of a whole job, every process counted, by role: what the CPU side costs per token.

The headline is the machine's own count: CPU seconds all cores spent busy while the job ran
(``/proc/stat``), less the sampler's own, so nothing the job started can be missed. The breakdown
comes from sampling every process of the job's tree from ``/proc`` (a process's counters are gone
once it exits, so the last sample per process is what counts). Roles come from Ray's process
titles:

- ``encode``: the encode actors (``ray::MapWorker(MapBatches(EncodeStage))``): the host-side work
  of the GPU actor (Arrow to numpy, sorting, padding, copies, the results back to Arrow) plus,
  here, the stand-in encoder's forward on CPU (``STAND_IN``: embeddings only, no layers).
- ``tokenize``: the tokenizer actors (``TokenizeStage``/``ChunkTokenizeStage``).
- ``io``: Ray task workers that ran read tasks (JSON/Parquet parsing) or write tasks (Parquet + zstd +
  upload).
- ``driver``: the ``pipeline run`` process (Ray Data's streaming executor, the ledger).
- ``runtime``: Ray's own processes (raylet, GCS, dashboard agent, log monitor, system actors),
  and workers that ran no stage.
- ``unattributed``: the machine's busy CPU seconds that no sampled process holds: processes that
  exited between two samples, and anything else running on the machine. Counted as the job's.
- ``sampler``: this measurement's own ``/proc`` walks; not the job's, left out of the ratio.

The roles sum to the machine's busy CPU seconds over the run by construction; ``accounted`` is
the share the per-process samples explain (the rest is ``unattributed``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

ROLES = ("encode", "tokenize", "io", "driver", "runtime")  # sampled per process
JOB_ROLES = (*ROLES, "unattributed")  # every CPU second of the job
# the encoder standing in for the GPU: E5's vocabulary and embeddings, no transformer layer, so what
# the encode actor spends is its host-side work (a 1-layer forward on CPU alone costs more than the
# tokenizer: docs/benchmarks.md)
STAND_IN = {"layers": 0, "hidden": 32, "heads": 2, "ffn": 64}
ACCOUNTED_FLOOR = 0.9  # below this share of the machine's busy CPU, the breakdown says it is thin
GPU_NODE_ENCODE = ("--encode-threads", "1", "--batch-size", "256")


def gpu_node_shape() -> tuple[str, ...]:
    """The job as on a GPU node: the encode actor's one torch thread and a GPU plan's micro-batch, and a
    tokenizer actor per usable core (a GPU plan sizes the pool by the GPU's need; here every core the
    encode actor's host work leaves is needed: one tokenizer paces a 2-core node at ~0.4x the raw
    tokenizer, two at ~0.53x, docs/benchmarks.md)."""
    return (*GPU_NODE_ENCODE, "--tokenizer-actors", str(usable_cores()))


STAND_IN_TEXT = "random BertModel, embeddings only (no layer), hidden 32, E5's uncased WordPiece vocabulary"
_TICKS = os.sysconf("SC_CLK_TCK")


def usable_cores() -> int:
    """The cores this process (and the job it starts) may run on: its CPU affinity, so a bench run
    under ``taskset -c 0`` counts one core."""
    return len(os.sched_getaffinity(0)) or os.cpu_count() or 1


def machine_busy_s() -> float:
    """CPU seconds all cores have spent busy since boot (``/proc/stat``: every state but idle and
    iowait; guest time is already inside user)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    return (sum(fields) - fields[3] - fields[4]) / _TICKS


def role_of(titles: set[str]) -> str:
    text = " ".join(titles)
    if "EncodeStage" in text:
        return "encode"
    if "TokenizeStage" in text:
        return "tokenize"
    if "pipeline run" in text:
        return "driver"
    if any(t.startswith(("ray::Read", "ray::Write")) for t in titles):
        return "io"
    return "runtime"


def process_label(titles: set[str]) -> str:
    """A short name for a process: ``ray::Name`` for a Ray worker's title, else its program (the
    script for ``python script.py``)."""
    named = sorted(t for t in titles if t.startswith("ray::") and not t.startswith("ray::IDLE"))
    if named or "ray::IDLE" in titles:  # a worker: what it ran, else idle
        return (named[0].split("(")[0].split()[0].split(".")[0]) if named else "ray::IDLE"
    words = (sorted(titles) or [""])[0].split()
    if not words:
        return "?"
    name = os.path.basename(words[0])
    if name.startswith("python") and len(words) > 1:
        script = next((w for w in words[1:] if not w.startswith("-")), words[1])
        return os.path.basename(script)
    return name


@dataclass
class ProcessCPU:
    """Call with the job's root pid now and then; ``by_role()`` afterwards."""

    titles: dict[int, set[str]] = field(default_factory=dict)
    cpu_s: dict[int, float] = field(default_factory=dict)

    def __call__(self, root: int) -> float:
        children: dict[int, list[int]] = {}
        seen: dict[int, tuple[str, float]] = {}
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
                title = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            rest = stat[stat.rindex(")") + 2 :].split()
            children.setdefault(int(rest[1]), []).append(int(entry))
            seen[int(entry)] = (title.strip()[:200], (int(rest[11]) + int(rest[12])) / _TICKS)
        stack = [root]
        while stack:
            pid = stack.pop()
            if pid in seen:
                title, cpu = seen[pid]
                if title:
                    self.titles.setdefault(pid, set()).add(title)
                self.cpu_s[pid] = max(self.cpu_s.get(pid, 0.0), cpu)
            stack.extend(children.get(pid, []))
        return sum(self.cpu_s.values())

    def runtime_by_process(self, top: int = 8) -> dict[str, float]:
        """The ``runtime`` role's CPU seconds by process kind (raylet, gcs_server, agents, idle
        workers, the progress actor), largest first."""
        out: dict[str, float] = {}
        for pid, cpu in self.cpu_s.items():
            titles = self.titles.get(pid, set())
            if role_of(titles) == "runtime":
                label = process_label(titles)
                out[label] = out.get(label, 0.0) + cpu
        return {k: round(v, 2) for k, v in sorted(out.items(), key=lambda kv: -kv[1])[:top]}

    def by_role(self) -> dict[str, float]:
        out = dict.fromkeys(ROLES, 0.0)
        for pid, cpu in self.cpu_s.items():
            out[role_of(self.titles.get(pid, set()))] += cpu
        return {k: round(v, 2) for k, v in out.items()}


def raw_tokenizer_cpu_rate(model: str, texts: list[str], max_length: int = 512) -> dict[str, float]:
    """The Rust tokenizer's ``encode_batch`` alone over ``texts`` (prefixed): tokens per second of
    wall time and per CPU second (all its threads counted)."""
    import copy
    import time

    from pipeline.stages.model import ModelSource

    backend = copy.deepcopy(ModelSource(name_or_path=model).load_tokenizer())
    backend.no_padding()
    backend.enable_truncation(max_length)
    prefixed = ["passage: " + t for t in texts]
    backend.encode_batch(prefixed[:1000])
    wall, cpu = time.perf_counter(), time.process_time()
    tokens = sum(len(e.ids) for e in backend.encode_batch(prefixed))
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return {"tokens": tokens, "tokens_per_s": round(tokens / wall, 1), "tokens_per_cpu_s": round(tokens / cpu, 1)}


def raw_tokenizer_one_thread(model: str, records: int) -> dict[str, float]:
    """``raw_tokenizer_cpu_rate`` with the Rust thread pool held to one thread (a fresh process: the
    pool's size is fixed when it is first used) over the first ``records`` of the rehearsal's texts."""
    import json
    import subprocess
    import sys

    code = (
        "import json, sys; from e5tools.rehearsal.cpu_account import raw_tokenizer_cpu_rate, rehearsal_texts; "
        "print(json.dumps(raw_tokenizer_cpu_rate(sys.argv[1], rehearsal_texts(int(sys.argv[2])))))"
    )
    env = {**os.environ, "RAYON_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-c", code, model, str(records)], env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"the one-thread tokenizer measurement failed ({done.returncode}): {done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def rehearsal_texts(records: int, pool: list[str] | None = None) -> list[str]:
    """The texts ``e5tools.rehearsal.corpus.write_corpus`` writes for ``records`` records from ``pool``, in order."""
    from e5tools.rehearsal.corpus import record_text, texts_pool

    pool = pool or texts_pool()
    return [record_text(pool, i) for i in range(records)]


def job_cpu_side(corpus: Path, out: Path, model: str, texts: list[str], *extra: str) -> dict:
    """The job over ``corpus``, every CPU second of the machine while it ran, by role; then the raw
    tokenizer on ``texts`` (the same records), outside that window."""
    import json
    import time

    from e5tools.jobrun import job_argv, run_sampled

    account = ProcessCPU()
    cmd = job_argv(corpus, out, model, "--overwrite", *extra)
    env = {**os.environ, "RAY_ADDRESS": "", "HF_HUB_OFFLINE": "1"}
    own, busy = time.process_time(), machine_busy_s()
    wall, _, _ = run_sampled(cmd, env, account, interval_s=0.25)  # one /proc walk per sample; its "peak" unused
    busy, own = machine_busy_s() - busy, time.process_time() - own  # own: the sampler thread's walks
    manifest = json.loads((out / "_manifest.json").read_text())
    tokens = int(manifest["tokens"])
    roles = account.by_role()
    sampled = sum(roles.values())
    roles["unattributed"] = round(max(0.0, busy - own - sampled), 2)  # ticks round: never below zero
    job = sum(roles.values())
    raw = raw_tokenizer_cpu_rate(model, texts)
    work_cpu = roles["tokenize"] + roles["io"]
    cores = usable_cores()
    return {
        "records": int(manifest["rows_written"]),
        "tokens": tokens,
        "wall_s": round(wall, 2),
        "cpu_s_by_role": roles,
        "job_cpu_s": round(job, 2),
        "machine_busy_cpu_s": round(busy, 2),
        "sampler_cpu_s": round(own, 2),
        "accounted": round(sampled / (busy - own), 3) if busy > own else None,
        "job_tokens_per_cpu_s": round(tokens / job, 1) if job else None,
        "tokenize_io_tokens_per_cpu_s": round(tokens / work_cpu, 1) if work_cpu else None,
        "raw_tokenizer": raw,
        "cores_held_by_driver_and_ray": round((roles["driver"] + roles["runtime"]) / wall, 2),
        "runtime_by_process": account.runtime_by_process(),
        "cores": cores,
        "utilization": round(job / (cores * wall), 3) if wall else None,  # busy CPU / CPUs available
        "tokens_per_wall_s": round(tokens / wall, 1) if wall else None,
        "timeline": manifest["runs"][-1].get("timeline") or {},
    }


def cpu_side_curve(work: Path, records: tuple[int, int] = (50_000, 200_000), *extra: str, layers: int = 0) -> dict:
    """The job at two record counts with the stand-in encoder (``STAND_IN``); the whole job's
    **marginal** tokens per CPU second between them (start-up, worker imports and other fixed costs
    cancel) against the raw tokenizer's."""
    from e5tools.random_model import write_random_bert
    from e5tools.rehearsal.corpus import texts_pool, write_corpus

    stand_in = {**STAND_IN, "layers": layers}  # layers=1: a 1-layer forward on the CPU too (not near-free here)
    model = write_random_bert(str(work / f"model-stand-in-{layers}"), seed=0, **stand_in)
    # the encode actor as on a GPU node: one torch thread on its one reserved core (the CPU plan gives
    # torch every core of the node), and a GPU plan's micro-batch (256 rows: the A100 profile's for
    # e5-base; T4's is 64, H100's 512). The stand-in's forward runs on the CPU here, a GPU's work on
    # a GPU node; per million tokens it costs least at 128-256 rows (per-call Python in transformers
    # dominates below, padding above: docs/benchmarks.md), so what remains is closest to host work.
    extra = (*gpu_node_shape(), *extra)
    pool = texts_pool()
    runs = []
    for n in records:
        corpus = work / f"cpu-side-corpus-{n}"
        write_corpus(corpus, n, max(1, n // 2000), pool)
        runs.append(job_cpu_side(corpus, work / f"cpu-side-out-{n}", model, rehearsal_texts(n, pool), *extra))
    one_thread = raw_tokenizer_one_thread(model, records[1])["tokens_per_cpu_s"]
    report = summarize(runs, one_thread, records)
    if layers:
        report["model"] = STAND_IN_TEXT.replace("embeddings only (no layer)", f"{layers} layer(s)")
    return report


def summarize(runs: list[dict], one_thread: float, records: tuple[int, int]) -> dict:
    """The marginal whole job of two ``job_cpu_side`` runs against the raw tokenizer, with each
    role's marginal CPU-seconds per million tokens (they add up to the whole). The baseline is the
    **highest** raw rate of the runs: the raw figure moves run to run on a shared machine, and the
    fastest one is the strictest comparison."""
    small, large = runs
    d_tokens = large["tokens"] - small["tokens"]
    d_roles = {r: large["cpu_s_by_role"][r] - small["cpu_s_by_role"][r] for r in JOB_ROLES}
    d_job = large["job_cpu_s"] - small["job_cpu_s"]
    measurable = d_tokens > 0 and d_job > 0
    marginal = d_tokens / d_job if measurable else None
    raws = [r["raw_tokenizer"]["tokens_per_cpu_s"] for r in runs]
    raw = max(raws)
    d_wall = large["wall_s"] - small["wall_s"]
    cores = large.get("cores") or usable_cores()
    wall_rate = d_tokens / d_wall if d_tokens > 0 and d_wall > 0 else None
    raw_wall = max(r["raw_tokenizer"]["tokens_per_s"] for r in runs)
    return {
        "model": STAND_IN_TEXT,
        "cores": cores,
        "runs": runs,
        "marginal_job_tokens_per_cpu_s": round(marginal, 1) if marginal else None,
        "marginal_cpu_s_per_m_tokens": {r: round(v / d_tokens * 1e6, 3) for r, v in d_roles.items()}
        if measurable
        else None,
        "marginal_job_cpu_s_per_m_tokens": round(d_job / d_tokens * 1e6, 3) if measurable else None,
        "raw_tokenizer_tokens_per_cpu_s": raw,
        "raw_tokenizer_cpu_s_per_m_tokens": round(1e6 / raw, 3),
        "raw_tokenizer_range": [min(raws), raw],
        "marginal_ratio": round(marginal / raw, 3) if marginal else None,
        "marginal_ratio_range": [round(marginal / raw, 3), round(marginal / min(raws), 3)] if marginal else None,
        # wall time: what a GPU is fed (the marginal window: start-up and fixed costs cancel)
        "marginal_tokens_per_wall_s": round(wall_rate, 1) if wall_rate else None,
        "raw_tokenizer_tokens_per_wall_s": raw_wall,  # every core's Rust threads, the same records
        "marginal_wall_ratio": round(wall_rate / raw_wall, 3) if wall_rate else None,
        "marginal_utilization": round(d_job / (cores * d_wall), 3) if d_wall > 0 else None,
        # context, not the target: each 1-CPU tokenizer actor runs one Rust thread
        "raw_tokenizer_one_thread_tokens_per_cpu_s": one_thread,
        "how": f"(tokens at {records[1]} - at {records[0]} records) / (the machine's busy CPU-s while each job ran, "
        "less the sampler's own, between the same two sizes), against encode_batch's tokens per CPU-s on the "
        "same records (the highest of the runs' raw measurements)",
    }


def markdown(report: dict) -> str:
    lines = [
        f"Whole job, every process ({report['cores']} cores, stand-in encoder: {report['model']}):",
        "",
        "| records | tokens | wall s | " + " | ".join(f"{r} CPU-s" for r in JOB_ROLES) + " | job CPU-s "
        "| sampled share | job tokens/CPU-s |",
        "|---:|---:|---:|" + "---:|" * (len(JOB_ROLES) + 3),
    ]
    for r in report["runs"]:
        c = r["cpu_s_by_role"]
        lines.append(
            f"| {r['records']:,} | {r['tokens']:,} | {r['wall_s']} | "
            + " | ".join(str(c[k]) for k in JOB_ROLES)
            + f" | {r['job_cpu_s']} | {r['accounted']} | {_number(r['job_tokens_per_cpu_s'])} |"
        )
    thin = [r for r in report["runs"] if r["accounted"] is not None and r["accounted"] < ACCOUNTED_FLOOR]
    if thin:  # the whole still counts everything; the breakdown explains less of it
        lines += [
            "",
            f"Note: the per-process samples explain only {min(r['accounted'] for r in thin):.0%} of the machine's "
            "busy CPU in a run: processes exited between samples, or something else ran on the machine. The whole "
            "job's figure counts it (as unattributed).",
        ]
    if report["marginal_ratio"] is None:  # tiny runs: start-up noise larger than the work between them
        lines += ["", f"Marginal whole job: not measurable, the runs' CPU difference is noise ({report['how']})."]
        return "\n".join(lines) + "\n"
    per_m = report["marginal_cpu_s_per_m_tokens"]
    lines += [
        "",
        f"Marginal whole job: {_number(report['marginal_job_tokens_per_cpu_s'])} tokens per CPU-s against the raw "
        f"tokenizer's {_number(report['raw_tokenizer_tokens_per_cpu_s'])}: **{report['marginal_ratio']}x** "
        f"({report['how']}; against the lowest raw measurement {_number(report['raw_tokenizer_range'][0])}: "
        f"{report['marginal_ratio_range'][1]}x).",
        "",
        "CPU-s per million tokens, marginal: "
        + ", ".join(f"{r} {per_m[r]}" for r in JOB_ROLES)
        + f" = {report['marginal_job_cpu_s_per_m_tokens']} "
        f"(raw tokenizer: {report['raw_tokenizer_cpu_s_per_m_tokens']}; "
        f"one Rust thread: {_number(report['raw_tokenizer_one_thread_tokens_per_cpu_s'])} tokens per CPU-s).",
        "",
        f"Wall time, marginal: {_number(report['marginal_tokens_per_wall_s'])} tokens/s against the raw tokenizer's "
        f"{_number(report['raw_tokenizer_tokens_per_wall_s'])} on the same {report['cores']} cores: "
        f"**{report['marginal_wall_ratio']}x**; utilization (the job's busy CPU / CPUs available, marginal window): "
        f"**{_share(report['marginal_utilization'])}** (per run: "
        + ", ".join(f"{r['records']:,} records {_share(r['utilization'])}" for r in report["runs"])
        + ").",
    ]
    timeline = report["runs"][-1].get("timeline")
    if timeline:
        from pipeline.backend.timeline import describe

        lines += ["", f"Timeline of the {report['runs'][-1]['records']:,}-record run (the job's own log line):", ""]
        lines += ["```", describe(timeline), "```"]
    return "\n".join(lines) + "\n"


def _share(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0%}"


def _number(value: float | None) -> str:
    return "n/a" if value is None else f"{value:,.0f}"


if __name__ == "__main__":
    import argparse
    import json
    import tempfile

    parser = argparse.ArgumentParser(description="the whole job's CPU per token against the raw tokenizer")
    parser.add_argument("--records", default="50000,200000", help="two record counts")
    parser.add_argument("--out", help="folder for cpu_side.json and cpu_side.md")
    parser.add_argument("--layers", type=int, default=0, help="the stand-in encoder's transformer layers")
    parser.add_argument("job_args", nargs="*", help="extra `e5-embed run` arguments (after --)")
    args = parser.parse_args()
    small, large = (int(x) for x in args.records.split(","))
    out = Path(args.out or tempfile.mkdtemp(prefix="e5-cpu-side-"))
    out.mkdir(parents=True, exist_ok=True)
    result = cpu_side_curve(out, (small, large), *args.job_args, layers=args.layers)
    (out / "cpu_side.json").write_text(json.dumps(result, indent=2))
    (out / "cpu_side.md").write_text(markdown(result))
    print(markdown(result))
