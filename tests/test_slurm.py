"""The Slurm runner end to end, on a real single-node Slurm cluster with 4 fake GPUs
(scripts/slurm/start-cluster.sh; .ci/run starts one and exports SLURM_CONF and
EVALCORE_TEST_SLURM=1). Skipped when no cluster is configured; with EVALCORE_TEST_SLURM=1 an
unreachable cluster is a failure, not a skip.

Every job here is a real `sbatch` job running `python -m evalcore.engine.worker`, talking to the driver
through the spool. Faults: a job cancelled mid-partition, a job that can never start, the driver
interrupted (SIGINT, SIGTERM) and killed (SIGKILL), then resumed."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT, clean_env, run_cli, wait_for
from tests.test_engine import logprobs, results, run_dir_of, sample_rows, scripted, tiny, write_plan

pytestmark = pytest.mark.slow


def _cluster_problem() -> str | None:
    if shutil.which("sinfo") is None:
        return "Slurm client (sinfo) not installed: run scripts/slurm/install.sh"
    if not os.environ.get("SLURM_CONF"):
        return ("SLURM_CONF unset: no test cluster (bash scripts/slurm/start-cluster.sh BASE; "
                "source BASE/env.sh)")
    try:
        r = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=10)
    except subprocess.TimeoutExpired:
        return f"no Slurm controller answers (SLURM_CONF={os.environ['SLURM_CONF']}): sinfo timed out"
    if r.returncode != 0 or not r.stdout.strip():
        return f"no Slurm cluster reachable through SLURM_CONF={os.environ['SLURM_CONF']}: {r.stderr.strip()}"
    return None


@pytest.fixture(scope="module")
def cluster():
    problem = _cluster_problem()
    if problem:
        if os.environ.get("EVALCORE_TEST_SLURM") == "1":
            pytest.fail(f"EVALCORE_TEST_SLURM=1 but {problem}")
        pytest.skip(problem)
    yield
    # no job of these tests' runs may be left in the queue
    left = [line.split() for line in _squeue("%i %j").splitlines() if " evalcore-" in line]
    if left:
        subprocess.run(["scancel", *[jid for jid, _ in left]], timeout=30)
    assert not left, f"jobs left in the queue: {left}"


@pytest.fixture
def env(cluster, tmp_path):
    return clean_env(HF_HOME=str(tmp_path / "hf"), EVALCORE_STATE_DIR=str(tmp_path / "state"))


def _squeue(fmt: str = "%i") -> str:
    r = subprocess.run(["squeue", "-h", "-o", fmt], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    return r.stdout


def queued_ids() -> set[str]:
    return set(_squeue().split())


def job_ids(run_dir: Path) -> set[str]:
    doc = json.loads((run_dir / "slurm" / "jobs.json").read_text())
    return {jid for s in doc["sessions"] for jid in s["jobs"]}


def slurm_plan(path: Path, models: str, **run) -> Path:
    """A plan for the Slurm runner with short leases and polls, so that faults resolve fast. Jobs
    wait for their driver as long as in production unless a test says otherwise: on a loaded
    host a live driver can be slow to answer, and that must not end its jobs."""
    slurm = run.pop("slurm", {})
    slurm = {"poll_seconds": 0.3, "spool_timeout": 60, **slurm}
    plan = write_plan(path, models, runner="slurm", threads=1, **run)
    items = ", ".join(f"{k} = {json.dumps(v)}" for k, v in slurm.items())
    text = plan.read_text().replace("[run]\n", f"[run]\nslurm = {{ {items} }}\n", 1)
    plan.write_text(text)
    return plan


def local_twin(slurm_plan_path: Path, out: Path) -> Path:
    """The same plan for the local runner (same partitions, same keys)."""
    lines = [ln for ln in slurm_plan_path.read_text().splitlines()
             if not ln.startswith(("slurm = ", "runner = "))]
    text = "\n".join(lines).replace(str(slurm_plan_path.parent / "outputs"), str(out.parent / "outputs-local"))
    out.write_text(text + "\n")
    return out


def _query(run_dir: Path, sql: str, args=()):
    try:
        con = sqlite3.connect(f"file:{run_dir / 'ledger.db'}?mode=ro", uri=True, timeout=5)
        try:
            return con.execute(sql, args).fetchall()
        finally:
            con.close()
    except sqlite3.Error:
        return []


def running_with_samples(run_dir: Path):
    rows = _query(run_dir, "SELECT p.partition_id, p.claimed_by FROM partitions p WHERE p.status = 'running' "
                           "AND (SELECT count(*) FROM samples s WHERE s.partition_id = p.partition_id) > 0")
    return rows[0] if rows else None


def start_eval(plan: Path, env: dict, *args: str) -> tuple[subprocess.Popen, Path]:
    p = subprocess.Popen([sys.executable, "-m", "cli.evalcore_cli", "eval", str(plan), *args], env=env, cwd=ROOT,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return p, run_dir_of(p.stdout.readline())


def statuses(run_dir: Path) -> dict[str, str]:
    return dict(_query(run_dir, "SELECT partition_id, status FROM partitions"))


SCRIPTED = {"limit": 160, "max_partition_size": 80, "max_num_workers": 4}  # 8 partitions of 20 samples


@pytest.fixture(scope="module")
def scripted_reference(cluster, tmp_path_factory):
    """The scripted plan's results from the local runner."""
    d = tmp_path_factory.mktemp("scripted-local")
    plan = write_plan(d / "plan.toml", scripted("alpha", sample_seconds=0.01), **SCRIPTED)
    r = run_cli("evalcore", "eval", plan, env=clean_env(HF_HOME=str(d / "hf"), EVALCORE_STATE_DIR=str(d / "st")))
    assert r.returncode == 0, r.stderr
    rd = run_dir_of(r.stdout)
    return {"results": results(rd), "samples": {(p, i): o for p, i, o in sample_rows(rd)}}


def assert_same_as(run_dir: Path, ref: dict) -> None:
    assert results(run_dir) == ref["results"]
    assert {(p, i): o for p, i, o in sample_rows(run_dir)} == ref["samples"]


def test_settings_are_checked():
    from evalcore.errors import PlanError
    from evalcore.runners.slurm import SlurmSettings, slurm_settings

    assert slurm_settings({}) == SlurmSettings()
    got = slurm_settings({"partition": "gpu", "qos": "high", "time": 90, "extra_args": ["--mem=8G"],
                          "max_retries": 0, "poll_seconds": 1, "spool_timeout": 5})
    assert got == SlurmSettings("gpu", "high", "90", ("--mem=8G",), 0, 1.0, 5.0)
    for bad, msg in (({"colour": 1}, "unknown key(s) colour"), ({"extra_args": "--mem=8G"}, "list of strings"),
                     ({"max_retries": -1}, "'max_retries'"), ({"poll_seconds": 0}, "'poll_seconds'"),
                     ({"time": True}, "'time'"), ({"partition": ""}, "'partition'")):
        with pytest.raises(PlanError, match=re.escape(msg)):
            slurm_settings(bad)


def test_unknown_setting_is_a_usage_error(tmp_path):
    plan = slurm_plan(tmp_path / "plan.toml", scripted("alpha"), limit=4, slurm={"colour": "blue"})
    r = run_cli("evalcore", "eval", plan, env=clean_env(HF_HOME=str(tmp_path / "hf")))
    assert r.returncode == 2 and "[run.slurm]: unknown key(s) colour" in r.stderr, r.stderr


def test_four_fake_gpus_one_per_job(tmp_path, env, scripted_reference):
    # Each job's model load waits until all four jobs have loaded (a barrier, not a timing
    # guess): however slowly a loaded host starts them, the four held a partition at once.
    barrier = tmp_path / "barrier"
    model = scripted("alpha", sample_seconds=0.02, barrier_dir=json.dumps(str(barrier)), barrier_count=4)
    plan = slurm_plan(tmp_path / "plan.toml", model, **SCRIPTED)
    t0 = time.time()
    r = run_cli("evalcore", "eval", plan, env=env, timeout=300)
    took = time.time() - t0
    assert r.returncode == 0, r.stderr
    run_dir = run_dir_of(r.stdout)
    met = sorted(p.read_text().strip() for p in barrier.iterdir() if not p.name.startswith("."))
    assert met == ["0", "1", "2", "3"], met  # four loads at once, each on its own fake GPU
    spans: dict[str, list[float]] = {}
    for worker, start, end in _query(run_dir, "SELECT worker, started_at, finished_at FROM attempts"):
        s = spans.setdefault(worker.removeprefix("slurm-"), [start, end])
        s[0], s[1] = min(s[0], start), max(s[1], end)
    devices = {}
    for jid in spans:
        log = (run_dir / "logs" / f"slurm-{jid}.out").read_text()
        m = re.search(rf"\[slurm-{jid}\] pid \d+ on \S+, slurm job {jid}, CUDA_VISIBLE_DEVICES=(\S+)", log)
        assert m, log
        devices[jid] = m.group(1)
    assert set(devices.values()) == {"0", "1", "2", "3"}, devices
    overlapping = [(a, b) for a in spans for b in spans if a < b
                   and spans[a][0] < spans[b][1] and spans[b][0] < spans[a][1]]
    assert len(overlapping) == 6, spans  # the four jobs really ran at the same time
    for a, b in overlapping:
        assert devices[a] != devices[b], (a, b, devices)
    hosts = {h for (h,) in _query(run_dir, "SELECT DISTINCT host FROM attempts")}
    assert hosts and "" not in hosts
    assert len(results(run_dir)) == 2
    print(f"\n8 partitions on 4 Slurm jobs: {took:.1f} s end to end")


def test_results_match_the_local_runner(tmp_path, env, scripted_reference):
    plan = slurm_plan(tmp_path / "plan.toml", scripted("alpha", sample_seconds=0.01), **SCRIPTED)
    r = run_cli("evalcore", "eval", plan, env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    assert_same_as(run_dir_of(r.stdout), scripted_reference)


@pytest.mark.slow
def test_cancelled_job_is_retried_and_matches_a_local_run(tmp_path, env, tiny_model_dir):
    model = tiny(tiny_model_dir, batch_size=2).replace('batch_size = 2', 'batch_size = 2\nnum_gpus = 0')
    plan = slurm_plan(tmp_path / "plan.toml", model, limit=60, max_partition_size=120, max_num_workers=2)
    local = run_cli("evalcore", "eval", local_twin(plan, tmp_path / "local.toml"), env=env)
    assert local.returncode == 0, local.stderr
    ref = run_dir_of(local.stdout)

    p, run_dir = start_eval(plan, dict(env, EVALCORE_FAULTS="slow@tiny/arc/0000000"))
    partition, worker = wait_for(lambda: running_with_samples(run_dir), timeout=300, what="a partition with samples")
    job = worker.removeprefix("slurm-")
    subprocess.run(["scancel", job], check=True, timeout=30)
    out, err = p.communicate(timeout=300)
    assert p.returncode == 0, err
    attempts = _query(run_dir, "SELECT worker, outcome, error_class FROM attempts WHERE partition_id = ? "
                               "ORDER BY attempt", (partition,))
    # the worker got SIGTERM from scancel and handed the partition back before the job ended
    assert attempts[0] == (worker, "retry", "Interrupted"), attempts
    assert attempts[-1][1] == "done" and attempts[-1][0] != worker, attempts
    doc = json.loads((run_dir / "slurm" / "jobs.json").read_text())
    assert doc["sessions"][-1]["jobs"][job]["state"] == "CANCELLED"
    rows = sample_rows(run_dir)
    assert len(rows) == 60 and len({(a, b) for a, b, _ in rows}) == 60  # none recorded twice
    assert results(run_dir) == pytest.approx(results(ref))
    got, want = logprobs(run_dir), logprobs(ref)
    assert sorted(got) == sorted(want)
    assert max(abs(a - b) for i in got for a, b in zip(got[i], want[i], strict=True)) < 1e-4


def test_job_that_can_never_start_fails_its_partitions(tmp_path, env):
    # a broken environment on the compute node: the worker's Python cannot even start
    plan = slurm_plan(tmp_path / "plan.toml", scripted("alpha"), limit=40, max_partition_size=80,
                      max_num_workers=2, slurm={"max_retries": 1,
                                                "extra_args": ["--export=ALL,PYTHONHOME=/nonexistent"]})
    r = run_cli("evalcore", "eval", plan, env=env, timeout=300)
    assert r.returncode == 1, r.stderr
    run_dir = run_dir_of(r.stdout)
    assert f"evalcore resume {run_dir}" in r.stderr
    assert "FAILED" in r.stderr and "slurm job" in r.stderr
    rows = _query(run_dir, "SELECT status, error_class, error_message FROM partitions")
    assert len(rows) == 2
    for status, cls, msg in rows:
        assert status == "failed" and cls == "FAILED"
        first = msg.splitlines()[0]
        # the node comes from sacct/scontrol; a job that failed at once may be gone from both
        assert re.fullmatch(r"slurm job \d+ FAILED, exit code 1:0, on (localhost|an unknown node); gave up after 2 "
                            r"failed job\(s\) in a row without progress", first), first
        assert "last lines of the job's output" in msg and ("PYTHONHOME" in msg or "encodings" in msg)
    assert 2 <= len(job_ids(run_dir)) <= 3  # 2 at once; one may have been replaced before giving up
    st = run_cli("evalcore", "status", run_dir, env=env)
    assert st.returncode == 0 and "FAILED: slurm job" in st.stdout and "0/40" in st.stdout, st.stdout


def test_partition_that_raises_in_a_job(tmp_path, env):
    plan = slurm_plan(tmp_path / "plan.toml", scripted("alpha"), limit=40, max_partition_size=80, max_num_workers=2)
    r = run_cli("evalcore", "eval", plan, env=dict(env, EVALCORE_FAULTS="raise@alpha/arc/0000020"), timeout=300)
    assert r.returncode == 1, r.stderr
    run_dir = run_dir_of(r.stdout)
    assert "RuntimeError: injected fault" in r.stderr and f"evalcore resume {run_dir}" in r.stderr
    assert statuses(run_dir) == {"alpha/arc/0000000-0000020": "done", "alpha/arc/0000020-0000040": "failed"}
    r = run_cli("evalcore", "resume", run_dir, env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    assert set(statuses(run_dir).values()) == {"done"}


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_interrupted_driver_cancels_its_jobs_and_only_them(tmp_path, env, sig):
    foreign = subprocess.run(["sbatch", "--parsable", "-J", "not-evalcore", "-o", "/dev/null", "--wrap", "sleep 60"],
                             capture_output=True, text=True, timeout=30, check=True).stdout.strip()
    try:
        plan = slurm_plan(tmp_path / "plan.toml", scripted("alpha", sample_seconds=0.1), **SCRIPTED)
        p, run_dir = start_eval(plan, env)
        wait_for(lambda: running_with_samples(run_dir), timeout=300, what="a partition with samples")
        ours = job_ids(run_dir)
        assert ours & queued_ids()
        t0 = time.time()
        p.send_signal(sig)
        out, err = p.communicate(timeout=300)
        assert p.returncode == 130, err
        assert "interrupted" in err and f"evalcore resume {run_dir}" in err
        assert not (job_ids(run_dir) & queued_ids())  # gone when the driver exits, not later
        assert foreign in queued_ids()
        assert "running" not in statuses(run_dir).values()
        # a worker that got SIGTERM mid-partition handed it back (one in its last chunk finished it)
        outcomes = _query(run_dir, "SELECT outcome, error_class FROM attempts WHERE outcome != 'done'")
        assert set(outcomes) <= {("retry", "Interrupted")}, outcomes
        print(f"\n{sig.name}: driver out and {len(ours)} job(s) gone in {time.time() - t0:.1f} s")
    finally:
        subprocess.run(["scancel", foreign], timeout=30)


def test_orphaned_jobs_stop_by_themselves_then_resume(tmp_path, env, scripted_reference):
    plan = slurm_plan(tmp_path / "plan.toml", scripted("alpha", sample_seconds=0.1), **SCRIPTED,
                      slurm={"spool_timeout": 5})
    p, run_dir = start_eval(plan, env)
    wait_for(lambda: running_with_samples(run_dir), timeout=300, what="a partition with samples")
    p.kill()
    p.communicate()
    ours = job_ids(run_dir)
    t0 = time.time()
    wait_for(lambda: not (ours & queued_ids()), timeout=240, every=0.2, what="the orphaned jobs to stop")
    print(f"\norphaned jobs gone {time.time() - t0:.1f} s after the driver was killed")
    logs = "".join((run_dir / "logs" / f"slurm-{j}.out").read_text() for j in ours)
    assert "no answer from the driver" in logs
    before = len(sample_rows(run_dir))
    assert 0 < before < 160
    r = run_cli("evalcore", "resume", run_dir, env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    assert_same_as(run_dir, scripted_reference)


def test_resume_cancels_what_a_killed_driver_left_running(tmp_path, env, scripted_reference):
    # the jobs would wait an hour for their dead driver: only the resume's scancel ends them
    # within the test's time
    plan = slurm_plan(tmp_path / "plan.toml", scripted("alpha", sample_seconds=0.1), **SCRIPTED,
                      slurm={"spool_timeout": 3600})
    p, run_dir = start_eval(plan, env)
    wait_for(lambda: running_with_samples(run_dir), timeout=300, what="a partition with samples")
    p.kill()
    p.communicate()
    old = job_ids(run_dir)
    assert old & queued_ids()  # still running: they wait for their driver
    r = run_cli("evalcore", "resume", run_dir, env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    assert not (old & queued_ids())
    log = (run_dir / "logs" / "slurm-runner.log").read_text()
    assert "previous driver left" in log
    # the cancelled jobs finished their chunk and handed their partitions back (or finished them,
    # if in their last chunk) through their dead driver's spool, which the new driver answered;
    # on a slow host a claim's lease can run out first (nobody answered the job's heartbeats
    # since the kill), and then resume requeued it before cancelling the job
    marks = ",".join("?" * len(old))
    ends = _query(run_dir, f"SELECT DISTINCT outcome, error_class FROM attempts WHERE worker IN ({marks})",
                  [f"slurm-{j}" for j in old])
    assert ends and set(ends) <= {("retry", "Interrupted"), ("done", None), ("requeued", None)}, ends
    assert_same_as(run_dir, scripted_reference)
