"""The built-in pool: deterministic, varied, leak-free split, and every reference answer passes the checker."""
from __future__ import annotations

import collections
import re
import time

import pytest

from toolace_r.calls import check, parse_calls
from toolace_r.config import BuiltinPoolConfig
from toolace_r.data.default_pool import TOOLS, TOOLS_BY_NAME, generate_pool
from toolace_r.data.pool import load_builtin
from toolace_r.data.prompts import NO_CALL_ANSWER, render_answer
from toolace_r.data.schema import CATEGORIES


@pytest.fixture(scope="module")
def pool():
    return generate_pool(4000, 200, seed=0)


def test_generation_is_fast_and_sized():
    start = time.process_time()  # CPU time: the shared CI machine's load must not fail this (~0.3 s idle)
    train, heldout = load_builtin(BuiltinPoolConfig(n_train=4000, n_heldout=200, seed=3))
    assert time.process_time() - start < 2.0
    assert len(train) == 4000 and len(heldout) == 200
    ids = [s.id for s in train + heldout]
    assert len(set(ids)) == len(ids)


def test_deterministic_per_seed_and_heldout_independent_of_n_train(pool):
    train, heldout = pool
    again_train, again_heldout = generate_pool(4000, 200, seed=0)
    assert [s.to_row() for s in train] == [s.to_row() for s in again_train]
    assert [s.to_row() for s in heldout] == [s.to_row() for s in again_heldout]
    _, heldout_small_train = generate_pool(100, 200, seed=0)
    assert [s.to_row() for s in heldout_small_train] == [s.to_row() for s in heldout]
    other_train, _ = generate_pool(4000, 200, seed=1)
    assert [s.messages for s in other_train[:50]] != [s.messages for s in train[:50]]


def test_catalogue_covers_domains_and_parameter_kinds():
    assert len(TOOLS) >= 30
    assert len({t.domain for t in TOOLS}) >= 8
    types = collections.Counter()
    optional = 0
    for tool in TOOLS:
        schema = tool.schema()["parameters"]
        for name, prop in schema["properties"].items():
            types[prop["type"]] += 1
            types["enum"] += "enum" in prop
            types["nested"] += "properties" in prop
            optional += name not in schema["required"]
    for kind in ("string", "integer", "float", "boolean", "array", "dict", "enum", "nested"):
        assert types[kind] > 0, kind
    assert optional >= 20
    # each tool has several paraphrase templates, and each template only names the tool's own parameters
    for tool in TOOLS:
        assert len(tool.templates) >= 3, tool.name
        names = {p.name for p in tool.params}
        for text, fixed in tool.templates:
            slots = {s.split(".")[0] for s in re.findall(r"\{([\w.]+)\}", text)}
            assert slots | set(fixed) <= names, (tool.name, text)


def test_category_mix_leaves_room_for_selection(pool):
    train, heldout = pool
    counts = collections.Counter(s.category for s in train)
    assert set(counts) == set(CATEGORIES)
    for category in CATEGORIES:
        assert counts[category] >= 0.1 * len(train), counts  # every category is well represented
    assert {s.category for s in heldout} == set(CATEGORIES)


def test_structure_per_category(pool):
    train, _ = pool
    for s in train:
        offered = {t["name"] for t in s.tools}
        called = [next(iter(entry)) for entry in s.truth]
        assert s.messages[-1]["role"] == "user" and s.messages[-1]["content"]
        if s.category == "simple":
            assert len(s.tools) == 1 and len(called) == 1
        elif s.category == "multiple":
            assert 3 <= len(s.tools) <= 5 and len(called) == 1 and called[0] in offered
        elif s.category == "parallel":
            assert len(s.tools) == 1 and len(called) >= 2 and len(set(called)) == 1
        elif s.category == "parallel_multiple":
            assert 3 <= len(s.tools) <= 5 and len(set(called)) >= 2 and set(called) <= offered
        else:  # irrelevance: the requested capability is not on offer
            assert s.category == "irrelevance" and s.truth == [] and 1 <= len(s.tools) <= 4


def test_irrelevance_requests_are_for_a_tool_not_offered(pool):
    """The request of an irrelevance case comes from some tool's template; that tool's capability group is absent."""
    train, _ = pool
    groups = {t.name: t.group for t in TOOLS}
    for s in [s for s in train if s.category == "irrelevance"][:200]:
        text = s.messages[-1]["content"]
        offered_groups = {groups[t["name"]] for t in s.tools}
        sources = [t for t in TOOLS if any(_template_matches(tpl, text) for tpl, _ in t.templates)]
        assert sources, text
        assert any(t.group not in offered_groups for t in sources), text


def _template_matches(template: str, text: str) -> bool:
    pattern = re.escape(template)
    pattern = re.sub(r"\\\{[\w\\.]+\\\}", ".+?", pattern)  # re.escape turns {a.b} into \{a\.b\}
    return re.fullmatch(pattern, text) is not None


def test_reference_answers_pass_the_checker_and_wrong_ones_fail(pool):
    train, heldout = pool
    for s in train + heldout:
        answer = render_answer(s.gold_calls())
        verdict = check(answer, s.tools, s.truth, s.category)
        assert verdict.valid, (s.id, answer, verdict)
        if s.truth:
            assert not check(NO_CALL_ANSWER, s.tools, s.truth, s.category).valid
            assert parse_calls(answer) == s.gold_calls()
        else:
            wrong = [{"name": s.tools[0]["name"], "arguments": {}}]
            assert not check(render_answer(wrong), s.tools, s.truth, s.category).valid


def test_truth_matches_the_schema(pool):
    train, _ = pool
    for s in train[:1000]:
        schemas = {t["name"]: t["parameters"] for t in s.tools}
        for entry in s.truth:
            ((name, params),) = entry.items()
            schema = schemas[name]
            assert set(params) <= set(schema["properties"])
            assert set(schema["required"]) <= set(params)
            for pname, values in params.items():
                if pname in schema["required"]:
                    assert "" not in values


def test_values_vary(pool):
    train, _ = pool
    texts = [s.messages[-1]["content"] for s in train]
    assert len(set(texts)) > 0.9 * len(texts)  # small value spaces (7 rooms, 8 genres) recur with other tool sets
    per_tool = collections.defaultdict(set)
    for s in train:
        for entry in s.truth:
            ((name, params),) = entry.items()
            per_tool[name].add(repr(sorted(params.items())))
    assert all(len(v) >= 20 for v in per_tool.values()), {k: len(v) for k, v in per_tool.items()}
    assert set(per_tool) == set(TOOLS_BY_NAME)


def test_no_request_leaks_from_heldout_into_train(pool):
    """A single-request text fixes (tool, template, values); none of the held-out ones may recur in train, not
    even inside a joined parallel request or as an irrelevance case."""
    train, heldout = pool
    single = ("simple", "multiple", "irrelevance")
    held_texts = {s.messages[-1]["content"] for s in heldout if s.category in single}
    assert len(held_texts) > 100
    train_texts = [s.messages[-1]["content"] for s in train]
    assert not held_texts & {t for s, t in zip(train, train_texts) if s.category in single}
    joined = [t for s, t in zip(train, train_texts) if s.category not in single]
    leaks = [h for h in held_texts if any(h in t for t in joined)]
    # a held-out request can only reappear inside a joined one as a substring when the joiner keeps its case
    assert len(leaks) == 0, leaks[:3]


def test_compact_prompts_stay_short(pool, tiny_model_dir):
    """With the compact prompt style the mean prompt stays in the few-hundred-token range (STACK.md)."""
    from transformers import AutoTokenizer

    from toolace_r.data.prompts import chat_messages, prompt_text

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    train, _ = pool
    lengths = [len(tok(prompt_text(tok, chat_messages(s.tools, s.messages, "compact")))["input_ids"])
               for s in train[:300]]
    mean = sum(lengths) / len(lengths)
    # the session tiny model has a 512-token vocabulary (longer encodings than the demo's 2048), hence the margin
    assert 100 < mean < 600, mean


def test_mix_is_configurable():
    from toolace_r.config import load_config
    from toolace_r.errors import ConfigError

    cfg = load_config(None, ["pool.builtin.n_train=600", "pool.builtin.mix.irrelevance=0",
                             "pool.builtin.mix.parallel=1.0"])
    train, heldout = load_builtin(cfg.pool.builtin)
    counts = collections.Counter(s.category for s in train + heldout)
    assert counts["irrelevance"] == 0 and counts["parallel"] == max(counts.values())
    with pytest.raises(ConfigError, match=r"pool.builtin.mix.*unknown \['live'\]"):
        generate_pool(10, 10, mix={"live": 1.0})
    with pytest.raises(ConfigError, match="pool.builtin.mix"):
        generate_pool(10, 10, mix={"simple": 0.0})
