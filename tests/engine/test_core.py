"""The decoding engine (toolace_r.engine.core): continuous batching that answers exactly as decoding each prompt alone
does — greedy answers equal `model.generate`'s — while requests join and leave between steps, rows are reused, the
cache budget bounds the batch, and a request can be cancelled mid-batch."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from conftest import sharp_llama
from toolace_r.engine import Engine, Request, Round, Sampling

EOS = (1, 2, 3)
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def model():
    model = sharp_llama(3, vocab_size=48, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                        eos_token_id=list(EOS), pad_token_id=0)
    model.generation_config.eos_token_id = list(EOS)
    return model


TOKENIZER = SimpleNamespace(eos_token_id=1, pad_token_id=0)  # the engine works on token ids only


def _prompts(n: int, seed: int = 0) -> list[list[int]]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randint(4, 48, (int(torch.randint(3, 30, (1,), generator=gen)),), generator=gen).tolist()
            for _ in range(n)]


def _alone(model, prompt: list[int], max_new_tokens: int) -> list[int]:
    out = model.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                         max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=0, eos_token_id=list(EOS))
    ids = out[0, len(prompt):].tolist()
    return ids[:next((i + 1 for i, t in enumerate(ids) if t in EOS), len(ids))]


def _request(prompt: list[int], max_new_tokens: int = 12, **kw) -> Request:
    return Request(prompt=prompt, sampling=Sampling(max_new_tokens=max_new_tokens, **{
        k: kw.pop(k) for k in ("temperature", "top_p", "seed") if k in kw}), **kw)


@torch.no_grad()
def test_greedy_answers_equal_generate_while_requests_join_and_leave(model):
    """Requests arrive over time into a 3-row engine: each answer equals model.generate on its prompt alone."""
    prompts = _prompts(9)
    limits = [4 + (i * 5) % 17 for i in range(9)]
    engine = Engine(model, TOKENIZER, max_rows=3)
    requests = [_request(p, m) for p, m in zip(prompts, limits)]
    for r in requests[:4]:
        engine.submit(r)
    steps = 0
    while engine.step():
        steps += 1
        if steps in (2, 5, 9, 10, 11):  # later arrivals: they join a running batch
            engine.submit(requests[4 + (2, 5, 9, 10, 11).index(steps)])
    for r, p, m in zip(requests, prompts, limits):
        assert r.done and r.answers[0] == [_alone(model, p, m)]


@torch.no_grad()
def test_a_finished_row_is_taken_by_the_next_request_at_once(model):
    """Join/leave order and slot reuse: with two rows, a short request leaves and the waiting one starts at the next
    step in its row, while the long request is still decoding; the cache never holds more than two rows."""
    engine = Engine(model, TOKENIZER, max_rows=2)
    first_token: dict[str, int] = {}
    finished: dict[str, int] = {}
    step = 0

    def track(name: str) -> dict:
        def on_tokens(j, rnd, ids):
            first_token.setdefault(name, step)
            return False

        def on_done(request):
            finished[name] = step
        return dict(on_tokens=on_tokens, on_done=on_done)

    long_ = _request(_prompts(1, 1)[0], 40, **track("long"))
    short = _request(_prompts(1, 2)[0], 2, **track("short"))
    waiting = _request(_prompts(1, 3)[0], 5, **track("waiting"))
    for r in (long_, short, waiting):
        engine.submit(r)
    rows_seen = set()
    while engine.step():
        step += 1
        rows_seen.add(engine.cache.rows)
        if step == 1:
            assert "waiting" not in first_token  # no free row yet
    assert max(rows_seen) == 2
    assert finished["short"] < first_token["waiting"] <= finished["short"] + 1 < finished["long"]
    assert finished["waiting"] < finished["long"]  # it left before the request that was there first


@torch.no_grad()
def test_follow_up_rounds_prefilled_beside_decoding_rows_answer_as_their_prompts_alone(model):
    """Follow-up rounds (a prompt that extends the row's sequence, the previous answer as a draft) of several requests
    are prefilled, apart from the engine's cache, while other requests decode there: every round's answer equals
    generate on that round's whole prompt alone, and the decoding rows' answers are unchanged. Prefilled apart, the
    decoding rows gain no hole columns for the segments: the prefill passes never run on the engine's cache."""
    prompts = _prompts(6, 11)
    extra = list(range(4, 24))  # a 20-token refinement instruction
    asked: dict[tuple[int, int], list[int]] = {}

    def follow(i: int):
        def next_round(j, rnd, ids, stopped):
            if rnd == 3:
                return None
            asked[i, rnd + 1] = (asked.get((i, rnd)) or prompts[i]) + ids + extra
            return Round(prompt=asked[i, rnd + 1], draft=ids if rnd == 1 else ids[:1] + [5, 6])
        return next_round

    engine = Engine(model, TOKENIZER)
    requests = [_request(p, 30 if i < 2 else 6, next_round=None if i < 2 else follow(i)) for i, p in enumerate(prompts)]
    main_calls = []
    feed = type(engine.cache).feed

    def counting(cache, *a, **kw):
        main_calls.append((cache is engine.cache, cache.rows))
        return feed(cache, *a, **kw)

    type(engine.cache).feed = counting
    try:
        engine.run(requests)
    finally:
        type(engine.cache).feed = feed
    for i, r in enumerate(requests[2:], 2):
        assert r.answers[0] == [_alone(model, prompts[i], 6)] + [_alone(model, asked[i, k], 6) for k in (2, 3)]
    for i in (0, 1):
        assert requests[i].answers[0] == [_alone(model, prompts[i], 30)]
    prefill_passes = engine.pass_stats["prefill"].passes
    assert prefill_passes >= 1 + 4  # the first prompts, then follow-ups: rounds 2 and 3 of 4 requests, at least
    on_main = sum(1 for is_main, _ in main_calls if is_main)
    assert on_main == engine.pass_stats["decode"].passes + 1  # the first prefill only, into the empty cache


@torch.no_grad()
def test_a_request_failing_in_one_prefill_group_leaves_its_other_groups_and_the_batch_intact(model, monkeypatch):
    """Follow-up rounds of one request fall into two prefill groups; its callback fails in the first group's pass:
    the request fails alone (its other sequence, already grouped, is not prefilled from a row it gave back), and a
    request decoding beside it answers as it would alone."""
    from toolace_r.engine import core

    monkeypatch.setattr(core, "PREFILL_TOKENS", 4)  # every follow-up round in a group of its own
    failing_prompt, other_prompt = _prompts(2, 12)

    def next_round(j, rnd, ids, stopped):
        return Round(prompt=failing_prompt + ids + [4, 5, 6]) if rnd == 1 else None

    def on_tokens(j, rnd, ids):
        if rnd == 2 and j == 0:
            raise RuntimeError("client callback failed")
        return False

    failing = _request(failing_prompt, 3, n=2, next_round=next_round, on_tokens=on_tokens)
    other = _request(other_prompt, 30)
    engine = Engine(model, TOKENIZER)
    engine.run([failing, other])
    assert isinstance(failing.error, RuntimeError) and failing.done
    assert other.error is None and other.answers[0] == [_alone(model, other_prompt, 30)]
    assert engine.cache.rows == 0


@torch.no_grad()
def test_a_request_cancelled_mid_batch_stops_and_the_others_answer_as_before(model):
    prompts = _prompts(4, 5)
    reference = Engine(model, TOKENIZER).run([_request(p, 20) for p in prompts])
    engine = Engine(model, TOKENIZER)
    requests = [_request(p, 20) for p in prompts]
    for r in requests:
        engine.submit(r)
    for _ in range(3):
        engine.step()
    engine.cancel(requests[1])
    while engine.step():
        pass
    assert requests[1].done and requests[1].stopped == [True] and requests[1].answers == [[]]
    for i in (0, 2, 3):
        assert requests[i].answers == reference[i].answers
    assert engine.cache.rows == 0  # every row given back


@torch.no_grad()
def test_on_tokens_streams_every_token_once_and_can_stop_a_sequence(model):
    prompt = _prompts(1, 6)[0]
    streamed: list[int] = []
    full = Engine(model, TOKENIZER).run([_request(prompt, 10, on_tokens=lambda j, r, ids: streamed.extend(ids))])[0]
    assert streamed == full.answers[0][0]
    stop_after = _request(prompt, 10, on_tokens=lambda j, r, ids: True)
    Engine(model, TOKENIZER).run([stop_after])
    assert stop_after.answers[0] == [full.answers[0][0][:1]] and stop_after.stopped == [True]


@torch.no_grad()
def test_sampled_answers_depend_on_their_seed_only(model):
    """A request's samples do not depend on its batch neighbours; n sequences from one prefill equal n requests
    seeded seed, seed + 1, ... ."""
    prompts = _prompts(5, 7)
    kw = dict(temperature=1.0, top_p=0.9)
    together = Engine(model, TOKENIZER).run([_request(p, 10, n=3, seed=100 * i, **kw) for i, p in enumerate(prompts)])
    alone = [Engine(model, TOKENIZER).run([_request(p, 10, seed=100 * i + j, **kw)])[0].answers[0]
             for i, p in enumerate(prompts) for j in range(3)]
    assert [a for r in together for a in r.answers] == alone
    assert len({tuple(a[0]) for a in alone}) > 5  # really sampled


@torch.no_grad()
def test_the_cache_budget_bounds_the_rows_and_everything_still_finishes(model):
    prompts = [(p * 20)[:20] for p in _prompts(6, 8)]
    engine = Engine(model, TOKENIZER, kv_cache_tokens=2 * (20 + 8))  # each row reserves prompt + max_new_tokens
    requests = [_request(p, 8) for p in prompts]
    rows = []
    for r in requests:
        engine.submit(r)
    while engine.step():
        rows.append(sum(1 for r in requests if r.started and not r.done))
    assert max(rows) == 2 and all(r.done for r in requests)
    for r, p in zip(requests, prompts):
        assert r.answers[0] == [_alone(model, p, 8)]


def test_a_prompt_past_the_context_is_refused_by_name(model):
    with pytest.raises(ValueError, match="exceeds the model's context of 256"):
        Engine(model, TOKENIZER).submit(_request([5] * 250, 10))
