"""The pure parts of the Slurm runner, without a cluster: the retry policy (slurm_retry), the
sbatch line and batch script (slurm_script), the job records (slurm_jobs) and the run lock
(slurm_lock). tests/test_slurm.py runs the whole runner on a real cluster."""

from __future__ import annotations

import json
import subprocess
import sys

from evalcore.plan.spec import RunSettings
from evalcore.runners.slurm_jobs import Job, JobsFile, tail
from evalcore.runners.slurm_lock import DriverLock
from evalcore.runners.slurm_retry import RetryPolicy
from evalcore.runners.slurm_script import PACKAGE_ROOT, batch_script, sbatch_args
from evalcore.runners.slurm_settings import slurm_settings
from tests.conftest import ROOT


def test_gives_up_after_max_retries_plus_one_ends_in_a_row_without_progress():
    policy = RetryPolicy(max_retries=1, poll_seconds=2.0)
    err = ("FAILED", "slurm job 1 FAILED, exit code 1:0, on n1\nlog: x", "tail")
    assert policy.abnormal(1, err, progress=0) is None
    assert policy.abnormal(1, err, progress=5) is None  # progress since: the count starts again
    got = policy.abnormal(1, err, progress=5)
    assert got == ("FAILED", "slurm job 1 FAILED, exit code 1:0, on n1; gave up after 2 failed job(s) in a row "
                             "without progress\nlog: x", "tail")
    assert policy.abnormal(2, err, progress=0) is None  # each GPU class on its own
    policy.give_up(1, got)
    assert not policy.may_submit(1) and policy.may_submit(2)
    assert policy.abnormal(1, err, progress=5) is None  # given up once, said once


def test_a_failed_sbatch_holds_its_class_back():
    policy = RetryPolicy(max_retries=5, poll_seconds=1000.0)
    policy.abnormal(4, ("SbatchFailed", "sbatch failed", ""), progress=0)
    policy.back_off(4)
    assert not policy.may_submit(4) and policy.may_submit(1)
    assert policy.budget(8, 3, 4) == 8 * 3 + 4 * (5 + 2)


def test_sbatch_line_and_script(tmp_path):
    s = slurm_settings({"partition": "gpu", "qos": "hi", "time": 90, "extra_args": ["--mem=8G"]})
    args = sbatch_args(s, job_name="evalcore-r1", log_dir=tmp_path, gpus=2, script=tmp_path / "w.sh")
    assert args == ["sbatch", "--parsable", "--job-name=evalcore-r1", f"--output={tmp_path}/slurm-%j.out",
                    "--no-requeue", "--export=ALL", "--gres=gpu:2", "--partition=gpu", "--qos=hi", "--time=90",
                    "--mem=8G", str(tmp_path / "w.sh")]
    assert "--gres" not in " ".join(sbatch_args(slurm_settings({}), job_name="j", log_dir=tmp_path, gpus=0,
                                                script=tmp_path / "w.sh"))
    text = batch_script(RunSettings(threads=3), run_id="r1", run_dir=tmp_path, spool_dir=tmp_path / "sp",
                        slurm_dir=tmp_path / "sl", spool_timeout=7.0, gpus=2)
    assert PACKAGE_ROOT == ROOT and str(ROOT) in text
    assert "export HF_HUB_OFFLINE=1" in text and "--online" not in text
    assert "--gpus 2 --no-lease --spool" in text and "--spool-timeout 7.0" in text and "--threads 3 &" in text
    r = subprocess.run(["bash", "-n"], input=text, text=True, capture_output=True)  # a valid script
    assert r.returncode == 0, r.stderr
    online = batch_script(RunSettings(offline=False), run_id="r1", run_dir=tmp_path, spool_dir=tmp_path,
                          slurm_dir=tmp_path, spool_timeout=7.0, gpus=0)
    assert "--online" in online and "HF_HUB_OFFLINE" not in online and "SLURM_CPUS_PER_TASK" in online


def test_jobs_file_keeps_every_session(tmp_path):
    f = JobsFile(tmp_path / "jobs.json", "r1", "evalcore-r1")
    assert f.load() == {"run_id": "r1", "job_name": "evalcore-r1", "sessions": []}
    job = Job("12", 1, "s1", 5.0)
    f.save_session("s1", tmp_path / "sp1", {"12": job}, lambda j: tmp_path / f"slurm-{j}.out")
    job.state, job.ended_at = "COMPLETED", 6.0
    f.save_session("s1", tmp_path / "sp1", {"12": job}, lambda j: tmp_path / f"slurm-{j}.out")
    f.save_session("s2", tmp_path / "sp2", {}, lambda j: tmp_path)
    doc = json.loads((tmp_path / "jobs.json").read_text())
    assert [s["session"] for s in doc["sessions"]] == ["s1", "s2"]
    assert doc["sessions"][0]["jobs"]["12"]["state"] == "COMPLETED"
    (tmp_path / "log").write_text("".join(f"line {i}\n" for i in range(30)))
    assert tail(tmp_path / "log", 2) == "line 28\nline 29" and tail(tmp_path / "missing", 2) == ""


def test_one_driver_per_run(tmp_path):
    lock = DriverLock(tmp_path / "driver.lock")
    assert lock.acquire() is None
    code = ("import sys; from pathlib import Path; from evalcore.runners.slurm_lock import DriverLock; "
            "print(DriverLock(Path(sys.argv[1])).acquire())")
    other = subprocess.run([sys.executable, "-c", code, str(tmp_path / "driver.lock")], cwd=ROOT,
                           capture_output=True, text=True, timeout=60)
    assert other.stdout.startswith("pid "), other.stderr  # who holds it
    lock.release()
    other = subprocess.run([sys.executable, "-c", code, str(tmp_path / "driver.lock")], cwd=ROOT,
                           capture_output=True, text=True, timeout=60)
    assert other.stdout.strip() == "None", other.stderr
