"""The one engine that turns a row into what is scored, for every benchmark (built-in, plan
dataset, lm-eval task file): lm-eval 0.4.13's `fewshot_context` + `construct_requests`
(lm_eval/api/task.py: description, few-shot turns `question + target_delimiter + answer +
fewshot_delimiter`, then the question; the multiple-input form puts each choice in the context
and scores one shared continuation). The worker and the dry pass before a run both call
`requests_for`, so a row that would fail in a worker fails before any model loads. Pure."""

from __future__ import annotations

import functools
import random

from .definition import Row, Task
from .rows import Requests, RowError


def _call(fn, row: Row, what: str):
    try:
        return fn(row)
    except RowError:
        raise
    except KeyError as exc:
        raise RowError(what, f"names a missing field: {exc}") from None
    except Exception as exc:  # a user's function or a row of the wrong shape
        raise RowError(what, f"{type(exc).__name__}: {exc}") from None


def _multiple(task: Task, q) -> bool:
    """lm-eval's multiple-input form: the "question" is the gold index and the choices are the
    contexts (lm-eval decides it on the first document; here on each, which agrees on any
    consistent definition)."""
    return task.multiple_input or (isinstance(q, int) and not isinstance(q, bool) and task.choices is not None
                                   and task.mode == "ll")


def _text(task: Task, row: Row) -> str | int:
    value = _call(task.text, row, "template")
    if _multiple(task, value):
        if isinstance(value, bool) or not isinstance(value, int):
            raise RowError("template", f"the multiple-input form needs the gold index from the template, got {value!r}")
        return value
    if not isinstance(value, str):
        raise RowError("template", f"the prompt must be text, got {value!r}")
    return value


def _choices(task: Task, row: Row) -> list[str]:
    if task.choices is None:
        raise RowError("choices", "this benchmark defines no choices")
    value = _call(task.choices, row, "choices")
    if isinstance(value, dict):
        value = list(value.values())
    if not isinstance(value, (list, tuple)):
        raise RowError("choices", f"choices must be a list, got {value!r}")
    if not value:
        raise RowError("choices", "the choice list is empty")
    for c in value:
        if not isinstance(c, str):
            raise RowError("choices", f"choice {c!r} is not text")
    return list(value)


def _shot_answer(task: Task, ex: Row) -> str | None:
    """The answer written after a few-shot question (lm-eval build_qa_turn: `c[a]` for an index
    into the choices, `a[0]` for a list, else `a`)."""
    if task.target_text is not None:
        return _call(task.target_text, ex, "gold")
    gold = _call(task.target, ex, "gold")
    if isinstance(gold, int) and not isinstance(gold, bool) and task.choices is not None and not _multiple(task, _text(task, ex)):
        opts = _choices(task, ex)
        if not 0 <= gold < len(opts):
            raise RowError("gold", f"few-shot gold index {gold} is outside the {len(opts)} choices")
        return opts[gold]
    if isinstance(gold, list):
        return str(gold[0]) if gold else None
    return None if gold is None else str(gold)


def _prefix(task: Task, row: Row, shots: list[Row]) -> str:
    out = _call(task.description, row, "description") if task.description else ""
    out = out or ""
    for ex in shots:
        q = _text(task, ex)
        if not isinstance(q, str):  # multiple-input: the example's gold context
            opts = _choices(task, ex)
            if not 0 <= q < len(opts):
                raise RowError("template", f"few-shot gold index {q} is outside the {len(opts)} contexts")
            q = opts[q]
        a = _shot_answer(task, ex)
        if a is None or a == "":
            out += q  # lm-eval: no answer, so neither delimiter
        else:
            out += q + task.target_delimiter + a + task.fewshot_delimiter
    return out


def build_context(task: Task, row: Row, shots: list[Row]) -> str:
    """lm-eval's fewshot_context for one context: description + labelled examples + the question."""
    q = _text(task, row)
    if not isinstance(q, str):
        raise RowError("template", "a multiple-input row has one context per choice (use requests_for)")
    return _prefix(task, row, shots) + q


def gold_index(gold, opts: list[str]) -> int | tuple[int, ...]:
    """A gold as lm-eval reads it against the choices: an index, the text of a choice, or a list
    of indices. What maps to no choice is an error here (lm-eval would score it 0 silently)."""
    if isinstance(gold, bool):
        raise RowError("gold", f"gold {gold!r} is a boolean; say how to read it (a label_map or a gold template)")
    if isinstance(gold, int):
        if not 0 <= gold < len(opts):
            raise RowError("gold", f"gold index {gold} is outside the {len(opts)} choices")
        return gold
    if isinstance(gold, str):
        if gold in opts:
            return opts.index(gold)
        raise RowError("gold", f"gold {gold!r} is not one of the choices {opts!r}")
    if isinstance(gold, (list, tuple)) and gold:
        return tuple(gold_index(g, opts) for g in gold)  # type: ignore[misc]
    raise RowError("gold", f"gold {gold!r} is neither an index nor the text of a choice")


def prepare_rows(task: Task, rows: list[Row]) -> list[Row]:
    """A split's rows as the benchmark sees them (lm-eval's process_docs, when it has one)."""
    if task.process_docs is None:
        return rows
    try:
        out = task.process_docs(rows)
    except RowError:
        raise
    except Exception as exc:
        raise RowError("process_docs", f"{type(exc).__name__}: {exc}") from None
    if not isinstance(out, list) or not all(isinstance(r, dict) for r in out):
        raise RowError("process_docs", "process_docs must return the split's rows")
    return out


def requests_for(task: Task, row: Row, shots: list[Row]) -> Requests:
    """Everything one row sends to the model, with its gold; RowError names what is wrong."""
    if task.mode == "ll":
        prefix = _prefix(task, row, shots)
        q = _text(task, row)
        if not isinstance(q, str):
            g = q
            ctxs = _choices(task, row)
            cont = _call(task.target, row, "continuation")
            if not isinstance(cont, str):
                raise RowError("continuation", f"the shared continuation must be text, got {cont!r}")
            return Requests(tuple(prefix + c for c in ctxs), (task.target_delimiter + cont,), tuple(ctxs),
                            gold_index(g, ctxs))
        ctx = prefix + q
        opts = _choices(task, row)
        gold = gold_index(_call(task.target, row, "gold"), opts)
        return Requests((ctx,), tuple(task.target_delimiter + c for c in opts), tuple(opts), gold)
    if task.mode == "gen":
        ctx = build_context(task, row, shots)
        gold = _call(task.target, row, "gold")
        if task.choices is not None:
            opts = _choices(task, row)
            idx = gold_index(gold, opts)
            gold = opts[idx] if isinstance(idx, int) else tuple(opts[i] for i in idx)
        elif isinstance(gold, list):
            gold = tuple(str(g) for g in gold)
        elif not isinstance(gold, str):
            gold = str(gold)
        return Requests((ctx,), (), (), gold)
    if task.mode == "loglik":
        ctx = build_context(task, row, shots)
        cont = _call(task.target, row, "continuation")
        if not isinstance(cont, str) or not cont:
            raise RowError("continuation", f"the continuation must be non-empty text, got {cont!r}")
        return Requests((ctx,), (cont,), (), "")
    if task.mode == "rolling":
        text = _call(task.target, row, "continuation")
        if not isinstance(text, str) or not text:
            raise RowError("continuation", f"the text to score must be non-empty, got {text!r}")
        return Requests(("",), (text,), (), "")
    raise RowError("mode", f"unknown mode {task.mode!r}")


def fewshot_rows(task: Task, pool: list[Row], row: Row, index: int = 0) -> list[Row]:
    """The few-shot examples of the row at position `index` of the evaluated split, as lm-eval
    picks them: `first_n` takes the first rows of the pool (for MMLU, of the same subject),
    skipping the row itself; `random` replays lm-eval's sampler (one Random(seed) whose draws carry
    over from document to document, so document i gets the (i+1)-th draw; when the pool is the
    evaluated split, n+1 are drawn and the row itself dropped)."""
    if not task.fewshot:
        return []
    if task.fewshot_samples:
        pool = list(task.fewshot_samples)
    if task.sampler == "random":
        k = task.fewshot + (1 if task.fewshot_exclude_self else 0)
        if k > len(pool):
            raise RowError("fewshot", f"{task.fewshot} few-shot examples asked, the pool has {len(pool)}")
        upto = 1 << (index + 1).bit_length()  # draws are computed in power-of-two blocks (few cache keys)
        picks = [pool[j] for j in random_shots(len(pool), k, upto, task.fewshot_seed)[index]]
        if task.fewshot_exclude_self:
            picks = [p for p in picks if p != row][: task.fewshot]
            if len(picks) < task.fewshot:
                raise RowError("fewshot", "the few-shot pool holds this row more than once (lm-eval would redraw)")
        return picks
    if task.group is not None and task.source == "builtin":
        pool = [r for r in pool if task.group(r) == task.group(row)]
    if task.source == "builtin" or task.fewshot_exclude_self:
        pool = [r for r in pool if r != row]
    if task.fewshot > len(pool):
        raise RowError("fewshot", f"{task.fewshot} few-shot examples asked, the pool has {len(pool)}")
    return pool[: task.fewshot]


@functools.lru_cache(maxsize=8)
def random_shots(pool_size: int, k: int, n_docs: int, seed: int) -> tuple[tuple[int, ...], ...]:
    """Indices drawn by `random.Random(seed).sample(pool, k)` for documents 0..n_docs-1 in turn."""
    rnd = random.Random(seed)
    population = range(pool_size)
    return tuple(tuple(rnd.sample(population, k)) for _ in range(n_docs))
