"""The Slurm runner's record of its jobs: one `Job` per submitted job, followed through its states,
and `<run_dir>/slurm/jobs.json`, where every driver session of a run lists the jobs it submitted
(so that a resumed driver cancels what a dead one left behind, and a user can see what happened)."""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Job:
    job_id: str
    gpus: int
    session: str
    submitted_at: float
    state: str = "PENDING"
    reason: str = ""
    node: str = ""
    ended_at: float | None = None
    exit_code: str = ""
    cancelled_by_us: bool = False
    extra: dict = field(default_factory=dict)

    @property
    def worker_id(self) -> str:
        return f"slurm-{self.job_id}"

    @property
    def ended(self) -> bool:
        return self.ended_at is not None


class JobsFile:
    """jobs.json: {"run_id", "job_name", "sessions": [{"session", "driver_pid", "driver_host",
    "spool", "jobs": {id: {...}}}]}, replaced whole on every write."""

    def __init__(self, path: Path, run_id: str, job_name: str) -> None:
        self.path, self.run_id, self.job_name = path, run_id, job_name

    def load(self) -> dict:
        try:
            return json.loads(self.path.read_text())
        except (FileNotFoundError, ValueError):
            return {"run_id": self.run_id, "job_name": self.job_name, "sessions": []}

    def write(self, doc: dict) -> None:
        tmp = self.path.with_name(".jobs.json.tmp")
        tmp.write_text(json.dumps(doc, indent=1, sort_keys=True))
        os.replace(tmp, self.path)

    def save_session(self, session: str, spool_dir: Path, jobs: dict[str, Job], log_of: Callable[[str], Path]) -> None:
        """This driver session's jobs as they are now (the other sessions' entries are kept)."""
        doc = self.load()
        sessions = [s for s in doc.get("sessions", []) if s.get("session") != session]
        sessions.append({"session": session, "driver_pid": os.getpid(), "driver_host": socket.gethostname(),
                         "spool": str(spool_dir),
                         "jobs": {j.job_id: {"gpus": j.gpus, "submitted_at": j.submitted_at, "state": j.state,
                                             "node": j.node, "exit_code": j.exit_code, "ended_at": j.ended_at,
                                             "cancelled_by_driver": j.cancelled_by_us,
                                             "log": str(log_of(j.job_id))}
                                  for j in jobs.values()}})
        doc.update(run_id=self.run_id, job_name=self.job_name, sessions=sessions)
        self.write(doc)


def tail(path: Path, n: int) -> str:
    """The last `n` lines of a job's output (read from its last 64 KiB); '' if unreadable."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 64 * 1024))
            data = f.read()
    except OSError:
        return ""
    return "\n".join(data.decode("utf-8", "replace").splitlines()[-n:])


__all__ = ["Job", "JobsFile", "tail"]
