"""Where a run may read and write: an output inside an input (or the reverse) is refused, and a
local path on a multi-node cluster unless every node sees it."""

from __future__ import annotations

from pipeline.config import JobConfig
from pipeline.errors import UsageError
from pipeline.io.storage import Storage, has_pattern, is_within, strip_uri_credentials
from pipeline.planning.plan import ClusterSpec


def check_locations(config: JobConfig) -> None:
    """Refuse an output inside an input (the next run would read it back) or the reverse."""
    for uri in config.inputs:
        folder = uri.rstrip("/")
        if has_pattern(folder.rsplit("/", 1)[-1]):
            folder = folder.rsplit("/", 1)[0]
        if is_within(config.output, folder):
            raise UsageError(
                f"--output {strip_uri_credentials(config.output)} lies inside --input "
                f"{strip_uri_credentials(uri)}: its files would be read back as input"
            )
        if is_within(folder, config.output):
            raise UsageError(
                f"--input {strip_uri_credentials(uri)} lies inside --output {strip_uri_credentials(config.output)}"
            )


def check_shared_paths(config: JobConfig, cluster: ClusterSpec) -> None:
    """Local paths on a multi-node cluster are only right when every node sees the same files."""
    if cluster.nodes <= 1 or config.shared_local_path:
        return
    local = [u for u in (config.output, *config.inputs) if Storage(u).is_local]
    if local:
        raise UsageError(
            f"the Ray cluster has {cluster.nodes} nodes but {local[0]} is a local path, which other "
            f"nodes cannot see; use object storage, or pass --shared-local-path if it is shared"
        )
