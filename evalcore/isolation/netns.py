"""Offline by the kernel: start a process in a network namespace of its own, where loopback is the
only interface (and is up), so that no code path, Python or native, can reach another host.

    python -m evalcore.isolation.netns -- COMMAND [ARG...]

moves itself into the namespace, then execs COMMAND (same pid, environment, files, mounts and
processes as before; only the network differs). As root it needs nothing more; otherwise the
namespace comes with a user namespace that maps this user's uid and gid to themselves, which
works where the kernel allows unprivileged user namespaces. Workers of an `--offline` run are
started this way (evalcore/runners/local.py); they talk to the driver through SQLite files on
disk, which a network namespace does not touch. The loopback inside is the namespace's own: a
service on the host's 127.0.0.1 is out of reach too.

Where it cannot work, `netns_problem()` says why, and evalcore keeps the Python socket guard
alone (evalcore/isolation/offline.py), saying so and recording it in the run.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import fcntl
import os
import socket
import struct
import subprocess
import sys

CLONE_NEWUSER, CLONE_NEWNET = 0x10000000, 0x40000000
_SIOCGIFFLAGS, _SIOCSIFFLAGS, _IFF_UP = 0x8913, 0x8914, 0x1
_IFREQ = "16sH22x"  # struct ifreq: name, flags, padding to 40 bytes

# Run by netns_problem() through the launcher: only loopback, up, and usable.
_CHECK = (
    "import socket\n"
    "names = [n for _, n in socket.if_nameindex()]\n"
    "assert names == ['lo'], names\n"
    "s = socket.socket(); s.bind(('127.0.0.1', 0)); s.listen(1)\n"
    "c = socket.create_connection(s.getsockname(), timeout=5); c.close()\n"
)


def launcher(command: list[str]) -> list[str]:
    """`command`, started inside a new loopback-only network namespace (pure)."""
    return [sys.executable, "-m", "evalcore.isolation.netns", "--", *command]


def enter() -> None:
    """Move this process into a new network namespace (plus a user namespace without root) and
    bring its loopback up. Raises OSError naming what the kernel refused."""
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    uid, gid = os.getuid(), os.getgid()
    flags = CLONE_NEWNET if os.geteuid() == 0 else CLONE_NEWUSER | CLONE_NEWNET
    if libc.unshare(flags) != 0:
        err = ctypes.get_errno()
        what = "a network namespace" if flags == CLONE_NEWNET else "a user + network namespace"
        raise OSError(err, f"the kernel refused {what}: {os.strerror(err)}")
    if flags & CLONE_NEWUSER:
        for name, text in (("setgroups", "deny"), ("uid_map", f"{uid} {uid} 1"), ("gid_map", f"{gid} {gid} 1")):
            with open(f"/proc/self/{name}", "w") as f:
                f.write(text)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        got = fcntl.ioctl(s.fileno(), _SIOCGIFFLAGS, struct.pack(_IFREQ, b"lo", 0))
        lo_flags = struct.unpack(_IFREQ, got)[1]
        fcntl.ioctl(s.fileno(), _SIOCSIFFLAGS, struct.pack(_IFREQ, b"lo", lo_flags | _IFF_UP))


def netns_problem() -> str | None:
    """None when workers can start in a loopback-only network namespace here; otherwise why not
    and how to allow it. Starts one small process (a fraction of a second): call it once."""
    try:
        done = subprocess.run(launcher([sys.executable, "-I", "-c", _CHECK]), stdin=subprocess.DEVNULL,
                              capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"could not start the check: {exc}"
    if done.returncode == 0:
        return None
    lines = (done.stderr or "").strip().splitlines()
    detail = lines[-1] if lines else f"exit status {done.returncode}"
    return (f"{detail} (run as root, or allow unprivileged user namespaces: "
            "sysctl -w kernel.unprivileged_userns_clone=1 user.max_user_namespaces=15000)")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] != "--" or len(argv) < 2:
        print("usage: python -m evalcore.isolation.netns -- COMMAND [ARG...]", file=sys.stderr)
        return 2
    command = argv[1:]
    try:
        enter()
    except OSError as exc:
        print(f"evalcore.isolation.netns: {exc.strerror or exc}", file=sys.stderr)
        return 3
    try:
        os.execvp(command[0], command)
    except OSError as exc:
        print(f"evalcore.isolation.netns: cannot run {command[0]}: {exc.strerror or exc}", file=sys.stderr)
        return 127


if __name__ == "__main__":
    sys.exit(main())
