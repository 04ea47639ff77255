"""The built-in benchmarks: one entry each (prompt, choices, gold, few-shot, generation settings,
metric, hub dataset). They follow lm-evaluation-harness 0.4.13's definitions where it has one
(see docs/crosscheck.md); names follow OpenCompass (`arc_easy_ppl`, `gsm8k_gen`, ...).

Adding a built-in is one entry in BUILTIN (and its crosscheck rows)."""

from __future__ import annotations

from evalcore.scoring import metrics

from .definition import SUBSET_FIELD, HubRef, Row, Task


def _arc_text(d: Row) -> str:
    return f"Question: {d['question']}\nAnswer:"


def _arc_choices(d: Row) -> list[str]:
    return list(d["choices"]["text"])


def _arc_target(d: Row) -> int:
    return list(d["choices"]["label"]).index(d["answerKey"])


def _piqa_text(d: Row) -> str:
    return f"Question: {d['goal']}\nAnswer:"


def _piqa_choices(d: Row) -> list[str]:
    return [d["sol1"], d["sol2"]]


def _piqa_target(d: Row) -> int:
    return int(d["label"])


def _siqa_text(d: Row) -> str:
    return f"Q: {d['context']} {d['question']}\nA:"


def _siqa_choices(d: Row) -> list[str]:
    return [d["answerA"], d["answerB"], d["answerC"]]


def _siqa_target(d: Row) -> int:
    return int(d["label"]) - 1


def _siqa_gen_text(d: Row) -> str:
    return (f"{d['context']}\nQuestion: {d['question']}\nA. {d['answerA']}\nB. {d['answerB']}\n"
            f"C. {d['answerC']}\nAnswer:")


def _siqa_gen_target(d: Row) -> str:
    return "ABC"[int(d["label"]) - 1]


def _mmlu_description(d: Row) -> str:
    subject = d["subject"].replace("_", " ")
    return f"The following are multiple choice questions (with answers) about {subject}.\n\n"


def _mmlu_text(d: Row) -> str:
    c = d["choices"]
    return f"{d['question'].strip()}\nA. {c[0]}\nB. {c[1]}\nC. {c[2]}\nD. {c[3]}\nAnswer:"


def _mmlu_choices(d: Row) -> list[str]:
    return ["A", "B", "C", "D"]


def _mmlu_target(d: Row) -> int:
    return int(d["answer"])


def _mmlu_group(d: Row) -> str:
    return d["subject"]


def _gsm8k_text(d: Row) -> str:
    return f"Question: {d['question']}\nAnswer:"


def _gsm8k_target(d: Row) -> str:
    return d["answer"]


def _bbh_text(d: Row) -> str:
    return f"Q: {d['input']}\nA:"


def _bbh_target(d: Row) -> str:
    return d["target"]


def _bbh_group(d: Row) -> str:
    return d.get(SUBSET_FIELD, "bbh")


def _humaneval_text(d: Row) -> str:
    return d["prompt"]


def _humaneval_target(d: Row) -> str:
    return d["task_id"]


# lukaemon/bbh: one config per BIG-Bench Hard task, each with a "test" split.
BBH_CONFIGS = (
    "boolean_expressions", "causal_judgement", "date_understanding", "disambiguation_qa", "dyck_languages",
    "formal_fallacies", "geometric_shapes", "hyperbaton", "logical_deduction_five_objects",
    "logical_deduction_seven_objects", "logical_deduction_three_objects", "movie_recommendation",
    "multistep_arithmetic_two", "navigate", "object_counting", "penguins_in_a_table",
    "reasoning_about_colored_objects", "ruin_names", "salient_translation_error_detection", "snarks",
    "sports_understanding", "temporal_sequences", "tracking_shuffled_objects_five_objects",
    "tracking_shuffled_objects_seven_objects", "tracking_shuffled_objects_three_objects", "web_of_lies",
    "word_sorting",
)

_ARC_E = HubRef("allenai/ai2_arc", "ARC-Easy", "validation", "train")
_ARC_C = HubRef("allenai/ai2_arc", "ARC-Challenge", "validation", "train")
_SIQA = HubRef("lighteval/siqa", None, "validation", "train")  # lm-eval 0.4.13 (allenai/social_i_qa has a script)

BUILTIN: dict[str, Task] = {
    "arc_easy_ppl": Task("arc_easy_ppl", "ll", _arc_text, _arc_target, _arc_choices, hub=_ARC_E),
    "arc_challenge_ppl": Task("arc_challenge_ppl", "ll", _arc_text, _arc_target, _arc_choices, hub=_ARC_C),
    "piqa_ppl": Task("piqa_ppl", "ll", _piqa_text, _piqa_target, _piqa_choices, hub=HubRef("baber/piqa", None, "validation", "train")),
    "siqa_ppl": Task("siqa_ppl", "ll", _siqa_text, _siqa_target, _siqa_choices, hub=_SIQA),
    "siqa_gen": Task("siqa_gen", "gen", _siqa_gen_text, _siqa_gen_target, stop=("\n",), max_out_len=16,
                     metric="letter", extra=("ABC",), hub=_SIQA),
    "mmlu_ppl": Task("mmlu_ppl", "ll", _mmlu_text, _mmlu_target, _mmlu_choices, description=_mmlu_description,
                     fewshot_split="dev", group=_mmlu_group, hub=HubRef("cais/mmlu", "all", "test", "dev")),
    "gsm8k_gen": Task("gsm8k_gen", "gen", _gsm8k_text, _gsm8k_target, target_text=_gsm8k_target, fewshot=5,
                      fewshot_split="train", sampler="random", stop=metrics.GSM8K_UNTIL, max_out_len=256,
                      metric="gsm8k", hub=HubRef("openai/gsm8k", "main", "test", "train")),
    "bbh_gen": Task("bbh_gen", "gen", _bbh_text, _bbh_target, stop=metrics.BBH_ZEROSHOT_UNTIL, max_out_len=256,
                    metric="bbh", group=_bbh_group, hub=HubRef("lukaemon/bbh", None, "test", None, BBH_CONFIGS)),
    "humaneval_gen": Task("humaneval_gen", "gen", _humaneval_text, _humaneval_target,
                          stop=("\nclass", "\ndef", "\n#", "\nif", "\nprint"), max_out_len=512, metric="humaneval",
                          needs_execution=True, hub=HubRef("openai/openai_humaneval", None, "test")),
}

from .suite import ALIASES, with_suite  # noqa: E402,F401  (the standard suite and the lm-eval names: evalcore/benchmarks/suite.py)

BUILTIN = with_suite(BUILTIN)
