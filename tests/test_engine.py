"""evalcore end to end: real worker processes, the real SQLite ledger, the real HF backend on a
tiny model (and a scripted backend where only scheduling matters). Faults: a worker killed
mid-partition, the driver killed, a partition that raises, a corrupt ledger."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ARC_JSONL, ROOT, clean_env, run_cli, wait_for

ARC_DATASET = f'''
[[datasets]]
abbr = "arc"
path = "{ARC_JSONL}"
mode = "ll"
template = "Question: {{{{question}}}}\\nAnswer:"
choices = "choices.text"
gold = "{{{{ choices.label.index(answerKey) }}}}"
'''


def write_plan(path: Path, models: str, datasets: str = ARC_DATASET, **run) -> Path:
    run = {"work_dir": str(path.parent / "outputs"), "max_num_workers": 2, "lease_seconds": 2.0, **run}
    lines = ["[run]"] + [f"{k} = {json.dumps(v)}" for k, v in run.items()]
    path.write_text("\n".join(lines) + "\n" + models + datasets)
    return path


def tiny(model_dir: Path, batch_size: int = 4) -> str:
    return f'\n[[models]]\nabbr = "tiny"\npath = "{model_dir}"\nbatch_size = {batch_size}\n'


def scripted(name: str, **opts) -> str:
    o = ", ".join(f"{k} = {v}" for k, v in opts.items())
    return f'\n[[models]]\nabbr = "{name}"\npath = "{name}"\nbackend = "scripted"\nbackend_options = {{ {o} }}\n'


@pytest.fixture
def env(tmp_path):
    return clean_env(HF_HOME=str(tmp_path / "hf"), EVALCORE_STATE_DIR=str(tmp_path / "state"))


def run_dir_of(stdout: str) -> Path:
    line = next(x for x in stdout.splitlines() if x.startswith("run "))
    return Path(line.split(": ", 1)[1].strip())


def results(run_dir: Path) -> dict:
    con = sqlite3.connect(run_dir / "ledger.db")
    rows = con.execute("SELECT model_key, dataset_key, metric, value FROM results").fetchall()
    con.close()
    return {(m, d, k): v for m, d, k, v in rows}


def sample_rows(run_dir: Path) -> list[tuple]:
    con = sqlite3.connect(run_dir / "ledger.db")
    rows = con.execute("SELECT partition_id, sample_index, output_json FROM samples").fetchall()
    con.close()
    return rows


def logprobs(run_dir: Path) -> dict[int, list[float]]:
    return {i: [r["loglikelihood"] for r in json.loads(o)["requests"]] for _, i, o in sample_rows(run_dir)}


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_model_dir):
    """An uninterrupted run of the tiny model on 120 ARC questions."""
    d = tmp_path_factory.mktemp("reference")
    plan = write_plan(d / "plan.toml", tiny(tiny_model_dir), limit=120, max_partition_size=120)
    r = run_cli("evalcore", "eval", plan, env=clean_env(HF_HOME=str(d / "hf"), EVALCORE_STATE_DIR=str(d / "st")))
    assert r.returncode == 0, r.stderr
    rd = run_dir_of(r.stdout)
    return {"results": results(rd), "logprobs": logprobs(rd), "stdout": r.stdout}


def assert_same_as_reference(run_dir: Path, reference: dict) -> None:
    assert results(run_dir) == pytest.approx(reference["results"])
    got = logprobs(run_dir)
    assert sorted(got) == sorted(reference["logprobs"])
    worst = max(abs(a - b) for i in got for a, b in zip(got[i], reference["logprobs"][i], strict=True))
    assert worst < 1e-4


def test_reference_run_prints_summary(reference):
    out = reference["stdout"]
    assert "dataset" in out and "acc" in out and "tiny" in out
    assert len(reference["logprobs"]) == 120
    assert ("tiny", "arc", "acc") in reference["results"]


def _running_with_samples(run_dir: Path):
    try:
        con = sqlite3.connect(run_dir / "ledger.db", timeout=5)
        row = con.execute("SELECT p.partition_id, p.pid FROM partitions p WHERE p.status = 'running' AND "
                          "(SELECT count(*) FROM samples s WHERE s.partition_id = p.partition_id) > 0 "
                          "LIMIT 1").fetchone()
        con.close()
        return row
    except sqlite3.Error:
        return None


def _start_eval(plan: Path, env: dict) -> tuple[subprocess.Popen, Path]:
    p = subprocess.Popen([sys.executable, "-m", "cli.evalcore_cli", "eval", str(plan)], env=env, cwd=ROOT,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    first = p.stdout.readline()
    return p, run_dir_of(first)


@pytest.mark.slow
def test_worker_killed_mid_partition(tmp_path, env, tiny_model_dir, reference):
    plan = write_plan(tmp_path / "plan.toml", tiny(tiny_model_dir), limit=120, max_partition_size=120)
    p, run_dir = _start_eval(plan, dict(env, EVALCORE_FAULTS="slow@tiny/arc/0000000"))
    partition, pid = wait_for(lambda: _running_with_samples(run_dir), timeout=120)
    os.kill(pid, signal.SIGKILL)
    out, err = p.communicate(timeout=300)
    assert p.returncode == 0, err
    rows = sample_rows(run_dir)
    assert len(rows) == 120 and len({(a, b) for a, b, _ in rows}) == 120  # none recorded twice
    con = sqlite3.connect(run_dir / "ledger.db")
    outcomes = [r[0] for r in con.execute("SELECT outcome FROM attempts WHERE partition_id = ? ORDER BY attempt",
                                          (partition,))]
    con.close()
    assert "expired" in outcomes and outcomes[-1] == "done"
    assert_same_as_reference(run_dir, reference)


@pytest.mark.slow
def test_driver_killed_then_resume(tmp_path, env, tiny_model_dir, reference):
    plan = write_plan(tmp_path / "plan.toml", tiny(tiny_model_dir), limit=120, max_partition_size=120)
    p, run_dir = _start_eval(plan, dict(env, EVALCORE_FAULTS="slow@tiny/arc"))
    wait_for(lambda: _running_with_samples(run_dir), timeout=120)
    p.send_signal(signal.SIGKILL)
    p.wait()
    # the orphaned workers notice and stop, handing back their partitions
    wait_for(lambda: not _running_with_samples(run_dir), timeout=60)
    before = len(sample_rows(run_dir))
    assert 0 < before < 120
    r = run_cli("evalcore", "resume", run_dir, env=env)
    assert r.returncode == 0, r.stderr
    assert len(sample_rows(run_dir)) == 120
    assert_same_as_reference(run_dir, reference)


@pytest.mark.slow
def test_partition_that_raises_then_resume(tmp_path, env, tiny_model_dir, reference):
    plan = write_plan(tmp_path / "plan.toml", tiny(tiny_model_dir), limit=120, max_partition_size=120)
    r = run_cli("evalcore", "eval", plan, env=dict(env, EVALCORE_FAULTS="raise@tiny/arc/0000030"))
    assert r.returncode == 1, r.stderr
    run_dir = run_dir_of(r.stdout)
    assert "tiny/arc/0000030-0000060" in r.stderr and "RuntimeError: injected fault" in r.stderr
    assert f"evalcore resume {run_dir}" in r.stderr
    con = sqlite3.connect(run_dir / "ledger.db")
    status = dict(con.execute("SELECT partition_id, status FROM partitions"))
    con.close()
    assert list(status.values()).count("failed") == 1 and list(status.values()).count("done") == 3
    r = run_cli("evalcore", "status", run_dir, env=env)
    assert r.returncode == 0 and "RuntimeError" in r.stdout and "90/120" in r.stdout
    r = run_cli("evalcore", "resume", run_dir, env=env)
    assert r.returncode == 0, r.stderr
    assert_same_as_reference(run_dir, reference)


def test_resume_refuses_when_the_model_changed(tmp_path, env, tiny_model_dir):
    model = tmp_path / "model"
    model.mkdir()
    for f in tiny_model_dir.iterdir():
        (model / f.name).write_bytes(f.read_bytes())
    plan = write_plan(tmp_path / "plan.toml", tiny(model), limit=8, max_num_workers=1)
    r = run_cli("evalcore", "eval", plan, env=env)
    assert r.returncode == 0, r.stderr
    run_dir = run_dir_of(r.stdout)
    cfg = json.loads((model / "config.json").read_text())
    cfg["rms_norm_eps"] = 1e-3
    (model / "config.json").write_text(json.dumps(cfg))
    r = run_cli("evalcore", "resume", run_dir, env=env)
    assert r.returncode == 3
    err = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert len(err) == 1 and "what its answers depend on changed" in err[0] and "model:" in err[0]


def test_scheduling_loads_each_model_once_per_worker(tmp_path, env):
    datasets = "".join(ARC_DATASET.replace('abbr = "arc"', f'abbr = "arc{i}"') for i in range(6))
    plan = write_plan(tmp_path / "plan.toml", scripted("alpha", load_seconds=0.2) + scripted("beta", load_seconds=0.2),
                      datasets, limit=40, max_partition_size=40)
    r = run_cli("evalcore", "eval", plan, env=env)
    assert r.returncode == 0, r.stderr
    run_dir = run_dir_of(r.stdout)
    con = sqlite3.connect(run_dir / "ledger.db")
    n_parts = con.execute("SELECT count(*) FROM partitions").fetchone()[0]
    loads = con.execute("SELECT worker_id, model_key FROM loads").fetchall()
    con.close()
    assert n_parts == 2 * 6 * 4
    assert len(loads) <= 2 * 2, loads  # models x workers, not once per partition
    assert len(results(run_dir)) == 2 * 6 * 2


def test_report_formats_and_samples(tmp_path, env):
    plan = write_plan(tmp_path / "plan.toml", scripted("alpha") + scripted("beta"), limit=10)
    r = run_cli("evalcore", "eval", plan, env=env)
    assert r.returncode == 0, r.stderr
    run_dir = run_dir_of(r.stdout)
    md = run_cli("evalcore", "report", run_dir, "--format", "md", env=env).stdout
    assert md.startswith("| dataset | version | metric") and "| alpha" in md.splitlines()[0] + md
    rows = json.loads(run_cli("evalcore", "report", run_dir, "--format", "json", env=env).stdout)["results"]
    assert {r["metric"] for r in rows} == {"acc", "acc_norm"} and {r["model"] for r in rows} == {"alpha", "beta"}
    assert all(isinstance(r["value"], float) and isinstance(r["stderr"], float) and r["n"] == 10 for r in rows)
    csv_out = run_cli("evalcore", "report", run_dir, "--format", "csv", env=env).stdout
    assert csv_out.splitlines()[0] == "dataset,task_version,metric,mode,model,subtask,value,stderr,n,results_version"
    assert len(csv_out.splitlines()) == 1 + 4
    out = tmp_path / "s.jsonl"
    r = run_cli("evalcore", "report", run_dir, "--samples", out, env=env)
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(lines) == 20
    first = lines[0]
    assert set(first) >= {"model", "dataset", "index", "requests", "gold", "metrics"}
    assert first["dataset"] == "arc" and isinstance(first["gold"], int) and set(first["metrics"]) == {"acc", "acc_norm"}
    assert all(set(r) == {"context", "continuation", "loglikelihood", "greedy"} for r in first["requests"])
    assert first["requests"][0]["context"].startswith("Question: ")
    assert first["requests"][0]["continuation"].startswith(" ")


def test_missing_artefacts_are_listed_at_once(tmp_path, env):
    datasets = ARC_DATASET + '\n[[datasets]]\nname = "gsm8k_gen"\n' + \
        ARC_DATASET.replace('abbr = "arc"', 'abbr = "gone"').replace(str(ARC_JSONL), str(tmp_path / "nope.jsonl"))
    plan = write_plan(tmp_path / "plan.toml", '\n[[models]]\npath = "testorg/absent"\n', datasets)
    r = run_cli("evalcore", "eval", plan, env=env)
    assert r.returncode == 4, r.stderr
    err = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert len(err) == 1 and "3 artefact(s) missing offline" in err[0]
    assert "testorg/absent" in err[0] and "openai/gsm8k" in err[0] and "nope.jsonl" in err[0]
    assert "cachekit prefetch --model testorg/absent --dataset openai/gsm8k --out bundle.tar" in r.stderr
    assert not (tmp_path / "outputs").exists()


def test_bad_plan_and_flags(tmp_path, env):
    plan = tmp_path / "plan.toml"
    plan.write_text('[[models]]\npath = "x"\ncolour = "blue"\n')
    r = run_cli("evalcore", "eval", plan, env=env)
    assert r.returncode == 2 and "unknown key(s) colour" in r.stderr
    r = run_cli("evalcore", "eval", "--hf-path", "x", "--datasets", "no_such_set", env=env)
    assert r.returncode == 2 and "unknown dataset name(s): 'no_such_set'" in r.stderr
    r = run_cli("evalcore", "eval", "--hf-path", "x", "--datasets", "arc_easy_ppl", "--batch-size", "many", env=env)
    assert r.returncode == 2 and "--batch-size must be an integer or 'auto'" in r.stderr


def test_fake_gpus_each_worker_sees_its_own(tmp_path, env):
    plan = write_plan(tmp_path / "plan.toml", scripted("alpha", sample_seconds=0.01), limit=40,
                      max_partition_size=40)
    r = run_cli("evalcore", "eval", plan, env=dict(env, EVALCORE_FAKE_GPUS="2"))
    assert r.returncode == 0, r.stderr
    logs = "\n".join(p.read_text() for p in (run_dir_of(r.stdout) / "logs").glob("*.log"))
    assert "leased GPU(s) 0" in logs and "leased GPU(s) 1" in logs
    big = write_plan(tmp_path / "big.toml", scripted("alpha").replace('backend = "scripted"', 'backend = "scripted"\nnum_gpus = 3'))
    r = run_cli("evalcore", "eval", big, env=dict(env, EVALCORE_FAKE_GPUS="2"))
    assert r.returncode == 2 and "needs 3 GPUs but this host has 2" in r.stderr


def test_corrupt_ledger_is_refused_untouched(tmp_path, env):
    plan = write_plan(tmp_path / "plan.toml", scripted("alpha"), limit=4)
    r = run_cli("evalcore", "eval", plan, env=env)
    run_dir = run_dir_of(r.stdout)
    for p in run_dir.glob("ledger.db*"):
        p.unlink()
    junk = b"definitely not sqlite " * 200
    (run_dir / "ledger.db").write_bytes(junk)
    for cmd in (["status", run_dir], ["report", run_dir], ["resume", run_dir]):
        r = run_cli("evalcore", *cmd, env=env)
        assert r.returncode == 3, (cmd, r.stderr)
        assert r.stderr.startswith("error: ") and "ledger" in r.stderr.splitlines()[0].lower()
        assert (run_dir / "ledger.db").read_bytes() == junk
        assert not (run_dir / "ledger.db-wal").exists()


def test_offline_guard_names_host_and_port():
    code = ("from evalcore.isolation.offline import go_offline; go_offline(); import socket\n"
            "try:\n    socket.create_connection(('203.0.113.7', 8443), timeout=1)\n"
            "except Exception as e:\n    print(type(e).__name__, e)\n"
            "import huggingface_hub.constants as c; print('offline', c.HF_HUB_OFFLINE)")
    r = subprocess.run([sys.executable, "-c", code], env=clean_env(), cwd=ROOT, capture_output=True, text=True)
    assert "OfflineViolation offline run: refused" in r.stdout and "203.0.113.7:8443" in r.stdout
    assert "offline True" in r.stdout
    late = ("import huggingface_hub.constants\nfrom evalcore.isolation.offline import apply_offline_env\n"
            "try:\n    apply_offline_env()\nexcept Exception as e:\n    print(type(e).__name__, e)")
    r = subprocess.run([sys.executable, "-c", late], env=clean_env(), cwd=ROOT, capture_output=True, text=True)
    assert "OfflineViolation huggingface_hub was imported before offline mode was set" in r.stdout


def test_every_test_subprocess_is_guarded():
    code = ("import socket\ntry:\n    socket.create_connection(('203.0.113.9', 80), timeout=1)\n"
            "except Exception as e:\n    print(type(e).__name__, e)")
    r = subprocess.run([sys.executable, "-c", code], env=clean_env(), cwd=ROOT, capture_output=True, text=True)
    assert "refused to look up 203.0.113.9:80" in r.stdout or "refused a connection to 203.0.113.9:80" in r.stdout
