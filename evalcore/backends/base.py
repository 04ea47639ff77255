"""What every inference backend takes and returns: plain frozen records and one protocol.

Pure data, no torch import. A backend scores `LoglikRequest`s (one context, several
continuations: a multiple-choice question) and answers `GenRequest`s (greedy generation), and
returns results in the order of the requests, whatever order it computes them in.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any, Protocol, runtime_checkable

from ..errors import BackendError, PlanError
from .model import (
    DEFAULT_DTYPE,
    DTYPE_KEYS,
    GPU_ONLY_KWARGS,
    ModelSpec,
    dtype_written,
    one_trust_setting,
    parse_dtype,
)

CPU_AUTO_BATCH = 8  # "auto" batch size on the CPU (no out-of-memory signal to halve on)


class FrozenMap(Mapping[str, Any]):
    """A read-only, hashable mapping (for the kwargs fields of a frozen `ModelSettings`)."""

    __slots__ = ("_data",)

    def __init__(self, data: Mapping[str, Any] | None = None) -> None:
        self._data = dict(data or {})

    def __getitem__(self, key: str) -> Any:
        return self._data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __hash__(self) -> int:
        return hash(tuple(sorted((k, repr(v)) for k, v in self._data.items())))

    def __repr__(self) -> str:
        return f"FrozenMap({self._data!r})"


def prefetch_hint(repo_id: str) -> str:
    """The command that fetches `repo_id` on a host with internet, then how to install it here."""
    return (f"on a host with internet run `cachekit prefetch --model {repo_id} --out BUNDLE`, "
            f"then `cachekit import BUNDLE` here")


@dataclass(frozen=True)
class LoglikRequest:
    """One context and the continuations to score after it (the choices of a question)."""

    context: str
    continuations: tuple[str, ...]

    def __post_init__(self) -> None:
        if not isinstance(self.continuations, tuple):
            object.__setattr__(self, "continuations", tuple(self.continuations))


@dataclass(frozen=True)
class LoglikResult:
    """Per continuation: summed log-probability, whether every token was the argmax, token count."""

    logprobs: tuple[float, ...]
    greedy: tuple[bool, ...]
    n_tokens: tuple[int, ...]


@dataclass(frozen=True)
class GenRequest:
    """A prompt to continue greedily for at most `max_new_tokens`, cut at the first stop string."""

    prompt: str
    max_new_tokens: int
    stop: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.stop, tuple):
            object.__setattr__(self, "stop", tuple(self.stop))


@dataclass(frozen=True)
class ModelSettings(ModelSpec):
    """What a backend loads: the plan's model description (`ModelSpec`, every field) with its
    paths and revisions where the preflight found the files, plus where it runs (`device`,
    `device_map`, `threads`). `dtype` is its canonical name: a dtype in model_kwargs moves here,
    as trust_remote_code in the kwargs moves to `trust_remote_code` (two different values are
    refused). `batch_size` is an int or "auto" (halve on GPU OOM)."""

    dtype: str = DEFAULT_DTYPE  # type: ignore[assignment]  # a field here, derived in ModelSpec
    device: str = "cpu"
    device_map: str | None = None
    threads: int | None = None

    def __post_init__(self) -> None:
        try:
            trust = one_trust_setting({"model_kwargs": self.model_kwargs, "tokenizer_kwargs": self.tokenizer_kwargs,
                                       **({"trust_remote_code": True} if self.trust_remote_code else {})}, "model")
            kwargs = trust["model_kwargs"]
            dtype = parse_dtype({}, "model", default=self.dtype)
            if dtype_written(kwargs, ""):
                given = parse_dtype(kwargs, "model")
                if self.dtype != DEFAULT_DTYPE and given != dtype:
                    raise PlanError(f"dtype = {self.dtype!r} and model_kwargs {dtype_written(kwargs)!r} differ",
                                    hint="give the dtype once")
                dtype = given
        except PlanError as exc:
            raise BackendError(exc.message, hint=exc.hint) from None
        object.__setattr__(self, "dtype", dtype)
        object.__setattr__(self, "trust_remote_code", bool(trust.get("trust_remote_code", False)))
        object.__setattr__(self, "model_kwargs", {k: v for k, v in kwargs.items() if k not in DTYPE_KEYS})
        object.__setattr__(self, "tokenizer_kwargs", trust["tokenizer_kwargs"])
        for name in ("model_kwargs", "tokenizer_kwargs", "backend_options"):
            value = getattr(self, name)
            if not isinstance(value, FrozenMap):
                object.__setattr__(self, name, FrozenMap(value))
        bs = self.batch_size
        if not (bs == "auto" or (isinstance(bs, int) and not isinstance(bs, bool) and bs >= 1)):
            raise BackendError(f"batch_size must be a positive integer or 'auto', not {bs!r}",
                               hint="use e.g. --batch-size 8 or --batch-size auto")
        if self.max_seq_len is not None and self.max_seq_len < 2:
            raise BackendError(f"max_seq_len must be at least 2, not {self.max_seq_len}")
        if self.threads is not None and self.threads < 1:
            raise BackendError(f"threads must be at least 1, not {self.threads}")

    @classmethod
    def for_run(cls, spec: ModelSpec, model_at: Any, tokenizer_at: Any | None, placed: Any,
                threads: int | None) -> ModelSettings:
        """`spec` as a worker loads it: `model_at` / `tokenizer_at` (the preflight's resolved
        model and tokenizer: load_path, revision, trust_remote_code) say where the files are,
        `placed` (device, device_map, max_memory) where it runs. Every other field is the plan's."""
        kwargs = {k: v for k, v in spec.model_kwargs.items() if k not in GPU_ONLY_KWARGS}
        if placed.max_memory is not None:
            kwargs["max_memory"] = placed.max_memory
        described = {f.name: getattr(spec, f.name) for f in fields(ModelSpec)}
        on_cpu = placed.device == "cpu"
        return cls(**{
            **described, "path": model_at.load_path, "revision": model_at.revision,
            "tokenizer_path": tokenizer_at.load_path if tokenizer_at else None,
            "tokenizer_revision": tokenizer_at.revision if tokenizer_at else None,
            "trust_remote_code": model_at.trust_remote_code, "model_kwargs": kwargs,
            "batch_size": CPU_AUTO_BATCH if (on_cpu and spec.batch_size == "auto") else spec.batch_size,
            "device": placed.device, "device_map": placed.device_map, "threads": threads})


@runtime_checkable
class Backend(Protocol):
    """An inference engine: one loaded model, used by one worker."""

    def loglikelihood(self, requests: Sequence[LoglikRequest]) -> list[LoglikResult]:
        """Score every continuation of every request; results in request order."""
        ...

    def generate(self, requests: Sequence[GenRequest]) -> list[str]:
        """Greedy completions, cut at the first stop string; results in request order."""
        ...

    def identity(self) -> dict[str, Any]:
        """Everything the answers depend on (model commit, dtype, tokenizer hash, ...)."""
        ...

    def close(self) -> None:
        """Free the model; the backend is unusable afterwards."""
        ...
