"""Bad pool data (issue 10, item 5): every reader format and container fed broken records.

What a user gets for each fault:
- a bad record (wrong type, missing tools, truncated JSON inside a field, a truth call to a function the record does
  not declare, a broken JSON Lines line) → DataError naming the file, the record index and the field; with
  on_error="skip" it is skipped and counted, and the good records around it come out exactly as they do alone;
- a file that cannot be parsed as a whole (a truncated JSON array or parquet file) → DataError naming the file and
  where it breaks (line/column, the record it was in), also under on_error="skip": records after the break cannot be
  recovered, so skipping would drop an unknown number of them silently;
- 10 MB strings are data: read in well under a second each, kept whole;
- unicode (emoji, RTL, CJK) and control characters (NUL, ESC, U+2028) in strings are data and round-trip through
  Sample rows, JSON Lines and parquet; raw control characters inside a JSON string are a parse error naming the line.
"""
from __future__ import annotations

import copy
import functools
import json
import logging
import re
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from toolace_r.config import PoolConfig
from toolace_r.data.formats import FORMATS, read_samples_file
from toolace_r.data.pool import load_pool, load_pool_result
from toolace_r.data.schema import Sample
from toolace_r.errors import DataError

# --------------------------------------------------------------------------------------------------------------
# One valid record per format, with an explicit id so that ids do not depend on the record's position in the file
# --------------------------------------------------------------------------------------------------------------
WEATHER = {"name": "get_weather", "description": "Weather for a city",
           "parameters": {"type": "object", "properties": {"city": {"type": "string", "description": "City"}},
                          "required": ["city"]}}


def _system(tools) -> str:
    return "You can call these functions:\n" + json.dumps(tools, ensure_ascii=False) + "\nAnswer as [f(x=1)]."


def toolace(i: int, city: str = "Paris") -> dict:
    return {"id": f"ta{i}", "system": _system([WEATHER]), "conversations": [
        {"from": "user", "value": f"Weather in {city}?"},
        {"from": "assistant", "value": f"[get_weather(city={json.dumps(city, ensure_ascii=False)})]"}]}


def sharegpt(i: int, city: str = "Paris") -> dict:
    return {"id": f"sg{i}", "tools": json.dumps([WEATHER], ensure_ascii=False), "conversations": [
        {"from": "human", "value": f"Weather in {city}?"},
        {"from": "function_call", "value": json.dumps({"name": "get_weather", "arguments": {"city": city}},
                                                      ensure_ascii=False)}]}


def openai(i: int, city: str = "Paris") -> dict:
    return {"id": f"oa{i}", "tools": [{"type": "function", "function": WEATHER}], "messages": [
        {"role": "user", "content": f"Weather in {city}?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "get_weather",
                                                          "arguments": json.dumps({"city": city}, ensure_ascii=False)}}]}]}


def bfcl(i: int, city: str = "Paris") -> dict:
    return {"id": f"simple_{i}", "question": [[{"role": "user", "content": f"Weather in {city}?"}]],
            "function": [dict(WEATHER, parameters=dict(WEATHER["parameters"], type="dict"))]}


def bfcl_answer(i: int, city: str = "Paris", name: str = "get_weather") -> dict:
    return {"id": f"simple_{i}", "ground_truth": [{name: {"city": [city]}}]}


def apibank(i: int, city: str = "Paris") -> dict:
    return {"id": f"ab{i}", "query": [{"role": "user", "content": f"Weather in {city}?"}],
            "tools": [{"name": "get_weather", "description": "Weather for a city",
                       "parameters": {"city": {"type": "str", "description": "City"}}}],
            "answers": [{"name": "get_weather", "arguments": {"city": city}}]}


TOOLRL_SYSTEM = ("You are a helpful assistant.\n**Available Tools**\n1. Name: get_weather\nDescription: Weather for a "
                 'city\nParameters: {"city": {"description": "City", "type": "string", "default": ""}}\n')


def toolrl(i: int, city: str = "Paris") -> dict:
    call = json.dumps({"name": "get_weather", "parameters": {"city": city}}, ensure_ascii=False)
    return {"id": f"rl{i}", "instruction": TOOLRL_SYSTEM, "input": f"<user> Weather in {city}? </user>",
            "output": f"<think> easy </think>\n<tool_call>\n{call}\n</tool_call>"}


def samples(i: int, city: str = "Paris") -> dict:
    return Sample(id=f"sm{i}", tools=[bfcl(0)["function"][0]],
                  messages=[{"role": "user", "content": f"Weather in {city}?"}],
                  truth=[{"get_weather": {"city": [city]}}]).to_row()


GOOD = {"toolace": toolace, "sharegpt": sharegpt, "openai": openai, "bfcl": bfcl, "apibank": apibank,
        "toolrl": toolrl, "samples": samples}
assert set(GOOD) == set(FORMATS)


def file_name(fmt: str, suffix: str) -> str:
    return f"BFCL_v3_simple{suffix}" if fmt == "bfcl" else f"{fmt}_pool{suffix}"


def write_records(directory: Path, fmt: str, records: list, container: str = "jsonl", answers=None) -> Path:
    """Records in a container (json array / jsonl / parquet); BFCL also gets its possible_answer/ file."""
    directory.mkdir(parents=True, exist_ok=True)
    suffix = {"json": ".json", "jsonl": ".jsonl", "parquet": ".parquet"}[container]
    if fmt == "bfcl":
        suffix = ".json"  # BFCL's own files are JSON Lines named .json
        (directory / "possible_answer").mkdir(exist_ok=True)
        rows = answers if answers is not None else [bfcl_answer(i) for i in range(len(records))]
        (directory / "possible_answer" / file_name(fmt, suffix)).write_text(
            "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    path = directory / file_name(fmt, suffix)
    if container == "parquet":
        pq.write_table(pa.Table.from_pylist(records), path)
    elif container == "json":
        path.write_text(json.dumps(records, ensure_ascii=False, indent=1), encoding="utf-8")
    else:
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


def rows(result) -> list[dict]:
    return [s.to_row() for s in result.samples]


@pytest.mark.parametrize("container", ["json", "jsonl", "parquet"])
@pytest.mark.parametrize("fmt", FORMATS)
def test_good_records_read_in_every_container(tmp_path, fmt, container):
    if fmt == "bfcl" and container != "jsonl":
        pytest.skip("BFCL question files are JSON Lines only")
    cities = ["Paris", "Rome", "Oslo"]
    path = write_records(tmp_path, fmt, [GOOD[fmt](i, city) for i, city in enumerate(cities)], container,
                         answers=[bfcl_answer(i, city) for i, city in enumerate(cities)])
    result = read_samples_file(path, require_declared=True)
    assert result.format == fmt and result.skipped == 0 and len(result.samples) == 3
    assert [s.gold_calls() for s in result.samples] == [
        [{"name": "get_weather", "arguments": {"city": c}}] for c in ["Paris", "Rome", "Oslo"]]


# --------------------------------------------------------------------------------------------------------------
# Bad records: (format, fault, how to break record 1, the field the error must name)
# --------------------------------------------------------------------------------------------------------------
def _set(key, value):
    def mutate(rec):
        rec[key] = value
        return rec
    return mutate


def _drop(key):
    def mutate(rec):
        rec.pop(key)
        return rec
    return mutate


def _edit(fn):
    def mutate(rec):
        fn(rec)
        return rec
    return mutate


UNDECLARED_CALL = "[delete_everything(confirm=True)]"
BAD_RECORDS = [
    # toolace
    ("toolace", "wrong type", _set("system", 5), "system"),
    ("toolace", "wrong type", _set("conversations", "hello"), "conversations"),
    ("toolace", "wrong type", _edit(lambda r: r["conversations"][1].update(value=7)), "conversations[1].value"),
    ("toolace", "wrong type", _edit(lambda r: r["conversations"].__setitem__(0, "hi")), "conversations[0]"),
    ("toolace", "wrong type", _set("system", _system([dict(WEATHER, parameters=[1, 2])])), "system[0].parameters"),
    ("toolace", "wrong type", _set("system", _system([dict(WEATHER, name=None)])), "system[0].name"),
    ("toolace", "missing tools", _set("system", "You are a helpful assistant."), "system"),
    ("toolace", "missing tools", _drop("system"), "system"),
    ("toolace", "truncated JSON", _edit(lambda r: r["conversations"][1].update(value='[get_weather(city="Par')),
     "conversations[1].value"),
    ("toolace", "undeclared call", _edit(lambda r: r["conversations"][1].update(value=UNDECLARED_CALL)),
     "conversations[1].value"),
    # sharegpt
    ("sharegpt", "wrong type", _set("tools", 5), "tools"),
    ("sharegpt", "wrong type", _set("conversations", {"from": "human"}), "conversations"),
    ("sharegpt", "wrong type", _edit(lambda r: r["conversations"][0].update({"from": 3})), "conversations[0]"),
    ("sharegpt", "wrong type", _edit(lambda r: r["conversations"][1].update(
        value=json.dumps({"name": "get_weather", "arguments": [1, 2]}))), "conversations[1].value[0].arguments"),
    ("sharegpt", "truncated JSON", _set("tools", json.dumps([WEATHER])[:40]), "tools"),
    ("sharegpt", "truncated JSON", _edit(lambda r: r["conversations"][1].update(value='{"name": "get_weather", "ar')),
     "conversations[1].value"),
    ("sharegpt", "missing tools", _drop("tools"), "conversations[1].value"),
    ("sharegpt", "undeclared call", _edit(lambda r: r["conversations"][1].update(
        value=json.dumps({"name": "rm_rf", "arguments": {}}))), "conversations[1].value"),
    # openai
    ("openai", "wrong type", _set("messages", {"role": "user"}), "messages"),
    ("openai", "wrong type", _edit(lambda r: r["messages"][0].update(role=5)), "messages[0]"),
    ("openai", "wrong type", _edit(lambda r: r["messages"][1].update(tool_calls={"name": "get_weather"})),
     "messages[1].tool_calls"),
    ("openai", "wrong type", _set("tools", [{"type": "function", "function": dict(WEATHER, description=None,
                                                                                  parameters="city")}]),
     "tools[0].parameters"),
    ("openai", "truncated JSON", _edit(lambda r: r["messages"][1]["tool_calls"][0]["function"].update(
        arguments='{"city": "Par')), "messages[1].tool_calls[0].arguments"),
    ("openai", "missing tools", _drop("tools"), "messages[1].tool_calls"),
    ("openai", "undeclared call", _edit(lambda r: r["messages"][1]["tool_calls"][0]["function"].update(name="rm_rf")),
     "messages[1].tool_calls"),
    # bfcl (the undeclared call comes from possible_answer/, see below)
    ("bfcl", "wrong type", _set("question", "Weather in Paris?"), "question"),
    ("bfcl", "wrong type", _set("function", {"name": "get_weather"}), "function"),
    ("bfcl", "wrong type", _set("id", 5), "id"),
    ("bfcl", "wrong type", _edit(lambda r: r["question"][0].__setitem__(0, "hi")), "question[0][0]"),
    ("bfcl", "missing tools", _drop("function"), "function"),
    # apibank
    ("apibank", "wrong type", _set("answers", "get_weather(city='Paris')"), "answers"),
    ("apibank", "wrong type", _edit(lambda r: r["query"].__setitem__(0, "hi")), "query[0]"),
    ("apibank", "wrong type", _edit(lambda r: r["answers"][0].update(arguments="city=Paris")), "answers[0].arguments"),
    ("apibank", "missing tools", _drop("tools"), "tools"),
    ("apibank", "undeclared call", _edit(lambda r: r["answers"][0].update(name="rm_rf")), "answers[0].name"),
    # toolrl
    ("toolrl", "wrong type", _set("output", 5), "output"),
    ("toolrl", "wrong type", _set("instruction", ["a", "b"]), "instruction"),
    ("toolrl", "missing tools", _set("instruction", "You are a helpful assistant."), "instruction"),
    ("toolrl", "truncated JSON", _set("output", '<tool_call>\n{"name": "get_weather", "param\n</tool_call>'), "output"),
    ("toolrl", "undeclared call", _set("output", '<tool_call>\n{"name": "rm_rf", "parameters": {}}\n</tool_call>'),
     "output"),
    # samples (our own rows)
    ("samples", "wrong type", _set("truth", json.dumps({"get_weather": {}})), "truth"),
    ("samples", "wrong type", _set("tools", json.dumps([1, 2])), "tools[0]"),
    ("samples", "wrong type", _set("messages", json.dumps([{"content": "hi"}])), "messages[0]"),
    ("samples", "wrong type", _set("truth", json.dumps([{"get_weather": ["Paris"]}])), "truth[0]"),
    ("samples", "truncated JSON", _set("tools", json.dumps([WEATHER])[:30]), "tools/messages/truth"),
    ("samples", "missing tools", _drop("tools"), "tools"),
    ("samples", "undeclared call", _set("truth", json.dumps([{"rm_rf": {}}])), "truth"),
]
BAD_IDS = [f"{fmt}-{fault.replace(' ', '_')}-{field}" for fmt, fault, _, field in BAD_RECORDS]


def _mixed(tmp_path: Path, fmt: str, mutate, container: str = "jsonl") -> tuple[Path, Path]:
    """(file with good, bad, good records, file with just the two good ones)."""
    good = [GOOD[fmt](0, "Paris"), GOOD[fmt](2, "Oslo")]
    bad = mutate(GOOD[fmt](1, "Rome"))
    mixed = write_records(tmp_path / "mixed", fmt, [good[0], bad, good[1]], container,
                          answers=[bfcl_answer(i, c) for i, c in enumerate(["Paris", "Rome", "Oslo"])])
    clean = write_records(tmp_path / "clean", fmt, good, container,
                          answers=[bfcl_answer(0, "Paris"), bfcl_answer(2, "Oslo")] if fmt == "bfcl" else None)
    return mixed, clean


@pytest.mark.parametrize("fmt,fault,mutate,field", BAD_RECORDS, ids=BAD_IDS)
def test_bad_record_is_named_or_skipped(tmp_path, fmt, fault, mutate, field):
    mixed, clean = _mixed(tmp_path, fmt, mutate)
    with pytest.raises(DataError) as err:
        read_samples_file(mixed, format=fmt, require_declared=True)
    assert err.value.path == str(mixed) and err.value.index == 1 and err.value.field == field, str(err.value)
    assert f"file {mixed}, record 1, field {field!r}: " in str(err.value)

    result = read_samples_file(mixed, format=fmt, on_error="skip", require_declared=True)
    assert result.skipped == 1 and len(result.errors) == 1 and "record 1" in result.errors[0]
    # the other samples are exactly what the two good records give on their own
    assert rows(result) == rows(read_samples_file(clean, format=fmt)) and len(result.samples) == 2


WRONG_VALUES = [None, 5, 1.5, True, "text", "", [], {}, [1], {"a": 1}, ["x"], [{}], [None]]


def _paths(value, path=()):
    """Every key/index path inside a JSON value (not the root)."""
    if isinstance(value, dict):
        items = value.items()
    elif isinstance(value, list):
        items = enumerate(value)
    else:
        return
    for key, child in items:
        yield path + (key,)
        yield from _paths(child, path + (key,))


def _replaced(value, path, new):
    value = copy.deepcopy(value)
    target = value
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = new
    return value


def _wrong_type_variants(record: dict) -> list[dict]:
    """The record with each field, and each field inside its JSON-string fields, replaced by each wrong value."""
    out = [_replaced(record, p, w) for p in _paths(record) for w in WRONG_VALUES]
    for p in _paths(record):
        text = functools.reduce(lambda v, k: v[k], p, record)
        try:
            inner = json.loads(text) if isinstance(text, str) else None
        except json.JSONDecodeError:
            continue
        if isinstance(inner, (dict, list)):
            out += [_replaced(record, p, json.dumps(_replaced(inner, q, w))) for q in _paths(inner) for w in WRONG_VALUES]
    return out


def toolrl_prompt_form(i: int, city: str = "Paris") -> dict:
    rec = toolrl(i, city)
    return {"id": rec["id"], "prompt": [{"role": "system", "content": rec["instruction"]},
                                        {"role": "user", "content": rec["input"]}],
            "reward_model": {"ground_truth": rec["output"]}}


@pytest.mark.parametrize("fmt,build", [*GOOD.items(), ("toolrl", toolrl_prompt_form)],
                         ids=[*GOOD, "toolrl_prompt"])
def test_every_field_with_every_wrong_type(tmp_path, fmt, build):
    """Each field (and each field inside JSON-string fields) of a valid record replaced by None, numbers, booleans,
    strings, lists and objects: the reader either reads the record or skips it with a DataError naming the record,
    never crashes with another exception (which on_error=skip could not catch), and what it reads can be used."""
    variants = _wrong_type_variants(build(0))
    path = write_records(tmp_path, fmt, variants)
    result = read_samples_file(path, format=fmt, on_error="skip", require_declared=True)
    assert result.records == len(variants) and result.skipped > len(variants) // 3
    assert result.skipped == len(result.errors) == len({e.split(":")[0].split(", field")[0] for e in result.errors})
    for sample in result.samples:  # what was read is usable downstream: the reference answer and a parquet row
        sample.gold_calls()
    pa.Table.from_pylist(rows(result))


def test_bfcl_answer_naming_an_undeclared_function(tmp_path):
    records = [bfcl(i) for i in range(3)]
    answers = [bfcl_answer(0), bfcl_answer(1, name="find_closest"), bfcl_answer(2)]
    path = write_records(tmp_path, "bfcl", records, answers=answers)
    with pytest.raises(DataError, match=r"record 1, field 'ground_truth': .*'find_closest'.*not among"):
        read_samples_file(path, require_declared=True)
    result = read_samples_file(path, on_error="skip", require_declared=True)
    assert result.skipped == 1 and [s.id for s in result.samples] == ["simple_0", "simple_2"]
    # evaluation keeps benchmark files whole (BFCL's own simple_363 has such an answer): no check unless asked
    assert len(read_samples_file(path).samples) == 3


@pytest.mark.parametrize("container", ["json", "parquet"])
def test_bad_records_in_json_array_and_parquet(tmp_path, container):
    """Per-record faults are found the same way in a JSON array and in parquet (typed columns: nulls, bad strings)."""
    cases = [("samples", _set("truth", json.dumps([{"rm_rf": {}}])), "truth"),
             ("samples", _set("tools", "[{"), "tools/messages/truth"),
             ("sharegpt", _set("tools", None), "conversations[1].value"),
             ("toolace", _set("system", "no tools here"), "system")]
    for n, (fmt, mutate, field) in enumerate(cases):
        mixed, clean = _mixed(tmp_path / str(n), fmt, mutate, container)
        with pytest.raises(DataError) as err:
            read_samples_file(mixed, require_declared=True)
        assert (err.value.index, err.value.field) == (1, field)
        result = read_samples_file(mixed, on_error="skip", require_declared=True)
        assert result.skipped == 1 and rows(result) == rows(read_samples_file(clean))


# --------------------------------------------------------------------------------------------------------------
# Broken files and lines
# --------------------------------------------------------------------------------------------------------------
def test_truncated_jsonl_last_line_is_a_bad_record(tmp_path):
    path = write_records(tmp_path, "openai", [openai(i) for i in range(5)])
    text = path.read_text()
    path.write_text(text[: len(text) - 60])  # a download cut off inside the last record
    with pytest.raises(DataError, match=r"record 4: line is not valid JSON: .* at file line 5 column \d+"):
        read_samples_file(path)
    result = read_samples_file(path, on_error="skip")
    assert result.skipped == 1 and [s.id for s in result.samples] == [f"oa{i}-0" for i in range(4)]


def test_truncated_json_array_names_line_and_record_even_when_skipping(tmp_path):
    path = write_records(tmp_path, "toolace", [toolace(i) for i in range(6)], "json")
    text = path.read_text()
    cut = text.index('"ta3"') + 2  # inside record 3
    path.write_text(text[:cut])
    for on_error in ("raise", "skip"):
        with pytest.raises(DataError) as err:
            read_samples_file(path, on_error=on_error)
        msg = str(err.value)
        assert str(path) in msg and "not valid JSON" in msg and "line " in msg and "column" in msg
        assert "record 3" in msg and "records 0-2 parse" in msg


def test_truncated_pretty_printed_object_is_one_file_error(tmp_path):
    """A single (indented) JSON object cut short must not be read as JSON Lines of fragments."""
    path = tmp_path / "one.json"
    path.write_text(json.dumps(openai(0), indent=2)[:-40])
    with pytest.raises(DataError, match=r"one.json: not valid JSON .*line \d+ column \d+"):
        read_samples_file(path, on_error="skip")


def test_truncated_parquet_names_the_file(tmp_path):
    path = write_records(tmp_path, "samples", [samples(i) for i in range(50)], "parquet")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"samples_pool.parquet: cannot read"):
        read_samples_file(path, on_error="skip")


def test_non_object_records_and_deep_nesting_are_bad_records(tmp_path):
    path = tmp_path / "weird.jsonl"
    lines = [json.dumps(sharegpt(0)), "5", '"just a string"', "null", "[" * 100_000, json.dumps(sharegpt(5))]
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"record 1: record is a int"):
        read_samples_file(path)
    result = read_samples_file(path, on_error="skip")
    assert result.skipped == 4 and [s.id for s in result.samples] == ["sg0-0", "sg5-0"]
    assert "nested too deeply" in result.errors[3] and "file line 5" in result.errors[3]
    array = tmp_path / "weird.json"
    array.write_text(json.dumps([sharegpt(0), 5, None, sharegpt(3)]))
    result = read_samples_file(array, on_error="skip")
    assert result.skipped == 2 and [s.id for s in result.samples] == ["sg0-0", "sg3-0"]


def test_raw_control_character_in_a_json_string_is_a_parse_error_naming_the_line(tmp_path):
    good = json.dumps(openai(0))
    broken = json.dumps(openai(1)).replace("Weather in", "Weather\x1b in")  # raw ESC: JSON forbids it
    path = tmp_path / "ctl.jsonl"
    path.write_text(good + "\n\n" + broken + "\n" + json.dumps(openai(2)) + "\n")
    with pytest.raises(DataError, match=r"record 1: line is not valid JSON: Invalid control character .* "
                                        r"at file line 3 column \d+"):
        read_samples_file(path)
    result = read_samples_file(path, on_error="skip")
    assert result.skipped == 1 and [s.id for s in result.samples] == ["oa0-0", "oa2-0"]
    array = tmp_path / "ctl.json"
    array.write_text("[\n" + good + ",\n" + broken + "\n]")
    with pytest.raises(DataError, match=r"ctl.json: not valid JSON: Invalid control character at: line 3 column"):
        read_samples_file(array, on_error="skip")


# --------------------------------------------------------------------------------------------------------------
# 10 MB strings: data, read in bounded time and memory
# --------------------------------------------------------------------------------------------------------------
BIG = 10 * 1024 * 1024


@pytest.mark.parametrize("fmt", FORMATS)
def test_10mb_strings_are_read_whole_and_fast(tmp_path, fmt):
    big_city = "Paris " + "x" * BIG  # a 10 MB argument value (and so a 10 MB user message)
    rec = GOOD[fmt](0, big_city)
    answers = [bfcl_answer(0, big_city)] if fmt == "bfcl" else None
    path = write_records(tmp_path, fmt, [rec, GOOD[fmt](1)], answers=answers and answers + [bfcl_answer(1)])
    t0 = time.perf_counter()
    result = read_samples_file(path, require_declared=True)
    elapsed = time.perf_counter() - t0
    assert elapsed < 3.0, f"{fmt}: {elapsed:.1f}s for a 10 MB record"
    assert len(result.samples) == 2
    big = result.samples[0]
    assert big.gold_calls() == [{"name": "get_weather", "arguments": {"city": big_city}}]
    assert big_city in big.messages[-1]["content"]


def test_10mb_system_prompt_full_of_brackets_fails_fast(tmp_path):
    """ToolACE tools are searched for as a JSON list inside the system prompt: a huge prompt with a million '['
    (and one nested a million deep) must be a quick DataError, not minutes of retries or a RecursionError."""
    many = toolace(0)
    many["system"] = "see [1] and [a] " * (BIG // 16)
    deep = toolace(1)
    deep["system"] = "[" * BIG
    path = write_records(tmp_path, "toolace", [many, deep, toolace(2)])
    t0 = time.perf_counter()
    result = read_samples_file(path, format="toolace", on_error="skip")
    assert time.perf_counter() - t0 < 10.0
    assert result.skipped == 2 and [s.id for s in result.samples] == ["ta2-0"]
    assert all("field 'system'" in e for e in result.errors)


# --------------------------------------------------------------------------------------------------------------
# Unicode and control characters are data
# --------------------------------------------------------------------------------------------------------------
ODD_STRINGS = [
    "東京 / 北京 / 서울",  # CJK
    "مرحبا بالعالم \u200f שלום",  # RTL with a right-to-left mark
    "👩‍👩‍👧 🇫🇷 ⚡️ e\u0301",  # ZWJ sequence, flag, variation selector, combining accent
    "nul\x00 esc\x1b[31m red\x1b[0m del\x7f bell\x07",  # control characters (escaped in JSON)
    "line\u2028sep\u2029para\x85nel\x0bvt\x0cff\x1crs",  # characters str.splitlines() treats as line breaks
    "tab\there\r\nwindows",
]


@pytest.mark.parametrize("container", ["json", "jsonl", "parquet"])
@pytest.mark.parametrize("fmt", FORMATS)
def test_unicode_and_control_characters_round_trip(tmp_path, fmt, container):
    if fmt == "bfcl" and container != "jsonl":
        pytest.skip("BFCL question files are JSON Lines only")
    records = [GOOD[fmt](i, s) for i, s in enumerate(ODD_STRINGS)]
    answers = [bfcl_answer(i, s) for i, s in enumerate(ODD_STRINGS)] if fmt == "bfcl" else None
    if fmt == "toolace":  # a Python-like call cannot hold a raw NUL byte (Python source cannot): written escaped
        records[3]["conversations"][1]["value"] = "[get_weather(city=" + repr(ODD_STRINGS[3]) + ")]"
    path = write_records(tmp_path, fmt, records, container, answers=answers)
    result = read_samples_file(path, require_declared=True)
    assert result.skipped == 0 and len(result.samples) == len(ODD_STRINGS)
    for sample, text in zip(result.samples, ODD_STRINGS):
        assert sample.gold_calls() == [{"name": "get_weather", "arguments": {"city": text}}], fmt
        if fmt != "toolrl":  # ToolRL's <user> turns are stripped of surrounding whitespace, the text kept
            assert sample.messages[-1]["content"] == f"Weather in {text}?"
    # and through our own rows: JSON Lines (as the driver writes them) and parquet
    from toolace_r.io import write_samples

    write_samples(tmp_path / "rows.jsonl", result.samples)
    pq.write_table(pa.Table.from_pylist(rows(result)), tmp_path / "rows.parquet")
    for name in ("rows.jsonl", "rows.parquet"):
        assert rows(read_samples_file(tmp_path / name)) == rows(result), name


def test_unicode_tool_names(tmp_path):
    tool = dict(WEATHER, name="天気", description="天気予報 ☀️")
    rec = openai(0, "大阪")
    rec["tools"] = [{"type": "function", "function": tool}]
    rec["messages"][1]["tool_calls"][0]["function"]["name"] = "天気"
    ta = toolace(1, "大阪")
    ta["system"] = _system([tool])
    ta["conversations"][1]["value"] = '[天気(city="大阪")]'
    for fmt, r in (("openai", rec), ("toolace", ta)):
        (sample,) = read_samples_file(write_records(tmp_path / fmt, fmt, [r]), require_declared=True).samples
        assert sample.gold_calls() == [{"name": "天気", "arguments": {"city": "大阪"}}]
        assert sample.tools[0]["description"] == "天気予報 ☀️"


# --------------------------------------------------------------------------------------------------------------
# The full path: load_pool and the CLI
# --------------------------------------------------------------------------------------------------------------
def _mixed_pool(tmp_path: Path) -> Path:
    """20 good OpenAI records with 5 bad ones among them (one of each fault), as JSON Lines."""
    lines = [json.dumps(openai(i, f"city{i}")) for i in range(20)]
    undeclared = openai(100)
    undeclared["messages"][1]["tool_calls"][0]["function"]["name"] = "rm_rf"
    no_tools = openai(101)
    no_tools.pop("tools")
    wrong = openai(102)
    wrong["messages"] = "Weather?"
    lines[3:3] = [json.dumps(undeclared)]
    lines[8:8] = [json.dumps(no_tools)]
    lines[12:12] = [json.dumps(wrong), json.dumps(openai(103))[:50], json.dumps(openai(104, "x" * (BIG // 10)))[:-3]]
    path = tmp_path / "pool.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_load_pool_raises_or_skips_and_counts(tmp_path, caplog):
    path = _mixed_pool(tmp_path)
    with pytest.raises(DataError, match=r"pool.jsonl, record 3, field 'messages\[1\].tool_calls': .*'rm_rf'"):
        load_pool(PoolConfig(path=str(path)))
    with caplog.at_level(logging.WARNING, logger="toolace_r.data"):
        pool = load_pool(PoolConfig(path=str(path), on_error="skip"))
    assert [s.id for s in pool] == [f"oa{i}-0" for i in range(20)]
    assert [s.gold_calls()[0]["arguments"]["city"] for s in pool] == [f"city{i}" for i in range(20)]
    assert "skipped 5 bad records (pool.on_error=skip)" in caplog.text
    result = load_pool_result(PoolConfig(path=str(path), on_error="skip"))
    assert (result.records, result.skipped, len(result.samples)) == (25, 5, 20)
    assert [re.match(rf"file {re.escape(str(path))}, record (\d+)[,:]", e).group(1) for e in result.errors] == [
        "3", "8", "12", "13", "14"]


def test_cli_names_the_record_or_logs_the_skip_count(tmp_path, capfd, caplog):
    """`toolace-r probe` loads the pool before anything else (as `run` and `tiny-model` do): a bad record is a one-line
    error naming it (exit 2, no traceback); with pool.on_error=skip the count is logged as a warning. (model.path=tiny
    makes probe stop right after loading the pool, before Ray starts.)"""
    from toolace_r.cli import main

    path = _mixed_pool(tmp_path)
    code = main(["probe", "model.path=tiny", f"pool.path={path}"])
    err = capfd.readouterr().err
    assert code == 2 and "record 3, field 'messages[1].tool_calls'" in err and "Traceback" not in err
    with caplog.at_level(logging.WARNING, logger="toolace_r.data"):
        code = main(["probe", "model.path=tiny", f"pool.path={path}", "pool.on_error=skip"])
    assert code == 2 and "model.path is 'tiny'" in capfd.readouterr().err  # got past the pool
    assert "pool.jsonl: skipped 5 bad records (pool.on_error=skip)" in caplog.text


def test_lone_surrogate_is_a_bad_record(tmp_path):
    """JSON can escape half an emoji ("\\ud83d" alone): it parses, but is not text, and would break the first UTF-8
    or parquet write of the run far from the record. The reader names it instead."""
    cut = openai(1, "Paris \ud83d")
    in_row = samples(1)
    in_row["messages"] = json.dumps([{"role": "user", "content": "cut \ud83d"}])  # escaped inside the row's JSON
    for fmt, bad, field in (("openai", cut, "messages[0].content"), ("samples", in_row, "messages[0].content")):
        path = tmp_path / f"{fmt}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in (GOOD[fmt](0), bad, GOOD[fmt](2))))  # ASCII escapes
        with pytest.raises(DataError) as err:
            read_samples_file(path)
        assert (err.value.index, err.value.field) == (1, field) and "not valid Unicode" in str(err.value)
        result = read_samples_file(path, on_error="skip")
        assert result.skipped == 1 and len(result.samples) == 2
        pa.Table.from_pylist(rows(result))  # what is left can be written


def test_real_toolrl_records_calling_undeclared_functions(shared_data):
    """ToolRL's rlla_sft.json record 130 answers `createTable(... columns="EmployeeID int, FirstName varchar(100",
    LastName varchar, ...)`: read as written it calls 'LastName varchar', a function the record never declares. As a
    training pool that record is refused (or skipped); read as a plain file (eval) it is kept."""
    path = shared_data / "pools" / "rlla_sft.json"
    with pytest.raises(DataError, match=r"record 130, field 'output': truth calls 'LastName varchar'"):
        load_pool(PoolConfig(path=str(path)))
    result = load_pool_result(PoolConfig(path=str(path), on_error="skip"))
    assert (result.records, result.skipped, len(result.samples)) == (400, 1, 399)
    assert len(read_samples_file(path).samples) == 400
