"""The one description of a model, from the plan file to the backend that loads it. Pure: no
heavy import, no file read.

`ModelSpec` is what a plan says about a model: which checkpoint, how to load it (kwargs, dtype,
trust_remote_code), how to run it (batch size, lengths, chat template) and with which backend.
The plan (`evalcore.plan.spec`) builds it from the file and the flags and keeps it in run.json;
a worker hands the same record to the backend as `ModelSettings` (backends/base.py: this
description plus where the files were found and where the model runs). `dtype` and
`trust_remote_code` are read here and nowhere else.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from evalcore.errors import PlanError

# dtype as written (lower case, "torch." dropped) -> its canonical name
DTYPE_ALIASES = MappingProxyType({
    "auto": "auto",
    "float32": "float32", "fp32": "float32", "float": "float32",
    "float16": "float16", "fp16": "float16", "half": "float16",
    "bfloat16": "bfloat16", "bf16": "bfloat16",
})
DEFAULT_DTYPE = "float32"
DTYPE_KEYS = ("torch_dtype", "dtype")          # where model_kwargs may give it (OpenCompass writes torch_dtype)
GPU_ONLY_KWARGS = ("device_map", "max_memory")  # model_kwargs that only place the model on GPUs


def _empty() -> Mapping:
    return MappingProxyType({})


@dataclass(frozen=True)
class ModelSpec:
    path: str  # hub repo id (resolved from the local cache) or a local folder
    abbr: str = ""
    revision: str | None = None
    tokenizer_path: str | None = None
    tokenizer_revision: str | None = None
    model_kwargs: Mapping = field(default_factory=_empty)  # passed to from_pretrained (torch_dtype, device_map, ...)
    tokenizer_kwargs: Mapping = field(default_factory=_empty)
    max_out_len: int | None = None  # None: each dataset's own value (else 256); set, it wins for every dataset
    max_seq_len: int | None = None
    batch_size: int | str = 8  # or "auto" (GPU: halve on out-of-memory)
    num_gpus: int = 1
    batch_padding: bool = True
    chat_template: bool = False
    trust_remote_code: bool = False
    backend: str = "hf"  # a module of evalcore/backends/kinds/: "hf" (transformers), "scripted" (a stand-in)
    backend_options: Mapping = field(default_factory=_empty)  # checked by the backend's BackendKind

    @property
    def name(self) -> str:
        return self.abbr or Path(self.path.rstrip("/")).name

    @property
    def dtype(self) -> str:
        """The dtype as the plan writes it (recorded so in partition keys and settings)."""
        return dtype_written(self.model_kwargs)


def dtype_written(model_kwargs: Mapping[str, Any], default: str = DEFAULT_DTYPE) -> str:
    """The dtype text model_kwargs give (torch_dtype first), else `default`; not checked."""
    for key in DTYPE_KEYS:
        if key in model_kwargs:
            return str(model_kwargs[key])
    return default


def parse_dtype(model_kwargs: Mapping[str, Any], where: str, default: str = DEFAULT_DTYPE) -> str:
    """The canonical dtype name (auto, float32, float16, bfloat16) model_kwargs give, else
    `default`'s. Two different values, or a name that is not a dtype, are a PlanError."""
    given = {k: model_kwargs[k] for k in DTYPE_KEYS if k in model_kwargs}
    if len({str(v) for v in given.values()}) > 1:
        raise PlanError(f"{where}: model_kwargs give dtype = {given['dtype']!r} and torch_dtype = "
                        f"{given['torch_dtype']!r}; which one?", hint="give only one of them")
    key, value = next(iter(given.items()), ("dtype", default))
    name = str(value).removeprefix("torch.").lower()
    if name not in DTYPE_ALIASES:
        raise PlanError(f"{where}: model_kwargs {key} = {value!r} is not a dtype",
                        hint=f"use one of {', '.join(DTYPE_ALIASES)}")
    return DTYPE_ALIASES[name]


def one_trust_setting(d: Mapping[str, Any], where: str) -> dict:
    """`trust_remote_code` may be written at the model level or in model_kwargs/tokenizer_kwargs
    (OpenCompass style, "True"/"False" strings too); it becomes the one model-level setting,
    taken out of the kwargs. Two different values are refused. Returns the new fields."""
    d = dict(d)
    given = {"trust_remote_code": d["trust_remote_code"]} if "trust_remote_code" in d else {}
    for part in ("model_kwargs", "tokenizer_kwargs"):
        kw = d.get(part)
        if isinstance(kw, Mapping) and "trust_remote_code" in kw:
            kw = dict(kw)
            v = kw.pop("trust_remote_code")
            if isinstance(v, str) and v.lower() in ("true", "false"):
                v = v.lower() == "true"
            given[f"{part}.trust_remote_code"] = v
            d = {**d, part: kw}
    values = set(map(repr, given.values()))
    if len(values) > 1:
        raise PlanError(f"{where}: trust_remote_code is set differently in "
                        + ", ".join(f"{k} = {v!r}" for k, v in given.items()), hint="set it once, at the model level")
    if given:
        d = {**d, "trust_remote_code": next(iter(given.values()))}
    return d


__all__ = ["ModelSpec", "DTYPE_ALIASES", "GPU_ONLY_KWARGS", "dtype_written", "parse_dtype", "one_trust_setting"]
