"""The escapes of issue 12 through the public path, `evalcore eval` with humaneval_gen and
allow_code_execution on a dataset bundled and imported with cachekit, a scripted model:

* the model's generation attacks: real HumanEval rows, answered with a body followed by every
  probe (the ledger write of the issue included);
* the dataset attacks: a hostile humaneval dataset whose `test` field carries one probe per row
  (the model's answer lands in a comment), run exactly as a generated program would be.

Each is contained: the host's files, processes, sockets, the decoy ledger and the run's own
ledger.db are as they were.

Also: without an OS sandbox the run is refused before a run folder exists (exit 2, saying what is
missing), and the weak guard opt-in is recorded in the run and shown in its report."""

from __future__ import annotations

import json
import os
import sqlite3
import textwrap
from pathlib import Path

import pytest

from tests.conftest import ROOT, clean_env, run_cli
from tests.sandbox_probes import PROBE_NAMES, SECRET, Host, kill_leftovers, probes

DATA = ROOT / "tests" / "data"


def _schema_tables() -> set[str]:
    """The tables a fresh ledger has (whatever the schema version): all a run may hold."""
    import tempfile

    from evalcore.engine.ledger import Ledger

    with tempfile.TemporaryDirectory() as d:
        Ledger(Path(d) / "ledger.db", create=True).close()
        con = sqlite3.connect(Path(d) / "ledger.db")
        try:
            return {n for (n,) in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        finally:
            con.close()


EVALCORE_TABLES = _schema_tables()


def hostile_rows(host: Host) -> list[dict]:
    rows = []
    for name, program in sorted(probes(host, 0).items()):
        rows.append({"task_id": f"Probe/{name}", "prompt": "def entry():\n    return 1  # the model says: ",
                     "canonical_solution": "", "entry_point": "entry",
                     "test": "\n\ndef check(candidate):\n" + textwrap.indent(program, "    ") + "    pass\n"})
    return rows


def install(tmp_path: Path, rows: list[dict]) -> dict[str, str]:
    """The rows as openai/openai_humaneval (test split) in a fresh HF home; returns the CLI env."""
    folder = tmp_path / "hostile-humaneval"
    folder.mkdir()
    (folder / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    env = clean_env(HF_HOME=str(tmp_path / "hf"), EVALCORE_STATE_DIR=str(tmp_path / "state"), HF_TOKEN=SECRET)
    r = run_cli("cachekit", "prefetch", "--local", f"dataset:openai/openai_humaneval={folder}",
                "--out", tmp_path / "bundle.tar", env=env)
    assert r.returncode == 0, r.stderr
    r = run_cli("cachekit", "import", tmp_path / "bundle.tar", env=env)
    assert r.returncode == 0, r.stderr
    return env


def plan_file(tmp_path: Path, generation: str | None = None) -> Path:
    plan = tmp_path / "plan.toml"
    options = f"backend_options = {{ generation = {json.dumps(generation)} }}\n" if generation is not None else ""
    plan.write_text(f'[run]\nwork_dir = "{tmp_path / "outputs"}"\nmax_num_workers = 1\n\n'
                    '[[models]]\nabbr = "alpha"\npath = "alpha"\nbackend = "scripted"\n' + options + '\n'
                    '[[datasets]]\nname = "humaneval_gen"\nallow_code_execution = true\n')
    return plan


def attacking_generation(host: Host) -> str:
    """A function body, then every probe at module level (each in its own function, errors
    swallowed unless a secret leaked); the endless one last."""
    out = ["    return False\n"]
    names = sorted(PROBE_NAMES, key=lambda n: n == "fork_survivors_at_timeout")
    for i, name in enumerate(names):
        out.append(f"\ndef _probe_{i}():\n" + textwrap.indent(probes(host, 0)[name], "    ") + "    pass\n"
                   f"try:\n    _probe_{i}()\nexcept BaseException as exc:\n"
                   "    if 'LEAKED' in str(exc):\n        raise\n")
    return "".join(out)


def run_ledger_tables(run_dir: Path) -> set[str]:
    con = sqlite3.connect(run_dir / "ledger.db")
    tables = {t for (t,) in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert con.execute("PRAGMA quick_check").fetchone()[0] == "ok"
    con.close()
    return tables


@pytest.fixture
def host(tmp_path: Path):
    h = Host(tmp_path).start()
    yield h
    h.stop()
    kill_leftovers(h.marker)


def test_attacking_generations_are_contained(tmp_path: Path, host: Host) -> None:
    real = [json.loads(x) for x in (DATA / "openai_humaneval" / "test.jsonl").read_text().splitlines()]
    env = install(tmp_path, real)
    r = run_cli("evalcore", "eval", plan_file(tmp_path, attacking_generation(host)), env=env, timeout=600)
    assert r.returncode == 0, r.stderr
    run_dir = Path(r.stdout.splitlines()[0].split(": ", 1)[1])
    assert host.breaches() == []
    assert run_ledger_tables(run_dir) == EVALCORE_TABLES  # the generated code did not write the run's ledger
    con = sqlite3.connect(run_dir / "ledger.db")
    samples = [json.loads(o) for (o,) in con.execute("SELECT output_json FROM samples")]
    con.close()
    assert len(samples) == len(real)
    for s in samples:
        assert "_probe_0()" in s["requests"][0]["generation"]
        assert s["execution"]["sandbox"] == "namespaces"
        assert s["execution"]["status"] == "timeout", s["execution"]  # reached the last, endless probe
        assert SECRET not in json.dumps(s)


def test_hostile_humaneval_dataset_is_contained(tmp_path: Path, host: Host) -> None:
    env = install(tmp_path, hostile_rows(host))
    r = run_cli("evalcore", "eval", plan_file(tmp_path), env=env, timeout=600)
    assert r.returncode == 0, r.stderr
    assert "generated code: OS sandbox" in r.stderr
    run_dir = Path(r.stdout.splitlines()[0].split(": ", 1)[1])
    assert host.breaches() == []
    con = sqlite3.connect(run_dir / "ledger.db")
    tables = {t for (t,) in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert con.execute("PRAGMA quick_check").fetchone()[0] == "ok"
    samples = [json.loads(o) for (o,) in con.execute("SELECT output_json FROM samples ORDER BY sample_index")]
    con.close()
    assert tables == EVALCORE_TABLES, tables  # the run's own ledger was not written by the programs
    assert len(samples) == len(PROBE_NAMES)
    by_name = {s["gold"].split("/", 1)[1]: s for s in samples}
    assert set(by_name) == set(PROBE_NAMES)
    for name, s in by_name.items():
        assert s["execution"]["sandbox"] == "namespaces", name
        assert s["execution"]["status"] in ("passed", "failed", "timeout"), (name, s["execution"])
        assert SECRET not in json.dumps(s), name
    # passed: nothing leaked (a leak fails it, naming the secret); timeout only on a very loaded machine
    assert by_name["read_hf_token"]["execution"]["status"] in ("passed", "timeout"), by_name["read_hf_token"]
    assert by_name["fork_survivors_at_timeout"]["execution"]["status"] == "timeout"
    assert json.loads((run_dir / "run.json").read_text())["security"]["code_sandbox"] == "namespaces"


def _without_bwrap(env: dict[str, str], tmp_path: Path) -> dict[str, str]:
    """A PATH with every tool of this one but bwrap (what a host without bubblewrap has)."""
    bin_dir = tmp_path / "bin-without-bwrap"
    bin_dir.mkdir()
    for folder in env["PATH"].split(os.pathsep):
        if not os.path.isdir(folder):
            continue
        for name in os.listdir(folder):
            target = Path(folder, name)
            if name != "bwrap" and not (bin_dir / name).exists() and os.access(target, os.X_OK):
                (bin_dir / name).symlink_to(target)
    return dict(env, PATH=str(bin_dir))


def test_no_os_sandbox_refuses_before_any_work(tmp_path: Path) -> None:
    rows = [{"task_id": "HumanEval/0", "prompt": "def entry():\n    return 1  # ", "canonical_solution": "",
             "entry_point": "entry", "test": "def check(candidate):\n    assert candidate() == 1\n"}]
    env = _without_bwrap(install(tmp_path, rows), tmp_path)
    r = run_cli("evalcore", "eval", plan_file(tmp_path), env=env)
    assert r.returncode == 2, (r.stdout, r.stderr)
    first = r.stderr.splitlines()[0]
    assert first.startswith("error: refusing to run generated code (humaneval_gen)"), r.stderr
    assert "apt-get install bubblewrap" in first and "unsafe_allow_weak_sandbox" in r.stderr
    assert not (tmp_path / "outputs").exists()  # nothing half-made


def test_weak_guard_opt_in_is_recorded_and_reported(tmp_path: Path) -> None:
    rows = [{"task_id": "HumanEval/0", "prompt": "def entry():\n    return 1  # ", "canonical_solution": "",
             "entry_point": "entry", "test": "def check(candidate):\n    assert candidate() == 1\n"}]
    env = _without_bwrap(install(tmp_path, rows), tmp_path)
    r = run_cli("evalcore", "eval", plan_file(tmp_path), "--unsafe-allow-weak-sandbox", env=env)
    assert r.returncode == 0, r.stderr
    assert "WARNING: generated code is run under the WEAK Python guard" in r.stderr
    run_dir = Path(r.stdout.splitlines()[0].split(": ", 1)[1])
    doc = json.loads((run_dir / "run.json").read_text())
    assert doc["plan"]["run"]["unsafe_allow_weak_sandbox"] is True
    assert doc["security"]["code_sandbox"] == "guard" and "bubblewrap is not installed" in doc["security"]["code_sandbox_reason"]
    rep = run_cli("evalcore", "report", run_dir, "--format", "md", env=env)
    assert rep.returncode == 0 and "WARNING: generated code is run under the WEAK Python guard" in rep.stdout
    js = run_cli("evalcore", "report", run_dir, "--format", "json", env=env)
    assert json.loads(js.stdout) and "WEAK Python guard" in js.stderr
    con = sqlite3.connect(run_dir / "ledger.db")
    (out,) = con.execute("SELECT output_json FROM samples").fetchone()
    con.close()
    assert json.loads(out)["execution"] == {"status": "passed", "message": "", "sandbox": "guard"}


def test_opt_in_without_code_execution_is_refused(tmp_path: Path) -> None:
    plan = tmp_path / "plan.toml"
    plan.write_text(f'[run]\nwork_dir = "{tmp_path / "outputs"}"\nunsafe_allow_weak_sandbox = true\n'
                    '[[models]]\npath = "alpha"\nbackend = "scripted"\n[[datasets]]\nname = "arc_easy_ppl"\n')
    r = run_cli("evalcore", "eval", plan, env=clean_env(HF_HOME=str(tmp_path / "hf")))
    assert r.returncode == 2 and "no dataset of the plan runs generated code" in r.stderr.splitlines()[0]
    assert not (tmp_path / "outputs").exists()
