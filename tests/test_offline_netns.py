"""Offline by the kernel: workers of an --offline run start in a loopback-only network namespace
(evalcore/isolation/netns.py), so even `_socket.socket`, past the Python guard, reaches no other address;
`evalcore eval` says which enforcement is in force and the run records it. No traffic leaves this
machine: the address tried is this host's own."""

from __future__ import annotations

import errno
import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from evalcore.engine import security
from evalcore.isolation.netns import launcher, netns_problem
from evalcore.plan.spec import parse_plan
from evalcore.plan.tasks import task_for
from tests.conftest import ROOT, clean_env, run_cli, wait_for
from tests.test_engine import _start_eval, env, run_dir_of, scripted, write_plan  # noqa: F401  (env: fixture)

PROBLEM = netns_problem()
needs_netns = pytest.mark.skipif(PROBLEM is not None, reason=f"no network namespace here: {PROBLEM}")


def host_address() -> str | None:
    """A non-loopback IPv4 address of this host (`hostname -I`), or None."""
    try:
        out = subprocess.run(["hostname", "-I"], capture_output=True, text=True, timeout=10).stdout
    except OSError:
        return None
    for word in out.split():
        if "." in word and not word.startswith("127."):
            return word
    return None


@pytest.fixture
def server():
    """A TCP server on a non-loopback address of this host; yields (address, port, connected)."""
    addr = host_address()
    if addr is None:
        yield None
        return
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind((addr, 0))
    s.listen(4)
    s.setblocking(False)

    def connected() -> bool:
        try:
            conn, _ = s.accept()
        except BlockingIOError:
            return False
        conn.close()
        return True

    yield addr, s.getsockname()[1], connected
    s.close()


CHILD = textwrap.dedent("""\
    import _socket, socket, sys
    names = [n for _, n in socket.if_nameindex()]
    print('interfaces', names)
    if len(sys.argv) > 1:
        s = _socket.socket(_socket.AF_INET, _socket.SOCK_STREAM)
        s.settimeout(5)
        try:
            s.connect((sys.argv[1], int(sys.argv[2])))
        except OSError as exc:
            print('errno', exc.errno)
        else:
            print('CONNECTED')
    """)


@needs_netns
def test_a_child_through_the_launcher_reaches_no_other_address(server) -> None:
    if server is None:  # no non-loopback address here: check the namespace itself
        r = subprocess.run(launcher([sys.executable, "-I", "-c", CHILD]), capture_output=True, text=True,
                           cwd=ROOT, env=clean_env(), timeout=60)
        assert r.returncode == 0, r.stderr
        assert "interfaces ['lo']" in r.stdout
        return
    addr, port, connected = server
    # Without the namespace the same raw connect gets through (so the test can fail).
    plain = subprocess.run([sys.executable, "-I", "-c", CHILD, addr, str(port)], capture_output=True, text=True,
                           timeout=60)
    assert "CONNECTED" in plain.stdout, plain
    assert wait_for(connected, timeout=30, what="the plain connection")
    r = subprocess.run(launcher([sys.executable, "-I", "-c", CHILD, addr, str(port)]), capture_output=True,
                       text=True, cwd=ROOT, env=clean_env(), timeout=60)
    assert r.returncode == 0, r.stderr
    assert "interfaces ['lo']" in r.stdout
    assert f"errno {errno.ENETUNREACH}" in r.stdout, r.stdout
    assert not connected()


@needs_netns
def test_loopback_inside_is_up_and_its_own() -> None:
    code = ("import socket\ns = socket.socket(); s.bind(('127.0.0.1', 0)); s.listen(1)\n"
            "socket.create_connection(s.getsockname(), timeout=5).close(); print('loopback ok')")
    r = subprocess.run(launcher([sys.executable, "-I", "-c", code]), capture_output=True, text=True, cwd=ROOT,
                       env=clean_env(), timeout=60)
    assert r.returncode == 0 and "loopback ok" in r.stdout, r


def test_launcher_usage_and_missing_command() -> None:
    r = subprocess.run([sys.executable, "-m", "evalcore.isolation.netns", "true"], capture_output=True, text=True, cwd=ROOT,
                       env=clean_env(), timeout=60)
    assert r.returncode == 2 and "usage" in r.stderr


@needs_netns
def test_offline_run_workers_are_in_a_network_namespace(tmp_path: Path, env: dict) -> None:  # noqa: F811
    plan = write_plan(tmp_path / "plan.toml", scripted("alpha", sample_seconds=0.05), limit=60, max_num_workers=1)
    p, run_dir = _start_eval(plan, env)
    pid = wait_for(lambda: _worker_pid(run_dir), timeout=120, what="a running worker")
    theirs = os.readlink(f"/proc/{pid}/ns/net")  # the worker has 3 s of samples left at least
    out, err = p.communicate(timeout=300)
    assert p.returncode == 0, err
    assert theirs != os.readlink("/proc/self/ns/net")
    assert "offline: enforced by the kernel" in err
    doc = json.loads((run_dir / "run.json").read_text())
    assert doc["security"]["offline"] == "netns"


def _worker_pid(run_dir: Path) -> int | None:
    import sqlite3

    try:
        con = sqlite3.connect(run_dir / "ledger.db", timeout=5)
        row = con.execute("SELECT pid FROM partitions WHERE status = 'running' LIMIT 1").fetchone()
        con.close()
    except sqlite3.Error:
        return None
    return row[0] if row else None


def test_no_netns_falls_back_to_the_guard_and_says_so() -> None:
    plan = parse_plan({"models": [{"path": "alpha", "backend": "scripted"}],
                       "datasets": [{"name": "arc_easy_ppl"}]})
    tasks = {d.abbr: task_for(d) for d in plan.datasets}
    got = security.decide(plan, tasks, netns_problem=lambda: "the kernel refused a network namespace: EPERM")
    assert got["offline"] == "guard" and "EPERM" in got["offline_reason"]
    assert any("Python socket guard only" in line for line in security.describe(got))
    assert security.report_notes(got)
    online = parse_plan({"models": [{"path": "alpha", "backend": "scripted"}],
                         "datasets": [{"name": "arc_easy_ppl"}], "run": {"offline": False}})
    assert security.decide(online, tasks, netns_problem=lambda: None)["offline"] == "off"


def test_online_run_is_not_wrapped(tmp_path: Path, env: dict) -> None:  # noqa: F811
    plan = write_plan(tmp_path / "plan.toml", scripted("alpha"), limit=4, offline=False)
    r = run_cli("evalcore", "eval", plan, env=env)
    assert r.returncode == 0, r.stderr
    doc = json.loads((run_dir_of(r.stdout) / "run.json").read_text())
    assert doc["security"] == {"offline": "off"}
