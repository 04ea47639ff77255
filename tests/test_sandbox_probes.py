"""Every escape of issue 12 against the sandbox API, "namespaces" mode: each one is contained
(the host's files, processes, sockets and ledger are as they were; no process outlives it)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from evalcore.scoring.sandbox import Limits, run_program
from tests.sandbox_probes import PROBE_NAMES, SECRET, Host, kill_leftovers, probes

LIMITS = Limits(timeout_s=30.0, memory_bytes=512 << 20)  # generous: a loaded machine still finishes
SHORT = Limits(timeout_s=2.0, memory_bytes=512 << 20)  # for the probe that never ends
NAMES = sorted(PROBE_NAMES)


@pytest.fixture
def host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("HF_TOKEN", SECRET)  # in the sandbox's parent, as in a user's shell
    h = Host(tmp_path).start()
    yield h
    h.stop()
    kill_leftovers(h.marker)


@pytest.mark.parametrize("name", NAMES)
def test_probe_is_contained(host: Host, tmp_path: Path, name: str) -> None:
    program = probes(host, os.getpid())[name]
    root = tmp_path / "sandbox-tmp"
    root.mkdir()
    limits = SHORT if name == "fork_survivors_at_timeout" else LIMITS
    r = run_program(program, allow_execution=True, limits=limits, tmp_root=root)
    assert r.isolation == "namespaces"
    assert r.status in ("passed", "failed", "timeout"), r
    assert SECRET not in r.message
    if name == "read_hf_token":
        assert r.status == "passed", r.message
    if name == "fork_survivors_at_timeout":
        assert r.status == "timeout"
    assert host.breaches() == []
    assert list(root.iterdir()) == []


def test_probe_set_covers_the_issue(host: Host) -> None:
    assert set(probes(host, os.getpid())) == set(PROBE_NAMES)


# The weak mode, for the probes that harm only what the test set up: each must escape there,
# which shows it is a real attack (a probe that cannot escape anything would prove nothing).
SAFE_IN_WEAK_MODE = sorted(set(PROBE_NAMES) - {"kill_parent_and_others"})


@pytest.mark.parametrize("name", SAFE_IN_WEAK_MODE)
def test_probe_escapes_the_weak_guard(host: Host, tmp_path: Path, name: str) -> None:
    program = probes(host, 0)[name]
    limits = SHORT if name == "fork_survivors_at_timeout" else LIMITS
    r = run_program(program, allow_execution=True, limits=limits, isolation="guard", tmp_root=tmp_path)
    assert r.isolation == "guard"
    if name == "read_hf_token":
        assert r.status == "failed" and "LEAKED" in r.message, r
    else:
        assert host.breaches() != [], r
