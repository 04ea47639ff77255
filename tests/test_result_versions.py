"""Results in versions: schema 1 ledgers migrate (their results become version 1), a rescore adds a
version and keeps the old one, eval results after a rescore start a new version, subtask rows."""

from __future__ import annotations

import sqlite3

from evalcore.engine import db
from evalcore.engine.ledger import Ledger
from evalcore.engine.ledger_schema import _V1, APPLICATION_ID, SCHEMA
from tests.test_ledger import RUN, new_ledger, parts

ROW = {"model_key": "m1", "dataset_key": "arc", "metric": "acc", "value": 0.5, "stderr": 0.1, "n": 20}


def test_schema_1_ledger_migrates_with_its_results(tmp_path):
    path = tmp_path / "ledger.db"
    v1 = db.Schema("run ledger", APPLICATION_ID, {1: db.script(_V1)})
    conn = db.connect(path, create=True, schema=v1)
    conn.execute("INSERT INTO runs VALUES ('r', 1.0, 7.0, '/w', '{}', '[]', 'done', 'h', 0)")
    conn.execute("INSERT INTO results VALUES ('r', 'm1', 'arc', 'acc', 0.25, 0.05, 8)")
    conn.close()
    with Ledger(path, create=False) as ledger:
        assert ledger.result_versions("r") == [{"version": 1, "created_at": 7.0, "kind": "eval", "settings": {}}]
        assert ledger.results("r") == [{"model_key": "m1", "dataset_key": "arc", "metric": "acc", "value": 0.25,
                                        "stderr": 0.05, "n": 8}]
    assert db.read_header(path) == (APPLICATION_ID, SCHEMA.version)
    con = sqlite3.connect(path)
    assert "subtask" in [r[1] for r in con.execute("PRAGMA table_info(results)")]
    con.close()


def test_rescore_adds_a_version_and_keeps_the_old(tmp_path):
    ledger = new_ledger(tmp_path / "ledger.db", parts(2))
    assert ledger.put_results(RUN, [ROW, {**ROW, "subtask": "algebra", "value": 1.0, "n": 2}], now=10.0) == 1
    assert ledger.put_results(RUN, [{**ROW, "value": 0.75}], now=11.0) == 1          # a resume updates v1
    assert ledger.add_results_version(RUN, [{**ROW, "value": 0.6}], kind="rescore",
                                      settings={"metrics": ["acc"]}, now=20.0) == 2
    assert [r["value"] for r in ledger.results(RUN)] == [0.6]
    assert [r["value"] for r in ledger.results(RUN, 1)] == [0.75]
    assert ledger.results(RUN, 1, subtasks=True)[1] == {**ROW, "subtask": "algebra", "value": 1.0, "n": 2}
    versions = ledger.result_versions(RUN)
    assert [(v["version"], v["kind"], v["created_at"]) for v in versions] == [(1, "eval", 11.0), (2, "rescore", 20.0)]
    assert versions[1]["settings"] == {"metrics": ["acc"]}
    assert ledger.put_results(RUN, [ROW], now=30.0) == 3                              # eval after a rescore
    assert ledger.results(RUN)[0]["value"] == 0.5
