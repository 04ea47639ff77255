"""Checks of a local model folder before anything loads it: config, tokenizer files, every weight
file the index names, and each safetensors file's header (readable, and the file as long as the
header says). Reads headers only (a few KB per file), never the weights. Pure file checks: no HF
library is imported."""

from __future__ import annotations

import json
import struct
from pathlib import Path

from evalcore.backends.checkpoint import TOKENIZER_SETS, WEIGHT_FILES, WEIGHT_INDEXES

MAX_HEADER = 100 * 1024 * 1024  # safetensors' own limit


def model_folder_problems(folder: Path, *, needs_tokenizer: bool = True) -> list[str]:
    """Every problem of a local checkpoint folder, in words (empty: it can be loaded)."""
    problems = []
    cfg = folder / "config.json"
    if not cfg.is_file():
        problems.append("no config.json")
    else:
        try:
            json.loads(cfg.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            problems.append(f"config.json is not readable JSON ({exc})")
    if needs_tokenizer:
        problems += tokenizer_problems(folder)
    problems += _weight_problems(folder)
    return problems


def tokenizer_problems(folder: Path) -> list[str]:
    if any(all((folder / f).is_file() for f in group) for group in TOKENIZER_SETS):
        return []
    return ["no tokenizer files (tokenizer.json, tokenizer.model, vocab.json + merges.txt, ...)"]


def _weight_problems(folder: Path) -> list[str]:
    for name in WEIGHT_INDEXES:
        index = folder / name
        if index.is_file():
            try:
                shards = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
            except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
                return [f"{name} is not a readable weight index ({type(exc).__name__}: {exc})"]
            missing = [s for s in shards if not (folder / s).is_file()]
            if missing:
                return [f"{name} names {len(missing)} weight file(s) that are missing: {', '.join(missing[:5])}"]
            return [p for s in shards if s.endswith(".safetensors") for p in safetensors_problems(folder / s)]
    present = [f for f in WEIGHT_FILES if (folder / f).is_file()]
    if not present:
        return ["no weight files (model.safetensors, pytorch_model.bin, or a *.index.json with its shards)"]
    return [p for f in present if f.endswith(".safetensors") for p in safetensors_problems(folder / f)]


def safetensors_problems(path: Path) -> list[str]:
    """A safetensors file: 8-byte header length, JSON header, then exactly the tensors' bytes."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                return [f"{path.name} is truncated ({size} bytes, not even a header)"]
            (n,) = struct.unpack("<Q", head)
            if n > MAX_HEADER or 8 + n > size:
                return [f"{path.name} is truncated or not safetensors (header of {n} bytes in a {size}-byte file)"]
            header = json.loads(f.read(n))
    except OSError as exc:
        return [f"{path.name} cannot be read ({exc.strerror or exc})"]
    except ValueError as exc:
        return [f"{path.name} has an unreadable header ({exc})"]
    if not isinstance(header, dict):
        return [f"{path.name} has an unreadable header (not a table)"]
    ends = [t.get("data_offsets", [0, 0])[1] for k, t in header.items() if k != "__metadata__" and isinstance(t, dict)]
    expected = 8 + n + max(ends, default=0)
    if size < expected:
        return [f"{path.name} is truncated: {size} bytes, its header describes {expected}"]
    return []


__all__ = ["model_folder_problems", "tokenizer_problems", "safetensors_problems"]
