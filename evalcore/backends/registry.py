"""Backends by name: each backend is one module in `evalcore/backends/kinds/` that defines `KIND`,
a `BackendKind` (its name, the options it takes with their types, the libraries its answers
depend on, whether it reads model files, how it loads). Plan, engine, runners and CLI look a
backend up here and never branch on its name; adding one (say vLLM) is one new module there.

Nothing is registered at import time and nothing here is mutable: the names are the modules of
`kinds/` (read from the folder, not imported), and a lookup imports only that light module. Only
`BackendKind.load` imports the heavy library (torch, transformers, ...).
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib import metadata
from types import MappingProxyType
from typing import Any

from evalcore.errors import PlanError

PRODUCT = "cachekit-evalcore"   # the product's own version is part of every partition key
_KINDS = "evalcore.backends.kinds"


@dataclass(frozen=True)
class BackendKind:
    """One backend: `options` maps each `backend_options` key it takes to its type (bool, int,
    float or str; numbers must be >= 1 for int, >= 0 for float). `reads_files`: the model is a
    checkpoint found in the cache (a stand-in reads nothing: no files, no tokenizer, no hub
    revision). `uses_gpu`: GPU settings take effect (else they are noted as ignored). `load`:
    "module:function" called as function(settings: ModelSettings) -> Backend."""

    name: str
    summary: str
    load: str
    options: Mapping[str, type] = field(default_factory=lambda: MappingProxyType({}))
    libraries: tuple[str, ...] = ()
    reads_files: bool = True
    uses_gpu: bool = True

    def check_options(self, options: Mapping[str, Any], where: str) -> None:
        """Refuse an unknown key or a value of the wrong type or range (naming `where`)."""
        unknown = sorted(set(options) - set(self.options))
        if unknown:
            raise PlanError(f"{where}: backend_options: unknown key(s) {', '.join(unknown)} for backend {self.name!r}",
                            hint=f"allowed: {', '.join(sorted(self.options)) or 'none'}")
        for k, v in options.items():
            want = self.options[k]
            ok = isinstance(v, (bool, str)) and isinstance(v, want) if want in (bool, str) else (
                isinstance(v, want if want is int else (int, float)) and not isinstance(v, bool))
            if not ok:
                raise PlanError(f"{where}: backend_options '{k}' must be {want.__name__}, got {v!r}")
            if want not in (bool, str) and v < (1 if want is int else 0):
                raise PlanError(f"{where}: backend_options '{k}' must be >= {1 if want is int else 0}, got {v!r}")

    def versions(self) -> dict[str, str | None]:
        """Installed versions (None: not installed) of the product and of what this backend runs
        on, read from package metadata (nothing is imported)."""
        out: dict[str, str | None] = {}
        for name in (PRODUCT, *self.libraries):
            try:
                out[name] = metadata.version(name)
            except metadata.PackageNotFoundError:
                out[name] = None
        return out

    def loader(self) -> Callable[..., Any]:
        """The function that loads a model with this backend (imports the backend's module)."""
        module, _, func = self.load.partition(":")
        return getattr(importlib.import_module(module), func)


def backend_names() -> tuple[str, ...]:
    """Every backend there is, sorted: the modules of `evalcore/backends/kinds/`."""
    package = importlib.import_module(_KINDS)
    return tuple(sorted(m.name for m in pkgutil.iter_modules(package.__path__) if not m.name.startswith("_")))


def backend_kind(name: str, where: str = "plan") -> BackendKind:
    """The backend called `name`; an unknown name is a PlanError that lists the known ones."""
    names = backend_names()
    if name not in names:
        raise PlanError(f"{where}: unknown backend {name!r} ({' or '.join(names)})")
    kind = importlib.import_module(f"{_KINDS}.{name}").KIND
    if kind.name != name:  # pragma: no cover - a module that names another backend is a bug
        raise RuntimeError(f"{_KINDS}.{name} defines the backend {kind.name!r}")
    return kind


__all__ = ["BackendKind", "backend_kind", "backend_names", "PRODUCT"]
