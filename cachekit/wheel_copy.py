"""`cachekit wheels BUNDLE --out DIR`: the bundle's wheel files (`prefetch --wheels`) copied into
a folder for `pip install --no-index --find-links DIR`, each checked against its sha256 as it is
copied. The folder appears complete or not at all."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from ._fs import temp_sibling, write_error
from .bundle import open_bundle
from .checksum import copy_and_hash
from .errors import NotFoundError, UsageError, VerificationError


def extract_wheels(bundle: str | os.PathLike, out: Path) -> int:
    """Copy every wheel of `bundle` into `out` (new or empty); return how many."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UsageError(f"--out {out} exists and is not an empty folder")
    with open_bundle(bundle) as reader:
        m = reader.manifest()
        if not m.wheels:
            raise NotFoundError(f"{bundle} holds no wheels",
                                hint="prefetch it with --wheels --python-version X.Y --platform TAG")
        tmp = temp_sibling(out, "wheels")
        try:
            tmp.mkdir(parents=True)
            problems = []
            for w in m.wheels:
                size = reader.member_size(w.path)
                if size is None:
                    problems.append(f"missing: {w.path}")
                    continue
                with reader.open_member(w.path) as src:
                    sha, n = copy_and_hash(src, tmp / Path(w.path).name)
                if (sha, n) != (w.sha256, w.size):
                    problems.append(f"corrupt: {w.path} (sha256 {sha[:12]}…, {n} bytes)")
            if problems:
                raise VerificationError(problems)
            if out.exists():
                out.rmdir()
            os.replace(tmp, out)
        except OSError as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            raise write_error(exc, out) from exc
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return len(m.wheels)
