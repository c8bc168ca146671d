"""Readers: every format on the real public files in ../shared/data, ToolACE/OpenAI on records written here in their
format, bad records → DataError naming file, record and field, on_error=skip counts instead of dropping."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from toolace_r.data.formats import detect_format, normalize_type, read_samples_file
from toolace_r.errors import DataError


def write_json(path: Path, obj) -> Path:
    path.write_text(json.dumps(obj), encoding="utf-8")
    return path


def write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def tool_names(sample) -> list[str]:
    return [t["name"] for t in sample.tools]


def assert_normalised(sample) -> None:
    for tool in sample.tools:
        params = tool["parameters"]
        assert params["type"] == "dict"
        assert set(params["required"]) <= set(params["properties"])
        for prop in params["properties"].values():
            assert prop["type"] in {"string", "integer", "float", "boolean", "array", "tuple", "dict", "any"}


# --------------------------------------------------------------------------------------------------------------
# ToolACE: records written here in Team-ACE/ToolACE's format
# --------------------------------------------------------------------------------------------------------------
TOOLACE_TOOLS = [
    {"name": "Get Weather", "description": "Weather for a city",
     "parameters": {"type": "dict", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
                    "required": ["city"]}},
    {"name": "news/top.headlines", "description": "Top news",
     "parameters": {"type": "object", "properties": {"topic": {"type": "string"}, "limit": {"type": "number"}},
                    "required": []}},
]
TOOLACE_SYSTEM = ("You are an expert in composing functions. Here is a list of functions in JSON format that you "
                  "can invoke:\n" + json.dumps(TOOLACE_TOOLS) + ". Should you decide to return the function call(s), "
                  "put them in the format of [func1(params_name=params_value)].")


def toolace_record() -> dict:
    return {
        "system": TOOLACE_SYSTEM,
        "conversations": [
            {"from": "user", "value": "Weather in Paris for 3 days, and tech headlines?"},
            {"from": "assistant", "value": '[Get Weather(city="Paris", days=3), news/top.headlines(topic="tech")]'},
            {"from": "tool", "value": '[{"temp": 21}, {"headlines": ["a", "b"]}]'},
            {"from": "assistant", "value": "It is 21 degrees; headlines: a, b."},
            {"from": "user", "value": "And Rome tomorrow?"},
            {"from": "assistant", "value": '[Get Weather(city="Rome", days=1)]'},
        ],
    }


def test_toolace_dialogue_yields_one_sample_per_call_turn(tmp_path):
    path = write_json(tmp_path / "toolace.json", [toolace_record()])
    result = read_samples_file(path)
    assert result.format == "toolace" and result.records == 1 and result.skipped == 0
    first, second = result.samples
    assert tool_names(first) == ["Get Weather", "news/top.headlines"]
    assert first.messages == [{"role": "user", "content": "Weather in Paris for 3 days, and tech headlines?"}]
    assert first.truth == [{"Get Weather": {"city": ["Paris"], "days": [3]}},
                           {"news/top.headlines": {"topic": ["tech"]}}]
    assert first.category == "parallel_multiple"
    # the second call turn carries the whole history: earlier call as tool_calls, the tool result as role "tool"
    roles = [m["role"] for m in second.messages]
    assert roles == ["user", "assistant", "tool", "assistant", "user"]
    assert second.messages[1]["tool_calls"][0] == {"name": "Get Weather", "arguments": {"city": "Paris", "days": 3}}
    assert second.truth == [{"Get Weather": {"city": ["Rome"], "days": [1]}}]
    assert first.id != second.id
    # OpenAI-style "object"/"number" are normalised to BFCL's names
    headlines = first.tools[1]["parameters"]
    assert headlines["type"] == "dict" and headlines["properties"]["limit"]["type"] == "float"
    assert_normalised(first)


def test_toolace_malformed_call_names_record_and_field(tmp_path):
    bad = toolace_record()
    bad["conversations"][1]["value"] = '[Get Weather(city="Paris", days=3'
    path = write_json(tmp_path / "toolace.json", [toolace_record(), bad])
    with pytest.raises(DataError) as err:
        read_samples_file(path)
    msg = str(err.value)
    assert "toolace.json" in msg and "record 1" in msg and "conversations[1].value" in msg


def test_toolace_system_without_tools_is_an_error(tmp_path):
    rec = toolace_record()
    rec["system"] = "You are a helpful assistant."
    with pytest.raises(DataError, match=r"record 0.*'system'.*no JSON list of tools"):
        read_samples_file(write_json(tmp_path / "t.json", [rec]), format="toolace")


def test_skip_counts_and_logs_bad_records(tmp_path, caplog):
    bad_call = toolace_record()
    bad_call["conversations"][5]["value"] = "[Get Weather(city=)]"
    bad_speaker = toolace_record()
    bad_speaker["conversations"][0]["from"] = "narrator"
    path = write_json(tmp_path / "mixed.json", [toolace_record(), bad_call, bad_speaker, toolace_record()])
    with caplog.at_level(logging.WARNING, logger="toolace_r.data.formats"):
        result = read_samples_file(path, on_error="skip")
    assert result.skipped == 2 and len(result.errors) == 2
    assert "record 1" in result.errors[0] and "record 2" in result.errors[1]
    assert "conversations[0].from" in result.errors[1]
    assert len(result.samples) == 4  # two good dialogues, two call turns each
    assert "skipped 2 bad records" in caplog.text
    with pytest.raises(DataError, match="record 1"):
        read_samples_file(path, on_error="raise")


def test_ids_are_unique_across_identical_dialogues(tmp_path):
    result = read_samples_file(write_json(tmp_path / "t.json", [toolace_record(), toolace_record()]))
    ids = [s.id for s in result.samples]
    assert len(ids) == len(set(ids)) == 4


# --------------------------------------------------------------------------------------------------------------
# LLaMA-Factory ShareGPT (glaive demo)
# --------------------------------------------------------------------------------------------------------------
def test_sharegpt_glaive_demo(shared_data):
    result = read_samples_file(shared_data / "pools" / "glaive_toolcall_en_demo.json")
    assert result.format == "sharegpt" and result.records == 300 and result.skipped == 0
    assert len(result.samples) == 211  # one per function_call turn
    first = result.samples[0]
    assert first.truth == [{"search_recipes": {"ingredients": [["chicken", "bell peppers", "rice"]]}}]
    assert [m["role"] for m in first.messages] == ["user", "assistant", "user"]
    assert first.tools[0]["parameters"]["properties"]["ingredients"] == {
        "type": "array", "items": {"type": "string"}, "description": "The ingredients to search for"}
    later = [s for s in result.samples if any(m["role"] == "tool" for m in s.messages)]
    assert later, "a second call in a dialogue keeps the observation as role 'tool'"
    assert any("tool_calls" in m for m in later[0].messages)
    for s in result.samples:
        assert_normalised(s)
        assert s.truth and s.messages[-1]["role"] in ("user", "tool")


def test_sharegpt_bad_function_call_json(tmp_path):
    rec = {"conversations": [{"from": "human", "value": "hi"}, {"from": "function_call", "value": "{name: x}"}],
           "tools": "[]"}
    with pytest.raises(DataError, match=r"record 0, field 'conversations\[1\].value'"):
        read_samples_file(write_json(tmp_path / "s.json", [rec]))


def test_sharegpt_bad_tools_string(tmp_path):
    rec = {"conversations": [{"from": "human", "value": "hi"}], "tools": "[{"}
    with pytest.raises(DataError, match=r"field 'tools': not valid JSON"):
        read_samples_file(write_json(tmp_path / "s.json", [rec]), format="sharegpt")


# --------------------------------------------------------------------------------------------------------------
# OpenAI / TRL
# --------------------------------------------------------------------------------------------------------------
def openai_record() -> dict:
    return {
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Convert 5 km to miles and 2 kg to pounds"},
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "convert", "arguments": '{"v": 5, "u": "km"}'}},
                {"id": "c2", "type": "function", "function": {"name": "convert", "arguments": {"v": 2, "u": "kg"}}},
            ]},
            {"role": "tool", "tool_call_id": "c1", "content": "3.1"},
            {"role": "tool", "tool_call_id": "c2", "content": "4.4"},
            {"role": "assistant", "content": "3.1 miles and 4.4 pounds."},
        ],
        "tools": [{"type": "function", "function": {
            "name": "convert", "description": "Convert units",
            "parameters": {"type": "object", "properties": {"v": {"type": "number"}, "u": {"type": "string",
                                                                                          "enum": ["km", "kg"]}},
                           "required": ["v", "u"]}}}],
    }


def test_openai_messages_with_tool_calls(tmp_path):
    result = read_samples_file(write_jsonl(tmp_path / "trl.jsonl", [openai_record()]))
    assert result.format == "openai"
    (sample,) = result.samples
    assert sample.messages == [{"role": "system", "content": "Be brief."},
                               {"role": "user", "content": "Convert 5 km to miles and 2 kg to pounds"}]
    assert sample.truth == [{"convert": {"v": [5], "u": ["km"]}}, {"convert": {"v": [2], "u": ["kg"]}}]
    assert sample.category == "parallel"
    assert sample.tools[0]["parameters"]["properties"]["u"]["enum"] == ["km", "kg"]


def test_openai_bad_arguments_json(tmp_path):
    rec = openai_record()
    rec["messages"][2]["tool_calls"][1]["function"]["arguments"] = '{"v": 2,'
    with pytest.raises(DataError) as err:
        read_samples_file(write_jsonl(tmp_path / "trl.jsonl", [openai_record(), rec]))
    assert "record 1" in str(err.value) and "messages[2].tool_calls[1]" in str(err.value)


def test_broken_jsonl_line_is_a_bad_record(tmp_path):
    path = tmp_path / "trl.jsonl"
    path.write_text(json.dumps(openai_record()) + "\n{not json\n" + json.dumps(openai_record()) + "\n")
    with pytest.raises(DataError, match=r"trl.jsonl, record 1: line is not valid JSON"):
        read_samples_file(path)
    result = read_samples_file(path, on_error="skip")
    assert result.skipped == 1 and len(result.samples) == 2


# --------------------------------------------------------------------------------------------------------------
# BFCL
# --------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("category,n", [("simple", 400), ("multiple", 200), ("parallel", 200),
                                        ("parallel_multiple", 200), ("irrelevance", 240), ("java", 100)])
def test_bfcl_files(shared_data, category, n):
    result = read_samples_file(shared_data / "bfcl_v3" / f"BFCL_v3_{category}.json")
    assert result.format == "bfcl" and len(result.samples) == n and result.skipped == 0
    first = result.samples[0]
    assert first.id == f"{category}_0"
    assert first.source == f"bfcl/{category}"
    if category == "irrelevance":
        assert all(s.truth == [] and s.category == "irrelevance" for s in result.samples)
    else:
        assert all(s.truth for s in result.samples)
    if category == "simple":
        assert first.truth == [{"calculate_triangle_area": {"base": [10], "height": [5], "unit": ["units", ""]}}]
        assert first.messages[0]["content"].startswith("Find the area of a triangle")
    if category in ("simple", "multiple", "parallel", "parallel_multiple"):
        assert {s.category for s in result.samples} == {category}


def test_bfcl_missing_answer_file(tmp_path, shared_data):
    line = (shared_data / "bfcl_v3" / "BFCL_v3_simple.json").read_text().splitlines()[0]
    q = tmp_path / "BFCL_v3_simple.json"
    q.write_text(line + "\n")
    with pytest.raises(DataError, match="possible_answer"):
        read_samples_file(q)
    (tmp_path / "possible_answer").mkdir()
    (tmp_path / "possible_answer" / "BFCL_v3_simple.json").write_text('{"id": "other", "ground_truth": []}\n')
    with pytest.raises(DataError, match=r"record 0, field 'id': no possible answer for id 'simple_0'"):
        read_samples_file(q)


# --------------------------------------------------------------------------------------------------------------
# API-Bank (Hammer structure)
# --------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name,n", [("apibank_l1.json", 399), ("apibank_l2.json", 127)])
def test_apibank(shared_data, name, n):
    result = read_samples_file(shared_data / "apibank" / name)
    assert result.format == "apibank" and len(result.samples) == n and result.skipped == 0
    for s in result.samples:
        assert len(s.truth) == 1
        assert {m["role"] for m in s.messages} <= {"user", "assistant", "tool"}
        assert_normalised(s)
    with_history = [s for s in result.samples if any(m.get("tool_calls") for m in s.messages)]
    if name == "apibank_l1.json":
        # the first record: agent turns become assistant turns; the answer is the truth with one value each
        first = result.samples[0]
        assert first.truth == [{"ModifyRegistration": {"appointment_id": ["34567890"],
                                                        "new_appointment_date": ["2023-03-26"],
                                                        "new_appointment_doctor": ["Dr. Lee"]}}]
        assert first.messages[1]["role"] == "assistant"
        # earlier API calls (```[{...}]``` in the record) are parsed into tool_calls, followed by the tool result
        assert with_history and with_history[0].messages[-1]["role"] in ("assistant", "user", "tool")
        translate = next(t for s in result.samples for t in s.tools if t["name"] == "Translate")
        assert "src_lang" not in translate["parameters"]["required"]  # "[Optional]" in its description


def test_apibank_bad_answer(tmp_path):
    rec = {"query": [{"role": "user", "content": "hi"}], "tools": [], "answers": [{"arguments": {}}]}
    with pytest.raises(DataError, match=r"record 0, field 'answers\[0\]': a call needs a non-empty string 'name'"):
        read_samples_file(write_json(tmp_path / "a.json", [rec]))


# --------------------------------------------------------------------------------------------------------------
# ToolRL
# --------------------------------------------------------------------------------------------------------------
def test_toolrl_sft(shared_data):
    result = read_samples_file(shared_data / "pools" / "rlla_sft.json")
    assert result.format == "toolrl" and len(result.samples) == 400 and result.skipped == 0
    assert sum(bool(s.truth) for s in result.samples) == 346  # the README's count of records with a call
    first = result.samples[0]
    assert first.truth == [{"Search Managers": {"name": ["Alex Ferguson"]}}]
    assert tool_names(first)[:2] == ["Search Managers", "Daily Match List-Scheduled"]
    assert first.messages == [{"role": "user", "content": "Could you help me find information on the manager "
                                                          "Alex Ferguson?"}]
    multi = next(s for s in result.samples if any(m.get("tool_calls") for m in s.messages))
    assert any(m["role"] == "tool" for m in multi.messages)
    for s in result.samples:
        assert_normalised(s)


def test_toolrl_test_prompt_form(shared_data):
    result = read_samples_file(shared_data / "pools" / "rlla_4k_test.jsonl")
    assert result.format == "toolrl" and len(result.samples) == 80 and result.skipped == 0
    assert result.samples[0].truth == [{"GetNews": {"page": ["1"]}}]
    assert sum(not s.truth for s in result.samples) > 0  # <response>-only ground truth = no call


def test_toolrl_type_strings():
    assert normalize_type("List[int]") == ("array", {"items": {"type": "integer"}})
    assert normalize_type("str, optional") == ("string", {})
    assert normalize_type("Tuple[float, float]") == ("tuple", {})
    assert normalize_type("number") == ("float", {})
    assert normalize_type("Callable[[float], float]") == ("any", {})


# --------------------------------------------------------------------------------------------------------------
# Containers, our own rows, detection
# --------------------------------------------------------------------------------------------------------------
def test_samples_rows_round_trip_jsonl_parquet_and_hf_dataset(tmp_path, shared_data):
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    from toolace_r.io import write_samples

    original = read_samples_file(shared_data / "bfcl_v3" / "BFCL_v3_parallel.json", limit=5).samples
    write_samples(tmp_path / "rows.jsonl", original)
    rows = [s.to_row() for s in original]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "rows.parquet")
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "hf"))
    datasets.DatasetDict({"train": datasets.Dataset.from_list(rows)}).save_to_disk(str(tmp_path / "hfdict"))
    for path in ("rows.jsonl", "rows.parquet", "hf", "hfdict"):
        result = read_samples_file(tmp_path / path)
        assert result.format == "samples", path
        assert [s.to_row() for s in result.samples] == rows, path


def test_native_format_in_parquet_and_hf_dir(tmp_path):
    """A ToolACE-format data set stored as parquet / a HF datasets dir (how hub data sets arrive)."""
    import datasets

    ds = datasets.Dataset.from_list([toolace_record(), toolace_record()])
    ds.to_parquet(str(tmp_path / "toolace.parquet"))
    ds.save_to_disk(str(tmp_path / "toolace_hf"))
    for path in ("toolace.parquet", "toolace_hf"):
        result = read_samples_file(tmp_path / path)
        assert result.format == "toolace" and len(result.samples) == 4


def test_samples_row_missing_field(tmp_path):
    with pytest.raises(DataError, match=r"record 0, field 'truth': missing"):
        read_samples_file(write_jsonl(tmp_path / "r.jsonl", [{"id": "a", "tools": "[]", "messages": "[]"}]),
                          format="samples")


def test_undetectable_and_unknown_format(tmp_path):
    path = write_jsonl(tmp_path / "x.jsonl", [{"text": "hello"}])
    with pytest.raises(DataError, match=r"x.jsonl: cannot tell the format .*\['text'\]"):
        read_samples_file(path)
    with pytest.raises(DataError, match="unknown format 'csv'"):
        read_samples_file(path, format="csv")
    with pytest.raises(DataError, match="no such file"):
        read_samples_file(tmp_path / "missing.json")


def test_detect_format_by_content():
    assert detect_format(toolace_record()) == "toolace"
    assert detect_format(openai_record()) == "openai"
    assert detect_format({"conversations": [{"from": "human", "value": "x"}], "tools": "[]"}) == "sharegpt"
    assert detect_format({"id": "x", "question": [], "function": []}) == "bfcl"
    assert detect_format({"query": [], "tools": [], "answers": []}) == "apibank"
    assert detect_format({"instruction": "", "input": "", "output": ""}) == "toolrl"
    assert detect_format({"id": "1", "tools": "[]", "messages": "[]", "truth": "[]"}) == "samples"


def test_limit_caps_records(shared_data):
    result = read_samples_file(shared_data / "apibank" / "apibank_l2.json", limit=10)
    assert result.records == 10 and len(result.samples) == 10


def test_unreadable_files_name_the_file(tmp_path):
    bad_parquet = tmp_path / "broken.parquet"
    bad_parquet.write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(DataError, match=r"broken.parquet: cannot read"):
        read_samples_file(bad_parquet)
    latin = tmp_path / "latin.jsonl"
    latin.write_bytes(b'{"text": "caf\xe9"}\n')
    with pytest.raises(DataError, match=r"latin.jsonl: cannot read: UnicodeDecodeError"):
        read_samples_file(latin)
    empty = tmp_path / "empty_dir"
    empty.mkdir()
    with pytest.raises(DataError, match=r"neither a HF datasets dir nor holds parquet files"):
        read_samples_file(empty)
