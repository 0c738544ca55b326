"""One writer per output: the lease on local disk and on S3 (moto's server honours If-None-Match)."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from pipeline.io.storage import Storage
from pipeline.ledger.lease import LEASE_DIR, Lease, LeaseHeld, LeaseLost, LeaseRecord

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(
    params=[pytest.param("local", marks=pytest.mark.unit), pytest.param("s3", marks=pytest.mark.integration)]
)
def storage(request, tmp_path):
    if request.param == "local":
        return Storage(str(tmp_path / "out"))
    s3fs_client = request.getfixturevalue("s3fs_client")
    bucket = request.getfixturevalue("bucket")
    del s3fs_client
    return Storage(f"s3://{bucket}/out")


def test_second_run_is_refused_naming_the_holder_then_gets_it_after_release(storage):
    first = Lease(storage, run_id="run-first", ttl_s=60)
    first.acquire()
    try:
        with pytest.raises(LeaseHeld, match=r"run run-first \(pid \d+ on .*lease generation 1"):
            Lease(storage, run_id="run-second", ttl_s=60).acquire()
        first.check()  # still ours
    finally:
        first.release()
    second = Lease(storage, run_id="run-second", ttl_s=60)
    assert second.acquire().generation == 2
    second.release()


def test_racing_runs_get_exactly_one_lease(storage):
    winners, refused = [], []
    barrier = threading.Barrier(6)

    def contend(i: int) -> None:
        lease = Lease(storage, run_id=f"racer-{i}", ttl_s=60)
        barrier.wait()
        try:
            lease.acquire()
            winners.append(lease)
        except LeaseHeld:
            refused.append(i)

    threads = [threading.Thread(target=contend, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(winners) == 1 and len(refused) == 5
    winners[0].release()


class MovedClock:
    """Wall-clock seconds that move only when the test says: expiry without sleeping, at any load."""

    def __init__(self, now: float = 1_000_000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def _stop_renewing(lease: Lease) -> None:
    """A holder that hangs (GC pause, lost network): its renewal thread stops."""
    lease._stop.set()
    lease._thread.join()


def test_an_expired_holder_is_taken_over_and_its_fence_stops_it(storage):
    clock = MovedClock()
    stale = Lease(storage, run_id="stale", ttl_s=60, clock=clock)
    stale.acquire()
    _stop_renewing(stale)
    with pytest.raises(LeaseHeld):  # this process is alive, so only expiry frees the lease
        Lease(storage, run_id="early", ttl_s=60, clock=clock).acquire()
    clock.advance(60.5)  # past its expiry
    taker = Lease(storage, run_id="taker", ttl_s=60, clock=clock)
    taker.acquire()  # no wait: the lease has expired
    try:
        with pytest.raises(LeaseLost):
            stale.check()
        with pytest.raises(LeaseLost, match="took over"):
            stale.fence().check()  # what the stale run's write tasks would run
        taker.fence().check()
        taker.check()
    finally:
        taker.release()


def test_a_holder_that_stops_renewing_fences_its_writers_with_no_taker(storage):
    """Expiry alone fences: a hung driver's write tasks stop before its lease is due to expire
    (its last quarter), whether or not another run has come for the output."""
    clock = MovedClock()
    hung = Lease(storage, run_id="hung", ttl_s=60, clock=clock)
    hung.acquire()
    fence = hung.fence()
    fence.check()  # renewed and fresh: writes go on
    _stop_renewing(hung)  # the driver hangs: no more renewals
    clock.advance(44)  # 73% of the ttl: still before its last quarter
    fence.check()
    clock.advance(2)  # 77%: in the last quarter, and nobody took the output
    with pytest.raises(LeaseLost, match="not renewed in time"):
        fence.check()


def test_a_released_lease_fences_its_writers(storage):
    lease = Lease(storage, run_id="done", ttl_s=60)
    lease.acquire()
    fence = lease.fence()
    lease.release()
    with pytest.raises(LeaseLost, match="released"):
        fence.check()


def test_shard_records_are_fenced_like_data_files(storage):
    from pipeline.io.shard import Shard
    from pipeline.ledger.shard_log import SHARDS_DIR, ShardLog

    stale = Lease(storage, run_id="stale", ttl_s=60)
    stale.acquire()
    log = ShardLog(storage.uri, {}, fence=stale.fence())
    shard = Shard("bucket/a.jsonl", "a.jsonl", 10, "jsonl", None, "s3", "etag:1")
    log(shard, rows=3, remainder=None)  # while held: recorded
    assert len(storage.list_files(SHARDS_DIR)) == 1
    stale.release()
    taker = Lease(storage, run_id="taker", ttl_s=60)
    taker.acquire()
    try:
        with pytest.raises(LeaseLost, match="took over"):
            log(Shard("bucket/b.jsonl", "b.jsonl", 10, "jsonl", None, "s3", "etag:1"), rows=3, remainder=None)
        assert len(storage.list_files(SHARDS_DIR)) == 1  # nothing more from the old run
    finally:
        taker.release()


def test_a_renewed_lease_outlives_its_ttl(storage):
    clock = MovedClock()
    lease = Lease(storage, run_id="long", ttl_s=60, clock=clock)
    lease.acquire()
    _stop_renewing(lease)  # the test renews, at the pace the thread would (every ttl / 4 or so)
    try:
        for _ in range(10):  # 400 s: more than six ttls
            clock.advance(40)
            lease.renew()
        lease.check()
        with pytest.raises(LeaseHeld):
            Lease(storage, run_id="other", ttl_s=60, clock=clock).acquire()
    finally:
        lease.release()


def test_waiting_run_proceeds_when_the_holder_releases(storage):
    holder = Lease(storage, run_id="holder", ttl_s=60)
    holder.acquire()
    threading.Timer(1.0, holder.release).start()
    waiter = Lease(storage, run_id="waiter", ttl_s=60)
    t0 = time.monotonic()
    waiter.acquire(wait_s=30, poll_s=0.1)
    assert 0.5 < time.monotonic() - t0 < 25
    waiter.release()


@pytest.mark.e2e
def test_sigkilled_holder_on_this_host_is_taken_over_at_once(tmp_path):
    """A real process takes the lease (ttl 1 h) and is SIGKILLed: a retry must not wait an hour."""
    out = tmp_path / "out"
    script = (
        "import sys, time; from pipeline.ledger.lease import Lease; from pipeline.io.storage import Storage;"
        "Lease(Storage(sys.argv[1]), run_id='victim', ttl_s=3600).acquire(); print('held', flush=True);"
        "time.sleep(600)"
    )
    proc = subprocess.Popen([sys.executable, "-c", script, str(out)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        with pytest.raises(LeaseHeld, match="victim"):
            Lease(Storage(str(out)), run_id="early", ttl_s=60).acquire()
    finally:
        proc.kill()
        proc.wait(timeout=30)
    retry = Lease(Storage(str(out)), run_id="retry", ttl_s=60)
    assert retry.acquire().generation == 2
    retry.release()
    records = sorted((out / LEASE_DIR).iterdir())
    assert json.loads(records[-1].read_text())["released"] is True


def test_a_rival_overwriting_our_generation_is_noticed(storage):
    """A store that ignored the exclusive create: the rival's record replaced ours."""
    from pipeline.ledger.lease import _gen_name

    mine = Lease(storage, run_id="mine", ttl_s=60)
    mine.acquire()
    try:
        rival = LeaseRecord.from_json(storage.read_bytes(storage.join(LEASE_DIR, _gen_name(1))))
        rival = LeaseRecord(**{**rival.__dict__, "run_id": "rival"})
        storage.write_bytes_atomic(storage.join(LEASE_DIR, _gen_name(1)), rival.to_json())
        with pytest.raises(LeaseLost, match="held by run rival"):
            mine.check()
        with pytest.raises(LeaseLost, match="not this run's"):
            mine.fence().check()
    finally:
        mine.release()


@pytest.mark.unit
def test_a_create_whose_answer_was_lost_is_settled_by_reading_it_back(tmp_path, monkeypatch):
    """A retried PUT whose first try succeeded is answered 412: the lease is ours all the same."""
    storage = Storage(str(tmp_path / "out"))
    real = Storage.create_exclusive

    def created_but_answered_exists(self, path, data):
        real(self, path, data)
        return False

    monkeypatch.setattr(Storage, "create_exclusive", created_but_answered_exists)
    lease = Lease(storage, run_id="lost-answer", ttl_s=60)
    assert lease.acquire().generation == 1
    lease.check()
    lease.release()


@pytest.mark.unit
def test_same_hostname_other_pid_namespace_is_not_judged_dead(tmp_path):
    """Containers with host networking share a hostname, not PIDs: a holder there is live until expiry."""
    import os
    import socket

    from pipeline.ledger.lease import _gen_name

    storage = Storage(str(tmp_path / "out"))
    now = time.time()
    other = LeaseRecord(
        generation=1,
        run_id="in-another-container",
        host=socket.gethostname(),
        pid=os.getpid() + 10**6,
        pid_start="1",
        acquired_at=now,
        expires_at=now + 60,
        ttl_s=60,
        host_id=f"{socket.gethostname()}/other-boot/12345",
    )
    storage.create_exclusive(storage.join(LEASE_DIR, _gen_name(1)), other.to_json())
    with pytest.raises(LeaseHeld, match="in-another-container"):
        Lease(storage, run_id="retry", ttl_s=60).acquire()


@pytest.mark.e2e
def test_a_write_task_of_a_dead_driver_cannot_publish_after_a_takeover(tmp_path):
    """The driver (a real process) holds the lease and hands its fence to a write task; it is
    SIGKILLed. The task's next publish is refused at once, before any new holder exists (a
    takeover on this host is immediate, so a later check would be too late), and after one."""
    from pipeline.io.sink import put_file
    from pipeline.ledger.lease import LeaseFence

    out = tmp_path / "out"
    script = (
        "import sys, time, json; from pipeline.ledger.lease import Lease; from pipeline.io.storage import Storage;"
        "lease = Lease(Storage(sys.argv[1]), run_id='driver', ttl_s=3600); lease.acquire();"
        "f = lease.fence(); print(json.dumps([f.generation, f.run_id]), flush=True); time.sleep(600)"
    )
    proc = subprocess.Popen([sys.executable, "-c", script, str(out)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        generation, run_id = json.loads(proc.stdout.readline())
        fence = LeaseFence(output_uri=str(out), storage_options={}, generation=generation, run_id=run_id)
        fence.check()  # the driver is alive: the write task may publish
    finally:
        proc.kill()
        proc.wait(timeout=30)
    import pyarrow as pa

    table = pa.table({"source": ["s"], "row": pa.array([0], pa.int64())})
    with pytest.raises(LeaseLost, match="is gone"):
        put_file(Storage(str(out)), "", table, {}, {"rows": 1}, {"s": "1:v"}, fence=fence.check)
    new = Lease(Storage(str(out)), run_id="new", ttl_s=60)
    new.acquire()
    try:
        with pytest.raises(LeaseLost):
            put_file(Storage(str(out)), "", table, {}, {"rows": 1}, {"s": "1:v"}, fence=fence.check)
    finally:
        new.release()
    assert list(out.glob("part-*.parquet")) == []


@pytest.mark.unit
def test_a_lost_lease_stops_the_run_through_its_error_path_off_the_main_thread(tmp_path):
    """Run off the main thread (a notebook, an Airflow worker): losing the lease sets the event and
    fences every write; nothing interrupts the main thread (a KeyboardInterrupt here would fail
    this test), and the holder's next write raises LeaseLost."""
    from pipeline.ledger.lease import _gen_name

    storage = Storage(str(tmp_path / "out"))
    held = threading.Event()
    # renewed every 0.1 s of real time; expiry judged by a clock that does not move, so a late
    # renewal under load cannot be taken for the rival
    lease = Lease(storage, run_id="mine", ttl_s=0.4, clock=MovedClock())
    worker = threading.Thread(target=lambda: (lease.acquire(), held.set()))
    worker.start()
    assert held.wait(10)
    rival = LeaseRecord.from_json(storage.read_bytes(storage.join(LEASE_DIR, _gen_name(1))))
    storage.write_bytes_atomic(
        storage.join(LEASE_DIR, _gen_name(1)), LeaseRecord(**{**rival.__dict__, "run_id": "rival"}).to_json()
    )
    try:
        assert lease.lost_event.wait(10), "the renew thread should notice the rival"
        with pytest.raises(LeaseLost, match="held by run rival"):
            lease.check()
    finally:
        lease.release()
        worker.join(10)


@pytest.mark.unit
def test_a_renewal_after_release_never_unreleases_the_lease(tmp_path):
    """release() and the renew thread raced: a renewal that finished after the release rewrote the
    record unreleased, so the next run waited a whole ttl for a finished one."""
    storage = Storage(str(tmp_path / "out"))
    lease = Lease(storage, run_id="mine", ttl_s=60)
    lease.acquire()
    lease.release()
    lease.renew()  # the renew thread's last iteration, landing late
    record = LeaseRecord.from_json(storage.read_bytes(storage.join(LEASE_DIR, "000000000001.json")))
    assert record.released is True
    nxt = Lease(storage, run_id="next", ttl_s=60)
    assert nxt.acquire(wait_s=0).generation == 2  # at once
    nxt.release()
