"""A ledger is checked when it is opened: damage inside the file (PRAGMA quick_check) and a ledger
of another run are refused with exit 3 before anything is written, the file left byte for byte."""

from __future__ import annotations

import hashlib
import shutil
import sqlite3
from pathlib import Path

import pytest

from evalcore.engine.ledger import Ledger, PartitionRow
from evalcore.errors import LedgerError
from tests.conftest import run_cli
from tests.test_engine import env, run_dir_of, scripted, write_plan  # noqa: F401  (env: fixture)

PAGE = 4096


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def side_files(path: Path) -> list[str]:
    return sorted(p.name for p in path.parent.glob(path.name + "-*"))


def make_ledger(path: Path, run_id: str = "run-a") -> None:
    """A closed ledger of some 50 pages: 6 partitions, 300 samples recorded."""
    parts = [PartitionRow(f"p{i}", "m", "d", "k", "{}", "{}", i * 100, (i + 1) * 100, 1.0) for i in range(6)]
    with Ledger(path, create=True) as ledger:
        ledger.create_run(run_id, str(path.parent), "{}", ["evalcore"], parts, now=1.0)
        for _ in range(3):
            claim = ledger.claim(run_id, "w", now=1.0, lease_s=60, pid=1, host="h")
            assert claim is not None
            rows = [(i, '{"generation": "%s"}' % ("x" * 500)) for i in range(claim.sample_start, claim.sample_end)]
            assert ledger.add_samples(run_id, claim.partition_id, claim.token, rows, now=2.0)
    assert not side_files(path)


def damage_a_data_page(path: Path) -> int:
    """Overwrite the b-tree header and cell pointers of a page in the middle of the file (not the
    100-byte file header, which is checked separately)."""
    data = bytearray(path.read_bytes())
    pages = len(data) // PAGE
    assert pages >= 8, pages
    page = pages // 2
    data[page * PAGE: page * PAGE + 64] = b"\xa5" * 64
    path.write_bytes(bytes(data))
    return page


def test_garbage_in_a_data_page_is_refused_untouched(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    make_ledger(path)
    damage_a_data_page(path)
    before = digest(path)
    with pytest.raises(LedgerError, match="damaged .*quick_check"):
        Ledger(path, create=False)
    assert digest(path) == before and not side_files(path)


def test_damage_with_a_crash_log_beside_it_is_refused_untouched(tmp_path: Path) -> None:
    """A write-ahead log left by a crash is not checkpointed into a damaged file."""
    src = tmp_path / "src.db"
    make_ledger(src)
    con = sqlite3.connect(src, isolation_level=None)
    con.execute("PRAGMA wal_autocheckpoint=0")
    con.execute("UPDATE runs SET status='failed'")
    path = tmp_path / "ledger.db"
    shutil.copy(src, path)
    shutil.copy(f"{src}-wal", f"{path}-wal")  # as a crash leaves them
    con.close()
    damage_a_data_page(path)
    before, wal = digest(path), digest(Path(f"{path}-wal"))
    with pytest.raises(LedgerError, match="damaged"):
        Ledger(path, create=False)
    assert digest(path) == before and digest(Path(f"{path}-wal")) == wal


def test_a_sound_ledger_still_opens(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    make_ledger(path)
    with Ledger(path, create=False, run_id="run-a") as ledger:
        assert len(ledger.partitions("run-a")) == 6


def test_another_runs_ledger_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    make_ledger(path, run_id="run-a")
    before = digest(path)
    with pytest.raises(LedgerError, match="ledger of run run-a, not of run run-b"):
        Ledger(path, create=False, run_id="run-b")
    assert digest(path) == before and not side_files(path)


def _run(tmp_path: Path, env: dict, name: str) -> Path:  # noqa: F811
    plan = write_plan(tmp_path / f"{name}.toml", scripted("alpha"), limit=300, max_partition_size=100 * 4)
    r = run_cli("evalcore", "eval", plan, env=env)
    assert r.returncode == 0, r.stderr
    return run_dir_of(r.stdout)


def _refused(run_dir: Path, env: dict, words: str) -> None:  # noqa: F811
    ledger = run_dir / "ledger.db"
    before = digest(ledger)
    for cmd in (["status", run_dir], ["resume", run_dir], ["report", run_dir]):
        r = run_cli("evalcore", *cmd, env=env)
        assert r.returncode == 3, (cmd, r.stdout, r.stderr)
        first = r.stderr.splitlines()[0]
        assert first.startswith("error: ") and words in first, (cmd, r.stderr)
        assert "evalcore resume" not in r.stderr  # a rerun cannot fix it
        assert digest(ledger) == before, cmd
        assert not side_files(ledger), cmd


def test_cli_refuses_a_ledger_damaged_inside(tmp_path: Path, env: dict) -> None:  # noqa: F811
    run_dir = _run(tmp_path, env, "plan")
    damage_a_data_page(run_dir / "ledger.db")
    _refused(run_dir, env, "is damaged")


def test_cli_refuses_another_runs_ledger(tmp_path: Path, env: dict) -> None:  # noqa: F811
    first = _run(tmp_path, env, "one")
    second = _run(tmp_path, env, "two")
    shutil.copy(first / "ledger.db", second / "ledger.db")
    _refused(second, env, f"is the ledger of run {first.name}, not of run {second.name}")


def test_a_second_handle_in_one_process_keeps_the_first_ones_locks(tmp_path):
    """A worker holds two handles on its ledger (its own and its heartbeat thread's). Opening the
    second must not drop the first one's POSIX locks (any close() of a descriptor of the file
    would), or another process closing its connection takes itself for the last user, deletes
    the write-ahead log, and what the first handle writes next is lost."""
    import subprocess
    import sys
    import time

    path = tmp_path / "ledger.db"
    first = Ledger(path, create=True)
    first.create_run("r1", str(tmp_path), "{}", [], [], now=time.time())
    Ledger(path, create=False).close()  # the heartbeat thread's handle, opened and closed
    other = ("import sqlite3, sys; c = sqlite3.connect(sys.argv[1]); "
             "c.execute('SELECT count(*) FROM runs').fetchone(); c.close()")
    subprocess.run([sys.executable, "-c", other, str(path)], check=True, timeout=60)
    assert Path(f"{path}-wal").exists()  # still this process's log: nobody else checkpointed it away
    first.set_run_status("r1", "done", now=time.time())
    read = ("import sqlite3, sys; c = sqlite3.connect(sys.argv[1]); "
            "print(c.execute('SELECT status FROM runs').fetchone()[0])")
    got = subprocess.run([sys.executable, "-c", read, str(path)], capture_output=True, text=True, timeout=60, check=True)
    first.close()
    assert got.stdout.strip() == "done"
