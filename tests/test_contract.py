"""The run contract (issue 11): every setting takes effect or is refused (exit 2), flags over the
plan over the defaults for every key (0, false and empty too), the effective settings on record,
faults caught before a run folder exists and explained without advising a useless resume."""

from __future__ import annotations

import pytest

from evalcore.errors import PlanError
from evalcore.plan import parse_plan, with_overrides
from evalcore.runctx import effective_max_out_len
from evalcore.tasks import task_for

DS = [{"name": "gsm8k_gen"}]


def _plan(model=None, run=None, datasets=DS):
    return parse_plan({"models": [{"path": "org/m", **(model or {})}], "datasets": datasets, "run": run or {}})


@pytest.mark.parametrize("section, key, value, needle", [
    ("run", "lease_seconds", "soon", "'lease_seconds' must be a number"),
    ("run", "lease_seconds", 0, "'lease_seconds' must be >= 1.0"),
    ("run", "limit", 0, "'limit' must be >= 1"),
    ("run", "max_partition_size", 0, "'max_partition_size' must be >= 1"),
    ("run", "max_attempts", 0, "'max_attempts' must be >= 1"),
    ("run", "threads", 0, "'threads' must be >= 1"),
    ("run", "max_num_workers", 0, "'max_num_workers' must be >= 1"),
    ("model", "max_seq_len", 0, "'max_seq_len' must be >= 2"),
    ("model", "max_out_len", 0, "'max_out_len' must be >= 1"),
    ("model", "num_gpus", -1, "'num_gpus' must be >= 0"),
    ("model", "batch_size", True, "positive integer"),
    ("model", "backend_options", {"sample_seconds": 0.1}, "unknown key(s) sample_seconds for backend 'hf'"),
    ("model", "model_kwargs", {"dtype": "float16", "torch_dtype": "float32"}, "which one?"),
    ("model", "model_kwargs", {"torch_dtype": "float17"}, "is not a dtype"),
    ("model", "model_kwargs", {"trust_remote_code": True}, None),
])
def test_bad_values_are_refused_naming_the_key(section, key, value, needle):
    if needle is None:  # trust_remote_code in model_kwargs: lifted to the one model-level setting
        m = _plan(model={key: value}).models[0]
        assert m.trust_remote_code is True and "trust_remote_code" not in m.model_kwargs
        return
    with pytest.raises(PlanError) as e:
        _plan(**{section: {key: value}})
    assert needle in str(e.value)


def test_trust_remote_code_written_twice_differently_is_refused():
    with pytest.raises(PlanError, match="trust_remote_code is set differently"):
        _plan(model={"trust_remote_code": False, "model_kwargs": {"trust_remote_code": True}})
    # a flag overrides the plan's value instead of conflicting with it
    plan = _plan(model={"trust_remote_code": False})
    flagged = with_overrides(plan, model_overrides={"model_kwargs": {"trust_remote_code": True}})
    assert flagged.models[0].trust_remote_code is True and not flagged.models[0].model_kwargs


def test_flags_win_for_zero_false_and_dtype():
    plan = _plan(model={"batch_padding": True, "chat_template": True, "model_kwargs": {"torch_dtype": "float16"}},
                 run={"offline": True, "limit": 50})
    p = with_overrides(plan, model_overrides={"batch_padding": False, "chat_template": False,
                                              "model_kwargs": {"dtype": "float32"}}, run={"offline": False})
    m = p.models[0]
    assert (m.batch_padding, m.chat_template, m.dtype) == (False, False, "float32")
    assert p.run.offline is False and p.run.limit == 50


def test_max_out_len_flag_wins_over_a_builtin_task_value():
    task = task_for(_plan().datasets[0])
    assert task.max_out_len == 256
    assert effective_max_out_len(_plan().models[0], task) == 256  # the dataset's own value by default
    siqa = task_for(_plan(datasets=[{"name": "siqa_gen"}]).datasets[0])
    assert effective_max_out_len(_plan().models[0], siqa) == 16
    flagged = with_overrides(_plan(model={"max_out_len": 300}), model_overrides={"max_out_len": 100})
    assert effective_max_out_len(flagged.models[0], task) == 100
    assert effective_max_out_len(flagged.models[0], siqa) == 100


@pytest.mark.parametrize("flag, value, needle", [
    ("--limit", "0", "'limit' must be >= 1"),
    ("--lease-seconds", "0", "'lease_seconds' must be >= 1.0"),
    ("--max-seq-len", "0", "'max_seq_len' must be >= 2"),
    ("--max-partition-size", "0", "'max_partition_size' must be >= 1"),
])
def test_zero_flags_exit_2_with_one_line_and_no_folder(tmp_path, flag, value, needle):
    from tests.conftest import clean_env, run_cli

    env = clean_env(HF_HOME=str(tmp_path / "hf"), EVALCORE_STATE_DIR=str(tmp_path / "state"))
    r = run_cli("evalcore", "eval", "--hf-path", "org/m", "--datasets", "arc_easy_ppl", "--work-dir",
                tmp_path / "out", flag, value, env=env)
    assert r.returncode == 2, r.stderr
    errors = [x for x in r.stderr.splitlines() if x.startswith("error:")]
    assert len(errors) == 1 and needle in errors[0] and "Traceback" not in r.stderr
    assert "resume" not in r.stderr
    assert not (tmp_path / "out").exists()
