"""The spool (evalcore/engine/spool.py): the worker's ledger calls as files, answered by the driver from the
real SQLite ledger. No Slurm needed: clients run in threads and in spawned processes."""

from __future__ import annotations

import json
import multiprocessing
import os
import statistics
import threading
import time
from pathlib import Path

import pytest

from evalcore.engine.ledger import Claim, Ledger
from evalcore.engine.spool import SpoolLedger, SpoolServer
from evalcore.errors import DriverGone, RemoteError, SpoolError
from tests.helpers.ledger import RUN, new_ledger, parts
from tests.helpers.waiting import wait_for


class Serving:
    """A SpoolServer polled by a background thread, like the driver's loop."""

    def __init__(self, ledger, spool: Path, every: float = 0.005, **kw) -> None:
        self.server = SpoolServer(ledger, spool, **kw)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop.is_set():
            self.server.poll_once()
            time.sleep(0.005)

    def __enter__(self) -> SpoolServer:
        self.thread.start()
        return self.server

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join()


def claim(client, worker: str = "w1", **kw):
    return client.claim(RUN, worker, now=time.time(), lease_s=30.0, pid=os.getpid(), host="h", **kw)


def test_every_call_round_trips_like_the_ledger(tmp_path):
    ledger = new_ledger(tmp_path / "ledger.db", parts(2, ("m1", "m2")), now=time.time())
    with Serving(ledger, tmp_path / "spool") as server:
        client = SpoolLedger(tmp_path / "spool", "123")
        c = claim(client, prefer_model="m2", only_models={"m1", "m2"})
        assert isinstance(c, Claim) and c.partition_id == "p0001" and c.model_key == "m2"
        assert c.token and c.attempt == 1 and (c.sample_start, c.sample_end) == (4, 8)
        row = {p["partition_id"]: p for p in ledger.partitions(RUN)}["p0001"]
        assert row["claim_token"] == c.token and row["claimed_by"] == "w1" and row["status"] == "running"
        assert client.heartbeat(RUN, c.partition_id, c.token, now=time.time(), lease_s=30.0) is True
        assert client.heartbeat(RUN, c.partition_id, "not-the-token", now=time.time(), lease_s=30.0) is False
        assert client.done_indices(RUN, c.partition_id) == set()
        assert client.add_samples(RUN, c.partition_id, c.token, [(4, '{"x": 1}'), (5, '{"x": "é"}')],
                                  now=time.time()) is True
        assert client.done_indices(RUN, c.partition_id) == {4, 5}
        assert [(i, o) for _, i, o in ledger.samples(RUN)] == [(4, '{"x": 1}'), (5, '{"x": "é"}')]
        with pytest.raises(ValueError, match="covers samples"):  # the ledger's own error, raised here
            client.add_samples(RUN, c.partition_id, c.token, [(99, "{}")], now=time.time())
        client.record_load(RUN, "w1", "m2", started_at=1.0, seconds=2.5)
        assert ledger.loads(RUN) == [{"worker_id": "w1", "model_key": "m2", "started_at": 1.0, "seconds": 2.5}]
        assert client.complete(RUN, c.partition_id, c.token, now=time.time()) is True
        assert client.complete(RUN, c.partition_id, c.token, now=time.time()) is False  # not running any more
        c2 = claim(client, only_models={"m1"})
        assert c2.partition_id == "p0000"
        assert client.fail(RUN, c2.partition_id, c2.token, now=time.time(), error_class="E", message="m",
                           traceback_tail="t", retry=True) is True
        assert {p["partition_id"]: p["status"] for p in ledger.partitions(RUN)} == {"p0000": "pending", "p0001": "done"}
        assert claim(client, only_models=set()) is None
        client.close()
        wait_for(lambda: not (tmp_path / "spool" / "123").exists())  # the driver deleted the channel
    assert server.handled == 13


def test_server_uses_its_own_clock_and_filters_claims(tmp_path):
    ledger = new_ledger(tmp_path / "ledger.db", parts(4, ("m1", "m2")), now=time.time())
    with Serving(ledger, tmp_path / "spool", clock=lambda: 1000.0,
                 claim_filter=lambda ch: {"m2"} if ch.startswith("7") else set()):
        a = SpoolLedger(tmp_path / "spool", "7")
        c = a.claim(RUN, "w", now=5.0, lease_s=10.0, pid=1, host="h")  # a node's clock, far off
        assert c.model_key == "m2" and c.expires_at == 1010.0
        assert a.claim(RUN, "w", now=5.0, lease_s=10.0, pid=1, host="h", only_models={"m1"}) is None
        b = SpoolLedger(tmp_path / "spool", "8")
        assert b.claim(RUN, "w", now=5.0, lease_s=10.0, pid=1, host="h") is None  # an unknown job gets nothing
        a.close()
        b.close()


def test_driver_gone_raises_clearly_and_at_once_for_every_client(tmp_path):
    spool = tmp_path / "spool"
    a = SpoolLedger(spool, "5", timeout_s=0.3)
    b = a.sibling("5.hb", timeout_s=30)  # the worker's heartbeat thread
    t0 = time.monotonic()
    with pytest.raises(DriverGone, match="no answer from the driver") as err:
        a.heartbeat(RUN, "p", "t", now=0.0, lease_s=1.0)
    assert time.monotonic() - t0 >= 0.3                  # it waited its whole timeout first
    assert "call heartbeat #1" in str(err.value)
    t0 = time.monotonic()
    with pytest.raises(DriverGone, match="call heartbeat #1"):  # the other thread's client does not
        b.done_indices(RUN, "p")                                  # wait its own 30 s: it reuses a's verdict
    assert time.monotonic() - t0 < b.timeout_s
    a.close()
    b.close()  # never raises, never waits


def test_what_a_client_knows_of_its_driver_is_its_own_and_its_siblings(tmp_path):
    spool = tmp_path / "spool"
    a = SpoolLedger(spool, "6", timeout_s=0.2)
    with pytest.raises(DriverGone):
        a.done_indices(RUN, "p")
    other = SpoolLedger(spool, "7", timeout_s=30)  # another worker's client: no state shared through the module
    ledger = new_ledger(tmp_path / "ledger.db", parts(1))
    with Serving(ledger, spool):
        assert other.done_indices(RUN, "p0000") == set()
        with pytest.raises(DriverGone):
            a.sibling("6.hb").done_indices(RUN, "p0000")
    a.close()
    other.close()


def test_both_ledgers_implement_every_call_a_worker_makes():
    import inspect

    from evalcore.engine.worker_ledger import CALLS, WorkerLedger

    assert set(CALLS) == {n for n in vars(WorkerLedger) if not n.startswith("_")}
    for cls in (Ledger, SpoolLedger):
        for name in CALLS:
            want, got = inspect.signature(getattr(WorkerLedger, name)), inspect.signature(getattr(cls, name))
            assert got == want, f"{cls.__name__}.{name}{got} is not WorkerLedger.{name}{want}"


def test_release_hands_back_with_each_ledgers_rule(tmp_path):
    """Locally a stopped worker's attempt is not counted; a stopped Slurm job's is (docs/slurm.md)."""
    ledger = new_ledger(tmp_path / "ledger.db", parts(2))
    c = claim(ledger)
    assert ledger.release(RUN, c.partition_id, c.token, now=time.time()) is True
    with Serving(ledger, tmp_path / "spool"):
        client = SpoolLedger(tmp_path / "spool", "9")
        c2 = claim(client)
        assert client.add_samples(RUN, c2.partition_id, c2.token, [(c2.sample_start, "{}")], now=time.time())
        assert client.release(RUN, c2.partition_id, c2.token, now=time.time()) is True
        assert client.release(RUN, c2.partition_id, c2.token, now=time.time()) is False  # no claim any more
        client.close()
    assert c2.partition_id == c.partition_id  # the one handed back is claimed first again
    outcomes = [(a["outcome"], a["error_class"]) for a in ledger.attempts(RUN, c.partition_id)]
    assert outcomes == [("released", None), ("retry", "Interrupted")]
    rows = {p["partition_id"]: p for p in ledger.partitions(RUN)}
    assert rows[c.partition_id]["attempts"] == 1  # the released attempt gave its count back; the spool's did not
    assert {p["status"] for p in rows.values()} == {"pending"}
    assert ledger.done_indices(RUN, c2.partition_id) == {c2.sample_start}  # samples kept


class CountingLedger:
    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def heartbeat(self, *args, **kw):
        self.calls.append(args)
        return True


def _req(spool: Path, channel: str, seq: int, method: str = "heartbeat") -> Path:
    d = spool / channel / "req"
    d.mkdir(parents=True, exist_ok=True)
    p = d / f"{seq:08d}.json"
    p.write_text(json.dumps({"v": 1, "seq": seq, "method": method, "args": [RUN, f"p{seq}", "t"],
                             "kwargs": {"now": 0.0, "lease_s": 1.0}, "sent_at": time.time()}))
    return p


def test_restarted_server_never_runs_a_call_twice(tmp_path):
    spool = tmp_path / "spool"
    led = CountingLedger()
    # 1: answered, then the server died before deleting the request
    r1 = _req(spool, "9", 1)
    (spool / "9" / "resp").mkdir()
    (spool / "9" / "resp" / "00000001.json").write_text('{"v": 1, "seq": 1, "ok": true, "result": true}')
    assert SpoolServer(led, spool).poll_once() == 0
    assert not r1.exists() and led.calls == []
    # 2 and 3 both there: the client sent 3, so it had read the answer to 2 (and deleted it)
    _req(spool, "9", 2)
    _req(spool, "9", 3)
    server = SpoolServer(led, spool)
    assert server.poll_once() == 1
    assert led.calls == [(RUN, "p3", "t")]
    assert json.loads((spool / "9" / "resp" / "00000003.json").read_text())["result"] is True
    assert list((spool / "9" / "req").iterdir()) == []
    # the same server again, and a second server on the same folder: nothing to do
    assert server.poll_once() == 0 and SpoolServer(led, spool).poll_once() == 0
    assert len(led.calls) == 1


def test_bad_requests_get_error_answers(tmp_path):
    spool = tmp_path / "spool"
    led = CountingLedger()
    _req(spool, "4", 1, method="requeue")  # a Ledger method that is not served
    (spool / "4" / "req" / "00000002.json").write_text("not json")
    (spool / ".hidden").mkdir()
    (spool / "not a channel").mkdir()
    server = SpoolServer(led, spool)
    server.poll_once()  # 1 is superseded by 2; 2 is unreadable
    answer = json.loads((spool / "4" / "resp" / "00000002.json").read_text())
    assert answer["ok"] is False and "unreadable request" in answer["message"]
    _req(spool, "4", 3, method="requeue")
    server.poll_once()
    answer = json.loads((spool / "4" / "resp" / "00000003.json").read_text())
    assert answer == {"v": 1, "seq": 3, "ok": False, "error": "SpoolError", "message": "unknown spool call 'requeue'"}
    assert led.calls == []
    with pytest.raises(SpoolError, match="bad spool channel"):
        SpoolLedger(spool, "../escape")


def test_remote_errors_keep_their_class(tmp_path):
    class Broken:
        def heartbeat(self, *a, **k):
            raise KeyError("boom")

    with Serving(Broken(), tmp_path / "spool"):
        c = SpoolLedger(tmp_path / "spool", "1")
        with pytest.raises(RemoteError, match="KeyError on the driver") as err:
            c.heartbeat(RUN, "p", "t", now=0.0, lease_s=1.0)
        assert err.value.error_class == "KeyError"
        c.close()


def _worker_process(spool: str, job: str, n_samples_each: int) -> None:
    """A worker-like loop in another process: claim, add samples one at a time, complete."""
    client = SpoolLedger(spool, job, timeout_s=30)
    try:
        while True:
            c = client.claim(RUN, f"slurm-{job}", now=time.time(), lease_s=30.0, pid=os.getpid(), host="h")
            if c is None:
                return
            for i in range(c.sample_start, c.sample_end):
                assert client.add_samples(RUN, c.partition_id, c.token, [(i, json.dumps({"i": i, "job": job}))],
                                          now=time.time())
            assert client.complete(RUN, c.partition_id, c.token, now=time.time())
    finally:
        client.close()


def test_many_processes_share_one_ledger_through_the_spool(tmp_path):
    ledger = new_ledger(tmp_path / "ledger.db", parts(24, per=5), now=time.time())
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_worker_process, args=(str(tmp_path / "spool"), str(100 + k), 5)) for k in range(4)]
    with Serving(ledger, tmp_path / "spool") as server:
        for p in procs:
            p.start()
        for p in procs:
            p.join(120)
        assert all(p.exitcode == 0 for p in procs), [p.exitcode for p in procs]
    rows = ledger.partitions(RUN)
    assert all(r["status"] == "done" and r["attempts"] == 1 and r["n_done"] == 5 for r in rows)
    samples = list(ledger.samples(RUN))
    assert len(samples) == 120 and len({(p, i) for p, i, _ in samples}) == 120
    workers = {a["worker"] for a in ledger.attempts(RUN)}
    assert workers <= {"slurm-100", "slurm-101", "slurm-102", "slurm-103"} and len(workers) >= 2
    assert server.handled >= 24 * 7
    assert [p.name for p in (tmp_path / "spool").iterdir()] == []  # every channel closed and removed


def test_call_latency(tmp_path):
    """A hundred calls in a row through the spool each get their answer; what one costs on a local
    disk is printed (a worker makes one per chunk of samples and one per heartbeat). A figure,
    not an assertion: speed is measured by benchmarks, never asserted in a test."""
    ledger = new_ledger(tmp_path / "ledger.db", parts(1), now=time.time())
    with Serving(ledger, tmp_path / "spool"):
        client = SpoolLedger(tmp_path / "spool", "1")
        c = claim(client)
        times = []
        for _ in range(100):
            t0 = time.perf_counter()
            assert client.heartbeat(RUN, c.partition_id, c.token, now=time.time(), lease_s=30.0)
            times.append(time.perf_counter() - t0)
        client.close()
    med = statistics.median(times)
    print(f"\nspool call latency: median {med * 1000:.1f} ms, max {max(times) * 1000:.1f} ms")
    assert len(times) == 100
