"""`acebench:DIR`: ACEBench's data_en layout read as published, prompted and scored as ACEBench does (its summary is
tests/test_acebench_summary.py's). Records here are written in ACEBench's format by the test (data_<category>.json
JSON Lines + possible_answer/); the last tests run on ../shared/data/acebench when it is there."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from toolace_r.data.acebench import SPECIAL, USER_PREFIX
from toolace_r.data.pool import load_eval_spec
from toolace_r.data.schema import Sample
from toolace_r.errors import DataError

WEATHER = {"name": "WeatherReport_get", "description": "Weather for a city.",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"},
                                                           "days": {"type": "integer"}}, "required": ["city"]}}
DISTRACTOR = {"name": "image.convert", "description": "Convert images.",
              "arguments": {"type": "object", "properties": {"src": {"type": "string"}}, "required": ["src"]},
              "results": {"type": "object"}, "tags": ["x"]}


def _write(root: Path, category: str, records: list[dict], answers: list) -> None:
    (root / "possible_answer").mkdir(parents=True, exist_ok=True)
    (root / f"data_{category}.json").write_text("".join(json.dumps(r) + "\n" for r in records))
    (root / "possible_answer" / f"data_{category}.json").write_text(
        "".join(json.dumps({"id": r["id"], "ground_truth": a}) + "\n" for r, a in zip(records, answers)))


def _record(rid: str, question: str = "user: Weather in Oslo for 3 days?\n", **extra) -> dict:
    return {"id": rid, "question": question, "function": [DISTRACTOR, WEATHER], "time": "", **extra}


@pytest.fixture
def data_en(tmp_path) -> Path:
    root = tmp_path / "data_en"
    _write(root, "normal_atom_number", [_record("normal_atom_number_0", time="Today is 2024-05-01.")],
           [{"WeatherReport_get": {"city": "Oslo", "days": 3}}])
    _write(root, "normal_single_turn_parallel_function", [_record("normal_single_turn_parallel_function_0")],
           [{"WeatherReport_get_1": {"city": "Oslo"}, "WeatherReport_get_2": {"city": "Bergen"}}])
    _write(root, "normal_multi_turn_user_switch",
           [_record(f"normal_multi_turn_user_switch_{c}_{t}") for c, t in ((0, 0), (0, 1), (1, 0))],
           [{"WeatherReport_get": {"city": "Oslo"}}] * 3)
    _write(root, "normal_preference", [{k: v for k, v in _record("normal_preference_0").items() if k != "time"}
                                       | {"profile": "{'basic_features': {'UserHomeLocation': 'Oslo'}}"}],
           [{"WeatherReport_get": {"city": "Oslo"}}])
    _write(root, "special_incomplete", [_record("special_incomplete_0", "user: Weather please.")],
           [{"WeatherReport_get": ["city "]}])
    _write(root, "special_error_param", [_record("special_error_param_0", "user: Weather in 12345?")],
           [{"city": ["12345"]}])
    _write(root, "special_irrelevant", [_record("special_irrelevant_0", "user: Book me a flight.")],
           ["Due to the limitations of the function, I cannot solve this problem."])
    _write(root, "agent_multi_step", [_record("agent_multi_step_0")], [[{"MessageApi": {}}]])
    return root


def test_reads_normal_and_special_categories_and_skips_agent(data_en, caplog):
    groups = load_eval_spec(f"acebench:{data_en}")
    assert set(groups) == {"normal_atom_number", "normal_single_turn_parallel_function",
                           "normal_multi_turn_user_switch", "normal_preference", "special_incomplete",
                           "special_error_param", "special_irrelevant"}
    assert "agent_multi_step not evaluated" in caplog.text
    s = groups["normal_atom_number"][0]
    assert [t["name"] for t in s.tools] == ["image.convert", "WeatherReport_get"]
    assert s.tools[0]["parameters"]["properties"] == {"src": {"type": "string"}}  # schema under "arguments"
    assert s.messages[1] == {"role": "user", "content": USER_PREFIX + "user: Weather in Oslo for 3 days?\n"}
    assert s.messages[0]["role"] == "system" and s.messages[0]["content"].endswith("Today is 2024-05-01.")
    assert s.truth == [{"WeatherReport_get": {"city": ["Oslo"], "days": [3]}}]
    assert "Oslo" in groups["normal_preference"][0].messages[0]["content"]  # the profile is in the prompt
    special = groups["special_incomplete"][0]
    assert special.truth == [] and "Missing necessary parameters (key1, key2, ...)" in special.messages[0]["content"]


def test_the_gold_answer_passes_acebench_scoring_and_others_do_not(data_en):
    groups = load_eval_spec(f"acebench:{data_en}")
    for cat, samples in groups.items():
        for s in samples:
            assert s.verdict(s.gold_answer()).valid, (cat, s.gold_answer())
            assert not s.verdict("[image.convert(src='a.png')]").valid, cat
    parallel = groups["normal_single_turn_parallel_function"][0].gold_answer()
    assert parallel.count("WeatherReport_get(") == 2 and "_1" not in parallel
    row = Sample.from_row(groups["special_error_param"][0].to_row())  # the rule survives the Ray Data row
    assert row.scoring["kind"] == "acebench" and row.verdict(row.gold_answer()).valid


def test_categories_by_name_or_group_and_agent_refused(data_en):
    assert set(load_eval_spec(f"acebench:{data_en}:special")) == set(SPECIAL)
    assert set(load_eval_spec(f"acebench:{data_en}:atom_number,irrelevant")) == {"normal_atom_number",
                                                                                 "special_irrelevant"}
    assert set(load_eval_spec(f"acebench:{data_en.parent}:irrelevant")) == {"special_irrelevant"}  # data_all/
    with pytest.raises(DataError, match="sandbox"):
        load_eval_spec(f"acebench:{data_en}:agent")
    with pytest.raises(DataError, match="no ACEBench question file for category 'normal_atom_bool'"):
        load_eval_spec(f"acebench:{data_en}:atom_bool")
    with pytest.raises(DataError, match="unknown ACEBench category"):
        load_eval_spec(f"acebench:{data_en}:nonsense")


def test_bad_records_name_file_record_and_field(tmp_path):
    root = tmp_path / "data_en"
    _write(root, "normal_atom_bool", [_record("normal_atom_bool_0", question=["user: hi"])],
           [{"WeatherReport_get": {"city": "Oslo"}}])
    with pytest.raises(DataError, match=r"data_normal_atom_bool.json, record 0, field 'question'"):
        load_eval_spec(f"acebench:{root}")
    (root / "possible_answer" / "data_normal_atom_bool.json").unlink()
    with pytest.raises(DataError, match="answer file"):
        load_eval_spec(f"acebench:{root}")
    (root / "possible_answer" / "data_normal_atom_bool.json").write_bytes(b'{"id": "\xff\xfe"}\n')
    with pytest.raises(DataError, match=r"data_normal_atom_bool.json: not UTF-8 text"):
        load_eval_spec(f"acebench:{root}")


# The shared records whose ground truth ACEBench's own checker rejects: each has a list of strings with spaces inside
# a dict parameter, and ACEBench squeezes every whitespace out of the answer before decoding (so "time savings"
# becomes "timesavings", which str(['time savings']) never contains). Its own eval code gives the same verdicts.
REJECTED_BY_ACEBENCH = {"normal_atom_object_deep_0", "normal_atom_object_deep_4",
                        "normal_single_turn_parallel_function_3", "normal_single_turn_parallel_function_4"}


def test_shared_acebench_gold_passes_all_but_acebench_own_rejections(shared_data):
    root = shared_data / "acebench" / "data_en"
    if not root.is_dir():
        pytest.skip(f"{root} is absent")
    groups = load_eval_spec(f"acebench:{root}")
    assert set(groups) == {p.stem[len("data_"):] for p in root.glob("data_*.json")}
    rejected = {s.id for samples in groups.values() for s in samples if not s.verdict(s.gold_answer()).valid}
    assert rejected == REJECTED_BY_ACEBENCH


def test_oracle_through_evaluate_writes_the_acebench_summary(data_en, tmp_path):
    """The whole harness in process: ACEBench items judged by their own rule, the summary in metrics.json, and no
    ACEBench overall. Beside another spec, groups carry the `acebench/` prefix and the summary still finds them."""
    from toolace_r.config import load_config
    from toolace_r.evaluate import ORACLE, evaluate

    cfg = load_config(None, ["eval.num_actors=0", "pool.builtin.n_train=20", "pool.builtin.n_heldout=10"])
    result = evaluate(cfg, ORACLE, [f"acebench:{data_en}", "builtin"], str(tmp_path))
    ace = {k: v for k, v in result.items() if k.startswith("acebench/")}
    assert len(ace) == 7 and all(m["accuracy"] == 1.0 for m in ace.values())
    assert ace["acebench/normal_multi_turn_user_switch"]["conversations"] == 2
    summary = json.loads((tmp_path / "metrics.json").read_text())["summaries"]["acebench"]
    assert summary["single"]["special"]["accuracy"] == 1.0 and summary["overall"] is None
    assert summary["single"]["categories"]["normal_multi_turn_user_switch"]["n"] == 2  # conversations
