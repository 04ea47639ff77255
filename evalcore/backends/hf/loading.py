"""Loading a checkpoint for the HF backend: where it comes from (a local folder, or a hub repo id
read from the cache), the tokenizer (lm-eval's pad-token rule), the model (dtype, device,
device_map, the leased GPUs' memory), the maximum length (lm-eval's rule), and every loading
failure mapped to one BackendError with a hint (a hub model missing offline names the prefetch).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from evalcore.backends.base import CPU_AUTO_BATCH, prefetch_hint
from evalcore.errors import BackendError, ModelNotCachedError

DEFAULT_MAX_LENGTH = 2048          # lm-eval's default when neither config nor tokenizer says
TOKENIZER_INFINITY = 1000000000000000019884624838656
GPU_AUTO_BATCH = 64                # "auto" start on GPU (lm-eval's max_batch_size), halved on OOM
TOKENIZER_ATTRS = ("padding_side", "truncation_side")   # set on the tokenizer, not passed to it
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
_BOOL_WORDS = MappingProxyType({"true": True, "false": False})


def _offline() -> bool:
    """Whether the Hugging Face libraries were told to stay offline (read from the environment)."""
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}:
            return True
    try:
        from huggingface_hub import constants
    except ImportError:  # pragma: no cover
        return False
    return bool(getattr(constants, "HF_HUB_OFFLINE", False))


def _coerce(value: Any) -> Any:
    """`--model-kwargs k=v` may hand over 'True'/'False' as strings; make those booleans."""
    if isinstance(value, str) and value.strip().lower() in _BOOL_WORDS:
        return _BOOL_WORDS[value.strip().lower()]
    return value



def _exception_chain(exc: BaseException) -> list[BaseException]:
    chain, seen = [], set()
    while exc is not None and id(exc) not in seen:
        chain.append(exc)
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return chain



@dataclass(frozen=True)
class _Source:
    """Where a model or tokenizer comes from: a local folder, or a hub repo id (+ revision)."""

    name: str
    revision: str | None
    local: bool

    @classmethod
    def resolve(cls, name: str, revision: str | None, what: str) -> _Source:
        expanded = os.path.expanduser(name)
        if os.path.isdir(expanded):
            return cls(str(Path(expanded).resolve()), revision, True)
        looks_like_path = (name.startswith(("/", "./", "../", "~", "\\")) or name.count("/") > 1
                           or os.sep in name.replace("/", "") or not _REPO_ID.match(name))
        if looks_like_path:
            raise BackendError(f"{what} folder not found: {name}",
                               hint="give an existing folder, or a hub repo id such as ORG/NAME")
        return cls(name, revision, False)

    def snapshot_folder(self, cache_dir: str | None) -> Path | None:
        """The folder the files were read from: the local folder, or the hub cache snapshot."""
        if self.local:
            return Path(self.name)
        from huggingface_hub import try_to_load_from_cache

        for probe in ("config.json", "tokenizer_config.json", "tokenizer.json"):
            found = try_to_load_from_cache(self.name, probe, cache_dir=cache_dir, revision=self.revision)
            if isinstance(found, str):
                return Path(found).parent
        return None


def _load_error(exc: BaseException, source: _Source, what: str) -> BackendError:
    """Turn a transformers / huggingface_hub loading failure into a BackendError with a hint."""
    from huggingface_hub import errors as hub_errors

    chain = _exception_chain(exc)
    rev = f" at revision {source.revision}" if source.revision else ""
    detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if source.local:
        return BackendError(f"cannot load {what} from {source.name}: {detail}",
                            hint="the folder must hold a transformers checkpoint (config.json, weights, tokenizer files)")
    if any(isinstance(e, hub_errors.RevisionNotFoundError) for e in chain):
        return ModelNotCachedError(f"{what} {source.name}: revision {source.revision} not found",
                                   hint=prefetch_hint(source.name))
    missing = (hub_errors.LocalEntryNotFoundError, hub_errors.OfflineModeIsEnabled,
               hub_errors.RepositoryNotFoundError, hub_errors.EntryNotFoundError)
    not_cached = any(isinstance(e, missing) for e in chain) or (
        isinstance(exc, OSError) and re.search(r"couldn't connect|not a valid model identifier|"
                                               r"cached files|does not appear to have", str(exc)))
    if not_cached:
        mode = "offline (HF_HUB_OFFLINE=1)" if _offline() else "and could not be downloaded"
        return ModelNotCachedError(
            f"{what} {source.name}{rev} is not in the local Hugging Face cache, {mode}",
            hint=prefetch_hint(source.name))
    return BackendError(f"cannot load {what} {source.name}{rev}: {detail}")



class Loading:
    """HFBackend's loading steps (mixed into `HFBackend`, which sets the attributes they read)."""

    def _load_tokenizer(self) -> Any:
        kwargs = dict(self._tokenizer_kwargs)
        attrs = {k: kwargs.pop(k) for k in TOKENIZER_ATTRS if k in kwargs}
        if "truncation" in kwargs and isinstance(kwargs["truncation"], str):
            attrs.setdefault("truncation_side", kwargs.pop("truncation"))   # OpenCompass style
        kwargs.setdefault("trust_remote_code", self._trust)
        if self._tok_src.revision and not self._tok_src.local:
            kwargs["revision"] = self._tok_src.revision
        if not self._tok_src.local and _offline():
            kwargs["local_files_only"] = True
        if self._cache_dir and not self._tok_src.local:
            kwargs.setdefault("cache_dir", self._cache_dir)
        self._add_bos = kwargs.get("add_bos_token")
        try:
            tok = AutoTokenizer.from_pretrained(self._tok_src.name, **kwargs)
        except Exception as exc:  # noqa: BLE001 - every loading failure becomes one clear error
            what = "tokenizer" if self.settings.tokenizer_path else "model"
            raise _load_error(exc, self._tok_src, what) from exc
        for k, v in attrs.items():
            setattr(tok, k, v)
        # lm-eval's configure_pad_token, without adding tokens to the vocabulary
        if tok.pad_token_id is None:
            for name in ("unk_token_id", "eos_token_id", "bos_token_id"):
                if getattr(tok, name, None) is not None:
                    tok.pad_token_id = getattr(tok, name)
                    break
        return tok

    def _load_model(self) -> Any:
        s = self.settings
        kwargs = dict(self._model_kwargs)
        dtype = s.dtype if s.dtype == "auto" else getattr(torch, s.dtype)  # canonical (ModelSettings parsed it)
        device_map = kwargs.pop("device_map", s.device_map)
        if not self._model_src.local:
            if self._model_src.revision:
                kwargs["revision"] = self._model_src.revision
            if _offline():
                kwargs["local_files_only"] = True
        if s.device.startswith("cuda") and not torch.cuda.is_available():
            raise BackendError(f"device {s.device!r} requested but no CUDA GPU is visible",
                               hint="check CUDA_VISIBLE_DEVICES and the GPU driver (nvidia-smi)")
        if kwargs.get("max_memory") == "leased":  # exactly the GPUs this worker sees, no CPU/disk offload
            kwargs["max_memory"] = {i: torch.cuda.mem_get_info(i)[1] for i in range(torch.cuda.device_count())}
        try:
            model = AutoModelForCausalLM.from_pretrained(
                self._model_src.name, dtype=dtype, trust_remote_code=self._trust,
                **({"device_map": device_map} if device_map is not None else {}), **kwargs)
        except Exception as exc:  # noqa: BLE001
            raise _load_error(exc, self._model_src, "model") from exc
        if device_map is None:
            model = model.to(s.device)
        model.eval()
        return model

    def _resolve_max_length(self) -> int:
        """lm-eval's resolve_max_length: text config, config, tokenizer, then 2048."""
        config = self.model.config
        cfg = getattr(config, "text_config", None) or config
        for attr in ("n_positions", "max_position_embeddings", "n_ctx"):
            value = getattr(cfg, attr, None)
            if value is not None:
                return int(value)
        mml = getattr(self.tokenizer, "model_max_length", None)
        if mml is not None and mml != TOKENIZER_INFINITY:
            return int(mml)
        return DEFAULT_MAX_LENGTH

    def _initial_rows(self) -> int:
        bs = self.settings.batch_size
        if bs == "auto":
            return GPU_AUTO_BATCH if self._on_cuda else CPU_AUTO_BATCH
        return int(bs)
