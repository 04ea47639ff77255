"""One driver per run: `eval` and `resume` hold an exclusive lock on `<run_dir>/driver.lock`
while they run. A second `resume` of the same run is refused (exit 5) before anything in the
run folder is rewritten; `status` asks the lock whether a driver is alive, without writing
(so an archived, read-only run folder can be read). The lock is the operating system's (flock):
it goes away with the process, however it dies."""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import time
from pathlib import Path

from evalcore.errors import EvalcoreError, RunBusy

LOCK_NAME = "driver.lock"


class DriverLock:
    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / LOCK_NAME
        self._f = None

    def acquire(self) -> DriverLock:
        try:
            f = open(self.path, "a+", encoding="utf-8")
        except OSError as exc:
            raise EvalcoreError(f"cannot lock run folder {self.path.parent}: {exc.strerror}",
                                hint="a run folder is written by eval and resume; check its permissions") from None
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise
            f.seek(0)
            holder = f.read().strip() or "another process"
            f.close()
            raise RunBusy(f"run {self.path.parent.name} is being run by another driver ({holder}); "
                          "nothing was changed") from None
        f.seek(0)
        f.truncate()
        f.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}))
        f.flush()
        self._f = f
        return self

    def release(self) -> None:
        if self._f is not None:
            fcntl.flock(self._f, fcntl.LOCK_UN)
            self._f.close()
            self._f = None

    def __enter__(self) -> DriverLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def driver_alive(run_dir: Path) -> bool | None:
    """Whether a driver holds the run now (True/False); None when the run has no lock file."""
    try:
        f = open(Path(run_dir) / LOCK_NAME, encoding="utf-8")
    except FileNotFoundError:
        return None
    except OSError:
        return None
    with f:
        try:
            fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            return True
        fcntl.flock(f, fcntl.LOCK_UN)
        return False


__all__ = ["DriverLock", "driver_alive"]
