"""Scoring rules of lm-evaluation-harness 0.4.13, in pure Python (stdlib only, no numpy).

Each function names the lm-eval file its rule comes from (paths inside the `lm_eval` package
of the `lm-eval==0.4.13` wheel). Where lm-eval goes through numpy, the numpy behaviour that can
change a score is reproduced too (first-max `argmax`, NaN/0-length division, string arrays that
drop trailing NULs and clip `lower()` to the array's width), so a per-sample score here equals
lm-eval's, and an aggregate agrees to float rounding.

Sections: multiple choice (`choose`, `mc_scores`), aggregation (`mean`, `mean_stderr`,
`group_scores` for MMLU-style groups), exact match and the generation filters, GSM8K, BBH.
HumanEval and MBPP are pass@1 of one greedy generation, scored by running it
(`evalcore.scoring.sandbox`).

Over 400 lines on purpose: most of it is the lm-eval configuration each rule reproduces, quoted
in its docstring; the rules share `_normalise` and the numpy semantics, so they stay together.
"""

from __future__ import annotations

import math
import re
import string
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

# --------------------------------------------------------------------------------------------
# numpy semantics the rules depend on
# --------------------------------------------------------------------------------------------


def _argmax(values: Sequence[float]) -> int:
    """`numpy.argmax` on a 1-D float array: the first maximum; a NaN counts as the maximum
    (the first NaN wins). Raises ValueError on an empty sequence, as numpy does."""
    if len(values) == 0:
        raise ValueError("argmax of an empty sequence")
    best = 0
    for i, v in enumerate(values):
        if math.isnan(v):
            return i
        if v > values[best]:
            best = i
    return best


def _np_divide(a: float, b: float) -> float:
    """IEEE float division as numpy does it: x/0 is ±inf (by the sign of x), 0/0 is NaN."""
    if b == 0.0:
        if a == 0.0 or math.isnan(a):
            return math.nan
        return math.copysign(math.inf, a) * math.copysign(1.0, b)
    return a / b


# --------------------------------------------------------------------------------------------
# Multiple choice (lm_eval/api/task.py, ConfigurableTask.process_results, "multiple_choice")
# --------------------------------------------------------------------------------------------


def choose(logprobs: Sequence[float], choice_texts: Sequence[str]) -> tuple[int, int]:
    """The predicted choice index for `acc` and for `acc_norm`.

    Rule (lm_eval/api/task.py, `ConfigurableTask.process_results`, output_type
    "multiple_choice")::

        completion_len = np.array([float(len(i)) for i in choices])
        pred = np.argmax(lls)
        pred_norm = np.argmax(lls / completion_len)

    `logprobs[i]` is the summed log-likelihood of choice i's continuation. `choice_texts` are
    the strings `doc_to_choice` returns: the length is counted in characters (code points) of
    the choice alone, *without* the target delimiter (" ") that lm-eval prepends to the
    continuation it scores. Ties go to the lowest index (numpy's first maximum); a NaN
    log-likelihood wins outright, and an empty choice text divides by zero (-inf for a
    negative log-likelihood), both as numpy would.
    """
    if len(logprobs) != len(choice_texts):
        raise ValueError(f"{len(logprobs)} log-likelihoods for {len(choice_texts)} choices")
    lls = [float(x) for x in logprobs]
    normed = [_np_divide(ll, float(len(text))) for ll, text in zip(lls, choice_texts, strict=True)]
    return _argmax(lls), _argmax(normed)


def mc_scores(logprobs: Sequence[float], choice_texts: Sequence[str],
              gold: int | str | Sequence[int]) -> dict[str, float]:
    """`acc` and `acc_norm` of one multiple-choice question, 1.0 or 0.0.

    `gold` is what lm-eval's `doc_to_target` gives: an index, the text of the right choice, or
    a list of indices (a "multiple target" task: right if the prediction is any of them).
    An index past the last choice, or a text that is not a choice, can never be right
    (lm-eval maps it to -100 and logs a warning). Source: lm_eval/api/task.py,
    `ConfigurableTask.process_results`.
    """
    pred, pred_norm = choose(logprobs, choice_texts)
    n = len(choice_texts)
    if isinstance(gold, str):
        golds = [list(choice_texts).index(gold) if gold in choice_texts else -100]
    elif isinstance(gold, int):
        golds = [gold if gold < n else -100]
    else:
        golds = [g if g < n else -100 for g in gold]
    return {"acc": 1.0 if pred in golds else 0.0,
            "acc_norm": 1.0 if pred_norm in golds else 0.0}


# --------------------------------------------------------------------------------------------
# Aggregation (lm_eval/api/metrics.py; groups: lm_eval/api/group.py)
# --------------------------------------------------------------------------------------------


def mean(values: Sequence[float]) -> float:
    """`sum(arr) / len(arr)` (lm_eval/api/metrics.py, `mean`, the "mean" aggregation of acc,
    acc_norm and exact_match). Raises ValueError on no values."""
    if len(values) == 0:
        raise ValueError("mean of no values")
    return sum(values) / len(values)


def sample_stddev(values: Sequence[float]) -> float:
    """Sample standard deviation, divisor n-1 (lm_eval/api/metrics.py, `sample_stddev`)."""
    if len(values) < 2:
        raise ValueError("the sample standard deviation needs at least two values")
    mu = mean(values)
    return math.sqrt(sum([(x - mu) ** 2 for x in values]) / (len(values) - 1))


def mean_stderr(values: Sequence[float]) -> float | None:
    """The standard error lm-eval reports next to a mean: `sample_stddev / sqrt(n)`
    (lm_eval/api/metrics.py, `mean_stderr`, chosen by `stderr_for_metric` for `mean`).

    None where lm-eval prints "N/A": one value or none (lm_eval/evaluator_utils.py computes a
    stderr only `if len(items) > 1`).
    """
    if len(values) < 2:
        return None
    return sample_stddev(values) / math.sqrt(len(values))


def aggregate_subtask_metrics(metrics: Sequence[float], sizes: Sequence[int],
                              weight_by_size: bool = True) -> float:
    """A group's score from its subtasks' scores (lm_eval/api/metrics.py,
    `aggregate_subtask_metrics`): weighted by subtask size (micro average) or plain (macro)."""
    if len(metrics) != len(sizes) or not metrics:
        raise ValueError("need one size per subtask metric, and at least one subtask")
    weights = list(sizes) if weight_by_size else [1] * len(sizes)
    return sum([m * w for m, w in zip(metrics, weights, strict=True)]) / sum(weights)


def pooled_sample_stderr(stderrs: Sequence[float], sizes: Sequence[int]) -> float:
    """The group stderr for `weight_by_size: true` (lm_eval/api/metrics.py,
    `pooled_sample_stderr`, the pooled variance of the subtasks)."""
    if len(stderrs) != len(sizes):
        raise ValueError("need one size per subtask stderr")
    pooled_var = sum([(n - 1) * se**2 * n for n, se in zip(sizes, stderrs, strict=True)]) / (sum(sizes) - len(sizes))
    return math.sqrt(pooled_var / sum(sizes))


def unweighted_mean_stderr(stderrs: Sequence[float]) -> float:
    """The group stderr for `weight_by_size: false`: sqrt(sum se_i^2) / k
    (lm_eval/api/metrics.py, `unweighted_mean_stderr`)."""
    if not stderrs:
        raise ValueError("no subtask stderrs")
    return math.sqrt(sum(se**2 for se in stderrs)) / len(stderrs)


@dataclass(frozen=True)
class SubjectScore:
    """One subtask (an MMLU subject): its size, mean score and lm-eval stderr (None = N/A)."""

    name: str
    size: int
    mean: float
    stderr: float | None


@dataclass(frozen=True)
class GroupScores:
    """A group of subtasks scored both ways.

    `micro` weights each subject by its number of questions (the fraction right over all
    questions); `macro` is the plain mean of the subject scores. lm-eval 0.4.13's `mmlu` group
    reports **micro** (lm_eval/tasks/mmlu/default/_mmlu.yaml: `aggregate_metric_list: -
    metric: acc, weight_by_size: True`; lm_eval/api/group.py `Group.aggregate` weighs over all
    leaf subjects, recursively, so the `mmlu_stem`/... layer does not change it).
    """

    subjects: tuple[SubjectScore, ...]
    size: int
    micro: float
    micro_stderr: float | None
    macro: float
    macro_stderr: float | None


def group_scores(per_subject: Mapping[str, Sequence[float]]) -> GroupScores:
    """Per-subject means plus micro and macro averages with lm-eval's group stderrs.

    `per_subject` maps a subject name to its per-question scores (acc: 1.0/0.0), in the order
    the subjects should be listed. Computed as lm_eval/api/group.py `Group.aggregate` does:
    subject means via `mean`, then `aggregate_subtask_metrics(means, sizes, weight_by_size)`;
    stderr `pooled_sample_stderr` (micro) or `unweighted_mean_stderr` (macro), None ("N/A")
    when any subject has fewer than two questions.
    """
    if not per_subject:
        raise ValueError("no subjects")
    subjects = tuple(SubjectScore(name, len(scores), mean(scores), mean_stderr(scores))
                     for name, scores in per_subject.items())
    means = [s.mean for s in subjects]
    sizes = [s.size for s in subjects]
    stderrs = [s.stderr for s in subjects]
    known = None not in stderrs
    return GroupScores(
        subjects=subjects,
        size=sum(sizes),
        micro=aggregate_subtask_metrics(means, sizes, weight_by_size=True),
        micro_stderr=pooled_sample_stderr(stderrs, sizes) if known else None,  # type: ignore[arg-type]
        macro=aggregate_subtask_metrics(means, sizes, weight_by_size=False),
        macro_stderr=unweighted_mean_stderr(stderrs) if known else None,  # type: ignore[arg-type]
    )


# --------------------------------------------------------------------------------------------
# Exact match (lm_eval/api/metrics.py, exact_match_hf_evaluate)
# --------------------------------------------------------------------------------------------


def _as_np_strings(values: Iterable[str]) -> tuple[list[str], int]:
    """What `np.asarray(list_of_str)` holds: each string without trailing NULs, and the
    array's width (the longest input, NULs included)."""
    raw = list(values)
    width = max((len(v) for v in raw), default=0)
    return [v.rstrip("\x00") for v in raw], width


def _normalise(values: Sequence[str], regexes_to_ignore: Sequence[str] | None, ignore_case: bool,
               ignore_punctuation: bool, ignore_numbers: bool) -> list[str]:
    """One side (predictions or references) of `exact_match_hf_evaluate`, step by step."""
    if regexes_to_ignore:
        current: Sequence[str] = values
        width = 0
        for pattern in regexes_to_ignore:
            current, width = _as_np_strings(re.sub(pattern, "", x) for x in current)
        out = list(current)
    else:
        out, width = _as_np_strings(values)
    if ignore_case:
        # np.char.lower keeps the array's dtype, so a lower-case form longer than the array's
        # width ("İ" -> "i̇") is cut to that width.
        out = [v.lower()[:width].rstrip("\x00") for v in out]
    if ignore_punctuation:
        table = str.maketrans("", "", string.punctuation)
        out = [v.translate(table).rstrip("\x00") for v in out]
    if ignore_numbers:
        table = str.maketrans("", "", string.digits)
        out = [v.translate(table).rstrip("\x00") for v in out]
    return out


def exact_match_hf_evaluate(predictions: Sequence[str], references: Sequence[str], *,
                            regexes_to_ignore: Sequence[str] | None = None,
                            ignore_case: bool = False, ignore_punctuation: bool = False,
                            ignore_numbers: bool = False) -> float:
    """The fraction of predictions equal to their reference after lm-eval's normalisation
    (lm_eval/api/metrics.py, `exact_match_hf_evaluate`, registered as `exact_match`).

    Order: each regex in `regexes_to_ignore` is deleted (`re.sub(p, "", x)`) from both sides,
    in turn; then lower-casing; then deletion of `string.punctuation`; then of digits. No
    whitespace is stripped. Comparison is exact, except that trailing NUL characters do not
    count (numpy string arrays drop them).
    """
    if len(predictions) != len(references):
        raise ValueError("predictions and references differ in length")
    if not predictions:
        raise ValueError("no predictions")
    if regexes_to_ignore is not None and not regexes_to_ignore and not (
            ignore_case or ignore_punctuation or ignore_numbers):
        # lm-eval never turns the lists into arrays on this path: `list == list` compares
        # the whole lists, so the result is all or nothing.
        return 1.0 if list(predictions) == list(references) else 0.0
    preds = _normalise(predictions, regexes_to_ignore, ignore_case, ignore_punctuation, ignore_numbers)
    refs = _normalise(references, regexes_to_ignore, ignore_case, ignore_punctuation, ignore_numbers)
    return sum(1 for p, r in zip(preds, refs, strict=True) if p == r) / len(preds)


def exact_match(prediction: str, reference: str, *, regexes_to_ignore: Sequence[str] | None = None,
                ignore_case: bool = False, ignore_punctuation: bool = False,
                ignore_numbers: bool = False) -> float:
    """1.0 if one prediction matches its reference under lm-eval's `exact_match` options, else
    0.0 (lm-eval calls the metric with one-element lists per sample: lm_eval/api/task.py,
    `process_results`, "generate_until")."""
    return exact_match_hf_evaluate([prediction], [reference], regexes_to_ignore=regexes_to_ignore,
                                   ignore_case=ignore_case, ignore_punctuation=ignore_punctuation,
                                   ignore_numbers=ignore_numbers)


# --------------------------------------------------------------------------------------------
# Generation filters (lm_eval/filters/extraction.py, lm_eval/models/utils.py)
# --------------------------------------------------------------------------------------------

REGEX_FALLBACK = "[invalid]"


def truncate_at_stop(text: str, stop: Sequence[str]) -> str:
    """Cut a generation at its stop sequences as lm-eval's model backends do
    (lm_eval/models/utils.py, `postprocess_generated_text`: `generation.split(term)[0]` for
    each non-empty term in turn). Scoring functions here expect text already cut this way,
    unless they are given `stop`."""
    for term in stop:
        if term:
            text = text.split(term)[0]
    return text


def regex_filter(response: object, regex_pattern: str, group_select: int = 0,
                 fallback: str = REGEX_FALLBACK) -> str:
    """lm-eval's "regex" filter on one response (lm_eval/filters/extraction.py, `RegexFilter`).

    `re.findall`; take match number `group_select` (negative counts from the end); when the
    pattern has several groups, the first non-empty group of that match; strip whitespace.
    No match (or an all-empty match) gives `fallback`, "[invalid]" by default; a response that
    is not a str is treated as "". An out-of-range `group_select` raises IndexError, as in
    lm-eval.
    """
    text = response if isinstance(response, str) else ""
    found = re.findall(regex_pattern, text)
    if not found:
        return fallback
    match = found[group_select]
    if isinstance(match, tuple):
        groups = [m for m in match if m]
        match = groups[0] if groups else fallback
    return match.strip()


# --------------------------------------------------------------------------------------------
# GSM8K (lm_eval/tasks/gsm8k/gsm8k.yaml)
# --------------------------------------------------------------------------------------------

GSM8K_UNTIL: tuple[str, ...] = ("Question:", "</s>", "<|im_end|>")
GSM8K_STRICT_REGEX = r"#### (\-?[0-9\.\,]+)"
GSM8K_FLEXIBLE_REGEX = r"(-?[$0-9.,]{2,})|(-?[0-9]+)"
GSM8K_REGEXES_TO_IGNORE: tuple[str, ...] = (",", "\\$", "(?s).*#### ", "\\.$")


def _gsm8k_match(prediction: str, answer_field: str) -> float:
    return exact_match(prediction, answer_field, regexes_to_ignore=GSM8K_REGEXES_TO_IGNORE,
                       ignore_case=True, ignore_punctuation=False)


def gsm8k_scores(generated: str, gold_answer_field: str, *,
                 stop: Sequence[str] | None = None) -> dict[str, float]:
    """lm-eval's two GSM8K scores for one generation, keyed as lm-eval reports them.

    From lm_eval/tasks/gsm8k/gsm8k.yaml (task `gsm8k`, version 3.0)::

        doc_to_target: "{{answer}}" #" {{answer.split('### ')[-1].rstrip()}}"
        metric_list:
          - metric: exact_match
            aggregation: mean
            higher_is_better: true
            ignore_case: true
            ignore_punctuation: false
            regexes_to_ignore:
              - ","
              - "\\\\$"
              - "(?s).*#### "
              - "\\\\.$"
        generation_kwargs:
          until:
            - "Question:"
            - "</s>"
            - "<|im_end|>"
        filter_list:
          - name: "strict-match"
            filter:
              - function: "regex"
                regex_pattern: "#### (\\\\-?[0-9\\\\.\\\\,]+)"
              - function: "take_first"
          - name: "flexible-extract"
            filter:
              - function: "regex"
                group_select: -1
                regex_pattern: "(-?[$0-9.,]{2,})|(-?[0-9]+)"
              - function: "take_first"

    strict-match takes the first "#### <number>" in the generation; flexible-extract the
    last number-like run ("$1,234.", "-7"). Either gives "[invalid]" when nothing matches,
    which never equals a gold answer. The filtered text is then compared with the whole
    `answer` field by `exact_match` with the options above (both sides have the regexes
    deleted and are lower-cased). `generated` should already be cut at the stop sequences
    (`GSM8K_UNTIL`), as lm-eval's backends return it; pass `stop` to cut it here.
    """
    text = truncate_at_stop(generated, stop) if stop is not None else generated
    strict = regex_filter(text, GSM8K_STRICT_REGEX)
    flexible = regex_filter(text, GSM8K_FLEXIBLE_REGEX, group_select=-1)
    return {"exact_match,strict-match": _gsm8k_match(strict, gold_answer_field),
            "exact_match,flexible-extract": _gsm8k_match(flexible, gold_answer_field)}


# --------------------------------------------------------------------------------------------
# BBH: lm-eval (lm_eval/tasks/bbh/)
# --------------------------------------------------------------------------------------------

BBH_FEWSHOT_UNTIL: tuple[str, ...] = ("</s>", "Q", "\n\n")
BBH_ZEROSHOT_UNTIL: tuple[str, ...] = ("</s>", "Q:", "<|im_end|>")
BBH_ZEROSHOT_REGEXES_TO_IGNORE: tuple[str, ...] = ("\\.$", ",", "\n", "\\\\", '"')


def bbh_fewshot_score(generated: str, target: str, *, stop: Sequence[str] | None = None) -> float:
    """lm-eval's `bbh_fewshot_<task>` score for one generation: plain exact match.

    lm_eval/tasks/bbh/fewshot/_fewshot_template_yaml (version 2.0; group `bbh_fewshot` in
    _bbh_fewshot.yaml, exact_match averaged with weight_by_size: true)::

        doc_to_target: "{{target}}"
        metric_list:
          - metric: exact_match
            aggregation: mean
            higher_is_better: true
            # ignore_case: true
            # ignore_punctuation: true
        generation_kwargs:
          until:
            - "</s>"
            - "Q"
            - "\\n\\n"

    There is no `filter_list`, so the filter is lm-eval's default "none" = `take_first`
    (lm_eval/api/task.py): no regex, no stripping. The generation is cut at the first "</s>",
    capital "Q" or blank line by the model backend, then compared case-sensitively with the
    target: " False" (leading space, as a model continuing "A:" usually writes) does NOT
    match "False", and "(A)" must be exactly "(A)". Pass `stop=BBH_FEWSHOT_UNTIL` to cut here.
    """
    text = truncate_at_stop(generated, stop) if stop is not None else generated
    return exact_match(text, target)


def bbh_zeroshot_strict_score(generated: str, target: str, *,
                              stop: Sequence[str] | None = None) -> float:
    """lm-eval's `bbh_zeroshot_<task>` "strict-match" score (take_first, then exact match).

    lm_eval/tasks/bbh/zeroshot/_zeroshot_template_yaml (version 3.0): `exact_match` with
    `ignore_case: true` and `regexes_to_ignore: ["\\\\.$", ",", "\\n", "\\\\\\\\", '"']` (one
    trailing period, commas, newlines, backslashes, double quotes); until "</s>", "Q:",
    "<|im_end|>". The per-task "flexible-extract" filters (lm_eval/tasks/bbh/zeroshot/utils.py)
    are not reproduced here.
    """
    text = truncate_at_stop(generated, stop) if stop is not None else generated
    return exact_match(text, target, regexes_to_ignore=BBH_ZEROSHOT_REGEXES_TO_IGNORE,
                       ignore_case=True)
