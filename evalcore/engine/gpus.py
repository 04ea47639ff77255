"""Which GPUs the scheduler may use, without importing torch.

Order of sources: `EVALCORE_FAKE_GPUS` (a count or a comma list: fake devices, so the scheduler
runs and is tested on CPU; `CUDA_VISIBLE_DEVICES`, when set, keeps only the fake ids it lists),
then `CUDA_VISIBLE_DEVICES` (indices or GPU-/MIG- UUIDs; empty means none), then `nvidia-smi`,
else none. Device ids are strings and are handed to a worker unchanged
as its `CUDA_VISIBLE_DEVICES`.

nvidia-smi numbers GPUs in PCI bus order; CUDA's default order is fastest-first. On a machine
with mixed GPU models a runner using nvidia-smi ids should also set
`CUDA_DEVICE_ORDER=PCI_BUS_ID` for its workers.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Iterable, Mapping

from evalcore.errors import LeaseError

NVIDIA_SMI_TIMEOUT_S = 10.0
_UUID = re.compile(r"^(GPU|MIG)-[0-9A-Za-z/-]+$")


def discover_gpus(env: Mapping[str, str]) -> list[str]:
    """Device ids this process may schedule on (see the module docstring for the sources)."""
    fake = env.get("EVALCORE_FAKE_GPUS")
    visible = env.get("CUDA_VISIBLE_DEVICES")
    if fake is not None:  # CUDA_VISIBLE_DEVICES restricts fake devices as it restricts real ones
        ids = _parse_fake(fake)
        return ids if visible is None else [d for d in ids if d in set(_parse_visible(visible))]
    if visible is not None:
        return _parse_visible(visible)
    return _query_nvidia_smi(env.get("PATH"))


def visible_devices_env(ids: Iterable[str]) -> dict[str, str]:
    """The environment entry that restricts a worker to `ids`."""
    return {"CUDA_VISIBLE_DEVICES": ",".join(ids)}


def _parse_fake(value: str) -> list[str]:
    value = value.strip()
    if not value:
        return []
    if value.isdigit():
        return [str(i) for i in range(int(value))]
    ids = [v.strip() for v in value.split(",")]
    if not all(ids) or len(set(ids)) != len(ids):
        raise LeaseError(f"EVALCORE_FAKE_GPUS={value!r}: give a count (4) or distinct ids (0,1,2)",
                         hint="unset EVALCORE_FAKE_GPUS to use the real GPUs")
    return ids


def _parse_visible(value: str) -> list[str]:
    """CUDA's reading: entries up to the first invalid one ("-1" hides every GPU)."""
    out: list[str] = []
    for entry in (e.strip() for e in value.split(",")):
        if not (entry.isdigit() or _UUID.match(entry)):
            break
        if entry not in out:
            out.append(entry)
    return out


def _query_nvidia_smi(path: str | None) -> list[str]:
    exe = shutil.which("nvidia-smi", path=path)
    if exe is None:
        return []
    try:
        proc = subprocess.run([exe, "--query-gpu=index", "--format=csv,noheader"], capture_output=True,
                              text=True, timeout=NVIDIA_SMI_TIMEOUT_S, check=False)
    except (OSError, subprocess.SubprocessError):
        return []
    if proc.returncode != 0:
        return []
    return [line.strip() for line in proc.stdout.splitlines() if line.strip().isdigit()]
