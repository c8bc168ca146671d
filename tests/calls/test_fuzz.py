"""Fuzzing parse + check: ≥ 10 000 arbitrary strings and near-valid mutations of real answers. Nothing but
CallParseError may come out of parse_calls, nothing at all out of check, and nothing may hang."""
from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from toolace_r.calls import Verdict, check, parse_calls, render_json, render_python
from toolace_r.errors import CallParseError

FUNCTIONS = [
    {"name": "get_weather", "parameters": {"type": "dict", "required": ["city"], "properties": {
        "city": {"type": "string"}, "days": {"type": "integer"}, "units": {"type": "string"},
        "hourly": {"type": "boolean"}, "coords": {"type": "array", "items": {"type": "float"}},
        "opts": {"type": "dict"}}}},
    {"name": "Market Trends API", "parameters": {"type": "dict", "required": [], "properties": {
        "symbols": {"type": "array", "items": {"type": "string"}}, "limit": {"type": "float"}}}},
]
TRUTH = [{"get_weather": {"city": ["Paris", "Paris, France"], "days": [3, ""], "units": ["metric", ""],
                          "hourly": [False, ""], "coords": [[48.8, 2.3], ""], "opts": [{"lang": ["fr"]}, ""]}}]
SEEDS = [
    render_python([{"name": "get_weather", "arguments": {"city": "Paris", "days": 3, "coords": [48.8, 2.3],
                                                         "opts": {"lang": "fr"}, "hourly": False}}]),
    render_python([{"name": "Market Trends API", "arguments": {"symbols": ["AAPL", "MSFT"], "limit": 5.5}},
                   {"name": "get_weather", "arguments": {"city": "Paris, France"}}]),
    render_json([{"name": "get_weather", "arguments": {"city": "Paris", "units": "metric"}}]),
    '<tool_call>\n{"name": "get_weather", "arguments": "{\\"city\\": \\"Paris\\"}"}\n</tool_call>',
    '```python\n[get_weather(city=\'Paris\', days=-3)]\n```',
    '{"tool_calls": [{"type": "function", "function": {"name": "get_weather", "arguments": "{}"}}]}',
    "None of the given functions can be used for this request.",
]
SYNTAX = list("[](){}\"',=:.-+*/\\ \n\t`<>#") + ["</tool_call>", "<tool_call>", "```", "<think>", "**", "...",
                                                  "\\u0000", "\x00", "9" * 30, "True", "null", "lambda: 0"]

mutation = st.tuples(
    st.sampled_from(["delete", "insert", "duplicate", "truncate", "swap"]),
    st.floats(0, 1), st.floats(0, 1), st.sampled_from(SYNTAX) | st.text(max_size=3),
)


def _mutate(text: str, edits) -> str:
    for op, a, b, piece in edits:
        n = len(text)
        i, j = sorted((int(a * n), int(b * n)))
        if op == "delete":
            text = text[:i] + text[j:]
        elif op == "insert":
            text = text[:i] + piece + text[i:]
        elif op == "duplicate":
            text = text[:j] + text[i:j] + text[j:]
        elif op == "truncate":
            text = text[:i]
        else:
            text = text[:i] + text[j:j + 1] + text[i + 1:j] + text[i:i + 1] + text[j + 1:] if j > i else text
    return text


near_valid = st.builds(_mutate, st.sampled_from(SEEDS), st.lists(mutation, min_size=1, max_size=4))
anything = st.one_of(
    st.text(max_size=200),
    st.lists(st.sampled_from(SYNTAX + list("abcfxyz019_")), max_size=60).map("".join),
    near_valid,
)


CATEGORIES = ("simple", "multiple", "parallel", "irrelevance")


def _judge(text: str) -> None:
    for decoder in ("lenient", "bfcl"):
        try:
            calls = parse_calls(text, decoder)
        except CallParseError:
            pass
        else:
            assert isinstance(calls, list)
            for call in calls:
                assert isinstance(call["name"], str) and isinstance(call["arguments"], dict)
        category = CATEGORIES[len(text) % len(CATEGORIES)]  # one category per input keeps 10 000 inputs fast
        verdict = check(text, FUNCTIONS, TRUTH if category != "irrelevance" else [], category, decoder)
        assert isinstance(verdict, Verdict)
        assert verdict.error_type != "checker_error:bad_record", verdict  # model output is never a checker bug


@pytest.mark.timeout(600)
@settings(max_examples=6000, deadline=None, database=None, suppress_health_check=list(HealthCheck))
@given(near_valid)
def test_fuzz_near_valid_mutations(text):
    _judge(text)


@pytest.mark.timeout(600)
@settings(max_examples=4500, deadline=None, database=None, suppress_health_check=list(HealthCheck))
@given(anything)
def test_fuzz_arbitrary_strings(text):
    _judge(text)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("text", [
    "[" * 5000, "(" * 5000 + ")" * 5000, "-" * 20000 + "1", "[f(a=" + "[" * 3000 + "]" * 3000 + ")]",
    "[f(a=" + "1" + "0" * 5000 + ")]", "a," * 20000, "[f(" + "a=1," * 5000 + ")]", "<tool_call>" * 3000,
    "```" * 3000, "[" + "x " * 20000 + "(", "[f(a=2**2**2**2**2**2)]", "[f(a='" + "x" * 100000 + "')]",
    '{"name": "f", "arguments": ' + "[" * 5000 + "]" * 5000 + "}", "[f(a=" + "-" * 5000 + "1)]",
])
def test_pathological_inputs_do_not_hang_or_crash(text):
    _judge(text)
