"""One error table: the exit codes and error classes the docs list are exactly the ones the code
has (every code and class listed, none extra), every error a user can see lives in its package's
error module below the shared root, and the CLI's --help names every code its tool returns."""

from __future__ import annotations

import ast
import re

import pytest

import cachekit.errors as ck
import evalcore.errors as ev
from tests.conftest import ROOT

# Codes no error class carries: success, interrupted (cli/common.py, evalcore eval), and for
# evalcore "some partitions failed" (the driver's outcome).
PLAIN_CODES = {"cachekit": {ck.EXIT_OK, ck.EXIT_INTERRUPTED},
               "evalcore": {ck.EXIT_OK, ck.EXIT_FAILED, ck.EXIT_INTERRUPTED}}
DOCS = {"cachekit": ("docs/cachekit.md", "## Exit codes and errors"), "evalcore": ("docs/evalcore.md", "## Exit codes")}
ROOTS = {"cachekit": ck.CachekitError, "evalcore": ev.EvalcoreError}
MODULES = {"cachekit": ck, "evalcore": ev}
ABSTRACT = {"ToolError", "CachekitError"}  # roots never raised on their own; not in a table
# Exceptions that never reach a user: each is caught inside the product and turned into one above.
INTERNAL = {
    "evalcore/engine/worker.py": {"ClaimLost", "Stop"},  # worker control flow
    "evalcore/runners/slurm.py": {"_Interrupted"},  # a signal turned into KeyboardInterrupt
    "evalcore/benchmarks/rows.py": {"RowError"},  # the dry pass turns it into BadRow (naming the dataset)
}


def _classes(tool: str) -> dict[str, type]:
    """Every error class the tool's error module defines, by name."""
    mod = MODULES[tool]
    return {name: obj for name, obj in vars(mod).items()
            if isinstance(obj, type) and issubclass(obj, ROOTS[tool]) and obj.__module__ == mod.__name__
            and name not in ABSTRACT}


def _doc_table(tool: str) -> dict[int, list[str]]:
    """code -> the classes its row names, from the docs' exit code table."""
    path, heading = DOCS[tool]
    text = (ROOT / path).read_text(encoding="utf-8")
    section = text.split(heading + "\n", 1)[1].split("\n## ", 1)[0]
    rows: dict[int, list[str]] = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and cells[0].isdigit():
            assert int(cells[0]) not in rows, f"{path}: code {cells[0]} listed twice"
            assert len(cells) == 3, f"{path}: row {line!r} needs code | meaning | error classes"
            rows[int(cells[0])] = re.findall(r"`(\w+)`", cells[2])
    assert rows, f"{path}: no exit code table under {heading!r}"
    return rows


@pytest.mark.parametrize("tool", ["cachekit", "evalcore"])
def test_the_documented_table_is_the_code(tool):
    rows = _doc_table(tool)
    classes = _classes(tool)
    documented = {name: code for code, names in rows.items() for name in names}
    assert sorted(n for names in rows.values() for n in names) == sorted(documented), "a class listed twice"
    assert set(documented) == set(classes), (f"{DOCS[tool][0]}: missing {sorted(set(classes) - set(documented))}, "
                                             f"extra {sorted(set(documented) - set(classes))}")
    for name, code in documented.items():
        assert classes[name].exit_code == code, f"{name}: documented {code}, code says {classes[name].exit_code}"
    assert set(rows) == {c.exit_code for c in classes.values()} | PLAIN_CODES[tool]


@pytest.mark.parametrize("tool", ["cachekit", "evalcore"])
def test_every_class_carries_a_code_and_a_hint_attribute(tool):
    for name, cls in _classes(tool).items():
        assert issubclass(cls, ck.ToolError) and isinstance(cls.exit_code, int) and cls.exit_code > 0, name
        assert isinstance(cls.default_hint, str), name
        assert cls.__doc__ and cls.__doc__.strip(), f"{name} says what it means"


def test_every_code_is_defined_once_in_cachekit_errors():
    """No module but cachekit/errors.py assigns an EXIT_ constant or a numeric exit_code."""
    offenders = []
    for path in sorted(p for pkg in ("cachekit", "evalcore", "cli") for p in (ROOT / pkg).rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AnnAssign) else []
            names = [n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)]
            if rel != "cachekit/errors.py" and any(n.startswith("EXIT_") for n in names):
                offenders.append(f"{rel}:{node.lineno} defines {names}")
            if ("exit_code" in names and isinstance(node.value, ast.Constant)
                    and isinstance(node.value.value, int)):
                offenders.append(f"{rel}:{node.lineno} exit_code = {node.value.value} (use an EXIT_ name)")
    assert not offenders, offenders


def test_error_classes_live_in_the_error_modules():
    """An exception class defined anywhere else in the product is one of the few internal ones."""
    known = set(_classes("cachekit")) | set(_classes("evalcore")) | ABSTRACT
    found: dict[str, set[str]] = {}
    for path in sorted(p for pkg in ("cachekit", "evalcore", "cli") for p in (ROOT / pkg).rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        if rel in ("cachekit/errors.py", "evalcore/errors.py"):
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.ClassDef):
                continue
            bases = {b.id if isinstance(b, ast.Name) else b.attr if isinstance(b, ast.Attribute) else "" for b in node.bases}
            if any(b in known or b.endswith(("Error", "Exception", "Interrupt")) for b in bases):
                found.setdefault(rel, set()).add(node.name)
    assert found == INTERNAL


def test_the_abstract_roots_are_never_raised_on_their_own():
    calls = []
    for path in sorted(p for pkg in ("cachekit", "evalcore", "cli") for p in (ROOT / pkg).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ABSTRACT:
                calls.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert not calls


def test_the_documented_rerun_advice_is_the_code():
    """docs/evalcore.md names exactly the classes for which no `resume` is advised."""
    text = (ROOT / "docs/evalcore.md").read_text(encoding="utf-8")
    para = text.split("never with `resume` (`rerun_can_fix = False`):", 1)[1].split("\n\n", 1)[0]
    documented = set(re.findall(r"`(\w+)`", para))
    assert documented == set(ev.RERUN_CANNOT_FIX)
    assert {n for n, c in _classes("evalcore").items() if not c.rerun_can_fix} == ev.RERUN_CANNOT_FIX - {"TemplateError"}


@pytest.mark.parametrize("tool", ["cachekit", "evalcore"])
def test_the_help_names_every_exit_code(tool):
    from click.testing import CliRunner

    from cli.cachekit_cli import cachekit
    from cli.evalcore_cli import evalcore

    out = CliRunner().invoke({"cachekit": cachekit, "evalcore": evalcore}[tool], ["--help"]).output
    said = " ".join(out.split("Exit codes:", 1)[1].split())
    codes = [int(c) for c in re.findall(r"(?:^|, )(\d+) ", said)]
    assert codes == sorted(_doc_table(tool)), said


def test_a_shared_root_keeps_the_trees_apart():
    assert not issubclass(ev.EvalcoreError, ck.CachekitError) and not issubclass(ck.CachekitError, ev.EvalcoreError)
    err = ev.PlanError("bad key x")
    assert str(err) == "bad key x" and err.hint == ev.PlanError.default_hint and err.exit_code == ck.EXIT_USAGE
    assert ev.PlanError("y", hint="").hint == ""


def test_the_readme_lists_evalcores_codes():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    line = " ".join(text.split("Exit codes: ", 1)[1].split("\n\n", 1)[0].split())
    assert [int(c) for c in re.findall(r"(?:^|, )(\d+) ", line)] == sorted(_doc_table("evalcore"))

