"""The standard suite: the zero-/few-shot benchmarks model cards report, each one entry, defined
as lm-evaluation-harness 0.4.13 defines it (prompt, choices, gold, few-shot, generation settings,
metrics; the task YAML named in `LMEVAL_TASK`) and reading the hub dataset lm-eval reads. Each is
registered under its OpenCompass-style name and its lm-eval name (`ALIASES`: `hellaswag` is
`hellaswag_ppl`). `winograd_ppl` is OpenCompass's WSC273 task with OpenCompass's prompt.

docs/plan.md lists every name with its repo, config, split, mode, metric and lm-eval task."""

from __future__ import annotations

import functools
import json
import re
from dataclasses import replace
from pathlib import Path

from evalcore.scoring import metrics

from .definition import SUBSET_FIELD, HubRef, Row, Task

# -- HellaSwag (lm_eval/tasks/hellaswag: process_docs of utils.py) -----------------------------


def _hellaswag_clean(text: str) -> str:
    """lm-eval's `preprocess`: strip, WikiHow's " [title]" becomes ". ", other [..] go, double spaces go."""
    text = text.strip().replace(" [title]", ". ")
    text = re.sub("\\[.*?\\]", "", text)
    return text.replace("  ", " ")


def _hellaswag_docs(rows: list[Row]) -> list[Row]:
    out = []
    for d in rows:
        ctx = d["ctx_a"] + " " + d["ctx_b"].capitalize()
        out.append({**d, "query": _hellaswag_clean(d["activity_label"] + ": " + ctx),
                    "choices": [_hellaswag_clean(e) for e in d["endings"]], "gold": int(d["label"])})
    return out


def _hellaswag_text(d: Row) -> str:
    return d["query"]


def _hellaswag_choices(d: Row) -> list[str]:
    return list(d["choices"])


def _hellaswag_target(d: Row) -> int:
    # doc_to_target "{{label}}": a digit string rendered, read as the index
    return int(str(d["label"]))


# -- WinoGrande (lm_eval/tasks/winogrande: partial scoring, one context per option) ------------


def _wino_gold(d: Row) -> int:
    answers = {"1": 0, "2": 1}
    if d["answer"] not in answers:
        from .rows import RowError

        raise RowError("gold", f"answer {d['answer']!r} is neither '1' nor '2'")
    return answers[d["answer"]]


def _wino_contexts(d: Row) -> list[str]:
    idx = d["sentence"].index("_")
    return [d["sentence"][:idx] + d["option1"], d["sentence"][:idx] + d["option2"]]


def _wino_continuation(d: Row) -> str:
    return d["sentence"][d["sentence"].index("_") + 1:].strip()


# -- BoolQ (super_glue/boolq/default.yaml) ------------------------------------------------------


def _boolq_text(d: Row) -> str:
    return f"{d['passage']}\nQuestion: {d['question']}?\nAnswer:"


def _boolq_choices(d: Row) -> list[str]:
    return ["no", "yes"]


def _boolq_target(d: Row) -> int:
    label = d["label"]
    if isinstance(label, bool) or label not in (0, 1):
        from .rows import RowError

        raise RowError("gold", f"label {label!r} is not 0 (no) or 1 (yes)")
    return label


# -- CommonsenseQA (commonsense_qa/default.yaml) ------------------------------------------------


def _csqa_text(d: Row) -> str:
    t = d["choices"]["text"]
    return (f"Question: {d['question'].strip()}\nA. {t[0]}\nB. {t[1]}\nC. {t[2]}\nD. {t[3]}\nE. {t[4]}\nAnswer:")


def _csqa_choices(d: Row) -> list[str]:
    return ["A", "B", "C", "D", "E"]


def _csqa_target(d: Row) -> str:
    return d["answerKey"]  # a letter: the text of a choice


# -- OpenBookQA (openbookqa/openbookqa.yaml) ----------------------------------------------------


def _obqa_text(d: Row) -> str:
    return d["question_stem"]


def _obqa_choices(d: Row) -> list[str]:
    return list(d["choices"]["text"])


def _obqa_target(d: Row) -> int:
    return list(d["choices"]["label"]).index(d["answerKey"].lstrip())


# -- TruthfulQA (truthfulqa/truthfulqa_mc1.yaml, truthfulqa_mc2.yaml) ---------------------------

TRUTHFULQA_PRIMER = (
    "Q: What is human life expectancy in the United States?\n"
    "A: Human life expectancy in the United States is 78 years.\n\n"
    "Q: Who was president of the United States in 1955?\n"
    "A: Dwight D. Eisenhower was president of the United States in 1955.\n\n"
    "Q: Which party did he belong to?\n"
    "A: He belonged to the Republican Party.\n\n"
    "Q: What is the square root of banana?\n"
    "A: I have no comment.\n\n"
    "Q: How does a telescope work?\n"
    "A: Telescopes use lenses or mirrors to focus light and make objects appear closer.\n\n"
    "Q: Where were the 1992 Olympics held?\n"
    "A: The 1992 Olympics were held in Barcelona, Spain."
)


def _tqa_text(d: Row) -> str:
    return TRUTHFULQA_PRIMER + "\n\nQ: " + d["question"] + "\nA:"


def _tqa_mc1_choices(d: Row) -> list[str]:
    return list(d["mc1_targets"]["choices"])


def _tqa_mc2_choices(d: Row) -> list[str]:
    return list(d["mc2_targets"]["choices"])


def _tqa_target(d: Row) -> int:
    return 0  # the first choice is the true one (doc_to_target: 0)


# -- LAMBADA (lambada/lambada_openai.yaml: loglikelihood of the last word) ----------------------


def _lambada_text(d: Row) -> str:
    return " ".join(d["text"].split(" ")[:-1])


def _lambada_target(d: Row) -> str:
    return " " + d["text"].split(" ")[-1]


# -- GSM8K chain of thought (gsm8k/gsm8k-cot.yaml: 8 fixed exemplars) ---------------------------


def _gsm8k_cot_text(d: Row) -> str:
    return f"Q: {d['question']}\nA:"


def _gsm8k_cot_target(d: Row) -> str:
    # "{{answer.split('####')[-1].strip() if answer is defined else target}}"
    return d["answer"].split("####")[-1].strip() if "answer" in d else d["target"]


# -- BBH, lm-eval's default `bbh` group = bbh_cot_fewshot (3 fixed CoT exemplars a task) ---------


@functools.lru_cache(maxsize=1)
def bbh_cot_prompts() -> dict[str, dict]:
    """Per BBH task: lm-eval's description and its 3 chain-of-thought exemplars (data/README.md)."""
    return json.loads((Path(__file__).parent / "data" / "bbh_cot_prompts.json").read_text(encoding="utf-8"))


def _bbh_cot_description(d: Row) -> str:
    return bbh_cot_prompts()[d[SUBSET_FIELD]]["description"]


def _bbh_cot_text(d: Row) -> str:
    return f"Q: {d['input']}\nA: Let's think step by step.\n"


def _bbh_cot_target(d: Row) -> str:
    return d["target"]


def _subset(d: Row) -> str:
    return d[SUBSET_FIELD]


def _bbh_shots() -> tuple:
    return tuple({**s, SUBSET_FIELD: cfg} for cfg, p in bbh_cot_prompts().items() for s in p["samples"])


# -- MBPP (mbpp/mbpp.yaml: 3 fixed exemplars, the code closed by [DONE]) --------------------------


def _mbpp_text(d: Row) -> str:
    t = d["test_list"]
    return (f"You are an expert Python programmer, and here is your task: {d['text']} "
            f"Your code should pass these tests:\n\n{t[0]}\n{t[1]}\n{t[2]}\n[BEGIN]\n")


def _mbpp_target(d: Row) -> str:
    t = d["test_list"]
    return f"{t[0]}\n{t[1]}\n{t[2]}"  # the tests the generated code is run against


def _mbpp_shot_answer(d: Row) -> str:
    return d["code"] + "\n[DONE]"


MBPP_SHOTS: tuple[dict, ...] = (  # lm_eval/tasks/mbpp/utils.py list_fewshot_samples: MBPP rows 2, 3, 4
    {"task_id": 2, "text": "Write a function to find the similar elements from the given two tuple lists.",
     "code": "def similar_elements(test_tup1, test_tup2):\r\n  res = tuple(set(test_tup1) & set(test_tup2))\r\n  return (res) ",
     "test_list": ["assert similar_elements((3, 4, 5, 6),(5, 7, 4, 10)) == (4, 5)",
                   "assert similar_elements((1, 2, 3, 4),(5, 4, 3, 7)) == (3, 4)",
                   "assert similar_elements((11, 12, 14, 13),(17, 15, 14, 13)) == (13, 14)"]},
    {"task_id": 3, "text": "Write a python function to identify non-prime numbers.",
     "code": "import math\r\ndef is_not_prime(n):\r\n    result = False\r\n    for i in range(2,int(math.sqrt(n)) + 1):\r\n"
             "        if n % i == 0:\r\n            result = True\r\n    return result",
     "test_list": ["assert is_not_prime(2) == False", "assert is_not_prime(10) == True",
                   "assert is_not_prime(35) == True"]},
    {"task_id": 4, "text": "Write a function to find the largest integers from a given list of numbers using heap queue algorithm.",
     "code": "import heapq as hq\r\ndef heap_queue_largest(nums,n):\r\n  largest_nums = hq.nlargest(n, nums)\r\n  return largest_nums",
     "test_list": ["assert heap_queue_largest( [25, 35, 22, 85, 14, 65, 75, 22, 58],3)==[85, 75, 65] ",
                   "assert heap_queue_largest( [25, 35, 22, 85, 14, 65, 75, 22, 58],2)==[85, 75] ",
                   "assert heap_queue_largest( [25, 35, 22, 85, 14, 65, 75, 22, 58],5)==[85, 75, 65, 58, 35]"]},
)

GSM8K_COT_SHOTS: tuple[dict, ...] = tuple({"question": q, "target": a} for q, a in (  # gsm8k-cot.yaml samples
    ("There are 15 trees in the grove. Grove workers will plant trees in the grove today. After they are done, there "
     "will be 21 trees. How many trees did the grove workers plant today?",
     "There are 15 trees originally. Then there were 21 trees after some more were planted. So there must have been "
     "21 - 15 = 6. The answer is 6."),
    ("If there are 3 cars in the parking lot and 2 more cars arrive, how many cars are in the parking lot?",
     "There are originally 3 cars. 2 more cars arrive. 3 + 2 = 5. The answer is 5."),
    ("Leah had 32 chocolates and her sister had 42. If they ate 35, how many pieces do they have left in total?",
     "Originally, Leah had 32 chocolates. Her sister had 42. So in total they had 32 + 42 = 74. After eating 35, they "
     "had 74 - 35 = 39. The answer is 39."),
    ("Jason had 20 lollipops. He gave Denny some lollipops. Now Jason has 12 lollipops. How many lollipops did Jason "
     "give to Denny?",
     "Jason started with 20 lollipops. Then he had 12 after giving some to Denny. So he gave Denny 20 - 12 = 8. The "
     "answer is 8."),
    ("Shawn has five toys. For Christmas, he got two toys each from his mom and dad. How many toys does he have now?",
     "Shawn started with 5 toys. If he got 2 toys each from his mom and dad, then that is 4 more toys. 5 + 4 = 9. The "
     "answer is 9."),
    ("There were nine computers in the server room. Five more computers were installed each day, from monday to "
     "thursday. How many computers are now in the server room?",
     "There were originally 9 computers. For each of 4 days, 5 more computers were added. So 5 * 4 = 20 computers "
     "were added. 9 + 20 is 29. The answer is 29."),
    ("Michael had 58 golf balls. On tuesday, he lost 23 golf balls. On wednesday, he lost 2 more. How many golf balls "
     "did he have at the end of wednesday?",
     "Michael started with 58 golf balls. After losing 23 on tuesday, he had 58 - 23 = 35. After losing 2 more, he "
     "had 35 - 2 = 33 golf balls. The answer is 33."),
    ("Olivia has $23. She bought five bagels for $3 each. How much money does she have left?",
     "Olivia had 23 dollars. 5 bagels for 3 dollars each will be 5 x 3 = 15 dollars. So she has 23 - 15 dollars left. "
     "23 - 15 is 8. The answer is 8."),
))


# -- winograd_ppl (OpenCompass configs/datasets/winograd/winograd_ppl_b6c7ed.py, on WSC273) -----


def _winograd_text(d: Row) -> str:
    return ""  # OpenCompass's PPL scores each whole filled-in prompt


def _winograd_choices(d: Row) -> list[str]:
    return [f"{d['text']} Q: In the previous text, what does '{d['pronoun']}' refer to? A: {opt}"
            for opt in d["options"]]


def _winograd_target(d: Row) -> int:
    return int(d["label"])


# -- the entries -------------------------------------------------------------------------------

_TQA = HubRef("truthfulqa/truthful_qa", "multiple_choice", "validation")


def suite(base: dict[str, Task]) -> dict[str, Task]:
    """The new entries; `base` holds the built-ins they build on (BBH's 27 task configs, the same in
    lukaemon/bbh and SaylorTwift/bbh; humaneval's lm-eval form)."""
    mc = dict(mode="ll", sampler="random")  # lm-eval's default sampler for a training-split pool
    entries = [
        Task("hellaswag_ppl", text=_hellaswag_text, target=_hellaswag_target, choices=_hellaswag_choices,
             process_docs=_hellaswag_docs, hub=HubRef("Rowan/hellaswag", None, "validation", "train"), **mc),
        Task("winogrande_ppl", text=_wino_gold, target=_wino_continuation, choices=_wino_contexts,
             multiple_input=True, metric="acc_only",
             hub=HubRef("allenai/winogrande", "winogrande_xl", "validation", "train"), **mc),
        Task("boolq_ppl", text=_boolq_text, target=_boolq_target, choices=_boolq_choices, metric="acc_only",
             hub=HubRef("aps/super_glue", "boolq", "validation", "train"), **mc),
        Task("commonsenseqa_ppl", text=_csqa_text, target=_csqa_target, choices=_csqa_choices, metric="acc_only",
             hub=HubRef("tau/commonsense_qa", None, "validation", "train"), **mc),
        Task("openbookqa_ppl", text=_obqa_text, target=_obqa_target, choices=_obqa_choices,
             hub=HubRef("allenai/openbookqa", "main", "test", "train"), **mc),
        Task("truthfulqa_mc1", mode="ll", text=_tqa_text, target=_tqa_target, choices=_tqa_mc1_choices,
             metric="acc_only", hub=_TQA),
        Task("truthfulqa_mc2", mode="ll", text=_tqa_text, target=_tqa_target, choices=_tqa_mc2_choices,
             metric="mc2", hub=_TQA),
        Task("lambada_openai", mode="loglik", text=_lambada_text, target=_lambada_target, metric="lambada",
             hub=HubRef("EleutherAI/lambada_openai", "default", "test")),
        Task("gsm8k_cot", mode="gen", text=_gsm8k_cot_text, target=_gsm8k_cot_target, fewshot=8,
             fewshot_samples=GSM8K_COT_SHOTS, stop=("Q:", "</s>", "<|im_end|>"), max_out_len=256,
             metric="gsm8k_cot", hub=HubRef("openai/gsm8k", "main", "test")),
        Task("bbh", mode="gen", text=_bbh_cot_text, target=_bbh_cot_target, description=_bbh_cot_description,
             target_delimiter="", fewshot=3, fewshot_samples=_LazyShots(), stop=metrics.BBH_FEWSHOT_UNTIL,
             max_out_len=1024, metric="bbh_cot", group=_subset,
             hub=HubRef("SaylorTwift/bbh", None, "test", None, base["bbh_gen"].hub.configs)),
        Task("mbpp", mode="gen", text=_mbpp_text, target=_mbpp_target, target_text=_mbpp_shot_answer,
             target_delimiter="", fewshot=3, fewshot_samples=MBPP_SHOTS, stop=("[DONE]",), max_out_len=256,
             metric="mbpp", needs_execution=True, hub=HubRef("google-research-datasets/mbpp", "full", "test")),
        Task("winograd_ppl", mode="ll", text=_winograd_text, target=_winograd_target, choices=_winograd_choices,
             target_delimiter="", metric="ppl", hub=HubRef("lighteval/winograd_wsc", "wsc273", "test")),
    ]
    out = {t.name: t for t in entries}
    if "humaneval_gen" in base:  # lm-eval's humaneval: up to 1024 new tokens (OpenCompass's: 512)
        out["humaneval"] = replace(base["humaneval_gen"], name="humaneval", max_out_len=1024)
    return out


class _LazyShots(tuple):
    """BBH's exemplars as a tuple that reads its data file on first use, not at import."""

    def __new__(cls):
        return super().__new__(cls, ())

    def _all(self) -> tuple:
        return _bbh_shots()

    def __bool__(self) -> bool:
        return True

    def __iter__(self):
        return iter(self._all())

    def __len__(self) -> int:
        return len(self._all())

    def __getitem__(self, i):
        return self._all()[i]

    def __repr__(self) -> str:  # what the task's version hashes: the exemplars themselves
        return repr(self._all())


# lm-eval's names (and other common spellings) for the same entries.
ALIASES: dict[str, str] = {
    "hellaswag": "hellaswag_ppl",
    "winogrande": "winogrande_ppl",
    "boolq": "boolq_ppl",
    "commonsense_qa": "commonsenseqa_ppl",
    "openbookqa": "openbookqa_ppl",
    "piqa": "piqa_ppl",
    "siqa": "siqa_ppl",
    "social_iqa": "siqa_ppl",
    "arc_easy": "arc_easy_ppl",
    "arc_challenge": "arc_challenge_ppl",
    "mmlu": "mmlu_ppl",
    "gsm8k": "gsm8k_gen",
    "bbh_cot_fewshot": "bbh",
}

# The lm-eval 0.4.13 task (or group) each name equals.
LMEVAL_TASK: dict[str, str] = {
    "hellaswag_ppl": "hellaswag", "winogrande_ppl": "winogrande", "boolq_ppl": "boolq",
    "commonsenseqa_ppl": "commonsense_qa", "openbookqa_ppl": "openbookqa", "truthfulqa_mc1": "truthfulqa_mc1",
    "truthfulqa_mc2": "truthfulqa_mc2", "lambada_openai": "lambada_openai", "piqa_ppl": "piqa",
    "siqa_ppl": "social_iqa", "arc_easy_ppl": "arc_easy", "arc_challenge_ppl": "arc_challenge", "mmlu_ppl": "mmlu",
    "gsm8k_gen": "gsm8k", "gsm8k_cot": "gsm8k_cot", "bbh": "bbh (= bbh_cot_fewshot)", "humaneval": "humaneval",
    "mbpp": "mbpp",
}


def with_suite(base: dict[str, Task]) -> dict[str, Task]:
    """`base` plus the suite's entries and every alias (an alias is the same Task object)."""
    out = {**base, **suite(base)}
    for alias, name in ALIASES.items():
        if name in out:
            out[alias] = out[name]
    return out
