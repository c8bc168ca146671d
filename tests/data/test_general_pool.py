"""The general corpus the tiny base is pre-trained on: disjoint from the target pool, fresh tools, right answers."""
from __future__ import annotations

import itertools
from collections import Counter

from toolace_r.calls import check
from toolace_r.data.default_pool import TOOLS, generate_pool
from toolace_r.data.general_pool import general_samples
from toolace_r.data.prompts import render_answer


def _take(n: int, seed: int = 0):
    return list(itertools.islice(general_samples(seed), n))


def test_no_target_tool_and_no_target_request_occurs():
    samples = _take(3000)
    general_tools = {t["name"] for s in samples for t in s.tools}
    assert not general_tools & {t.name for t in TOOLS}
    train, heldout = generate_pool(500, 200)
    target_texts = {s.messages[0]["content"] for s in train + heldout}
    assert not {s.messages[0]["content"] for s in samples} & target_texts


def test_tools_are_made_up_per_sample_so_names_must_be_copied():
    samples = _take(2000)
    names = Counter(t["name"] for s in samples for t in s.tools)
    assert len(names) > 0.8 * sum(names.values())  # almost every offered tool is new


def test_every_category_appears_and_its_gold_answer_passes_the_checker():
    samples = _take(600)
    assert set(Counter(s.category for s in samples)) == {"simple", "multiple", "parallel", "parallel_multiple",
                                                         "irrelevance"}
    for s in samples:
        verdict = check(render_answer(s.gold_calls()), s.tools, s.truth, s.category, "bfcl")
        assert verdict.valid, (s.id, s.messages, s.truth, verdict.reason)


def test_the_stream_is_deterministic_for_a_seed():
    assert [s.messages for s in _take(50, 3)] == [s.messages for s in _take(50, 3)]
    assert [s.messages for s in _take(50, 3)] != [s.messages for s in _take(50, 4)]


def test_natural_samples_use_only_their_domains_and_a_restricted_pool_only_its_own():
    from toolace_r.data.default_pool import TOOLS, natural_samples

    domain_of = {t.name: t.domain for t in TOOLS}
    natural = list(itertools.islice(natural_samples(0, ["finance", "math"]), 300))
    assert {domain_of[t["name"]] for s in natural for t in s.tools} == {"finance", "math"}
    train, heldout = generate_pool(300, 100, domains=["weather", "travel", "news"])
    assert {domain_of[t["name"]] for s in train + heldout for t in s.tools} == {"weather", "travel", "news"}
    for s in natural[:100] + train[:100]:
        assert check(render_answer(s.gold_calls()), s.tools, s.truth, s.category, "bfcl").valid
