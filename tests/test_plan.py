"""Plan files and flags: precedence, OpenCompass-style values, strictness, and the docs' example."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from cli.evalcore_cli import expand_nargs
from evalcore.errors import PlanError
from evalcore.plan.spec import (
    load_plan,
    parse_kwargs,
    parse_plan,
    plan_from_json,
    plan_to_json,
    validate,
    with_overrides,
)
from tests.conftest import ROOT, clean_env, run_cli


def test_flags_override_plan_which_overrides_defaults():
    plan = parse_plan({"run": {"limit": 10, "max_num_workers": 3},
                       "models": [{"path": "org/m", "batch_size": 4, "max_out_len": 50}],
                       "datasets": [{"name": "arc_easy_ppl"}]})
    assert plan.models[0].batch_size == 4 and plan.models[0].max_seq_len is None  # plan, default
    assert plan.run.limit == 10 and plan.run.max_partition_size == 40000
    p2 = with_overrides(plan, model_overrides={"batch_size": 16}, run={"limit": 5})
    assert p2.models[0].batch_size == 16 and p2.models[0].max_out_len == 50
    assert p2.run.limit == 5 and p2.run.max_num_workers == 3
    p3 = with_overrides(plan, model={"path": "./ckpt"}, datasets=["gsm8k_gen", "siqa_gen"])
    assert [m.path for m in p3.models] == ["./ckpt"]
    assert [d.abbr for d in p3.datasets] == ["gsm8k_gen", "siqa_gen"]
    assert p3.datasets[0].path == "openai/gsm8k" and p3.datasets[0].fewshot_split == "train"


def test_opencompass_kwargs_and_nargs():
    assert parse_kwargs(["device_map='auto'", "trust_remote_code=True", "max_len=8", "x=0.5", "y=none"], "f") == \
        {"device_map": "auto", "trust_remote_code": True, "max_len": 8, "x": 0.5, "y": None}
    with pytest.raises(PlanError, match="expected key=value"):
        parse_kwargs(["oops"], "--model-kwargs")
    argv = ["eval", "--model-kwargs", "a=1", "b=2", "--datasets", "x", "y", "--limit", "3"]
    assert expand_nargs(argv) == ["eval", "--model-kwargs", "a=1", "--model-kwargs", "b=2", "--datasets", "x",
                                  "--datasets", "y", "--limit", "3"]


@pytest.mark.parametrize("doc, needle", [
    ({"modles": []}, "unknown key(s) modles"),
    ({"run": {"workers": 2}}, "[run]: unknown key(s) workers"),
    ({"models": [{"path": "m", "batch_size": 0}]}, "positive integer"),
    ({"models": [{"path": "m", "num_gpus": "two"}]}, "'num_gpus' must be an integer"),
    ({"models": [{"path": "m", "chat_template": "yes"}]}, "must be true or false"),
    ({"models": [{"batch_size": 4}]}, "has no 'path'"),
    ({"datasets": [{"name": "nope"}]}, "unknown dataset name(s): 'nope'"),
    ({"datasets": [{"path": "x.jsonl", "template": "{q}", "label": "a"}]}, 'needs mode = "ll" or "gen"'),
    ({"datasets": [{"path": "x.jsonl", "mode": "ll", "template": "{q}", "label": "a"}]}, "needs 'choices'"),
    ({"models": [{"path": "m", "backend": "vllm"}]}, "unknown backend"),
])
def test_strictness(doc, needle):
    with pytest.raises(PlanError) as e:
        parse_plan(doc, "plan.toml")
    assert needle in str(e.value)


def test_validate_and_round_trip():
    with pytest.raises(PlanError, match="no model"):
        validate(parse_plan({"datasets": [{"name": "arc_easy_ppl"}]}))
    plan = parse_plan({"models": [{"path": "org/m", "abbr": "a"}, {"path": "org/n", "abbr": "a"}],
                       "datasets": [{"name": "arc_easy_ppl"}]})
    with pytest.raises(PlanError, match="two models share the name 'a'"):
        validate(plan)
    ok = parse_plan({"models": [{"path": "org/m", "model_kwargs": {"torch_dtype": "float32"}}],
                     "datasets": [{"name": "mmlu_ppl", "fewshot": 5}]})
    assert plan_to_json(plan_from_json(plan_to_json(ok))) == plan_to_json(ok)
    assert ok.models[0].dtype == "float32"


def test_bad_toml(tmp_path):
    p = tmp_path / "p.toml"
    p.write_text("[[models]\npath=")
    with pytest.raises(PlanError, match="not valid TOML"):
        load_plan(p)


def test_the_docs_example_runs(tmp_path):
    """docs/plan.md's complete example (model swapped for the scripted stand-in) runs as written."""
    text = (ROOT / "docs" / "plan.md").read_text()
    example = re.search(r"## Example.*?```toml\n(.*?)```", text, re.S).group(1)
    example = example.replace('path = "HuggingFaceTB/SmolLM2-135M-Instruct"',
                              'path = "HuggingFaceTB/SmolLM2-135M-Instruct"\nbackend = "scripted"')
    example = example.replace('work_dir = "outputs"', f'work_dir = "{tmp_path / "outputs"}"')
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "quiz.jsonl").write_text("\n".join(json.dumps(
        {"q": f"Is {i} even?", "options": ["yes", "no"], "answer": i % 2}) for i in range(12)))
    (tmp_path / "data" / "capitals.jsonl").write_text("\n".join(json.dumps(r) for r in [
        {"country": "France", "capital": "Paris"}, {"country": "Japan", "capital": "Tokyo"}]))
    plan = tmp_path / "plan.toml"
    plan.write_text(example)
    env = clean_env(HF_HOME=str(tmp_path / "hf"), EVALCORE_STATE_DIR=str(tmp_path / "state"))
    r = run_cli("cachekit", "prefetch", "--local", f"dataset:allenai/ai2_arc={ROOT}/bundles/demo/data/ai2_arc",
                "--out", tmp_path / "b", env=env)
    assert r.returncode == 0, r.stderr
    assert run_cli("cachekit", "import", tmp_path / "b", env=env).returncode == 0
    r = _run_in(ROOT, plan, env)  # the data paths are relative to the plan file, not to the cwd
    assert r.returncode == 0, r.stderr
    for name in ("my_quiz", "my_capitals", "arc_easy_ppl"):
        assert name in r.stdout


def _run_in(cwd: Path, plan: Path, env: dict):
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", "cli.evalcore_cli", "eval", str(plan)], cwd=cwd,
                          env=dict(env, PYTHONPATH=env["PYTHONPATH"]), capture_output=True, text=True, timeout=300)


def test_worker_shapes_follow_the_remaining_work():
    from evalcore.runners.local import plan_workers

    assert plan_workers(0, 1, 3, {1: 10}) == [0, 0, 0]
    assert plan_workers(8, 1, 8, {1: 100}) == [1] * 8
    # 3/4 of the work needs 1 GPU, 1/4 needs 2: GPU-time 75 vs 50 -> 4.8 slots vs 3.2
    shape = plan_workers(8, 1, 8, {1: 75, 2: 25})
    assert sum(shape) <= 8 and shape.count(2) >= 1 and shape.count(1) >= 4
    assert plan_workers(8, 1, 2, {1: 50, 2: 50}) == [1, 2]  # capped by --max-num-workers, one per class
    assert plan_workers(4, 2, 8, {1: 10}) == [1] * 8  # two workers per GPU
    assert plan_workers(2, 1, 4, {4: 10}) == []  # nothing fits (refused earlier, at plan time)
