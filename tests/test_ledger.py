"""The run ledger: claims, tokens, leases by `now`, samples, requeue, migrations, refused files, and
real multi-process claiming (spawned processes on one SQLite file)."""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import pickle
import random
import sqlite3
import time
from pathlib import Path

import pytest

from cachekit.errors import EXIT_VERIFY
from evalcore.engine import db, leases
from evalcore.engine.ledger import SCHEMA, Ledger
from evalcore.errors import LedgerError
from scripts.ledger_workload import claim_complete_loop
from tests.helpers.ledger import RUN, new_ledger, parts
from tests.helpers.waiting import ready_then_wait, run_spawned, wait_for

HOST = "host-a"


def state(ledger: Ledger) -> tuple:
    """Everything the ledger holds for RUN, to compare before/after a refused call."""
    return (ledger.partitions(RUN), ledger.attempts(RUN), list(ledger.samples(RUN)))


def claim(ledger: Ledger, worker: str = "w1", *, now: float = 0.0, lease_s: float = 10.0, **kw):
    return ledger.claim(RUN, worker, now=now, lease_s=lease_s, pid=os.getpid(), host=HOST, **kw)


# ---- helpers for other processes (module level, so spawned children can import them) -----------

def _hold_one_then_loop(path: str, run_id: str, n: int, go: str, holders: int) -> list[str]:
    """Claim one partition and keep it until `holders` processes each hold one (a condition,
    not a timing: every process really claims while the others hold theirs), then go on."""
    ready_then_wait(go)
    ledger = Ledger(path, create=False)
    c = ledger.claim(run_id, f"w-{os.getpid()}", now=time.time(), lease_s=300.0, pid=os.getpid(), host=HOST)
    assert c is not None
    Path(f"{go}.held.{os.getpid()}").touch()
    wait_for(lambda: len(list(Path(go).parent.glob(f"{Path(go).name}.held.*"))) >= holders, 300.0, 0.005,
             "the other processes never claimed")
    assert ledger.complete(run_id, c.partition_id, c.token, now=time.time())
    ledger.close()
    return [c.partition_id] + claim_complete_loop(path, run_id, n)


def _sample_worker(path: str, go: str, lease_s: float, work_s: tuple[float, float], seed: int) -> list[tuple]:
    """Claim, record samples in two overlapping batches (the second repeats one), complete.
    With a short lease, some claims are taken over; returns (partition, attempt, completed)."""
    rng = random.Random(seed)
    ledger = Ledger(path, create=False)
    log = []
    ready_then_wait(go)
    while True:
        c = ledger.claim(RUN, f"w{seed}", now=time.time(), lease_s=lease_s, pid=os.getpid(), host=HOST)
        if c is None:
            break
        idx = list(range(c.sample_start, c.sample_end))
        done = ledger.done_indices(RUN, c.partition_id)
        first = [(i, json.dumps({"i": i, "by": seed})) for i in idx[:2] if i not in done]
        ledger.add_samples(RUN, c.partition_id, c.token, first, now=time.time())
        time.sleep(rng.uniform(*work_s))
        ledger.add_samples(RUN, c.partition_id, c.token,
                           [(i, json.dumps({"i": i, "by": seed})) for i in idx[1:]], now=time.time())
        ok = ledger.complete(RUN, c.partition_id, c.token, now=time.time())
        log.append((c.partition_id, c.attempt, ok))
    ledger.close()
    return log


# ---- create_run ---------------------------------------------------------------------------------

def test_create_run_is_idempotent_and_refuses_other_partitions(tmp_path):
    ledger = new_ledger(tmp_path / "ledger.db", parts(3), now=1.0)
    ledger.create_run(RUN, str(tmp_path), "{}", ["again"], list(reversed(parts(3))), now=2.0)
    assert len(ledger.partitions(RUN)) == 3
    assert ledger.runs()[0]["created_at"] == 1.0 and ledger.runs()[0]["argv"] == ["evalcore", "eval"]
    with pytest.raises(LedgerError, match="already exists .* different partitions") as err:
        ledger.create_run(RUN, str(tmp_path), "{}", [], parts(4), now=3.0)
    assert err.value.exit_code == EXIT_VERIFY and err.value.hint
    assert len(ledger.partitions(RUN)) == 3
    with pytest.raises(ValueError, match="duplicate"):
        ledger.create_run("run-2", str(tmp_path), "{}", [], parts(2) + parts(1), now=3.0)


# ---- tokens and leases --------------------------------------------------------------------------

def test_only_the_token_holder_can_act(tmp_path):
    ledger = new_ledger(tmp_path / "ledger.db", parts(1))
    c1 = claim(ledger, "w1", now=0.0, lease_s=10.0)
    assert c1 is not None and c1.attempt == 1 and c1.expires_at == 10.0
    before = state(ledger)
    bad = "0" * 32
    assert not ledger.heartbeat(RUN, c1.partition_id, bad, now=1.0, lease_s=10.0)
    assert not ledger.add_samples(RUN, c1.partition_id, bad, [(0, "x")], now=1.0)
    assert not ledger.complete(RUN, c1.partition_id, bad, now=1.0)
    assert not ledger.fail(RUN, c1.partition_id, bad, now=1.0, error_class="E", message="m",
                           traceback_tail="", retry=False)
    assert state(ledger) == before

    assert claim(ledger, "w2", now=5.0) is None                 # lease still valid
    c2 = claim(ledger, "w2", now=10.5)                          # expired: taken over
    assert c2 is not None and c2.partition_id == c1.partition_id and c2.attempt == 2 and c2.token != c1.token
    before = state(ledger)
    assert not ledger.heartbeat(RUN, c1.partition_id, c1.token, now=11.0, lease_s=10.0)
    assert not ledger.add_samples(RUN, c1.partition_id, c1.token, [(0, "stale")], now=11.0)
    assert not ledger.complete(RUN, c1.partition_id, c1.token, now=11.0)
    assert not ledger.fail(RUN, c1.partition_id, c1.token, now=11.0, error_class="E", message="m",
                           traceback_tail="", retry=True)
    assert state(ledger) == before
    assert ledger.complete(RUN, c2.partition_id, c2.token, now=12.0)
    assert not ledger.complete(RUN, c2.partition_id, c2.token, now=12.0)     # only once
    assert [a["outcome"] for a in ledger.attempts(RUN)] == ["expired", "done"]


def test_heartbeat_extends_the_lease(tmp_path):
    ledger = new_ledger(tmp_path / "ledger.db", parts(1))
    c = claim(ledger, now=0.0, lease_s=10.0)
    assert ledger.heartbeat(RUN, c.partition_id, c.token, now=8.0, lease_s=10.0)
    assert ledger.partitions(RUN)[0]["expires_at"] == 18.0
    assert claim(ledger, "w2", now=15.0) is None
    assert claim(ledger, "w2", now=18.5).attempt == 2


def test_expired_lease_with_no_attempts_left_fails_the_partition(tmp_path):
    ledger = new_ledger(tmp_path / "ledger.db", parts(1, max_attempts=2))
    assert claim(ledger, "w1", now=0.0).attempt == 1
    assert claim(ledger, "w2", now=11.0).attempt == 2
    assert claim(ledger, "w3", now=22.0) is None
    (p,) = ledger.partitions(RUN)
    assert p["status"] == "failed" and p["error_class"] == "LeaseExpired"
    assert "gave up after 2 attempts; last holder died" in p["error_message"]
    assert [a["outcome"] for a in ledger.attempts(RUN)] == ["expired", "expired"]
    (group,) = ledger.progress(RUN)
    assert group["partitions"]["failed"] == 1 and group["failures"][0]["error_class"] == "LeaseExpired"


def test_fail_retries_until_max_attempts(tmp_path):
    ledger = new_ledger(tmp_path / "ledger.db", parts(2, max_attempts=2))
    c = claim(ledger, now=0.0)
    assert ledger.fail(RUN, c.partition_id, c.token, now=1.0, error_class="CudaOOM", message="oom",
                       traceback_tail="tb", retry=True)
    p = ledger.partitions(RUN)[0]
    assert p["status"] == "pending" and p["attempts"] == 1 and p["error_class"] == "CudaOOM"
    c = claim(ledger, now=2.0)
    assert c.partition_id == "p0000" and c.attempt == 2
    assert ledger.fail(RUN, c.partition_id, c.token, now=3.0, error_class="CudaOOM", message="oom again",
                       traceback_tail="tb", retry=True)
    assert ledger.partitions(RUN)[0]["status"] == "failed"          # no attempts left
    c = claim(ledger, now=4.0)
    assert c.partition_id == "p0001"
    assert ledger.fail(RUN, c.partition_id, c.token, now=5.0, error_class="ValueError", message="bad",
                       traceback_tail="tb", retry=False)
    assert ledger.partitions(RUN)[1]["status"] == "failed" and claim(ledger, now=6.0) is None
    assert [a["outcome"] for a in ledger.attempts(RUN)] == ["retry", "failed", "failed"]
    failures = ledger.progress(RUN)[0]["failures"]
    assert [(f["partition_id"], f["error_class"]) for f in failures] == [("p0000", "CudaOOM"), ("p0001", "ValueError")]


def test_claim_order_prefer_model_only_models_and_max_gpus(tmp_path):
    ledger = new_ledger(tmp_path / "ledger.db", parts(6, models=("b", "a"), gpus=(1, 1, 2)))
    # partitions: p0 b/1, p1 a/1, p2 b/2, p3 a/1, p4 b/1, p5 a/2
    assert claim(ledger, now=0).partition_id == "p0001"            # model a first, then by sample
    assert claim(ledger, now=0, prefer_model="b").partition_id == "p0000"
    assert claim(ledger, now=0, prefer_model="b", max_gpus=1).partition_id == "p0004"
    assert claim(ledger, now=0, only_models={"a"}, max_gpus=1).partition_id == "p0003"
    assert claim(ledger, now=0, only_models=set()) is None
    assert claim(ledger, now=0, only_models={"a"}, max_gpus=1) is None
    assert claim(ledger, now=0, prefer_model="zzz").partition_id == "p0005"   # falls back
    c = claim(ledger, now=0, prefer_model="b")
    assert (c.partition_id, c.n_gpus) == ("p0002", 2)
    assert claim(ledger, now=0) is None


def test_expired_partition_of_the_preferred_model_comes_first(tmp_path):
    ledger = new_ledger(tmp_path / "ledger.db", parts(3, models=("a", "b", "a")))
    claim(ledger, now=0, prefer_model="b", lease_s=5)               # p1 (b), then its holder dies
    c = claim(ledger, now=10, prefer_model="b")
    assert (c.partition_id, c.attempt) == ("p0001", 2)


def test_release_hands_a_partition_back_without_using_an_attempt(tmp_path):
    ledger = new_ledger(tmp_path / "ledger.db", parts(1, max_attempts=1))
    c = claim(ledger, now=0.0)
    ledger.add_samples(RUN, c.partition_id, c.token, [(0, "0")], now=1.0)
    assert not ledger.release(RUN, c.partition_id, "0" * 32, now=2.0)
    assert ledger.release(RUN, c.partition_id, c.token, now=2.0)
    assert not ledger.complete(RUN, c.partition_id, c.token, now=2.0)
    p = ledger.partitions(RUN)[0]
    assert (p["status"], p["attempts"], p["n_done"]) == ("pending", 0, 1)
    again = claim(ledger, now=3.0)
    assert again.attempt == 1 and ledger.done_indices(RUN, again.partition_id) == {0}
    assert [a["outcome"] for a in ledger.attempts(RUN)] == ["released", "running"]


def test_requeue_resets_failed_and_expired_keeps_history(tmp_path):
    ledger = new_ledger(tmp_path / "ledger.db", parts(4, max_attempts=1))
    a, b, c, d = (claim(ledger, f"w{i}", now=0.0, lease_s=100 if i == 2 else 10) for i in range(4))
    ledger.fail(RUN, a.partition_id, a.token, now=1, error_class="Boom", message="m", traceback_tail="t",
                retry=True)                                          # max_attempts 1: failed
    ledger.complete(RUN, d.partition_id, d.token, now=1)
    assert ledger.requeue(RUN, now=50.0) == 2                        # a (failed) and b (expired)
    by_id = {p["partition_id"]: p for p in ledger.partitions(RUN)}
    assert [by_id[x.partition_id]["status"] for x in (a, b, c, d)] == ["pending", "pending", "running", "done"]
    assert by_id[a.partition_id]["attempts"] == 0 and by_id[a.partition_id]["error_class"] == "Boom"
    history = {h["partition_id"]: h for h in ledger.attempts(RUN)}
    assert history[a.partition_id]["outcome"] == "failed" and history[a.partition_id]["error_class"] == "Boom"
    assert history[b.partition_id]["outcome"] == "requeued"
    assert not ledger.complete(RUN, b.partition_id, b.token, now=51)  # the old holder lost it
    again = claim(ledger, now=51.0)
    assert again.partition_id == a.partition_id and again.attempt == 1


# ---- samples ------------------------------------------------------------------------------------

def test_add_samples_is_idempotent_and_only_for_the_holder(tmp_path):
    ledger = new_ledger(tmp_path / "ledger.db", parts(2, per=4))
    c = claim(ledger, now=0.0, lease_s=10)
    assert ledger.add_samples(RUN, c.partition_id, c.token, [(0, '"a"'), (1, '"b"')], now=1.0)
    assert ledger.add_samples(RUN, c.partition_id, c.token, [(1, '"B"'), (2, '"c"')], now=2.0)
    assert list(ledger.samples(RUN)) == [("p0000", 0, '"a"'), ("p0000", 1, '"b"'), ("p0000", 2, '"c"')]
    assert ledger.done_indices(RUN, c.partition_id) == {0, 1, 2}
    with pytest.raises(ValueError, match="covers samples"):           # all or nothing
        ledger.add_samples(RUN, c.partition_id, c.token, [(3, '"d"'), (4, '"e"')], now=3.0)
    assert ledger.done_indices(RUN, c.partition_id) == {0, 1, 2}
    other = claim(ledger, "w2", now=1.0)
    assert not ledger.add_samples(RUN, c.partition_id, other.token, [(3, '"x"')], now=3.0)
    # the holder dies; the next one resumes at the next sample and cannot record one twice
    c2 = claim(ledger, "w3", now=20.0, prefer_model="m1")
    assert c2.partition_id == "p0000" and ledger.done_indices(RUN, "p0000") == {0, 1, 2}
    assert ledger.add_samples(RUN, "p0000", c2.token, [(2, '"C"'), (3, '"d"')], now=21.0)
    assert ledger.complete(RUN, "p0000", c2.token, now=22.0)
    assert [s[2] for s in ledger.samples(RUN, "p0000")] == ['"a"', '"b"', '"c"', '"d"']
    p = ledger.partitions(RUN)[0]
    assert p["n_done"] == p["n_samples"] == 4


def test_samples_are_read_in_pages(tmp_path, monkeypatch):
    import evalcore.engine.ledger as ledger_mod

    monkeypatch.setattr(ledger_mod, "PAGE", 3)
    ledger = new_ledger(tmp_path / "ledger.db", parts(3, per=4))
    for _ in range(3):
        c = claim(ledger, now=0.0)
        ledger.add_samples(RUN, c.partition_id, c.token,
                           [(i, str(i)) for i in range(c.sample_end - 1, c.sample_start - 1, -1)], now=1.0)
    got = list(ledger.samples(RUN))
    assert [(p, i) for p, i, _ in got] == [(f"p{i // 4:04d}", i) for i in range(12)]
    assert [i for _, i, _ in ledger.samples(RUN, "p0001")] == [4, 5, 6, 7]


def test_progress_loads_results_and_runs(tmp_path):
    ledger = new_ledger(tmp_path / "ledger.db", parts(4, models=("m1", "m2"), per=10), now=100.0)
    c = claim(ledger, now=100.0, prefer_model="m1")
    ledger.add_samples(RUN, c.partition_id, c.token, [(i, "1") for i in range(c.sample_start, c.sample_end)],
                       now=104.0)
    ledger.complete(RUN, c.partition_id, c.token, now=105.0)
    c = claim(ledger, now=106.0, prefer_model="m1")
    ledger.add_samples(RUN, c.partition_id, c.token, [(c.sample_start, "1")], now=107.0)
    g1, g2 = ledger.progress(RUN)
    assert (g1["model_key"], g1["samples_total"], g1["samples_done"]) == ("m1", 20, 11)
    assert g1["partitions"] == {"pending": 0, "running": 1, "done": 1, "failed": 0}
    assert (g1["started_at"], g1["last_activity_at"], g1["busy_seconds"], g1["busy_samples"]) == (100.0, 107.0, 5.0, 10)
    assert (g2["model_key"], g2["samples_done"], g2["partitions"]["pending"], g2["started_at"]) == ("m2", 0, 2, None)

    ledger.record_load(RUN, "w1", "m1", started_at=99.0, seconds=3.5)
    assert ledger.loads(RUN) == [{"worker_id": "w1", "model_key": "m1", "started_at": 99.0, "seconds": 3.5}]
    ledger.put_results(RUN, [{"model_key": "m1", "dataset_key": "arc", "metric": "acc", "value": 0.5, "n": 20}])
    ledger.put_results(RUN, [{"model_key": "m1", "dataset_key": "arc", "metric": "acc", "value": 0.75,
                              "stderr": 0.1, "n": 20}])
    assert ledger.results(RUN) == [{"model_key": "m1", "dataset_key": "arc", "metric": "acc", "value": 0.75,
                                    "stderr": 0.1, "n": 20}]
    ledger.set_run_status(RUN, "done", now=200.0)
    (run,) = ledger.runs()
    assert run["status"] == "done" and run["updated_at"] == 200.0 and run["partitions"]["running"] == 1


def test_a_ledger_survives_pickle_and_fork(tmp_path):
    ledger = new_ledger(tmp_path / "ledger.db", parts(3))
    copy = pickle.loads(pickle.dumps(ledger))
    assert claim(copy, now=0.0).partition_id == "p0000"
    copy.close()
    if "fork" in multiprocessing.get_all_start_methods():
        ctx = multiprocessing.get_context("fork")
        child = ctx.Process(target=_claim_in_child, args=(ledger,))
        child.start()
        child.join(30)
        assert child.exitcode == 0
        assert ledger.partitions(RUN)[1]["claimed_by"] == "child"
    assert claim(ledger, now=0.0) is not None                        # the parent's connection is fine


def _claim_in_child(ledger: Ledger) -> None:
    c = ledger.claim(RUN, "child", now=0.0, lease_s=10, pid=os.getpid(), host=HOST)
    os._exit(0 if c is not None and c.partition_id == "p0001" else 1)


# ---- files it must not touch --------------------------------------------------------------------

def _fingerprint(path: Path) -> tuple:
    siblings = sorted(p.name for p in path.parent.iterdir())
    return hashlib.sha256(path.read_bytes()).hexdigest(), siblings


def _random_bytes(p: Path) -> None:
    p.write_bytes(random.Random(1).randbytes(8192))


def _corrupt_sqlite_header(p: Path) -> None:
    with sqlite3.connect(p) as conn:
        conn.execute("CREATE TABLE t (a)")
    data = bytearray(p.read_bytes())
    data[100:] = random.Random(2).randbytes(len(data) - 100)
    p.write_bytes(bytes(data))


def _foreign_db(p: Path) -> None:
    with sqlite3.connect(p) as conn:
        conn.execute("CREATE TABLE foo (a INTEGER)")
        conn.execute("INSERT INTO foo VALUES (1)")
    conn.close()


def _foreign_wal_db(p: Path) -> None:
    conn = sqlite3.connect(p)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA application_id=1234")
    conn.execute("CREATE TABLE bar (a INTEGER)")
    conn.commit()
    conn.close()


def _cachekit_index(p: Path) -> None:
    from cachekit.index import Index

    Index(p.parent).record_import((), bundle="test", when="now")     # the real index format
    (p.parent / "index.db").rename(p)


def _future_ledger(p: Path) -> None:
    Ledger(p).close()
    conn = sqlite3.connect(p)
    conn.execute(f"PRAGMA user_version={SCHEMA.version + 7}")
    conn.commit()
    conn.close()


def _lease_table(p: Path) -> None:
    leases.GpuLeases(p, ["0"], 1).close()


def _empty(p: Path) -> None:
    p.write_bytes(b"")


@pytest.mark.parametrize("make, words", [
    (_random_bytes, "is not an SQLite database"),
    (_corrupt_sqlite_header, "corrupt"),
    (_empty, "is an empty file"),
    (_foreign_db, "another application's SQLite database (no evalcore application_id; tables: foo)"),
    (_foreign_wal_db, "another application's SQLite database (application_id 0x000004D2; tables: bar)"),
    (_cachekit_index, "is a cachekit store index"),
    (_future_ledger, f"written by a newer evalcore (run ledger schema {SCHEMA.version + 7}; this evalcore reads up to {SCHEMA.version})"),
    (_lease_table, "is an evalcore GPU lease table, not an evalcore run ledger"),
])
@pytest.mark.parametrize("create", [True, False])
def test_refuses_files_it_does_not_own_without_touching_them(tmp_path, make, words, create):
    path = tmp_path / "d" / "ledger.db"
    path.parent.mkdir()
    make(path)
    before = _fingerprint(path)
    with pytest.raises(LedgerError) as err:
        Ledger(path, create=create)
    message = str(err.value)
    assert words in message and str(path) in message and "\n" not in message
    assert err.value.exit_code == EXIT_VERIFY and err.value.hint
    assert _fingerprint(path) == before


def test_missing_file_is_created_only_when_asked(tmp_path):
    path = tmp_path / "sub" / "ledger.db"
    with pytest.raises(LedgerError, match="does not exist"):
        Ledger(path, create=False)
    assert not path.parent.exists()
    Ledger(path).close()
    assert sorted(p.name for p in path.parent.iterdir()) == ["ledger.db"]        # no temp files left
    assert db.read_header(path) == (SCHEMA.application_id, SCHEMA.version)
    Ledger(path, create=False).close()


def test_concurrent_creation_gives_one_file(tmp_path):
    path = tmp_path / "ledger.db"
    go = tmp_path / "go"
    done = run_spawned(_open_and_create_run, [(str(path), str(go), i) for i in range(4)], go)
    assert sorted(done) == [0, 1, 2, 3]
    ledger = Ledger(path, create=False)
    assert len(ledger.partitions(RUN)) == 5 and len(ledger.runs()) == 1


def _open_and_create_run(path: str, go: str, i: int) -> int:
    ready_then_wait(go)
    ledger = Ledger(path)
    ledger.create_run(RUN, "/w", "{}", [], parts(5), now=float(i))
    ledger.close()
    return i


# ---- migrations ---------------------------------------------------------------------------------

TEST_APP = 0x54455354


def _m1(conn):
    conn.execute("CREATE TABLE t (a INTEGER)")
    conn.execute("INSERT INTO t VALUES (1)")


def _m2(conn):
    conn.execute("ALTER TABLE t ADD COLUMN b TEXT DEFAULT 'new'")
    conn.execute("CREATE TABLE u (x)")


def _m3_broken(conn):
    conn.execute("CREATE TABLE v (y)")
    raise RuntimeError("step 3 is broken")


def test_migrations_upgrade_an_old_file_in_one_transaction(tmp_path):
    path = tmp_path / "x.db"
    v1 = db.Schema("test file", TEST_APP, {1: _m1})
    v2 = db.Schema("test file", TEST_APP, {1: _m1, 2: _m2})
    v3 = db.Schema("test file", TEST_APP, {1: _m1, 2: _m2, 3: _m3_broken})
    db.connect(path, create=True, schema=v1).close()
    assert db.read_header(path) == (TEST_APP, 1)

    conn = db.connect(path, create=False, schema=v2)
    assert conn.execute("SELECT a, b FROM t").fetchall() == [(1, "new")]
    assert conn.execute("PRAGMA user_version").fetchone()[0] == 2
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    conn.close()

    with pytest.raises(LedgerError, match="from schema 2 to 3 failed, file left at schema 2: step 3 is broken"):
        db.connect(path, create=False, schema=v3)
    conn = db.connect(path, create=False, schema=v2)
    assert conn.execute("SELECT name FROM sqlite_master WHERE name = 'v'").fetchall() == []
    conn.close()
    with pytest.raises(LedgerError, match="written by a newer evalcore"):
        db.connect(path, create=False, schema=v1)
    with pytest.raises(ValueError, match="numbered 1..N"):
        db.Schema("bad", TEST_APP, {1: _m1, 3: _m2})


# ---- real concurrency ---------------------------------------------------------------------------

def test_eight_processes_claim_every_partition_exactly_once(tmp_path):
    path = tmp_path / "ledger.db"
    new_ledger(path, parts(200, models=("a", "b", "c"))).close()
    go = tmp_path / "go"
    results = run_spawned(_hold_one_then_loop, [(str(path), RUN, 10_000, str(go), 8)] * 8, go)
    completed = [pid for r in results for pid in r]
    assert len(completed) == 200 and len(set(completed)) == 200
    assert all(results)                                   # all eight held a claim at once
    ledger = Ledger(path, create=False)
    assert {p["status"] for p in ledger.partitions(RUN)} == {"done"}
    assert {p["attempts"] for p in ledger.partitions(RUN)} == {1}
    assert len(ledger.attempts(RUN)) == 200


def test_concurrent_workers_with_takeovers_never_duplicate_work(tmp_path):
    path = tmp_path / "ledger.db"
    per, n = 3, 40
    new_ledger(path, parts(n, models=("a", "b"), per=per, max_attempts=1000)).close()
    go = tmp_path / "go"
    # Leases shorter than the "inference" most of the time: the last partitions are taken over
    # by idle workers while their first holder is still writing samples.
    args = [(str(path), str(go), 0.03, (0.01, 0.07), i) for i in range(8)]
    logs = [entry for r in run_spawned(_sample_worker, args, go) for entry in r]
    ok = [p for p, _, completed in logs if completed]
    assert sorted(ok) == [p.partition_id for p in parts(n)]                     # each completed once
    assert len(logs) > len(ok)                                                  # some claims were lost
    ledger = Ledger(path, create=False)
    assert {p["status"] for p in ledger.partitions(RUN)} == {"done"}
    samples = list(ledger.samples(RUN))
    keys = [(p, i) for p, i, _ in samples]
    assert len(keys) == len(set(keys)) == n * per
    assert all(p["n_done"] == per for p in ledger.partitions(RUN))
    assert all(int(json.loads(out)["i"]) == i for _, i, out in samples)
    outcomes = [a["outcome"] for a in ledger.attempts(RUN)]
    assert outcomes.count("done") == n and outcomes.count("expired") == len(logs) - n
