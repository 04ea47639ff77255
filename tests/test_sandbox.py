"""evalcore.scoring.sandbox: HumanEval checks run in a child the OS confines ("namespaces", bubblewrap) or,
only by name, under the weak guard. The escapes of issue 12 are in tests/test_sandbox_probes.py."""

from __future__ import annotations

import errno
import os
import shutil
import socket
import tempfile
from pathlib import Path

import pytest

import evalcore.scoring.sandbox as sandbox
from evalcore.errors import ExecutionNotAllowedError, SandboxUnavailable
from evalcore.scoring.sandbox import (
    BWRAP_MISSING,
    Limits,
    check_humaneval,
    humaneval_program,
    run_program,
    sandbox_problem,
)

# HumanEval/0, copied verbatim from HumanEval.jsonl.gz (openai/human-eval; MIT licence, OpenAI).
HUMANEVAL_0 = {
    'task_id': 'HumanEval/0',
    'prompt': (
        'from typing import List\n'
        '\n'
        '\n'
        'def has_close_elements(numbers: List[float], threshold: float) -> bool:\n'
        '    """ Check if in given list of numbers, are any two numbers closer to each other than\n'
        '    given threshold.\n'
        '    >>> has_close_elements([1.0, 2.0, 3.0], 0.5)\n'
        '    False\n'
        '    >>> has_close_elements([1.0, 2.8, 3.0, 4.0, 5.0, 2.0], 0.3)\n'
        '    True\n'
        '    """\n'
    ),
    'entry_point': 'has_close_elements',
    'canonical_solution': (
        '    for idx, elem in enumerate(numbers):\n'
        '        for idx2, elem2 in enumerate(numbers):\n'
        '            if idx != idx2:\n'
        '                distance = abs(elem - elem2)\n'
        '                if distance < threshold:\n'
        '                    return True\n'
        '\n'
        '    return False\n'
    ),
    'test': (
        '\n'
        '\n'
        'METADATA = {\n'
        "    'author': 'jt',\n"
        "    'dataset': 'test'\n"
        '}\n'
        '\n'
        '\n'
        'def check(candidate):\n'
        '    assert candidate([1.0, 2.0, 3.9, 4.0, 5.0, 2.2], 0.3) == True\n'
        '    assert candidate([1.0, 2.0, 3.9, 4.0, 5.0, 2.2], 0.05) == False\n'
        '    assert candidate([1.0, 2.0, 5.9, 4.0, 5.0], 0.95) == True\n'
        '    assert candidate([1.0, 2.0, 5.9, 4.0, 5.0], 0.8) == False\n'
        '    assert candidate([1.0, 2.0, 3.0, 4.0, 5.0, 2.0], 0.1) == True\n'
        '    assert candidate([1.1, 2.2, 3.1, 4.1, 5.1], 1.0) == True\n'
        '    assert candidate([1.1, 2.2, 3.1, 4.1, 5.1], 0.5) == False\n'
        '\n'
    ),
}

MODES = ["namespaces", "guard"]
FAST = Limits(timeout_s=1.0, memory_bytes=512 << 20, file_size_bytes=1 << 20)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """The parent of the sandbox's temporary work dirs; every test checks it ends up empty."""
    path = tmp_path / "sandbox"
    path.mkdir()
    yield path
    assert list(path.iterdir()) == []


@pytest.fixture
def listener():
    """A loopback TCP server that records whether anything connected to it."""
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    server.settimeout(0.2)

    def connected() -> bool:
        try:
            conn, _ = server.accept()
        except TimeoutError:
            return False
        conn.close()
        return True

    yield server.getsockname()[1], connected
    server.close()


def run(program: str, root: Path, **kw):
    kw.setdefault("limits", FAST)
    r = run_program(program, allow_execution=True, tmp_root=root, **kw)
    assert r.isolation == kw.get("isolation", "namespaces")
    return r


def test_nothing_runs_without_the_opt_in(root: Path) -> None:
    marker = root.parent / "ran"
    program = f"open({str(marker)!r}, 'w').close()"
    with pytest.raises(ExecutionNotAllowedError):
        run_program(program, allow_execution=False, tmp_root=root)
    with pytest.raises(ExecutionNotAllowedError):
        check_humaneval(HUMANEVAL_0, HUMANEVAL_0["canonical_solution"], allow_execution=0, tmp_root=root)  # type: ignore[arg-type]
    assert not marker.exists()


def test_program_text_is_human_evals() -> None:
    text = humaneval_program(HUMANEVAL_0, "    return False\n")
    assert text.startswith(HUMANEVAL_0["prompt"] + "    return False\n\n")
    assert text.endswith(HUMANEVAL_0["test"] + "\ncheck(has_close_elements)")


def test_canonical_solution_passes(root: Path) -> None:
    r = check_humaneval(HUMANEVAL_0, HUMANEVAL_0["canonical_solution"], allow_execution=True,
                        limits=FAST, tmp_root=root)
    assert (r.passed, r.status, r.message) == (True, "passed", "")
    assert r.isolation == "namespaces"  # the default


@pytest.mark.parametrize("isolation", MODES)
def test_wrong_solution_fails(root: Path, isolation: str) -> None:
    r = check_humaneval(HUMANEVAL_0, "    return False\n", allow_execution=True, limits=FAST, tmp_root=root,
                        isolation=isolation)
    assert (r.passed, r.status, r.isolation) == (False, "failed", isolation)
    assert r.message.startswith("AssertionError")


@pytest.mark.parametrize("isolation", MODES)
def test_garbage_completion_is_an_error(root: Path, isolation: str) -> None:
    r = check_humaneval(HUMANEVAL_0, "    return (((\n", allow_execution=True, limits=FAST, tmp_root=root,
                        isolation=isolation)
    assert (r.passed, r.status) == (False, "error")
    assert "SyntaxError" in r.message


@pytest.mark.parametrize("isolation", MODES)
def test_exit_does_not_count_as_a_pass(root: Path, isolation: str) -> None:
    assert run("import sys\nsys.exit(0)", root, isolation=isolation).status == "failed"
    r = run("import os\nos._exit(0)", root, isolation=isolation)
    assert (r.passed, r.status) == (False, "failed")


@pytest.mark.parametrize("isolation", MODES)
def test_infinite_loop_times_out(root: Path, isolation: str) -> None:
    r = run("while True:\n    pass", root, isolation=isolation)
    assert (r.passed, r.status) == (False, "timeout")
    assert "wall-clock" in r.message and r.duration_s >= FAST.timeout_s   # stopped by the limit


@pytest.mark.parametrize("isolation", MODES)
def test_sleeping_program_hits_the_wall_clock(root: Path, isolation: str) -> None:
    r = run("import time\ntime.sleep(60)", root, isolation=isolation)
    assert r.status == "timeout" and "wall-clock" in r.message
    assert r.duration_s < 60                          # killed at the limit, not left to finish


@pytest.mark.parametrize("isolation", MODES)
def test_cpu_limit(root: Path, isolation: str) -> None:
    r = run("while True:\n    pass", root, limits=Limits(timeout_s=30.0, cpu_s=1), isolation=isolation)
    assert r.status == "timeout" and "CPU-time limit of 1 s" in r.message  # not the wall clock


@pytest.mark.parametrize("program", [
    "x = bytearray(2 << 30)",
    "chunks = []\nwhile True:\n    chunks.append(bytearray(10 ** 7))",
])
@pytest.mark.parametrize("isolation", MODES)
def test_memory_hog_is_stopped(root: Path, program: str, isolation: str) -> None:
    r = run(program, root, limits=Limits(timeout_s=30.0, memory_bytes=256 << 20), isolation=isolation)
    assert (r.passed, r.status) == (False, "oom")  # stopped by the limit, not the wall clock


@pytest.mark.parametrize("isolation", MODES)
def test_file_size_limit(root: Path, isolation: str) -> None:
    r = run("open('big', 'wb').write(b'x' * (4 << 20))", root, isolation=isolation)
    assert r.status == "failed" and "File too large" in r.message


def test_private_tmp_is_bounded(root: Path) -> None:
    program = "for i in range(64):\n    open(f'/tmp/f{i}', 'wb').write(b'x' * (1 << 20))"
    r = run(program, root, limits=Limits(timeout_s=5.0, file_size_bytes=2 << 20, tmpfs_bytes=8 << 20))
    assert r.status == "failed" and "No space left on device" in r.message


@pytest.mark.parametrize("isolation", MODES)
def test_process_creation_is_blocked(root: Path, isolation: str) -> None:
    r = run("import subprocess\nsubprocess.run(['true'])", root, isolation=isolation)
    assert r.status == "failed" and "PermissionError" in r.message
    assert run("import os\nos.fork()", root, isolation=isolation).status == "failed"


def test_process_limit_holds_past_the_guard(root: Path) -> None:
    """posix.fork is not blocked by the guard; RLIMIT_NPROC (counted in the sandbox's own user
    namespace, as uid 65534 when evalcore is root) stops a fork bomb."""
    program = (
        "import posix, time\n"
        "n = 0\n"
        "try:\n"
        "    while n < 500:\n"
        "        if posix.fork() == 0:\n"
        "            time.sleep(30)\n"
        "            posix._exit(0)\n"
        "        n += 1\n"
        "except OSError as exc:\n"
        "    raise SystemExit(f'stopped after {n} forks: {exc}')\n"
        "raise SystemExit('not stopped')\n"
    )
    r = run(program, root, limits=Limits(timeout_s=10.0, max_processes=16))
    assert r.status == "failed" and r.message.startswith("SystemExit: stopped after"), r.message
    assert int(r.message.split()[3]) < 16


def test_what_the_sandbox_sees(root: Path) -> None:
    program = (
        "import os, socket, sys\n"
        "assert os.getcwd() == '/tmp', os.getcwd()\n"
        "assert set(os.environ) <= {'PATH', 'LANG', 'LC_ALL', 'HOME', 'TMPDIR', 'OMP_NUM_THREADS', 'PWD'}, sorted(os.environ)\n"
        "assert os.environ['HOME'] == os.environ['TMPDIR'] == '/tmp'\n"
        "top = set(os.listdir('/'))\n"
        "assert top <= {'usr', 'bin', 'lib', 'lib32', 'lib64', 'libx32', 'sbin', 'proc', 'dev', 'tmp', 'sandbox',\n"
        "               sys.base_prefix.strip('/').split('/')[0]}, top\n"
        "assert not {'etc', 'home', 'run', 'sys', 'var', 'work'} & top, top\n"
        "pids = sorted(int(p) for p in os.listdir('/proc') if p.isdigit())\n"
        "assert pids[0] == 1 and len(pids) <= 3, pids\n"
        "assert [name for _, name in socket.if_nameindex()] == ['lo'], socket.if_nameindex()\n"
        "try:\n"
        "    open('/usr/evil', 'w')\n"
        "except OSError as exc:\n"
        "    assert exc.errno == 30, exc  # read-only file system\n"
        "else:\n"
        "    raise SystemExit('/usr is writable')\n"
        "os.mkdir('sub')\n"
        "with open('sub/data.txt', 'w') as f:\n"
        "    f.write('x' * 1000)\n"
        f"assert os.getuid() == {65534 if os.geteuid() == 0 else os.geteuid()}, os.getuid()  # never root\n"
    )
    r = run(program, root)
    assert r.status == "passed", r.message


def test_guard_mode_environment_and_work_dir_removed(root: Path) -> None:
    program = (
        "import os\n"
        "assert set(os.environ) <= {'PATH', 'LANG', 'LC_ALL', 'HOME', 'TMPDIR', 'OMP_NUM_THREADS'}, sorted(os.environ)\n"
        f"assert os.getcwd().startswith({str(root)!r}), os.getcwd()\n"
        "os.mkdir('sub')\n"
        "with open('sub/data.txt', 'w') as f:\n"
        "    f.write('x' * 1000)\n"
    )
    r = run(program, root, isolation="guard")
    assert r.status == "passed", r.message
    # the `root` fixture asserts the work dir is gone


@pytest.mark.parametrize("isolation", MODES)
def test_network_is_refused(root: Path, listener, isolation: str) -> None:
    port, connected = listener
    for program in (
        f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=1)",
        f"import socket\ns = socket.socket()\ns.settimeout(1)\ns.connect(('127.0.0.1', {port}))",
        "import urllib.request\nurllib.request.urlopen('http://127.0.0.1:9/', timeout=1)",
    ):
        r = run(program, root, isolation=isolation)
        assert r.status == "failed", r.message
        assert "network access is disabled" in r.message
    assert not connected()


def test_namespace_holds_when_the_socket_guard_is_bypassed(root: Path, listener) -> None:
    port, connected = listener
    # Reach the raw _socket.socket type past the guard; only the namespace stops it then: the
    # sandbox's loopback is its own, with nothing listening.
    program = (
        "import socket\n"
        "raw = socket.socket.__mro__[2]\n"
        "s = raw(socket.AF_INET, socket.SOCK_STREAM)\n"
        "s.settimeout(1)\n"
        "try:\n"
        f"    s.connect(('127.0.0.1', {port}))\n"
        "except OSError as exc:\n"
        f"    assert exc.errno in ({errno.ECONNREFUSED}, {errno.ENETUNREACH}), exc\n"
        "else:\n"
        "    raise SystemExit('connected')\n"
    )
    r = run(program, root)
    assert r.status == "passed", r.message
    assert not connected()


def test_unknown_isolation_is_refused(root: Path) -> None:
    with pytest.raises(ValueError, match="unknown isolation 'auto'"):
        run("pass", root, isolation="auto")


def test_no_bwrap_refuses_instead_of_falling_back(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    marker = root.parent / "ran"
    monkeypatch.setattr(sandbox.shutil, "which", lambda name: None)
    assert sandbox_problem() == BWRAP_MISSING
    with pytest.raises(SandboxUnavailable, match="bubblewrap is not installed"):
        run(f"open({str(marker)!r}, 'w').close()", root)
    assert not marker.exists()


def test_namespaces_refused_by_the_kernel(root: Path, request, monkeypatch: pytest.MonkeyPatch) -> None:
    """A bwrap that cannot create namespaces (what a kernel without user namespaces makes it say)."""
    fake = Path(tempfile.mkdtemp(prefix="evalcore-fake-bwrap-"))  # a folder uid 65534 may enter
    fake.chmod(0o755)
    request.addfinalizer(lambda: shutil.rmtree(fake))
    (fake / "bwrap").write_text("#!/bin/sh\necho 'bwrap: No permissions to creating new namespace, likely because "
                                "the kernel does not allow non-privileged user namespaces.' >&2\nexit 1\n")
    (fake / "bwrap").chmod(0o755)
    monkeypatch.setenv("PATH", str(fake))
    with pytest.raises(SandboxUnavailable, match="could not start: bwrap: No permissions"):
        run("pass", root)
    problem = sandbox_problem()
    assert problem is not None and "No permissions" in problem and "user namespaces" in problem
