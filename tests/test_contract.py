"""The run contract (issue 11): every setting takes effect or is refused (exit 2), flags over the
plan over the defaults for every key (0, false and empty too), the effective settings on record,
faults caught before a run folder exists and explained without advising a useless resume."""

from __future__ import annotations

from pathlib import Path

import pytest

from evalcore.engine.runctx import effective_max_out_len
from evalcore.errors import BackendError, PlanError
from evalcore.plan.spec import parse_plan, with_overrides
from evalcore.plan.tasks import task_for

DS = [{"name": "gsm8k_gen"}]


def _plan(model=None, run=None, datasets=DS):
    model = {"path": "/tmp" if "revision" in (model or {}) else "org/m", **(model or {})}
    return parse_plan({"models": [model], "datasets": datasets, "run": run or {}})


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
    ("model", "revision", "v2", "names a hub revision, but /tmp is a local folder"),
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


def _scripted_plan(tmp_path, model_extra="", datasets=None, **run):
    import json as _json

    from tests.test_engine import ARC_DATASET

    run = {"work_dir": str(tmp_path / "outputs"), "max_num_workers": 1, "lease_seconds": 2.0, **run}
    text = "[run]\n" + "".join(f"{k} = {_json.dumps(v)}\n" for k, v in run.items())
    text += f'\n[[models]]\nabbr = "alpha"\npath = "alpha"\nbackend = "scripted"\n{model_extra}\n'
    text += datasets if datasets is not None else ARC_DATASET
    plan = tmp_path / "plan.toml"
    plan.write_text(text)
    return plan


def test_effective_settings_are_in_the_ledger_and_the_report(tmp_path):
    import json
    import sqlite3

    from tests.conftest import clean_env, run_cli
    from tests.test_engine import run_dir_of

    env = clean_env(HF_HOME=str(tmp_path / "hf"), EVALCORE_STATE_DIR=str(tmp_path / "state"))
    plan = _scripted_plan(tmp_path, "chat_template = true\nmax_seq_len = 512\nbatch_size = 3", limit=6)
    r = run_cli("evalcore", "eval", plan, env=env)
    assert r.returncode == 0, r.stderr
    run_dir = run_dir_of(r.stdout)
    con = sqlite3.connect(run_dir / "ledger.db")
    spec, key = con.execute("SELECT spec_json, key_json FROM partitions").fetchone()
    con.close()
    spec, key = json.loads(spec), json.loads(key)
    assert spec["max_seq_len"] == 512 and spec["batch_size"] == 3 and spec["limit"] == 6
    assert spec["fewshot"] == 0 and spec["metric"] == "acc" and spec["mode"] == "ll" and spec["prompt_version"]
    assert spec["chat_template"] is False and "chat_template is not used" in spec["notes"][0]
    assert "cachekit-evalcore" in spec["versions"] and key["versions"] == spec["versions"]
    doc = json.loads(run_cli("evalcore", "report", run_dir, "--format", "json", env=env).stdout)
    assert doc["results"][0]["value"] is not None  # numbers as numbers (the report's own shape)
    (alpha,) = [s for s in doc["settings"] if (s["model"], s["dataset"]) == ("alpha", "arc")]
    assert alpha["max_seq_len"] == 512 and alpha["versions"] == spec["versions"]
    md = run_cli("evalcore", "report", run_dir, "--format", "md", env=env).stdout
    assert "## Settings" in md and "| alpha | arc | ll | 0 |" in md and "chat_template is not used" in md


def test_library_versions_are_part_of_the_key(tmp_path):
    from evalcore.engine.settings import library_versions

    v = library_versions("hf")
    assert v["torch"] and v["transformers"] and "accelerate" in v


def test_resume_after_a_library_upgrade_is_refused(tmp_path):
    import json
    import sqlite3

    from evalcore.engine.partition import key_hash
    from tests.conftest import clean_env, run_cli
    from tests.test_engine import run_dir_of

    env = clean_env(HF_HOME=str(tmp_path / "hf"), EVALCORE_STATE_DIR=str(tmp_path / "state"))
    r = run_cli("evalcore", "eval", _scripted_plan(tmp_path, limit=4), env=env)
    run_dir = run_dir_of(r.stdout)
    con = sqlite3.connect(run_dir / "ledger.db")
    for pid, kj in con.execute("SELECT partition_id, key_json FROM partitions").fetchall():
        key = json.loads(kj)
        key["versions"] = {**key["versions"], "cachekit-evalcore": "0.0.1"}  # as recorded by an older install
        con.execute("UPDATE partitions SET key_json = ?, key_hash = ? WHERE partition_id = ?",
                    (json.dumps(key, sort_keys=True), key_hash(key), pid))
    con.commit()
    con.close()
    r = run_cli("evalcore", "resume", run_dir, env=env)
    assert r.returncode == 3 and "versions:" in r.stderr and "0.0.1" in r.stderr, r.stderr


def _copy_model(src, dst):
    import shutil

    shutil.copytree(src, dst)
    return dst


def _eval_local_model(tmp_path, model_dir, extra=""):
    from tests.conftest import clean_env, run_cli
    from tests.test_engine import ARC_DATASET, write_plan

    env = clean_env(HF_HOME=str(tmp_path / "hf"), EVALCORE_STATE_DIR=str(tmp_path / "state"))
    plan = write_plan(tmp_path / "plan.toml", f'\n[[models]]\nabbr = "m"\npath = "{model_dir}"\n{extra}\n',
                      ARC_DATASET, limit=4)
    return run_cli("evalcore", "eval", plan, env=env)


@pytest.mark.parametrize("damage, needle", [
    ("no_weights", "no weight files"),
    ("truncated", "model.safetensors is truncated"),
    ("garbage_header", "model.safetensors is truncated or not safetensors"),
    ("no_config", "no config.json"),
    ("no_tokenizer", "no tokenizer files"),
    ("index_names_missing_shard", "names 1 weight file(s) that are missing: model-00002-of-00002.safetensors"),
])
def test_broken_local_model_folder_fails_preflight(tmp_path, tiny_model_dir, damage, needle):
    import json

    m = _copy_model(tiny_model_dir, tmp_path / "ckpt")
    w = m / "model.safetensors"
    if damage == "no_weights":
        w.unlink()
    elif damage == "truncated":
        data = w.read_bytes()
        w.write_bytes(data[: len(data) // 2])
    elif damage == "garbage_header":
        w.write_bytes(b"\xff" * 64)
    elif damage == "no_config":
        (m / "config.json").unlink()
    elif damage == "no_tokenizer":
        for f in ("tokenizer.json", "tokenizer.model", "vocab.json"):
            (m / f).unlink(missing_ok=True)
    elif damage == "index_names_missing_shard":
        w.rename(m / "model-00001-of-00002.safetensors")
        (m / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {
            "a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}))
    r = _eval_local_model(tmp_path, m)
    assert r.returncode == 4, r.stderr
    errors = [x for x in r.stderr.splitlines() if x.startswith("error:")]
    assert len(errors) == 1 and needle in errors[0] and str(m) in errors[0], r.stderr
    assert "resume" not in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "outputs").exists()  # before a run folder is made


def test_unreadable_store_index_stops_the_run(tmp_path):
    import subprocess
    import sys

    from tests.conftest import clean_env, run_cli
    from tests.test_engine import ARC_DATASET, write_plan

    env = clean_env(HF_HOME=str(tmp_path / "hf"), EVALCORE_STATE_DIR=str(tmp_path / "state"))
    plan = write_plan(tmp_path / "plan.toml", '\n[[models]]\npath = "org/some-model"\n', ARC_DATASET, limit=4)
    where = subprocess.run([sys.executable, "-c", "from cachekit.index import Index; print(Index().path)"],
                           env=env, capture_output=True, text=True, check=True).stdout.strip()
    index = Path(where)
    assert str(tmp_path) in where
    index.parent.mkdir(parents=True, exist_ok=True)
    index.write_bytes(b"not a database " * 100)
    r = run_cli("evalcore", "eval", plan, env=env)
    assert r.returncode == 3, r.stderr
    errors = [x for x in r.stderr.splitlines() if x.startswith("error:")]
    assert len(errors) == 1 and "store index cannot be read" in errors[0]
    assert index.read_bytes() == b"not a database " * 100
    assert not (tmp_path / "outputs").exists()


def test_a_bad_row_is_refused_before_the_run_without_resume_advice(tmp_path):
    from tests.conftest import ARC_JSONL, clean_env, run_cli

    bad = (f'\n[[datasets]]\nabbr = "arc"\npath = "{ARC_JSONL}"\nmode = "ll"\n'
           'template = "Question: {{ no_such_field }}"\nchoices = "choices.text"\n'
           'gold = "{{ choices.label.index(answerKey) }}"\n')
    env = clean_env(HF_HOME=str(tmp_path / "hf"), EVALCORE_STATE_DIR=str(tmp_path / "state"))
    r = run_cli("evalcore", "eval", _scripted_plan(tmp_path, datasets=bad, limit=4), env=env)
    assert r.returncode == 2, r.stderr
    assert "no_such_field" in r.stderr and "nothing was run" in r.stderr
    assert "evalcore resume" not in r.stderr and not (tmp_path / "outputs").exists()


def test_a_partition_error_a_rerun_cannot_fix_does_not_advise_resume(tmp_path, tiny_model_dir):
    """A model folder that passes preflight (config, tokenizer, weights all readable) but names an
    architecture transformers does not know fails in the worker: a rerun would fail the same way."""
    import json
    import shutil

    from tests.conftest import clean_env, run_cli

    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    cfg = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps({**cfg, "model_type": "no_such_architecture"}))
    plan = _scripted_plan(tmp_path, limit=4).read_text().replace(
        'path = "alpha"\nbackend = "scripted"', f'path = "{model}"')
    (tmp_path / "plan.toml").write_text(plan)
    env = clean_env(HF_HOME=str(tmp_path / "hf"), EVALCORE_STATE_DIR=str(tmp_path / "state"))
    r = run_cli("evalcore", "eval", tmp_path / "plan.toml", env=env)
    assert r.returncode == 1, r.stderr
    assert "BackendError" in r.stderr and "a rerun cannot fix" in r.stderr and "start a new run" in r.stderr
    assert "evalcore resume" not in r.stderr and "Resume with" not in r.stderr
    run_dir = next((tmp_path / "outputs").iterdir())
    st = run_cli("evalcore", "status", run_dir, "--errors", env=env)
    assert "no_such_architecture" in st.stdout, st.stdout  # the whole message is one command away


# -- interrupts, the run's state, one driver per run (items 5 and 7) --------------------------------

def _env(tmp_path):
    from tests.conftest import clean_env

    return clean_env(HF_HOME=str(tmp_path / "hf"), EVALCORE_STATE_DIR=str(tmp_path / "state"))


def _ledger(run_dir, sql, *args):
    import sqlite3

    con = sqlite3.connect(run_dir / "ledger.db", timeout=30)
    try:
        return con.execute(sql, args).fetchall()
    finally:
        con.close()


def _slow_run(tmp_path, **run):
    """A scripted run that takes minutes unless stopped (60 s leases: a lease wait would show)."""
    from tests.test_engine import _start_eval

    plan = _scripted_plan(tmp_path, "backend_options = { sample_seconds = 0.05 }", limit=400,
                          max_partition_size=400, lease_seconds=60.0, **run)
    return _start_eval(plan, _env(tmp_path))


def _has_samples(run_dir):
    try:
        return _ledger(run_dir, "SELECT count(*) FROM samples")[0][0] > 0
    except Exception:  # noqa: BLE001 - the ledger may not exist yet
        return False


@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"])
def test_interrupt_hands_partitions_back_and_marks_the_run(tmp_path, sig):
    import signal

    from tests.conftest import run_cli, wait_for

    p, run_dir = _slow_run(tmp_path)
    wait_for(lambda: _has_samples(run_dir), timeout=120, what="first samples")
    p.send_signal(getattr(signal, sig))
    out, err = p.communicate(timeout=60)
    assert p.returncode == 130, err
    assert "interrupted" in err and f"evalcore resume {run_dir}" in err
    assert _ledger(run_dir, "SELECT status FROM runs") == [("interrupted",)]
    assert _ledger(run_dir, "SELECT count(*) FROM partitions WHERE status = 'running'") == [(0,)]
    assert ("released",) in _ledger(run_dir, "SELECT outcome FROM attempts")
    before = _ledger(run_dir, "SELECT count(*) FROM samples")[0][0]
    assert 0 < before < 400  # nothing lost: what was done is kept
    r = run_cli("evalcore", "status", run_dir, env=_env(tmp_path))
    assert r.returncode == 0 and "[interrupted]" in r.stdout and "ETA" not in r.stdout, r.stdout
    assert f"continue with: evalcore resume {run_dir}" in r.stdout
    if sig == "SIGTERM":  # resume takes the handed-back work up and finishes; finished samples are reused
        r = run_cli("evalcore", "resume", run_dir, env=_env(tmp_path))
        assert r.returncode == 0, r.stderr
        assert _ledger(run_dir, "SELECT count(*), count(DISTINCT sample_index) FROM samples") == [(400, 400)]
        assert _ledger(run_dir, "SELECT status FROM runs") == [("done",)]


def test_status_of_a_run_whose_driver_died(tmp_path):
    import signal

    from tests.conftest import run_cli, wait_for

    p, run_dir = _slow_run(tmp_path)
    wait_for(lambda: _has_samples(run_dir), timeout=120, what="first samples")
    p.send_signal(signal.SIGKILL)
    p.wait()
    r = run_cli("evalcore", "status", "--work-dir", tmp_path / "outputs", env=_env(tmp_path))  # newest run
    assert r.returncode == 0 and "[driver gone]" in r.stdout and "ETA" not in r.stdout, r.stdout
    # the orphaned workers stop and hand back; resume then takes the work up (no lease wait)
    wait_for(lambda: _ledger(run_dir, "SELECT count(*) FROM partitions WHERE status = 'running'") == [(0,)],
             timeout=300, what="orphans handed back")  # they notice within lease_seconds / 4


def test_every_sample_but_no_scores_is_not_done_and_resume_scores_it(tmp_path):
    from tests.conftest import run_cli
    from tests.test_engine import results, run_dir_of

    env = _env(tmp_path)
    r = run_cli("evalcore", "eval", _scripted_plan(tmp_path, limit=8), env=env)
    run_dir = run_dir_of(r.stdout)
    scored = results(run_dir)
    import sqlite3  # as if the driver died after the last sample, before scoring

    con = sqlite3.connect(run_dir / "ledger.db")
    con.execute("DELETE FROM results")
    con.execute("UPDATE runs SET status = 'running'")
    con.commit()
    con.close()
    r = run_cli("evalcore", "status", run_dir, env=env)
    assert "ETA done" not in r.stdout and "is in, but not scored" in r.stdout and "[driver gone]" in r.stdout
    r = run_cli("evalcore", "resume", "--work-dir", tmp_path / "outputs", env=env)  # default: the newest run
    assert r.returncode == 0, r.stderr
    assert results(run_dir) == scored


def test_a_concurrent_resume_is_refused_before_anything_changes(tmp_path):
    from tests.conftest import run_cli, tree_state, wait_for

    p, run_dir = _slow_run(tmp_path)
    try:
        wait_for(lambda: _has_samples(run_dir), timeout=120, what="first samples")
        run_json = (run_dir / "run.json").read_bytes()
        r = run_cli("evalcore", "resume", run_dir, env=_env(tmp_path))
        assert r.returncode == 5, r.stderr
        errors = [x for x in r.stderr.splitlines() if x.startswith("error:")]
        assert len(errors) == 1 and "being run by another driver" in errors[0] and "nothing was changed" in errors[0]
        assert "requeued" not in r.stdout + r.stderr
        assert (run_dir / "run.json").read_bytes() == run_json
        assert "logs" in tree_state(run_dir)
    finally:
        p.kill()
        p.communicate()


def test_run_refs_status_errors_and_a_read_only_archive(tmp_path):
    import os
    import shutil
    import stat
    import subprocess
    import sys
    import tempfile

    from tests.conftest import ROOT, run_cli
    from tests.test_engine import run_dir_of

    env = _env(tmp_path)
    long_abbr = "a-model-with-a-rather-long-name-for-the-table"
    plan = _scripted_plan(tmp_path, limit=8).read_text().replace('abbr = "alpha"', f'abbr = "{long_abbr}"')
    (tmp_path / "plan.toml").write_text(plan)
    r = run_cli("evalcore", "eval", tmp_path / "plan.toml", env=dict(env, EVALCORE_FAULTS=f"raise@{long_abbr}/arc"))
    assert r.returncode == 1
    run_dir = run_dir_of(r.stdout)
    r = run_cli("evalcore", "status", tmp_path / "outputs", "--errors", env=env)  # a work dir: its newest run
    assert r.returncode == 0, r.stderr
    assert f"partition {long_abbr}/arc/0000000-0000008" in r.stdout
    assert f"RuntimeError: injected fault in {long_abbr}/arc/0000000-0000008 (EVALCORE_FAULTS)" in r.stdout
    assert f"worker log: {run_dir}/logs/worker-w1.log" in r.stdout and "(not found)" not in r.stdout
    assert run_cli("evalcore", "report", "--work-dir", tmp_path / "outputs", env=env).returncode == 0  # newest
    # an archived run folder nobody may write: status and report read it
    archive = Path(tempfile.mkdtemp(dir="/tmp"))
    try:
        os.chmod(archive, 0o755)
        shutil.copytree(run_dir, archive / run_dir.name)
        for dirpath, _dirnames, filenames in os.walk(archive / run_dir.name):
            for n in filenames:
                os.chmod(Path(dirpath, n), 0o444)
            os.chmod(dirpath, 0o555)
        before = {p.name: p.read_bytes() for p in (archive / run_dir.name).iterdir() if p.is_file()}
        as_nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-m",
                     "cli.evalcore_cli"]
        for cmd in (["status", archive / run_dir.name], ["report", archive, "--format", "md"]):
            r = subprocess.run([*as_nobody, *map(str, cmd)], env=dict(env, HOME=str(archive)), cwd=ROOT,
                               capture_output=True, text=True, timeout=120)
            assert r.returncode == 0, (cmd, r.stderr)
        assert "## Settings" in r.stdout
        after = {p.name: p.read_bytes() for p in (archive / run_dir.name).iterdir() if p.is_file()}
        assert after == before
    finally:
        for dirpath, _dirs, _files in os.walk(archive):
            os.chmod(dirpath, stat.S_IRWXU)
        shutil.rmtree(archive)


# -- the work dir (item 10) --------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["file", "under_a_file", "not_writable"])
def test_a_bad_work_dir_is_one_line_exit_2(tmp_path, kind):
    import os
    import shutil
    import subprocess
    import sys
    import tempfile

    from tests.conftest import ROOT, tree_state

    base = Path(tempfile.mkdtemp(dir="/tmp"))  # reachable by the unprivileged user below
    try:
        os.chmod(base, 0o755)
        (base / "afile").write_text("a user's file\n")
        work = {"file": base / "afile", "under_a_file": base / "afile" / "outputs", "not_writable": base}[kind]
        plan = _scripted_plan(base, work_dir=str(work), limit=4)
        os.chmod(plan, 0o644)
        before = tree_state(base)
        cmd = [sys.executable, "-m", "cli.evalcore_cli", "eval", str(plan)]
        if kind == "not_writable":  # root writes anywhere: run as an ordinary user
            cmd = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *cmd]
        env = dict(_env(tmp_path), HOME=str(base))
        r = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert r.returncode == 2, r.stderr
        errors = [x for x in r.stderr.splitlines() if x.startswith("error:")]
        assert len(errors) == 1 and f"work_dir {work}" in errors[0] and "Traceback" not in r.stderr, r.stderr
        assert ("is a file" in errors[0] or "not writable" in errors[0])
        assert tree_state(base) == before
    finally:
        shutil.rmtree(base)


# -- heartbeat race, GPU exclusivity across runs (item 6) --------------------------------------------

def test_a_late_heartbeat_of_a_completed_claim_does_not_flag_the_next(monkeypatch):
    import threading
    from types import SimpleNamespace

    import evalcore.engine.ledger
    from evalcore.engine.worker import Heartbeat

    calls, first_in, go_on, second_in = [], threading.Event(), threading.Event(), threading.Event()

    class SlowLedger:  # the heartbeat for claim A is answered after the worker moved on to claim B
        def __init__(self, *a, **k):
            pass

        def heartbeat(self, run_id, partition_id, token, *, now, lease_s):
            calls.append(partition_id)
            if partition_id == "A":
                first_in.set()
                go_on.wait(30)
                return False  # A was completed meanwhile
            second_in.set()
            return True

        def close(self):
            pass

    monkeypatch.setattr(evalcore.engine.ledger, "Ledger", SlowLedger)
    hb = Heartbeat(Path("unused"), "run", lease_s=0.8, parent_pid=0)
    hb.track(SimpleNamespace(partition_id="A", token="ta"))
    hb.start()
    try:
        assert first_in.wait(30)
        hb.track(SimpleNamespace(partition_id="B", token="tb"))
        go_on.set()
        assert second_in.wait(30)
        assert not hb.lost.is_set(), calls
    finally:
        hb.stop.set()
        hb.join(30)


def test_a_gpu_held_with_one_worker_per_gpu_is_not_shared_with_another_limit(tmp_path):
    from evalcore.engine.leases import GpuLeases

    path = tmp_path / "leases.db"
    kw = {"pid": 0, "host": "h", "now": 100.0, "ttl": 60.0}
    with GpuLeases(path, ["0", "1"], 1) as alone, GpuLeases(path, ["0", "1"], 2) as shared:
        a = alone.acquire(1, owner="run1-w1", run_id="run1", **kw)
        assert a.devices == ("0",)
        b = shared.acquire(1, owner="run2-w1", run_id="run2", **kw)
        c = shared.acquire(1, owner="run2-w2", run_id="run2", **kw)
        assert b.devices == ("1",) and c.devices == ("1",)  # run2 shares GPU 1 with itself only
        assert shared.acquire(1, owner="run2-w3", run_id="run2", **kw) is None  # never GPU 0
        alone.release(a)
        assert shared.acquire(1, owner="run2-w3", run_id="run2", **kw).devices == ("0",)
        assert alone.acquire(1, owner="run1-w2", run_id="run1", **kw) is None  # GPU 0 is now shared


def test_gpus_command_names_the_run_and_adds_no_rows(tmp_path):
    import sqlite3

    from evalcore.engine.leases import GpuLeases
    from tests.conftest import clean_env, run_cli

    state = tmp_path / "state"
    with GpuLeases(state / "gpu_leases.db", ["0"], 1) as leases:
        leases.acquire(1, owner="w", pid=0, host="h", run_id="run-xyz", now=1e12, ttl=60.0)
    r = run_cli("evalcore", "gpus", env=clean_env(EVALCORE_STATE_DIR=str(state), EVALCORE_FAKE_GPUS="4"))
    assert r.returncode == 0 and "run run-xyz" in r.stdout, r.stdout
    con = sqlite3.connect(state / "gpu_leases.db")
    assert con.execute("SELECT count(*) FROM slots").fetchone()[0] == 1
    con.close()


# -- defaults that match OpenCompass's FAQ (item 8) ---------------------------------------------------

def test_default_workers_follow_the_gpus_and_cuda_visible_devices_restricts_fake_ones():
    from evalcore.engine.gpus import discover_gpus
    from evalcore.plan.spec import default_workers

    plan4 = _plan(model={"num_gpus": 4})
    assert plan4.run.max_num_workers is None
    assert default_workers(plan4, 8) == 2  # the FAQ's first answer: 8 GPUs / 4 per task
    assert default_workers(_plan(run={"max_workers_per_gpu": 2}), 8) == 16
    assert default_workers(_plan(), 0) == 1  # CPU host
    assert discover_gpus({"EVALCORE_FAKE_GPUS": "8", "CUDA_VISIBLE_DEVICES": "0,1,2,3"}) == ["0", "1", "2", "3"]
    assert discover_gpus({"EVALCORE_FAKE_GPUS": "8"}) == [str(i) for i in range(8)]


def test_default_workers_run_two_4_gpu_tasks_at_once_on_8_fake_gpus(tmp_path):
    import json

    from tests.conftest import run_cli
    from tests.test_engine import run_dir_of

    plan = _scripted_plan(tmp_path, "num_gpus = 4", limit=4)
    text = plan.read_text().replace('max_num_workers = 1\n', '')
    plan.write_text(text)
    r = run_cli("evalcore", "eval", plan, env=dict(_env(tmp_path), EVALCORE_FAKE_GPUS="8"))
    assert r.returncode == 0, r.stderr
    recorded = json.loads((run_dir_of(r.stdout) / "run.json").read_text())["plan"]["run"]
    assert recorded["max_num_workers"] == 2


def test_no_offline_with_an_unreachable_hub_fails_at_once(tmp_path):
    import socket

    from tests.conftest import run_cli

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there
    env = dict(_env(tmp_path), HF_ENDPOINT=f"http://127.0.0.1:{port}")
    r = run_cli("evalcore", "eval", "--hf-path", "org/m", "--datasets", "arc_easy_ppl", "--no-offline",
                "--work-dir", tmp_path / "out", env=env, timeout=60)
    assert r.returncode == 4, r.stderr
    errors = [x for x in r.stderr.splitlines() if x.startswith("error:")]
    assert len(errors) == 1 and "cannot be reached" in errors[0] and f"127.0.0.1:{port}" in errors[0]
    assert not (tmp_path / "out").exists()


# -- progress when the output is not a terminal (item 9) ---------------------------------------------

def test_progress_lines_every_period_and_at_each_partition_end():
    from evalcore.engine.progress import ProgressLines

    def rows(done, ended):
        return [{"samples_total": 100, "samples_done": done,
                 "partitions": {"pending": 4 - ended, "running": 0, "done": ended, "failed": 0}}]

    p = ProgressLines(started_at=0.0, period_s=30.0)
    assert p.update(rows(0, 0), now=1.0) is None
    assert p.update(rows(10, 0), now=10.0) is None
    line = p.update(rows(25, 1), now=12.0)  # a partition ended
    assert line == "progress: 25/100 samples (25%), 1/4 partitions ended, 2.1 samples/s, ETA 0m36s"
    assert p.update(rows(30, 1), now=20.0) is None
    assert p.update(rows(40, 1), now=42.5).startswith("progress: 40/100")  # 30 s since the last line


def test_a_run_without_a_terminal_prints_progress_lines(tmp_path):
    from tests.conftest import run_cli

    plan = _scripted_plan(tmp_path, "backend_options = { sample_seconds = 0.1 }", limit=40, max_partition_size=40)
    r = run_cli("evalcore", "eval", plan, env=_env(tmp_path))
    assert r.returncode == 0, r.stderr
    lines = [x for x in r.stderr.splitlines() if x.startswith("progress: ")]
    assert len(lines) >= 2 and lines[-1].startswith("progress: 40/40 samples (100%), 4/4 partitions ended")
    assert "samples/s" in lines[-1] and "ETA done" in lines[-1]


# -- placement: several GPUs, device_map, CPU runs (item 3) -------------------------------------------

def test_placement_spreads_over_exactly_the_leased_gpus():
    from evalcore.engine.placement import LEASED, placement

    four = placement({}, leased_gpus=4, on_gpu=True)
    assert (four.device, four.device_map, four.max_memory) == ("cuda", "auto", LEASED)
    one = placement({}, leased_gpus=1, on_gpu=True)
    assert (one.device_map, one.max_memory) == (None, None)  # moved to its one GPU
    auto = placement({"device_map": "auto"}, leased_gpus=1, on_gpu=True)
    assert auto.device_map == "auto" and auto.max_memory == LEASED
    cpu = placement({"device_map": "auto", "max_memory": {0: "10GiB"}}, leased_gpus=0, on_gpu=False)
    assert cpu.device == "cpu" and cpu.device_map is None and len(cpu.ignored) == 2


def test_max_memory_leased_names_every_visible_gpu(monkeypatch):
    """The HF backend turns the marker into the devices this worker sees (fake CUDA: 4 GPUs)."""
    import torch

    import evalcore.backends.hf as hf

    calls = {}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda i: (1, 80 * 2**30))

    def from_pretrained(name, **kw):
        calls.update(kw)
        raise RuntimeError("stop here")

    monkeypatch.setattr(hf.AutoModelForCausalLM, "from_pretrained", from_pretrained)
    backend = hf.HFBackend.__new__(hf.HFBackend)
    backend.settings = hf.ModelSettings(path="/x", device="cuda", device_map="auto")
    backend._model_kwargs = {"max_memory": "leased"}
    backend._model_src = hf._Source("/x", None, True)
    backend._trust = False
    with pytest.raises(BackendError):
        backend._load_model()
    assert calls["device_map"] == "auto" and calls["max_memory"] == {i: 80 * 2**30 for i in range(4)}


def test_cpu_run_says_gpu_settings_were_ignored(tmp_path, tiny_model_dir):
    import json
    import sqlite3

    from tests.conftest import run_cli
    from tests.test_engine import run_dir_of

    r = _eval_local_model(tmp_path, tiny_model_dir, "num_gpus = 2\nmodel_kwargs = { device_map = 'auto' }\nbatch_size = 4")
    assert r.returncode == 0, r.stderr
    run_dir = run_dir_of(r.stdout)
    con = sqlite3.connect(run_dir / "ledger.db")
    spec = json.loads(con.execute("SELECT spec_json FROM partitions").fetchone()[0])
    con.close()
    assert spec["num_gpus"] == 0
    assert "no GPU on this host: ran on the CPU; ignored num_gpus=2, device_map='auto'" in spec["notes"][0]
    md = run_cli("evalcore", "report", run_dir, "--format", "md", env=_env(tmp_path)).stdout
    assert "ignored num_gpus=2, device_map='auto'" in md
    assert "note: m x arc: no GPU on this host: ran on the CPU; ignored num_gpus=2" in r.stderr  # said up front


def test_resume_with_the_other_runner(tmp_path):
    import json

    from tests.conftest import run_cli
    from tests.test_engine import results, run_dir_of

    env = _env(tmp_path)
    r = run_cli("evalcore", "eval", _scripted_plan(tmp_path, limit=8, max_partition_size=8),
                env=dict(env, EVALCORE_FAULTS="raise@alpha/arc/0000004"))
    assert r.returncode == 1
    run_dir = run_dir_of(r.stdout)
    doc = json.loads((run_dir / "run.json").read_text())
    doc["plan"]["run"]["runner"] = "slurm"  # as if it had been started under Slurm
    (run_dir / "run.json").write_text(json.dumps(doc))
    r = run_cli("evalcore", "resume", run_dir, "--runner", "local", env=env)
    assert r.returncode == 0, r.stderr
    assert json.loads((run_dir / "run.json").read_text())["plan"]["run"]["runner"] == "local"
    assert ("alpha", "arc", "acc") in results(run_dir)


# -- make demo's comparison (item 11) -----------------------------------------------------------------

def test_demo_compares_with_a_reference_on_the_same_checkpoint_and_questions(tmp_path):
    import json
    import sqlite3

    from scripts import demo

    acc, n, sha = demo.reference_acc(100)
    assert n == 100 and 0 < acc < 1 and len(sha) == 64
    assert demo.reference_acc(20)[1] == 20
    assert demo.REPO_ID != "HuggingFaceTB/SmolLM2-135M-Instruct"  # a dequantized copy has its own id
    ledger = tmp_path / "ledger.db"
    con = sqlite3.connect(ledger)
    con.execute("CREATE TABLE samples (output_json TEXT)")
    con.executemany("INSERT INTO samples VALUES (?)",
                    [(json.dumps({"index": i, "metrics": {"acc": float(i % 2)}}),) for i in range(30)])
    con.commit()
    con.close()
    assert demo.evalcore_acc(tmp_path, 20) == (0.5, 20)


def test_a_fallback_is_recorded_in_the_run_and_shown_by_report(tmp_path, tiny_model_dir):
    import json

    from tests.conftest import run_cli
    from tests.test_engine import run_dir_of

    r = _eval_local_model(tmp_path, tiny_model_dir, "model_kwargs = { attn_implementation = 'flex_attention' }")
    assert r.returncode == 0, r.stderr
    run_dir = run_dir_of(r.stdout)
    events = [json.loads(x) for x in (run_dir / "logs" / "fallbacks.jsonl").read_text().splitlines()]
    assert len(events) == 1 and events[0]["kind"].startswith("shared-context scoring off")
    assert "flex_attention" in events[0]["reason"]
    md = run_cli("evalcore", "report", run_dir, "--format", "md", env=_env(tmp_path)).stdout
    assert "fallback: shared-context scoring off" in md
    doc = json.loads(run_cli("evalcore", "report", run_dir, "--format", "json", env=_env(tmp_path)).stdout)
    assert any("fallback: shared-context" in n for s in doc["settings"] if s["model"] == "m" for n in s["notes"])


def test_the_faq_command_line_means_what_it_says(tmp_path):
    """The OpenCompass FAQ's local-model command: every flag lands where it takes effect."""
    from cli.evalcore_cli import _plan_from, evalcore, expand_nargs

    argv = expand_nargs(["eval", "--datasets", "siqa_gen", "--hf-path", str(tmp_path), "--tokenizer-path",
                         str(tmp_path), "--model-kwargs", "device_map='auto'", "trust_remote_code=True",
                         "--tokenizer-kwargs", "padding_side='left'", "truncation='left'", "use_fast=False",
                         "trust_remote_code=True", "--max-out-len", "100", "--max-seq-len", "2048",
                         "--batch-size", "8", "--no-batch-padding", "--num-gpus", "1"])
    sub_ctx = evalcore.get_command(None, "eval").make_context("eval", argv[1:])
    flags = {k: v for k, v in sub_ctx.params.items() if k != "plan_file"}
    m = _plan_from(None, flags).models[0]
    assert m.trust_remote_code is True and "trust_remote_code" not in m.model_kwargs
    assert "trust_remote_code" not in m.tokenizer_kwargs and m.tokenizer_kwargs["padding_side"] == "left"
    assert m.model_kwargs["device_map"] == "auto" and m.max_out_len == 100 and m.max_seq_len == 2048
    assert m.batch_size == 8 and m.batch_padding is False and m.num_gpus == 1
    assert effective_max_out_len(m, task_for(_plan(datasets=[{"name": "siqa_gen"}]).datasets[0])) == 100


def test_the_gpu_lease_is_released_only_after_the_model_is_freed():
    import threading
    from types import SimpleNamespace

    from evalcore.engine.worker import Worker

    order = []
    w = Worker.__new__(Worker)
    w.hb = SimpleNamespace(stop=threading.Event(), gpu_lease="lease")
    w.backend = SimpleNamespace(close=lambda: order.append("model freed"))
    w.leases = SimpleNamespace(release=lambda lease: order.append(f"{lease} released"))
    w.ledger = SimpleNamespace(close=lambda: order.append("ledger closed"))
    w._shutdown()
    assert order == ["model freed", "lease released", "ledger closed"] and w.hb.stop.is_set()


def test_an_unreadable_fallback_record_is_shown_not_dropped(tmp_path):
    from evalcore.engine.settings import FALLBACKS, fallbacks_of, record_fallback

    (tmp_path / FALLBACKS).parent.mkdir(parents=True)  # the run folder's logs/, as a run makes it
    record_fallback(tmp_path, "m", "d", "shared-context scoring off", "probe", "w1")
    with open(tmp_path / FALLBACKS, "a", encoding="utf-8") as f:
        f.write('{"model": "m", "dat')  # a worker killed mid-append
    got = fallbacks_of(tmp_path)
    assert got[("m", "d")] == ["fallback: shared-context scoring off (probe)"]
    assert got[("*", "*")] == [f"fallbacks unknown: line 2 of {tmp_path / FALLBACKS} is unreadable"]
