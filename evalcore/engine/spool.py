"""The spool: a file RPC through which Slurm jobs use the run ledger held by the driver.

Why: the ledger is one SQLite file in WAL mode. SQLite's locking (and WAL's shared memory) does not
work reliably on network filesystems, and compute nodes usually see the run folder only through
one (NFS, Lustre, GPFS). So the ledger stays on the driver's local disk and only the driver opens
it; a job on a compute node talks to the driver through small JSON files in the shared run folder.
`SpoolLedger` is the job's side: it implements the ledger calls a worker makes
(`WorkerLedger`, evalcore/engine/worker_ledger.py), with the same signatures and return values as
`Ledger`. `SpoolServer` is the driver's side: it runs each request
on the real `Ledger` and answers.

Layout (one *channel* per client; a worker uses two: `<job>` and `<job>.hb` for its heartbeat)::

    <spool>/<channel>/req/<seq>.json    a request, written by the job
    <spool>/<channel>/resp/<seq>.json   its answer, written by the driver

Every file is written under a temporary name (starting with ".") and renamed into place, so a
reader sees a whole file or none. Sequence numbers start at 1 and grow by one per call.

Protocol. A channel has at most one request in flight:

- client, call `seq`: write `req/<seq>`; delete `resp/<seq-1>` (only now: see below); poll for
  `resp/<seq>` (2 ms, doubling to 50 ms); read it; return its result or raise its error. If no
  answer comes for `timeout_s` the driver is taken to be gone: `DriverGone` is raised, and every
  later call of that client and of its siblings (`sibling()`: the other channels of the same
  worker, its heartbeat's) raises it at once.
- client, `close()`: write a last request, `close`, and return without waiting.
- server, `poll_once()`: for every channel, for every request in sequence order: skip it if its
  answer already exists, or if a later request exists (the client sends `seq+1` only after reading
  answer `seq`, so that request was answered); otherwise run it on the ledger, write the answer,
  and only then delete the request. `close` deletes the channel's folder.

Crash safety. An answer is written before its request is deleted, and a client deletes answer
`seq-1` only after writing request `seq`; so a server that dies at any point and is started again
on the same folder (a resumed driver serving a previous driver's spool does exactly that) never
runs a call twice: the request is either answered, or superseded by a later one, or still
unanswered. The server also remembers the last sequence number it answered on each channel.

One clock. The server replaces the `now` of every call with its own clock, so every lease in the
ledger is measured by the driver's clock, whatever the skew of the compute nodes' clocks.
Only the calls listed in `METHODS` are served; anything else gets an error answer.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from evalcore.engine.ledger import Claim
from evalcore.errors import DriverGone, LedgerError, RemoteError, SpoolError

PROTOCOL = 1
DEFAULT_TIMEOUT_S = 60.0
METHODS = ("claim", "heartbeat", "add_samples", "done_indices", "complete", "fail", "record_load",
           "record_paths")
_CHANNEL = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
_SEQ_FILE = re.compile(r"^(\d+)\.json$")
_POLL_MIN_S, _POLL_MAX_S = 0.002, 0.05



def channel_job(channel: str) -> str:
    """The job key a channel belongs to (`<job>` and `<job>.hb` both belong to `<job>`)."""
    return channel.split(".", 1)[0]


def _check_channel(name: str) -> str:
    if not _CHANNEL.match(name):
        raise SpoolError(f"bad spool channel name {name!r}: letters, digits, '_', '.', '-' only")
    return name


def _write_atomic(path: Path, doc: dict) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(doc, f, ensure_ascii=False, separators=(",", ":"))
    os.replace(tmp, path)


def _seqs(folder: Path) -> list[int]:
    try:
        names = os.listdir(folder)
    except FileNotFoundError:
        return []
    return sorted(int(m.group(1)) for m in map(_SEQ_FILE.match, names) if m)


def _name(seq: int) -> str:
    return f"{seq:08d}.json"


class _Driver:
    """What a client and its siblings know of their driver: `gone` says why, once one of them
    waited for an answer in vain (then the others do not wait again)."""

    def __init__(self) -> None:
        self.gone: str | None = None


def _unlink(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass


class SpoolLedger:
    """A job's handle on the driver's ledger: the worker's subset of `Ledger`, over the spool.
    One instance per thread (each is one channel with one request in flight): a second thread of
    the same worker gets its own channel with `sibling()`."""

    def __init__(self, spool_dir: str | os.PathLike[str], job_key: str, *,
                 timeout_s: float = DEFAULT_TIMEOUT_S, _driver: _Driver | None = None) -> None:
        self._driver = _driver or _Driver()
        self.spool = Path(spool_dir)
        self.channel = _check_channel(job_key)
        self.timeout_s = float(timeout_s)
        self.req = self.spool / self.channel / "req"
        self.resp = self.spool / self.channel / "resp"
        self.req.mkdir(parents=True, exist_ok=True)
        self.resp.mkdir(parents=True, exist_ok=True)
        # continue after anything already in the channel (a channel is meant for one process)
        self.seq = max(_seqs(self.req) + _seqs(self.resp) + [0])
        self.closed = False
        self.calls = 0
        self.wait_s = 0.0  # total time spent waiting for answers

    def sibling(self, channel: str, *, timeout_s: float | None = None) -> SpoolLedger:
        """A client on another channel of the same spool (a worker's heartbeat thread: `<job>.hb`)
        that shares what this one knows of the driver: once either finds it gone, the other's
        calls raise `DriverGone` at once instead of waiting again."""
        return SpoolLedger(self.spool, channel, timeout_s=self.timeout_s if timeout_s is None else timeout_s,
                           _driver=self._driver)

    # -- the worker's subset of the Ledger API ---------------------------------------------
    def claim(self, run_id: str, worker_id: str, *, now: float, lease_s: float, pid: int, host: str,
              prefer_model: str | None = None, only_models: set[str] | None = None,
              max_gpus: int | None = None, prefer_dataset: str | None = None) -> Claim | None:
        got = self._call("claim", [run_id, worker_id],
                         {"now": now, "lease_s": lease_s, "pid": pid, "host": host, "prefer_model": prefer_model,
                          "only_models": None if only_models is None else sorted(only_models),
                          "max_gpus": max_gpus, "prefer_dataset": prefer_dataset})
        return None if got is None else Claim(**got)

    def heartbeat(self, run_id: str, partition_id: str, token: str, *, now: float, lease_s: float) -> bool:
        return bool(self._call("heartbeat", [run_id, partition_id, token], {"now": now, "lease_s": lease_s}))

    def add_samples(self, run_id: str, partition_id: str, token: str, rows: Iterable[tuple[int, str]], *,
                    now: float) -> bool:
        rows = [[int(i), out] for i, out in rows]
        return bool(self._call("add_samples", [run_id, partition_id, token, rows], {"now": now}))

    def done_indices(self, run_id: str, partition_id: str) -> set[int]:
        return set(self._call("done_indices", [run_id, partition_id], {}))

    def complete(self, run_id: str, partition_id: str, token: str, *, now: float) -> bool:
        return bool(self._call("complete", [run_id, partition_id, token], {"now": now}))

    def fail(self, run_id: str, partition_id: str, token: str, *, now: float, error_class: str,
             message: str, traceback_tail: str, retry: bool) -> bool:
        return bool(self._call("fail", [run_id, partition_id, token],
                               {"now": now, "error_class": error_class, "message": message,
                                "traceback_tail": traceback_tail, "retry": retry}))

    def release(self, run_id: str, partition_id: str, token: str, *, now: float) -> bool:
        """Hand the partition back because the worker is stopping. Through the spool this counts
        as an attempt: it is recorded as a retried failure, error class `Interrupted` (back to
        pending while attempts are left, samples kept), because a Slurm job is stopped by scancel,
        its time limit or preemption, and a partition whose jobs keep being stopped must not be
        retried forever (docs/slurm.md). `Ledger.release` does not count it: there the driver
        stops its own workers."""
        return self.fail(run_id, partition_id, token, now=now, error_class="Interrupted",
                         message="the worker was stopped; handed back", traceback_tail="", retry=True)

    def record_load(self, run_id: str, worker_id: str, model_key: str, *, started_at: float,
                    seconds: float) -> None:
        self._call("record_load", [run_id, worker_id, model_key], {"started_at": started_at, "seconds": seconds})

    def record_paths(self, run_id: str, worker_id: str, model_key: str, paths_json: str, *, now: float) -> None:
        self._call("record_paths", [run_id, worker_id, model_key, paths_json], {"now": now})

    def close(self) -> None:
        """Tell the driver this channel is finished (it deletes it); never waits, never raises."""
        if self.closed:
            return
        self.closed = True
        try:
            _write_atomic(self.req / _name(self.seq + 1), {"v": PROTOCOL, "seq": self.seq + 1, "method": "close",
                                                           "args": [], "kwargs": {}, "sent_at": time.time()})
            _unlink(self.resp / _name(self.seq))
        except OSError:
            pass

    def __enter__(self) -> SpoolLedger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the wire ------------------------------------------------------------------------
    def _call(self, method: str, args: list, kwargs: dict) -> Any:
        if self.closed:
            raise SpoolError(f"spool channel {self.channel} is closed")
        if self._driver.gone is not None:
            raise DriverGone(self._driver.gone)
        self.seq += 1
        seq = self.seq
        sent = time.time()
        _write_atomic(self.req / _name(seq), {"v": PROTOCOL, "seq": seq, "method": method, "args": args,
                                              "kwargs": kwargs, "sent_at": sent, "pid": os.getpid(),
                                              "host": socket.gethostname()})
        _unlink(self.resp / _name(seq - 1))  # only now: request seq marks seq-1 as answered
        answer = self.resp / _name(seq)
        t0 = time.monotonic()
        pause = _POLL_MIN_S
        while True:
            try:
                with open(answer, encoding="utf-8") as f:
                    doc = json.load(f)
                break
            except FileNotFoundError:
                pass
            except ValueError as exc:  # renamed into place whole, so this is not a torn write
                raise SpoolError(f"unreadable spool answer {answer}: {exc}") from None
            waited = time.monotonic() - t0
            if waited > self.timeout_s:
                msg = (f"no answer from the driver for {waited:.0f} s (spool {self.spool}, channel "
                       f"{self.channel}, call {method} #{seq}): the driver is gone")
                self._driver.gone = msg
                raise DriverGone(msg)
            time.sleep(pause)
            pause = min(_POLL_MAX_S, pause * 2)
        self.calls += 1
        self.wait_s += time.monotonic() - t0
        if doc.get("ok"):
            return doc.get("result")
        cls, msg = doc.get("error", "Error"), doc.get("message", "")
        if cls == "ValueError":
            raise ValueError(msg)
        if cls == "LedgerError":
            raise LedgerError(msg)
        raise RemoteError(cls, msg)


ClaimFilter = Callable[[str], "set[str] | None"]


class SpoolServer:
    """The driver's side: answers every job's requests from the real ledger.

    `claim_filter(channel)`, when given, returns the models a channel's job may claim (or None for
    no limit); it is intersected with the worker's own `only_models`. The Slurm runner uses it so
    that a job only ever claims partitions of models that need the GPUs Slurm gave it.
    """

    def __init__(self, ledger, spool_dir: str | os.PathLike[str], *, claim_filter: ClaimFilter | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.ledger = ledger
        self.spool = Path(spool_dir)
        self.spool.mkdir(parents=True, exist_ok=True)
        self.claim_filter = claim_filter
        self.clock = clock
        self._last: dict[str, int] = {}
        self.handled = 0
        self.delay_s = 0.0  # sum over answers of (answer written - request sent), same-host clocks

    def channels(self) -> list[str]:
        try:
            entries = list(os.scandir(self.spool))
        except FileNotFoundError:
            return []
        return sorted(e.name for e in entries if _CHANNEL.match(e.name) and e.is_dir())

    def poll_once(self, serve: Callable[[str], bool] | None = None) -> int:
        """Answer every pending request of every channel (of those `serve` accepts, when given),
        in order per channel. Returns how many."""
        n = 0
        for channel in self.channels():
            if serve is None or serve(channel):
                n += self._serve_channel(channel)
        return n

    def _serve_channel(self, channel: str) -> int:
        req_dir = self.spool / channel / "req"
        resp_dir = self.spool / channel / "resp"
        seqs = _seqs(req_dir)
        n = 0
        for i, seq in enumerate(seqs):
            req = req_dir / _name(seq)
            superseded = i + 1 < len(seqs) or seq <= self._last.get(channel, 0)
            if superseded or (resp_dir / _name(seq)).exists():
                _unlink(req)  # answered already (before a restart of this server, or just now)
                continue
            try:
                with open(req, encoding="utf-8") as f:
                    doc = json.load(f)
            except FileNotFoundError:
                continue
            except ValueError as exc:
                doc = {"seq": seq, "method": "?", "bad": str(exc)}
            if doc.get("method") == "close":
                shutil.rmtree(self.spool / channel, ignore_errors=True)
                self._last.pop(channel, None)
                return n
            answer = self._answer(channel, doc)
            resp_dir.mkdir(parents=True, exist_ok=True)
            _write_atomic(resp_dir / _name(seq), answer)  # the answer first ...
            _unlink(req)                                   # ... then the request is gone
            self._last[channel] = seq
            self.handled += 1
            if isinstance(doc.get("sent_at"), (int, float)):
                self.delay_s += max(0.0, time.time() - doc["sent_at"])
            n += 1
        return n

    def _answer(self, channel: str, doc: dict) -> dict:
        seq = doc.get("seq")
        try:
            if "bad" in doc:
                raise SpoolError(f"unreadable request: {doc['bad']}")
            if doc.get("v") != PROTOCOL:
                raise SpoolError(f"spool protocol {doc.get('v')!r}; this driver speaks {PROTOCOL}")
            result = self._dispatch(channel, doc["method"], list(doc.get("args", [])), dict(doc.get("kwargs", {})))
            return {"v": PROTOCOL, "seq": seq, "ok": True, "result": result}
        except Exception as exc:  # the error goes back to the job; the driver carries on
            cls = "LedgerError" if isinstance(exc, LedgerError) else type(exc).__name__
            return {"v": PROTOCOL, "seq": seq, "ok": False, "error": cls, "message": str(exc)[:4000]}

    def _dispatch(self, channel: str, method: str, args: list, kwargs: dict) -> Any:
        if method not in METHODS:
            raise SpoolError(f"unknown spool call {method!r}")
        if "now" in kwargs:
            kwargs["now"] = self.clock()  # one clock for every lease: the driver's
        if method == "claim":
            only = kwargs.get("only_models")
            only = None if only is None else set(only)
            allowed = self.claim_filter(channel) if self.claim_filter else None
            if allowed is not None:
                only = set(allowed) if only is None else only & set(allowed)
            kwargs["only_models"] = only
            claim = self.ledger.claim(*args, **kwargs)
            return None if claim is None else asdict(claim)
        if method == "add_samples":
            args[3] = [(int(i), str(out)) for i, out in args[3]]
        result = getattr(self.ledger, method)(*args, **kwargs)
        if method == "done_indices":
            return sorted(result)
        return result


__all__ = ["SpoolLedger", "SpoolServer", "channel_job", "METHODS",
           "DEFAULT_TIMEOUT_S"]
