"""The ledger calls a worker makes, as one protocol. Two classes implement it: `Ledger` (the
SQLite file itself, for workers on the driver's host) and `SpoolLedger` (the same calls over the
spool, for Slurm jobs: evalcore/engine/spool.py). The worker (evalcore/engine/worker.py) is
written against this protocol only; tests/test_spool.py checks that both classes have every
call with the same signature, so neither can drift from the other.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

from evalcore.engine.ledger import Claim


class WorkerLedger(Protocol):
    def claim(self, run_id: str, worker_id: str, *, now: float, lease_s: float, pid: int, host: str,
              prefer_model: str | None = None, only_models: set[str] | None = None,
              max_gpus: int | None = None, prefer_dataset: str | None = None) -> Claim | None:
        """The next partition for this worker, leased for `lease_s`; None when nothing is left."""

    def heartbeat(self, run_id: str, partition_id: str, token: str, *, now: float, lease_s: float) -> bool:
        """Renew the lease; False: the claim was lost."""

    def add_samples(self, run_id: str, partition_id: str, token: str, rows: Iterable[tuple[int, str]], *,
                    now: float) -> bool:
        """Record finished samples (index, output JSON); False: the claim was lost."""

    def done_indices(self, run_id: str, partition_id: str) -> set[int]:
        """The samples of a partition already recorded (a retry starts after them)."""

    def complete(self, run_id: str, partition_id: str, token: str, *, now: float) -> bool:
        """The partition is done; False: the claim was lost."""

    def fail(self, run_id: str, partition_id: str, token: str, *, now: float, error_class: str,
             message: str, traceback_tail: str, retry: bool) -> bool:
        """The partition failed (back to pending with `retry` while attempts are left)."""

    def release(self, run_id: str, partition_id: str, token: str, *, now: float) -> bool:
        """Hand the partition back because the worker is stopping (signal, driver's request):
        pending again, samples kept. Whether the attempt counts is the implementation's rule,
        said in its docstring. False: the claim was lost."""

    def record_load(self, run_id: str, worker_id: str, model_key: str, *, started_at: float,
                    seconds: float) -> None:
        """How long loading a model took (shown by reports)."""

    def record_paths(self, run_id: str, worker_id: str, model_key: str, paths_json: str, *, now: float) -> None:
        """The backend's fast paths and fallbacks for a model (shown by reports)."""

    def close(self) -> None:
        """Let go of the ledger (never raises)."""


CALLS = ("claim", "heartbeat", "add_samples", "done_indices", "complete", "fail", "release", "record_load",
         "record_paths", "close")

__all__ = ["WorkerLedger", "CALLS"]
