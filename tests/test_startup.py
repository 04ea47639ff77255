"""Importing the packages and running `--help` loads no heavy library (torch, transformers,
datasets, huggingface_hub, pyarrow): offline commands start fast and import nothing online."""

import subprocess
import sys

import pytest

from tests.conftest import ROOT, clean_env

HEAVY = ("torch", "transformers", "datasets", "huggingface_hub", "pyarrow", "numpy")

CODE = """
import sys
{stmt}
heavy = [m for m in {heavy!r} if m in sys.modules]
print(",".join(heavy))
"""


@pytest.mark.parametrize("stmt", [
    "import cachekit, cachekit.manifest, cachekit.bundle, cachekit.install, cachekit.index, cachekit.prefetch",
    "import evalcore, evalcore.plan.spec, evalcore.benchmarks.catalog",
    "import cli.cachekit_cli, cli.evalcore_cli",
    "from click.testing import CliRunner; import cli.cachekit_cli as c; CliRunner().invoke(c.cachekit, ['--help'])",
    "from click.testing import CliRunner; import cli.cachekit_cli as c; CliRunner().invoke(c.cachekit, ['prefetch', '--help'])",
])
def test_no_heavy_imports(stmt):
    r = subprocess.run([sys.executable, "-c", CODE.format(stmt=stmt, heavy=HEAVY)], env=clean_env(), cwd=ROOT,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "", f"heavy modules imported: {r.stdout.strip()}"


@pytest.mark.parametrize("cmd", [["cachekit"], ["cachekit", "prefetch"], ["cachekit", "verify"], ["cachekit", "import"],
                                 ["cachekit", "ls"], ["cachekit", "export"], ["evalcore"], ["evalcore", "needs"]])
def test_every_command_has_help_with_an_example(cmd):
    r = subprocess.run([sys.executable, "-m", f"cli.{cmd[0]}_cli", *cmd[1:], "--help"], env=clean_env(), cwd=ROOT,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "Example" in r.stdout or "Online host:" in r.stdout


def test_status_and_gpus_import_nothing_heavy(tmp_path):
    """`evalcore status` and `evalcore gpus` read SQLite only: no torch, no HF library."""
    from tests.conftest import run_cli
    from tests.test_engine import run_dir_of, scripted, write_plan

    env = clean_env(HF_HOME=str(tmp_path / "hf"), EVALCORE_STATE_DIR=str(tmp_path / "state"), EVALCORE_FAKE_GPUS="2")
    plan = write_plan(tmp_path / "plan.toml", scripted("alpha"), limit=4)
    r = run_cli("evalcore", "eval", plan, env=env)
    assert r.returncode == 0, r.stderr
    run_dir = run_dir_of(r.stdout)
    for args in (["status", str(run_dir)], ["gpus"], ["report", str(run_dir)]):
        stmt = ("from click.testing import CliRunner; import cli.evalcore_cli as c; "
                f"res = CliRunner().invoke(c.evalcore, {args!r}); assert res.exit_code == 0, res.output; "
                "print(res.output, file=sys.stderr)")
        p = subprocess.run([sys.executable, "-c", CODE.format(stmt=stmt, heavy=HEAVY)], env=env, cwd=ROOT,
                           capture_output=True, text=True, timeout=60)
        assert p.returncode == 0, p.stderr
        assert p.stdout.strip() == "", f"{args}: heavy modules imported: {p.stdout.strip()}"
        if args == ["gpus"]:
            assert "devices: 0, 1" in p.stderr and "gpu 0 slot 0: free" in p.stderr


LAZY = ("sqlite_utils", "jinja2", "matplotlib")


@pytest.mark.parametrize("args", [["--help"], ["report", "--help"], ["rescore", "--help"], ["compare", "--help"],
                                  ["export", "--help"]])
def test_report_libraries_load_only_when_used(args):
    """sqlite-utils (export), Jinja2 and matplotlib (HTML) are imported by the command that
    needs them, not at start-up; every new command has help with an example."""
    stmt = ("from click.testing import CliRunner; import cli.evalcore_cli as c; "
            f"res = CliRunner().invoke(c.evalcore, {args!r}); assert res.exit_code == 0, res.output; "
            "assert 'Example' in res.output, res.output")
    r = subprocess.run([sys.executable, "-c", CODE.format(stmt=stmt, heavy=HEAVY + LAZY)],
                       env=clean_env(), cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "", f"imported at start-up: {r.stdout.strip()}"
