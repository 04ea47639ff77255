"""Workers as Slurm jobs. The same partitions, ledger, leases and resume as the local runner; the
workers run as `sbatch` jobs and reach the ledger through the spool (evalcore/engine/spool.py), because
the SQLite ledger stays on the driver's local disk. See docs/slurm.md.

The runner keeps at most `max_num_workers` jobs queued or running; each asks for
`--gres=gpu:N` where N is the `num_gpus` of the models it may run, and claims only partitions of
those models. It serves the spool while jobs run, follows their states (`squeue`, then `sacct`,
`scontrol show job`, `sacct -c`, then the job's own exit file), fails the partitions a job held
when it ended abnormally (retried up to max_attempts), submits new jobs while work remains, and
at the end or on an interrupt cancels exactly the jobs it submitted and waits for them to leave
the queue. Every Slurm command runs with a timeout. Submitted job ids are kept in
`<run_dir>/slurm/jobs.json`, so a resumed driver cancels what a dead driver left behind.
"""

from __future__ import annotations

import fcntl
import getpass
import json
import os
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from evalcore.engine.ledger import Ledger
from evalcore.engine.runctx import RunContext
from evalcore.engine.spool import SpoolServer, channel_job
from evalcore.isolation.offline import OFFLINE_ENV

from ..errors import SlurmError
from .slurm_settings import SETTING_KEYS, SlurmSettings, slurm_settings  # noqa: F401  (re-exported)

PACKAGE_ROOT = Path(__file__).resolve().parents[2]  # the folder that holds the evalcore package
CLIENT_TIMEOUT_S = 30.0      # every Slurm client call; a dead controller blocks them for long
SPOOL_POLL_S = 0.01          # how often the driver looks for job requests
CANCEL_WAIT_S = 120.0        # how long to wait for cancelled jobs to leave the queue
END_GRACE_S = 10.0           # at the end of a run, running jobs get this long to end by themselves
LOG_TAIL_LINES = 20
ABNORMAL = ("FAILED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "CANCELLED", "PREEMPTED", "BOOT_FAIL",
            "DEADLINE", "REVOKED", "LOST", "UNKNOWN")
IN_QUEUE = ("PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "SUSPENDED", "REQUEUED", "RESIZING",
            "SIGNALING", "STAGE_OUT", "STOPPED", "REQUEUE_HOLD", "REQUEUE_FED", "RESV_DEL_HOLD")


@dataclass
class _Job:
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


class _Interrupted(KeyboardInterrupt):
    pass


class SlurmRunner:
    def __init__(self, ctx: RunContext, *, on_progress: Callable[[list[dict]], None] | None = None,
                 poll_s: float = 0.5) -> None:
        self.ctx = ctx
        self.on_progress = on_progress or (lambda rows: None)
        self.poll_s = poll_s
        self.settings = slurm_settings(ctx.plan.run.slurm)
        self.run_dir = Path(ctx.run_dir).resolve()
        self.slurm_dir = self.run_dir / "slurm"
        self.log_dir = self.run_dir / "logs"
        self.job_name = f"evalcore-{ctx.run_id}"
        self.session = time.strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(3)
        self.spool_dir = self.slurm_dir / "spool" / self.session
        self.jobs: dict[str, _Job] = {}
        self.class_of = {m.name: m.num_gpus for m in ctx.plan.models}
        self.models_of: dict[int, set[str]] = {}
        for name, n in self.class_of.items():
            self.models_of.setdefault(n, set()).add(name)
        self.failures: dict[int, int] = {}           # abnormal ends in a row, per GPU class
        self.progress_mark: dict[int, int] = {}      # progress seen at the last abnormal end
        self.last_error: dict[int, tuple[str, str, str]] = {}
        self.given_up: dict[int, tuple[str, str, str]] = {}
        self.hold_until: dict[int, float] = {}        # no submission of that class before (sbatch backoff)
        self.submitted = 0
        self.server: SpoolServer | None = None
        self.ledger: Ledger | None = None
        self._signals = 0
        self._lock_file = None

    # -- logging and records -----------------------------------------------------------------
    def _log(self, msg: str) -> None:
        line = f"{time.strftime('%Y-%m-%d %H:%M:%S')} {msg}\n"
        try:
            with open(self.log_dir / "slurm-runner.log", "a", encoding="utf-8") as f:
                f.write(line)
        except OSError:
            pass

    def _jobs_path(self) -> Path:
        return self.slurm_dir / "jobs.json"

    def _load_jobs_file(self) -> dict:
        try:
            return json.loads(self._jobs_path().read_text())
        except (FileNotFoundError, ValueError):
            return {"run_id": self.ctx.run_id, "job_name": self.job_name, "sessions": []}

    def _save_jobs(self) -> None:
        doc = self._load_jobs_file()
        sessions = [s for s in doc.get("sessions", []) if s.get("session") != self.session]
        sessions.append({"session": self.session, "driver_pid": os.getpid(), "driver_host": socket.gethostname(),
                         "spool": str(self.spool_dir),
                         "jobs": {j.job_id: {"gpus": j.gpus, "submitted_at": j.submitted_at, "state": j.state,
                                             "node": j.node, "exit_code": j.exit_code, "ended_at": j.ended_at,
                                             "cancelled_by_driver": j.cancelled_by_us,
                                             "log": str(self._job_log(j.job_id))}
                                  for j in self.jobs.values()}})
        doc.update(run_id=self.ctx.run_id, job_name=self.job_name, sessions=sessions)
        tmp = self._jobs_path().with_name(".jobs.json.tmp")
        tmp.write_text(json.dumps(doc, indent=1, sort_keys=True))
        os.replace(tmp, self._jobs_path())

    def _job_log(self, job_id: str) -> Path:
        return self.log_dir / f"slurm-{job_id}.out"

    # -- Slurm commands ----------------------------------------------------------------------
    def _cmd(self, *args: str, timeout: float = CLIENT_TIMEOUT_S, env=None) -> subprocess.CompletedProcess | None:
        """Run a Slurm client with a timeout; None when it could not run or timed out.

        A client call can take seconds on a busy controller or host. The jobs of this driver
        must not go unanswered meanwhile (they stop after `spool_timeout` without an answer), so
        their requests are served while the client runs. Only channels of jobs already known
        are served here: a job whose sbatch is still in flight is answered by the main loop
        once its id is recorded."""
        try:
            proc = subprocess.Popen(list(args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                    env=env, stdin=subprocess.DEVNULL)
        except OSError as exc:
            self._log(f"could not run {args[0]}: {exc}")
            return None
        deadline = time.monotonic() + timeout
        while True:
            try:
                out, err = proc.communicate(timeout=SPOOL_POLL_S * 5)
                return subprocess.CompletedProcess(list(args), proc.returncode, out, err)
            except subprocess.TimeoutExpired:
                pass
            if time.monotonic() >= deadline:
                proc.kill()
                proc.communicate()
                self._log(f"timed out after {timeout:.0f} s: {' '.join(args)}")
                return None
            if self.server is not None:
                self.server.poll_once(serve=self._known_channel)

    def _known_channel(self, channel: str) -> bool:
        return channel_job(channel) in self.jobs

    def _queue(self, ids: list[str], *, by_name: bool = False) -> dict[str, tuple[str, str, str, str]] | None:
        """Jobs still in the queue: id -> (state, reason, node, name). None if squeue failed."""
        if not ids and not by_name:
            return {}
        args = ["squeue", "-h", "-o", "%i|%T|%N|%j|%r"]
        args += ["-u", getpass.getuser(), "-n", self.job_name] if by_name else ["-j", ",".join(ids)]
        r = self._cmd(*args)
        if r is None:
            return None
        if r.returncode != 0:
            if "Invalid job id" in r.stderr:  # every id has left the controller's memory
                return {}
            self._log(f"squeue failed ({r.returncode}): {r.stderr.strip()[:300]}")
            return None
        out = {}
        for line in r.stdout.splitlines():
            parts = line.strip().split("|", 4)
            if len(parts) == 5:
                out[parts[0]] = (parts[1], parts[4], parts[2], parts[3])
        return out

    def _final_state(self, job_id: str) -> tuple[str, str, str]:
        """(state, exit code "exit:signal", node) of a job that left the queue."""
        r = self._cmd("sacct", "-X", "-n", "-P", "-j", job_id, "-o", "JobID,State,ExitCode,NodeList")
        if r is not None and r.returncode == 0:
            for line in r.stdout.splitlines():
                f = line.strip().split("|")
                if len(f) >= 3 and f[0] == job_id and f[1]:
                    return f[1].split()[0], f[2], _node(f[3] if len(f) > 3 else "")
        r = self._cmd("scontrol", "show", "job", "-o", job_id)
        if r is not None and r.returncode == 0 and "JobState=" in r.stdout:
            kv = dict(x.split("=", 1) for x in r.stdout.split() if "=" in x)
            return kv.get("JobState", "UNKNOWN"), kv.get("ExitCode", ""), _node(kv.get("NodeList", ""))
        r = self._cmd("sacct", "-c", "-X", "-n", "-P", "-j", job_id, "--format=JobID,State,ExitCode,NodeList")
        if r is not None and r.returncode == 0:
            for line in r.stdout.splitlines():
                f = line.strip().split("|")
                if len(f) >= 3 and f[0] == job_id and f[1]:
                    # its ExitCode is not reliable (0:0 for TIMEOUT, CANCELLED)
                    return f[1].split()[0], "", _node(f[3] if len(f) > 3 else "")
        exit_file = self.slurm_dir / f"exit-{job_id}"
        if exit_file.is_file():
            rc = exit_file.read_text().strip()
            return ("COMPLETED" if rc == "0" else "FAILED"), f"{rc}:0", ""
        return "UNKNOWN", "", ""

    def _scancel(self, ids: list[str]) -> None:
        if ids:
            r = self._cmd("scancel", *ids)
            self._log(f"scancel {' '.join(ids)}: rc {None if r is None else r.returncode} "
                      f"{'' if r is None else r.stderr.strip()[:200]}")

    # -- the batch script --------------------------------------------------------------------
    def _script(self, gpus: int) -> Path:
        path = self.slurm_dir / f"worker-{self.session}-g{gpus}.sh"
        if path.exists():
            return path
        run = self.ctx.plan.run
        q = shlex.quote
        worker = [sys.executable, "-m", "evalcore.engine.worker", "--run-dir", str(self.run_dir),
                  "--gpus", str(gpus), "--no-lease", "--spool", str(self.spool_dir),
                  "--spool-timeout", str(self.settings.spool_timeout)]
        if not run.offline:
            worker.append("--online")
        lines = ["#!/bin/bash",
                 f"# evalcore worker job for run {self.ctx.run_id} (generated by the Slurm runner; do not edit)",
                 "set -u"]
        if run.offline:
            lines += [f"export {k}={q(v)}" for k, v in sorted(OFFLINE_ENV.items())]
        # the job runs the driver's own evalcore, wherever the job starts
        lines.append(f'export PYTHONPATH={q(str(PACKAGE_ROOT))}"${{PYTHONPATH:+:$PYTHONPATH}}"')
        threads = (f'--threads {run.threads}' if run.threads else
                   '${SLURM_CPUS_PER_TASK:+--threads "$SLURM_CPUS_PER_TASK"}')
        lines += [
            'echo "[evalcore] slurm job ${SLURM_JOB_ID} on $(hostname) starting at $(date +%FT%T)'
            ' CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES:-<unset>}"',
            # On scancel, a time limit or preemption Slurm sends SIGTERM to every process of the
            # job, the worker included. This shell must outlive the worker while it hands its
            # partition back (when the batch shell ends, Slurm kills what is left of the job), so
            # the worker runs in the background and the shell keeps waiting for it. The signal is
            # not passed on: the worker already has it, and a second one could land inside its
            # handler.
            " ".join(q(x) for x in worker) + ' --worker-id "slurm-${SLURM_JOB_ID}" --job-key "${SLURM_JOB_ID}" '
            + threads + " &",
            "child=$!",
            "trap 'echo \"[evalcore] the batch shell got a signal; waiting for the worker\"' TERM INT",
            'wait "$child"; rc=$?',
            'while kill -0 "$child" 2>/dev/null; do wait "$child"; rc=$?; done',
            f'echo "$rc" > {q(str(self.slurm_dir))}/exit-"${{SLURM_JOB_ID}}"',
            'echo "[evalcore] worker exited with $rc at $(date +%FT%T)"',
            'exit "$rc"', ""]
        tmp = path.with_name("." + path.name + ".tmp")
        tmp.write_text("\n".join(lines))
        tmp.chmod(0o755)
        os.replace(tmp, path)
        return path

    def _submit(self, gpus: int) -> _Job | None:
        s = self.settings
        args = ["sbatch", "--parsable", f"--job-name={self.job_name}",
                f"--output={self.log_dir}/slurm-%j.out", "--no-requeue", "--export=ALL"]
        if gpus > 0:
            args.append(f"--gres=gpu:{gpus}")
        if s.partition:
            args.append(f"--partition={s.partition}")
        if s.qos:
            args.append(f"--qos={s.qos}")
        if s.time:
            args.append(f"--time={s.time}")
        args += list(s.extra_args)
        args.append(str(self._script(gpus)))
        env = {**os.environ, **OFFLINE_ENV} if self.ctx.plan.run.offline else dict(os.environ)
        self.submitted += 1
        r = self._cmd(*args, env=env)
        job_id = r.stdout.strip().split(";")[0] if r is not None and r.returncode == 0 else ""
        if not job_id.isdigit():
            err = "timed out" if r is None else (r.stderr.strip() or r.stdout.strip() or f"exit {r.returncode}")
            self._log(f"sbatch failed (gpu:{gpus}): {err}")
            self._abnormal(gpus, "SbatchFailed", f"sbatch failed for a gpu:{gpus} job: {err[:2000]}", err[-2000:])
            self.hold_until[gpus] = time.monotonic() + self.settings.poll_seconds * 2 ** min(6, self.failures[gpus])
            return None
        job = _Job(job_id, gpus, self.session, time.time())
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
        self._lock()
        try:
            self.ledger = ledger = Ledger(self.ctx.ledger_path, create=False)
            old = self._install_signals()
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
                    self._restore_signals(old)
                    ledger.close()
        finally:
            self._unlock()

    def _check_signals(self) -> None:
        if self._signals:
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
    def _active(self) -> list[_Job]:
        return [j for j in self.jobs.values() if not j.ended]

    def _refresh(self, ledger: Ledger) -> None:
        active = self._active()
        if not active:
            return
        queue = self._queue([j.job_id for j in active])
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

    def _ended(self, ledger: Ledger, job: _Job) -> None:
        state, exit_code, node = self._final_state(job.job_id)
        job.state, job.exit_code, job.ended_at = state, exit_code, time.time()
        job.node = job.node or node
        tail = _tail(self._job_log(job.job_id), LOG_TAIL_LINES)
        self._log(f"job {job.job_id} (gpu:{job.gpus}) ended {state} exit {exit_code or '?'} on {job.node or '?'}")
        normal = state == "COMPLETED" and exit_code in ("", "0:0")
        if job.cancelled_by_us or normal:
            self._release_held(ledger, job, "the driver cancelled the job" if job.cancelled_by_us else "")
            return
        head = f"slurm job {job.job_id} {state}, exit code {exit_code or '?'}, on {job.node or 'an unknown node'}"
        message = (head + f"\nlog: {self._job_log(job.job_id)}"
                   + ("\n--- last lines of the job's output ---\n" + tail if tail else ""))
        cls = state if state in ABNORMAL else f"SlurmJob{state.title()}"
        held = self._held(ledger, job.worker_id)
        for p in held:
            ok = ledger.fail(self.ctx.run_id, p["partition_id"], p["claim_token"], now=time.time(), error_class=cls,
                             message=message, traceback_tail=tail, retry=True)
            self._log(f"  partition {p['partition_id']} held by job {job.job_id}: failed ({cls}), retry "
                      f"{'recorded' if ok else 'not needed (claim already gone)'}")
        self._abnormal(job.gpus, cls, message, tail)

    def _abnormal(self, gpus: int, cls: str, message: str, tail: str) -> None:
        """Count an abnormal end; after max_retries+1 in a row without progress, give up on the class."""
        mark = self._progress_of(gpus)
        if self.progress_mark.get(gpus) != mark:
            self.failures[gpus] = 0
        self.progress_mark[gpus] = mark
        self.failures[gpus] = self.failures.get(gpus, 0) + 1
        self.last_error[gpus] = (cls, message, tail)
        if self.failures[gpus] > self.settings.max_retries and gpus not in self.given_up:
            first, _, rest = message.partition("\n")
            self._give_up(gpus, (cls, f"{first}; gave up after {self.failures[gpus]} failed job(s) in a row "
                                      f"without progress\n{rest}", tail))

    def _give_up(self, gpus: int, error: tuple[str, str, str]) -> None:
        self.given_up[gpus] = error
        self._log(f"giving up on gpu:{gpus} partitions: {error[1].splitlines()[0]}")
        doomed = [j for j in self._active() if j.gpus == gpus]
        for j in doomed:
            j.cancelled_by_us = True
        self._scancel([j.job_id for j in doomed])

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

    def _release_held(self, ledger: Ledger, job: _Job, why: str) -> None:
        for p in self._held(ledger, job.worker_id):
            ledger.release(self.ctx.run_id, p["partition_id"], p["claim_token"], now=time.time())
            self._log(f"  partition {p['partition_id']} held by job {job.job_id} handed back ({why or 'job ended'})")

    # -- submitting --------------------------------------------------------------------------
    def _claim_filter(self, channel: str) -> set[str]:
        job = self.jobs.get(channel_job(channel))
        if job is None or job.gpus in self.given_up:
            return set()  # not a job of this driver: it gets nothing
        return set(self.models_of.get(job.gpus, set()))

    def _budget(self, parts: list[dict]) -> int:
        run = self.ctx.plan.run
        return len(parts) * run.max_attempts + run.max_num_workers * (self.settings.max_retries + 2)

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
            if gpus in self.given_up or self.hold_until.get(gpus, 0.0) > time.monotonic():
                continue
            claimable = sum(1 for p in parts if p["model_key"] in models and (
                p["status"] == "pending" or (p["status"] == "running" and (p["expires_at"] or 0) < now)))
            idle = sum(1 for j in active if j.gpus == gpus and j.worker_id not in holders)
            if claimable - idle > 0:
                want[gpus] = claimable - idle
        if want and self.submitted >= self._budget(parts):
            for gpus in list(want):
                if not any(j.gpus == gpus for j in active):
                    cls, msg, tail = self.last_error.get(gpus, ("SlurmRunner", "", ""))
                    self._give_up(gpus, (cls, f"gave up after {self.submitted} Slurm jobs: work is still left; "
                                              f"last error: {msg or 'none'}", tail))
            return
        while slots > 0 and want:
            gpus = max(want, key=lambda g: (want[g], -g))  # the class that needs most, in turn
            if gpus in self.given_up or self._submit(gpus) is None:
                want.pop(gpus)
                continue
            slots -= 1
            want[gpus] -= 1
            if want[gpus] <= 0:
                want.pop(gpus)

    def _drain_given_up(self, ledger: Ledger, parts: list[dict]) -> None:
        """Fail what is left of a class given up on, once none of its jobs is still queued."""
        for gpus, (cls, message, tail) in self.given_up.items():
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
                                message=message, traceback_tail=tail, retry=False)
            while True:  # pending ones: claimed in the name of the last job, and failed with its error
                claim = ledger.claim(self.ctx.run_id, worker, now=now, lease_s=60.0, pid=0,
                                     host=socket.gethostname(), only_models=models)
                if claim is None:
                    break
                ledger.fail(self.ctx.run_id, claim.partition_id, claim.token, now=now, error_class=cls,
                            message=message, traceback_tail=tail, retry=False)
                self._log(f"  partition {claim.partition_id}: failed ({cls}), no job could run it")

    # -- leftovers of a previous driver (resume) ---------------------------------------------
    def _cancel_leftovers(self, ledger: Ledger) -> None:
        doc = self._load_jobs_file()
        mine: dict[str, str] = {}  # job id -> spool folder of its session
        for s in doc.get("sessions", []):
            for jid, j in (s.get("jobs") or {}).items():
                if not j.get("ended_at"):
                    mine[jid] = s.get("spool", "")
        queue = self._queue(list(mine)) or {}
        named = self._queue([], by_name=True) or {}  # submitted but not yet recorded when it died
        left = {jid: v for jid, v in {**queue, **named}.items() if v[3] == self.job_name}
        cancelled_now = set(left)
        if left:
            self._log(f"previous driver left {len(left)} job(s) in the queue: {', '.join(sorted(left))}; cancelling")
            self._scancel(sorted(left))
            servers = [SpoolServer(ledger, Path(p)) for p in {mine.get(j, "") for j in left} if p and Path(p).is_dir()]
            deadline = time.monotonic() + CANCEL_WAIT_S
            while left and time.monotonic() < deadline:
                self._check_signals()
                for srv in servers:  # let the cancelled workers hand their partitions back
                    srv.poll_once()
                time.sleep(0.05)
                q = self._queue(sorted(left))
                if q is not None:
                    left = {j: v for j, v in left.items() if j in q}
            if left:
                raise SlurmError(f"jobs of a previous driver of this run are still in the queue after scancel: "
                                 f"{', '.join(sorted(left))}", hint=f"scancel {' '.join(sorted(left))}, then resume")
        # whatever jobs of earlier drivers still hold goes back to pending (those jobs are gone)
        n = 0
        for p in ledger.partitions(self.ctx.run_id):
            if p["status"] == "running" and (p["claimed_by"] or "").startswith("slurm-") and p["claim_token"]:
                n += ledger.release(self.ctx.run_id, p["partition_id"], p["claim_token"], now=time.time())
        if n:
            self._log(f"{n} partition(s) held by jobs of a previous driver handed back")
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
            tmp = self._jobs_path().with_name(".jobs.json.tmp")
            tmp.write_text(json.dumps(doc, indent=1, sort_keys=True))
            os.replace(tmp, self._jobs_path())

    # -- the end -----------------------------------------------------------------------------
    def _shutdown(self, ledger: Ledger, finished: bool) -> None:
        """Cancel exactly the jobs this driver submitted that are still queued or running, serve
        their last requests (a hand-back) while they stop, and wait until they left the queue.
        When the run finished, running jobs first get END_GRACE_S to end by themselves (their
        workers find nothing left to claim), so that they end COMPLETED rather than CANCELLED."""
        signals_before = self._signals
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

    def _cancel(self, jobs: list[_Job]) -> None:
        for j in jobs:
            j.cancelled_by_us = True
        self._scancel([j.job_id for j in jobs])

    def _wait_gone(self, ledger: Ledger, seconds: float, signals_before: int) -> None:
        """Serve the spool and follow the queue until no job of ours is left, or `seconds` passed,
        or the driver was interrupted (again)."""
        deadline = time.monotonic() + seconds
        next_queue = 0.0
        while self._active() and time.monotonic() < deadline and self._signals <= signals_before:
            if self.server is not None:
                self.server.poll_once()
            if time.monotonic() >= next_queue:
                self._refresh(ledger)
                next_queue = time.monotonic() + min(0.25, self.settings.poll_seconds)
            time.sleep(SPOOL_POLL_S)

    # -- signals and the run lock ------------------------------------------------------------
    def _install_signals(self):
        if threading.current_thread() is not threading.main_thread():
            return None

        def on_signal(signum, frame):  # acted on at the next safe point (never inside sbatch)
            self._signals += 1

        old = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
        for s in old:
            signal.signal(s, on_signal)
        return old

    def _restore_signals(self, old) -> None:
        for s, h in (old or {}).items():
            signal.signal(s, h)

    def _lock(self) -> None:
        path = self.slurm_dir / "driver.lock"
        f = open(path, "a+")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.seek(0)
            who = f.read().strip() or "another process"
            f.close()
            raise SlurmError(f"another evalcore driver is running this run ({who})",
                             hint="wait for it to finish, or stop it; then resume") from None
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
        f.flush()
        self._lock_file = f

    def _unlock(self) -> None:
        if self._lock_file is not None:
            try:
                fcntl.flock(self._lock_file, fcntl.LOCK_UN)
            finally:
                self._lock_file.close()
                self._lock_file = None

    def failed_jobs(self) -> list[tuple[str, str, str, Path]]:
        """(job id, state, exit code, log) of the jobs that ended abnormally."""
        return [(j.job_id, j.state, j.exit_code, self._job_log(j.job_id)) for j in self.jobs.values()
                if j.ended and not j.cancelled_by_us and not (j.state == "COMPLETED" and j.exit_code in ("", "0:0"))]


def _node(nodelist: str) -> str:
    """A node name from a NodeList field ('' when the job never got one)."""
    nodelist = nodelist.strip()
    return "" if nodelist in ("", "(null)", "None assigned") else nodelist


def _tail(path: Path, n: int) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 64 * 1024))
            data = f.read()
    except OSError:
        return ""
    return "\n".join(data.decode("utf-8", "replace").splitlines()[-n:])


__all__ = ["SlurmRunner", "SlurmSettings", "slurm_settings"]
