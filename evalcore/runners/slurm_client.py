"""The Slurm client calls of the Slurm runner (evalcore/runners/slurm.py), each with a timeout,
and the job states they report: `squeue` while a job is in the queue; once it left, `sacct`
(when accounting exists), else `scontrol show job`, else `sacct -c` (the jobcomp file), else
the job's own exit file written by its batch script. A call that fails or times out says so
(None, or the state UNKNOWN); it never raises.
"""

from __future__ import annotations

import getpass
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

CLIENT_TIMEOUT_S = 30.0  # every Slurm client call; a dead controller blocks them for long
WAIT_STEP_S = 0.05       # how often a running client call is checked (and the spool served meanwhile)
ABNORMAL = ("FAILED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "CANCELLED", "PREEMPTED", "BOOT_FAIL",
            "DEADLINE", "REVOKED", "LOST", "UNKNOWN")
IN_QUEUE = ("PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "SUSPENDED", "REQUEUED", "RESIZING",
            "SIGNALING", "STAGE_OUT", "STOPPED", "REQUEUE_HOLD", "REQUEUE_FED", "RESV_DEL_HOLD")


class SlurmClient:
    """`log(line)` records what went wrong; `while_waiting()` runs while a client call is in
    flight (the runner serves its jobs' spool requests there)."""

    def __init__(self, log: Callable[[str], None], while_waiting: Callable[[], None] = lambda: None) -> None:
        self.log = log
        self.while_waiting = while_waiting

    def run(self, *args: str, timeout: float = CLIENT_TIMEOUT_S, env=None) -> subprocess.CompletedProcess | None:
        """Run a Slurm client with a timeout; None when it could not run or timed out.

        A client call can take seconds on a busy controller or host. The jobs of the driver
        must not go unanswered meanwhile (they stop after `spool_timeout` without an answer), so
        `while_waiting` runs until the client is done."""
        try:
            proc = subprocess.Popen(list(args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                    env=env, stdin=subprocess.DEVNULL)
        except OSError as exc:
            self.log(f"could not run {args[0]}: {exc}")
            return None
        deadline = time.monotonic() + timeout
        while True:
            try:
                out, err = proc.communicate(timeout=WAIT_STEP_S)
                return subprocess.CompletedProcess(list(args), proc.returncode, out, err)
            except subprocess.TimeoutExpired:
                pass
            if time.monotonic() >= deadline:
                proc.kill()
                proc.communicate()
                self.log(f"timed out after {timeout:.0f} s: {' '.join(args)}")
                return None
            self.while_waiting()

    def queue(self, ids: list[str], *, job_name: str | None = None) -> dict[str, tuple[str, str, str, str]] | None:
        """Jobs still in the queue: id -> (state, reason, node, name), of `ids`, or with `job_name`
        every job of this user with that name. None if squeue failed."""
        if not ids and job_name is None:
            return {}
        args = ["squeue", "-h", "-o", "%i|%T|%N|%j|%r"]
        args += ["-u", getpass.getuser(), "-n", job_name] if job_name is not None else ["-j", ",".join(ids)]
        r = self.run(*args)
        if r is None:
            return None
        if r.returncode != 0:
            if "Invalid job id" in r.stderr:  # every id has left the controller's memory
                return {}
            self.log(f"squeue failed ({r.returncode}): {r.stderr.strip()[:300]}")
            return None
        out = {}
        for line in r.stdout.splitlines():
            parts = line.strip().split("|", 4)
            if len(parts) == 5:
                out[parts[0]] = (parts[1], parts[4], parts[2], parts[3])
        return out

    def final_state(self, job_id: str, exit_file: Path) -> tuple[str, str, str]:
        """(state, exit code "exit:signal", node) of a job that left the queue."""
        r = self.run("sacct", "-X", "-n", "-P", "-j", job_id, "-o", "JobID,State,ExitCode,NodeList")
        if r is not None and r.returncode == 0:
            for line in r.stdout.splitlines():
                f = line.strip().split("|")
                if len(f) >= 3 and f[0] == job_id and f[1]:
                    return f[1].split()[0], f[2], node(f[3] if len(f) > 3 else "")
        r = self.run("scontrol", "show", "job", "-o", job_id)
        if r is not None and r.returncode == 0 and "JobState=" in r.stdout:
            kv = dict(x.split("=", 1) for x in r.stdout.split() if "=" in x)
            return kv.get("JobState", "UNKNOWN"), kv.get("ExitCode", ""), node(kv.get("NodeList", ""))
        r = self.run("sacct", "-c", "-X", "-n", "-P", "-j", job_id, "--format=JobID,State,ExitCode,NodeList")
        if r is not None and r.returncode == 0:
            for line in r.stdout.splitlines():
                f = line.strip().split("|")
                if len(f) >= 3 and f[0] == job_id and f[1]:
                    # its ExitCode is not reliable (0:0 for TIMEOUT, CANCELLED)
                    return f[1].split()[0], "", node(f[3] if len(f) > 3 else "")
        if exit_file.is_file():
            rc = exit_file.read_text().strip()
            return ("COMPLETED" if rc == "0" else "FAILED"), f"{rc}:0", ""
        return "UNKNOWN", "", ""

    def scancel(self, ids: list[str]) -> None:
        """Cancel exactly these jobs, by id."""
        if ids:
            r = self.run("scancel", *ids)
            self.log(f"scancel {' '.join(ids)}: rc {None if r is None else r.returncode} "
                     f"{'' if r is None else r.stderr.strip()[:200]}")


def node(nodelist: str) -> str:
    """A node name from a NodeList field ('' when the job never got one)."""
    nodelist = nodelist.strip()
    return "" if nodelist in ("", "(null)", "None assigned") else nodelist


__all__ = ["SlurmClient", "CLIENT_TIMEOUT_S", "ABNORMAL", "IN_QUEUE", "node"]
