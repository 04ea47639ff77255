"""Cancelling what an earlier driver of the same run left behind (on resume): the jobs listed in
jobs.json that never ended, and jobs named `evalcore-<run id>` of this user (submitted in the
instant before a crash, not yet recorded). Only those, always by id. Their workers get their last
calls answered from their old spool while they stop, so they hand their partitions back; what
they still hold afterwards goes back to pending, and jobs.json records what happened to each."""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from pathlib import Path

from evalcore.engine.spool import SpoolServer
from evalcore.runners.slurm_client import SlurmClient
from evalcore.runners.slurm_jobs import JobsFile

CANCEL_WAIT_S = 120.0  # how long to wait for cancelled jobs to leave the queue
END_GRACE_S = 10.0     # at the end of a run, running jobs get this long to end by themselves


def cancel_leftovers(ledger, *, run_id: str, job_name: str, jobs_file: JobsFile, client: SlurmClient,
                     log: Callable[[str], None], check_signals: Callable[[], None]) -> list[str]:
    """Cancel the jobs of earlier drivers still in the queue and wait until they left it; then
    hand back what their workers still hold and record their ends. Returns the ids still in the
    queue after CANCEL_WAIT_S (then nothing else was changed: the caller refuses to go on)."""
    doc = jobs_file.load()
    mine: dict[str, str] = {}  # job id -> spool folder of its session
    for s in doc.get("sessions", []):
        for jid, j in (s.get("jobs") or {}).items():
            if not j.get("ended_at"):
                mine[jid] = s.get("spool", "")
    queue = client.queue(list(mine)) or {}
    named = client.queue([], job_name=job_name) or {}  # submitted but not yet recorded when it died
    left = {jid: v for jid, v in {**queue, **named}.items() if v[3] == job_name}
    cancelled_now = set(left)
    if left:
        log(f"previous driver left {len(left)} job(s) in the queue: {', '.join(sorted(left))}; cancelling")
        client.scancel(sorted(left))
        servers = [SpoolServer(ledger, Path(p)) for p in {mine.get(j, "") for j in left} if p and Path(p).is_dir()]
        deadline = time.monotonic() + CANCEL_WAIT_S
        while left and time.monotonic() < deadline:
            check_signals()
            for srv in servers:  # let the cancelled workers hand their partitions back
                srv.poll_once()
            time.sleep(0.05)
            q = client.queue(sorted(left))
            if q is not None:
                left = {j: v for j, v in left.items() if j in q}
        if left:
            return sorted(left)
    # whatever jobs of earlier drivers still hold goes back to pending (those jobs are gone)
    n = 0
    for p in ledger.partitions(run_id):
        if p["status"] == "running" and (p["claimed_by"] or "").startswith("slurm-") and p["claim_token"]:
            n += ledger.release(run_id, p["partition_id"], p["claim_token"], now=time.time())
    if n:
        log(f"{n} partition(s) held by jobs of a previous driver handed back")
    for s in doc.get("sessions", []):  # what happened to each job of the dead driver, on record
        for jid, j in (s.get("jobs") or {}).items():
            if not j.get("ended_at"):
                j["ended_at"] = time.time()
                if jid in cancelled_now:
                    j["state"], j["cancelled_by_driver"] = "CANCELLED", True
                    j["what_happened"] = "still queued or running when its driver died; cancelled on resume"
                else:
                    j["state"], j["cancelled_by_driver"] = "GONE", False
                    j["what_happened"] = "left the queue while no driver watched it; see its log"
        if s.get("spool"):
            shutil.rmtree(s["spool"], ignore_errors=True)
    if doc.get("sessions"):
        jobs_file.write(doc)
    return []


__all__ = ["cancel_leftovers", "CANCEL_WAIT_S", "END_GRACE_S"]
