"""Shared fixtures: no network beyond loopback, the local hub server, CLI runners, tiny model."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NETGUARD = Path(__file__).parent / "netguard"
ARC_JSONL = ROOT / "bundles" / "demo" / "data" / "ai2_arc" / "ARC-Easy" / "validation.jsonl"

from evalcore.isolation.offline import install_socket_guard  # noqa: E402

install_socket_guard()  # in this process; subprocesses get it from tests/netguard/sitecustomize.py

from scripts.hubserver import HubServer  # noqa: E402
from tests.helpers.waiting import wait_for  # noqa: E402,F401  (imported from here by many tests)


@pytest.fixture
def hub_server() -> Iterator[HubServer]:
    """A started local hub server (scripts/hubserver.py), stopped after the test."""
    hub = HubServer().start()
    try:
        yield hub
    finally:
        hub.stop()


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """One torch thread for a module's tests (`pytestmark = pytest.mark.usefixtures(...)`): on
    a shared 2-core machine, 2 threads against a busy core crawl."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def clean_env(**extra: str) -> dict[str, str]:
    """The environment for a subprocess: no HF settings from the host, the net guard loaded."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("HF_", "HUGGINGFACE_", "TRANSFORMERS_", "CACHEKIT_", "EVALCORE_"))}
    env.update(PYTHONPATH=os.pathsep.join([str(NETGUARD), str(ROOT)]), HF_HUB_DISABLE_TELEMETRY="1",
               HF_HUB_DISABLE_PROGRESS_BARS="1", TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1")
    env.update(extra)
    return env


def run_cli(tool: str, *args: str, env: dict[str, str], timeout: float = 300, **kw) -> subprocess.CompletedProcess:
    """Run `cachekit` or `evalcore` in a fresh interpreter, as a user would."""
    return subprocess.run([sys.executable, "-m", f"cli.{tool}_cli", *map(str, args)], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout, **kw)


def tree_state(path: Path) -> dict[str, tuple]:
    """Everything under `path`, `path` itself and every folder included: type, mode, size,
    content hash or link target. {} means `path` does not exist; an empty folder is
    {"": ("dir", mode)}. Compare before/after."""
    state: dict[str, tuple] = {}
    if not os.path.lexists(path):
        return state
    state[""] = ("dir", os.lstat(path).st_mode) if Path(path).is_dir() else ("file",)
    for dirpath, dirnames, filenames in os.walk(path):
        for name in dirnames + filenames:
            p = Path(dirpath, name)
            rel = p.relative_to(path).as_posix()
            st = p.lstat()
            if p.is_symlink():
                state[rel] = ("link", os.readlink(p))
            elif p.is_dir():
                state[rel] = ("dir", st.st_mode)
            else:
                state[rel] = ("file", st.st_mode, st.st_size, hashlib.sha256(p.read_bytes()).hexdigest())
    return state


@pytest.fixture
def homes(tmp_path: Path, hub_server) -> dict[str, str]:  # noqa: F811
    """A fresh HF home pointed at the local hub; returns the env for CLI subprocesses."""
    return clean_env(HF_HOME=str(tmp_path / "hf"), HF_ENDPOINT=hub_server.url)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A tiny real Llama checkpoint (safetensors + tokenizer), built once per test session."""
    out = tmp_path_factory.mktemp("tiny-model")
    subprocess.run([sys.executable, str(ROOT / "scripts" / "make_tiny_model.py"), str(out)],
                   env=clean_env(), cwd=ROOT, check=True, timeout=300)
    return out


@pytest.fixture(scope="session")
def arc_parquet_repo(tmp_path_factory) -> dict[str, Path]:
    """ARC-Easy validation as the hub lays it out: README with configs + one Parquet file."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    root = tmp_path_factory.mktemp("arc-repo")
    rows = [json.loads(line) for line in ARC_JSONL.read_text().splitlines()]
    (root / "ARC-Easy").mkdir()
    pq.write_table(pa.Table.from_pylist(rows), root / "ARC-Easy" / "validation-00000-of-00001.parquet")
    (root / "README.md").write_text(
        "---\nlicense: cc-by-sa-4.0\nconfigs:\n- config_name: ARC-Easy\n  data_files:\n"
        "  - split: validation\n    path: ARC-Easy/validation-*\n---\n# ai2_arc (ARC-Easy validation only)\n")
    return {"README.md": root / "README.md",
            "ARC-Easy/validation-00000-of-00001.parquet": root / "ARC-Easy" / "validation-00000-of-00001.parquet"}


def arc_rows() -> list[dict]:
    return [json.loads(line) for line in ARC_JSONL.read_text().splitlines()]


def commit_folder(hub, repo_id: str, folder: Path, **kw) -> str:
    files = {p.relative_to(folder).as_posix(): p for p in sorted(folder.rglob("*")) if p.is_file()}
    return hub.commit(repo_id, files, **kw)
