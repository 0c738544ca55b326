"""Does the CPU side's throughput per core hold as nodes are added? The job on `ray start` clusters.

``python -m e5tools.rehearsal.node_scaling --out DIR`` starts a real multi-node Ray cluster on this
machine (``ray start --head`` and ``ray start --address``, token auth on), each node pinned to its
own physical core with ``taskset`` (a node's processes, and everything they start, inherit it), so
adding a node adds a core, as on a real cluster. For 1, 2, ... nodes (up to the machine's cores) it
runs the whole job twice (two corpus sizes) with the CPU-side bench's stand-in encoder, and reports
the **marginal** throughput in wall time (tokens between the sizes over the seconds of the embed
phase between them: actor start-up cancels), per core, against the raw Rust tokenizer pinned to the same cores.

What a 2-core machine cannot show: more than 2 nodes with a core each, network between nodes (the
object transfers go over loopback), and cores of a server. Every node's raylet, GCS client and
agents share the machine with the work, as they would on a real node.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from e5tools.jobrun import job_argv
from e5tools.local_s3 import free_ports

NODE_CPUS = 2  # logical CPUs per node: the CPU plan puts an encode actor (1 CPU) and a tokenizer on each


class PinnedRayCluster:
    """A head and ``nodes - 1`` workers, node ``i`` pinned to core ``i``; stopped by the handles it holds."""

    def __init__(self, nodes: int, work: Path):
        self.nodes = nodes
        self.token = secrets.token_hex(24)
        self.port, self.dashboard_port = free_ports(2)
        self.temp_dir = tempfile.mkdtemp(prefix="raynodes-", dir="/tmp")  # unix sockets want short paths
        self.work = work
        self.procs: list[subprocess.Popen] = []

    def env(self) -> dict[str, str]:
        env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": self.token, "HF_HUB_OFFLINE": "1"}
        env.pop("RAY_ADDRESS", None)
        return env

    def __enter__(self) -> PinnedRayCluster:
        ray_bin = str(Path(sys.executable).with_name("ray"))
        try:
            for core in range(self.nodes):
                common = [
                    "--block",
                    f"--num-cpus={NODE_CPUS}",
                    "--node-ip-address=127.0.0.1",
                    "--disable-usage-stats",
                    f"--object-store-memory={512 * 2**20}",
                ]
                if core == 0:
                    role = ["--head", f"--port={self.port}", "--include-dashboard=false", f"--temp-dir={self.temp_dir}"]
                else:
                    role = [f"--address=127.0.0.1:{self.port}"]
                    # each worker node its own ports (they share one host)
                    names = ("node-manager-port", "object-manager-port", "dashboard-agent-listen-port")
                    names += ("dashboard-agent-grpc-port", "metrics-export-port", "runtime-env-agent-port")
                    role += [f"--{n}={p}" for n, p in zip(names, free_ports(len(names)))]
                log = open(self.work / f"node-{core}.log", "w")  # noqa: SIM115 - closed with the process
                self.procs.append(
                    subprocess.Popen(
                        ["taskset", "-c", str(core), ray_bin, "start", *role, *common],
                        env=self.env(),
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        start_new_session=True,
                    )
                )
                self._wait_for_nodes(core + 1)
        except BaseException:
            self.__exit__()
            raise
        return self

    def _wait_for_nodes(self, count: int, timeout_s: float = 120) -> None:
        code = (
            "import ray, sys; ray.init(address=sys.argv[1], logging_level='ERROR'); "
            "print(sum(1 for n in ray.nodes() if n['Alive']))"
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if any(p.poll() is not None for p in self.procs):
                raise RuntimeError(f"a ray node exited: see {self.work}/node-*.log")
            done = subprocess.run(
                [sys.executable, "-c", code, f"127.0.0.1:{self.port}"],
                env=self.env(),
                capture_output=True,
                text=True,
                timeout=60,
            )
            if done.returncode == 0 and done.stdout.strip().splitlines()[-1:] == [str(count)]:
                return
            time.sleep(1)
        raise RuntimeError(f"{count} ray node(s) did not join in {timeout_s:.0f} s")

    def __exit__(self, *exc: object) -> None:
        for proc in reversed(self.procs):  # workers first, then the head
            try:
                proc.send_signal(signal.SIGTERM)
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                pass
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()
        self.procs.clear()
        shutil.rmtree(self.temp_dir, ignore_errors=True)


def run_on(cluster: PinnedRayCluster, corpus: Path, out: Path, model: str, *extra: str) -> dict:
    """One whole job through the cluster, its driver pinned to the head's core."""
    cmd = job_argv(corpus, out, model, "--overwrite", "--shared-local-path", *extra)
    env = {**cluster.env(), "RAY_ADDRESS": f"127.0.0.1:{cluster.port}"}
    started = time.perf_counter()
    done = subprocess.run(["taskset", "-c", "0", *cmd], env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"the job failed on {cluster.nodes} node(s) ({done.returncode}): {done.stderr[-3000:]}")
    run = json.loads((out / "_manifest.json").read_text())["runs"][-1]
    return {
        "wall_s": round(wall, 2),
        "embed_s": run["phases"]["embed"],  # the pipeline: actors started, shards read, files written
        "tokens": run["tokens"],
        "records": run["rows_embedded"],
        "plan": run["plan"],
        "timeline": run.get("timeline") or {},
    }


def raw_tokenizer_on(cores: int, model: str, records: int) -> float:
    """The raw Rust tokenizer's tokens per wall second, pinned to the first ``cores`` cores."""
    code = (
        "import json, sys; from e5tools.rehearsal.cpu_account import raw_tokenizer_cpu_rate, rehearsal_texts; "
        "print(json.dumps(raw_tokenizer_cpu_rate(sys.argv[1], rehearsal_texts(int(sys.argv[2])))))"
    )
    env = {**os.environ, "RAYON_NUM_THREADS": str(cores), "HF_HUB_OFFLINE": "1"}
    cmd = ["taskset", "-c", f"0-{cores - 1}", sys.executable, "-c", code, model, str(records)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"the raw tokenizer failed: {done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])["tokens_per_s"]


def scaling(work: Path, records: tuple[int, int], max_nodes: int, *extra: str) -> dict:
    from e5tools.random_model import write_random_bert
    from e5tools.rehearsal.corpus import texts_pool, write_corpus
    from e5tools.rehearsal.cpu_account import GPU_NODE_ENCODE, STAND_IN, STAND_IN_TEXT

    model = write_random_bert(str(work / "model-stand-in"), seed=0, **STAND_IN)
    pool = texts_pool()
    corpora = []
    for n in records:
        corpus = work / f"corpus-{n}"
        if not corpus.exists():
            write_corpus(corpus, n, max(1, n // 2000), pool)
        corpora.append(corpus)
    rows = []
    for nodes in range(1, max_nodes + 1):
        with PinnedRayCluster(nodes, work) as cluster:
            runs = [
                run_on(cluster, corpus, work / f"out-{nodes}-{n}", model, *GPU_NODE_ENCODE, *extra)
                for corpus, n in zip(corpora, records)
            ]
        small, large = runs
        # over the embed phase: the cluster's connection and the job's other steps are outside it
        marginal = (large["tokens"] - small["tokens"]) / (large["embed_s"] - small["embed_s"])
        raw = raw_tokenizer_on(nodes, model, records[1])
        rows.append(
            {
                "nodes": nodes,
                "cores": nodes,
                "runs": runs,
                "marginal_tokens_per_s": round(marginal),
                "per_core_tokens_per_s": round(marginal / nodes),
                "raw_tokenizer_tokens_per_s": round(raw),
                "wall_ratio": round(marginal / raw, 3),
            }
        )
        write_report(work, {"model": STAND_IN_TEXT, "records": list(records), "rows": rows})
    base = rows[0]["per_core_tokens_per_s"]
    for row in rows:
        row["per_core_vs_one_node"] = round(row["per_core_tokens_per_s"] / base, 3)
    report = {"model": STAND_IN_TEXT, "records": list(records), "rows": rows}
    write_report(work, report)
    return report


def write_report(work: Path, report: dict) -> None:
    (work / "node_scaling.json").write_text(json.dumps(report, indent=2))


def markdown(report: dict) -> str:
    lines = [
        f"Whole job on a `ray start` cluster, one node per core ({report['model']}; marginal "
        f"{report['records'][0]:,} -> {report['records'][1]:,} records):",
        "",
        "| nodes (cores) | embed s (small, large) | marginal tokens/s | per core | per core vs 1 node "
        "| raw tokenizer, same cores | wall ratio |",
        "|---:|---|---:|---:|---:|---:|---:|",
    ]
    for r in report["rows"]:
        walls = ", ".join(str(round(run["embed_s"], 2)) for run in r["runs"])
        lines.append(
            f"| {r['nodes']} | {walls} | {r['marginal_tokens_per_s']:,} | {r['per_core_tokens_per_s']:,} | "
            f"{r.get('per_core_vs_one_node', 'n/a')} | {r['raw_tokenizer_tokens_per_s']:,} | {r['wall_ratio']} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="the CPU side's throughput per core as nodes are added")
    parser.add_argument("--records", default="40000,200000", help="two record counts")
    parser.add_argument("--nodes", type=int, default=os.cpu_count() or 1, help="up to this many nodes (one per core)")
    parser.add_argument("--out", help="folder for node_scaling.json")
    args = parser.parse_args()
    if args.nodes > (os.cpu_count() or 1):
        parser.error(f"--nodes {args.nodes}: one core per node, and this machine has {os.cpu_count()}")
    small, large = (int(x) for x in args.records.split(","))
    out = Path(args.out or tempfile.mkdtemp(prefix="e5-node-scaling-"))
    out.mkdir(parents=True, exist_ok=True)
    print(markdown(scaling(out, (small, large), args.nodes)))
