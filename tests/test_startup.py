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
    "import evalcore, evalcore.plan, evalcore.catalog",
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
