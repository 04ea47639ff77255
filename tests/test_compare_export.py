"""`evalcore compare` (paired tests on shared samples, differences within noise flagged) and
`evalcore export` (plain SQLite tables through sqlite-utils)."""

from __future__ import annotations

import json
import sqlite3

import pytest

from evalcore.backends.base import GenRequest
from evalcore.backends.scripted import ScriptedBackend
from evalcore.report.compare import mcnemar_exact, paired_bootstrap, paired_test
from tests.conftest import clean_env, run_cli, tree_state
from tests.test_engine import ARC_DATASET, run_dir_of, scripted, write_plan

N = 30


def test_paired_tests():
    assert mcnemar_exact([1, 1, 0, 0], [1, 1, 0, 0]) == 1.0
    assert mcnemar_exact([0] * 6, [1] * 6) == pytest.approx(2 / 64)           # 6 discordant, all one way
    assert mcnemar_exact([0, 1, 0, 1], [1, 0, 1, 0]) == 1.0
    a, b = [0.1 * i for i in range(20)], [0.1 * i + 0.5 for i in range(20)]
    assert paired_bootstrap(a, b) == paired_bootstrap(a, b) == 0.0              # fixed seed, all diffs > 0
    assert paired_test([0.0, 1.0], [1.0, 1.0])[0] == "mcnemar"
    assert paired_test([0.2, 1.0], [1.0, 1.0])[0] == "bootstrap"


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    """Two runs of one plan: an ARC set and a generation set whose gold is what the scripted
    model answers; the second run is rescored with a filter that makes every answer wrong."""
    d = tmp_path_factory.mktemp("cmp")
    env = clean_env(HF_HOME=str(d / "hf"), EVALCORE_STATE_DIR=str(d / "state"))
    template = "Q: {q}\nA:"
    rows = [{"q": f"question {i}"} for i in range(N)]
    model = ScriptedBackend("alpha")
    answers = model.generate([GenRequest(template.format(**r), 8, ()) for r in rows])
    gen = d / "echo.jsonl"
    gen.write_text("".join(json.dumps({**r, "a": a}) + "\n" for r, a in zip(rows, answers, strict=True)))
    datasets = ARC_DATASET + (f'\n[[datasets]]\nabbr = "echo"\npath = "{gen}"\nmode = "gen"\n'
                              f'template = "Q: {{{{q}}}}\\nA:"\nlabel = "a"\n')
    plan = write_plan(d / "plan.toml", scripted("alpha"), datasets, limit=N)
    runs = []
    for _ in range(2):
        r = run_cli("evalcore", "eval", plan, env=env)
        assert r.returncode == 0, r.stderr
        runs.append(run_dir_of(r.stdout))
    r = run_cli("evalcore", "rescore", runs[1], "--filter", r"regex:(\d+)", env=env)
    assert r.returncode == 0, r.stderr
    return d, env, runs


def test_compare_flags_noise_and_real_differences(two_runs):
    d, env, (a, b) = two_runs
    r = run_cli("evalcore", "compare", a, b, "--format", "json", env=env)
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["b"]["results_version"]["kind"] == "rescore"
    rows = {(x["dataset"], x["metric"]): x for x in doc["rows"]}
    echo = rows[("echo", "exact_match")]
    assert (echo["a"], echo["b"], echo["diff"], echo["n_shared"]) == (1.0, 0.0, -1.0, N)
    assert echo["test"] == "mcnemar" and echo["p_value"] == pytest.approx(2 / 2 ** N) and echo["verdict"] == "significant"
    arc = rows[("arc", "acc")]
    assert arc["diff"] == 0.0 and arc["p_value"] == 1.0 and arc["verdict"] == "within noise"
    table = run_cli("evalcore", "compare", a, b, env=env).stdout
    assert "within noise" in table and "significant" in table and "-100.00" in table
    md = run_cli("evalcore", "compare", a, b, "--format", "md", env=env).stdout
    assert "| model | dataset | metric" in md
    out = d / "cmp.html"
    r = run_cli("evalcore", "compare", a, b, "--format", "html", "--out", out, env=env)
    assert r.returncode == 0, r.stderr
    page = out.read_text()
    assert 'id="compare-table"' in page and "significant" in page and "http" not in page.split("<body>")[1]
    r = run_cli("evalcore", "compare", a, d / "nope", env=env)
    assert r.returncode == 1 and r.stderr.startswith("error: no run")


def test_export_writes_plain_tables(two_runs):
    d, env, (a, b) = two_runs
    db = d / "results.db"
    for run in (a, b, b):                                           # b twice: replaced, not doubled
        r = run_cli("evalcore", "export", run, "--db", db, env=env)
        assert r.returncode == 0, r.stderr
    con = sqlite3.connect(db)
    q = lambda sql, *p: con.execute(sql, p).fetchall()  # noqa: E731
    assert {t for (t,) in q("SELECT name FROM sqlite_master WHERE type = 'table'")} >= {
        "runs", "settings", "result_versions", "results", "samples", "sample_metrics"}
    assert q("SELECT count(*) FROM runs") == [(2,)]
    assert q("SELECT count(*) FROM samples") == [(2 * 2 * N,)]
    assert q("SELECT count(*) FROM results WHERE run_id = ?", b.name) == [(2 * 3,)]   # 2 versions x 3 metrics
    assert q("SELECT value, n FROM results WHERE run_id = ? AND results_version = 2 AND dataset = 'echo'",
             b.name) == [(0.0, N)]
    assert q("SELECT sum(correct) FROM samples WHERE run_id = ? AND dataset = 'echo'", a.name) == [(N,)]
    assert q("SELECT count(*) FROM sample_metrics WHERE run_id = ? AND metric = 'acc'", a.name) == [(N,)]
    assert q("SELECT value FROM settings WHERE run_id = ? AND model = 'alpha' AND dataset = 'arc' AND key = 'backend'",
             a.name) == [("scripted",)]
    con.close()
    foreign = d / "notes.db"
    foreign.write_text("my notes\n")
    before = tree_state(d)
    r = run_cli("evalcore", "export", a, "--db", foreign, env=env)
    err = [x for x in r.stderr.splitlines() if x.startswith("error:")]
    assert r.returncode == 2 and len(err) == 1 and "is not an SQLite database; not overwritten" in err[0]
    assert tree_state(d) == before
