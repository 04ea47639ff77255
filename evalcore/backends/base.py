"""What every inference backend takes and returns: plain frozen records and one protocol.

Pure data, no torch import. A backend scores `LoglikRequest`s (one context, several
continuations: a multiple-choice question) and answers `GenRequest`s (greedy generation), and
returns results in the order of the requests, whatever order it computes them in.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from ..errors import BackendError


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
class ModelSettings:
    """How to load and run one model. `batch_size` is an int or "auto" (halve on GPU OOM)."""

    path: str
    revision: str | None = None
    tokenizer_path: str | None = None
    tokenizer_revision: str | None = None
    dtype: str = "float32"
    device: str = "cpu"
    device_map: str | None = None
    trust_remote_code: bool = False
    model_kwargs: Mapping[str, Any] = field(default_factory=FrozenMap)
    tokenizer_kwargs: Mapping[str, Any] = field(default_factory=FrozenMap)
    batch_size: int | str = 8
    max_seq_len: int | None = None
    batch_padding: bool = True
    chat_template: bool = False
    threads: int | None = None

    def __post_init__(self) -> None:
        for name in ("model_kwargs", "tokenizer_kwargs"):
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


def bench_mc(backend: Backend, requests: Sequence[LoglikRequest], *, repeat: int = 1,
             warmup: bool = True) -> float:
    """Seconds `backend.loglikelihood(requests)` takes: the median of `repeat` runs, after one
    untimed warm-up run on the first request (first-use work such as the packing probe)."""
    if warmup and requests:
        backend.loglikelihood(list(requests[:1]))
    times = []
    for _ in range(max(1, repeat)):
        start = time.perf_counter()
        backend.loglikelihood(requests)
        times.append(time.perf_counter() - start)
    return statistics.median(times)
