"""Backends by name (evalcore/backends/registry.py, one module per backend in kinds/) and the one
model description that flows from the plan to the backend (evalcore/backends/model.py,
`ModelSettings.for_run`), with the partition key computed from it as old runs recorded it."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import fields
from pathlib import Path
from types import MappingProxyType, SimpleNamespace

import pytest

from evalcore.backends import (
    ModelSettings,
    ModelSpec,
    backend_kind,
    backend_names,
    load_backend,
    registry,
)
from evalcore.backends.checkpoint import tokenizer_hash
from evalcore.errors import BackendError, PlanError
from evalcore.plan.spec import parse_plan
from tests.conftest import ROOT, clean_env


def test_the_backends_are_the_modules_of_kinds():
    assert backend_names() == ("hf", "scripted")
    hf, scripted = backend_kind("hf"), backend_kind("scripted")
    assert hf.name == "hf" and "torch" in hf.libraries and hf.reads_files and hf.uses_gpu
    assert scripted.libraries == () and not scripted.reads_files and not scripted.uses_gpu
    assert set(hf.options) == {"packed", "token_budget"}


def test_unknown_backend_names_the_known_ones():
    with pytest.raises(PlanError, match=r"models\[0\]: unknown backend 'vllm' \(hf or scripted\)"):
        parse_plan({"models": [{"path": "org/m", "backend": "vllm"}]})


@pytest.mark.parametrize("options, message", [
    ({"packd": True}, "unknown key(s) packd for backend 'hf'"),
    ({"packed": "yes"}, "'packed' must be bool"),
    ({"token_budget": 0}, "'token_budget' must be >= 1"),
    ({"token_budget": 1.5}, "'token_budget' must be int"),
])
def test_options_are_checked_by_the_backend(options, message):
    with pytest.raises(PlanError) as info:
        parse_plan({"models": [{"path": "org/m", "backend_options": options}]})
    assert message in str(info.value) and str(info.value).startswith("plan: models[0]: backend_options")


def test_lookup_and_validation_import_nothing_heavy():
    code = ("import sys\n"
            "from evalcore.backends import backend_kind, backend_names\n"
            "from evalcore.plan.spec import parse_plan\n"
            "for name in backend_names():\n"
            "    backend_kind(name).check_options({}, 'x'); backend_kind(name).versions()\n"
            "parse_plan({'models': [{'path': 'org/m', 'backend_options': {'packed': False}}]})\n"
            "heavy = [m for m in ('torch', 'transformers') if m in sys.modules]\n"
            "assert not heavy, heavy\n")
    subprocess.run([sys.executable, "-c", code], env=clean_env(), cwd=ROOT, check=True, timeout=120)


def test_a_new_backend_is_one_module(tmp_path, monkeypatch):
    """A package of kinds with one module: plans may name it, its options are checked, it loads."""
    pkg = tmp_path / "morekinds"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "echo.py").write_text(
        "from types import MappingProxyType\n"
        "from evalcore.backends.registry import BackendKind\n"
        "KIND = BackendKind(name='echo', summary='test', load='morekinds.echo:load',\n"
        "                   options=MappingProxyType({'word': str}), reads_files=False, uses_gpu=False)\n"
        "def load(settings, **options):\n"
        "    return ('echo', settings.name, dict(settings.backend_options))\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(registry, "_KINDS", "morekinds")
    assert backend_names() == ("echo",)
    plan = parse_plan({"models": [{"path": "./here", "revision": "abc", "backend": "echo",
                                   "backend_options": {"word": "hi"}}]})  # a hub revision is fine: reads no files
    with pytest.raises(PlanError, match="'word' must be str"):
        parse_plan({"models": [{"path": "m", "backend": "echo", "backend_options": {"word": 1}}]})
    m = plan.models[0]
    assert load_backend(ModelSettings.for_run(m, _at(m.path), None, _placed(), None)) == ("echo", "here", {"word": "hi"})


def _at(path: str, revision: str | None = None, trust: bool = False, folder: Path = Path(".")):
    return SimpleNamespace(load_path=path, revision=revision, trust_remote_code=trust, folder=folder,
                           fingerprint=f"fp-{path}")


def _placed(device: str = "cpu", device_map=None, max_memory=None):
    return SimpleNamespace(device=device, device_map=device_map, max_memory=max_memory)


def test_the_plans_description_reaches_the_backend():
    plan = parse_plan({"models": [{
        "path": "org/m", "abbr": "mine", "revision": "main", "tokenizer_path": "org/tok", "batch_size": "auto",
        "max_seq_len": 64, "batch_padding": False, "chat_template": True, "max_out_len": 9, "num_gpus": 2,
        "model_kwargs": {"torch_dtype": "bf16", "device_map": "auto", "attn_implementation": "eager",
                         "trust_remote_code": "True"},
        "tokenizer_kwargs": {"padding_side": "left"}, "backend_options": {"packed": False}}]})
    m = plan.models[0]
    assert m.trust_remote_code is True and "trust_remote_code" not in m.model_kwargs  # read once, by the plan
    assert m.dtype == "bf16"  # as written (the partition key records this text)
    s = ModelSettings.for_run(m, _at("org/m", "c" * 40, trust=True), _at("org/tok", "d" * 40), _placed(), 3)
    for f in fields(ModelSpec):  # every field of the description, except where the files are
        if f.name not in ("path", "revision", "tokenizer_path", "tokenizer_revision", "model_kwargs", "batch_size"):
            assert getattr(s, f.name) == getattr(m, f.name), f.name
    assert (s.path, s.revision, s.tokenizer_path, s.tokenizer_revision) == ("org/m", "c" * 40, "org/tok", "d" * 40)
    assert s.dtype == "bfloat16" and s.trust_remote_code is True and s.threads == 3 and s.name == "mine"
    assert dict(s.model_kwargs) == {"attn_implementation": "eager"}  # dtype parsed, GPU-only kwargs dropped on CPU
    assert s.batch_size == 8 and (s.device, s.device_map) == ("cpu", None)
    gpu = ModelSettings.for_run(m, _at("org/m"), None, _placed("cuda", "auto", "leased"), None)
    assert gpu.batch_size == "auto" and gpu.device_map == "auto" and gpu.model_kwargs["max_memory"] == "leased"


def test_dtype_and_trust_are_read_once_and_conflicts_refused():
    assert ModelSettings(path="a/b", model_kwargs={"dtype": "torch.float16"}).dtype == "float16"
    assert ModelSettings(path="a/b", dtype="bf16").dtype == "bfloat16"
    assert ModelSettings(path="a/b", model_kwargs={"trust_remote_code": "True"}).trust_remote_code is True
    with pytest.raises(BackendError, match="is not a dtype"):
        ModelSettings(path="a/b", dtype="float17")
    with pytest.raises(BackendError, match="differ"):
        ModelSettings(path="a/b", dtype="bfloat16", model_kwargs={"torch_dtype": "float16"})
    with pytest.raises(BackendError, match="trust_remote_code is set differently"):
        ModelSettings(path="a/b", trust_remote_code=True, tokenizer_kwargs={"trust_remote_code": False})
    with pytest.raises(PlanError, match="which one?"):
        parse_plan({"models": [{"path": "a/b", "model_kwargs": {"dtype": "float16", "torch_dtype": "float32"}}]})


def test_the_model_part_of_the_partition_key_is_what_old_runs_recorded(tmp_path):
    """Byte for byte what evalcore wrote before the model description moved: a resume of an
    older run compares against exactly these fields and texts."""
    from evalcore.engine.runctx import model_key

    tok = tmp_path / "tok"
    tok.mkdir()
    for n in ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt", "chat_template.jinja",
              "special_tokens_map.json"):
        (tok / n).write_text(f"content of {n}\n")
    assert tokenizer_hash(tok) == "9cbe63cba24361df"  # the hash older runs recorded for these files
    m = parse_plan({"models": [{"path": "org/m", "model_kwargs": {"torch_dtype": "torch.bfloat16", "device_map": "auto",
                                                                  "low_cpu_mem_usage": True},
                                "tokenizer_kwargs": {"padding_side": "left"}, "max_seq_len": 128}]}).models[0]
    key = model_key(m, _at("org/m", "c" * 40, folder=tok), _at("org/m", "c" * 40, folder=tok))
    assert key.pop("versions") == backend_kind("hf").versions()
    assert json.dumps(key, sort_keys=True) == json.dumps({
        "model": "fp-org/m", "model_path": "org/m", "backend": "hf", "dtype": "torch.bfloat16",
        "tokenizer": "9cbe63cba24361df", "chat_template": False, "max_seq_len": 128, "batch_padding": True,
        "model_kwargs": {"low_cpu_mem_usage": "True", "torch_dtype": "torch.bfloat16"},
        "tokenizer_kwargs": {"padding_side": "left"}}, sort_keys=True)
    stand_in = ModelSpec(path="m1", backend="scripted", model_kwargs=MappingProxyType({}))
    assert model_key(stand_in, _at("m1"), _at("m1"))["tokenizer"] is None
