"""What the e5_embed DAG sends to Ray, built without a shell in sight. No Airflow import here:
the checks are plain functions, tested in the project's own test suite.

- The entrypoint is a list of arguments joined with ``shlex.join``; ``extra_args`` is split
  with ``shlex.split`` and every flag in it must be an ``e5-embed run`` flag (``RUN_FLAGS``,
  kept equal to the CLI's by a test). ``;``, ``&&``, ``$(...)`` stay literal text inside one
  quoted argument, never shell syntax.
- The Ray dashboard address and its token come from the connection; the token is not sent over
  plain http to a host that is not loopback unless the connection's extra says
  ``{"allow_insecure_token": true}``.
- Log lines copied from Ray into Airflow are scrubbed of the token and of credentials.
"""

from __future__ import annotations

import ipaddress
import re
import shlex
from collections.abc import Iterable, Mapping
from typing import Any

# `e5-embed run` flags -> whether the flag takes a value (tests compare this with the CLI parser).
RUN_FLAGS: dict[str, bool] = {
    "--config": True,
    "--untrusted-config": False,
    "--input": True,
    "--output": True,
    "--model": True,
    "--revision": True,
    "--prefix": True,
    "--max-length": True,
    "--chunk-tokens": True,
    "--chunk-overlap": True,
    "--max-chunks-per-record": True,
    "--status-interval-s": True,
    "--batch-size": True,
    "--dtype": True,
    "--output-dtype": True,
    "--device": True,
    "--compile": False,
    "--attention": True,
    "--shape-buckets": True,
    "--input-format": True,
    "--text-field": True,
    "--id-field": True,
    "--title-field": True,
    "--storage-options": True,
    "--rows-per-block": True,
    "--rows-per-file": True,
    "--gpu-actors": True,
    "--actors-per-gpu": True,
    "--tokenizer-actors": True,
    "--encode-threads": True,
    "--gpu-memory-gb": True,
    "--min-gpus": True,
    "--max-gpus": True,
    "--gpu-wait-s": True,
    "--scheduler-config": True,
    "--max-bad-fraction": True,
    "--skip-corrupt-remainders": False,
    "--ignore-unknown-files": False,
    "--max-record-bytes": True,
    "--lease-wait-s": True,
    "--lease-ttl-s": True,
    "--shared-local-path": False,
    "--overwrite": False,
    "--update": False,
    "--reuse-from": True,
    "--max-gpu-hours": True,
    "--max-cost": True,
    "--gpu-hour-price": True,
    "--budget-margin": True,
    "--budget-warmup-s": True,
    "--iceberg-table": True,
    "--iceberg-catalog": True,  # a name only: the catalog's settings are the cluster's (PYICEBERG_CATALOG__*)
    "--iceberg-keep-snapshots": True,
    "--iceberg-rebuild": False,
    "--ray-address": True,
    "--no-progress": False,
    "--debug": False,
}
# The job runs on the connection's cluster, and secrets do not travel in a job's entrypoint
# (Ray shows it in the dashboard and `ray job list`): these are not accepted from a trigger.
DENIED_FLAGS = frozenset({"--ray-address", "--storage-options"})


class BadParams(ValueError):
    """A DAG run's params cannot be turned into a safe job."""


def _check_extra(tokens: list[str]) -> list[str]:
    allowed = sorted(set(RUN_FLAGS) - DENIED_FLAGS)
    i = 0
    while i < len(tokens):
        token = tokens[i]
        flag, eq, _ = token.partition("=")
        if flag in DENIED_FLAGS:
            raise BadParams(f"extra_args: {flag} is not accepted from a DAG run")
        if flag not in RUN_FLAGS:
            raise BadParams(f"extra_args: {token!r} is not an e5-embed run flag; valid: {', '.join(allowed)}")
        if RUN_FLAGS[flag] and not eq:
            if i + 1 >= len(tokens):
                raise BadParams(f"extra_args: {flag} needs a value")
            i += 1
        elif not RUN_FLAGS[flag] and eq:
            raise BadParams(f"extra_args: {flag} takes no value")
        i += 1
    return tokens


def build_entrypoint(params: Mapping[str, Any]) -> str:
    """The Ray job entrypoint for one DAG run: every value a single quoted argument."""
    # whatever --config a trigger names (a param or in extra_args) may not pick the cluster or secrets
    args = ["python", "-m", "pipeline", "run", "--no-progress", "--untrusted-config"]
    if params.get("config"):
        args += ["--config", str(params["config"])]
    inputs = params["input"] if isinstance(params["input"], list) else [params["input"]]
    for uri in inputs:
        args += ["--input", str(uri)]
    args += ["--output", str(params["output"]), "--model", str(params["model"]), "--prefix", str(params["prefix"])]
    if params.get("batch_size"):
        args += ["--batch-size", str(int(params["batch_size"]))]
    if params.get("dtype"):
        args += ["--dtype", str(params["dtype"])]
    if params.get("iceberg_table"):  # publish the run as one snapshot of this table
        args += ["--iceberg-table", str(params["iceberg_table"])]
    if params.get("iceberg_catalog"):
        args += ["--iceberg-catalog", str(params["iceberg_catalog"])]
    extra = params.get("extra_args") or ""
    if not isinstance(extra, str):
        raise BadParams("extra_args must be a string of e5-embed run flags")
    try:
        tokens = shlex.split(extra)
    except ValueError as e:
        raise BadParams(f"extra_args: {e}") from e
    return shlex.join(args + _check_extra(tokens))


def build_verify_entrypoint(params: Mapping[str, Any]) -> str:
    """The optional verify task's Ray job: ``e5-embed verify`` on the run's output (and its table),
    ``verify_sample`` rows recomputed; it exits 2 on a defect, which fails the task and the DAG run."""
    sample = params.get("verify_sample")
    if sample is None or isinstance(sample, bool) or not isinstance(sample, int) or sample < 0:
        raise BadParams(f"verify_sample must be a whole number >= 0 (got {sample!r})")
    args = ["python", "-m", "pipeline", "verify", "--output", str(params["output"]), "--sample", str(sample)]
    if params.get("iceberg_table"):  # the snapshot the run published
        args += ["--iceberg-table", str(params["iceberg_table"])]
        if params.get("iceberg_catalog"):
            args += ["--iceberg-catalog", str(params["iceberg_catalog"])]
    return shlex.join(args)


def deployment_runtime_env(environ: Mapping[str, str]) -> dict[str, Any]:
    """The Ray ``runtime_env`` of every job this deployment submits: set by whoever deploys the DAG
    (``E5_EMBED_WORKING_DIR``: a local path or an ``s3://…`` zip of the project), never by a
    trigger's params, so a DAG run cannot ship code (``working_dir``, ``py_modules``, ``pip``) or
    environment to the cluster."""
    working_dir = environ.get("E5_EMBED_WORKING_DIR", "").strip()
    return {"working_dir": working_dir} if working_dir else {}


def is_loopback(host: str) -> bool:
    if host in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def dashboard_address(
    *, schema: str | None, host: str | None, port: int | None, has_token: bool, extra: Mapping[str, Any] | None = None
) -> str:
    """``scheme://host:port`` of the Ray dashboard; refuses a token over plain http to a remote host."""
    scheme = (schema or "http").lower()
    host = host or "127.0.0.1"
    if "://" in host:
        scheme, host = host.split("://", 1)
        scheme = scheme.lower()
    host = host.rstrip("/")
    if scheme not in ("http", "https"):
        raise BadParams(f"the Ray connection's scheme must be http or https, not {scheme!r}")
    allow = bool((extra or {}).get("allow_insecure_token", False))
    if has_token and scheme == "http" and not is_loopback(host.split(":")[0]) and not allow:
        raise BadParams(
            f"refusing to send the Ray token over plain http to {host}; use https, or set the "
            'connection extra {"allow_insecure_token": true} for a trusted network'
        )
    return f"{scheme}://{host}:{port or 8265}"


_CREDS = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)[^/@\s]+@")
_ASSIGNED = re.compile(
    r"(?i)\b(?P<k>[A-Z0-9_]*(?:SECRET|TOKEN|PASSWORD|PASSWD|CREDENTIAL|ACCESS_KEY)[A-Z0-9_]*)"
    r"(?P<sep>\s*[=:]\s*)(?P<v>[^\s,;'\"]+)"
)


def scrub_log(text: str, secrets: Iterable[str] = ()) -> str:
    """Ray's job log as it may be copied into Airflow: known secrets, URI credentials and
    ``SOMETHING_SECRET=value`` assignments replaced by ``***``."""
    for secret in sorted({s for s in secrets if s and len(s) >= 4}, key=len, reverse=True):
        text = text.replace(secret, "***")
    text = _CREDS.sub(lambda m: m.group("scheme") + "***@", text)
    return _ASSIGNED.sub(lambda m: m.group("k") + m.group("sep") + "***", text)
