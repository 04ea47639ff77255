"""The one benchmark registry and the dry pass: bad rows, unknown names and overrides that cannot
take effect fail before any model loads (exit 2, the dataset, row and field named, no run folder,
no resume advised); a plan's own datasets reach what the real sets need (label map, constant gold,
per-choice contexts) with the same Jinja2 engine as lm-eval task files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from evalcore.benchmarks.engine import requests_for
from evalcore.errors import PlanError
from evalcore.plan.spec import parse_plan
from evalcore.plan.tasks import task_for
from tests.conftest import clean_env, run_cli

SCRIPTED = '\n[[models]]\nabbr = "s"\npath = "s"\nbackend = "scripted"\n'

WINO = [  # WinoGrande's shape: answer "1"/"2" (1-based), a blank in the sentence
    {"sentence": "The trophy did not fit in the suitcase because _ was too big.", "option1": "the trophy",
     "option2": "the suitcase", "answer": "1"},
    {"sentence": "The trophy did not fit in the suitcase because _ was too small.", "option1": "the trophy",
     "option2": "the suitcase", "answer": "2"},
]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def run_plan(tmp_path: Path, datasets: str, *args: str):
    work = tmp_path / "outputs"
    plan = tmp_path / "plan.toml"
    plan.write_text(f'[run]\nwork_dir = "{work}"\n' + SCRIPTED + datasets)
    env = clean_env(HF_HOME=str(tmp_path / "hf"), EVALCORE_STATE_DIR=str(tmp_path / "state"))
    return run_cli("evalcore", "eval", plan, *args, env=env), work


def assert_refused(r, work: Path, *needles: str) -> None:
    assert r.returncode == 2, r.stderr
    err = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert len(err) == 1, r.stderr
    for n in needles:
        assert n in err[0], err[0]
    assert "resume" not in r.stderr
    assert not work.exists() or not any(work.iterdir()), "a run folder was left"


def wino_dataset(path: Path, **keys: str) -> str:
    body = "".join(f"{k} = {v}\n" for k, v in keys.items())
    return f'\n[[datasets]]\nabbr = "wino"\npath = "{path}"\nmode = "ll"\n' + body


def test_a_one_based_digit_label_is_never_read_as_an_index(tmp_path):
    data = write_jsonl(tmp_path / "wino.jsonl", WINO)
    r, work = run_plan(tmp_path, wino_dataset(data, template='"{{ sentence }}"', choices='["{{ option1 }}", "{{ option2 }}"]',
                                              label='"answer"'))
    assert_refused(r, work, "dataset wino", "row 0", "label", "'1' is a digit string", "label_map")


def test_template_naming_a_missing_field(tmp_path):
    data = write_jsonl(tmp_path / "wino.jsonl", WINO)
    r, work = run_plan(tmp_path, wino_dataset(data, template='"{{ question }}"', choices='["{{ option1 }}", "{{ option2 }}"]',
                                              label='"answer"', label_map='{ "1" = 0, "2" = 1 }'))
    assert_refused(r, work, "dataset wino", "row 0", "template", "'question' is undefined")


def test_empty_choice_list(tmp_path):
    rows = [{"q": "a?", "opts": ["x", "y"], "gold": 0}, {"q": "b?", "opts": [], "gold": 0}]
    data = write_jsonl(tmp_path / "d.jsonl", rows)
    r, work = run_plan(tmp_path, f'\n[[datasets]]\nabbr = "quiz"\npath = "{data}"\nmode = "ll"\n'
                                 'template = "{{ q }}"\nchoices = "opts"\nlabel = "gold"\n')
    assert_refused(r, work, "dataset quiz", "row 1", "choices", "empty")


def test_gold_that_maps_to_no_choice(tmp_path):
    rows = [{"q": "a?", "opts": ["x", "y"], "gold": "x"}, {"q": "b?", "opts": ["x", "y"], "gold": "z"}]
    data = write_jsonl(tmp_path / "d.jsonl", rows)
    r, work = run_plan(tmp_path, f'\n[[datasets]]\nabbr = "quiz"\npath = "{data}"\nmode = "ll"\n'
                                 'template = "{{ q }}"\nchoices = "opts"\nlabel = "gold"\n')
    assert_refused(r, work, "dataset quiz", "row 1", "gold", "'z' is not one of the choices")


def test_only_selected_rows_are_checked(tmp_path):
    rows = [{"q": "a?", "opts": ["x", "y"], "gold": 1}, {"q": "b?", "opts": ["x", "y"], "gold": 7}]
    data = write_jsonl(tmp_path / "d.jsonl", rows)
    r, work = run_plan(tmp_path, f'\n[[datasets]]\nabbr = "quiz"\npath = "{data}"\nmode = "ll"\nlimit = 1\n'
                                 'template = "{{ q }}"\nchoices = "opts"\nlabel = "gold"\n')
    assert r.returncode == 0, r.stderr


def test_all_unknown_names_at_once_with_the_closest(tmp_path):
    env = clean_env(HF_HOME=str(tmp_path / "hf"), EVALCORE_STATE_DIR=str(tmp_path / "state"))
    work = tmp_path / "outputs"
    r = run_cli("evalcore", "eval", "--hf-path", "s", "--datasets", "arc_easy_ppl", "arc_easyppl", "gsm8k_ggen",
                "siqa_gen", "mmlu_pppl", "--work-dir", work, env=env)
    assert_refused(r, work, "'arc_easyppl' (closest built-in: arc_easy_ppl)", "'gsm8k_ggen' (closest built-in: gsm8k_gen)",
                   "'mmlu_pppl' (closest built-in: mmlu_ppl)")


@pytest.mark.parametrize("key,value,needle", [
    ("template", '"{{ question }}"', "'template' cannot be changed on a built-in"),
    ("label", '"answerKey"', "'label' cannot be changed on a built-in"),
    ("metric", '"exact_match"', "'metric' cannot be changed on a built-in"),
    ("mode", '"gen"', "'mode' cannot be changed on a built-in"),
    ("choices", '"choices.text"', "'choices' cannot be changed on a built-in"),
    ("max_out_len", "8", "'max_out_len' applies to generation"),
])
def test_overrides_on_a_builtin_that_cannot_take_effect_are_refused(tmp_path, key, value, needle):
    r, work = run_plan(tmp_path, f'\n[[datasets]]\nname = "arc_easy_ppl"\n{key} = {value}\n')
    assert_refused(r, work, "dataset arc_easy_ppl", needle)


def test_overrides_on_a_builtin_take_effect():
    def task(**kw):
        return task_for(parse_plan({"datasets": [{"name": "gsm8k_gen", **kw}]}).datasets[0])

    assert task().fewshot == 5 and task(fewshot=0).fewshot == 0 and task(fewshot=2).fewshot == 2
    assert task(max_out_len=7).max_out_len == 7 and task(stop=[]).stop == ()
    assert task(fewshot=0).version != task().version
    with pytest.raises(PlanError, match="'max_out_len' must be >= 1"):
        task(max_out_len=0)


def test_a_plan_dataset_in_winogrande_form_runs_with_one_continuation(tmp_path):
    data = write_jsonl(tmp_path / "wino.jsonl", WINO)
    ds = (f'\n[[datasets]]\nabbr = "wino"\npath = "{data}"\nmode = "ll"\nlabel = "answer"\n'
          'label_map = { "1" = 0, "2" = 1 }\n'
          'contexts = ["{{ sentence[:sentence.index(\'_\')] }}{{ option1 }}", "{{ sentence[:sentence.index(\'_\')] }}{{ option2 }}"]\n'
          'continuation = "{{ sentence[sentence.index(\'_\') + 1:].strip() }}"\n')
    r, work = run_plan(tmp_path, ds)
    assert r.returncode == 0, r.stderr
    run_dir = Path(r.stdout.splitlines()[0].split(": ", 1)[1])
    out = tmp_path / "s.jsonl"
    env = clean_env(HF_HOME=str(tmp_path / "hf"))
    assert run_cli("evalcore", "report", run_dir, "--samples", out, env=env).returncode == 0
    recs = [json.loads(x) for x in out.read_text().splitlines()]
    assert [r["index"] for r in recs] == [0, 1] and [r["gold"] for r in recs] == [0, 1]
    reqs = recs[0]["requests"]
    assert [q["context"] for q in reqs] == ["The trophy did not fit in the suitcase because the trophy",
                                            "The trophy did not fit in the suitcase because the suitcase"]
    assert {q["continuation"] for q in reqs} == {" was too big."}
    assert recs[0]["model"] == "s" and recs[0]["dataset"] == "wino" and set(recs[0]["metrics"]) == {"acc", "acc_norm"}


def test_boolean_gold_needs_a_label_map_and_a_constant_gold_works():
    def task(**kw):
        return task_for(parse_plan({"datasets": [{"path": "x.jsonl", "abbr": "x", "mode": "ll", **kw}]}).datasets[0])

    row = {"question": "is it?", "passage": "p", "answer": True}
    t = task(template="{{ passage }}\nQuestion: {{ question }}?\nAnswer:", choices=["no", "yes"], label="answer")
    with pytest.raises(Exception, match="boolean"):
        requests_for(t, row, [])
    t = task(template="{{ question }}", choices=["no", "yes"], label="answer", label_map={"false": 0, "true": 1})
    assert requests_for(t, row, []).gold == 1
    t = task(template="Q: {{ question }}\nA:", choices="{{ ['a', 'b', 'c'] }}", gold=0)
    got = requests_for(t, row, [])
    assert got.gold == 0 and got.continuations == (" a", " b", " c")


def test_bbh_resolves_every_config_of_the_real_hub_layout(tmp_path):
    """lukaemon/bbh has one config per task: bbh_gen reads all 27 (and names what is missing)."""
    from evalcore.benchmarks.builtin import BBH_CONFIGS
    from evalcore.plan import data
    from tests.conftest import ROOT

    src = (ROOT / "tests/data/bbh/boolean_expressions/test.jsonl").read_text().splitlines()[:2]
    repo = tmp_path / "bbh"
    for cfg in BBH_CONFIGS[:-1]:
        (repo / cfg).mkdir(parents=True)
        (repo / cfg / "test.jsonl").write_text("\n".join(src) + "\n")
    env = clean_env(HF_HOME=str(tmp_path / "hf"), EVALCORE_STATE_DIR=str(tmp_path / "state"))
    assert run_cli("cachekit", "prefetch", "--local", f"dataset:lukaemon/bbh={repo}", "--out", tmp_path / "b.tar",
                   env=env).returncode == 0
    assert run_cli("cachekit", "import", tmp_path / "b.tar", env=env).returncode == 0
    r = run_cli("evalcore", "eval", "--hf-path", "s", "--datasets", "bbh_gen", "--work-dir", tmp_path / "o", env=env)
    assert r.returncode == 4 and "lacks 1 of its 27 configs" in r.stderr and "word_sorting" in r.stderr, r.stderr
    (repo / BBH_CONFIGS[-1]).mkdir()
    (repo / BBH_CONFIGS[-1] / "test.jsonl").write_text("\n".join(src) + "\n")
    assert run_cli("cachekit", "prefetch", "--local", f"dataset:lukaemon/bbh={repo}", "--out", tmp_path / "c.tar",
                   env=env).returncode == 0
    assert run_cli("cachekit", "import", tmp_path / "c.tar", env=env).returncode == 0
    from cachekit.index import Index
    from evalcore.plan.spec import DatasetSpec

    ref = data.resolve(DatasetSpec("bbh_gen", "bbh_gen", "lukaemon/bbh"), configs=BBH_CONFIGS,
                       index=Index(Path(env["HF_HOME"]) / "cachekit"))
    rows = data.load_rows(ref)
    assert len(ref.parts) == 27 and len(rows) == 54
    assert task_for(parse_plan({"datasets": [{"name": "bbh_gen"}]}).datasets[0]).group(rows[-1]) == "word_sorting"


def test_new_builtins_are_one_entry_each_and_equal_the_task_file_prompts():
    """hellaswag/winogrande/boolq/commonsense_qa built in (lm-eval names as aliases); their
    requests equal those of the lm-eval-style task files on the same real rows."""
    from evalcore.benchmarks.engine import fewshot_rows, prepare_rows
    from evalcore.benchmarks.taskfile import bind
    from evalcore.plan.data import load_rows, resolve
    from tests.conftest import ROOT

    files = ROOT / "scripts" / "crosscheck_tasks" / "files"
    plan = bind(parse_plan({"run": {"include_path": [str(files)]}, "models": [{"path": "m"}],
                            "datasets": [{"task": "xf_hellaswag"}, {"task": "xf_boolq"}, {"task": "xf_winogrande"}]}))
    for spec, name, adapt in ((plan.datasets[0], "hellaswag", lambda r: r),
                              (plan.datasets[1], "boolq", lambda r: {**r, "label": int(r["answer"])})):
        xf = task_for(spec)
        ours = task_for(parse_plan({"datasets": [{"name": name}]}).datasets[0])
        raw = load_rows(resolve(spec))
        a, b = prepare_rows(xf, raw), prepare_rows(ours, [adapt(r) for r in raw])
        for i in range(len(a)):
            assert requests_for(xf, a[i], []) == requests_for(ours, b[i], []), (name, i)
    wg = task_for(parse_plan({"datasets": [{"name": "winogrande"}]}).datasets[0])
    assert wg.name == "winogrande_ppl" and wg.hub.config == "winogrande_xl"
    xf = task_for(plan.datasets[2])
    rows = load_rows(resolve(plan.datasets[2]))
    ref = requests_for(xf, rows[0], fewshot_rows(xf, rows, rows[0], 0))
    got = requests_for(wg, rows[0], [])
    assert got.gold == ref.gold == 1 and got.continuations == ref.continuations
    assert [c.split("\n\n")[-1] for c in ref.contexts] == list(got.contexts)
    cs = task_for(parse_plan({"datasets": [{"name": "commonsenseqa_ppl"}]}).datasets[0])
    row = {"question": " Where? ", "choices": {"label": list("ABCDE"), "text": list("vwxyz")}, "answerKey": "C"}
    got = requests_for(cs, row, [])
    assert got.contexts == ("Question: Where?\nA. v\nB. w\nC. x\nD. y\nE. z\nAnswer:",) and got.gold == 2
