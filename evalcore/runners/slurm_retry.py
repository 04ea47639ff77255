"""The Slurm runner's retry policy, per GPU class (the `num_gpus` its jobs ask for): abnormal job
ends are counted in a row while the class makes no progress; after `max_retries + 1` of them the
runner gives up on the class. A failed `sbatch` waits a growing pause before the next try of its
class, and the jobs of a whole run are bounded. Pure: the runner acts on what it says."""

from __future__ import annotations

import time

Error = tuple[str, str, str]  # (error class, message, traceback or log tail)


class RetryPolicy:
    def __init__(self, max_retries: int, poll_seconds: float) -> None:
        self.max_retries, self.poll_seconds = max_retries, poll_seconds
        self.failures: dict[int, int] = {}           # abnormal ends in a row, per GPU class
        self.progress_mark: dict[int, int] = {}      # progress seen at the last abnormal end
        self.last_error: dict[int, Error] = {}
        self.given_up: dict[int, Error] = {}
        self.hold_until: dict[int, float] = {}       # no submission of that class before (sbatch backoff)

    def abnormal(self, gpus: int, error: Error, progress: int) -> Error | None:
        """Count an abnormal end of a gpus-class job, given the class's progress now (samples and
        partitions done). Returns the error to give up with when this end makes max_retries+1
        in a row without progress (None: retry)."""
        cls, message, tail = error
        if self.progress_mark.get(gpus) != progress:
            self.failures[gpus] = 0
        self.progress_mark[gpus] = progress
        self.failures[gpus] = self.failures.get(gpus, 0) + 1
        self.last_error[gpus] = error
        if self.failures[gpus] > self.max_retries and gpus not in self.given_up:
            first, _, rest = message.partition("\n")
            return (cls, f"{first}; gave up after {self.failures[gpus]} failed job(s) in a row "
                         f"without progress\n{rest}", tail)
        return None

    def give_up(self, gpus: int, error: Error) -> None:
        self.given_up[gpus] = error

    def back_off(self, gpus: int) -> None:
        """After a failed sbatch: no new job of the class for poll_seconds x 2^failures (at most 2^6)."""
        self.hold_until[gpus] = time.monotonic() + self.poll_seconds * 2 ** min(6, self.failures[gpus])

    def may_submit(self, gpus: int) -> bool:
        return gpus not in self.given_up and self.hold_until.get(gpus, 0.0) <= time.monotonic()

    def budget(self, n_partitions: int, max_attempts: int, max_workers: int) -> int:
        """The most jobs a run submits: every partition's attempts, plus each slot's retries."""
        return n_partitions * max_attempts + max_workers * (self.max_retries + 2)


__all__ = ["RetryPolicy", "Error"]
