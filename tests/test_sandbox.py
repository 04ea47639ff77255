"""evalcore.sandbox: HumanEval checks run in a limited child process, network only to loopback."""

from __future__ import annotations

import errno
import socket
from pathlib import Path

import pytest

from evalcore.sandbox import (
    ExecutionNotAllowedError,
    Limits,
    check_humaneval,
    humaneval_program,
    network_namespace_available,
    run_program,
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

NETNS = network_namespace_available()
needs_netns = pytest.mark.skipif(not NETNS, reason="unshare -rn does not work on this host")
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
    return run_program(program, allow_execution=True, tmp_root=root, **kw)


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
    assert r.isolation == ("netns" if NETNS else "guard")


def test_wrong_solution_fails(root: Path) -> None:
    r = check_humaneval(HUMANEVAL_0, "    return False\n", allow_execution=True, limits=FAST, tmp_root=root)
    assert (r.passed, r.status) == (False, "failed")
    assert r.message.startswith("AssertionError")


def test_garbage_completion_is_an_error(root: Path) -> None:
    r = check_humaneval(HUMANEVAL_0, "    return (((\n", allow_execution=True, limits=FAST, tmp_root=root)
    assert (r.passed, r.status) == (False, "error")
    assert "SyntaxError" in r.message


def test_exit_does_not_count_as_a_pass(root: Path) -> None:
    assert run("import sys\nsys.exit(0)", root).status == "failed"
    r = run("import os\nos._exit(0)", root)
    assert (r.passed, r.status) == (False, "failed")


def test_infinite_loop_times_out(root: Path) -> None:
    r = run("while True:\n    pass", root)
    assert (r.passed, r.status) == (False, "timeout")
    assert r.duration_s < FAST.timeout_s + 1.0


def test_sleeping_program_hits_the_wall_clock(root: Path) -> None:
    r = run("import time\ntime.sleep(60)", root)
    assert r.status == "timeout" and "wall-clock" in r.message
    assert r.duration_s < FAST.timeout_s + 1.0


def test_cpu_limit(root: Path) -> None:
    r = run("while True:\n    pass", root, limits=Limits(timeout_s=10.0, cpu_s=1))
    assert r.status == "timeout" and "CPU" in r.message
    assert r.duration_s < 4.0


@pytest.mark.parametrize("program", [
    "x = bytearray(2 << 30)",
    "chunks = []\nwhile True:\n    chunks.append(bytearray(10 ** 7))",
])
def test_memory_hog_is_stopped(root: Path, program: str) -> None:
    r = run(program, root, limits=Limits(timeout_s=5.0, memory_bytes=256 << 20))
    assert (r.passed, r.status) == (False, "oom")
    assert r.duration_s < 4.0


def test_file_size_limit(root: Path) -> None:
    r = run("open('big', 'wb').write(b'x' * (4 << 20))", root)
    assert r.status == "failed" and "File too large" in r.message


def test_process_creation_is_blocked(root: Path) -> None:
    r = run("import subprocess\nsubprocess.run(['true'])", root)
    assert r.status == "failed" and "PermissionError" in r.message
    assert run("import os\nos.fork()", root).status == "failed"


def test_minimal_environment_and_work_dir_removed(root: Path) -> None:
    program = (
        "import os\n"
        "assert set(os.environ) <= {'PATH', 'LANG', 'LC_ALL', 'HOME', 'TMPDIR', 'OMP_NUM_THREADS'}, sorted(os.environ)\n"
        f"assert os.getcwd().startswith({str(root)!r}), os.getcwd()\n"
        "os.mkdir('sub')\n"
        "with open('sub/data.txt', 'w') as f:\n"
        "    f.write('x' * 1000)\n"
    )
    r = run(program, root)
    assert r.status == "passed", r.message
    # the `root` fixture asserts the work dir is gone


@pytest.mark.parametrize("isolation", ["guard", pytest.param("netns", marks=needs_netns)])
def test_network_is_refused(root: Path, listener, isolation: str) -> None:
    port, connected = listener
    for program in (
        f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=1)",
        f"import socket\ns = socket.socket()\ns.settimeout(1)\ns.connect(('127.0.0.1', {port}))",
        "import urllib.request\nurllib.request.urlopen('http://127.0.0.1:9/', timeout=1)",
    ):
        r = run(program, root, isolation=isolation)
        assert r.isolation == isolation
        assert r.status == "failed", r.message
        assert "network access is disabled" in r.message
    assert not connected()


@needs_netns
def test_netns_holds_when_the_socket_guard_is_bypassed(root: Path, listener) -> None:
    port, connected = listener
    # Reach the raw _socket.socket type past the guard; only the namespace stops it then.
    program = (
        "import socket\n"
        "raw = socket.socket.__mro__[2]\n"
        "s = raw(socket.AF_INET, socket.SOCK_STREAM)\n"
        "s.settimeout(1)\n"
        "try:\n"
        f"    s.connect(('127.0.0.1', {port}))\n"
        "except OSError as exc:\n"
        f"    assert exc.errno == {errno.ENETUNREACH}, exc\n"
        "else:\n"
        "    raise SystemExit('connected')\n"
        "assert [name for _, name in socket.if_nameindex()] == ['lo'], socket.if_nameindex()\n"
    )
    r = run(program, root, isolation="netns")
    assert r.status == "passed", r.message
    assert not connected()


def test_auto_falls_back_to_the_guard(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import evalcore.sandbox as sandbox

    monkeypatch.setattr(sandbox, "network_namespace_available", lambda: False)
    r = run("import socket\nsocket.socket()", root, isolation="auto")
    assert r.isolation == "guard"
    assert r.status == "failed" and "network access is disabled" in r.message


def test_netns_without_unshare_is_an_error(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import evalcore.sandbox as sandbox

    monkeypatch.setattr(sandbox.shutil, "which", lambda name: None)
    assert sandbox.network_namespace_available() is False
    r = run("pass", root, isolation="netns")
    assert (r.passed, r.status) == (False, "error") and "unshare" in r.message
