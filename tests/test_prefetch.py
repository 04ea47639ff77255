"""`cachekit prefetch` against a local hub server, with the real huggingface_hub client."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from cachekit import manifest as mf
from tests.conftest import ROOT, arc_rows, clean_env, run_cli, tree_state


def small_model(hub, repo_id="testorg/small", **kw) -> str:
    return hub.commit(repo_id, {
        "config.json": json.dumps({"model_type": "llama"}).encode(),
        "tokenizer.json": b'{"version": "1.0"}',
        "model.safetensors": os.urandom(200_000),
        "extra/readme.txt": b"notes",
    }, **kw)


def manifest_of(bundle: Path) -> mf.Manifest:
    from cachekit.bundle import open_bundle

    with open_bundle(bundle) as r:
        return r.manifest()


def resolve_gets(hub) -> list[str]:
    return [p for (m, p, s) in hub.requests if m == "GET" and "/resolve/" in p]


def test_revisions_are_pinned_to_commits(hub_server, homes, tmp_path):
    v1 = small_model(hub_server, tag="v1.0")
    main = small_model(hub_server)  # a newer commit on main
    out = tmp_path / "b"
    r = run_cli("cachekit", "prefetch", "--model", "testorg/small@v1.0", "--model", f"testorg/small@{main}",
                "--out", out, env=homes)
    assert r.returncode == 0, r.stderr
    entries = {e.revision: e for e in manifest_of(out).entries}
    assert entries["v1.0"].commit == v1 and entries[main].commit == main
    assert all(len(e.files) == 4 for e in entries.values())
    r = run_cli("cachekit", "import", out, env=homes)
    assert r.returncode == 0, r.stderr
    refs = Path(homes["HF_HOME"]) / "hub" / "models--testorg--small" / "refs"
    assert (refs / "v1.0").read_text() == v1
    assert not (refs / main).exists()  # a commit needs no ref


def test_include_exclude(hub_server, homes, tmp_path):
    small_model(hub_server)
    out = tmp_path / "b"
    r = run_cli("cachekit", "prefetch", "--model", "testorg/small", "--include", "*.json", "--include", "extra/",
                "--exclude", "tokenizer.*", "--out", out, env=homes)
    assert r.returncode == 0, r.stderr
    e = manifest_of(out).entries[0]
    assert sorted(f.path for f in e.files) == ["config.json", "extra/readme.txt"]
    assert e.include == ("*.json", "extra/") and e.exclude == ("tokenizer.*",)


def _fails_cleanly(homes, tmp_path, args, code, needle):
    out = tmp_path / "out.tar"
    r = run_cli("cachekit", "prefetch", *args, "--out", out, env=homes)
    assert r.returncode == code, r.stderr
    errors = [line for line in r.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and needle in errors[0], r.stderr
    assert "hint: " in r.stderr
    assert not out.exists() and not Path(str(out) + ".partial").exists()
    assert list(tmp_path.iterdir()) == [] or all(p.name == "hf" for p in tmp_path.iterdir())


def test_unknown_repo_revision_file(hub_server, homes, tmp_path):
    small_model(hub_server)
    _fails_cleanly(homes, tmp_path, ["--model", "testorg/nope"], 4, "unknown model testorg/nope on the hub")
    _fails_cleanly(homes, tmp_path, ["--model", "testorg/small@nope"], 4, "unknown revision 'nope' of model testorg/small")
    _fails_cleanly(homes, tmp_path, ["--model", "testorg/small", "--include", "missing.json"], 4,
                   "unknown file 'missing.json' in model testorg/small@main")
    _fails_cleanly(homes, tmp_path, ["--dataset", "testorg/small"], 4, "unknown dataset testorg/small on the hub")
    _fails_cleanly(homes, tmp_path, ["--model", "not a repo"], 2, "invalid repo id 'not a repo'")


def test_gated_repo_needs_a_token(hub_server, homes, tmp_path):
    small_model(hub_server, "testorg/gated")
    hub_server.set_gated("testorg/gated", token="hf_good")
    _fails_cleanly(homes, tmp_path, ["--model", "testorg/gated"], 4,
                   "model testorg/gated is gated and HF_TOKEN is missing or may not read it")
    _fails_cleanly(dict(homes, HF_TOKEN="hf_wrong"), tmp_path, ["--model", "testorg/gated"], 4, "is gated")
    out = tmp_path / "ok"
    r = run_cli("cachekit", "prefetch", "--model", "testorg/gated", "--out", out, env=dict(homes, HF_TOKEN="hf_good"))
    assert r.returncode == 0, r.stderr
    assert manifest_of(out).entries[0].gated is True


def test_second_prefetch_downloads_nothing(hub_server, homes, tmp_path):
    small_model(hub_server)
    for out in (tmp_path / "b", tmp_path / "b.tar"):
        r = run_cli("cachekit", "prefetch", "--model", "testorg/small", "--out", out, env=homes)
        assert r.returncode == 0, r.stderr
        first = manifest_of(out)
        n = len(resolve_gets(hub_server))
        r = run_cli("cachekit", "prefetch", "--model", "testorg/small", "--out", out, env=homes)
        assert r.returncode == 0, r.stderr
        assert len(resolve_gets(hub_server)) == n, "a file already in the bundle was downloaded again"
        assert "4 file(s) already in the bundle" in r.stderr
        assert manifest_of(out).entries == first.entries
        assert run_cli("cachekit", "verify", out, env=homes).returncode == 0


def test_extending_a_bundle_keeps_earlier_entries(hub_server, homes, tmp_path):
    small_model(hub_server)
    hub_server.commit("testorg/metric", {"metric.py": b"def compute(): return 1\n", "README.md": b"# m"},
                      repo_type="space")
    out = tmp_path / "b.tar"
    assert run_cli("cachekit", "prefetch", "--model", "testorg/small", "--out", out, env=homes).returncode == 0
    r = run_cli("cachekit", "prefetch", "--space", "testorg/metric", "--out", out, env=homes)
    assert r.returncode == 0, r.stderr
    kinds = {e.repo_id: e.kind for e in manifest_of(out).entries}
    assert kinds == {"testorg/small": "model", "testorg/metric": "metric"}
    assert run_cli("cachekit", "verify", out, env=homes).returncode == 0
    assert run_cli("cachekit", "import", out, env=homes).returncode == 0
    code = ("from huggingface_hub import hf_hub_download; "
            "print(open(hf_hub_download('testorg/metric', 'metric.py', repo_type='space')).read())")
    r = subprocess.run([sys.executable, "-c", code], env=dict(homes, HF_HUB_OFFLINE="1"), capture_output=True,
                       text=True, cwd=ROOT)
    assert r.returncode == 0 and "def compute" in r.stdout, r.stderr


def test_network_cut_then_rerun_continues(hub_server, homes, tmp_path):
    hub_server.commit("testorg/big", {"a.json": b"{}", "b.json": b'{"b": 1}', "z.safetensors": os.urandom(300_000)})
    hub_server.drop_connection_after("z.safetensors", 0, times=20)
    out = tmp_path / "b.tar"
    r = run_cli("cachekit", "prefetch", "--model", "testorg/big", "--out", out, env=homes)
    assert r.returncode == 6, r.stderr
    assert "\nerror: transfer of model testorg/big failed" in r.stderr and "hint: " in r.stderr
    assert not out.exists(), "an interrupted prefetch left a bundle that looks complete"
    hub_server.drop_connection_after("z.safetensors", 0, times=0)
    r = run_cli("cachekit", "prefetch", "--model", "testorg/big", "--out", out, env=homes)
    assert r.returncode == 0, r.stderr
    gets = resolve_gets(hub_server)
    assert sum(p.endswith("/a.json") for p in gets) == 1 and sum(p.endswith("/b.json") for p in gets) == 1
    assert run_cli("cachekit", "verify", out, env=homes).returncode == 0
    assert not Path(str(out) + ".partial").exists()


def test_killed_prefetch_rerun_continues(hub_server, homes, tmp_path):
    files = {f"f{i}.json": json.dumps({"i": i, "pad": "x" * 20_000}).encode() for i in range(6)}
    hub_server.commit("testorg/slow", files)
    hub_server.throttle(30_000)                  # 0.7 s a file: seconds of slack before the kill lands
    out = tmp_path / "b"
    cmd = [sys.executable, "-m", "cli.cachekit_cli", "prefetch", "--model", "testorg/slow", "--out", str(out)]
    p = subprocess.Popen(cmd, env=homes, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    journal = out / ".partial" / "journal.jsonl"
    deadline = time.time() + 60
    while time.time() < deadline and (not journal.exists() or journal.read_text().count("\n") < 2):
        time.sleep(0.05)
    p.send_signal(signal.SIGKILL)
    p.wait()
    done_before = journal.read_text().count("\n")
    assert 2 <= done_before < 6 and not (out / "manifest.json").exists()
    r = run_cli("cachekit", "verify", out, env=homes)
    assert r.returncode == 3 and "no manifest.json" in r.stderr
    hub_server.throttle(None)
    r = run_cli("cachekit", "prefetch", "--model", "testorg/slow", "--out", out, env=homes)
    assert r.returncode == 0, r.stderr
    assert f"{done_before} file(s) already in the bundle" in r.stderr
    assert run_cli("cachekit", "verify", out, env=homes).returncode == 0
    assert sorted(f.path for f in manifest_of(out).entries[0].files) == sorted(files)


def test_out_folder_that_is_not_a_bundle_is_refused(hub_server, homes, tmp_path):
    small_model(hub_server)
    out = tmp_path / "precious"
    out.mkdir()
    (out / "thesis.tex").write_text("do not touch")
    before = tree_state(out)
    r = run_cli("cachekit", "prefetch", "--model", "testorg/small", "--out", out, env=homes)
    assert r.returncode == 2 and "is a folder that is not a bundle" in r.stderr
    assert tree_state(out) == before


def test_datasets_become_parquet_per_config_and_split(hub_server, homes, tmp_path):
    rows = arc_rows()[:50]
    # a repo without README: top-level files are the "default" config, split named by file
    hub_server.commit("testorg/plain", {
        "train.jsonl": "\n".join(json.dumps(r) for r in rows[:30]).encode(),
        "test.jsonl": "\n".join(json.dumps(r) for r in rows[30:]).encode(),
    }, repo_type="dataset")
    # a repo with two configs in subfolders, one split each
    buf = tmp_path / "x.parquet"
    pq.write_table(pa.Table.from_pylist(rows[:10]), buf)
    hub_server.commit("testorg/multi", {"one/validation.parquet": buf,
                                        "two/test.csv": b"a,b\n1,x\n2,y\n"}, repo_type="dataset")
    hub_server.commit("testorg/scripted", {"scripted.py": b"import datasets\n"}, repo_type="dataset")
    out = tmp_path / "b"
    r = run_cli("cachekit", "prefetch", "--dataset", "testorg/plain", "--dataset", "testorg/multi", "--out", out,
                env=homes)
    assert r.returncode == 0, r.stderr
    entries = {e.repo_id: e for e in manifest_of(out).entries}
    assert {c: {s: i["rows"] for s, i in v.items()} for c, v in entries["testorg/plain"].splits.items()} == \
        {"default": {"train": 30, "test": 20}}
    assert {c: list(v) for c, v in entries["testorg/multi"].splits.items()} == {"one": ["validation"], "two": ["test"]}
    obj = out / mf.object_path(next(f.sha256 for f in entries["testorg/plain"].files if f.path == "default/test.parquet"))
    assert pq.read_table(obj).to_pylist() == rows[30:]
    (tmp_path / "s").mkdir()
    _fails_cleanly(homes, tmp_path / "s", ["--dataset", "testorg/scripted"], 4,
                   "has only a loading script (scripted.py) and no data files")


def test_plan_file_fetches_what_the_plan_needs(hub_server, homes, tmp_path, arc_parquet_repo):
    small_model(hub_server, "testorg/planned")
    hub_server.commit("testorg/tok", {"tokenizer.json": b"{}"})
    hub_server.commit("allenai/ai2_arc", arc_parquet_repo, repo_type="dataset")
    plan = tmp_path / "eval.toml"
    plan.write_text('[[models]]\npath = "testorg/planned"\ntokenizer_path = "testorg/tok"\n\n'
                    '[[datasets]]\nname = "arc_easy_ppl"\n')
    out = tmp_path / "b.tar"
    r = run_cli("cachekit", "prefetch", "--plan", plan, "--out", out, env=homes)
    assert r.returncode == 0, r.stderr
    got = sorted((e.repo_type, e.repo_id) for e in manifest_of(out).entries)
    assert got == [("dataset", "allenai/ai2_arc"), ("model", "testorg/planned"), ("model", "testorg/tok")]
    plan.write_text('[[models]]\npath = "testorg/planned"\nflavour = "x"\n')
    r = run_cli("cachekit", "prefetch", "--plan", plan, "--out", tmp_path / "c.tar", env=homes)
    assert r.returncode == 2 and "unknown key(s) flavour" in r.stderr


def test_custom_code_models_and_their_dependencies(hub_server, homes, tmp_path):
    hub_server.commit("codeorg/modeling", {"modeling_x.py": b"class X: pass\n"})
    hub_server.commit("testorg/custom", {"config.json": json.dumps(
        {"model_type": "x", "auto_map": {"AutoModel": "codeorg/modeling--modeling_x.X"}}).encode()})
    out = tmp_path / "no"
    r = run_cli("cachekit", "prefetch", "--model", "testorg/custom", "--out", out, env=homes)
    assert r.returncode == 0 and "ships custom code" in r.stderr
    (e,) = manifest_of(out).entries
    assert e.trust_remote_code is False and e.dependencies == ()
    out = tmp_path / "yes"
    r = run_cli("cachekit", "prefetch", "--model", "testorg/custom", "--trust-remote-code", "--out", out, env=homes)
    assert r.returncode == 0, r.stderr
    entries = {e.repo_id: e for e in manifest_of(out).entries}
    assert entries["testorg/custom"].trust_remote_code is True
    assert entries["testorg/custom"].dependencies == ("codeorg/modeling",)
    assert "codeorg/modeling" in entries


LOAD_OFFLINE = r"""
import json, sys
from huggingface_hub import hf_hub_download
out = {}
for rev in sys.argv[1:]:
    kw = {"revision": rev} if rev != "-" else {}
    try:
        out[rev] = open(hf_hub_download("testorg/small", "config.json", **kw)).read()
    except Exception as exc:
        out[rev] = type(exc).__name__
print(json.dumps(out))
"""


def test_every_ref_at_the_pinned_commit_is_recorded_and_written(hub_server, homes, tmp_path):
    """`org/name@v1` prefetched while main was the same commit also loads as `org/name`; a
    branch elsewhere is not written, and neither is what moved after the prefetch."""
    v1 = small_model(hub_server, tag="v1")
    hub_server.create_branch("testorg/small", "stable", "v1")
    hub_server.commit("testorg/small", {"config.json": b'{"model_type": "llama", "v": 2}'}, branch="dev",
                      message="dev only")
    out = tmp_path / "b"
    r = run_cli("cachekit", "prefetch", "--model", "testorg/small@v1", "--out", out, env=homes)
    assert r.returncode == 0, r.stderr
    e = manifest_of(out).entries[0]
    assert e.commit == v1 and e.revision == "v1" and e.refs == ("main", "stable")
    small_model(hub_server)  # main moves on after the prefetch: the bundle still says what was true

    offline = dict(homes, HF_HOME=str(tmp_path / "offline"), HF_HUB_OFFLINE="1")
    r = run_cli("cachekit", "import", out, env=offline)
    assert r.returncode == 0, r.stderr
    refs = Path(offline["HF_HOME"]) / "hub" / "models--testorg--small" / "refs"
    assert sorted(p.name for p in refs.iterdir()) == ["main", "stable", "v1"]
    assert all((refs / n).read_text() == v1 for n in ("main", "stable", "v1"))
    r = subprocess.run([sys.executable, "-c", LOAD_OFFLINE, "-", "v1", "stable", "dev"], env=offline,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout.splitlines()[-1])
    assert got["-"] == got["v1"] == got["stable"] == json.dumps({"model_type": "llama"})
    assert got["dev"] != got["-"] and "Error" in got["dev"]  # never a ref that was not true
    rows = json.loads(run_cli("cachekit", "ls", "--json", env=offline).stdout)
    assert rows[0]["revisions"] == ["main", "stable", "v1"]


SCRIPT_ROWS = [{"text": "a", "label": 0}, {"text": "b", "label": 1}, {"text": "c", "label": 0}]
LOAD_SCRIPTED = r"""
import json
import datasets
from cachekit.index import Index
rows = datasets.load_dataset("testorg/scripted", split="train").to_list()
import pyarrow.parquet as pq
store = pq.read_table(Index().resolve_split("testorg/scripted", None, "train")).to_pylist()
print(json.dumps({"rows": rows, "store": store}))
"""


def _parquet_bytes(rows) -> bytes:
    import io

    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows), buf)
    return buf.getvalue()


def test_script_dataset_taken_from_the_parquet_export(hub_server, homes, tmp_path):
    """A repo with only a loading script is bundled from the hub's refs/convert/parquet, both
    commits recorded, and loads offline under its own repo id (load_dataset and evalcore)."""
    main = hub_server.commit("testorg/scripted", {"scripted.py": b"import datasets\n# a loading script\n",
                                                  "dataset_infos.json": b"{}", "README.md": b"# scripted\n"},
                             repo_type="dataset")
    export = hub_server.commit("testorg/scripted", {"default/train/0000.parquet": _parquet_bytes(SCRIPT_ROWS)},
                               repo_type="dataset", branch="refs/convert/parquet")
    out = tmp_path / "b"
    r = run_cli("cachekit", "prefetch", "--dataset", "testorg/scripted", "--out", out, env=homes)
    assert r.returncode == 0, r.stderr
    assert "has a loading script (scripted.py): taking the hub's Parquet export" in r.stderr
    e = manifest_of(out).entries[0]
    assert (e.revision, e.commit) == ("refs/convert/parquet", export)
    assert e.converted_from == {"revision": "main", "commit": main}
    offline = clean_env(HF_HOME=str(tmp_path / "offline"), HF_HUB_OFFLINE="1")
    r = run_cli("cachekit", "import", out, env=offline)
    assert r.returncode == 0, r.stderr
    refs = Path(offline["HF_HOME"]) / "hub" / "datasets--testorg--scripted" / "refs"
    assert (refs / "refs" / "convert" / "parquet").read_text() == export
    assert not (refs / "main").exists()  # main is the script commit: never claimed for the export
    r = subprocess.run([sys.executable, "-c", LOAD_SCRIPTED], env=offline, cwd=ROOT, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout.splitlines()[-1])
    assert got["rows"] == got["store"] == SCRIPT_ROWS


def test_script_dataset_without_an_export_fails_before_writing(hub_server, homes, tmp_path):
    hub_server.commit("testorg/onlyscript", {"onlyscript.py": b"# a loading script\n"}, repo_type="dataset")
    _fails_cleanly(homes, tmp_path, ["--dataset", "testorg/onlyscript"], 4,
                   "dataset testorg/onlyscript@main has only a loading script (onlyscript.py) and no data files, "
                   "and the hub has no refs/convert/parquet revision for it")


LOCAL_PLAN = """
[[models]]
path = "./ckpt"

[[datasets]]
abbr = "my_quiz"
path = "data/quiz.jsonl"
mode = "ll"
template = "Question: {q}\\nAnswer:"
choices = "options"
label = "answer"
"""


def test_a_plan_of_local_paths_says_exactly_what_to_pass(tmp_path):
    """`evalcore needs` and `cachekit prefetch --plan` on a plan whose model and data are local:
    no prefetch command that fails with "nothing to prefetch", but the --local entries to pass."""
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "quiz.jsonl").write_text(json.dumps({"q": "1?", "options": ["a", "b"], "answer": 0}) + "\n")
    plan = tmp_path / "plan.toml"
    plan.write_text(LOCAL_PLAN)
    env = clean_env(HF_HOME=str(tmp_path / "hf"))
    out = tmp_path / "local.tar"

    r = run_cli("cachekit", "prefetch", "--plan", plan, "--out", out, env=env)
    assert r.returncode == 2 and not out.exists()
    first, hint = r.stderr.splitlines()[:2]
    assert first == f"error: nothing to prefetch: every model and dataset of {plan} is a local path, which --plan does not bundle"
    cmd = (f"cachekit prefetch --local local/ckpt={tmp_path}/ckpt --local dataset:local/quiz={tmp_path}/data/quiz.jsonl"
           f" --out {out}")
    assert cmd in hint and f"{tmp_path}/ckpt -> local/ckpt" in hint

    r = run_cli("evalcore", "needs", plan, env=env)
    assert r.returncode == 0, r.stderr
    assert "nothing to fetch from the hub: every model and dataset of this plan is a local path" in r.stdout
    assert "cachekit prefetch --plan" not in r.stdout
    line = next(x.strip() for x in r.stdout.splitlines() if x.strip().startswith("cachekit prefetch --local"))
    assert line.endswith(" --out local.tar")
    args = line.split()[1:-1] + [str(out)]  # the command it gives works (written where this test may write)
    r = run_cli("cachekit", *args, env=env)
    assert r.returncode == 0, r.stderr
    assert sorted(e.repo_id for e in manifest_of(out).entries) == ["local/ckpt", "local/quiz"]
