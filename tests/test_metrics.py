"""evalcore.scoring.metrics against hand-computed values of lm-evaluation-harness 0.4.13's rules."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from evalcore.scoring import metrics as m

GSM8K_TRAIN = Path(__file__).resolve().parent.parent / "scripts/crosscheck_tasks/data/gsm8k/train.jsonl.gz"


# --- multiple choice ------------------------------------------------------------------------


def test_acc_and_acc_norm_disagree() -> None:
    # acc: -4 > -6 -> 0.  acc_norm: -4/2 = -2.0 < -6/6 = -1.0 -> 1.
    assert m.choose([-4.0, -6.0], ["ab", "abcdef"]) == (0, 1)
    assert m.mc_scores([-4.0, -6.0], ["ab", "abcdef"], gold=1) == {"acc": 0.0, "acc_norm": 1.0}
    assert m.mc_scores([-4.0, -6.0], ["ab", "abcdef"], gold=0) == {"acc": 1.0, "acc_norm": 0.0}


def test_ties_go_to_the_first_index() -> None:
    assert m.choose([-1.0, -1.0, -3.0], ["a", "b", "c"]) == (0, 0)
    assert m.choose([-3.0, -1.0, -1.0], ["a", "b", "c"]) == (1, 1)
    # acc picks 1; the normalised values tie (-4/2 == -2/1), so acc_norm picks 0.
    assert m.choose([-4.0, -2.0], ["ab", "a"]) == (1, 0)


def test_norm_length_is_the_choice_without_the_target_delimiter() -> None:
    # Choice lengths 2 and 4: -3/2 = -1.5 < -5/4 = -1.25 -> 1. Counting lm-eval's " "
    # delimiter would tie them (-3/3 == -5/5) and give 0.
    assert m.choose([-3.0, -5.0], ["ab", "abcd"]) == (0, 1)


def test_norm_length_counts_characters_not_bytes() -> None:
    # "é" is 1 character (2 UTF-8 bytes): -1/1 = -1.0 < -1.5/2 = -0.75 -> 1 (bytes would give 0).
    assert m.choose([-1.0, -1.5], ["é", "ab"]) == (0, 1)


def test_numpy_edge_cases() -> None:
    nan = float("nan")
    assert m.choose([-1.0, nan, 0.0], ["a", "b", "c"]) == (1, 1)  # numpy: a NaN is the max
    # An empty choice divides by zero: -2/0 = -inf loses, 0/0 = NaN wins.
    assert m.choose([-2.0, -3.0], ["", "abc"]) == (0, 1)
    assert m.choose([-3.0, 0.0], ["abc", ""]) == (1, 1)


def test_mc_gold_forms() -> None:
    lls, choices = [-1.0, -2.0, -3.0], ["yes", "no", "maybe"]
    assert m.mc_scores(lls, choices, gold="yes")["acc"] == 1.0
    assert m.mc_scores(lls, choices, gold="nope")["acc"] == 0.0  # not a choice: never right
    assert m.mc_scores(lls, choices, gold=[1, 0])["acc"] == 1.0  # any of several golds
    assert m.mc_scores(lls, choices, gold=7) == {"acc": 0.0, "acc_norm": 0.0}


def test_mc_rejects_bad_input() -> None:
    with pytest.raises(ValueError):
        m.choose([-1.0], ["a", "b"])
    with pytest.raises(ValueError):
        m.choose([], [])


# --- aggregation ----------------------------------------------------------------------------


def test_mean_and_stderr_by_hand() -> None:
    xs = [1.0, 0.0, 1.0, 1.0]
    assert m.mean(xs) == 0.75
    # sample variance = (3 * 0.25**2 + 0.75**2) / 3 = 0.25 -> sd 0.5 -> se 0.5 / sqrt(4)
    assert m.sample_stddev(xs) == pytest.approx(0.5)
    assert m.mean_stderr(xs) == pytest.approx(0.25)
    assert m.mean_stderr([1.0, 0.0]) == pytest.approx(math.sqrt(0.5) / math.sqrt(2))


def test_stderr_is_na_for_one_value() -> None:
    assert m.mean_stderr([1.0]) is None
    with pytest.raises(ValueError):
        m.mean([])


def test_group_scores_micro_and_macro() -> None:
    g = m.group_scores({"algebra": [1.0, 1.0, 1.0, 0.0], "biology": [0.0, 1.0]})
    assert [(s.name, s.size, s.mean) for s in g.subjects] == [("algebra", 4, 0.75), ("biology", 2, 0.5)]
    assert g.subjects[0].stderr == pytest.approx(0.25)
    assert g.subjects[1].stderr == pytest.approx(0.5)  # sd sqrt(0.5), / sqrt(2)
    assert g.size == 6
    assert g.micro == pytest.approx(4 / 6)  # 4 right of 6 questions: what lm-eval's mmlu reports
    assert g.macro == pytest.approx(0.625)  # (0.75 + 0.5) / 2
    # pooled: ((4-1)*0.25**2*4 + (2-1)*0.5**2*2) / (6-2) = 0.3125; sqrt(0.3125 / 6)
    assert g.micro_stderr == pytest.approx(math.sqrt(0.3125 / 6))
    # unweighted: sqrt(0.25**2 + 0.5**2) / 2
    assert g.macro_stderr == pytest.approx(math.sqrt(0.3125) / 2)


def test_group_stderr_na_when_a_subject_has_one_question() -> None:
    g = m.group_scores({"a": [1.0, 0.0], "b": [1.0]})
    assert g.micro == pytest.approx(2 / 3) and g.macro == pytest.approx(0.75)
    assert g.micro_stderr is None and g.macro_stderr is None


def test_aggregate_subtask_metrics() -> None:
    assert m.aggregate_subtask_metrics([1.0, 0.0], [3, 1]) == 0.75
    assert m.aggregate_subtask_metrics([1.0, 0.0], [3, 1], weight_by_size=False) == 0.5


# --- exact match ----------------------------------------------------------------------------


def test_exact_match_options() -> None:
    assert m.exact_match("Hello", "hello") == 0.0
    assert m.exact_match("Hello", "hello", ignore_case=True) == 1.0
    assert m.exact_match(" 42", "42") == 0.0  # no whitespace stripping
    assert m.exact_match("hello, world!", "hello world", ignore_punctuation=True) == 1.0
    assert m.exact_match("abc123", "abc", ignore_numbers=True) == 1.0
    assert m.exact_match("The answer: 42", "42", regexes_to_ignore=["The answer: "]) == 1.0
    # regexes run before lower-casing: "THE ANSWER: " is not removed
    assert m.exact_match("THE ANSWER: 42", "42", regexes_to_ignore=["The answer: "], ignore_case=True) == 0.0


def test_exact_match_numpy_string_quirks() -> None:
    assert m.exact_match("a\x00", "a") == 1.0  # numpy drops trailing NULs
    # np.char.lower keeps the array width: "İ".lower() is 2 characters, cut back to "i".
    assert m.exact_match("İ", "i", ignore_case=True) == 1.0
    assert m.exact_match_hf_evaluate(["a", "b"], ["a", "c"]) == 0.5


# --- filters --------------------------------------------------------------------------------


def test_truncate_at_stop_and_regex_filter() -> None:
    assert m.truncate_at_stop("(A)\n\nQ: next", m.BBH_FEWSHOT_UNTIL) == "(A)"
    assert m.truncate_at_stop("abc", ["", "z"]) == "abc"
    assert m.regex_filter("no numbers", m.GSM8K_STRICT_REGEX) == "[invalid]"
    assert m.regex_filter(None, m.GSM8K_STRICT_REGEX) == "[invalid]"  # non-str -> ""
    assert m.regex_filter("a 1 b 22 c 333", r"(\d+)", group_select=-1) == "333"


# --- GSM8K ----------------------------------------------------------------------------------

GOLD_72 = ("Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n"
           "Natalia sold 48+24 = <<48+24=72>>72 clips altogether in April and May.\n#### 72")


def scores(generated: str, gold: str = GOLD_72, **kw) -> tuple[float, float]:
    s = m.gsm8k_scores(generated, gold, **kw)
    assert set(s) == {"exact_match,strict-match", "exact_match,flexible-extract"}
    return s["exact_match,strict-match"], s["exact_match,flexible-extract"]


def test_gsm8k_gold_is_the_answer_after_the_marker() -> None:
    assert scores("#### 72", GOLD_72) == (1.0, 1.0)
    assert scores("#### 1000", "so $1,000 in all.\n#### 1,000") == (1.0, 1.0)
    assert scores("#### -3", "#### -3") == (1.0, 1.0)


def test_gsm8k_both_filters_match() -> None:
    assert scores("She sold 24 in May, 72 in all.\n#### 72") == (1.0, 1.0)


def test_gsm8k_commas_dollars_and_trailing_period() -> None:
    gold = "...\n#### 1234"
    assert scores("#### 1,234", gold) == (1.0, 1.0)
    assert scores("#### 1,234.", gold) == (1.0, 1.0)  # strict captures "1,234." -> "1234"
    assert scores("It costs $1,234.", gold) == (0.0, 1.0)  # flexible: "$1,234." -> "1234"
    assert scores("It costs 1234 dollars", gold) == (0.0, 1.0)
    assert scores("It costs 1234.0 dollars", gold) == (0.0, 0.0)  # no numeric equivalence


def test_gsm8k_multiple_numbers() -> None:
    # flexible-extract takes the LAST number; strict-match the FIRST "#### ".
    assert scores("48/2 = 24, and 48 + 24 = 72. Check: 72 - 24 = 48") == (0.0, 0.0)
    assert scores("48/2 = 24, and 48 + 24 = 72") == (0.0, 1.0)
    assert scores("#### 72\n#### 73") == (1.0, 0.0)


def test_gsm8k_empty_and_garbage() -> None:
    assert scores("") == (0.0, 0.0)
    assert scores("I do not know.") == (0.0, 0.0)
    assert scores("....") == (0.0, 0.0)  # flexible matches "....", which stays "..."
    assert scores("####") == (0.0, 0.0)


def test_gsm8k_negative_and_stop_sequences() -> None:
    assert scores("#### -3", "#### -3") == (1.0, 1.0)
    generated = "So 72 in all.\n\nQuestion: What is 5 + 5?\nAnswer: 10"
    assert scores(generated) == (0.0, 0.0)  # uncut: the last number is 10
    assert scores(generated, stop=m.GSM8K_UNTIL) == (0.0, 1.0)


def test_gsm8k_gold_on_every_train_answer() -> None:
    import gzip

    for line in gzip.open(GSM8K_TRAIN, "rt", encoding="utf-8").read().splitlines():
        answer = json.loads(line)["answer"]
        gold = answer.split("#### ")[-1].replace(",", "").strip()
        assert scores(f"#### {gold}", answer)[0] == 1.0  # the gold is the text after the last "#### "
        assert scores(answer, answer) == (1.0, 1.0)  # the reference solution scores 1 both ways


# --- BBH ------------------------------------------------------------------------------------


def test_bbh_fewshot_is_plain_exact_match() -> None:
    assert m.bbh_fewshot_score("False", "False") == 1.0
    assert m.bbh_fewshot_score(" False", "False") == 0.0  # a leading space fails
    assert m.bbh_fewshot_score("false", "False") == 0.0  # case matters
    assert m.bbh_fewshot_score("(A)\n\nQ: next question", "(A)", stop=m.BBH_FEWSHOT_UNTIL) == 1.0
    # the stop list contains a bare "Q": anything after a capital Q is cut off
    assert m.bbh_fewshot_score("(A) Quebec", "(A) Quebec", stop=m.BBH_FEWSHOT_UNTIL) == 0.0


def test_bbh_zeroshot_strict() -> None:
    assert m.bbh_zeroshot_strict_score("false.", "False") == 1.0
    assert m.bbh_zeroshot_strict_score('"(A)"', "(A)") == 1.0
    assert m.bbh_zeroshot_strict_score(" False", "False") == 0.0
