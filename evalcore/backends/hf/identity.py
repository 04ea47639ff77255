"""What the HF backend's answers depend on (`identity`): content hashes of the weights, config and
tokenizer files (a local copy and the hub cache of the same files agree), the class, dtype,
chat template, maximum length, the kwargs that change results and the library versions.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any

import torch
import transformers

from evalcore.backends.checkpoint import TOKENIZER_FILES, WEIGHT_SUFFIXES
from evalcore.backends.hf.loading import _Source

NON_SEMANTIC_KWARGS = frozenset({"cache_dir", "device_map", "local_files_only", "low_cpu_mem_usage",
                                 "max_memory", "offload_folder", "offload_state_dict", "force_download",
                                 "token", "revision"})
_SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")


def _sha256_bytes(*parts: bytes) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(len(p).to_bytes(8, "little"))
        h.update(p)
    return h.hexdigest()


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(8 << 20):
            h.update(chunk)
    return h.hexdigest()


def _canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def _semantic(kwargs: dict[str, Any]) -> dict[str, Any]:
    """The kwargs that can change results, JSON-normalised (device placement and paths dropped)."""
    return json.loads(_canonical({k: v for k, v in kwargs.items() if k not in NON_SEMANTIC_KWARGS}))



class Identity:
    """HFBackend's identity (mixed into `HFBackend`)."""

    def identity(self) -> dict[str, Any]:
        """What the answers depend on. `digest` is a sha256 over the content fields (weights and
        config hash, class, dtype, tokenizer and chat template hashes, max length, kwargs that
        change results, library versions), so a local copy and the hub cache of the same files
        agree; `model_commit` / `tokenizer_commit` (hub snapshots) and `source` are informative."""
        self._check_open()
        if self._identity is None:
            self._identity = self._compute_identity()
        return dict(self._identity)

    def _folder_commit(self, source: _Source) -> tuple[Path | None, str | None]:
        folder = source.snapshot_folder(self._cache_dir)
        commit = None
        if folder is not None and not source.local and folder.parent.name == "snapshots":
            commit = folder.name
        return folder, commit

    def _model_hash(self, folder: Path | None) -> str:
        """sha256 over config.json, generation_config.json and each weight file's name, size and
        sha256. In the hub cache a weight blob is named by its sha256 (LFS), so nothing is read;
        a local folder's weights are hashed once per backend."""
        if folder is None:
            return _sha256_bytes(_canonical(self.model.config.to_dict()).encode())
        h = hashlib.sha256()
        for f in sorted(folder.iterdir(), key=lambda p: p.name):
            if not f.is_file():
                continue
            if f.name.endswith(WEIGHT_SUFFIXES) or f.name.endswith(".index.json"):
                real = Path(os.path.realpath(f))
                digest = real.name if _SHA256_HEX.match(real.name) and real.parent.name == "blobs" \
                    else _sha256_file(real)
                h.update(f"{f.name}:{real.stat().st_size}:{digest}\n".encode())
            elif f.name in ("config.json", "generation_config.json"):
                h.update(f"{f.name}:".encode())
                h.update(f.read_bytes())
        return h.hexdigest()

    def _tokenizer_hash(self, folder: Path | None) -> str:
        files = [folder / n for n in TOKENIZER_FILES] if folder is not None else []
        files = [f for f in files if f.is_file()]
        if not files:
            vocab = _canonical(sorted(self.tokenizer.get_vocab().items()))
            return _sha256_bytes(vocab.encode(), _canonical(self.tokenizer.special_tokens_map).encode())
        return _sha256_bytes(*(f.name.encode() + b"\0" + f.read_bytes() for f in files))

    def _compute_identity(self) -> dict[str, Any]:
        model_folder, model_commit = self._folder_commit(self._model_src)
        tok_folder, tok_commit = self._folder_commit(self._tok_src)
        template = getattr(self.tokenizer, "chat_template", None)
        ident: dict[str, Any] = {
            "backend": "hf",
            "model_hash": self._model_hash(model_folder),
            "model_class": type(self.model).__name__,
            "model_type": getattr(self.model.config, "model_type", None),
            "dtype": str(self.model.dtype).replace("torch.", ""),
            "tokenizer_class": type(self.tokenizer).__name__,
            "tokenizer_hash": self._tokenizer_hash(tok_folder),
            "chat_template": bool(self.settings.chat_template),
            "chat_template_hash": _sha256_bytes(_canonical(template).encode()) if template else None,
            "max_length": self.max_length,
            "model_kwargs": _semantic(self._model_kwargs),
            "tokenizer_kwargs": _semantic(self._tokenizer_kwargs),
            "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
        }
        ident["digest"] = hashlib.sha256(_canonical(ident).encode()).hexdigest()
        ident.update(model_commit=model_commit, tokenizer_commit=tok_commit, source={
            "model_path": self.settings.path, "model_revision": self.settings.revision,
            "tokenizer_path": self.settings.tokenizer_path or self.settings.path,
            "tokenizer_revision": self.settings.tokenizer_revision if self.settings.tokenizer_path
            else self.settings.revision})
        return ident
