"""Reading lm-eval 0.4.x task YAML as lm-eval does (lm_eval/tasks/_yaml_loader.py): `!function
module.fn` imports `module.py` from the YAML's folder (the user pointed at that folder: its code
runs, as in lm-eval), `include` merges the named files first (relative to the YAML's folder; the
including file's keys win; a cycle is an error). A file that does not parse is a TaskFileError
naming it."""

from __future__ import annotations

import hashlib
import importlib.util
import inspect
import sys
from pathlib import Path

from ..errors import TaskFileError


class Function:
    """A `!function` reference: imported on first call; its fingerprint is the module's source."""

    def __init__(self, qual: str, base: Path, resolve: bool) -> None:
        self.qual, self.base = qual, base
        mod, _, self.fn_name = qual.rpartition(".")
        if not mod:
            raise TaskFileError(f"{base}: !function {qual!r} names no module (module.function)")
        self.module_path = (base / f"{mod.replace('.', '/')}.py").resolve()
        if not self.module_path.is_file():
            raise TaskFileError(f"{base}: !function {qual!r}: no file {self.module_path}")
        self.fingerprint = f"function:{qual}:" + hashlib.sha256(self.module_path.read_bytes()).hexdigest()
        self._fn = None
        if resolve:
            self._load()

    def _load(self):
        if self._fn is None:
            name = "evalcore_taskfile_" + hashlib.sha256(str(self.module_path).encode()).hexdigest()[:16]
            module = sys.modules.get(name)
            if module is None:
                spec = importlib.util.spec_from_file_location(name, self.module_path)
                module = importlib.util.module_from_spec(spec)
                try:
                    spec.loader.exec_module(module)
                except Exception as exc:
                    raise TaskFileError(f"{self.module_path}: cannot import ({type(exc).__name__}: {exc})") from None
                sys.modules[name] = module
            fn = getattr(module, self.fn_name, None)
            if not callable(fn):
                raise TaskFileError(f"{self.module_path} has no function {self.fn_name!r} (!function {self.qual})")
            self._fn = fn
        return self._fn

    def __call__(self, *args, **kwargs):
        return self._load()(*args, **kwargs)

    def source(self) -> str:
        try:
            return inspect.getsource(self._load())
        except (OSError, TypeError):
            return self.fingerprint

    def __repr__(self) -> str:
        return f"!function {self.qual}"


def _loader(base: Path, resolve: bool):
    import yaml

    base_cls = yaml.CSafeLoader if getattr(yaml, "__with_libyaml__", False) else yaml.SafeLoader

    class Loader(base_cls):  # type: ignore[valid-type, misc]
        pass

    def ctor(loader, node):
        return Function(loader.construct_scalar(node), base, resolve)

    Loader.add_constructor("!function", ctor)
    return Loader


def load_yaml(path: Path, *, resolve: bool = True, _seen: frozenset = frozenset()) -> dict:
    import yaml

    path = Path(path).expanduser().resolve()
    if path in _seen:
        raise TaskFileError(f"{path}: include cycle")
    try:
        with path.open("rb") as fh:
            cfg = yaml.load(fh, Loader=_loader(path.parent, resolve))  # noqa: S506 (our loader: safe + !function)
    except FileNotFoundError:
        raise TaskFileError(f"task file {path} does not exist") from None
    except yaml.YAMLError as exc:
        raise TaskFileError(f"task file {path} does not parse: {' '.join(str(exc).split())}") from None
    if not isinstance(cfg, dict):
        raise TaskFileError(f"task file {path} does not parse: expected a mapping, got {type(cfg).__name__}")
    if "include" not in cfg:
        return cfg
    includes = cfg.pop("include")
    merged: dict = {}
    for inc in includes if isinstance(includes, list) else [includes]:
        inc_path = Path(inc) if Path(inc).is_absolute() else path.parent / inc
        inc_cfg = load_yaml(inc_path, resolve=resolve, _seen=_seen | {path})
        inc_cfg.pop("task_list", None)
        merged.update(inc_cfg)
    merged.update(cfg)
    return merged
