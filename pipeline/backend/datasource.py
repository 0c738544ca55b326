"""The Ray Data datasource: read tasks of consecutive shards of about equal bytes
(``read_groups``), each a call of the pure ``pipeline.io.sources.read_shards``."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ray.data.block import BlockMetadata
from ray.data.datasource import Datasource, ReadTask

from pipeline.backend.progress import Telemetry
from pipeline.io import schemas
from pipeline.io.records import FieldSpec
from pipeline.io.shard import Shard
from pipeline.io.sources import DEFAULT_MAX_RECORD_BYTES, read_shards
from pipeline.ledger.shard_log import ShardLog

TARGET_BYTES_PER_READ_TASK = 64 << 20
MIN_BYTES_PER_READ_TASK = 8 << 20
MIN_READ_TASKS = 16


def read_groups(shards: Sequence[Shard], parallelism: int) -> list[list[Shard]]:
    """Shards grouped into read tasks of consecutive shards of about equal bytes: about
    ``parallelism`` tasks, fewer when that would make tasks under MIN_BYTES_PER_READ_TASK (but not
    fewer than MIN_READ_TASKS), more when it would make a task read over TARGET_BYTES_PER_READ_TASK.

    Many small shards share a task: a read task costs tens of milliseconds of CPU in Ray itself
    (more than reading a 300 KB shard), and Ray's parallelism (at least 200) is about blocks, which
    a task yields many of. A shard is never split, and a big one is a task of its own.
    """
    if not shards:
        return []
    total = sum(s.size for s in shards)
    wanted = min(parallelism, max(MIN_READ_TASKS, -(-total // MIN_BYTES_PER_READ_TASK)))
    tasks = min(len(shards), max(wanted, -(-total // TARGET_BYTES_PER_READ_TASK), 1))
    per_task = total / tasks
    groups: list[list[Shard]] = []
    group: list[Shard] = []
    read = 0  # bytes of all shards so far: task k ends nearest to k x per_task (no drift to the end)
    for i, shard in enumerate(shards):
        group.append(shard)
        read += shard.size
        shards_left = len(shards) - i - 1
        groups_left = tasks - len(groups) - 1  # after closing this one
        if groups_left > 0 and (read >= (len(groups) + 1) * per_task - shard.size / 2 or shards_left == groups_left):
            groups.append(group)
            group = []
    if group:
        groups.append(group)
    return groups


@dataclass
class ShardDatasource(Datasource):
    """Ray Data datasource over a list of shards."""

    shards: Sequence[Shard]
    storage_options: Mapping[str, Any] = field(default_factory=dict)
    fields: FieldSpec = field(default_factory=FieldSpec)
    rows_per_block: int = 4096
    skip: Mapping[str, Sequence[tuple[int, int]]] = field(default_factory=dict)
    max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES
    shard_log: ShardLog | None = None
    telemetry: Telemetry | None = None
    stop: Callable[[], bool] | None = None  # the run's stop request (StopSignal), asked between blocks

    def estimate_inmemory_data_size(self) -> int | None:
        return sum(s.size for s in self.shards) or None

    def get_name(self) -> str:
        return "ReadShards"

    def get_read_tasks(
        self, parallelism: int, per_task_row_limit: int | None = None, data_context=None
    ) -> list[ReadTask]:
        tasks = []
        for group in read_groups(self.shards, parallelism):
            args = (
                dict(self.storage_options),
                tuple(group),
                self.fields,
                self.rows_per_block,
                {s.path: tuple(self.skip.get(s.path, ())) for s in group},
            )
            kw = {
                "max_record_bytes": self.max_record_bytes,
                "on_shard_end": _ShardEnd(self.shard_log, self.telemetry),
                "stop": self.stop,
            }
            meta = BlockMetadata(
                num_rows=None,
                size_bytes=sum(s.size for s in group) or None,
                exec_stats=None,
                input_files=tuple(s.path for s in group),
            )
            tasks.append(
                ReadTask(
                    lambda a=args, k=kw, t=self.telemetry: _timed_read(t, read_shards(*a, **k)),
                    meta,
                    schema=schemas.RECORDS,
                    per_task_row_limit=per_task_row_limit,
                )
            )
        return tasks


def _timed_read(telemetry: Telemetry | None, blocks: Iterator) -> Iterator:
    """A read task's blocks, its span (first call to its end, the blocks' hand-over included) told
    to the run's timeline."""
    started = time.time()
    yield from blocks
    if telemetry is not None:
        telemetry.worked("read", started, time.time())


@dataclass(frozen=True)
class _ShardEnd:
    """A read task's end-of-shard report: the shard record for the ledger, the counts for telemetry."""

    shard_log: ShardLog | None
    telemetry: Telemetry | None

    def __call__(self, shard: Shard, rows: int, remainder: str | None) -> None:
        if self.shard_log is not None:
            self.shard_log(shard, rows, remainder)
        if self.telemetry is not None:
            self.telemetry.shard_read(rows, shard.size)
