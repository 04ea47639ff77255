"""A ledger workload shared by the engine benchmark and the ledger tests: claim and complete
partitions as fast as one process can, with no inference in between."""

from __future__ import annotations

import os
import socket
import time

from evalcore.engine.ledger import Ledger


def claim_complete_loop(path: str | os.PathLike[str], run_id: str, n: int) -> list[str]:
    """Claim and complete up to n partitions of `run_id` in this process, as fast as possible;
    returns the partition ids this process completed."""
    ledger = Ledger(path, create=False)
    pid, host, worker = os.getpid(), socket.gethostname(), f"bench-{os.getpid()}"
    done: list[str] = []
    try:
        while len(done) < n:
            c = ledger.claim(run_id, worker, now=time.time(), lease_s=300.0, pid=pid, host=host)
            if c is None:
                break
            if ledger.complete(run_id, c.partition_id, c.token, now=time.time()):
                done.append(c.partition_id)
    finally:
        ledger.close()
    return done
