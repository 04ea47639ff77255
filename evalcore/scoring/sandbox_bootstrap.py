"""The program the sandbox's child interpreter runs (`python -I -c BOOTSTRAP ...`) before the
model-written code: the guards, the process limit, and the report of the outcome. It is source
text, not imported code: nothing here runs in evalcore's own process.
"""

# Runs in the child with -I (no PYTHON* variables, no user site, no cwd on sys.path).
# argv: [-c, status fd, program path, process limit]. Sets RLIMIT_NPROC (inside the sandbox's own
# user namespace it counts only the sandbox's processes), then reports JSON lines on the status
# fd: "started" once the guards are in, then the outcome. Keeps its own references to what it
# needs after the guards.
BOOTSTRAP = r'''
import json, os, sys

def _main():
    fd, path, nproc = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    if nproc > 0:
        import resource
        resource.setrlimit(resource.RLIMIT_NPROC, (nproc, nproc))
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
