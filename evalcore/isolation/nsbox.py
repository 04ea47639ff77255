"""The operating-system side of the code sandbox: the bubblewrap (`bwrap`) command line that puts
one program in its own user, mount, PID, network, IPC, UTS and cgroup namespaces, and, when
evalcore runs as root, the step that hands that command to an unprivileged user first.

What the sandboxed program sees (every path read-only except /tmp):

    /usr, and /bin /lib /lib64 /sbin as on the host (links or read-only binds)
    the interpreter's prefix (sys.base_prefix), if it is outside /usr
    /sandbox/program.py   the program (a copy, from a memory file)
    /proc                 of its own PID namespace: only its own processes
    /dev                  a minimal one (null, zero, random, urandom, tty, pts)
    /tmp                  a private tmpfs of a bounded size: working dir, HOME and TMPDIR

Nothing else: no run folder, HF cache, home, /etc, /run or /sys, no other process, no network
interface but its own loopback, no capability, no further user namespace. As root the sandbox
runs as uid/gid 65534 ("nobody"): root is exempt from RLIMIT_NPROC, so only an unprivileged
uid makes the process limit hold. When the interpreter lies under a folder that uid cannot
enter (/root/.pyenv, say), a private mount namespace of the launching child shows just that
prefix to it (a tmpfs over the closed folder with the prefix bound inside); the host's mounts
are not changed. Pure functions build the command; `Dropper` runs between fork and exec.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import stat
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass

SANDBOX_UID = SANDBOX_GID = 65534
PROGRAM_PATH = "/sandbox/program.py"
TOP_LEVEL_LINKS = ("/bin", "/lib", "/lib32", "/lib64", "/libx32", "/sbin")
ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8", "HOME": "/tmp",
       "TMPDIR": "/tmp", "OMP_NUM_THREADS": "1"}

_CLONE_NEWNS = 0x00020000
_MS_NOSUID, _MS_NODEV, _MS_BIND, _MS_REC, _MS_PRIVATE = 0x2, 0x4, 0x1000, 0x4000, 0x40000


@dataclass(frozen=True)
class Interpreter:
    """The Python that runs programs: the real binary behind sys.executable (a venv's python is a
    link to it) and the prefix holding its standard library."""

    executable: str
    prefix: str

    @classmethod
    def current(cls) -> Interpreter:
        return cls(os.path.realpath(sys.executable), os.path.realpath(sys.base_prefix))


def bwrap_argv(bwrap: str, interp: Interpreter, *, program_fd: int, info_fd: int, tmpfs_bytes: int,
               args: Sequence[str], host_links: dict[str, str | None]) -> list[str]:
    """The whole bwrap command line (pure). `host_links`: for each top-level name in
    TOP_LEVEL_LINKS present on the host, its link target, or None for a real directory."""
    argv = [bwrap, "--unshare-user", "--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts",
            "--unshare-cgroup-try", "--disable-userns", "--die-with-parent", "--cap-drop", "ALL",
            "--hostname", "sandbox", "--info-fd", str(info_fd),
            "--ro-bind", "/usr", "/usr"]
    for name, target in sorted(host_links.items()):
        argv += ["--symlink", target, name] if target is not None else ["--ro-bind", name, name]
    if not _under(interp.prefix, "/usr"):
        argv += ["--ro-bind", interp.prefix, interp.prefix]
    argv += ["--proc", "/proc", "--dev", "/dev", "--size", str(tmpfs_bytes), "--tmpfs", "/tmp",
             "--perms", "0444", "--ro-bind-data", str(program_fd), PROGRAM_PATH, "--chdir", "/tmp",
             "--clearenv"]
    for k, v in ENV.items():
        argv += ["--setenv", k, v]
    return [*argv, "--", interp.executable, "-I", "-B", *args]


def host_links() -> dict[str, str | None]:
    """What /bin, /lib, ... are on this host: link targets, or None for directories."""
    out: dict[str, str | None] = {}
    for name in TOP_LEVEL_LINKS:
        if os.path.islink(name):
            out[name] = os.readlink(name)
        elif os.path.isdir(name):
            out[name] = None
    return out


def _under(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def closed_ancestor(path: str, uid: int = SANDBOX_UID) -> str | None:
    """The topmost folder on the way to `path` that `uid` may not enter (no search bit for it),
    or None when the whole way is open."""
    parts = path.strip("/").split("/")
    for i in range(1, len(parts)):
        folder = "/" + "/".join(parts[:i])
        st = os.stat(folder)
        bit = stat.S_IXUSR if st.st_uid == uid else stat.S_IXOTH
        if not st.st_mode & bit:
            return folder
    return None


class Dropper:
    """Between fork and exec (as root only): a private mount namespace that shows the
    interpreter's prefix to the sandbox uid if needed, then uid/gid 65534 with no groups.
    Everything it calls is looked up before the fork."""

    def __init__(self, interp: Interpreter, then: Callable[[], None]) -> None:
        self.then = then
        self.closed = closed_ancestor(interp.prefix)
        self.prefix = interp.prefix
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        self._unshare, self._mount = libc.unshare, libc.mount
        self._mount.argtypes = (ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p)

    def _call(self, fn, *args) -> None:
        if fn(*args) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"sandbox setup: {os.strerror(err)}")

    def __call__(self) -> None:
        self.then()  # rlimits first, while still root
        if self.closed is not None:
            self._call(self._unshare, _CLONE_NEWNS)
            self._call(self._mount, b"none", b"/", None, _MS_REC | _MS_PRIVATE, None)
            fd = os.open(self.prefix, os.O_PATH | os.O_DIRECTORY)  # in the new namespace, before hiding it
            self._call(self._mount, b"tmpfs", self.closed.encode(), b"tmpfs", _MS_NOSUID | _MS_NODEV,
                       b"mode=0755,size=1m")
            os.makedirs(self.prefix, mode=0o755, exist_ok=True)
            self._call(self._mount, f"/proc/self/fd/{fd}".encode(), self.prefix.encode(), None,
                       _MS_BIND | _MS_REC, None)
            os.close(fd)
        os.setgroups([])
        os.setresgid(SANDBOX_GID, SANDBOX_GID, SANDBOX_GID)
        os.setresuid(SANDBOX_UID, SANDBOX_UID, SANDBOX_UID)
