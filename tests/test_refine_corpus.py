"""The self-refinement corpus: targets, ratios, dedupe, trimming, seeding, errors, and that its prompts are exactly the
ones adaptive refinement builds at inference (same template, rendered through a real chat template)."""
from __future__ import annotations

import dataclasses
import json
from collections import Counter

import pytest

from toolace_r.calls import check
from toolace_r.config import RefineConfig
from toolace_r.data import prompts
from toolace_r.data.default_pool import generate_pool
from toolace_r.errors import DataError
from toolace_r.refine_corpus import build_corpus, split_answers


@pytest.fixture(scope="module")
def samples():
    train, _ = generate_pool(60, 0, seed=3)
    return [s for s in train if s.truth]  # samples that want a call (a wrong answer is easy to make)


def _wrong(sample, variant: int) -> str:
    """A plausible wrong answer: the gold call with a changed argument value."""
    calls = json.loads(json.dumps(sample.gold_calls()))
    args = calls[0]["arguments"]
    key = next(iter(args), None)
    if key is None:
        calls[0]["name"] += f"_v{variant}"
    else:
        args[key] = f"wrong{variant}"
    return prompts.render_answer(calls)


def _probe_row(sample, answers: list[str]) -> dict:
    verdicts = [json.dumps(dataclasses.asdict(check(a, sample.tools, sample.truth, sample.category))) for a in answers]
    n_correct = sum(json.loads(v)["valid"] for v in verdicts)
    return {"id": sample.id, "category": sample.category, "k": len(answers), "n_correct": n_correct,
            "pass_rate": n_correct / len(answers), "answers": answers, "verdicts": verdicts}


def _rows(samples, k_right=2, k_wrong=3):
    rows = []
    for s in samples:
        gold = prompts.render_answer(s.gold_calls())
        answers = [gold] * k_right + [_wrong(s, i) for i in range(k_wrong)] + [_wrong(s, 0)]  # one repeat
        rows.append(_probe_row(s, answers))
    return rows


def test_targets_wrong_to_gold_right_unchanged(samples):
    by_id = {s.id: s for s in samples}
    corpus = build_corpus(by_id, _rows(samples), [s.id for s in samples],
                          RefineConfig(wrong_per_sample=1, right_per_sample=1, corpus_fraction=0.9), "compact")
    kinds = Counter(r["kind"] for r in corpus)
    assert kinds == {"direct": len(samples), "refine_wrong": len(samples), "refine_right": len(samples)}
    for row in corpus:
        sample = by_id[row["id"]]
        gold = prompts.render_answer(sample.gold_calls())
        assert set(row) == {"id", "kind", "chat", "completion"}
        if row["kind"] == "direct":
            assert row["chat"] == prompts.chat_messages(sample.tools, sample.messages, "compact")
            assert row["completion"] == gold
            continue
        previous = row["chat"][-2]["content"]
        assert row["chat"] == prompts.refine_messages(sample.tools, sample.messages, previous, "compact")
        assert row["chat"][-1] == {"role": "user", "content": prompts.REFINE_INSTRUCTION}
        if row["kind"] == "refine_wrong":
            assert previous != gold and row["completion"] == gold
            assert not check(previous, sample.tools, sample.truth, sample.category).valid
        else:
            assert row["completion"] == previous
            assert check(previous, sample.tools, sample.truth, sample.category).valid


def test_ratios_and_distinct_previous_answers(samples):
    by_id = {s.id: s for s in samples}
    cfg = RefineConfig(wrong_per_sample=5, right_per_sample=0, corpus_fraction=0.9)
    corpus = build_corpus(by_id, _rows(samples), [s.id for s in samples], cfg, "compact")
    per_id = Counter(r["id"] for r in corpus if r["kind"] == "refine_wrong")
    # 4 wrong answers were sampled per id but only 3 are distinct; no refine_right rows were asked for
    assert set(per_id.values()) == {3}
    assert not [r for r in corpus if r["kind"] == "refine_right"]
    for sid in per_id:
        previous = [r["chat"][-2]["content"] for r in corpus if r["id"] == sid and r["kind"] == "refine_wrong"]
        assert len(previous) == len(set(previous))


def test_corpus_fraction_caps_refinement_rows_and_keeps_the_mix(samples):
    by_id = {s.id: s for s in samples}
    ids = [s.id for s in samples]
    cfg = RefineConfig(wrong_per_sample=3, right_per_sample=1, corpus_fraction=0.5)
    corpus = build_corpus(by_id, _rows(samples), ids, cfg, "compact")
    kinds = Counter(r["kind"] for r in corpus)
    refine = kinds["refine_wrong"] + kinds["refine_right"]
    assert refine == len(ids)  # 4 per id were available; at most half of the corpus may be refinement rows
    assert abs(kinds["refine_wrong"] / refine - 0.75) < 0.05
    small = build_corpus(by_id, _rows(samples), ids, RefineConfig(wrong_per_sample=3, corpus_fraction=0.2), "compact")
    assert sum(r["kind"] != "direct" for r in small) == int(0.25 * len(ids))


def test_seeded_and_independent_of_input_order(samples):
    by_id = {s.id: s for s in samples}
    ids = [s.id for s in samples]
    rows = _rows(samples)
    cfg = RefineConfig(wrong_per_sample=1, right_per_sample=1, corpus_fraction=0.4, seed=7)
    a = build_corpus(by_id, rows, ids, cfg, "compact")
    b = build_corpus(by_id, list(reversed(rows)), ids, cfg, "compact")
    assert a == b
    c = build_corpus(by_id, rows, ids, RefineConfig(wrong_per_sample=1, right_per_sample=1, corpus_fraction=0.4,
                                                    seed=8), "compact")
    assert c != a and len(c) == len(a)


def test_corpus_off_unprobed_ids_and_no_call_answers(samples):
    by_id = {s.id: s for s in samples}
    ids = [s.id for s in samples]
    rows = _rows(samples)
    only_direct = build_corpus(by_id, rows, ids, RefineConfig(corpus=False), "toolace")
    assert [r["kind"] for r in only_direct] == ["direct"] * len(ids)
    partial = build_corpus(by_id, rows[:3], ids, RefineConfig(corpus_fraction=0.9), "toolace")
    assert {r["id"] for r in partial if r["kind"] != "direct"} == set(ids[:3])
    # an irrelevance sample: the no-call phrase is the right answer, a call is wrong
    irr = dataclasses.replace(samples[0], id="irr", truth=[], category="irrelevance")
    row = _probe_row(irr, [prompts.NO_CALL_ANSWER, prompts.render_answer(samples[0].gold_calls()), ""])
    wrong, right = split_answers(row)
    assert right == [prompts.NO_CALL_ANSWER] and len(wrong) == 1  # the empty answer is dropped
    corpus = build_corpus({"irr": irr}, [row], ["irr"], RefineConfig(corpus_fraction=0.9), "compact")
    assert {r["kind"]: r["completion"] for r in corpus} == {
        "direct": prompts.NO_CALL_ANSWER, "refine_wrong": prompts.NO_CALL_ANSWER, "refine_right": prompts.NO_CALL_ANSWER}


def test_bad_input_names_the_record(samples):
    by_id = {s.id: s for s in samples}
    row = _rows(samples[:1])[0]
    with pytest.raises(DataError, match="not in the pool"):
        build_corpus(by_id, [row], ["nope"], RefineConfig(), "compact")
    bad = dict(row, verdicts=row["verdicts"][:-1])
    with pytest.raises(DataError, match=samples[0].id):
        build_corpus(by_id, [bad], [samples[0].id], RefineConfig(), "compact")
    broken = dict(row, verdicts=["{not json"] * len(row["answers"]))
    with pytest.raises(DataError, match=samples[0].id):
        build_corpus(by_id, [broken], [samples[0].id], RefineConfig(), "compact")
    with pytest.raises(DataError, match="corpus_fraction"):
        build_corpus(by_id, [row], [samples[0].id], RefineConfig(corpus_fraction=1.0), "compact")


def test_template_round_trips_through_the_chat_template(samples):
    """Training renders row["chat"] with the tokenizer's chat template; inference renders the refinement prompt with
    prompts.render_prompt. They must be the same text, and round r's prompt must extend round 1's prompt + answer
    (that is what prefix reuse relies on)."""
    from toolace_r.models import train_tiny_tokenizer

    by_id = {s.id: s for s in samples}
    texts = [" ".join(m["content"] for m in prompts.refine_messages(s.tools, s.messages, "x", "toolace")) for s in samples]
    tok = train_tiny_tokenizer(texts, vocab_size=600)
    corpus = build_corpus(by_id, _rows(samples[:5]), [s.id for s in samples[:5]],
                          RefineConfig(corpus_fraction=0.9), "toolace")
    for row in corpus:
        sample = by_id[row["id"]]
        train_prompt = prompts.prompt_text(tok, row["chat"])
        first = prompts.render_prompt(tok, sample.tools, sample.messages, "toolace")
        if row["kind"] == "direct":
            assert train_prompt == first
            continue
        previous = row["chat"][-2]["content"]
        assert train_prompt == prompts.render_prompt(tok, sample.tools, sample.messages, "toolace", previous)
        assert train_prompt.startswith(first + previous + tok.eos_token)
        assert prompts.REFINE_INSTRUCTION in train_prompt[len(first):]
        # the text survives tokenisation: decoding the tokens gives the prompt back
        ids = tok(train_prompt, add_special_tokens=False)["input_ids"]
        assert tok.decode(ids) == train_prompt
