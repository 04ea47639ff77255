"""The standard suite built in (evalcore/benchmarks/suite.py): each entry builds lm-eval 0.4.13's
requests on real rows (scripts/crosscheck_tasks/data), under its OpenCompass and lm-eval names,
and scores as lm-eval does (TruthfulQA MC2, LAMBADA perplexity, BBH CoT and GSM8K CoT filters,
MBPP pass@1); winograd_ppl is OpenCompass's PPL task; MMLU keeps per-subject and per-category
results."""

from __future__ import annotations

import math

import pytest

from evalcore.benchmarks import suite_scoring
from evalcore.benchmarks.builtin import BUILTIN
from evalcore.benchmarks.engine import fewshot_rows, prepare_rows, requests_for
from evalcore.benchmarks.mmlu_categories import CATEGORY_OF_SUBJECT, MMLU_CATEGORIES
from evalcore.benchmarks.scores import aggregate, result_rows, score_gen, score_ll, score_loglik
from evalcore.benchmarks.suite import ALIASES, TRUTHFULQA_PRIMER
from evalcore.plan.spec import parse_plan
from evalcore.plan.tasks import task_for
from tests.conftest import ROOT
from tests.helpers.data import read_rows

DATA = ROOT / "scripts" / "crosscheck_tasks" / "data"


def rows(rel: str) -> list[dict]:
    return read_rows(DATA / rel)


def first(name: str, rel: str):
    task = task_for(parse_plan({"datasets": [{"name": name}]}).datasets[0])
    docs = prepare_rows(task, rows(rel))
    return task, docs[0], requests_for(task, docs[0], fewshot_rows(task, docs, docs[0], 0))


def test_every_name_of_the_issue_is_built_in_and_aliases_are_the_same_entry():
    names = ["hellaswag_ppl", "hellaswag", "winogrande_ppl", "winogrande", "boolq_ppl", "boolq", "commonsenseqa_ppl",
             "commonsense_qa", "openbookqa", "truthfulqa_mc1", "truthfulqa_mc2", "lambada_openai", "piqa", "piqa_ppl",
             "siqa_ppl", "siqa_gen", "arc_easy", "arc_challenge", "mmlu", "gsm8k", "gsm8k_cot", "bbh", "humaneval",
             "mbpp", "winograd_ppl"]
    assert not [n for n in names if n not in BUILTIN]
    for alias, name in ALIASES.items():
        assert BUILTIN[alias] is BUILTIN[name]
    assert parse_plan({"datasets": [{"name": "hellaswag"}]}).datasets[0].path == "Rowan/hellaswag"
    distinct = {id(t): t for t in BUILTIN.values()}.values()
    assert len({t.version for t in distinct}) == len(distinct)


def test_hellaswag_preprocesses_ctx_and_endings():
    task, doc, req = first("hellaswag", "hellaswag/validation.jsonl")
    assert req.contexts == ("Roof shingle removal: A man is sitting on a roof. He",)
    assert req.continuations[0] == " is using wrap to wrap a pair of skis." and req.gold == 3
    wiki = {"activity_label": "Home and Garden", "ctx_a": "[header] How to dry a rug. [title] Roll it.",
            "ctx_b": "then", "endings": ["[step] Hang it  up.", "Leave it."], "label": "0"}
    d = prepare_rows(task, [wiki])[0]
    assert d["query"] == "Home and Garden: How to dry a rug.. Roll it. Then"
    assert d["choices"] == [" Hang it up.", "Leave it."]  # stripped before "[step]" goes, as in lm-eval


def test_winogrande_scores_one_context_per_option_and_a_shared_continuation():
    task, doc, req = first("winogrande_ppl", "winogrande/validation.jsonl")
    i = doc["sentence"].index("_")
    assert req.contexts == (doc["sentence"][:i] + doc["option1"], doc["sentence"][:i] + doc["option2"])
    assert req.continuations == (" " + doc["sentence"][i + 1:].strip(),)
    assert req.gold == {"1": 0, "2": 1}[doc["answer"]] and task.metric == "acc_only"
    with pytest.raises(Exception, match="neither '1' nor '2'"):
        requests_for(task, {**doc, "answer": "3"}, [])


def test_boolq_csqa_openbookqa_prompts():
    _, doc, req = first("boolq", "boolq_superglue/validation.jsonl")
    assert req.contexts == (f"{doc['passage']}\nQuestion: {doc['question']}?\nAnswer:",)
    assert req.continuations == (" no", " yes") and req.gold == doc["label"]
    _, doc, req = first("commonsenseqa_ppl", "commonsense_qa/validation.jsonl")
    t = doc["choices"]["text"]
    assert req.contexts[0] == (f"Question: {doc['question'].strip()}\nA. {t[0]}\nB. {t[1]}\nC. {t[2]}\nD. {t[3]}\n"
                               f"E. {t[4]}\nAnswer:")
    assert req.continuations == (" A", " B", " C", " D", " E") and req.gold == "ABCDE".index(doc["answerKey"])
    task, doc, req = first("openbookqa", "openbookqa/test.jsonl")
    assert req.contexts == (doc["question_stem"],) and req.gold == doc["choices"]["label"].index(doc["answerKey"])
    assert task.hub.split == "test" and task.metric == "acc"


def test_truthfulqa_primer_and_mc2_mass_of_the_true_answers():
    task, doc, req = first("truthfulqa_mc2", "truthfulqa/validation.jsonl")
    assert req.contexts == (TRUTHFULQA_PRIMER + "\n\nQ: " + doc["question"] + "\nA:",)
    assert TRUTHFULQA_PRIMER.startswith("Q: What is human life expectancy in the United States?\nA: Human")
    assert TRUTHFULQA_PRIMER.endswith("\n\nQ: Where were the 1992 Olympics held?\nA: The 1992 Olympics were held in "
                                      "Barcelona, Spain.")
    assert req.continuations == tuple(" " + c for c in doc["mc2_targets"]["choices"])
    lls = [-1.0, -2.0, -0.5, -3.0]  # labels 1, 1, 0, 0
    rec = score_ll(task, doc, 0, req, lls, [False] * 4)
    p = [math.exp(x) for x in lls]
    assert rec["metrics"] == {"acc": pytest.approx((p[0] + p[1]) / sum(p), abs=1e-12)} and rec["pred"] == 2
    mc1, doc1, req1 = first("truthfulqa_mc1", "truthfulqa/validation.jsonl")
    assert req1.gold == 0 and req1.continuations[0] == " " + doc1["mc1_targets"]["choices"][0]
    assert score_ll(mc1, doc1, 0, req1, [-1.0, -0.5, -2.0, -3.0], [False] * 4)["metrics"] == {"acc": 0.0}


def test_lambada_last_word_perplexity_and_greedy_acc():
    task, doc, req = first("lambada_openai", "lambada_openai/test.jsonl")
    assert req.contexts[0] + req.continuations[0] == doc["text"] and req.continuations == (" signs",)
    recs = [score_loglik(task, doc, i, req, [lp], [g]) for i, (lp, g) in enumerate([(-2.0, True), (-4.0, False)])]
    assert [r["metrics"] for r in recs] == [{"perplexity": -2.0, "acc": 1.0}, {"perplexity": -4.0, "acc": 0.0}]
    agg = aggregate(recs)
    assert agg["perplexity"]["value"] == pytest.approx(math.exp(3.0)) and agg["acc"]["value"] == 0.5


def test_gsm8k_cot_eight_fixed_exemplars_and_its_filters():
    task, doc, req = first("gsm8k_cot", "gsm8k/test.jsonl")
    ctx = req.contexts[0]
    assert ctx.startswith("Q: There are 15 trees in the grove.") and ctx.count("\n\nQ: ") == 8
    assert "\nA: There are 15 trees originally." in ctx and ctx.endswith(f"Q: {doc['question']}\nA:")
    assert req.gold == "18" and task.stop == ("Q:", "</s>", "<|im_end|>") and task.max_out_len == 256
    rec = score_gen(task, doc, 0, req, " She sells 9 eggs, 9 * 2 = 18. The answer is 18.\n\n")
    assert rec["requests"][0]["filtered"] == {"strict-match": "18", "flexible-extract": "18."}
    assert rec["metrics"] == {"exact_match,strict-match": 1.0, "exact_match,flexible-extract": 1.0}
    assert score_gen(task, doc, 0, req, " 18 dollars")["metrics"]["exact_match,strict-match"] == 0.0


def test_bbh_is_lm_evals_cot_fewshot_over_27_configs():
    task = BUILTIN["bbh"]
    assert len(task.hub.configs) == 27 and task.hub.repo_id == "SaylorTwift/bbh" and task.fewshot == 3
    doc = {**rows("bbh/date_understanding/test.jsonl")[0], "__subset__": "date_understanding"}
    ctx = requests_for(task, doc, fewshot_rows(task, [], doc, 0)).contexts[0]
    assert ctx.startswith("Infer the date from context.\n\nQ: ") and ctx.count("A: Let's think step by step.\n") == 4
    assert ctx.endswith(f"Q: {doc['input']}\nA: Let's think step by step.\n")
    assert "12/14/1937. So the answer is (D).\n\nQ:" in ctx  # target_delimiter "", fewshot_delimiter "\n\n"
    rec = score_gen(task, doc, 0, requests_for(task, doc, []), " ... So the answer is (A).")
    assert rec["requests"][0]["filtered"] == {"get-answer": "(A)"} and rec["group"] == "date_understanding"
    assert rec["metrics"] == {"exact_match,get-answer": float(doc["target"] == "(A)")}
    assert score_gen(task, doc, 0, requests_for(task, doc, []), "no idea")["pred"] == "[invalid]"
    assert task.stop == ("</s>", "Q", "\n\n") and task.max_out_len == 1024


def test_mbpp_prompt_exemplars_and_program():
    task, doc, req = first("mbpp", "mbpp/test.jsonl")
    ctx = req.contexts[0]
    assert ctx.startswith("You are an expert Python programmer, and here is your task: Write a function to find the "
                          "similar elements from the given two tuple lists.")
    assert ctx.count("[BEGIN]\n") == 4 and ctx.count("\n[DONE]\n\n") == 3
    assert ctx.endswith("assert remove_Occ(\"PHP\",\"P\") == \"H\"\n[BEGIN]\n") and task.stop == ("[DONE]",)
    assert req.gold == "\n".join(doc["test_list"])
    assert suite_scoring.mbpp_program("def f(): pass", req.gold) == "def f(): pass\n" + req.gold


def test_mbpp_runs_the_code_only_when_allowed():
    task, doc, req = first("mbpp", "mbpp/test.jsonl")
    good = score_gen(task, doc, 0, req, doc["code"], allow_code_execution=True)
    assert good["metrics"] == {"pass@1": 1.0}, good
    assert score_gen(task, doc, 0, req, "def remove_Occ(s, ch):\n    return s", allow_code_execution=True)[
        "metrics"] == {"pass@1": 0.0}
    with pytest.raises(Exception, match="allow_execution"):
        score_gen(task, doc, 0, req, doc["code"], allow_code_execution=False)


def test_winograd_ppl_is_opencompass_prompt_and_lowest_mean_loss():
    task, doc, req = first("winograd_ppl", "winograd/test.jsonl")
    assert req.contexts == ("",)
    assert req.continuations == tuple(f"{doc['text']} Q: In the previous text, what does 'he' refer to? A: {o}"
                                      for o in doc["options"])
    # sums favour option 0, per-token means option 1 (the longer text): OpenCompass takes the mean
    rec = score_ll(task, doc, 0, req, [-10.0, -12.0], [False, False], n_tokens=[4, 6])
    assert rec["pred"] == 1 and rec["metrics"] == {"acc": float(doc["label"] == 1)}
    with pytest.raises(ValueError, match="token count"):
        score_ll(task, doc, 0, req, [-10.0, -12.0], [False, False])


def test_mmlu_has_57_subjects_in_lm_evals_four_categories_and_results_per_level():
    assert sorted(MMLU_CATEGORIES) == ["humanities", "other", "social_sciences", "stem"]
    assert len(CATEGORY_OF_SUBJECT) == 57 and CATEGORY_OF_SUBJECT["abstract_algebra"] == "stem"
    assert CATEGORY_OF_SUBJECT["philosophy"] == "humanities" and CATEGORY_OF_SUBJECT["nutrition"] == "other"
    task = BUILTIN["mmlu"]
    recs = []
    for subject, right in (("abstract_algebra", 1), ("philosophy", 0), ("high_school_geography", 1),
                           ("high_school_geography", 0)):
        doc = rows(f"mmlu/{subject}/test.jsonl")[0]
        req = requests_for(task, doc, [])
        lps = [0.0 if i == doc["answer"] else -1.0 for i in range(4)] if right else \
              [-1.0 if i == doc["answer"] else 0.0 for i in range(4)]
        recs.append(score_ll(task, doc, 0, req, lps, [False] * 4))
    assert [r["category"] for r in recs] == ["stem", "humanities", "social_sciences", "social_sciences"]
    agg = aggregate(recs)
    assert agg["acc"]["value"] == 0.5 and agg["acc"]["categories"] == {"humanities": 0.0, "social_sciences": 0.5,
                                                                         "stem": 1.0}
    got = {(r.get("subtask", ""), r["metric"]): r for r in result_rows("m", "mmlu", recs)}
    assert got[("category:stem", "acc")]["value"] == 1.0 and got[("category:stem", "acc")]["n"] == 1
    assert got[("high_school_geography", "acc")]["value"] == 0.5 and got[("philosophy", "acc")]["value"] == 0.0
