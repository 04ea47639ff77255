"""The Slurm runner's hold on its run and on the driver's signals: one driver at a time per run
(an exclusive lock on `<run_dir>/slurm/driver.lock`, naming its holder), and SIGTERM/SIGINT
counted while jobs are in flight, to be acted on at the next safe point (never inside sbatch)."""

from __future__ import annotations

import fcntl
import os
import signal
import socket
import threading
from pathlib import Path


class DriverLock:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._file = None

    def acquire(self) -> str | None:
        """None once this process holds the lock; else who holds it (nothing is changed then)."""
        f = open(self.path, "a+")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.seek(0)
            who = f.read().strip() or "another process"
            f.close()
            return who
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
        f.flush()
        self._file = f
        return None

    def release(self) -> None:
        if self._file is not None:
            try:
                fcntl.flock(self._file, fcntl.LOCK_UN)
            finally:
                self._file.close()
                self._file = None


class SignalCount:
    """While installed, SIGTERM and SIGINT only add one to `count` (main thread only)."""

    def __init__(self) -> None:
        self.count = 0
        self._old: dict | None = None

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return

        def on_signal(signum, frame):
            self.count += 1

        self._old = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
        for s in self._old:
            signal.signal(s, on_signal)

    def restore(self) -> None:
        for s, h in (self._old or {}).items():
            signal.signal(s, h)
        self._old = None


__all__ = ["DriverLock", "SignalCount"]
