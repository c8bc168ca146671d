"""load_pool / load_eval_spec / pool_texts: the entry points the driver, eval and tiny-model use."""
from __future__ import annotations

import json

import pytest

from toolace_r.config import BuiltinPoolConfig, PoolConfig
from toolace_r.data.pool import load_builtin, load_eval_spec, load_pool, pool_texts
from toolace_r.data.prompts import NO_CALL_ANSWER, REFINE_INSTRUCTION
from toolace_r.errors import DataError
from toolace_r.io import write_samples

SMALL = BuiltinPoolConfig(n_train=300, n_heldout=60, seed=0)


def test_load_pool_builtin_is_the_train_split():
    train, heldout = load_builtin(SMALL)
    pool = load_pool(PoolConfig(path="builtin", builtin=SMALL))
    assert [s.id for s in pool] == [s.id for s in train]
    assert not {s.id for s in pool} & {s.id for s in heldout}
    assert len(load_pool(PoolConfig(path="builtin", builtin=SMALL, limit=25))) == 25


def test_load_pool_from_file_with_skip(tmp_path, caplog):
    train, _ = load_builtin(SMALL)
    path = tmp_path / "pool.jsonl"
    write_samples(path, train[:20])
    with path.open("a") as f:
        f.write(json.dumps({"id": "broken", "tools": "[]", "messages": "[]"}) + "\n")
    with pytest.raises(DataError, match=r"record 20, field 'truth'"):
        load_pool(PoolConfig(path=str(path)))
    pool = load_pool(PoolConfig(path=str(path), on_error="skip"))
    assert [s.to_row() for s in pool] == [s.to_row() for s in train[:20]]
    assert "skipped 1 bad records" in caplog.text


def test_load_pool_file_without_calls_is_an_error(tmp_path):
    path = tmp_path / "chat.json"
    path.write_text(json.dumps([{"conversations": [{"from": "human", "value": "hi"},
                                                   {"from": "gpt", "value": "hello"}], "tools": "[]"}]))
    with pytest.raises(DataError, match="no samples found"):
        load_pool(PoolConfig(path=str(path)))


def test_eval_spec_builtin_groups_heldout_by_category():
    groups = load_eval_spec("builtin", builtin=SMALL)
    _, heldout = load_builtin(SMALL)
    assert sum(len(v) for v in groups.values()) == len(heldout)
    assert list(groups)[0] == "simple"
    for category, samples in groups.items():
        assert all(s.category == category for s in samples)
    limited = load_eval_spec("builtin", limit=3, builtin=SMALL)
    assert all(len(v) <= 3 for v in limited.values())


def test_eval_spec_bfcl(shared_data):
    groups = load_eval_spec(f"bfcl:{shared_data / 'bfcl_v3'}", limit=5)
    assert list(groups) == ["simple", "java", "javascript", "multiple", "parallel", "parallel_multiple",
                            "irrelevance"]  # every AST category present (toolace_r.data.bfcl_dir)
    assert all(len(v) == 5 for v in groups.values())
    for category, samples in groups.items():  # each key read its own file ("multiple" ≠ "parallel_multiple")
        assert all(s.id.startswith(category + "_") and s.category == category for s in samples), category
    assert groups["irrelevance"][0].truth == []
    only = load_eval_spec(f"bfcl:{shared_data / 'bfcl_v3'}:java,parallel")
    assert list(only) == ["java", "parallel"] and len(only["java"]) == 100
    with pytest.raises(DataError, match="no BFCL question file for category 'live_simple'"):
        load_eval_spec(f"bfcl:{shared_data / 'bfcl_v3'}:live_simple")
    with pytest.raises(DataError, match="does not exist"):
        load_eval_spec("bfcl:/nonexistent/bfcl")


def test_eval_spec_apibank(shared_data):
    groups = load_eval_spec(f"apibank:{shared_data / 'apibank'}")
    assert {k: len(v) for k, v in groups.items()} == {"apibank_l1": 399, "apibank_l2": 127}
    one = load_eval_spec(f"apibank:{shared_data / 'apibank' / 'apibank_l2.json'}", limit=7)
    assert list(one) == ["apibank_l2"] and len(one["apibank_l2"]) == 7


def test_eval_spec_plain_file(shared_data):
    groups = load_eval_spec(str(shared_data / "pools" / "rlla_4k_test.jsonl"))
    assert sum(len(v) for v in groups.values()) == 80
    assert "irrelevance" in groups and "parallel_multiple" in groups


def test_pool_texts_cover_prompts_and_answers():
    train, _ = load_builtin(BuiltinPoolConfig(n_train=5, n_heldout=1))
    texts = list(pool_texts(train, "compact"))
    assert REFINE_INSTRUCTION in texts and NO_CALL_ANSWER in texts
    joined = "\n".join(texts)
    for s in train:
        assert s.messages[-1]["content"] in joined
        for tool in s.tools:
            assert tool["name"] in joined
