"""The ``e5_embed`` DAG: one E5 embedding job on a Ray cluster per DAG run.

Trigger with params (``dag_run.conf``): input, output, model, prefix, and optionally
batch_size, dtype, iceberg_table and iceberg_catalog (publish the proven run as one Iceberg
snapshot; the catalog is named, its settings are the cluster's PYICEBERG_CATALOG__* variables),
config (a job YAML inside the working dir; it may not set ray_address or storage_options),
extra_args (``e5-embed run`` flags only: split with shlex, checked against the
run flags, re-joined; see e5_embed_args.py), verify_sample (after the run, ``e5-embed verify``
recomputes that many sampled vectors and re-proves the output; a defect fails the DAG run; null:
no verify task). What runs on the cluster is the deployment's: the
Ray ``runtime_env`` comes from ``E5_EMBED_WORKING_DIR`` here, never from a trigger (params are
not templated into it). The cluster comes from one Airflow connection fixed by the deployment
(``E5_EMBED_RAY_CONN_ID``, default ``ray_default``; host/port: Ray dashboard, password: the
cluster's auth token), never from a trigger's params. Retries re-attach or resume; a killed
task stops its Ray job; see ray_job.py.
"""

from __future__ import annotations

import os
import sys
from datetime import datetime, timedelta

sys.path.insert(0, os.path.dirname(__file__))  # ray_job.py next to this file

from e5_embed_args import build_entrypoint, build_verify_entrypoint, deployment_runtime_env  # noqa: E402
from ray_job import RayJobOperator  # noqa: E402

try:
    from airflow.sdk import DAG, Param
except ImportError:  # Airflow 2
    from airflow import DAG
    from airflow.models.param import Param
try:
    from airflow.providers.standard.operators.python import ShortCircuitOperator
except ImportError:  # Airflow 2
    from airflow.operators.python import ShortCircuitOperator


RAY_CONN_ID = os.environ.get("E5_EMBED_RAY_CONN_ID", "ray_default")

with DAG(
    dag_id="e5_embed",
    description="Embed a corpus with E5 on a Ray cluster (e5-embed)",
    start_date=datetime(2026, 1, 1),
    schedule=None,
    catchup=False,
    max_active_runs=4,
    tags=["embeddings", "ray"],
    params={
        "input": Param("s3://corpus-bucket/shards/", type=["string", "array"], description="input URI(s)"),
        "output": Param("s3://embeddings-bucket/e5/", type="string", description="output URI"),
        "model": Param("intfloat/e5-base-v2", type="string"),
        "prefix": Param("passage", enum=["passage", "query", "none"]),
        "batch_size": Param(None, type=["null", "integer"], minimum=1),
        "dtype": Param(None, type=["null", "string"], enum=[None, "auto", "float32", "float16", "bfloat16"]),
        "iceberg_table": Param(None, type=["null", "string"], description="NAMESPACE.TABLE to publish to"),
        "iceberg_catalog": Param(None, type=["null", "string"], description="pyiceberg catalog (default: embedded)"),
        "config": Param(None, type=["null", "string"], description="job YAML inside the working dir"),
        "extra_args": Param("", type="string", description="more e5-embed run flags (checked; no shell)"),
        "verify_sample": Param(
            None, type=["null", "integer"], minimum=0, description="after the run: verify, recomputing N vectors"
        ),
    },
    render_template_as_native_obj=True,
    user_defined_filters={"build_entrypoint": build_entrypoint, "build_verify_entrypoint": build_verify_entrypoint},
) as dag:
    embed = RayJobOperator(
        task_id="embed",
        conn_id=RAY_CONN_ID,
        entrypoint="{{ params | build_entrypoint }}",
        runtime_env=deployment_runtime_env(os.environ),  # the deployment's, not a trigger's
        retries=int(os.environ.get("E5_EMBED_TASK_RETRIES", "3")),
        retry_delay=timedelta(minutes=2),
        poll_interval=float(os.environ.get("E5_EMBED_POLL_INTERVAL", "30")),
    )
    wanted = ShortCircuitOperator(
        task_id="verify_requested",
        python_callable=lambda params: params.get("verify_sample") is not None,
        ignore_downstream_trigger_rules=True,
    )
    verify = RayJobOperator(
        task_id="verify",
        conn_id=RAY_CONN_ID,
        entrypoint="{{ params | build_verify_entrypoint }}",
        runtime_env=deployment_runtime_env(os.environ),
        retries=int(os.environ.get("E5_EMBED_TASK_RETRIES", "3")),
        retry_delay=timedelta(minutes=2),
        poll_interval=float(os.environ.get("E5_EMBED_POLL_INTERVAL", "30")),
    )
    embed >> wanted >> verify
