"""What runs after the proof: a ``Publisher`` presents a proven output somewhere else (a table).

One small protocol, three steps of a run (``pipeline.ledger.run.OutputRun`` calls them):

- ``check(manifest)`` before the run: may this output publish here? (one output publishes to one
  place; refusals name the flags that get back to it);
- ``publish(...)`` after ``_SUCCESS``: make the destination describe exactly the proven files, in
  one step, idempotently (a rerun that finds the destination behind only publishes: a kill
  between the proof and the publish is finished by the next run, whatever it has to embed);
- what it published goes into the manifest (``Published.record``) and into the run's summary line.

A new sink is one module with a class that has these methods, and its tests (``docs/architecture.md``,
"How to extend"). Iceberg's is ``pipeline.ledger.iceberg.IcebergPublisher``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from pipeline.io.storage import Storage
from pipeline.ledger.manifest import Manifest


class PublishedLike(Protocol):
    deleted_files: tuple[str, ...]  # retired files the publish let go (deleted): the ledger forgets them

    def record(self) -> dict[str, Any]: ...


class Publisher(Protocol):
    name: str  # what the summary line calls it

    def check(self, manifest: Manifest, output: str) -> None:
        """Before the run: refuse (``UsageError``) an output that publishes elsewhere."""

    def publish(
        self,
        storage: Storage,
        manifest: Manifest,
        metadata: Mapping[str, Any],
        data_paths: Sequence[str],
        *,
        retired: Sequence[str],
        committed_by: str,
        fence: Callable[[], None],
    ) -> PublishedLike:
        """After ``_SUCCESS``: the destination holds exactly ``data_paths`` (idempotent)."""

    def line(self, published: PublishedLike) -> str:
        """One phrase for the run's summary line."""
