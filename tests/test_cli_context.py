"""`--debug` and `--work-dir` are each declared once (cli/common.py) and reach the commands through
click's context object; both work where users put them (`--debug` before the command,
`--work-dir` after it), and every command's --help says what it does with an example."""

from __future__ import annotations

import ast
import json

import pytest
from click.testing import CliRunner

from cli.cachekit_cli import cachekit
from cli.evalcore_cli import evalcore
from tests.conftest import ROOT, clean_env, run_cli


def _option_declarations(flag: str) -> list[str]:
    """Where a click option with this flag is declared in cli/ (string literals passed to click.option)."""
    found = []
    for path in sorted((ROOT / "cli").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "option"
                    and any(isinstance(a, ast.Constant) and a.value == flag for a in node.args)):
                found.append(f"{path.name}:{node.lineno}")
    return found


@pytest.mark.parametrize("flag", ["--debug", "--work-dir"])
def test_each_shared_flag_is_declared_once(flag):
    where = _option_declarations(flag)
    assert len(where) == 1 and where[0].startswith("common.py:"), where


def test_no_command_walks_clicks_parents():
    for path in sorted((ROOT / "cli").glob("*.py")):
        text = path.read_text(encoding="utf-8")
        assert "find_root" not in text and ".parent.params" not in text, path.name


def _fake_run(root, run_id: str) -> None:
    """The smallest thing find_run takes for a run: a folder with a run.json."""
    (root / run_id).mkdir(parents=True)
    (root / run_id / "run.json").write_text(json.dumps({"run_id": run_id}))


def test_work_dir_after_the_command_is_where_runs_are_looked_up(tmp_path):
    """`evalcore status --work-dir DIR` takes the newest run under DIR (or a run id under it): the
    fake run has no ledger, and the error names the ledger of DIR's run."""
    _fake_run(tmp_path / "w", "20260101-000000-aaaa")
    env = clean_env(HF_HOME=str(tmp_path / "hf"), EVALCORE_STATE_DIR=str(tmp_path / "state"))
    r = run_cli("evalcore", "status", "--work-dir", tmp_path / "w", env=env)
    assert str(tmp_path / "w" / "20260101-000000-aaaa") in r.stderr, r.stderr
    r = run_cli("evalcore", "status", "20260101-000000-aaaa", "--work-dir", tmp_path / "w", env=env)
    assert str(tmp_path / "w" / "20260101-000000-aaaa") in r.stderr, r.stderr
    r = run_cli("evalcore", "status", "--work-dir", tmp_path / "empty", env=env)
    assert r.returncode == 1 and r.stderr.splitlines()[0] == f"error: no run in {tmp_path / 'empty'}", r.stderr


def test_without_work_dir_runs_are_looked_up_under_outputs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    res = CliRunner().invoke(evalcore, ["status"])
    assert res.exit_code == 1 and "error: no run in outputs" in res.output, res.output


def test_eval_takes_work_dir_from_the_flag_over_the_plan(tmp_path):
    from cli.evalcore_cli import _plan_from

    plan = tmp_path / "plan.toml"
    plan.write_text('[run]\nwork_dir = "from-plan"\n\n[[models]]\nabbr = "m"\npath = "org/m"\n\n'
                    '[[datasets]]\nname = "arc_easy_ppl"\n')
    sub = evalcore.get_command(None, "eval")
    ctx = sub.make_context("eval", [str(plan), "--work-dir", str(tmp_path / "flag")])
    flags = {k: v for k, v in ctx.params.items() if k != "plan_file"}
    assert "work_dir" not in flags  # it travels on the context object, not as a parameter
    assert _plan_from(plan, flags, work_dir=ctx.obj.work_dir).run.work_dir == str(tmp_path / "flag")
    ctx = sub.make_context("eval", [str(plan)])
    assert ctx.obj.work_dir is None
    assert _plan_from(plan, {k: v for k, v in ctx.params.items() if k != "plan_file"}).run.work_dir == "from-plan"


@pytest.mark.parametrize("tool", ["evalcore", "cachekit"])
def test_debug_before_the_command_shows_the_traceback(tmp_path, tool):
    env = clean_env(HF_HOME=str(tmp_path / "hf"), EVALCORE_STATE_DIR=str(tmp_path / "state"))
    args = (["status", "--work-dir", tmp_path / "empty"] if tool == "evalcore"
            else ["verify", tmp_path / "no-such-bundle"])
    plain = run_cli(tool, *args, env=env)
    debug = run_cli(tool, "--debug", *args, env=env)
    assert plain.returncode == debug.returncode and plain.returncode not in (0, 2), plain.stderr
    assert "Traceback" not in plain.stderr and plain.stderr.startswith("error: "), plain.stderr
    assert "Traceback (most recent call last)" in debug.stderr, debug.stderr
    assert debug.stderr.splitlines()[-len(plain.stderr.splitlines()):] == plain.stderr.splitlines()


def _commands(group):
    yield [], group
    for name, cmd in group.commands.items():
        yield [name], cmd


@pytest.mark.parametrize("group", [evalcore, cachekit], ids=["evalcore", "cachekit"])
def test_every_command_says_what_it_does_with_an_example(group):
    for path, cmd in _commands(group):
        res = CliRunner().invoke(group, [*path, "--help"])
        assert res.exit_code == 0, res.output
        assert cmd.help and cmd.help.strip().splitlines()[0], path
        assert "Example" in res.output or "Online host:" in res.output, path
