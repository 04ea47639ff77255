"""Check docs/crosscheck.md against lm-eval's committed outputs: an executable form of the spec.

    python scripts/crosscheck_tasks/verify_spec.py [--models tiny,smollm2]
           [--loglik tiny=build/crosscheck/models/tiny] [--max-requests N]

Without options it needs only the standard library. It rebuilds, from the data slices and the
rules in docs/crosscheck.md, every context and continuation string lm-eval logged in
tests/crosscheck/<model>/*.jsonl (including GSM8K's 5-shot contexts drawn with
random.Random(1234)), recomputes acc / acc_norm from the logged log-likelihoods, and re-applies
GSM8K's strict-match / flexible-extract filters and exact_match to the logged generations.

--loglik NAME=DIR also recomputes the log-likelihoods with plain transformers (needs torch and
transformers, e.g. build/lmeval-venv/bin/python), one (context, continuation) pair at a time,
with lm-eval's tokenisation rules, and reports the largest difference and any is_greedy change.
"""

from __future__ import annotations

import argparse
import gzip
import json
import random
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent
DATA = ROOT / "scripts" / "crosscheck_tasks" / "data"
OUT = ROOT / "tests" / "crosscheck"
MMLU_SUBJECTS = ("abstract_algebra", "high_school_geography", "nutrition", "philosophy")


def jsonl(path: Path) -> list[dict]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


# ---- the spec, task by task: (context, [continuations], choices for acc_norm, gold) ----------

def arc_easy_requests():
    for i, d in enumerate(jsonl(DATA / "arc_easy" / "validation.jsonl")):
        ctx = f"Question: {d['question']}\nAnswer:"
        choices = list(d["choices"]["text"])
        yield "arc_easy", i, ctx, choices, d["choices"]["label"].index(d["answerKey"])


def piqa_requests():
    for i, d in enumerate(jsonl(DATA / "piqa" / "validation.jsonl")):
        yield "piqa", i, f"Question: {d['goal']}\nAnswer:", [d["sol1"], d["sol2"]], d["label"]


def mmlu_requests():
    for s in MMLU_SUBJECTS:
        desc = f"The following are multiple choice questions (with answers) about {s.replace('_', ' ')}.\n\n"
        for i, d in enumerate(jsonl(DATA / "mmlu" / s / "test.jsonl")):
            c = d["choices"]
            ctx = (desc + f"{d['question'].strip()}\nA. {c[0]}\nB. {c[1]}\nC. {c[2]}\nD. {c[3]}\nAnswer:")
            yield f"mmlu_{s}", i, ctx, ["A", "B", "C", "D"], d["answer"]


def gsm8k_contexts() -> list[str]:
    train = jsonl(DATA / "gsm8k" / "train.jsonl.gz")
    rnd = random.Random(1234)  # lm-eval's default fewshot seed; one draw of 5 per test doc, in order
    out = []
    for d in jsonl(DATA / "gsm8k" / "test.jsonl"):
        shots = rnd.sample(train, 5)
        out.append("".join(f"Question: {x['question']}\nAnswer: {x['answer']}\n\n" for x in shots)
                   + f"Question: {d['question']}\nAnswer:")
    return out


STRICT = re.compile(r"#### (\-?[0-9\.\,]+)")
FLEX = re.compile(r"(-?[$0-9.,]{2,})|(-?[0-9]+)")
IGNORE = [",", "\\$", "(?s).*#### ", "\\.$"]


def extract(regex: re.Pattern, text: str, group_select: int) -> str:
    m = regex.findall(text)
    if not m:
        return "[invalid]"
    m = m[group_select]
    if isinstance(m, tuple):
        m = [x for x in m if x]
        m = m[0] if m else "[invalid]"
    return m.strip()


def exact_match(pred: str, ref: str) -> float:
    for pat in IGNORE:
        pred, ref = re.sub(pat, "", pred), re.sub(pat, "", ref)
    return float(pred.lower() == ref.lower())


def argmax(xs: list[float]) -> int:
    return max(range(len(xs)), key=lambda i: (xs[i], -i))  # first maximum, like np.argmax


# ---- checks -----------------------------------------------------------------------------------

def check_ll(model: str, task: str, reqs) -> list[str]:
    path = OUT / model / f"{task}.jsonl"
    rows = jsonl(path)
    by = {}
    for r in rows:
        by.setdefault((r["task"], r["doc"]), []).append(r)
    errors, n = [], 0
    for name, i, ctx, choices, gold in reqs:
        got = sorted(by.pop((name, i)), key=lambda r: r["request"])
        n += 1
        if [r["context"] for r in got] != [ctx] * len(choices):
            errors.append(f"{path.name} {name} doc {i}: context differs")
        if [r["continuation"] for r in got] != [" " + c for c in choices]:
            errors.append(f"{path.name} {name} doc {i}: continuations differ")
        lls = [r["loglikelihood"] for r in got]
        acc = float(argmax(lls) == gold)
        if got[0]["gold"] != gold or got[0]["acc"] != acc:
            errors.append(f"{path.name} {name} doc {i}: gold/acc differ")
        if "acc_norm" in got[0]:
            acc_norm = float(argmax([ll / len(c) for ll, c in zip(lls, choices, strict=True)]) == gold)
            if got[0]["acc_norm"] != acc_norm:
                errors.append(f"{path.name} {name} doc {i}: acc_norm differs")
    if by:
        errors.append(f"{path.name}: {len(by)} unexpected docs")
    print(f"  {model}/{task}: {n} docs, {len(rows)} requests checked")
    return errors


def check_gsm8k(model: str) -> list[str]:
    path = OUT / model / "gsm8k.jsonl"
    rows = jsonl(path)
    ctxs = gsm8k_contexts()
    tests = jsonl(DATA / "gsm8k" / "test.jsonl")
    errors = []
    for r in rows:
        i = r["doc"]
        if r["context"] != ctxs[i]:
            errors.append(f"gsm8k doc {i}: context differs")
        if r["target"] != tests[i]["answer"]:
            errors.append(f"gsm8k doc {i}: target differs")
        gen = r["generation"]
        for stop in r["gen_kwargs"]["until"]:
            if stop in gen and stop not in ("<|im_end|>", "</s>"):
                errors.append(f"gsm8k doc {i}: generation still holds stop string {stop!r}")
        for filt, regex, sel in (("strict-match", STRICT, 0), ("flexible-extract", FLEX, -1)):
            ext = extract(regex, gen, sel)
            if r[filt]["extracted"] != ext:
                errors.append(f"gsm8k doc {i} {filt}: extracted {r[filt]['extracted']!r} != {ext!r}")
            if r[filt]["exact_match"] != exact_match(ext, r["target"]):
                errors.append(f"gsm8k doc {i} {filt}: exact_match differs")
    print(f"  {model}/gsm8k: {len(rows)} docs checked (contexts, filters, exact_match)")
    return errors


def recompute_loglik(model_name: str, model_dir: str, max_requests: int) -> list[str]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    max_length = model.config.max_position_embeddings
    worst, flips, n = 0.0, 0, 0
    mine: dict[tuple, list] = {}
    theirs: dict[tuple, list] = {}
    for task in ("arc_easy", "piqa", "mmlu"):
        for r in jsonl(OUT / model_name / f"{task}.jsonl")[:max_requests]:
            ctx, cont = r["context"], r["continuation"]
            k = len(ctx) - len(ctx.rstrip())          # trailing whitespace moves to the continuation
            if k:
                ctx, cont = ctx[:-k], ctx[-k:] + cont
            whole = tok.encode(ctx + cont)              # tokenizer defaults: no BOS for SmolLM2
            n_ctx = len(tok.encode(ctx))
            cont_ids = whole[n_ctx:]
            inp = (whole)[-(max_length + 1):][:-1]
            with torch.no_grad():
                logits = model(torch.tensor([inp])).logits[0]
            lp = torch.log_softmax(logits, dim=-1)[len(inp) - len(cont_ids):]
            ids = torch.tensor(cont_ids)
            ll = float(lp.gather(1, ids[:, None]).sum())
            greedy = bool((lp.argmax(-1) == ids).all())
            mine.setdefault((r["task"], r["doc"]), []).append(ll)
            theirs.setdefault((r["task"], r["doc"]), []).append(r["loglikelihood"])
            worst = max(worst, abs(ll - r["loglikelihood"]))
            flips += greedy != r["is_greedy"]
            n += 1
    sizes: dict[tuple, int] = {}
    for task in ("arc_easy", "piqa", "mmlu"):
        for r in jsonl(OUT / model_name / f"{task}.jsonl"):
            sizes[(r["task"], r["doc"])] = r["n_requests"]
    complete = [k for k in mine if len(mine[k]) == sizes[k]]  # docs with every choice re-scored
    changed = sum(argmax(mine[k]) != argmax(theirs[k]) for k in complete)
    print(f"  {model_name}: recomputed {n} log-likelihoods one pair at a time: "
          f"max |diff| {worst:.2e}, is_greedy changes {flips}, "
          f"predicted choice changes {changed} of {len(complete)} docs")
    ok = worst < 1e-3 and flips == 0 and changed == 0
    return [] if ok else [f"{model_name}: log-likelihoods differ ({worst}, {flips}, {changed})"]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="tiny,smollm2")
    ap.add_argument("--loglik", action="append", default=[], metavar="NAME=DIR")
    ap.add_argument("--max-requests", type=int, default=40)
    args = ap.parse_args()
    errors = []
    for model in [m for m in args.models.split(",") if m]:
        if not (OUT / model).is_dir():
            print(f"  {model}: no outputs, skipped")
            continue
        errors += check_ll(model, "arc_easy", arc_easy_requests())
        errors += check_ll(model, "piqa", piqa_requests())
        errors += check_ll(model, "mmlu", mmlu_requests())
        errors += check_gsm8k(model)
    for spec in args.loglik:
        name, d = spec.split("=", 1)
        errors += recompute_loglik(name, d, args.max_requests)
    for e in errors[:50]:
        print("MISMATCH", e)
    print("spec check:", "OK" if not errors else f"{len(errors)} mismatches")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
