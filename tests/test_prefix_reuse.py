"""Prefixes shared across requests (evalcore/backends/prefix.py) and generation that drops
finished sequences (evalcore/backends/genbatch.py), on the tiny real model, float32 CPU.

The reused paths must give the plain per-request numbers (|difference| <= 1e-4, same greedy
flags and acc) and the same greedy generations as `generate` one prompt at a time; a model
whose attention ignores the KV cache must make the probes fall back, recorded in the backend's
paths, in the run's ledger and in the report's lines.
"""

from __future__ import annotations

import json

import pytest

from evalcore.backends import GenRequest, LoglikRequest, ModelSettings, load_backend
from evalcore.backends.prefix import MIN_PREFIX, plan_prefixes, prefix_floor, split_by_length
from evalcore.scoring import metrics
from tests.conftest import ROOT

torch = pytest.importorskip("torch")

TOL = 1e-4
MMLU = ROOT / "scripts" / "crosscheck_tasks" / "data" / "mmlu"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _question(row: dict, answer: bool) -> str:
    text = row["question"].strip() + "\n" + "".join(f"{k}. {c}\n" for k, c in zip("ABCD", row["choices"],
                                                                                   strict=True))
    return text + "Answer:" + (f" {'ABCD'[row['answer']]}\n\n" if answer else "")


def mmlu_5shot(subject: str, n: int) -> tuple[list[LoglikRequest], list[int]]:
    """MMLU 5-shot in lm-eval's format: the same five first questions in front of every other."""
    rows = [json.loads(x) for x in (MMLU / subject / "test.jsonl").read_text().splitlines() if x.strip()]
    head = (f"The following are multiple choice questions (with answers) about {subject.replace('_', ' ')}.\n\n"
            + "".join(_question(r, True) for r in rows[:5]))
    docs = rows[5:5 + n]
    return ([LoglikRequest(head + _question(r, False), (" A", " B", " C", " D")) for r in docs],
            [r["answer"] for r in docs])


def max_diff(a, b) -> float:
    return max(abs(x - y) for ra, rb in zip(a, b, strict=True) for x, y in zip(ra.logprobs, rb.logprobs, strict=True))


# -- pure planning -----------------------------------------------------------------------------


def test_plan_groups_shared_prefixes_and_leaves_a_token():
    head = tuple(range(100, 140))
    seqs = [head + (1, 2), head + (3,), head + (1, 5, 6), (7,) * 30, tuple(range(20))]
    plan = plan_prefixes(seqs)
    assert plan[0] == plan[1] == plan[2] == head          # the longest prefix all three share
    assert 3 not in plan and 4 not in plan                 # alone: nothing to reuse
    assert all(len(p) < len(seqs[i]) for i, p in plan.items())
    # a sequence that is exactly the shared prefix keeps its last token to compute
    plan = plan_prefixes([head, head + (9,)])
    assert plan[0] == plan[1] == head[:-1]


def test_plan_keeps_subjects_apart_and_reuses_known_prefixes():
    a, b = tuple(range(0, 60)), tuple(range(0, 10)) + tuple(range(500, 550))   # 10 tokens in common
    seqs = [a + (i,) for i in range(5)] + [b + (i,) for i in range(5)]
    plan = plan_prefixes(seqs, min_len=4)
    assert {plan[i] for i in range(5)} == {a} and {plan[i] for i in range(5, 10)} == {b}
    known = plan_prefixes([a + (1, 2), b + (3,)], known=[a])
    assert known == {0: a}                                # the second has no partner and no known prefix
    assert plan_prefixes([a[:MIN_PREFIX - 1] + (1,), a[:MIN_PREFIX - 1] + (2,)]) == {}


def test_split_by_length_trades_padding_against_passes():
    lengths = [100, 98, 97, 40, 39, 38, 10]
    assert split_by_length(lengths, 16, 1000) == [7]             # a pass costs more than any padding
    assert split_by_length(lengths, 16, 16) == [3, 3, 1]         # similar lengths together
    assert split_by_length(lengths, 2, 16) == [1, 2, 1, 2, 1]    # never more rows than allowed
    assert split_by_length(lengths, 16, 0) == [1, 1, 1, 1, 1, 1, 1]
    assert split_by_length([5, 5, 5], 16, 0) == [3]              # equal lengths: one batch
    assert split_by_length([], 4, 16) == []
    for rows, cost in ((16, 16), (2, 16), (3, 5)):
        sizes = split_by_length(lengths, rows, cost)
        assert sum(sizes) == len(lengths) and max(sizes) <= rows
    with pytest.raises(ValueError):
        split_by_length([1, 2], 4, 0)


def test_prefix_floor_counts_distinct_prefixes():
    assert prefix_floor([(1, 2, 3), (1, 2, 4), (1, 5)]) == 5
    assert prefix_floor([(1, 2), (1, 2)]) == 2


# -- log-likelihood ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mmlu():
    return mmlu_5shot("abstract_algebra", 12)


@pytest.fixture(scope="module")
def mmlu_plain(tiny_model_dir, mmlu):
    with load_backend(ModelSettings(path=str(tiny_model_dir)), packed=False) as b:
        return b.loglikelihood(mmlu[0])


def test_prefix_reuse_equals_per_request_on_mmlu_5shot(tiny_model_dir, mmlu, mmlu_plain):
    reqs, gold = mmlu
    with load_backend(ModelSettings(path=str(tiny_model_dir), batch_size=4)) as b, \
            load_backend(ModelSettings(path=str(tiny_model_dir), batch_size=4), prefix_reuse=False) as packed:
        got = b.loglikelihood(reqs)
        assert b.prefix_mode == "on", b.prefix_fallback_reason
        assert max_diff(got, mmlu_plain) < TOL
        assert [r.greedy for r in got] == [r.greedy for r in mmlu_plain]
        for r, p, g in zip(got, mmlu_plain, gold, strict=True):
            choices = list("ABCD")
            assert metrics.mc_scores(list(r.logprobs), choices, g)["acc"] == \
                metrics.mc_scores(list(p.logprobs), choices, g)["acc"]
        packed.loglikelihood(reqs[:1])
        packed.tokens_run = b.tokens_run = 0
        packed.loglikelihood(reqs)
        again = b.loglikelihood(reqs)               # a later call of the same worker: the stored prefix
        assert max_diff(again, mmlu_plain) < TOL
        assert b._prefixes.hits >= 1 and b.tokens_run * 3 < packed.tokens_run
        paths = b.fast_paths()
        assert paths["prefix_reuse"] == "on" and paths["prefix_fallback"] is None


def test_single_continuations_share_the_prefix_too(tiny_model_dir, mmlu):
    """Requests with one continuation each (no packing partner) still reuse the shared prefix."""
    reqs = [LoglikRequest(r.context, (" B",)) for r in mmlu[0][:6]]
    with load_backend(ModelSettings(path=str(tiny_model_dir)), packed=False) as plain, \
            load_backend(ModelSettings(path=str(tiny_model_dir))) as b:
        want, got = plain.loglikelihood(reqs), b.loglikelihood(reqs)
        assert b.prefix_mode == "on" and b._prefixes.computed >= 1
    assert max_diff(got, want) < TOL


# -- a model whose attention ignores the cache -------------------------------------------------


@pytest.fixture()
def attention_ignores_cache(monkeypatch):
    """Patch Llama attention so it never reads or writes the KV cache (and sees only the new keys)."""
    from transformers.models.llama import modeling_llama

    original = modeling_llama.LlamaAttention.forward

    def forward(self, hidden_states, *args, **kwargs):
        kwargs.pop("cache", None)
        kwargs.pop("past_key_values", None)
        mask = kwargs.get("attention_mask")
        if mask is not None and mask.dim() == 4:
            kwargs["attention_mask"] = mask[..., -hidden_states.shape[1]:]
        return original(self, hidden_states, *args, **kwargs)

    monkeypatch.setattr(modeling_llama.LlamaAttention, "forward", forward)


def test_fallback_is_recorded_when_the_cache_is_ignored(tiny_model_dir, mmlu, mmlu_plain, attention_ignores_cache,
                                                        tmp_path):
    from evalcore.engine.ledger import Ledger
    from evalcore.report import tables as report

    with load_backend(ModelSettings(path=str(tiny_model_dir))) as b:
        got = b.loglikelihood(mmlu[0])
        assert b.packing_mode == "hidden"               # packing needs no cache: still on
        assert b.prefix_mode == "off" and "cache" in b.prefix_fallback_reason
        b.generate([GenRequest("Once upon a time", 4)])
        paths = b.fast_paths()
    assert max_diff(got, mmlu_plain) < TOL              # the fallback gives the plain numbers
    assert paths["prefix_reuse"] == "off" and paths["prefix_fallback"] == b.prefix_fallback_reason
    assert paths["generation"] == "generate" or paths["prefix_reuse_generation"] == "off"
    # recorded in the run (the ledger a worker writes to) and shown in the report's lines
    with Ledger(tmp_path / "ledger.sqlite") as ledger:
        ledger.create_run("r1", str(tmp_path), "{}", [], [], now=1.0)
        ledger.record_paths("r1", "w0", "tiny", json.dumps(paths), now=2.0)
        rows = ledger.backend_paths("r1")
    assert rows == [{"worker_id": "w0", "model_key": "tiny", "paths": paths}]
    lines = report.backend_path_lines(rows)
    assert lines[0].startswith("tiny: ") and "prefix reuse in scoring off" in lines[0]
    assert any("fallback: prefix reuse in scoring not used: " in x and b.prefix_fallback_reason in x for x in lines)


# -- generation --------------------------------------------------------------------------------


def test_refill_generation_equals_one_prompt_at_a_time(tiny_model_dir):
    """Prompts of different lengths and budgets, a shared prefix, stop strings, more prompts than
    slots: the refill loop gives what `generate` gives for each prompt alone."""
    head = "Question: how many legs has a cat? Answer: four.\n\nQuestion: how many legs has a bird? Answer: two.\n\n"
    tails = ["Question: how many legs has a dog?", "Question: and a spider?", "Question: a fish?",
             "Question: how many wheels has a bicycle, and how many has a car?", "Question: a snake?"]
    reqs = [GenRequest(head + t, 5 + 3 * i, ("\n\n",) if i % 2 else ()) for i, t in enumerate(tails)]
    reqs.append(GenRequest("Unrelated short prompt", 7))
    with load_backend(ModelSettings(path=str(tiny_model_dir), batch_size=2)) as b, \
            load_backend(ModelSettings(path=str(tiny_model_dir), batch_size=1)) as one:
        one._gen_mode = "generate"                     # the reference: `generate`, one prompt at a time
        want = [one.generate([r])[0] for r in reqs]
        got = b.generate(reqs)
        assert b.fast_paths()["generation"] == "refill", b.gen_fallback_reason
        assert b.fast_paths()["prefix_reuse_generation"] == "on", b.gen_prefix_fallback_reason
    assert got == want


def test_generation_config_with_processors_keeps_generate(tiny_model_dir):
    with load_backend(ModelSettings(path=str(tiny_model_dir))) as b:
        b.model.generation_config.repetition_penalty = 1.3
        b.generate([GenRequest("Once upon a time", 3)])
        assert b.fast_paths()["generation"] == "generate"
        assert "repetition_penalty" in b.gen_fallback_reason


# -- partitions that share a prefix stay with the worker that has it cached ----------------------


def test_claim_prefers_the_dataset_the_worker_ran_last(tmp_path):
    import os

    from evalcore.engine.ledger import Ledger, PartitionRow

    rows = [PartitionRow(f"p{i}", "m", ds, "h", "{}", "{}", i * 4, i * 4 + 4, 4.0, 0, 3)
            for i, ds in enumerate(("arc", "mmlu_a", "arc", "mmlu_b", "mmlu_a"))]
    with Ledger(tmp_path / "ledger.db") as ledger:
        ledger.create_run("r", str(tmp_path), "{}", [], rows, now=0.0)

        def take(**kw):
            return ledger.claim("r", "w", now=0.0, lease_s=10, pid=os.getpid(), host="h", prefer_model="m",
                                **kw).partition_id

        assert take() == "p0"                                    # by dataset, then first sample
        assert take(prefer_dataset="mmlu_a") == "p1"
        assert take(prefer_dataset="mmlu_a") == "p4"             # the cached prefix's dataset first
        assert take(prefer_dataset="mmlu_a") == "p2"             # then the usual order
        assert take(prefer_dataset=None) == "p3"


def test_a_run_records_its_backend_paths_and_the_report_shows_them(tmp_path, tiny_model_dir):
    """A real `evalcore eval` (worker processes, the ledger): the summary and `evalcore report`
    list the paths the backend took."""
    from tests.conftest import clean_env, run_cli
    from tests.test_engine import run_dir_of, tiny, write_plan

    plan = write_plan(tmp_path / "plan.toml", tiny(tiny_model_dir), limit=8, max_partition_size=100)
    env = clean_env(HF_HOME=str(tmp_path / "hf"), EVALCORE_STATE_DIR=str(tmp_path / "state"))
    r = run_cli("evalcore", "eval", plan, env=env)
    assert r.returncode == 0, r.stderr
    assert "backend paths:" in r.stdout and "tiny: shared-context packing hidden" in r.stdout
    assert "prefix reuse in scoring on" in r.stdout
    rep = run_cli("evalcore", "report", run_dir_of(r.stdout), "--format", "json", env=env)
    assert rep.returncode == 0, rep.stderr
    json.loads(rep.stdout)                                   # stdout stays plain JSON
    assert "tiny: shared-context packing hidden" in rep.stderr
