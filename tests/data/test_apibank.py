"""`apibank:FILE_OR_DIR`: API-Bank's test data as its authors published it (level-N-api.json: {file, id,
instruction, input, expected_output}) next to Hammer's converted copy. Records here are written by the test in the
published format; the last tests run on ../shared/data when it is there."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from toolace_r.data.pool import load_eval_spec
from toolace_r.errors import DataError

HEAD = ("\nGenerate an API request in the format of [ApiName(key1='value1', key2='value2', ...)] based on the "
        "previous dialogue context.\nThe current year is 2023.\nInput: \nUser: User's utterence\nAI: AI's response"
        "\n\nExpected output:\nAPI-Request: [ApiName(key1='value1', key2='value2', ...)]\n\nAPI descriptions:\n")
ALARM = {"name": "AddAlarm", "description": "Adds an alarm.", "input_parameters": {
    "token": {"type": "str", "description": "User token."}, "time": {"type": "str", "description": "Alarm time."},
    "labels": {"type": "list(str)", "description": "Labels."}}, "output_parameters": {}}
TOKEN = {"name": "GetUserToken", "description": "Get the user token.", "input_parameters": {
    "username": {"type": "str", "description": "Name."}, "password": {"type": "str", "description": "Password."}},
    "output_parameters": {"token": {"type": "str", "description": "The token."}}}
SEARCHER = {"name": "ToolSearcher", "description": "Searches for relevant tools in library based on the keywords.",
            "input_parameters": {"keywords": {"type": "str", "description": "The keyword to search for."}},
            "output_parameters": {}}


def _raw(file: str, rid: int, apis: list[dict], dialogue: str, gold: str) -> dict:
    return {"file": file, "id": rid, "instruction": HEAD + "\n".join(json.dumps(a) for a in apis),
            "input": dialogue + "\nGenerate API Request:\n", "expected_output": f"API-Request: [{gold}]"}


LEVEL1 = [
    _raw("AddAlarm-GetUserToken-level-2-1.jsonl", 0, [ALARM, TOKEN],
         "User: Set an alarm at 7, I am alice with password pw1.\nAI: Let me log you in first.",
         "GetUserToken(username='alice', password='pw1')"),
    _raw("AddAlarm-GetUserToken-level-2-1.jsonl", 2, [ALARM, TOKEN],
         "User: Set an alarm at 7, I am alice with password pw1.\nAI: Let me log you in first.\n"
         "API-Request: [GetUserToken(username='alice', password='pw1')]->{'token': 'tk9'}\n"
         "AI: Done.\nUser: Label it work and gym,\nplease.",
         "AddAlarm(token='tk9', time='2023-03-01 07:00:00', labels='['work', 'gym']')"),
]
LEVEL2 = [
    _raw("AddAlarm-level-3-1.jsonl", 0, [SEARCHER], "User: Wake me at 7.\nAI: Let me find a tool.",
         "ToolSearcher(keywords='alarm')"),
    _raw("AddAlarm-level-3-1.jsonl", 1, [SEARCHER],
         "User: Wake me at 7.\nAI: Let me find a tool.\n"
         f"API-Request: [ToolSearcher(keywords='alarm')]->{[ALARM | {'desc_for_search': 'x'}, TOKEN]!r}",
         "GetUserToken(username='bob', password='pw2')"),
    _raw("QueryReminder-level-3-1.jsonl", 0, [SEARCHER], "User: Show my reminders.\nAI: Sure.",
         "QueryReminder(token='tk1')"),  # upstream defect: QueryReminder is described nowhere
    _raw("ToolSearcher-level-3-9.jsonl", 0, [SEARCHER], "User: Find a tool.\nAI: Sure.",
         "ToolSearcher(query='alarm')"),  # upstream defect: a parameter the description does not have
]


@pytest.fixture
def published(tmp_path) -> Path:
    root = tmp_path / "apibank"
    root.mkdir()
    (root / "level-1-api.json").write_text(json.dumps(LEVEL1))
    (root / "level-2-api.json").write_text(json.dumps(LEVEL2))
    (root / "level-1-response.json").write_text(json.dumps([{"file": "x", "id": 1}]))
    return root


def test_published_files_read_as_level_groups(published, caplog):
    groups = load_eval_spec(f"apibank:{published}")
    assert set(groups) == {"apibank_l1", "apibank_l2"}
    assert "level-1-response.json skipped" in caplog.text
    assert "2 of 4 items left out" in caplog.text and "QueryReminder-level-3-1#0 calls QueryReminder" in caplog.text
    assert "ToolSearcher-level-3-9#0 passes query to ToolSearcher" in caplog.text
    first, second = groups["apibank_l1"]
    assert first.id == "AddAlarm-GetUserToken-level-2-1#0"
    assert [t["name"] for t in first.tools] == ["AddAlarm", "GetUserToken"]
    assert first.messages == [{"role": "system", "content": "The current year is 2023."},
                              {"role": "user", "content": "Set an alarm at 7, I am alice with password pw1."},
                              {"role": "assistant", "content": "Let me log you in first."}]
    assert first.truth == [{"GetUserToken": {"username": ["alice"], "password": ["pw1"]}}]
    assert second.messages[3] == {"role": "assistant", "content": "",
                                  "tool_calls": [{"name": "GetUserToken",
                                                  "arguments": {"username": "alice", "password": "pw1"}}]}
    assert second.messages[4] == {"role": "tool", "content": "{'token': 'tk9'}"}
    assert second.messages[-1] == {"role": "user", "content": "Label it work and gym,\nplease."}
    # the quoted list of the published gold call is read as the list the schema (list(str)) asks for
    assert second.truth == [{"AddAlarm": {"token": ["tk9"], "time": ["2023-03-01 07:00:00"],
                                          "labels": [["work", "gym"]]}}]


def test_level2_tools_include_what_toolsearcher_returned(published):
    searched = load_eval_spec(f"apibank:{published / 'level-2-api.json'}")["apibank_l2"]
    assert [s.id for s in searched] == ["AddAlarm-level-3-1#0", "AddAlarm-level-3-1#1"]
    assert [t["name"] for t in searched[0].tools] == ["ToolSearcher"]
    assert [t["name"] for t in searched[1].tools] == ["ToolSearcher", "AddAlarm", "GetUserToken"]
    assert searched[1].category == "multiple"  # judged against the called function's schema


def test_gold_passes_the_checker_and_a_wrong_call_does_not(published):
    for group in load_eval_spec(f"apibank:{published}").values():
        for s in group:
            assert s.verdict(s.gold_answer(), "bfcl").valid, s.id
            assert s.verdict(s.gold_answer()).valid, s.id
    alarm = load_eval_spec(f"apibank:{published}")["apibank_l1"][1]
    assert alarm.verdict("[AddAlarm(token='tk9', time='2023-03-01 07:00:00', labels=['work', 'gym'])]").valid
    assert not alarm.verdict("[AddAlarm(token='tk9', time='2023-03-01 07:00:00', labels=['gym'])]").valid


def test_hammer_copy_still_reads_and_mixing_structures_is_an_error(published, tmp_path):
    hammer = {"query": [{"role": "user", "content": "Set an alarm at 7."}], "tools": [
        {"name": "AddAlarm", "description": "Adds an alarm.", "parameters": ALARM["input_parameters"]}],
        "answers": [{"name": "AddAlarm", "arguments": {"time": "07:00"}}]}
    (tmp_path / "apibank_l1.json").write_text(json.dumps([hammer]))
    groups = load_eval_spec(f"apibank:{tmp_path / 'apibank_l1.json'}")
    assert list(groups) == ["apibank_l1"] and groups["apibank_l1"][0].truth == [{"AddAlarm": {"time": ["07:00"]}}]
    (published / "apibank_l1.json").write_text(json.dumps([hammer]))
    with pytest.raises(DataError, match="two files make group 'apibank_l1'"):
        load_eval_spec(f"apibank:{published}")


@pytest.mark.parametrize("field,value,message", [
    ("expected_output", "[GetUserToken()]", "expected 'API-Request"),
    ("expected_output", "API-Request: [GetUserToken(username='a']", "cannot be read"),
    ("instruction", "no descriptions here", "API descriptions"),
    ("input", "Narrator: once upon a time", "line without a speaker"),
    ("id", None, "not an int"),
])
def test_bad_published_records_name_file_record_and_field(tmp_path, field, value, message):
    record = dict(LEVEL1[0], **{field: value})
    path = tmp_path / "level-1-api.json"
    path.write_text(json.dumps([LEVEL1[0], record]))
    with pytest.raises(DataError, match=rf"level-1-api.json, record 1, field '{field}[^']*': .*{message}"):
        load_eval_spec(f"apibank:{path}")
    skipped = load_eval_spec(f"apibank:{path}", on_error="skip")
    assert len(skipped["apibank_l1"]) == 1


def test_shared_published_sample_gold_passes(shared_data):
    root = shared_data / "apibank_raw"
    if not root.is_dir():
        pytest.skip(f"{root} is absent")
    groups = load_eval_spec(f"apibank:{root}")
    assert set(groups) == {"apibank_l1", "apibank_l2"}
    assert len(groups["apibank_l1"]) == 15 and len(groups["apibank_l2"]) == 7  # 1 of 8 calls an undescribed API
    for group in groups.values():
        assert all(s.verdict(s.gold_answer(), "bfcl").valid for s in group)


def test_shared_hammer_copy_unchanged(shared_data):
    root = shared_data / "apibank"
    if not root.is_dir():
        pytest.skip(f"{root} is absent")
    groups = load_eval_spec(f"apibank:{root}")
    assert {k: len(v) for k, v in groups.items()} == {"apibank_l1": 399, "apibank_l2": 127}
