"""The Hugging Face backend on a tiny real model (2-layer Llama, SmolLM2 tokenizer), float32 CPU.

The packed multiple-choice path must give the plain per-pair numbers; the plain path must give
what an independent single-row forward pass gives under lm-eval 0.4.13's tokenization rules.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from evalcore.backends import (
    GenRequest,
    LoglikRequest,
    LoglikResult,
    ModelSettings,
    load_backend,
)
from evalcore.errors import BackendError, ModelNotCachedError
from tests.conftest import ARC_JSONL, ROOT, clean_env

torch = pytest.importorskip("torch")

TOL = 1e-4
N_ARC = 30


def arc_requests(n: int = N_ARC) -> list[LoglikRequest]:
    """ARC-Easy validation in lm-eval's arc_easy format: 'Question: ...\\nAnswer:' + ' choice'."""
    rows = [json.loads(line) for line in ARC_JSONL.read_text().splitlines()[:n]]
    return [LoglikRequest(f"Question: {r['question']}\nAnswer:", tuple(" " + c for c in r["choices"]["text"]))
            for r in rows]


def max_diff(a: list[LoglikResult], b: list[LoglikResult]) -> float:
    assert [len(x.logprobs) for x in a] == [len(y.logprobs) for y in b]
    return max((abs(x - y) for ra, rb in zip(a, b, strict=True)
                for x, y in zip(ra.logprobs, rb.logprobs, strict=True)), default=0.0)


def settings(model_dir: Path, **kw) -> ModelSettings:
    return ModelSettings(path=str(model_dir), **kw)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def packed(tiny_model_dir):
    with load_backend(settings(tiny_model_dir)) as backend:
        yield backend


@pytest.fixture(scope="module")
def plain(tiny_model_dir):
    with load_backend(settings(tiny_model_dir), packed=False) as backend:
        yield backend


@pytest.fixture(scope="module")
def arc_plain(plain):
    return plain.loglikelihood(arc_requests())


def reference_logprob(backend, ctx: list[int], cont: list[int]) -> tuple[float, bool]:
    """One pair, one unpadded forward pass: the sum of the continuation tokens' log-softmax."""
    ids = torch.tensor([ctx + cont[:-1]])
    with torch.no_grad():
        logp = torch.log_softmax(backend.model(input_ids=ids).logits[0].float(), dim=-1)
    rows = logp[len(ctx) - 1:]
    picked = rows.gather(1, torch.tensor(cont)[:, None]).squeeze(1)
    return float(picked.sum()), bool((rows.argmax(-1) == torch.tensor(cont)).all())


# -- log-likelihood ----------------------------------------------------------------------------


def test_packed_equals_per_pair_on_arc(packed, arc_plain):
    reqs = arc_requests()
    got = packed.loglikelihood(reqs)
    assert packed.packing_mode == "hidden", packed.packed_fallback_reason
    assert max_diff(got, arc_plain) < TOL
    assert [r.greedy for r in got] == [r.greedy for r in arc_plain]
    assert [r.n_tokens for r in got] == [r.n_tokens for r in arc_plain]
    assert all(len(r.logprobs) == len(q.continuations) for r, q in zip(got, reqs, strict=True))


def test_plain_path_matches_lm_eval_rules(plain, arc_plain):
    """Independent check of the reference: lm-eval's split and a single-row forward per pair."""
    tok = plain.tokenizer
    for req, res in list(zip(arc_requests(), arc_plain, strict=True))[:5]:
        for cont_text, lp, greedy, n in zip(req.continuations, res.logprobs, res.greedy, res.n_tokens,
                                            strict=True):
            ctx = tok.encode(req.context)          # SmolLM2's tokenizer adds no BOS
            cont = tok.encode(req.context + cont_text)[len(ctx):]
            want_lp, want_greedy = reference_logprob(plain, ctx, cont)
            assert abs(lp - want_lp) < TOL and greedy == want_greedy and n == len(cont)


def test_eager_attention_gets_a_float_mask(tiny_model_dir, arc_plain):
    """Eager attention adds the mask to the scores: a boolean 4D mask would be silently wrong."""
    with load_backend(settings(tiny_model_dir, model_kwargs={"attn_implementation": "eager"})) as b:
        got = b.loglikelihood(arc_requests())
        assert b.packing_mode == "hidden", b.packed_fallback_reason
    assert max_diff(got, arc_plain) < TOL


def test_trailing_whitespace_and_empty_context(packed, plain):
    tok = packed.tokenizer
    reqs = [LoglikRequest("The sky is ", ("blue", "green", "red")),
            LoglikRequest("", ("Hello world", "Goodbye"))]
    a, b = packed.loglikelihood(reqs), plain.loglikelihood(reqs)
    assert max_diff(a, b) < TOL
    # trailing space moves to the continuation
    ctx = tok.encode("The sky is")
    cont = tok.encode("The sky is blue")[len(ctx):]
    assert packed.encode_pair("The sky is ", "blue") == (ctx, cont)
    assert abs(a[0].logprobs[0] - reference_logprob(plain, ctx, cont)[0]) < TOL
    # an empty context becomes the BOS token (SmolLM2: <|im_start|>)
    cont = tok.encode("Hello world", add_special_tokens=False)
    assert packed.encode_pair("", "Hello world") == ([tok.bos_token_id], cont)
    assert abs(a[1].logprobs[0] - reference_logprob(plain, [tok.bos_token_id], cont)[0]) < TOL


def test_boundary_merge_is_scored_on_its_own(packed, plain):
    """'Answer: hel' + 'lo world' tokenizes 'hello' as one token: the context ids are not a prefix."""
    tok = packed.tokenizer
    context, merging, normal = "Answer: hel", "lo world", " world and more"
    ctx = tok.encode(context)
    whole = tok.encode(context + merging)
    assert whole[:len(ctx)] != ctx, "the tokenizer no longer merges here; pick another example"
    ctx_ids, cont_ids, merged = packed._encode_pair(context, merging)
    assert merged and cont_ids == whole[len(ctx):] and ctx_ids == ctx
    pairs = [packed._encode_pair(context, c) for c in (merging, normal, " x")]
    from evalcore.backends.hf import _Pair
    rows, rest = packed._plan_rows([_Pair((0, j), tuple(c), tuple(t), m) for j, (c, t, m) in enumerate(pairs)])
    assert [p.key for r in rows for p in r.pairs] == [(0, 1), (0, 2)] and [p.key for p in rest] == [(0, 0)]

    req = [LoglikRequest(context, (merging, normal, " x", "lo"))]
    a, b = packed.loglikelihood(req)[0], plain.loglikelihood(req)[0]
    assert max(abs(x - y) for x, y in zip(a.logprobs, b.logprobs, strict=True)) < TOL and a.greedy == b.greedy
    assert abs(a.logprobs[0] - reference_logprob(plain, ctx, whole[len(ctx):])[0]) < TOL
    # 'hel' + 'lo' encodes to no continuation token at all: log 1, zero tokens (lm-eval asserts)
    assert (a.logprobs[3], a.greedy[3], a.n_tokens[3]) == (0.0, True, 0)


def test_empty_single_and_order(packed, plain):
    reqs = arc_requests(12)
    mixed = [LoglikRequest("Question: nothing to score\nAnswer:", ()),
             LoglikRequest(reqs[0].context, reqs[0].continuations[:1])] + reqs[1:]
    random.Random(7).shuffle(mixed)
    got = packed.loglikelihood(mixed)
    assert max_diff(got, plain.loglikelihood(mixed)) < TOL
    for req, res in zip(mixed, got, strict=True):   # each result belongs to its own request, whatever the order
        alone = plain.loglikelihood([req])[0]
        assert len(res.logprobs) == len(req.continuations)
        assert max_diff([res], [alone]) < TOL
    assert packed.loglikelihood([LoglikRequest("x", ())]) == [LoglikResult((), (), ())]
    assert packed.loglikelihood([]) == []


def test_no_batch_padding_equals_batched(tiny_model_dir, arc_plain):
    reqs = arc_requests(10)
    with load_backend(settings(tiny_model_dir, batch_padding=False)) as one:
        assert max_diff(one.loglikelihood(reqs), arc_plain[:10]) < TOL
        one.packed = False
        assert max_diff(one.loglikelihood(reqs), arc_plain[:10]) < TOL


def test_token_budget_and_batch_size_do_not_change_results(tiny_model_dir, arc_plain):
    reqs = arc_requests(10)
    with load_backend(settings(tiny_model_dir, batch_size=3), token_budget=4096) as b:
        assert max_diff(b.loglikelihood(reqs), arc_plain[:10]) < TOL


def test_left_truncation_keeps_the_continuation(tiny_model_dir, plain):
    long_ctx = "Question: " + " ".join(["word"] * 80) + "\nAnswer:"
    req = [LoglikRequest(long_ctx, (" yes", " no thanks"))]
    with load_backend(settings(tiny_model_dir, max_seq_len=24)) as short:
        got = short.loglikelihood(req)[0]
        for cont_text, lp in zip(req[0].continuations, got.logprobs, strict=True):
            ctx, cont = short.encode_pair(long_ctx, cont_text)
            window = (ctx + cont)[-25:]                          # lm-eval: [-(max_length + 1):][:-1]
            want, _ = reference_logprob(plain, window[:-len(cont)], cont)
            assert abs(lp - want) < TOL


# -- generation --------------------------------------------------------------------------------

PROMPTS = ["Question: What is 2+2?\nAnswer:", "Once upon a time", "The capital of France is",
           "List three colors:\n1.", "Q: Which planet is largest? A:"]


def test_generate_batched_equals_one_at_a_time(packed, tiny_model_dir):
    reqs = [GenRequest(p, 12) for p in PROMPTS]
    batched = packed.generate(reqs)
    with load_backend(settings(tiny_model_dir, batch_padding=False)) as one:
        assert one.generate(reqs) == batched
    assert [packed.generate([r])[0] for r in reqs] == batched
    assert all(isinstance(t, str) and t for t in batched)


def test_stop_strings_cut_the_output(packed):
    free = packed.generate([GenRequest(p, 16) for p in PROMPTS])
    stops = []
    for text in free:   # a stop string that occurs in the middle of each free generation
        words = text.split()
        stops.append(words[len(words) // 2] if len(words) > 2 else "\n")
    got = packed.generate([GenRequest(p, 16, (s, "@@never@@")) for p, s in zip(PROMPTS, stops, strict=True)])
    for text, stop, cut in zip(free, stops, got, strict=True):
        assert cut == text.split(stop)[0]
        assert stop not in cut
    assert packed.generate([GenRequest(PROMPTS[0], 0)]) == [""]


def test_generation_truncates_long_prompts_from_the_left(tiny_model_dir, packed):
    prompt = " ".join(f"item{i}" for i in range(60))
    with load_backend(settings(tiny_model_dir, max_seq_len=32)) as short:
        ids = short._encode_prompt(prompt)
        assert len(ids) > 32
        got = short.generate([GenRequest(prompt, 8)])
        assert got == packed._generate_batch([ids[-(32 - 8):]], [()], 8)
        with pytest.raises(BackendError, match="no room"):
            short.generate([GenRequest(prompt, 40)])


def test_chat_template_on_request(tiny_model_dir, packed):
    with load_backend(settings(tiny_model_dir, chat_template=True)) as chat:
        formatted = chat.format_chat("What is 2+2?")
        assert formatted.startswith("<|im_start|>system\n") and formatted.endswith("<|im_start|>assistant\n")
        assert chat._encode_prompt("What is 2+2?") == chat.tokenizer.encode(formatted, add_special_tokens=False)
        assert chat.generate([GenRequest("What is 2+2?", 6)]) == packed.generate([GenRequest(formatted, 6)])
        assert chat.identity()["chat_template"] is True


# -- loading, identity, errors ------------------------------------------------------------------


def test_identity_tracks_dtype_and_tokenizer(tiny_model_dir, packed, tmp_path):
    base = packed.identity()
    assert base == packed.identity()
    assert base["model_commit"] is None and base["dtype"] == "float32"
    assert base["source"]["model_path"] == str(tiny_model_dir)
    assert base["model_class"] == "LlamaForCausalLM" and len(base["tokenizer_hash"]) == 64
    with load_backend(settings(tiny_model_dir, dtype="bfloat16")) as bf16:
        other = bf16.identity()
    assert other["dtype"] == "bfloat16" and other["digest"] != base["digest"]
    assert other["model_hash"] == base["model_hash"]
    tok_dir = tmp_path / "tok"
    tok_dir.mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        shutil.copy(tiny_model_dir / name, tok_dir / name)
    cfg = json.loads((tok_dir / "tokenizer_config.json").read_text())
    cfg["model_max_length"] = 4096
    (tok_dir / "tokenizer_config.json").write_text(json.dumps(cfg))
    with load_backend(ModelSettings(path=str(tiny_model_dir), tokenizer_path=str(tok_dir))) as tok2:
        changed = tok2.identity()
    assert changed["tokenizer_hash"] != base["tokenizer_hash"] and changed["digest"] != base["digest"]
    assert changed["model_hash"] == base["model_hash"]


def make_hub_cache(model_dir: Path, cache: Path, repo_id: str) -> str:
    """The hub cache layout by hand: blobs named by sha256, snapshot links, refs/main."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    commit = hashlib.sha1(repo_id.encode()).hexdigest()
    (repo / "blobs").mkdir(parents=True)
    (repo / "snapshots" / commit).mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    for f in sorted(model_dir.iterdir()):
        digest = hashlib.sha256(f.read_bytes()).hexdigest()
        shutil.copy(f, repo / "blobs" / digest)
        os.symlink(f"../../blobs/{digest}", repo / "snapshots" / commit / f.name)
    return commit


def test_load_by_repo_id_from_hub_cache_offline(tiny_model_dir, packed, tmp_path, monkeypatch):
    cache = tmp_path / "hub"
    commit = make_hub_cache(tiny_model_dir, cache, "testorg/tiny-llama")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    reqs = arc_requests(4)
    want = packed.loglikelihood(reqs)
    for revision in (None, "main", commit):
        s = ModelSettings(path="testorg/tiny-llama", revision=revision, model_kwargs={"cache_dir": str(cache)})
        with load_backend(s) as hub:
            ident = hub.identity()
            assert ident["model_commit"] == commit and ident["tokenizer_commit"] == commit
            assert ident["source"]["model_revision"] == revision
            # same files as the local folder: same content hashes, same digest
            local = packed.identity()
            for key in ("model_hash", "tokenizer_hash", "digest"):
                assert ident[key] == local[key], key
            assert max_diff(hub.loglikelihood(reqs), want) < TOL


def test_missing_repo_names_the_prefetch_command(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    s = ModelSettings(path="testorg/not-there", model_kwargs={"cache_dir": str(tmp_path / "hub")})
    with pytest.raises(ModelNotCachedError) as info:
        load_backend(s)
    assert "testorg/not-there" in str(info.value)
    assert "cachekit prefetch --model testorg/not-there --out BUNDLE" in info.value.hint
    assert isinstance(info.value, BackendError) and info.value.exit_code == 4


def test_missing_local_folder(tmp_path):
    with pytest.raises(BackendError, match="folder not found"):
        load_backend(ModelSettings(path=str(tmp_path / "nope")))
    with pytest.raises(BackendError, match="cannot load model"):
        load_backend(ModelSettings(path=str(tmp_path)))


def test_settings_are_checked_and_hashable():
    s = ModelSettings(path="a/b", batch_size="auto", model_kwargs={"device_map": "auto"},
                      tokenizer_kwargs={"padding_side": "left"})
    assert hash(s) == hash(ModelSettings(path="a/b", batch_size="auto", model_kwargs={"device_map": "auto"},
                                         tokenizer_kwargs={"padding_side": "left"}))
    assert s.model_kwargs["device_map"] == "auto"
    for bad in (0, -1, "big", True):
        with pytest.raises(BackendError):
            ModelSettings(path="a/b", batch_size=bad)


def test_tokenizer_kwargs_become_attributes(tiny_model_dir):
    s = settings(tiny_model_dir, tokenizer_kwargs={"padding_side": "left", "truncation": "left"},
                 model_kwargs={"trust_remote_code": "False"})
    with load_backend(s) as b:
        assert b.tokenizer.padding_side == "left" and b.tokenizer.truncation_side == "left"


def test_importing_backends_loads_no_torch():
    code = ("import sys, evalcore.backends as b; "
            "assert 'torch' not in sys.modules and 'transformers' not in sys.modules, 'heavy import'")
    subprocess.run([sys.executable, "-c", code], env=clean_env(), cwd=ROOT, check=True, timeout=60)


def test_fallback_when_the_mask_is_not_honoured(tiny_model_dir, arc_plain, monkeypatch):
    from evalcore.backends.hf import HFBackend

    monkeypatch.setattr(HFBackend, "_attn_impl", lambda self: "flash_attention_2")
    with load_backend(settings(tiny_model_dir)) as b:
        got = b.loglikelihood(arc_requests(5))
        assert b.packing_mode == "off" and "flash_attention_2" in b.packed_fallback_reason
    assert max_diff(got, arc_plain[:5]) < TOL


def test_auto_batch_size_halves_on_gpu_oom(tiny_model_dir):
    """Simulated CUDA OOM: 'auto' halves the batch and retries; a fixed size gives a BackendError."""
    from evalcore.backends.hf import HFBackend

    oom = torch.cuda.OutOfMemoryError
    for batch_size in ("auto", 4):
        b = HFBackend.__new__(HFBackend)
        b.settings = ModelSettings(path="x/y", batch_size=batch_size)
        b._on_cuda, b._rows, b._token_budget = True, 64 if batch_size == "auto" else 4, None
        seen: list[int] = []

        def run(batch, seen=seen):
            if len(batch) > 3:
                raise oom("CUDA out of memory")
            seen.extend(batch)

        if batch_size == "auto":
            b._run_batches(list(range(100)), [10] * 100, run, use_budget=False)
            assert seen == list(range(100)) and b._rows == 2
        else:
            with pytest.raises(BackendError, match="out of GPU memory"):
                b._run_batches(list(range(100)), [10] * 100, run, use_budget=False)
