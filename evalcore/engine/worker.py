# Over 400 lines on purpose: one process's loop (claim, lease, load, run, commit, hand back) and
# the signal and driver-gone handling that must see all of it.
"""A long-lived worker process: claim a partition -> (lease GPUs) -> load the model once ->
run the samples still missing -> commit them in small batches -> claim the next, preferring the
model already loaded.

    python -m evalcore.engine.worker --run-dir DIR --worker-id ID [--gpus N] [--threads T]

Offline mode and the socket guard are switched on before anything else is imported. A worker
with --gpus N leases N GPUs before torch starts, sees only them (CUDA_VISIBLE_DEVICES), and only
claims partitions of models that need N GPUs. It stops when nothing is left to claim, when told
to (SIGTERM, SIGINT), or when the driver that started it is gone; an unfinished partition is
handed back (or its lease simply expires, if the worker was killed).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import sys
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from evalcore.engine.worker_ledger import WorkerLedger

FAULTS_ENV = "EVALCORE_FAULTS"  # test hook: "raise@<partition prefix>", "slow@<partition prefix>" (0.3 s a chunk)


class ClaimLost(Exception):
    """The ledger says this worker no longer holds the partition (its lease expired)."""


class Stop(Exception):
    """Asked to stop (signal, or the driver is gone)."""


class Heartbeat(threading.Thread):
    """Renews the current claim and the GPU lease; notices a lost claim or a dead driver."""

    def __init__(self, ledger_path: Path, run_id: str, lease_s: float, parent_pid: int, leases=None,
                 connect: Callable[[], WorkerLedger] | None = None) -> None:
        super().__init__(daemon=True)
        self.ledger_path, self.run_id, self.lease_s, self.parent_pid = ledger_path, run_id, lease_s, parent_pid
        self.connect = connect  # this thread's own ledger handle (default: the ledger file)
        self.leases, self.gpu_lease = leases, None
        self.claim = None
        self.lost = threading.Event()
        self.stop = threading.Event()
        self.orphaned = threading.Event()
        self._lock = threading.Lock()

    def track(self, claim) -> None:
        with self._lock:
            self.claim = claim
            self.lost.clear()

    def run(self) -> None:
        if self.connect is None:
            from evalcore.engine.ledger import Ledger

            ledger: WorkerLedger = Ledger(self.ledger_path, create=False)
        else:
            ledger = self.connect()
        interval = max(0.2, self.lease_s / 4)
        while not self.stop.wait(interval):
            if self.parent_pid and os.getppid() != self.parent_pid:
                self.orphaned.set()
            now = time.time()
            with self._lock:
                claim = self.claim
            if claim is not None and not ledger.heartbeat(self.run_id, claim.partition_id, claim.token,
                                                          now=now, lease_s=self.lease_s):
                with self._lock:  # a heartbeat of a claim completed meanwhile says nothing of the next one
                    if self.claim is claim:
                        self.lost.set()
            if self.leases is not None and self.gpu_lease is not None:
                self.leases.renew(self.gpu_lease, now=now, ttl=self.lease_s)
        ledger.close()


def _faults() -> list[tuple[str, str]]:
    out = []
    for item in filter(None, os.environ.get(FAULTS_ENV, "").split(",")):
        kind, _, target = item.partition("@")
        out.append((kind, target))
    return out


class Worker:
    def __init__(self, run_dir: Path, worker_id: str, gpus: int, threads: int | None, parent_pid: int,
                 spool: Path | None = None, job_key: str = "", spool_timeout: float = 60.0,
                 no_lease: bool = False) -> None:
        from evalcore.engine.ledger import Ledger
        from evalcore.engine.runctx import RunContext
        from evalcore.engine.spool import SpoolLedger

        self.ctx = RunContext.load(run_dir)
        self.run_id = self.ctx.run_id
        self.worker_id, self.n_gpus, self.threads = worker_id, gpus, threads
        # Under Slurm the ledger stays with the driver; calls go through the spool (evalcore/engine/spool.py).
        self.ledger: WorkerLedger = (SpoolLedger(spool, job_key, timeout_s=spool_timeout) if spool
                                     else Ledger(self.ctx.ledger_path, create=False, run_id=self.run_id))
        self.plan = self.ctx.plan
        self.lease_s = self.plan.run.lease_seconds
        self.tasks = self.ctx.tasks()
        self.models = {m.name: m for m in self.plan.models}
        self.datasets = {d.abbr: d for d in self.plan.datasets}
        self.host = socket.gethostname()
        self.leases = None
        # the heartbeat thread's own channel, which learns at once when the main one found the driver gone
        connect = (lambda: self.ledger.sibling(f"{job_key}.hb")) if spool else None
        self.hb = Heartbeat(self.ctx.ledger_path, self.run_id, self.lease_s, parent_pid, connect=connect)
        if no_lease:  # the scheduler already gave this job its GPUs (CUDA_VISIBLE_DEVICES): no lease table
            self._lease_gpus = lambda: None
        self.backend = None
        self.loaded: str | None = None
        self.last_dataset: str | None = None   # claimed next where it can: its prompts' prefix is cached
        self._rows: dict[tuple[str, str], list[dict]] = {}
        self._fallbacks: set[tuple[str, str, str]] = set()
        self._stopping = False  # set by a signal handler: a plain flag (an Event's lock can deadlock there)

    # -- lifecycle -------------------------------------------------------------------------
    def serve(self) -> int:
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        self.hb.start()
        try:
            if self.n_gpus:
                self._lease_gpus()
            eligible = self._eligible_models()
            while not self._should_stop():
                claim = self.ledger.claim(self.run_id, self.worker_id, now=time.time(), lease_s=self.lease_s,
                                          pid=os.getpid(), host=self.host, prefer_model=self.loaded,
                                          only_models=eligible, prefer_dataset=self.last_dataset)
                if claim is None:
                    break
                self._run_claim(claim)
            return 0
        finally:
            self._shutdown()

    def _shutdown(self) -> None:
        """Stop heartbeating, free the model, and only then hand the GPU lease back."""
        self.hb.stop.set()
        if self.backend is not None:  # let go of the device first: only then may another worker have it
            self.backend.close()
            self.backend = None
        if self.leases is not None and self.hb.gpu_lease is not None:
            self.leases.release(self.hb.gpu_lease)
        self.ledger.close()

    def _eligible_models(self) -> set[str]:
        """Models this worker may run: those needing exactly its GPU count; on a host without
        GPUs (every worker on the CPU) all of them."""
        from evalcore.engine.gpus import discover_gpus

        if self.n_gpus == 0 and not discover_gpus(os.environ):
            return {m.name for m in self.plan.models}
        return {m.name for m in self.plan.models if m.num_gpus == self.n_gpus}

    def _on_signal(self, *_: object) -> None:
        self._stopping = True

    def _should_stop(self) -> bool:
        return self._stopping or self.hb.orphaned.is_set()

    def _lease_gpus(self) -> None:
        from evalcore.engine.gpus import discover_gpus, visible_devices_env
        from evalcore.engine.leases import GpuLeases, default_path

        devices = discover_gpus(os.environ)
        self.leases = GpuLeases(default_path(os.environ), devices, self.plan.run.max_workers_per_gpu)
        self.hb.leases = self.leases
        owner = f"{self.host}:{os.getpid()}:{self.worker_id}"
        while not self._should_stop():
            lease = self.leases.acquire(self.n_gpus, owner=owner, pid=os.getpid(), host=self.host,
                                        run_id=self.run_id, now=time.time(), ttl=self.lease_s)
            if lease is not None:
                self.hb.gpu_lease = lease
                os.environ.update(visible_devices_env(lease.devices))
                print(f"[{self.worker_id}] leased GPU(s) {','.join(lease.devices)}", flush=True)
                return
            time.sleep(min(1.0, self.lease_s / 4))
        self.leases.cancel(owner)
        raise Stop()

    # -- one partition ---------------------------------------------------------------------
    def _run_claim(self, claim) -> None:
        self.hb.track(claim)
        t0 = time.time()
        try:
            self._ensure_model(claim.model_key)
            self._run_partition(claim)
            self._record_paths(claim.model_key)
            self.last_dataset = claim.dataset_key
            self.ledger.complete(self.run_id, claim.partition_id, claim.token, now=time.time())
            print(f"[{self.worker_id}] done {claim.partition_id} in {time.time() - t0:.1f} s", flush=True)
        except ClaimLost:
            print(f"[{self.worker_id}] lost the claim on {claim.partition_id} (lease expired); moving on", flush=True)
        except Stop:  # handed back (whether the attempt counts is the ledger's rule: WorkerLedger.release)
            self.ledger.release(self.run_id, claim.partition_id, claim.token, now=time.time())
        except Exception as exc:  # the partition failed; the worker goes on with the next one
            tb = traceback.format_exc()
            print(tb, file=sys.stderr, flush=True)
            self.ledger.fail(self.run_id, claim.partition_id, claim.token, now=time.time(),
                             error_class=type(exc).__name__, message=str(exc)[:2000],
                             traceback_tail="\n".join(tb.splitlines()[-25:]), retry=False)
        finally:
            self.hb.track(None)
            if self.plan.run.reload_per_partition and self.backend is not None:
                self.backend.close()  # OpenCompass's policy, kept for comparison benchmarks
                self.backend, self.loaded = None, None

    def _ensure_model(self, name: str) -> None:
        if self.loaded == name:
            return
        if self.backend is not None:
            self.backend.close()
            self.backend, self.loaded = None, None
        spec = self.models[name]
        started = time.time()
        fake = bool(os.environ.get("EVALCORE_FAKE_GPUS"))  # declared devices that torch cannot see
        self.backend = make_backend(spec, self.ctx.resolved, self.threads, bool(self.n_gpus) and not fake,
                                    gpus=self.n_gpus)
        self.loaded = name
        self.ledger.record_load(self.run_id, self.worker_id, name, started_at=started, seconds=time.time() - started)
        print(f"[{self.worker_id}] loaded {name} in {time.time() - started:.1f} s", flush=True)

    def _record_paths(self, model_key: str) -> None:
        """Record the fast paths the backend took and every fallback (shown by the report)."""
        paths = getattr(self.backend, "fast_paths", None)
        if paths is not None:
            self.ledger.record_paths(self.run_id, self.worker_id, model_key, json.dumps(paths(), sort_keys=True),
                                     now=time.time())

    def _rows_of(self, abbr: str, which: str) -> list[dict]:
        from evalcore.plan.data import load_rows

        key = (abbr, which)
        if key not in self._rows:
            from evalcore.benchmarks.engine import prepare_rows

            ref = (self.ctx.resolved.datasets if which == "eval" else self.ctx.resolved.fewshot)[abbr]
            self._rows[key] = prepare_rows(self.tasks[abbr], load_rows(ref))
        return self._rows[key]

    def _run_partition(self, claim) -> None:
        from evalcore.backends.base import GenRequest
        from evalcore.benchmarks.engine import fewshot_rows, requests_for
        from evalcore.benchmarks.scores import score_gen, score_ll, score_loglik
        from evalcore.engine.runctx import effective_max_out_len

        slow = False
        for kind, target in _faults():
            if kind == "raise" and claim.partition_id.startswith(target):
                raise RuntimeError(f"injected fault in {claim.partition_id} ({FAULTS_ENV})")
            slow = slow or (kind == "slow" and claim.partition_id.startswith(target))
        spec, dspec = self.models[claim.model_key], self.datasets[claim.dataset_key]
        task = self.tasks[claim.dataset_key]
        rows = self._rows_of(claim.dataset_key, "eval")
        pool = self._rows_of(claim.dataset_key, "fewshot") if claim.dataset_key in self.ctx.resolved.fewshot else rows
        done = self.ledger.done_indices(self.run_id, claim.partition_id)
        todo = [i for i in range(claim.sample_start, claim.sample_end) if i not in done]
        chunk = chunk_size(spec, task.mode)
        for start in range(0, len(todo), chunk):
            if self._should_stop():
                raise Stop()
            if self.hb.lost.is_set():
                raise ClaimLost()
            if slow:
                time.sleep(0.3)
            idx = todo[start:start + chunk]
            built = [requests_for(task, rows[i], fewshot_rows(task, pool, rows[i], i)) for i in idx]
            if task.mode == "gen":
                max_new = effective_max_out_len(spec, task)
                gens = self.backend.generate([GenRequest(b.contexts[0], max_new, task.stop) for b in built])
                recs = [score_gen(task, rows[i], i, b, g, allow_code_execution=dspec.allow_code_execution,
                                  code_sandbox=self.ctx.security.get("code_sandbox", "namespaces"))
                        for i, b, g in zip(idx, built, gens, strict=True)]
            else:
                results = loglikelihoods(self.backend, built)
                score = score_ll if task.mode == "ll" else score_loglik
                recs = [score(task, rows[i], i, b, lps, greedy, n_tokens=ntok)
                        for i, b, (lps, greedy, ntok) in zip(idx, built, results, strict=True)]
            rows_json = [(r["index"], json.dumps(r, ensure_ascii=False)) for r in recs]
            if not self.ledger.add_samples(self.run_id, claim.partition_id, claim.token, rows_json, now=time.time()):
                raise ClaimLost()
            self._record_fallbacks(claim, recs)

    def _record_fallbacks(self, claim, recs: list[dict]) -> None:
        """A slower or weaker path taken without being asked goes on record (logs/fallbacks.jsonl;
        shown by `evalcore report`), once per model x dataset and kind."""
        from evalcore.engine.settings import record_fallback

        found = []
        reason = getattr(self.backend, "packed_fallback_reason", None)
        if reason:
            found.append(("shared-context scoring off (plain, slower; same numbers)", reason))
        if any((r.get("execution") or {}).get("sandbox") == "guard" for r in recs):
            found.append(("code sandbox: the weak Python guard, not the OS sandbox",
                          "unsafe_allow_weak_sandbox = true: " + self.ctx.security.get("code_sandbox_reason", "")))
        for kind, why in found:
            key = (claim.model_key, claim.dataset_key, kind)
            if key not in self._fallbacks:
                self._fallbacks.add(key)
                record_fallback(self.ctx.run_dir, claim.model_key, claim.dataset_key, kind, why, self.worker_id)
                print(f"[{self.worker_id}] fallback for {claim.model_key} x {claim.dataset_key}: {kind}: {why}",
                      flush=True)


def loglikelihoods(backend, built) -> list[tuple[list[float], list[bool], list[int]]]:
    """Score rows' requests in one backend call: one context with its continuations, or (the
    multiple-input form) one request per context with the shared continuation."""
    from evalcore.backends.base import LoglikRequest

    flat, shape = [], []
    for b in built:
        if len(b.contexts) > 1:
            flat += [LoglikRequest(c, b.continuations) for c in b.contexts]
            shape.append(len(b.contexts))
        else:
            flat.append(LoglikRequest(b.contexts[0], b.continuations))
            shape.append(0)
    results = backend.loglikelihood(flat)
    out, pos = [], 0
    for n in shape:
        if n:
            part = results[pos:pos + n]
            out.append(([r.logprobs[0] for r in part], [r.greedy[0] for r in part], [r.n_tokens[0] for r in part]))
            pos += n
        else:
            out.append((list(results[pos].logprobs), list(results[pos].greedy), list(results[pos].n_tokens)))
            pos += 1
    return out


def chunk_size(spec, mode: str) -> int:
    """Samples per commit: a crash loses at most this many."""
    bs = spec.batch_size if isinstance(spec.batch_size, int) else 16
    return max(1, bs if mode == "gen" else 2 * bs)


def make_backend(spec, resolved, threads: int | None, on_gpu: bool, gpus: int = 1):
    """The backend for a model of the plan: its description as the plan gave it, loaded from
    what the preflight resolved, placed on the leased GPUs (or the CPU)."""
    from evalcore.backends import ModelSettings, load_backend
    from evalcore.engine.placement import placement

    lm = resolved.models[spec.name]
    where = placement(spec.model_kwargs, gpus if on_gpu else 0, on_gpu)
    return load_backend(ModelSettings.for_run(spec, lm, resolved.tokenizers.get(spec.name), where, threads))


def main(argv: list[str] | None = None) -> int:
    from evalcore.isolation.offline import go_offline

    ap = argparse.ArgumentParser(prog="python -m evalcore.engine.worker")
    ap.add_argument("--run-dir", required=True, type=Path)
    ap.add_argument("--worker-id", required=True)
    ap.add_argument("--gpus", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--parent-pid", type=int, default=0)
    ap.add_argument("--online", action="store_true", help="do not switch offline (evalcore eval --no-offline)")
    ap.add_argument("--spool", type=Path, default=None, help="use the driver's ledger through this spool folder (Slurm)")
    ap.add_argument("--job-key", default="", help="this job's spool channel (with --spool)")
    ap.add_argument("--spool-timeout", type=float, default=60.0, help="seconds without an answer: the driver is gone")
    ap.add_argument("--no-lease", action="store_true", help="no GPU lease table: the scheduler assigned the GPUs")
    args = ap.parse_args(argv)
    if args.spool and not args.job_key:
        ap.error("--spool needs --job-key")
    if not args.online:
        go_offline()
    if args.no_lease:
        print(f"[{args.worker_id}] pid {os.getpid()} on {socket.gethostname()}, slurm job "
              f"{os.environ.get('SLURM_JOB_ID', '-')}, CUDA_VISIBLE_DEVICES="
              f"{os.environ.get('CUDA_VISIBLE_DEVICES', '<unset>')}", flush=True)
    from evalcore.errors import DriverGone

    try:
        return Worker(args.run_dir, args.worker_id, args.gpus, args.threads, args.parent_pid, spool=args.spool,
                      job_key=args.job_key, spool_timeout=args.spool_timeout, no_lease=args.no_lease).serve()
    except Stop:
        return 0
    except DriverGone as exc:
        print(f"[{args.worker_id}] stopping: {exc}", file=sys.stderr, flush=True)
        return 3


if __name__ == "__main__":
    sys.exit(main())
