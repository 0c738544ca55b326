"""One writer per output: a lease that expires, so a crashed holder never needs a person.

The lease is a sequence of generation objects, ``_lease/<generation>.json``. Taking it means
creating the next generation atomically (``If-None-Match: *`` on S3, a hard link on POSIX):
of two runs racing for the same generation exactly one wins. A run may take the next
generation only when the highest one is released, expired, or held by a process on this
host that is gone. The holder renews its own generation (a plain overwrite: nobody else
writes it) every ``ttl/4`` seconds; a newer generation, or a renewal that could not be made
before expiry, means the lease is lost, and the holder stops.

The fence (:meth:`Lease.check`, and :class:`LeaseFence` in write tasks) refuses any write
once a newer generation exists or the holder's own expiry is near. Expiry uses wall clocks:
hosts are assumed to agree within a few seconds (NTP), far below the default 120 s ttl.
"""

from __future__ import annotations

import json
import logging
import os
import posixpath
import socket
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

from pipeline.errors import E5EmbedError, JobError, UsageError, step_failed
from pipeline.io.storage import Storage

logger = logging.getLogger(__name__)

LEASE_DIR = "_lease"
DEFAULT_TTL_S = 120.0
SAFETY_MARGIN = 0.25  # never write in the last quarter of the ttl without a renewal


class LeaseHeld(JobError):
    """Another live run holds the output (exit 1: a retry later may succeed)."""


class LeaseLost(JobError):
    """This run's lease was taken over or could not be renewed; it must not write."""


class LeaseDamaged(UsageError):
    """The highest lease generation cannot be read (truncated, not JSON, fields missing): exit 2,
    the operator decides (delete it, or --overwrite)."""


_DAMAGE = (ValueError, TypeError, KeyError, AttributeError)  # what a truncated or edited record raises


@dataclass(frozen=True, kw_only=True)
class LeaseRecord:
    generation: int
    run_id: str
    host: str
    pid: int
    pid_start: str
    acquired_at: float
    expires_at: float
    ttl_s: float
    released: bool = False
    host_id: str = ""  # hostname/boot id/pid-namespace: where ``pid`` means something

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> "LeaseRecord":
        data = json.loads(raw)
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})

    def describe(self) -> str:
        left = self.expires_at - time.time()
        return (
            f"run {self.run_id} (pid {self.pid} on {self.host}, lease generation {self.generation}, "
            f"expires in {max(left, 0):.0f}s)"
        )

    def is_live(self, now: float) -> bool:
        if self.released or now >= self.expires_at:
            return False
        return not _dead_on_this_host(self)


def _host_id() -> str:
    """This machine and PID namespace: hostname, boot id, pid-namespace inode. Containers that share
    a hostname (host networking) but not PIDs differ here, so none judges another's pid."""
    parts = [socket.gethostname()]
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as f:
            parts.append(f.read().strip())
        parts.append(str(os.stat("/proc/self/ns/pid").st_ino))
    except OSError:
        parts.append("?")
    return "/".join(parts)


def _process_start(pid: int) -> str:
    """Start time of a process (clock ticks since boot, from /proc); '' where unknown."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read().decode()
        return raw[raw.rindex(")") + 2 :].split()[19]
    except (OSError, IndexError, ValueError):
        return ""


def _dead_on_this_host(record: LeaseRecord) -> bool:
    """A holder in this very host and PID namespace whose process is gone (or is another process
    with its pid)."""
    if not record.host_id or record.host_id != _host_id() or not record.pid_start or "?" in record.host_id:
        return False
    return _process_start(record.pid) != record.pid_start


def _gen_name(generation: int) -> str:
    return f"{generation:012d}.json"


def _read_record(storage: Storage, generation: int) -> LeaseRecord | None:
    """A generation's record; None if it does not exist; LeaseDamaged if it cannot be read."""
    path = storage.join(LEASE_DIR, _gen_name(generation))
    try:
        return LeaseRecord.from_json(storage.read_bytes(path))
    except FileNotFoundError:
        return None
    except _DAMAGE as e:
        raise LeaseDamaged(
            f"the lease file {storage.display(path)} is damaged ({type(e).__name__}: {str(e)[:100]}); if no run "
            f"is writing {storage.describe()}, delete that file, or rerun with --overwrite"
        ) from e


def _generations(storage: Storage) -> list[int]:
    out = []
    for path, _ in storage.list_files(LEASE_DIR):
        stem = posixpath.basename(path).split(".", 1)[0]
        if stem.isdigit():
            out.append(int(stem))
    return sorted(out)


class Lease:
    """The output's lease for one run. ``acquire`` before anything else, ``release`` at the end."""

    def __init__(
        self, storage: Storage, *, run_id: str, ttl_s: float = DEFAULT_TTL_S, clock: Callable[[], float] = time.time
    ):
        self.storage = storage
        self.run_id = run_id
        self.ttl_s = float(ttl_s)
        self.clock = clock  # wall-clock seconds: expiry is judged by it (tests hand in a clock they move)
        self.record: LeaseRecord | None = None
        self.waited = False  # acquire waited for another run: what was read before may be stale
        # set once the lease is lost: the run stops through its own error path (every write it makes
        # passes the fence and raises LeaseLost), never by interrupting whatever thread is running
        self.lost_event = threading.Event()
        self._lost: str | None = None
        self._released = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()  # renew and release never write the record at once

    # ------------------------------------------------------------------ taking it

    @classmethod
    def take(cls, storage: Storage, options: Any, *, replace_damaged: bool = False) -> "Lease":
        """A new run's lease on ``storage`` (``options``: the job's ``LeaseOptions``); a store that
        cannot take a small object: the store's moment (exit 1) or a config error (exit 2)."""
        lease = cls(storage, run_id=new_run_id(), ttl_s=options.lease_ttl_s)
        try:
            lease.acquire(wait_s=options.lease_wait_s, replace_damaged=replace_damaged)
        except E5EmbedError:  # held by a live run (exit 1), damaged (exit 2)
            raise
        except Exception as e:
            raise step_failed(f"cannot write to output {storage.describe()}", e) from e
        return lease

    def acquire(self, wait_s: float = 0.0, poll_s: float = 2.0, *, replace_damaged: bool = False) -> LeaseRecord:
        """Take the lease, waiting up to ``wait_s`` for a live holder; else raise LeaseHeld.

        A damaged highest generation raises LeaseDamaged (naming the file), unless
        ``replace_damaged`` (``--overwrite``): then it counts as released and the next generation
        is taken, which fences whoever might still hold the damaged one."""
        deadline = time.monotonic() + wait_s
        logged = False
        self.waited = False
        while True:
            generations = _generations(self.storage)
            try:
                top = self._read(generations[-1]) if generations else None
            except LeaseDamaged as e:
                if not replace_damaged:
                    raise
                logger.warning("%s; --overwrite takes the next generation", e)
                top = None
            if top is not None and top.is_live(self.clock()):
                if time.monotonic() >= deadline:
                    raise LeaseHeld(
                        f"{self.storage.describe()} is being written by {top.describe()}; "
                        f"wait for it (--lease-wait-s) or use another --output"
                    )
                self.waited = True
                if not logged:
                    logger.info("waiting for the lease on %s, held by %s", self.storage.describe(), top.describe())
                    logged = True
                time.sleep(max(0.05, min(poll_s, deadline - time.monotonic())))
                continue
            generation = (generations[-1] if generations else 0) + 1
            record = self._new_record(generation)
            if self._create(generation, record):
                self.record = record
                if top is not None and not top.released:
                    logger.warning(
                        "took over the lease on %s from %s, which is no longer live",
                        self.storage.describe(),
                        top.describe(),
                    )
                self._prune(generations)
                self._start_renewing()
                return record
            # another run created this generation first: look again

    def _create(self, generation: int, record: LeaseRecord) -> bool:
        """Create the generation; True only if it is ours. A create whose answer was lost (a retried
        PUT answered 412, a conflicting 409, an NFS link retried) is settled by reading it back."""
        error: OSError | None = None
        try:
            created = self.storage.create_exclusive(self._path(generation), record.to_json())
        except OSError as e:
            created, error = False, e
        if created:
            return True
        try:
            there = self._read(generation)
        except LeaseDamaged:
            return False  # not a record of ours: the loop reads the generation again
        if there is None:
            if error is not None:
                raise error
            return False
        return there.run_id == self.run_id

    def _new_record(self, generation: int) -> LeaseRecord:
        now = self.clock()
        return LeaseRecord(
            host_id=_host_id(),
            generation=generation,
            run_id=self.run_id,
            host=socket.gethostname(),
            pid=os.getpid(),
            pid_start=_process_start(os.getpid()),
            acquired_at=now,
            expires_at=now + self.ttl_s,
            ttl_s=self.ttl_s,
        )

    def _path(self, generation: int) -> str:
        return self.storage.join(LEASE_DIR, _gen_name(generation))

    def _read(self, generation: int) -> LeaseRecord | None:
        return _read_record(self.storage, generation)

    def _prune(self, generations: list[int]) -> None:
        """Old generations are history; keep the one before ours for the record."""
        for generation in generations[:-1]:
            try:
                self.storage.delete(self._path(generation))
            except OSError as e:  # best effort: stale generation files are harmless
                logger.debug("could not prune lease generation %d: %s", generation, e)

    # ------------------------------------------------------------------ holding it

    @property
    def generation(self) -> int:
        if self.record is None:
            raise LeaseLost("the lease was never acquired")
        return self.record.generation

    def check(self) -> None:
        """The fence: raise LeaseLost unless this run still holds the lease with time to spare."""
        with self._lock:
            if self._lost:
                raise LeaseLost(self._lost)
            record = self.record
        if record is None:
            raise LeaseLost("the lease was never acquired")
        if self.clock() > record.expires_at - SAFETY_MARGIN * record.ttl_s:
            self._mark_lost(f"the lease on {self.storage.describe()} was not renewed in time")
            raise LeaseLost(self._lost or "")
        newer = [g for g in _generations(self.storage) if g > record.generation]
        if newer:
            self._mark_lost(f"the lease on {self.storage.describe()} was taken over (generation {newer[-1]})")
            raise LeaseLost(self._lost or "")
        try:
            mine = self._read(record.generation)
        except LeaseDamaged:
            mine = None
        if mine is None or mine.run_id != self.run_id:
            self._mark_lost(
                f"the lease generation {record.generation} on {self.storage.describe()} is held by "
                f"{'nobody' if mine is None else mine.describe()}"
            )
            raise LeaseLost(self._lost or "")

    @property
    def lost(self) -> str | None:
        return self._lost

    def renew(self) -> None:
        self.check()
        with self._write_lock:
            if self._released:  # release() won the race: a renewal now would un-release the lease
                return
            assert self.record is not None
            renewed = LeaseRecord(**{**asdict(self.record), "expires_at": self.clock() + self.ttl_s})
            self.storage.write_bytes_atomic(self._path(renewed.generation), renewed.to_json())
            with self._lock:
                self.record = renewed

    def _mark_lost(self, why: str) -> None:
        with self._lock:
            first = self._lost is None
            self._lost = self._lost or why
        if first:
            logger.error("%s; this run stops writing", why)
            self.lost_event.set()

    def _start_renewing(self) -> None:
        self._thread = threading.Thread(target=self._renew_loop, name="e5-embed-lease", daemon=True)
        self._thread.start()

    def _renew_loop(self) -> None:
        interval = max(0.05, self.ttl_s / 4)
        while not self._stop.wait(interval):
            try:
                self.renew()
            except LeaseLost:
                return
            except Exception as e:  # a flaky store: try again until the fence says it is too late
                logger.warning("could not renew the lease on %s: %s: %s", self.storage.describe(), type(e).__name__, e)

    def release(self) -> None:
        """Stop renewing and mark the generation released, so the next run starts at once."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        with self._write_lock:  # a renewal still under way (a slow store) finishes first, or never writes
            if self._released:
                return
            self._released = True
            if self.record is None or self._lost:
                return
            try:
                self.check()
                done = LeaseRecord(**{**asdict(self.record), "released": True, "expires_at": self.clock()})
                self.storage.write_bytes_atomic(self._path(done.generation), done.to_json())
            except Exception as e:  # the lease expires by itself
                logger.warning(
                    "could not release the lease on %s (it expires by itself): %s", self.storage.describe(), e
                )

    def fence(self) -> "LeaseFence":
        return LeaseFence(
            output_uri=self.storage.uri,
            storage_options=dict(self.storage.storage_options),
            generation=self.generation,
            run_id=self.run_id,
            clock=self.clock,
        )


@dataclass(frozen=True)
class LeaseFence:
    """What a write task carries; ``check`` runs before each file it publishes (data, rejects,
    ``_shards/`` records). It refuses once a newer generation exists, once the generation is not
    this run's, and once the generation is released or within the last quarter of its ttl without
    a renewal: a driver that stopped renewing (hung, partitioned, killed) fences its writers even
    when no other run has taken the output over."""

    output_uri: str
    storage_options: Mapping[str, Any]
    generation: int
    run_id: str = ""
    clock: Callable[[], float] = time.time  # picklable: write tasks carry the fence

    def check(self) -> None:
        storage = Storage(self.output_uri, self.storage_options)
        newer = [g for g in _generations(storage) if g > self.generation]
        if newer:
            raise LeaseLost(
                f"another run took over {self.output_uri} (lease generation {newer[-1]} > "
                f"{self.generation}); this write is refused"
            )
        if not self.run_id:
            return
        try:
            mine = _read_record(storage, self.generation)
        except LeaseDamaged:
            mine = None
        if mine is None or mine.run_id != self.run_id:
            raise LeaseLost(
                f"lease generation {self.generation} of {self.output_uri} is not this run's; this write is refused"
            )
        if mine.released or self.clock() > mine.expires_at - SAFETY_MARGIN * mine.ttl_s:
            raise LeaseLost(
                f"lease generation {self.generation} of {self.output_uri} was "
                f"{'released' if mine.released else 'not renewed in time'}; this write is refused"
            )
        if _dead_on_this_host(mine):
            # the driver that holds it is gone, and a run on this host may take over at once: a
            # write of the dead run must not land after the new holder has listed the output
            raise LeaseLost(
                f"the run holding lease generation {self.generation} of {self.output_uri} (pid {mine.pid}) "
                "is gone; this write is refused"
            )


def new_run_id() -> str:
    return uuid.uuid4().hex[:12]
