"""The file names of a Hugging Face checkpoint, in one place: which files make its tokenizer and
which hold its weights. Read by the preflight (folder checks, content fingerprints), the run's
partition keys (the tokenizer hash) and the HF backend's identity. Pure constants and one hash.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

# Every file a tokenizer may be read from. The order is part of the partition key's tokenizer
# hash (`tokenizer_hash`): append new names at the end, never reorder.
TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
    "vocab.json", "vocab.txt", "merges.txt", "tokenizer.model", "chat_template.jinja",
    "chat_template.json", "spiece.model", "sentencepiece.bpe.model",
)
# A tokenizer needs one of these (sets of files that together make one).
TOKENIZER_SETS = (("tokenizer.json",), ("tokenizer.model",), ("spiece.model",), ("sentencepiece.bpe.model",),
                  ("vocab.json", "merges.txt"), ("vocab.txt",))
# Weight files, by suffix: fingerprinted by name and size (never read whole at a run's start).
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".msgpack", ".h5")
WEIGHT_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "tf_model.h5", "flax_model.msgpack", "model.gguf")


def tokenizer_hash(folder: Path) -> str:
    """A short content hash of the tokenizer files in `folder` (part of every partition key)."""
    h = hashlib.sha256(b"evalcore-tokenizer-v1\n")
    for name in TOKENIZER_FILES:
        p = folder / name
        if p.is_file():
            h.update(name.encode() + b"\0" + p.read_bytes() + b"\0")
    return h.hexdigest()[:16]


__all__ = ["TOKENIZER_FILES", "TOKENIZER_SETS", "WEIGHT_SUFFIXES", "WEIGHT_INDEXES", "WEIGHT_FILES", "tokenizer_hash"]
