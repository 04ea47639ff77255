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

from ..gpus import discover_gpus
from ..ledger import Ledger
from ..offline import offline_env
from ..runctx import RunContext


@dataclass
class _Proc:
    worker_id: str
    gpus: int
    popen: subprocess.Popen
    log: Path


def plan_workers(ctx: RunContext, devices: list[str]) -> list[int]:
    """GPUs per worker: on a host with GPUs, one entry per worker (the models' num_gpus in turn);
    on a host without, every worker runs on the CPU (0)."""
    n = ctx.plan.run.max_num_workers
    if not devices:
        return [0] * n
    sizes = sorted({m.num_gpus for m in ctx.plan.models if m.num_gpus > 0}) or [0]
    return [sizes[i % len(sizes)] for i in range(n)]


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
        cmd = [sys.executable, "-m", "evalcore.worker", "--run-dir", str(self.ctx.run_dir), "--worker-id", wid,
               "--gpus", str(gpus), "--parent-pid", str(os.getpid())]
        if threads:
            cmd += ["--threads", str(threads)]
        if not self.ctx.plan.run.offline:
            cmd.append("--online")
        with open(log, "ab") as out:
            p = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        proc = _Proc(wid, gpus, p, log)
        self.procs.append(proc)
        return proc

    def run(self) -> None:
        ledger = Ledger(self.ctx.ledger_path, create=False)
        devices = discover_gpus(os.environ)
        shape = plan_workers(self.ctx, devices)
        threads = self.ctx.plan.run.threads or max(1, (os.cpu_count() or 1) // len(shape)) if not devices else None
        budget = len(shape) * (self.ctx.plan.run.max_attempts + 2) + len(ledger.partitions(self.ctx.run_id))
        try:
            for g in shape:
                self._spawn(g, threads)
            while True:
                time.sleep(self.poll_s)
                rows = ledger.progress(self.ctx.run_id)
                self.on_progress(rows)
                open_parts = sum(r["partitions"]["pending"] + r["partitions"]["running"] for r in rows)
                alive = [p for p in self.procs if p.popen.poll() is None]
                if open_parts == 0:
                    break
                if len(alive) < len(shape) and self.spawned < budget and self._claimable_now(ledger):
                    # a worker died (its partition's lease has expired), or more work is claimable: refill
                    missing = len(shape) - len(alive)
                    for g in shape[:missing]:
                        self._spawn(g, threads)
                elif not alive and self.spawned >= budget:
                    break
            self._stop_all(grace=30)
        except BaseException:
            self._stop_all(grace=10)
            raise
        finally:
            ledger.close()

    def _claimable_now(self, ledger: Ledger) -> bool:
        """Pending work, or running work whose lease expired (its worker died)."""
        now = time.time()
        return any(p["status"] == "pending" or (p["status"] == "running" and (p["expires_at"] or 0) < now)
                   for p in ledger.partitions(self.ctx.run_id))

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

    def failed_workers(self) -> list[tuple[str, int, Path]]:
        return [(p.worker_id, p.popen.returncode, p.log) for p in self.procs
                if p.popen.returncode not in (0, None)]


def _signal(p: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(p.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass
