"""The self-refinement corpus: targets, ratios, dedupe, trimming, seeding, errors, and that its prompts are exactly the
ones adaptive refinement builds at inference (same template, rendered through a real chat template). The probe rows are
judged as the probe judges by default (BFCL's decoder, eval.decoder), and a right answer's "keep" target is the
canonical rendering of the calls that decoder read."""
from __future__ import annotations

import dataclasses
import json
from collections import Counter

import pytest

from toolace_r.calls import check, parse_calls
from toolace_r.config import Config, RefineConfig
from toolace_r.data import prompts
from toolace_r.data.default_pool import generate_pool
from toolace_r.errors import DataError
from toolace_r.refine_corpus import build_corpus, keep_target, split_answers

DECODER = Config().probe.decoder  # what the probe judges with by default: BFCL's decoder (test_config checks it)


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


def _probe_row(sample, answers: list[str], decoder: str = DECODER) -> dict:
    """A probe result row whose verdicts are the probe's own judgement (calls.check with `decoder`)."""
    verdicts = [json.dumps(dataclasses.asdict(check(a, sample.tools, sample.truth, sample.category, decoder)))
                for a in answers]
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
            assert not check(previous, sample.tools, sample.truth, sample.category, DECODER).valid
        else:  # the right answer here is the canonical gold text: keeping it repeats it
            assert row["completion"] == previous == keep_target(previous, DECODER, sample.tools)
            assert check(previous, sample.tools, sample.truth, sample.category, DECODER).valid


def test_confirm_mode_keeps_a_right_answer_with_the_confirmation_phrase(samples):
    """refine.keep_answer=confirm: the same rows, asked with the confirm instruction; a right previous answer's
    target is the confirmation phrase, a wrong one's still the gold answer."""
    by_id = {s.id: s for s in samples}
    cfg = RefineConfig(wrong_per_sample=1, right_per_sample=1, corpus_fraction=0.9)
    repeat = build_corpus(by_id, _rows(samples), list(by_id), cfg, "compact")
    confirm = build_corpus(by_id, _rows(samples), list(by_id), dataclasses.replace(cfg, keep_answer="confirm"),
                           "compact")
    assert [(r["id"], r["kind"]) for r in confirm] == [(r["id"], r["kind"]) for r in repeat]
    for old, row in zip(repeat, confirm):
        if row["kind"] == "direct":
            assert row == old
            continue
        previous = row["chat"][-2]["content"]
        assert row["chat"] == prompts.refine_messages(by_id[row["id"]].tools, by_id[row["id"]].messages, previous,
                                                      "compact", "confirm")
        assert row["chat"][-1] == {"role": "user", "content": prompts.CONFIRM_INSTRUCTION}
        assert row["chat"][:-1] == old["chat"][:-1]
        expected = prompts.CONFIRM_ANSWER if row["kind"] == "refine_right" else old["completion"]
        assert row["completion"] == expected


def _written(calls, *, spaced=False, quote='"', reverse=False, brackets=True) -> str:
    """The calls written by hand in a form other than render_answer's: spaces around `=` and `,`, single-quoted
    strings, keywords in reverse order, no outer brackets."""
    def value(v):
        return repr(v) if quote == "'" else json.dumps(v) if isinstance(v, str) else repr(v)

    sep, eq = (" , ", " = ") if spaced else (", ", "=")
    parts = []
    for c in calls:
        items = list(c["arguments"].items())[::-1 if reverse else 1]
        parts.append(f"{c['name']}(" + sep.join(f"{k}{eq}{value(v)}" for k, v in items) + ")")
    text = sep.join(parts)
    return f"[{text}]" if brackets else text


def test_a_right_answer_is_kept_in_its_canonical_form(samples):
    """A right answer written in a form the judge accepts but render_answer does not write (extra spaces, single
    quotes, another keyword order, no outer brackets) keeps as the canonical rendering of the calls the judge read —
    the gold text here, as the gold calls are in schema order — never verbatim. The previous answer in the prompt
    stays as the model wrote it."""
    many = [s for s in samples if any(len(c["arguments"]) >= 2 for c in s.gold_calls())][:8]
    quoted = [s for s in samples if any(isinstance(v, str) for c in s.gold_calls() for v in c["arguments"].values())]
    assert len(many) >= 3 and quoted
    forms = [dict(spaced=True), dict(quote="'"), dict(reverse=True), dict(brackets=False),
             dict(spaced=True, quote="'", reverse=True, brackets=False)]
    checked = 0
    for sample in {s.id: s for s in many + quoted[:3]}.values():
        gold = prompts.render_answer(sample.gold_calls())
        for form in forms:
            written = _written(sample.gold_calls(), **form)
            if written == gold:
                continue  # e.g. single quotes on a call without string values, one keyword reversed
            assert check(written, sample.tools, sample.truth, sample.category, DECODER).valid, written
            assert keep_target(written, DECODER, sample.tools) == gold
            row = _probe_row(sample, [written, _wrong(sample, 0)])
            corpus = build_corpus({sample.id: sample}, [row], [sample.id],
                                  RefineConfig(wrong_per_sample=0, right_per_sample=1, corpus_fraction=0.9), "compact",
                                  decoder=DECODER)
            (keep,) = [r for r in corpus if r["kind"] == "refine_right"]
            assert keep["chat"][-2]["content"] == written and keep["completion"] == gold
            checked += 1
    assert checked >= 3 * len(forms)
    # without the schema the calls are rendered in the order they were written; the format is still canonical
    reverse = next(s for s in many if len(s.gold_calls()) == 1)
    call = json.loads(json.dumps(reverse.gold_calls()[0]))
    call["arguments"] = dict(reversed(list(call["arguments"].items())))
    written = _written(reverse.gold_calls(), spaced=True, quote="'", reverse=True)
    assert keep_target(written, DECODER) == prompts.render_answer([call]) != written


def test_keep_targets_are_read_by_the_judges_decoder(samples):
    """The keep target is what the decoder the probe judged with read: under BFCL's decoder a right no-call answer
    (an irrelevance item's prose, which BFCL cannot decode) keeps as NO_CALL_ANSWER; an answer only the lenient decoder
    reads (a ```python fence) is wrong to the default probe — a refine_wrong row towards the gold, never a "keep" —
    and a probe set to the lenient decoder keeps it as the canonical calls, a form BFCL's decoder accepts."""
    irr = dataclasses.replace(samples[0], id="irr", truth=[], category="irrelevance")
    prose = "Sorry, no tool here can look that up."
    assert check(prose, irr.tools, irr.truth, irr.category, DECODER).valid
    assert keep_target(prose, DECODER, irr.tools) == prompts.NO_CALL_ANSWER
    corpus = build_corpus({"irr": irr}, [_probe_row(irr, [prose])], ["irr"], RefineConfig(corpus_fraction=0.9),
                          "compact", decoder=DECODER)
    assert [(r["kind"], r["completion"]) for r in corpus if r["kind"] != "direct"] == [
        ("refine_right", prompts.NO_CALL_ANSWER)]

    sample = samples[0]
    gold = prompts.render_answer(sample.gold_calls())
    fenced = f"```python\n{gold}\n```"
    assert check(fenced, sample.tools, sample.truth, sample.category, "lenient").valid
    row = _probe_row(sample, [fenced])  # the default probe's judgement
    assert split_answers(row) == ([fenced], [])
    corpus = build_corpus({sample.id: sample}, [row], [sample.id], RefineConfig(corpus_fraction=0.9), "compact",
                          decoder=DECODER)
    assert [(r["kind"], r["completion"]) for r in corpus if r["kind"] != "direct"] == [("refine_wrong", gold)]
    lenient = build_corpus({sample.id: sample}, [_probe_row(sample, [fenced], "lenient")], [sample.id],
                           RefineConfig(corpus_fraction=0.9), "compact", decoder="lenient")
    (keep,) = [r for r in lenient if r["kind"] == "refine_right"]
    assert keep["completion"] == gold and parse_calls(keep["completion"], "bfcl") == sample.gold_calls()


def test_the_drivers_corpus_stage_keeps_with_the_probes_decoder(samples, tmp_path):
    """driver.corpus_stage hands probe.decoder (by default eval.decoder) to build_corpus: with the default config a
    fenced right answer is a wrong one; with eval.decoder=lenient it keeps, canonically written."""
    from toolace_r.config import load_config
    from toolace_r.driver import corpus_stage
    from toolace_r.io import read_jsonl

    sample = samples[0]
    gold = prompts.render_answer(sample.gold_calls())
    fenced = f"```python\n{gold}\n```"
    for overrides, kinds in (([], ["refine_wrong"]), (["eval.decoder=lenient"], ["refine_right"])):
        cfg = load_config(None, overrides + ["refine.corpus_fraction=0.9"])
        out = tmp_path / cfg.probe.decoder
        out.mkdir()
        result = corpus_stage(cfg, {sample.id: sample}, [_probe_row(sample, [fenced], cfg.probe.decoder)],
                              [sample.id], "compact", out)
        rows = [r for r in read_jsonl(result["path"]) if r["kind"] != "direct"]
        assert [r["kind"] for r in rows] == kinds and [r["completion"] for r in rows] == [gold]


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
