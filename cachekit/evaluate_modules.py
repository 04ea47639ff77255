"""`evaluate` metrics offline: the module cache that `evaluate.load("accuracy")` reads when the
hub cannot be reached (HF_EVALUATE_OFFLINE=1 / HF_HUB_OFFLINE=1):
`$HF_MODULES_CACHE/evaluate_modules/metrics/evaluate-metric--accuracy/<hash>/accuracy.py`.

Import builds it from the metric's space (installed in the hub layout as well) with evaluate's
own code, in a staging folder, and moves it into place with the rest of the import.
"""

from __future__ import annotations

import re
from pathlib import Path

from . import manifest as mf

NAMESPACE = "evaluate_modules"
MODULE_TYPE = "metrics"  # evaluate caches metrics, comparisons and measurements all under "metrics"


def metric_repo(name: str) -> str:
    """`accuracy` -> `evaluate-metric/accuracy`; `org/name` (a community metric) as is."""
    return name if "/" in name else f"evaluate-metric/{name}"


def script_name(repo_id: str) -> str:
    """The file evaluate loads from a metric space: `<name>.py`."""
    return repo_id.split("/")[-1] + ".py"


def script_of(e: mf.Entry) -> mf.FileRecord | None:
    """The entry's evaluate script, if it is an evaluate module (a space with `<name>.py`)."""
    if e.repo_type != "space":
        return None
    return next((f for f in e.files if f.path == script_name(e.repo_id)), None)


def module_dir(root: Path, repo_id: str) -> Path:
    return root / NAMESPACE / MODULE_TYPE / repo_id.replace("/", "--")


def requirements(text: str) -> tuple[str, ...]:
    """The requirement lines of a space's requirements.txt (comments, options and blanks out)."""
    out = []
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if line and not line.startswith("-"):
            out.append(line)
    return tuple(out)


def installed(root: Path, e: mf.Entry, script: mf.FileRecord) -> bool:
    """True when the module cache already holds this very script (any hash folder)."""
    from .checksum import sha256_file

    folder = module_dir(root, e.repo_id)
    name = script_name(e.repo_id)
    for sub in folder.iterdir() if folder.is_dir() else ():
        if re.fullmatch(r"[0-9a-f]{64}", sub.name) and (sub / name).is_file() \
                and sha256_file(sub / name) == script.sha256:
            return True
    return False


def build(e: mf.Entry, files: dict[str, Path], scratch: Path) -> Path:
    """Make the importable module folder in `scratch` with evaluate's own function, from the
    space's files (manifest path -> file on disk); return the `<hash>` folder to move."""
    from evaluate.loading import _create_importable_file, get_imports

    dyn = scratch / NAMESPACE
    dyn.mkdir()
    (dyn / "__init__.py").touch()
    script = files[script_name(e.repo_id)]
    local_imports = []
    for kind, name, _path, _sub in get_imports(str(script)):
        if kind == "internal":  # `from .helper import x`: another file of the space
            rel = f"{name}.py"
            if rel not in files:
                raise FileNotFoundError(f"{e.repo_id}: {script.name} imports {rel}, which the bundle does not hold")
            local_imports.append((name, str(files[rel])))
    _module, digest = _create_importable_file(
        local_path=str(script), local_imports=local_imports, additional_files=[], dynamic_modules_path=str(dyn),
        module_namespace=MODULE_TYPE, name=e.repo_id, download_mode=None)
    return module_dir(scratch, e.repo_id) / digest
