"""Where things live: the standard Hugging Face cache layout and cachekit's dataset store.

Environment variables are read when a function is called, never at import.
"""

from __future__ import annotations

import os
from pathlib import Path


def hf_home() -> Path:
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(xdg) / "huggingface"


def hub_cache() -> Path:
    """The hub cache huggingface_hub and transformers read (HF_HUB_CACHE > HF_HOME/hub)."""
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(var):
            return Path(os.environ[var]).expanduser()
    return hf_home() / "hub"


def store_root() -> Path:
    """cachekit's dataset store and index (CACHEKIT_HOME > HF_HOME/cachekit)."""
    if os.environ.get("CACHEKIT_HOME"):
        return Path(os.environ["CACHEKIT_HOME"]).expanduser()
    return hf_home() / "cachekit"


def repo_folder(repo_type: str, repo_id: str) -> str:
    """`models--org--name`, as huggingface_hub names a repo's folder in the cache."""
    return f"{repo_type}s--{repo_id.replace('/', '--')}"


def blob_path(cache: Path, repo_type: str, repo_id: str, etag: str) -> Path:
    return cache / repo_folder(repo_type, repo_id) / "blobs" / etag


def snapshot_path(cache: Path, repo_type: str, repo_id: str, commit: str, path: str = "") -> Path:
    base = cache / repo_folder(repo_type, repo_id) / "snapshots" / commit
    return base / path if path else base


def ref_path(cache: Path, repo_type: str, repo_id: str, revision: str) -> Path:
    return cache / repo_folder(repo_type, repo_id) / "refs" / revision


def dataset_file(store: Path, repo_id: str, commit: str, path: str) -> Path:
    return store / "datasets" / repo_id.replace("/", "--") / commit / path


def datasets_cache() -> Path:
    """The `datasets` library's cache (HF_DATASETS_CACHE > HF_HOME/datasets)."""
    if os.environ.get("HF_DATASETS_CACHE"):
        return Path(os.environ["HF_DATASETS_CACHE"]).expanduser()
    return hf_home() / "datasets"


def modules_cache() -> Path:
    """Where `evaluate` keeps importable metric modules (HF_MODULES_CACHE > HF_HOME/modules)."""
    if os.environ.get("HF_MODULES_CACHE"):
        return Path(os.environ["HF_MODULES_CACHE"]).expanduser()
    return hf_home() / "modules"
