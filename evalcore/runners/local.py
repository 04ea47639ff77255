"""Workers as local processes. The runner starts up to --max-num-workers long-lived workers,
restarts one when it dies while work is left (a partition it held is taken over once its lease
expires), and stops them all when the run ends or is interrupted."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from evalcore.engine.gpus import discover_gpus
from evalcore.engine.ledger import Ledger
from evalcore.engine.runctx import RunContext
from evalcore.isolation.netns import launcher
from evalcore.isolation.offline import offline_env


@dataclass
class _Proc:
    worker_id: str
    gpus: int
    popen: subprocess.Popen
    log: Path


def plan_workers(devices: int, slots_per_gpu: int, max_workers: int, remaining: dict[int, float]) -> list[int]:
    """How many GPUs each worker gets, given the work left per GPU-size class (cost by n_gpus).

    Without GPUs every worker runs on the CPU. With GPUs, the slots (devices x workers per GPU)
    are shared between size classes in proportion to the GPU-time each class still needs, at
    least one worker per class with work, never more workers than --max-num-workers. Pure."""
    if devices == 0:
        return [0] * max_workers
    work = {n: c for n, c in remaining.items() if c > 0 and 0 < n <= devices}
    if not work:
        return []
    capacity = devices * slots_per_gpu
    weight = {n: c * n for n, c in work.items()}
    total = sum(weight.values())
    count = {n: max(1, int(capacity * weight[n] / total) // n) for n in work}
    while sum(count.values()) > max_workers or sum(n * k for n, k in count.items()) > capacity:
        n = max((n for n in count if count[n] > 1), key=lambda n: count[n] * n, default=None)
        if n is None:
            break
        count[n] -= 1
    # spare slots (rounding): give them to the class with the most work per worker
    while sum(count.values()) < max_workers:
        fits = [n for n in count if sum(m * k for m, k in count.items()) + n <= capacity]
        if not fits:
            break
        n = max(fits, key=lambda n: weight[n] / (count[n] * n))
        count[n] += 1
    return [n for n in sorted(count) for _ in range(count[n])]


class LocalRunner:
    def __init__(self, ctx: RunContext, *, on_progress: Callable[[list[dict]], None] | None = None,
                 poll_s: float = 0.5) -> None:
        self.ctx = ctx
        self.on_progress = on_progress or (lambda rows: None)
        self.poll_s = poll_s
        self.procs: list[_Proc] = []
        self.spawned = 0

    def _spawn(self, gpus: int, threads: int | None) -> _Proc:
        self.spawned += 1
        wid = f"w{self.spawned}"
        log = self.ctx.log_dir / f"worker-{wid}.log"
        env = offline_env(os.environ) if self.ctx.plan.run.offline else dict(os.environ)
        cmd = [sys.executable, "-m", "evalcore.engine.worker", "--run-dir", str(self.ctx.run_dir), "--worker-id", wid,
               "--gpus", str(gpus), "--parent-pid", str(os.getpid())]
        if threads:
            cmd += ["--threads", str(threads)]
        if not self.ctx.plan.run.offline:
            cmd.append("--online")
        elif self.ctx.security.get("offline") == "netns":  # decided and recorded by the driver
            cmd = launcher(cmd)
        with open(log, "ab") as out:
            p = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        proc = _Proc(wid, gpus, p, log)
        self.procs.append(proc)
        return proc

    def run(self) -> None:
        ledger = Ledger(self.ctx.ledger_path, create=False)
        devices = discover_gpus(os.environ)
        settings = self.ctx.plan.run
        n_parts = len(ledger.partitions(self.ctx.run_id))
        budget = settings.max_num_workers * (settings.max_attempts + 2) + n_parts
        try:
            while True:
                rows = ledger.progress(self.ctx.run_id)
                self.on_progress(rows)
                open_parts = sum(r["partitions"]["pending"] + r["partitions"]["running"] for r in rows)
                if open_parts == 0:
                    break
                alive = [p for p in self.procs if p.popen.poll() is None]
                if self.spawned < budget:
                    self._refill(ledger, alive, devices)
                elif not alive:
                    break
                time.sleep(self.poll_s)
            self._stop_all(grace=30)
        except BaseException:
            self._stop_all(grace=10)
            raise
        finally:
            ledger.close()

    def _refill(self, ledger: Ledger, alive: list[_Proc], devices: list[str]) -> None:
        """Start workers for claimable work, shaped by the GPU sizes of what is left."""
        settings = self.ctx.plan.run
        now = time.time()
        remaining: dict[int, float] = {}
        claimable: set[int] = set()
        for p in ledger.partitions(self.ctx.run_id):
            if p["status"] in ("pending", "running"):
                n = p["n_gpus"] if devices else 0
                remaining[n] = remaining.get(n, 0.0) + p["cost"]
                if p["status"] == "pending" or (p["expires_at"] or 0) < now:
                    claimable.add(n)
        shape = plan_workers(len(devices), settings.max_workers_per_gpu, settings.max_num_workers, remaining)
        have: dict[int, int] = {}
        for p in alive:
            have[p.gpus] = have.get(p.gpus, 0) + 1
        threads = settings.threads or (None if devices else max(1, (os.cpu_count() or 1) // max(1, len(shape))))
        for n in sorted(set(shape)):
            want = shape.count(n) - have.get(n, 0)
            for _ in range(max(0, want) if n in claimable else 0):
                if len(alive) >= settings.max_num_workers:
                    return
                alive.append(self._spawn(n, threads))

    def _stop_all(self, grace: float) -> None:
        alive = [p for p in self.procs if p.popen.poll() is None]
        for p in alive:
            _signal(p.popen, signal.SIGTERM)
        deadline = time.time() + grace
        for p in alive:
            try:
                p.popen.wait(timeout=max(0.1, deadline - time.time()))
            except subprocess.TimeoutExpired:
                _signal(p.popen, signal.SIGKILL)
                p.popen.wait()


def _signal(p: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(p.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass
