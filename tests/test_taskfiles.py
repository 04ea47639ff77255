"""lm-eval 0.4 task files (scripts/crosscheck_tasks/files: !function, include, process_docs, a
group, a tag, the multiple-input form, a filtered generate_until, a Jinja few-shot primer) run
through the one registry; bad task files fail before any model loads (exit 2, key and file
named, no run folder); `evalcore needs` names the hub datasets task files need."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from evalcore.benchmarks.engine import fewshot_rows, prepare_rows, requests_for
from evalcore.benchmarks.taskfile import bind, index
from evalcore.plan.data import load_rows, resolve
from evalcore.plan.spec import parse_plan
from evalcore.plan.tasks import task_for
from tests.conftest import ROOT, clean_env, run_cli
from tests.test_benchmarks import SCRIPTED, assert_refused

FILES = ROOT / "scripts" / "crosscheck_tasks" / "files"


def bound(*names: str, include=FILES):
    plan = parse_plan({"run": {"include_path": [str(include)]}, "models": [{"path": "s", "backend": "scripted"}],
                       "datasets": [{"task": n} for n in names]})
    return bind(plan)


def rows_and_requests(spec, n: int = 3):
    task = task_for(spec)
    rows = prepare_rows(task, load_rows(resolve(spec)))
    return task, rows, [requests_for(task, rows[i], fewshot_rows(task, rows, rows[i], i)) for i in range(n)]


def test_index_finds_tasks_groups_and_tags():
    entries = index([FILES])
    assert {e.name: e.kind for e in entries.values()} == {
        "xf_hellaswag": "task", "xf_winogrande": "task", "xf_boolq": "task", "xf_commonsense_qa": "task",
        "xf_boolq_gen": "task", "xf_suite": "group", "xf_commonsense": "tag"}
    plan = bound("xf_suite", "xf_commonsense")
    assert [d.abbr for d in plan.datasets] == ["xf_hellaswag", "xf_winogrande", "xf_boolq", "xf_commonsense_qa",
                                               "xf_hellaswag", "xf_winogrande"]
    assert dict(plan.datasets[0].groups) == {"xf_suite": [{"metric": "acc", "aggregation": "mean", "weight_by_size": True}]}
    assert plan.datasets[0].path.endswith("data/hellaswag/validation.jsonl") and plan.datasets[0].split == "validation"


def test_requests_follow_lm_eval_semantics():
    plan = bound("xf_hellaswag", "xf_winogrande", "xf_boolq", "xf_commonsense_qa", "xf_boolq_gen")
    hs, wg, bq, cs, gen = plan.datasets
    _, rows, reqs = rows_and_requests(hs)  # process_docs built query/choices; the label template is an index
    assert reqs[0].contexts == (rows[0]["query"],) and reqs[0].gold == int(rows[0]["label"])
    assert reqs[0].continuations == tuple(" " + c for c in rows[0]["choices"])
    task, rows, reqs = rows_and_requests(wg)  # multiple input: one context per option, one continuation
    r = rows[0]
    head = r["sentence"][:r["sentence"].index("_")]
    assert [c.endswith(head + r["option1"]) for c in reqs[0].contexts] == [True, False]
    assert reqs[0].contexts[1].endswith(head + r["option2"]) and len(reqs[0].continuations) == 1
    assert reqs[0].gold == int(r["answer"]) - 1 and reqs[0].contexts[0].count("\n\n") == 2  # 2 few-shot examples
    assert task.fewshot == 2 and task.sampler == "random" and task.fewshot_exclude_self
    _, rows, reqs = rows_and_requests(bq)
    assert reqs[0].gold == int(rows[0]["answer"]) and reqs[0].continuations == (" no", " yes")
    task, rows, reqs = rows_and_requests(cs)  # Jinja primer: description + 3 fixed examples
    ctx = reqs[0].contexts[0]
    assert ctx.startswith("The following are multiple choice questions about revolving door.\n\nQuestion: Where would you keep milk cold?\n")
    assert ctx.count("Answer: ") == 3 and ctx.endswith("E. new york\nAnswer:") and reqs[0].gold == 0
    task, rows, reqs = rows_and_requests(gen)
    assert task.mode == "gen" and task.stop == ("\n", ".") and task.max_out_len == 8 and reqs[0].gold == "no"


def test_task_files_run_end_to_end_with_a_group_and_filters(tmp_path):
    work = tmp_path / "out"
    plan = tmp_path / "plan.toml"
    plan.write_text(f'[run]\nwork_dir = "{work}"\n' + SCRIPTED)
    env = clean_env(HF_HOME=str(tmp_path / "hf"), EVALCORE_STATE_DIR=str(tmp_path / "state"))
    r = run_cli("evalcore", "eval", plan, "--include-path", FILES, "--tasks", "xf_suite", "xf_boolq_gen",
                "--limit", "5", env=env)
    assert r.returncode == 0, r.stderr
    run_dir = Path(r.stdout.splitlines()[0].split(": ", 1)[1])
    table = [row for row in json.loads(run_cli("evalcore", "report", run_dir, "--format", "json", env=env).stdout)["results"]
             if row["model"] == "s" and not row["subtask"]]
    metrics = {(row["dataset"], row["metric"]) for row in table}
    assert ("xf_suite", "acc") in metrics and ("xf_boolq_gen", "exact_match,get-answer") in metrics
    suite = next(row["value"] for row in table if row["dataset"] == "xf_suite" and row["metric"] == "acc")
    parts = [row["value"] for row in table if row["metric"] == "acc" and row["dataset"] in
             ("xf_hellaswag", "xf_winogrande", "xf_boolq", "xf_commonsense_qa")]
    assert suite == pytest.approx(sum(parts) / 4, abs=1e-9)  # equal sizes: micro = mean
    out = tmp_path / "s.jsonl"
    assert run_cli("evalcore", "report", run_dir, "--samples", out, env=env).returncode == 0
    recs = [json.loads(x) for x in out.read_text().splitlines()]
    gen = [x for x in recs if x["dataset"] == "xf_boolq_gen"]
    assert len(gen) == 5 and set(gen[0]["requests"][0]) == {"context", "generation", "filtered"}
    assert set(gen[0]["requests"][0]["filtered"]) == {"get-answer", "raw"}
    wino = next(x for x in recs if x["dataset"] == "xf_winogrande")
    assert len(wino["requests"]) == 2 and len({q["continuation"] for q in wino["requests"]}) == 1
    recorded = json.loads((run_dir / "run.json").read_text())["benchmarks"]["xf_winogrande"]
    assert recorded["source"].endswith("winogrande.yaml")
    assert recorded["recorded"] == {"metadata": {"version": 1.0}, "should_decontaminate": True,
                                    "doc_to_decontamination_query": "sentence"}


def copy_files(tmp_path: Path) -> Path:
    dest = tmp_path / "tasks"
    shutil.copytree(FILES, dest)
    return dest


def run_tasks(tmp_path: Path, include: Path, *tasks: str):
    work = tmp_path / "out"
    plan = tmp_path / "plan.toml"
    plan.write_text(f'[run]\nwork_dir = "{work}"\n' + SCRIPTED)
    env = clean_env(HF_HOME=str(tmp_path / "hf"), EVALCORE_STATE_DIR=str(tmp_path / "state"))
    return run_cli("evalcore", "eval", plan, "--include-path", include, "--tasks", *tasks, env=env), work


def test_a_task_file_that_does_not_parse(tmp_path):
    inc = copy_files(tmp_path)
    (inc / "broken.yaml").write_text("task: xf_broken\ndoc_to_text: [unclosed\n")
    r, work = run_tasks(tmp_path, inc, "xf_boolq")
    assert_refused(r, work, "broken.yaml", "does not parse")


def test_a_key_that_would_change_the_score_is_refused(tmp_path):
    inc = copy_files(tmp_path)
    text = (inc / "boolq.yaml").read_text() + "process_results: !function utils.winogrande_gold\n"
    (inc / "boolq.yaml").write_text(text)
    r, work = run_tasks(tmp_path, inc, "xf_boolq")
    assert_refused(r, work, "boolq.yaml", "key 'process_results' would change the score")
    (inc / "boolq.yaml").write_text(text.replace("process_results: !function utils.winogrande_gold\n",
                                                 "doc_to_txt: question\n"))
    r, work = run_tasks(tmp_path, inc, "xf_boolq")
    assert_refused(r, work, "boolq.yaml", "key 'doc_to_txt' is not an lm-eval 0.4 task key")


def test_a_task_template_naming_a_missing_field(tmp_path):
    inc = copy_files(tmp_path)
    (inc / "boolq.yaml").write_text((inc / "boolq.yaml").read_text().replace("{{passage}}", "{{ passages }}"))
    r, work = run_tasks(tmp_path, inc, "xf_boolq")
    assert_refused(r, work, "dataset xf_boolq", "row 0", "doc_to_text", "'passages' is undefined")


def test_unknown_task_names_are_listed_at_once(tmp_path):
    r, work = run_tasks(tmp_path, FILES, "xf_bolq", "xf_boolq", "xf_hellaswg")
    assert_refused(r, work, "'xf_bolq' (closest: xf_boolq)", "'xf_hellaswg' (closest: xf_hellaswag)")


def test_needs_names_the_hub_datasets_of_task_files(tmp_path):
    inc = tmp_path / "tasks"
    inc.mkdir()
    (inc / "wino.yaml").write_text("task: my_wino\ndataset_path: allenai/winogrande\ndataset_name: winogrande_xl\n"
                                   "output_type: multiple_choice\nvalidation_split: validation\n"
                                   "doc_to_text: sentence\ndoc_to_target: answer\ndoc_to_choice: [a, b]\n")
    plan = tmp_path / "plan.toml"
    plan.write_text(f'[run]\ninclude_path = ["{inc}"]\n\n[[datasets]]\ntask = "my_wino"\n\n[[datasets]]\nname = "piqa_ppl"\n')
    r = run_cli("evalcore", "needs", plan, env=clean_env(HF_HOME=str(tmp_path / "hf")))
    assert r.returncode == 0, r.stderr
    first, second = (line.split() for line in r.stdout.splitlines()[:2])
    assert first == ["dataset", "allenai/winogrande@main"]
    assert second[:2] == ["dataset", "baber/piqa@main"] and "piqa_ppl" in second  # with the configs it reads


def test_loglikelihood_and_rolling_task_files(tmp_path):
    inc = tmp_path / "tasks"
    inc.mkdir()
    data = tmp_path / "texts.jsonl"
    data.write_text('{"text": "The cat sat on the mat.", "prefix": "The cat", "rest": " sat on the mat."}\n'
                    '{"text": "A second short line of text here.", "prefix": "A second", "rest": " short line"}\n')
    common = f"dataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {data}\ntest_split: test\n"
    (inc / "roll.yaml").write_text("task: my_roll\noutput_type: loglikelihood_rolling\n" + common +
                                   "doc_to_text: ''\ndoc_to_target: '{{ text }}'\n")
    (inc / "ll.yaml").write_text("task: my_ll\noutput_type: loglikelihood\n" + common +
                                 "doc_to_text: '{{ prefix }}'\ndoc_to_target: '{{ rest }}'\n")
    r, work = run_tasks(tmp_path, inc, "my_roll", "my_ll")
    assert r.returncode == 0, r.stderr
    run_dir = Path(r.stdout.splitlines()[0].split(": ", 1)[1])
    env = clean_env(HF_HOME=str(tmp_path / "hf"))
    table = json.loads(run_cli("evalcore", "report", run_dir, "--format", "json", env=env).stdout)["results"]
    got = {(row["dataset"], row["metric"]) for row in table}
    assert got == {("my_roll", "word_perplexity"), ("my_roll", "byte_perplexity"), ("my_roll", "bits_per_byte"),
                   ("my_ll", "perplexity"), ("my_ll", "acc")}
    out = tmp_path / "s.jsonl"
    assert run_cli("evalcore", "report", run_dir, "--samples", out, env=env).returncode == 0
    recs = {(x["dataset"], x["index"]): x for x in map(json.loads, out.read_text().splitlines())}
    assert recs[("my_roll", 0)]["requests"][0]["continuation"] == "The cat sat on the mat."
    assert recs[("my_roll", 0)]["metrics"]["word_perplexity"][1] == 6
    assert recs[("my_ll", 1)]["requests"][0]["context"] == "A second"
    assert recs[("my_ll", 1)]["requests"][0]["continuation"] == " short line"


def test_overrides_on_task_files_take_effect_or_are_refused(tmp_path):
    from evalcore.errors import PlanError

    def task(name: str, **kw):
        plan = bind(parse_plan({"run": {"include_path": [str(FILES)]}, "models": [{"path": "s", "backend": "scripted"}],
                                "datasets": [{"task": name, **kw}]}))
        return task_for(plan.datasets[0])

    assert task("xf_winogrande").fewshot == 2 and task("xf_winogrande", fewshot=0).fewshot == 0
    assert task("xf_boolq_gen", max_out_len=3).max_out_len == 3
    with pytest.raises(PlanError, match="'template' cannot be changed on a task file"):
        task("xf_boolq", template="{{ question }}")
    with pytest.raises(PlanError, match="'max_out_len' applies to generate_until tasks only"):
        task("xf_boolq", max_out_len=3)
    work = tmp_path / "out"
    plan = tmp_path / "plan.toml"
    plan.write_text(f'[run]\nwork_dir = "{work}"\n' + SCRIPTED)
    env = clean_env(HF_HOME=str(tmp_path / "hf"), EVALCORE_STATE_DIR=str(tmp_path / "state"))
    r = run_cli("evalcore", "eval", plan, "--include-path", FILES, "--tasks", "xf_boolq_gen", "xf_boolq",
                "--datasets", "gsm8k_gen", "--max-out-len", "5", env=env)
    assert r.returncode == 4 and "openai/gsm8k" in r.stderr  # gsm8k is not installed; the flag itself was taken
    from cli.evalcore_cli import _max_out_len_on_generation_sets

    p = _max_out_len_on_generation_sets(parse_plan({"run": {"include_path": [str(FILES)]},
                                                    "datasets": [{"task": "xf_boolq_gen"}, {"task": "xf_boolq"},
                                                                 {"name": "gsm8k_gen"}, {"name": "piqa_ppl"}]}), 5)
    assert [d.max_out_len for d in p.datasets] == [5, None, 5, None]
    assert task_for(p.datasets[0]).max_out_len == 5 and task_for(p.datasets[2]).max_out_len == 5
