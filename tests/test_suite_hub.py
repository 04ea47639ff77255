"""The standard suite end to end from a hub: the local hub server (scripts/hubserver.py) serves every
built-in's dataset at the repo, config and split the registry names, in the hub's Parquet layout
(README `configs:` + `<config>/<split>-00000-of-00001.parquet`; BBH as 27 configs). `evalcore needs`
names each repo with its configs and splits, `cachekit prefetch --plan` bundles exactly those
repos and checks the configs are there, and `evalcore eval` (scripted model, offline) scores a
few rows of each benchmark under the names a user types (OpenCompass's and lm-eval's)."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from evalcore.benchmarks.builtin import BUILTIN
from tests.conftest import ROOT, clean_env, run_cli

XC = ROOT / "scripts" / "crosscheck_tasks" / "data"

# the name a user types -> (slice files per config/split of the entry's hub repo)
NAMES = {
    "hellaswag_ppl": {"validation": "hellaswag/validation.jsonl"},
    "winogrande": {"validation": "winogrande/validation.jsonl"},
    "boolq_ppl": {"validation": "boolq_superglue/validation.jsonl"},
    "commonsenseqa_ppl": {"validation": "commonsense_qa/validation.jsonl"},
    "openbookqa": {"test": "openbookqa/test.jsonl"},
    "truthfulqa_mc1": {"validation": "truthfulqa/validation.jsonl"},
    "truthfulqa_mc2": {"validation": "truthfulqa/validation.jsonl"},
    "lambada_openai": {"test": "lambada_openai/test.jsonl"},
    "piqa": {"validation": "piqa/validation.jsonl"},
    "siqa_ppl": {"validation": "siqa/validation.jsonl"},
    "siqa_gen": {"validation": "siqa/validation.jsonl"},
    "arc_easy": {"validation": "arc_easy/validation.jsonl"},
    "arc_challenge_ppl": {"validation": "arc_challenge/validation.jsonl"},
    "mmlu": {"test": "mmlu/*/test.jsonl"},
    "gsm8k": {"test": "gsm8k/test.jsonl", "train": "gsm8k/train.jsonl.gz"},
    "gsm8k_cot": {"test": "gsm8k/test.jsonl"},
    "bbh": {"test": "bbh/{config}/test.jsonl"},
    "humaneval": {"test": "../../../tests/data/openai_humaneval/test.jsonl"},
    "mbpp": {"test": "mbpp/test.jsonl"},
    "winograd_ppl": {"test": "winograd/test.jsonl"},
}
WHOLE = {"mmlu": 32, "bbh": 27}  # run on every served row: 4 subjects x 8, 27 tasks x 1
ROWS = 8  # rows per split in the served repos (the few-shot pool of gsm8k: 8 train rows)


def _read(pattern: str) -> list[dict]:
    out = []
    for p in sorted(XC.glob(pattern)) if "*" in pattern else [XC / pattern]:
        opener = gzip.open if p.suffix == ".gz" else open
        with opener(p, "rt", encoding="utf-8") as f:
            out += [json.loads(x) for x in f if x.strip()][:ROWS]
    return out


def _repos(tmp: Path) -> dict[str, dict[str, Path]]:
    """repo -> {path in repo: file}: each config a folder of Parquet files, declared in README."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    layout: dict[str, dict[str, dict[str, list[dict]]]] = {}
    for name, splits in NAMES.items():
        hub = BUILTIN[name].hub
        for cfg in hub.configs or (hub.config,):
            for split, pattern in splits.items():
                layout.setdefault(hub.repo_id, {}).setdefault(cfg or "default", {})[split] = \
                    _read(pattern.format(config=cfg))
    out: dict[str, dict[str, Path]] = {}
    for repo, configs in layout.items():
        root = tmp / repo.replace("/", "__")
        files: dict[str, Path] = {}
        readme = ["---", "configs:"]
        for cfg, splits in configs.items():
            folder = "data" if cfg == "default" else cfg
            readme += [f"- config_name: {cfg}", "  data_files:"]
            for split, rows in splits.items():
                rel = f"{folder}/{split}-00000-of-00001.parquet"
                (root / folder).mkdir(parents=True, exist_ok=True)
                pq.write_table(pa.Table.from_pylist(rows), root / rel)
                files[rel] = root / rel
                readme += [f"  - split: {split}", f"    path: {folder}/{split}-*"]
        (root / "README.md").write_text("\n".join(readme + ["---", f"# {repo} (test slice)", ""]))
        files["README.md"] = root / "README.md"
        out[repo] = files
    return out


@pytest.mark.slow
def test_every_builtin_from_the_hub_layout_through_prefetch_needs_and_eval(hub_server, tmp_path):
    repos = _repos(tmp_path / "repos")
    for repo, files in repos.items():
        hub_server.commit(repo, files, repo_type="dataset")
    hub_server.commit("testorg/unused", {"README.md": b"---\n---\n"}, repo_type="dataset")
    plan = tmp_path / "eval.toml"
    body = f'[run]\nwork_dir = "{tmp_path / "outputs"}"\nmax_num_workers = 2\n\n[[models]]\nabbr = "s"\npath = "s"\n' \
           'backend = "scripted"\n'
    for name in NAMES:
        body += f'\n[[datasets]]\nname = "{name}"\n' + ("" if name in WHOLE else "limit = 2\n")
        if BUILTIN[name].needs_execution:
            body += "allow_code_execution = true\n"
    plan.write_text(body)
    online = clean_env(HF_HOME=str(tmp_path / "hf"), HF_ENDPOINT=hub_server.url,
                       EVALCORE_STATE_DIR=str(tmp_path / "state"))

    r = run_cli("evalcore", "needs", plan, env=online)
    assert r.returncode == 0, r.stderr
    lines = [x for x in r.stdout.splitlines() if x.startswith("dataset")]
    assert sorted(x.split()[1].split("@")[0] for x in lines) == sorted(repos)
    bbh = next(x for x in lines if "SaylorTwift/bbh" in x)
    assert "27 configs:" in bbh and "boolean_expressions/test" in bbh and "word_sorting/test" in bbh
    assert any("openai/gsm8k@main  1 config: main/test, main/train" in x for x in lines), lines

    r = run_cli("cachekit", "prefetch", "--plan", plan, "--out", tmp_path / "b.tar", env=online, timeout=900)
    assert r.returncode == 0, r.stderr
    r = run_cli("cachekit", "import", tmp_path / "b.tar", env=online)
    assert r.returncode == 0, r.stderr

    offline = clean_env(HF_HOME=str(tmp_path / "hf"), EVALCORE_STATE_DIR=str(tmp_path / "state"))
    r = run_cli("evalcore", "eval", plan, env=offline, timeout=900)
    assert r.returncode == 0, r.stdout + r.stderr
    run_dir = Path(r.stdout.splitlines()[0].split(": ", 1)[1])
    out = tmp_path / "samples.jsonl"
    assert run_cli("evalcore", "report", run_dir, "--samples", out, env=offline).returncode == 0
    recs = [json.loads(x) for x in out.read_text().splitlines()]
    for name in NAMES:
        mine = [x for x in recs if x["dataset"] == name]
        assert sorted(x["index"] for x in mine) == list(range(WHOLE.get(name, 2))), name
        assert all(x["requests"] and x["metrics"] for x in mine), name
    r = run_cli("evalcore", "report", run_dir, "--format", "json", env=offline)
    assert r.returncode == 0, r.stderr
    table = json.loads(r.stdout)["results"]
    metrics_of = {(row["dataset"], row["metric"], row["subtask"]) for row in table if row["value"] is not None}
    for name, metric, sub in [("lambada_openai", "perplexity", ""), ("truthfulqa_mc2", "acc", ""),
                              ("bbh", "exact_match,get-answer", ""), ("mbpp", "pass@1", ""), ("winograd_ppl", "acc", ""),
                              ("mmlu", "acc", "category:stem"), ("mmlu", "acc", "philosophy"),
                              ("mmlu", "acc", "category:humanities"), ("bbh", "exact_match,get-answer", "word_sorting"),
                              ("gsm8k_cot", "exact_match,strict-match", "")]:
        assert (name, metric, sub) in metrics_of, (name, metric, sub)


def test_prefetch_plan_names_a_config_the_repo_lacks(hub_server, tmp_path):
    repos = _repos(tmp_path / "repos")
    files = {k: v for k, v in repos["SaylorTwift/bbh"].items() if not k.startswith("word_sorting/")}
    readme = files["README.md"].read_text()
    cut = readme.index("- config_name: word_sorting")
    (tmp_path / "README.md").write_text(readme[:cut] + readme[readme.index("---", cut):])
    files["README.md"] = tmp_path / "README.md"
    hub_server.commit("SaylorTwift/bbh", files, repo_type="dataset")
    plan = tmp_path / "eval.toml"
    plan.write_text('[[datasets]]\nname = "bbh"\n')
    env = clean_env(HF_HOME=str(tmp_path / "hf"), HF_ENDPOINT=hub_server.url)
    r = run_cli("cachekit", "prefetch", "--plan", plan, "--out", tmp_path / "b.tar", env=env, timeout=600)
    err = [x for x in r.stderr.splitlines() if x.startswith("error")]
    assert r.returncode == 4 and len(err) == 1, r.stderr
    assert "SaylorTwift/bbh word_sorting/test" in err[0] and "1 config/split" in err[0], err
