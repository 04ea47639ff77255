"""`cachekit prefetch --wheels`: the toolkit's own wheel and every dependency wheel for a named
target platform and Python, so the offline host installs the toolkit from the bundle:

    pip install --no-index --find-links BUNDLE/wheels cachekit-evalcore

The toolkit's wheel is built from its source tree (`pip wheel --no-deps`); the dependencies are
resolved and downloaded by `pip download --only-binary=:all: --python-version V --platform P`,
torch pinned (`--torch`, default as the Makefile's TORCH_SPEC), the other versions held by the
source tree's constraints.txt (the versions the test suite runs with). Pure command building is
kept apart from running pip.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from . import manifest as mf
from .errors import UsageError, WheelError

PROJECT = "cachekit-evalcore"
DEFAULT_TORCH = "torch==2.13.0"
_PY_VERSION = re.compile(r"^3\.\d{1,2}$")
_PLATFORM = re.compile(r"^[a-z0-9_]+$")
_TORCH_PIN = re.compile(r"^torch==[0-9][0-9A-Za-z.+]*$")
_MANYLINUX = re.compile(r"^manylinux_2_(\d+)_(\w+)$")
_LEGACY = {17: "manylinux2014", 12: "manylinux2010", 5: "manylinux1"}
_CONFLICT = re.compile(r"Cannot install (\S+) because these package versions have conflicting dependencies")
_NO_MATCH = re.compile(r"(?:No matching distribution found for|Could not find a version that satisfies "
                       r"the requirement) (\S+)")


@dataclass(frozen=True)
class WheelTarget:
    """What the wheels are for: pip's --python-version, --platform tags and the torch pin."""

    python_version: str
    platforms: tuple[str, ...]
    torch: str = DEFAULT_TORCH

    def describe(self) -> str:
        return f"Python {self.python_version} on {', '.join(self.platforms)}"

    def as_dict(self) -> dict:
        return {"python_version": self.python_version, "platforms": list(self.platforms),
                "platform_tags": list(platform_tags(self.platforms)), "torch": self.torch}


def platform_tags(platforms: tuple[str, ...]) -> tuple[str, ...]:
    """The tags pip download is given: each asked tag, and for `manylinux_2_Y_ARCH` every older
    glibc tag too (down to manylinux_2_5 and the manylinux2014/2010/1 names), which a glibc 2.Y
    host installs as well. pip download does not widen them itself; pip install on the host does."""
    out: list[str] = []
    for p in platforms:
        out.append(p)
        m = _MANYLINUX.match(p)
        if m:
            for y in range(int(m.group(1)), 4, -1):
                out.append(f"manylinux_2_{y}_{m.group(2)}")
                if y in _LEGACY:
                    out.append(f"{_LEGACY[y]}_{m.group(2)}")
    return tuple(dict.fromkeys(out))


def make_target(python_version: str | None, platforms: tuple[str, ...], torch: str | None) -> WheelTarget:
    """Validate the user's target; every value is used as given or refused."""
    if not python_version:
        raise UsageError("--wheels needs --python-version (the offline host's Python, e.g. 3.11)")
    if not _PY_VERSION.match(python_version):
        raise UsageError(f"--python-version {python_version!r} is not MAJOR.MINOR (e.g. 3.11)")
    if not platforms:
        raise UsageError("--wheels needs --platform (the offline host's wheel platform tag, "
                         "e.g. manylinux_2_28_x86_64; repeatable)")
    for p in platforms:
        if not _PLATFORM.match(p):
            raise UsageError(f"--platform {p!r} is not a wheel platform tag (e.g. manylinux_2_28_x86_64)")
    torch = torch or DEFAULT_TORCH
    if not _TORCH_PIN.match(torch):
        raise UsageError(f"--torch {torch!r} is not a pinned torch (torch==VERSION)")
    return WheelTarget(python_version, tuple(dict.fromkeys(platforms)), torch)


def source_tree() -> Path:
    """The toolkit's source tree (pyproject.toml of cachekit-evalcore next to the package)."""
    root = Path(__file__).resolve().parent.parent
    pyproject = root / "pyproject.toml"
    if not pyproject.is_file() or f'name = "{PROJECT}"' not in pyproject.read_text(encoding="utf-8"):
        raise UsageError(f"--wheels builds the {PROJECT} wheel from its source tree, and {root} is not one",
                         hint="run cachekit from a checkout of the toolkit (pip install -e .)")
    return root


SOURCE_FILES = ("pyproject.toml", "README.md")
SOURCE_PACKAGES = ("cachekit", "evalcore", "cli")


def copy_source(root: Path, dest: Path) -> Path:
    """A clean copy of what the wheel is built from: setuptools writes build/ and *.egg-info
    next to its input, and the user's tree stays as it is."""
    dest.mkdir(parents=True)
    for name in SOURCE_FILES:
        shutil.copy2(root / name, dest / name)
    for name in SOURCE_PACKAGES:
        shutil.copytree(root / name, dest / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return dest


def build_command(root: Path, dest: Path) -> list[str]:
    return [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
            "--wheel-dir", str(dest), str(root)]


def download_command(target: WheelTarget, own_wheel: Path, dest: Path, constraints: Path | None) -> list[str]:
    cmd = [sys.executable, "-m", "pip", "download", "-q", "--dest", str(dest), "--only-binary=:all:",
           "--python-version", target.python_version, "--implementation", "cp"]
    for p in platform_tags(target.platforms):
        cmd += ["--platform", p]
    if constraints is not None:
        cmd += ["-c", str(constraints)]
    return cmd + [str(own_wheel), target.torch]


def _pip(cmd: list[str], what: str, target: WheelTarget) -> None:
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode == 0:
        return
    missing = _NO_MATCH.search(r.stderr)
    if missing:
        raise WheelError(f"no wheel of {missing.group(1).rstrip(';')} for {target.describe()} ({what})",
                         hint="pick a --platform/--python-version that the package ships wheels for")
    conflict = _CONFLICT.search(r.stderr)
    if conflict:
        raise WheelError(f"no wheels of {conflict.group(1)} and its dependencies that fit {target.describe()} "
                         f"(pip download: conflicting dependencies)",
                         hint="pick a --platform/--python-version that the packages ship wheels for, or another --torch")
    lines = [x.strip() for x in r.stderr.splitlines() if x.strip()]
    first = next((x.removeprefix("ERROR: ") for x in lines if x.startswith("ERROR:")), lines[-1] if lines else "")
    raise WheelError(f"{what} failed: {first or f'exit {r.returncode}'}")


def preflight() -> Path:
    """What can be checked before a bundle folder exists: pip runs, the source tree is there."""
    if subprocess.run([sys.executable, "-m", "pip", "--version"], capture_output=True).returncode != 0:
        raise WheelError("pip is not installed in this Python, and --wheels runs pip",
                         hint=f"{sys.executable} -m ensurepip, or install pip")
    return source_tree()


def fetch_wheels(writer, target: WheelTarget, log: Callable[[str], None]) -> tuple[mf.FileRecord, ...]:
    """Build and download every wheel into the writer's staging area; return their records."""
    root = preflight()
    work = writer.partial / "wheels-download"
    shutil.rmtree(work, ignore_errors=True)
    try:
        own, deps = work / "own", work / "deps"
        log(f"wheels: building {PROJECT} from {root}")
        _pip(build_command(copy_source(root, work / "src"), own), f"building the {PROJECT} wheel", target)
        own_wheel = next(iter(sorted(own.glob("*.whl"))), None)
        if own_wheel is None:
            raise WheelError(f"building the {PROJECT} wheel wrote no .whl")
        constraints = root / "constraints.txt"
        log(f"wheels: downloading dependencies for {target.describe()}, {target.torch}")
        _pip(download_command(target, own_wheel, deps, constraints if constraints.is_file() else None),
             "pip download", target)
        files = {p.name: p for p in sorted(deps.glob("*.whl"))}
        files[own_wheel.name] = own_wheel
        records = tuple(writer.add_wheel(p) for _, p in sorted(files.items()))
    except BaseException:
        shutil.rmtree(writer.partial / mf.WHEELS_DIR, ignore_errors=True)
        raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    log(f"wheels: {len(records)} files, {sum(r.size for r in records) / 2**20:.0f} MiB")
    return records


def install_command(bundle: str) -> str:
    """The offline install, as `cachekit import` prints it and the README shows it."""
    return f"pip install --no-index --find-links {bundle}/{mf.WHEELS_DIR} {PROJECT}"
