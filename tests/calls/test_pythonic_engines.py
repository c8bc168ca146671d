"""Our answers under the rules of vLLM's and SGLang's `pythonic` tool parsers (no vLLM here: the rules are restated
from their source and applied with ast, the way they parse).

vLLM (vllm/tool_parsers/pythonic_tool_parser.py, `extract_tool_calls`, read at vllm-project/vllm@0047fb9):
1. a regex must match at the start of the raw output: `[`, then calls `name(key=..., ...)` whose names and argument
   names are `[a-zA-Z]+\\w*`, then `]` (no leading whitespace allowed);
2. `ast.parse(output)`; its first statement must be a list whose elements are all calls;
3. each call's function must be a bare name; only keyword arguments are read;
4. a value must be an ast.Constant, a list of values, or a dict with constant keys — anything else (a unary minus,
   `float("nan")`, a tuple) raises, and the WHOLE output is returned as text content, no call.
Anything that fails 1–4 is plain content: that is how a no-call answer reaches the client.
SGLang (python/sglang/srt/function_call/pythonic_detector.py) strips the text, needs `[`…`]`, and walks the values
with the same three node kinds, so rule 4 — the one our answers can break — is the same there.
"""
from __future__ import annotations

import ast
import itertools
import json

import pytest
import regex  # what vLLM matches with (`import regex as re`); a transformers dependency. The stdlib `re` backtracks
# for seconds to minutes on some of our parallel answers with this pattern (17 s on one two-call answer); `regex`
# answers in under a millisecond.

from toolace_r.calls import parse_calls, render_python
from toolace_r.config import BuiltinPoolConfig
from toolace_r.data.general_pool import general_samples
from toolace_r.data.pool import load_builtin
from toolace_r.data.prompts import NO_CALL_ANSWER, render_answer

# Rule 1, built from its parts: a call that is not the last ends in "," — its last argument then needs trailing
# whitespace — and `.*` runs across anything (DOTALL), so in effect: "[" + name + "(" + (name "=" ... | nothing)
# + ")" ... "]".
_NAME = r"[a-zA-Z]+\w*"
_ARG = _NAME + r"=.*"
_CALL_THEN_COMMA = _NAME + r"\((" + _ARG + r",\s*)*(" + _ARG + r"\s)?\),\s*"
_LAST_CALL = _NAME + r"\((" + _ARG + r",\s*)*(" + _ARG + r"\s*)?\)\s*"
VLLM_CALL_LIST = regex.compile(r"\[(" + _CALL_THEN_COMMA + r")*(" + _LAST_CALL + r")+\]", regex.DOTALL)
VLLM_REGEX_TIMEOUT_S = 1.0  # VLLM_TOOL_PARSE_REGEX_TIMEOUT_SECONDS' default; on timeout vLLM treats the text as content


class NotLiteral(Exception):
    pass


def _value(node: ast.expr):
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.Dict):
        if not all(isinstance(k, ast.Constant) for k in node.keys):
            raise NotLiteral("dict keys must be literals")
        return {k.value: _value(v) for k, v in zip(node.keys, node.values)}
    if isinstance(node, ast.List):
        return [_value(v) for v in node.elts]
    raise NotLiteral(type(node).__name__)


def vllm_pythonic(output: str) -> tuple[list[dict] | None, str | None]:
    """(calls, content) as vLLM's pythonic parser returns them for a whole response: calls with `arguments` as the
    JSON text vLLM sends (json.dumps, ensure_ascii=False), or None and the output as content."""
    try:
        if VLLM_CALL_LIST.match(output, timeout=VLLM_REGEX_TIMEOUT_S) is None:
            return None, output
    except TimeoutError:
        return None, output
    try:
        parsed = getattr(ast.parse(output).body[0], "value", None)
        if not (isinstance(parsed, ast.List) and all(isinstance(e, ast.Call) for e in parsed.elts)):
            raise NotLiteral("not a list of calls")
        calls = []
        for call in parsed.elts:
            if not isinstance(call.func, ast.Name):
                raise NotLiteral("call name is not a bare name")
            calls.append({"name": call.func.id, "arguments": json.dumps(
                {kw.arg: _value(kw.value) for kw in call.keywords}, ensure_ascii=False)})
        return calls, None
    except (SyntaxError, NotLiteral):
        return None, output


def _has_negative_number(value) -> bool:
    if isinstance(value, dict):
        return any(_has_negative_number(v) for v in value.values())
    if isinstance(value, list):
        return any(_has_negative_number(v) for v in value)
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value < 0


@pytest.fixture(scope="module")
def answers():
    train, heldout = load_builtin(BuiltinPoolConfig(n_train=1000, n_heldout=200, seed=0))
    samples = train + heldout + list(itertools.islice(general_samples(3), 1000))
    return [s.gold_calls() for s in samples]


def test_gold_answers_are_read_by_the_pythonic_parser_except_negative_numbers(answers):
    """Every training target with a call is read by vLLM's rules to the same calls — except those holding a
    negative number: Python writes `-3` as a unary minus, which vLLM and SGLang do not read (their no-call text)."""
    negative = 0
    for calls in answers:
        if not calls:
            continue
        text = render_answer(calls)
        got, content = vllm_pythonic(text)
        if any(_has_negative_number(c["arguments"]) for c in calls):
            negative += 1
            assert got is None and content == text, text
            continue
        assert got is not None, text
        assert [(c["name"], json.loads(c["arguments"])) for c in got] == [(c["name"], c["arguments"]) for c in calls]
    with_calls = sum(1 for calls in answers if calls)
    # the built-in pool's quadratic solver takes signed coefficients; every other value is non-negative
    assert 0 < negative < 0.02 * with_calls, (negative, with_calls)


def test_the_no_call_answer_is_plain_content():
    assert vllm_pythonic(NO_CALL_ANSWER) == (None, NO_CALL_ANSWER)
    assert render_answer([]) == NO_CALL_ANSWER and parse_calls(NO_CALL_ANSWER) == []


@pytest.mark.parametrize("arguments", [
    {"nested": {"a": [1, {"b": None}], "c": True}}, {"s": "quote \" backslash \\ newline \n tab \t"},
    {"u": "Zürich ✓"}, {"big": 10**30, "small": 1e-7, "list": []}, {},
])
def test_nested_and_escaped_values_read_back_the_same(arguments):
    text = render_python([{"name": "f", "arguments": arguments}, {"name": "g", "arguments": {"x": 1}}])
    calls, _ = vllm_pythonic(text)
    assert calls is not None and json.loads(calls[0]["arguments"]) == arguments and calls[1]["name"] == "g"


@pytest.mark.parametrize("text", [
    "[f(x=-1)]", '[f(x=float("nan"))]', "[f(x=(1, 2))]", "[a.b(x=1)]", "[_f(x=1)]", " [f(x=1)]", "f(x=1)",
])
def test_what_the_pythonic_parser_does_not_read(text):
    """The limits a user of `--tool-call-parser pythonic` meets (README "Serving"): negative numbers, NaN, tuples,
    dotted or underscore-led names, leading whitespace, a call outside a list. Our own decoder reads them all."""
    assert vllm_pythonic(text) == (None, text)
    assert parse_calls(text)
