"""The runner registry (evalcore/runners/registry.py): runners looked up by name, each checking its
own `[run.<name>]` table before any run folder exists; nothing outside the registry and the
runners themselves branches on a runner's name."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

from evalcore.errors import PlanError
from evalcore.plan.spec import parse_plan, plan_from_json, plan_to_json
from evalcore.runners import registry
from tests.conftest import ROOT, clean_env, run_cli
from tests.test_engine import run_dir_of, scripted, write_plan

PLAN = {"models": [{"path": "alpha", "backend": "scripted"}], "datasets": [{"name": "arc_easy_ppl"}]}


def _plan(**run):
    return parse_plan({**PLAN, "run": run})


def test_every_runner_loads_and_checks_its_settings():
    assert registry.names() == ("local", "slurm")
    for spec in registry.RUNNERS.values():
        cls = spec.runner_class()
        assert callable(cls.run), spec.name
        spec.check_settings({})  # its defaults hold
    assert registry.check_plan(_plan()).name == "local"
    assert registry.check_plan(_plan(runner="slurm")).host_gpus is False
    assert registry.lookup("slurm").check_settings({"max_retries": 0}).max_retries == 0


@pytest.mark.parametrize("run, message", [
    ({"runner": "ray"}, "unknown runner 'ray' (local or slurm)"),
    ({"runner": "slurm", "slurm": {"colour": "blue"}}, "[run.slurm]: unknown key(s) colour"),
    ({"slurm": {"max_retries": -1}}, "[run.slurm]: 'max_retries' must be an integer >= 0"),  # local, but still checked
    ({"ray": {"nodes": 2}}, "[run.ray]: no runner is called 'ray' (local or slurm)"),
    ({"local": {"workers": 2}}, "[run.local]: the local runner takes no settings, got workers"),
])
def test_bad_runner_or_table_is_a_plan_error(run, message):
    with pytest.raises(PlanError) as err:
        registry.check_plan(_plan(**run))
    assert str(err.value).startswith(message), str(err.value)


def test_a_table_under_a_setting_name_or_a_non_table_stays_a_plan_file_error():
    with pytest.raises(PlanError, match=r"\[run\]: unknown key\(s\) slurm"):
        _plan(slurm="partition=gpu")  # not a table: an unknown setting, as any other
    with pytest.raises(PlanError, match="'limit' must be an integer"):
        _plan(limit={"n": 3})


def test_runner_tables_round_trip_through_run_json():
    plan = _plan(runner="slurm", slurm={"partition": "gpu", "extra_args": ["--mem=8G"]})
    doc = json.loads(plan_to_json(plan))
    assert doc["run"]["slurm"] == {"partition": "gpu", "extra_args": ["--mem=8G"]}  # as the plan file wrote it
    assert "runner_settings" not in doc["run"]
    back = plan_from_json(plan_to_json(plan))
    assert dict(back.run.runner_settings["slurm"])["partition"] == "gpu"
    assert registry.lookup("slurm").check_settings(back.run.runner_settings["slurm"]).extra_args == ("--mem=8G",)
    assert plan_to_json(back) == plan_to_json(plan)


def test_worker_logs_follow_their_runner(tmp_path):
    assert registry.worker_log(tmp_path, "w3") == tmp_path / "logs" / "worker-w3.log"
    assert registry.worker_log(tmp_path, "slurm-123") == tmp_path / "logs" / "slurm-123.out"
    assert registry.worker_log(tmp_path, None) is None
    assert registry.runner_of_worker("slurm-9").name == "slurm"
    assert registry.runner_of_worker("w1").name == "local"
    from evalcore.runners.slurm_jobs import Job

    assert registry.runner_of_worker(Job("77", 1, "s", 0.0).worker_id).name == "slurm"  # the ids it really gives


def _env(tmp_path):
    return clean_env(HF_HOME=str(tmp_path / "hf"), EVALCORE_STATE_DIR=str(tmp_path / "state"))


def _with_table(plan: Path, table: str) -> Path:
    plan.write_text(plan.read_text().replace("[run]\n", f"[run]\n{table}\n", 1))
    return plan


@pytest.mark.parametrize("runner", ["local", "slurm"])
def test_eval_refuses_a_bad_slurm_table_before_a_run_folder_exists(tmp_path, runner):
    plan = _with_table(write_plan(tmp_path / "plan.toml", scripted("alpha"), limit=4, runner=runner),
                       'slurm = { colour = "blue" }')
    r = run_cli("evalcore", "eval", plan, env=_env(tmp_path))
    assert r.returncode == 2, r.stderr
    lines = [x for x in r.stderr.splitlines() if x.strip()]
    assert lines[0] == "error: [run.slurm]: unknown key(s) colour", r.stderr
    assert not (tmp_path / "outputs").exists()


def test_eval_refuses_an_unknown_runner_table(tmp_path):
    plan = _with_table(write_plan(tmp_path / "plan.toml", scripted("alpha"), limit=4), "ray = { nodes = 2 }")
    r = run_cli("evalcore", "eval", plan, env=_env(tmp_path))
    assert r.returncode == 2 and "[run.ray]: no runner is called 'ray' (local or slurm)" in r.stderr, r.stderr
    assert not (tmp_path / "outputs").exists()


def test_resume_refuses_a_bad_slurm_table_before_anything_is_rewritten(tmp_path):
    env = _env(tmp_path)
    r = run_cli("evalcore", "eval", write_plan(tmp_path / "plan.toml", scripted("alpha"), limit=4), env=env)
    assert r.returncode == 0, r.stderr
    run_dir = run_dir_of(r.stdout)
    doc = json.loads((run_dir / "run.json").read_text())
    doc["plan"]["run"]["slurm"] = {"poll_seconds": 0}
    (run_dir / "run.json").write_text(json.dumps(doc))
    before = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file() and p.suffix != ".db-shm"}
    for args in ((), ("--runner", "slurm")):
        r = run_cli("evalcore", "resume", run_dir, *args, env=env)
        assert r.returncode == 2, r.stderr
        assert "[run.slurm]: 'poll_seconds' must be a positive number of seconds" in r.stderr
        assert "resume" not in r.stderr.split("poll_seconds", 1)[1]  # a rerun cannot fix it: not advised
    after = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file() and p.suffix != ".db-shm"}
    assert after.keys() == before.keys() and after[run_dir / "run.json"] == before[run_dir / "run.json"]


def test_runner_choice_comes_from_the_registry(tmp_path):
    r = run_cli("evalcore", "eval", "--help", env=_env(tmp_path))
    assert r.returncode == 0 and "slurm: sbatch jobs" in " ".join(r.stdout.split()), r.stdout
    r = run_cli("evalcore", "resume", "--runner", "ray", env=_env(tmp_path))
    assert r.returncode == 2 and "'ray' is not one of 'local', 'slurm'" in r.stderr, r.stderr


# Only the registry and the runners themselves may name a runner; elsewhere a name in a
# comparison, a `startswith` or a choice list is the if-chain the registry replaced.
OUTSIDE = [p for p in sorted((ROOT / "evalcore").rglob("*.py")) + sorted((ROOT / "cli").rglob("*.py"))
           if p.parent != ROOT / "evalcore" / "runners" or p.name == "driver.py"]


def _runner_words() -> set[str]:
    return set(registry.RUNNERS) | {s.worker_prefix for s in registry.RUNNERS.values() if len(s.worker_prefix) > 1}


def test_nothing_outside_the_registry_branches_on_a_runner_name():
    words, bad = _runner_words(), []
    for path in OUTSIDE:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            consts = []
            if isinstance(node, ast.Compare):
                consts = [node.left, *node.comparators]
                consts += [e for c in node.comparators if isinstance(c, (ast.Tuple, ast.List, ast.Set)) for e in c.elts]
            elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and \
                    node.func.attr in ("startswith", "Choice"):
                consts = [a for arg in node.args for a in ([arg, *getattr(arg, "elts", [])])]
            for c in consts:
                if isinstance(c, ast.Constant) and isinstance(c.value, str) and c.value in words:
                    bad.append(f"{path.relative_to(ROOT)}:{c.lineno}: {c.value!r}")
    assert not bad, "runner names outside evalcore/runners/registry.py:\n" + "\n".join(bad)
