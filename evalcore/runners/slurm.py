"""Workers as Slurm jobs. The same partitions, ledger, leases and resume as the local runner; the
workers run as `sbatch` jobs and reach the ledger through the spool (evalcore/engine/spool.py), because
the SQLite ledger stays on the driver's local disk. See docs/slurm.md.

The runner keeps at most `max_num_workers` jobs queued or running; each asks for
`--gres=gpu:N` where N is the `num_gpus` of the models it may run, and claims only partitions of
those models. It serves the spool while jobs run, follows their states, fails the partitions a
job held when it ended abnormally (retried up to max_attempts), submits new jobs while work
remains, and at the end or on an interrupt cancels exactly the jobs it submitted and waits for
them to leave the queue. Submitted job ids are kept in `<run_dir>/slurm/jobs.json`, so a resumed
driver cancels what a dead driver left behind.

This module is the run loop; each of its other jobs has a module of its own: the `[run.slurm]`
table (`slurm_settings`), the batch script and sbatch line (`slurm_script`), the Slurm client
calls with their timeouts and the job-state queries (`slurm_client`), the job records and
jobs.json (`slurm_jobs`), the retry policy (`slurm_retry`), cancelling an earlier driver's jobs
(`slurm_cancel`), the run lock and signals (`slurm_lock`).
"""

from __future__ import annotations

import os
import secrets
import shlex
import shutil
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path

from evalcore.engine.ledger import Ledger
from evalcore.engine.runctx import RunContext
from evalcore.engine.spool import SpoolServer, channel_job

from ..errors import SlurmError
from .slurm_cancel import CANCEL_WAIT_S, END_GRACE_S, cancel_leftovers
from .slurm_client import ABNORMAL, SlurmClient
from .slurm_jobs import Job, JobsFile, tail
from .slurm_lock import DriverLock, SignalCount
from .slurm_retry import Error, RetryPolicy
from .slurm_script import batch_script, sbatch_args, sbatch_env, write_script
from .slurm_settings import SETTING_KEYS, SlurmSettings, slurm_settings  # noqa: F401  (re-exported)

SPOOL_POLL_S = 0.01          # how often the driver looks for job requests
LOG_TAIL_LINES = 20


class _Interrupted(KeyboardInterrupt):
    pass


class SlurmRunner:
    def __init__(self, ctx: RunContext, *, on_progress: Callable[[list[dict]], None] | None = None,
                 poll_s: float = 0.5) -> None:
        self.ctx = ctx
        self.on_progress = on_progress or (lambda rows: None)
        self.poll_s = poll_s
        self.settings = slurm_settings(ctx.plan.run.runner_settings.get("slurm", {}))
        self.run_dir = Path(ctx.run_dir).resolve()
        self.slurm_dir = self.run_dir / "slurm"
        self.log_dir = self.run_dir / "logs"
        self.job_name = f"evalcore-{ctx.run_id}"
        self.session = time.strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(3)
        self.spool_dir = self.slurm_dir / "spool" / self.session
        self.jobs: dict[str, Job] = {}
        self.class_of = {m.name: m.num_gpus for m in ctx.plan.models}
        self.models_of: dict[int, set[str]] = {}
        for name, n in self.class_of.items():
            self.models_of.setdefault(n, set()).add(name)
        self.retry = RetryPolicy(self.settings.max_retries, self.settings.poll_seconds)
        self.submitted = 0
        self.server: SpoolServer | None = None
        self.ledger: Ledger | None = None
        self.signals = SignalCount()
        self.lock = DriverLock(self.slurm_dir / "driver.lock")
        self.client = SlurmClient(self._log, while_waiting=self._serve_known)
        self.jobs_file = JobsFile(self.slurm_dir / "jobs.json", ctx.run_id, self.job_name)

    # -- logging and records -----------------------------------------------------------------
    def _log(self, msg: str) -> None:
        line = f"{time.strftime('%Y-%m-%d %H:%M:%S')} {msg}\n"
        try:
            with open(self.log_dir / "slurm-runner.log", "a", encoding="utf-8") as f:
                f.write(line)
        except OSError:
            pass

    def _save_jobs(self) -> None:
        self.jobs_file.save_session(self.session, self.spool_dir, self.jobs, self._job_log)

    def _job_log(self, job_id: str) -> Path:
        return self.log_dir / f"slurm-{job_id}.out"

    # -- Slurm commands (slurm_client) ----------------------------------------------------------
    def _serve_known(self) -> None:
        """While a Slurm client runs, answer the jobs already known. A job whose sbatch is still
        in flight is answered by the main loop once its id is recorded."""
        if self.server is not None:
            self.server.poll_once(serve=self._known_channel)

    def _known_channel(self, channel: str) -> bool:
        return channel_job(channel) in self.jobs

    # -- submitting a job (slurm_script) ------------------------------------------------------
    def _script(self, gpus: int) -> Path:
        path = self.slurm_dir / f"worker-{self.session}-g{gpus}.sh"
        if path.exists():
            return path
        return write_script(path, batch_script(self.ctx.plan.run, run_id=self.ctx.run_id, run_dir=self.run_dir,
                                               spool_dir=self.spool_dir, slurm_dir=self.slurm_dir,
                                               spool_timeout=self.settings.spool_timeout, gpus=gpus))

    def _submit(self, gpus: int) -> Job | None:
        args = sbatch_args(self.settings, job_name=self.job_name, log_dir=self.log_dir, gpus=gpus,
                           script=self._script(gpus))
        self.submitted += 1
        r = self.client.run(*args, env=sbatch_env(self.ctx.plan.run.offline))
        job_id = r.stdout.strip().split(";")[0] if r is not None and r.returncode == 0 else ""
        if not job_id.isdigit():
            err = "timed out" if r is None else (r.stderr.strip() or r.stdout.strip() or f"exit {r.returncode}")
            self._log(f"sbatch failed (gpu:{gpus}): {err}")
            self._abnormal(gpus, ("SbatchFailed", f"sbatch failed for a gpu:{gpus} job: {err[:2000]}", err[-2000:]))
            self.retry.back_off(gpus)
            return None
        job = Job(job_id, gpus, self.session, time.time())
        self.jobs[job_id] = job
        self._save_jobs()
        self._log(f"submitted job {job_id} (gpu:{gpus}): {' '.join(shlex.quote(a) for a in args)}")
        return job

    # -- the run -----------------------------------------------------------------------------
    def run(self) -> None:
        if shutil.which("sbatch") is None:
            raise SlurmError("runner = slurm, but sbatch is not on PATH",
                             hint="run the driver on a Slurm login node, or use --runner local")
        self.slurm_dir.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        who = self.lock.acquire()
        if who is not None:
            raise SlurmError(f"another evalcore driver is running this run ({who})",
                             hint="wait for it to finish, or stop it; then resume")
        try:
            self.ledger = ledger = Ledger(self.ctx.ledger_path, create=False)
            self.signals.install()
            finished = False
            try:
                self._log(f"driver pid {os.getpid()} on {socket.gethostname()}, session {self.session}")
                self._cancel_leftovers(ledger)
                self.spool_dir.mkdir(parents=True, exist_ok=True)
                self.server = SpoolServer(ledger, self.spool_dir, claim_filter=self._claim_filter)
                self._save_jobs()
                self._loop(ledger)
                finished = True
            finally:
                try:
                    self._shutdown(ledger, finished)
                finally:
                    self.signals.restore()
                    ledger.close()
        finally:
            self.lock.release()

    def _check_signals(self) -> None:
        if self.signals.count:
            raise _Interrupted()

    def _loop(self, ledger: Ledger) -> None:
        next_queue = next_tick = 0.0
        while True:
            self._check_signals()
            self.server.poll_once()
            mono = time.monotonic()
            if mono >= next_queue:
                self._refresh(ledger)
                next_queue = time.monotonic() + self.settings.poll_seconds
            if mono >= next_tick:
                self.on_progress(ledger.progress(self.ctx.run_id))
                parts = ledger.partitions(self.ctx.run_id)
                if not any(p["status"] in ("pending", "running") for p in parts):
                    return
                self._drain_given_up(ledger, parts)
                self._check_signals()
                self._fill(parts)
                next_tick = time.monotonic() + self.poll_s
            time.sleep(SPOOL_POLL_S)

    # -- job states --------------------------------------------------------------------------
    def _active(self) -> list[Job]:
        return [j for j in self.jobs.values() if not j.ended]

    def _refresh(self, ledger: Ledger) -> None:
        active = self._active()
        if not active:
            return
        queue = self.client.queue([j.job_id for j in active])
        if queue is None:
            return  # squeue failed: keep the last known states
        changed = False
        for job in active:
            got = queue.get(job.job_id)
            if got is not None:
                state, reason, node, _name = got
                if (state, reason, node) != (job.state, job.reason, job.node):
                    job.state, job.reason, job.node = state, reason, node or job.node
                    changed = True
                continue
            self.server.poll_once()  # a last request of the job (its hand-back) goes first
            self._ended(ledger, job)
            changed = True
        if changed:
            self._save_jobs()

    def _ended(self, ledger: Ledger, job: Job) -> None:
        state, exit_code, node = self.client.final_state(job.job_id, self.slurm_dir / f"exit-{job.job_id}")
        job.state, job.exit_code, job.ended_at = state, exit_code, time.time()
        job.node = job.node or node
        last = tail(self._job_log(job.job_id), LOG_TAIL_LINES)
        self._log(f"job {job.job_id} (gpu:{job.gpus}) ended {state} exit {exit_code or '?'} on {job.node or '?'}")
        normal = state == "COMPLETED" and exit_code in ("", "0:0")
        if job.cancelled_by_us or normal:
            self._release_held(ledger, job, "the driver cancelled the job" if job.cancelled_by_us else "")
            return
        head = f"slurm job {job.job_id} {state}, exit code {exit_code or '?'}, on {job.node or 'an unknown node'}"
        message = (head + f"\nlog: {self._job_log(job.job_id)}"
                   + ("\n--- last lines of the job's output ---\n" + last if last else ""))
        cls = state if state in ABNORMAL else f"SlurmJob{state.title()}"
        held = self._held(ledger, job.worker_id)
        for p in held:
            ok = ledger.fail(self.ctx.run_id, p["partition_id"], p["claim_token"], now=time.time(), error_class=cls,
                             message=message, traceback_tail=last, retry=True)
            self._log(f"  partition {p['partition_id']} held by job {job.job_id}: failed ({cls}), retry "
                      f"{'recorded' if ok else 'not needed (claim already gone)'}")
        self._abnormal(job.gpus, (cls, message, last))

    def _abnormal(self, gpus: int, error: Error) -> None:
        """Count an abnormal end (slurm_retry); give up on the class when the policy says so."""
        give_up = self.retry.abnormal(gpus, error, self._progress_of(gpus))
        if give_up is not None:
            self._give_up(gpus, give_up)

    def _give_up(self, gpus: int, error: Error) -> None:
        self.retry.give_up(gpus, error)
        self._log(f"giving up on gpu:{gpus} partitions: {error[1].splitlines()[0]}")
        doomed = [j for j in self._active() if j.gpus == gpus]
        for j in doomed:
            j.cancelled_by_us = True
        self.client.scancel([j.job_id for j in doomed])

    def _progress_of(self, gpus: int) -> int:
        """Samples recorded plus partitions done, for the models of a GPU class."""
        if self.ledger is None:
            return 0
        models = self.models_of.get(gpus, set())
        return sum((p["n_done"] or 0) + (1_000_000 if p["status"] == "done" else 0)
                   for p in self.ledger.partitions(self.ctx.run_id) if p["model_key"] in models)

    def _held(self, ledger: Ledger, worker_id: str) -> list[dict]:
        return [p for p in ledger.partitions(self.ctx.run_id)
                if p["status"] == "running" and p["claimed_by"] == worker_id and p["claim_token"]]

    def _release_held(self, ledger: Ledger, job: Job, why: str) -> None:
        for p in self._held(ledger, job.worker_id):
            ledger.release(self.ctx.run_id, p["partition_id"], p["claim_token"], now=time.time())
            self._log(f"  partition {p['partition_id']} held by job {job.job_id} handed back ({why or 'job ended'})")

    # -- which jobs to submit ------------------------------------------------------------------
    def _claim_filter(self, channel: str) -> set[str]:
        job = self.jobs.get(channel_job(channel))
        if job is None or job.gpus in self.retry.given_up:
            return set()  # not a job of this driver: it gets nothing
        return set(self.models_of.get(job.gpus, set()))

    def _budget(self, parts: list[dict]) -> int:
        run = self.ctx.plan.run
        return self.retry.budget(len(parts), run.max_attempts, run.max_num_workers)

    def _fill(self, parts: list[dict]) -> None:
        """Submit jobs for claimable partitions that no idle job of their class will take."""
        now = time.time()
        active = self._active()
        slots = self.ctx.plan.run.max_num_workers - len(active)
        if slots <= 0:
            return
        holders = {p["claimed_by"] for p in parts if p["status"] == "running" and (p["expires_at"] or 0) >= now}
        want: dict[int, int] = {}
        for gpus, models in self.models_of.items():
            if not self.retry.may_submit(gpus):
                continue
            claimable = sum(1 for p in parts if p["model_key"] in models and (
                p["status"] == "pending" or (p["status"] == "running" and (p["expires_at"] or 0) < now)))
            idle = sum(1 for j in active if j.gpus == gpus and j.worker_id not in holders)
            if claimable - idle > 0:
                want[gpus] = claimable - idle
        if want and self.submitted >= self._budget(parts):
            for gpus in list(want):
                if not any(j.gpus == gpus for j in active):
                    cls, msg, last = self.retry.last_error.get(gpus, ("SlurmRunner", "", ""))
                    self._give_up(gpus, (cls, f"gave up after {self.submitted} Slurm jobs: work is still left; "
                                              f"last error: {msg or 'none'}", last))
            return
        while slots > 0 and want:
            gpus = max(want, key=lambda g: (want[g], -g))  # the class that needs most, in turn
            if gpus in self.retry.given_up or self._submit(gpus) is None:
                want.pop(gpus)
                continue
            slots -= 1
            want[gpus] -= 1
            if want[gpus] <= 0:
                want.pop(gpus)

    def _drain_given_up(self, ledger: Ledger, parts: list[dict]) -> None:
        """Fail what is left of a class given up on, once none of its jobs is still queued."""
        for gpus, (cls, message, error_tail) in self.retry.given_up.items():
            if any(j.gpus == gpus for j in self._active()):
                continue
            models = self.models_of.get(gpus, set())
            if not any(p["model_key"] in models and p["status"] in ("pending", "running") for p in parts):
                continue
            last = max((j for j in self.jobs.values() if j.gpus == gpus), key=lambda j: j.submitted_at, default=None)
            worker = last.worker_id if last else "slurm-runner"
            now = time.time()
            for p in parts:  # held by a job that is gone: fail that claim
                if p["model_key"] in models and p["status"] == "running" and p["claim_token"] and \
                        p["claimed_by"] not in {j.worker_id for j in self._active()}:
                    ledger.fail(self.ctx.run_id, p["partition_id"], p["claim_token"], now=now, error_class=cls,
                                message=message, traceback_tail=error_tail, retry=False)
            while True:  # pending ones: claimed in the name of the last job, and failed with its error
                claim = ledger.claim(self.ctx.run_id, worker, now=now, lease_s=60.0, pid=0,
                                     host=socket.gethostname(), only_models=models)
                if claim is None:
                    break
                ledger.fail(self.ctx.run_id, claim.partition_id, claim.token, now=now, error_class=cls,
                            message=message, traceback_tail=error_tail, retry=False)
                self._log(f"  partition {claim.partition_id}: failed ({cls}), no job could run it")

    # -- leftovers of a previous driver (resume) ---------------------------------------------
    def _cancel_leftovers(self, ledger: Ledger) -> None:
        left = cancel_leftovers(ledger, run_id=self.ctx.run_id, job_name=self.job_name, jobs_file=self.jobs_file,
                                client=self.client, log=self._log, check_signals=self._check_signals)
        if left:
            raise SlurmError(f"jobs of a previous driver of this run are still in the queue after scancel: "
                             f"{', '.join(left)}", hint=f"scancel {' '.join(left)}, then resume")

    # -- the end -----------------------------------------------------------------------------
    def _shutdown(self, ledger: Ledger, finished: bool) -> None:
        """Cancel exactly the jobs this driver submitted that are still queued or running, serve
        their last requests (a hand-back) while they stop, and wait until they left the queue.
        When the run finished, running jobs first get END_GRACE_S to end by themselves (their
        workers find nothing left to claim), so that they end COMPLETED rather than CANCELLED."""
        signals_before = self.signals.count
        if finished and self._active():
            self._cancel([j for j in self._active() if j.state == "PENDING"])
            self._wait_gone(ledger, END_GRACE_S, signals_before)
        if self._active():
            self._cancel(self._active())
            self._wait_gone(ledger, CANCEL_WAIT_S, signals_before)
        left = self._active()
        if left:
            ids = " ".join(j.job_id for j in left)
            self._log(f"jobs still in the queue after scancel: {ids}")
            print(f"warning: Slurm job(s) {ids} of this run were cancelled but are still in the queue; "
                  f"check with: squeue -j {ids.replace(' ', ',')}", file=sys.stderr)
        self._save_jobs()
        if not left:
            shutil.rmtree(self.spool_dir, ignore_errors=True)
        if self.server is not None:
            self._log(f"spool: {self.server.handled} call(s) answered, mean delay "
                      f"{1000 * self.server.delay_s / max(1, self.server.handled):.1f} ms; "
                      f"{len(self.jobs)} job(s) submitted")

    def _cancel(self, jobs: list[Job]) -> None:
        for j in jobs:
            j.cancelled_by_us = True
        self.client.scancel([j.job_id for j in jobs])

    def _wait_gone(self, ledger: Ledger, seconds: float, signals_before: int) -> None:
        """Serve the spool and follow the queue until no job of ours is left, or `seconds` passed,
        or the driver was interrupted (again)."""
        deadline = time.monotonic() + seconds
        next_queue = 0.0
        while self._active() and time.monotonic() < deadline and self.signals.count <= signals_before:
            if self.server is not None:
                self.server.poll_once()
            if time.monotonic() >= next_queue:
                self._refresh(ledger)
                next_queue = time.monotonic() + min(0.25, self.settings.poll_seconds)
            time.sleep(SPOOL_POLL_S)


__all__ = ["SlurmRunner", "SlurmSettings", "slurm_settings", "SlurmError"]
