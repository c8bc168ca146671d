"""The checker's rules one by one (design/BFCL_RULES.md), on small hand-written schemas."""
from __future__ import annotations

import pytest

from toolace_r.calls import Verdict, check, gold_calls, standardize_string


def fn(name="f", required=(), **types):
    props = {}
    for p, t in types.items():
        if isinstance(t, tuple):  # (outer, inner)
            props[p] = {"type": t[0], "items": {"type": t[1]}}
        else:
            props[p] = {"type": t}
    return {"name": name, "description": "", "parameters": {"type": "dict", "properties": props, "required": list(required)}}


def verdict(output, functions, truth, category="simple", decoder="bfcl"):
    return check(output, functions, truth, category, decoder)


@pytest.mark.parametrize("value,acceptable,schema_type,valid,error", [
    ("5", [5.0], "float", True, ""),  # an int is accepted for a float
    ("5.0", [5], "integer", False, "type_error:simple"),
    ('"5"', [5], "integer", False, "type_error:simple"),
    ("True", [1], "integer", False, "type_error:simple"),
    ("1", [True], "boolean", False, "type_error:simple"),
    ("(1.0, 2.0)", [[1.0, 2.0]], ("tuple", "float"), True, ""),  # a tuple literal is fine for "tuple"
    ("(1.0, 2.0)", [[1.0, 2.0]], ("array", "float"), False, "type_error:simple"),  # ... but not for "array"
    ("[1, 2]", [[1.0, 2.0]], ("array", "float"), False, "type_error:nested"),
    ("[1, 2]", [[1.0, 2.0], ""], ("array", "float"), True, ""),  # "" skips the nested type check
    ('"New York, NY"', ["new york ny"], "string", True, ""),  # normalisation drops space , . / - _ * ^
    ('"A*B^C/D-E_F.G"', ["abcdefg"], "string", True, ""),
    ('"it\'s"', ['it"s'], "string", True, ""),  # ' becomes "
    ('"a;b"', ["ab"], "string", False, "value_error:string"),  # ; is kept
    ('"a!(b):+"', ["ab"], "string", False, "value_error:string"),
    ('"a\\tb"', ["ab"], "string", False, "value_error:string"),  # tabs are kept
    ('["New York", "LA"]', [["new york", "la"]], ("array", "string"), True, ""),
    ('["LA", "New York"]', [["new york", "la"]], ("array", "string"), False, "value_error:list/tuple"),  # order
    ('""', ["", "x"], "string", True, ""),  # explicit "" passes for a string
    ('""', ["", 3], "integer", False, "type_error:simple"),  # ... and is a type error for others
    ("None", [None, 3], "integer", True, ""),  # None passes where the answer lists it
    ("None", [3, ""], "integer", False, "type_error:simple"),
    ('"x"', [5], "integer", False, "type_error:simple"),
    ('"n_items"', ["n_items"], "integer", True, ""),  # a value of the truth's type is a "variable" ...
    ('"N items"', ["n_items"], "integer", False, "value_error:others"),  # ... compared exactly, not normalised
    ("5", ["5"], "string", False, "type_error:simple"),
    ('"abc"', ["abc"], "any", True, ""),  # any = string
    ("3", ["abc"], "any", False, "type_error:simple"),
    ("+5", [5], "integer", False, "value_error:others"),  # BFCL reads +5 as -5
    ("+5", [-5], "integer", True, ""),
    ("4 + 1", [5], "integer", True, ""),
])
def test_single_param_rules(value, acceptable, schema_type, valid, error):
    functions = [fn(x=schema_type)]
    v = verdict(f"[f(x={value})]", functions, [{"f": {"x": acceptable}}])
    assert (v.valid, v.error_type) == (valid, error), v.reason


def test_omission_rules():
    functions = [fn(required=["a"], a="integer", b="integer", c="string")]
    truth = [{"f": {"a": [1], "b": [2, ""], "c": ["x"]}}]
    assert verdict("[f(a=1, c='x')]", functions, truth).valid  # "" among b's values: b may be left out
    v = verdict("[f(a=1, b=2)]", functions, truth)  # c optional in the schema, but the answer needs it
    assert v.error_type == "simple_function_checker:missing_optional"
    v = verdict("[f(b=2, c='x')]", functions, truth)
    assert v.error_type == "simple_function_checker:missing_required"
    v = verdict("[f(a=1, c='x', d=1)]", functions, truth)  # not in the schema
    assert v.error_type == "simple_function_checker:unexpected_param"
    functions = [fn(required=["a"], a="integer", e="integer")]
    v = verdict("[f(a=1, e=0)]", functions, [{"f": {"a": [1]}}])  # in the schema, not in the answer
    assert v.error_type == "simple_function_checker:unexpected_param"
    v = verdict("[f(1)]", [fn(required=["a"], a="integer")], [{"f": {"a": [1]}}])  # positional: dropped
    assert v.error_type == "simple_function_checker:missing_required"


def test_dict_params():
    functions = [fn(d="dict")]
    truth = [{"f": {"d": [{"city": ["Paris", "paris fr"], "days": [3, ""]}]}}]
    assert verdict('[f(d={"city": "PARIS"})]', functions, truth).valid
    assert verdict('[f(d={"city": "paris, fr", "days": 3})]', functions, truth).valid
    assert verdict('[f(d={"city": "Rome"})]', functions, truth).error_type == "value_error:dict_value"
    assert verdict('[f(d={"city": "Paris", "x": 1})]', functions, truth).error_type == "value_error:dict_key"
    assert verdict('[f(d={"days": 3})]', functions, truth).error_type == "value_error:dict_key"  # city missing
    # a missing key names the error even when another value was wrong first (BFCL checks both)
    assert verdict('[f(d={"days": 4})]', functions, truth).error_type == "value_error:dict_key"


def test_list_of_dicts():
    functions = [fn(items=("array", "dict"))]
    truth = [{"f": {"items": [[{"n": ["a"]}, {"n": ["b"]}]]}}]
    assert verdict('[f(items=[{"n": "A"}, {"n": "b"}])]', functions, truth).valid
    assert verdict('[f(items=[{"n": "a"}])]', functions, truth).error_type == "value_error:list_dict_count"
    assert verdict('[f(items=[{"n": "b"}, {"n": "a"}])]', functions, truth).error_type == "value_error:dict_value"


def test_categories():
    f, g = fn("f", x="integer"), fn("g", y="integer")
    t_f, t_g = {"f": {"x": [1]}}, {"g": {"y": [2]}}
    # simple: exactly one call, judged against the FIRST schema
    assert verdict("[f(x=1)]", [f], [t_f]).valid
    assert verdict("[f(x=1), f(x=1)]", [f], [t_f]).error_type == "simple_function_checker:wrong_count"
    assert verdict("[g(y=2)]", [f], [t_f]).error_type == "simple_function_checker:wrong_func_name"
    # multiple: one call, the truth's function among the candidates
    assert verdict("[g(y=2)]", [f, g], [t_g], "multiple").valid
    assert verdict("[f(x=1)]", [f, g], [t_g], "multiple").error_type == "simple_function_checker:wrong_func_name"
    assert verdict("[g(y=2), f(x=1)]", [f, g], [t_g], "multiple").error_type == "multiple_function_checker:wrong_count"
    # parallel: the same calls in any order
    assert verdict("[g(y=2), f(x=1)]", [f, g], [t_f, t_g], "parallel_multiple").valid
    assert verdict("[f(x=1), g(y=2)]", [f, g], [t_f, t_g], "parallel").valid
    v = verdict("[f(x=1), g(y=3)]", [f, g], [t_f, t_g], "parallel_multiple")
    assert v.error_type == "parallel_function_checker_no_order:cannot_find_match" and "value_error" in v.reason
    v = verdict("[f(x=1)]", [f, g], [t_f, t_g], "parallel")
    assert v.error_type == "parallel_function_checker_no_order:wrong_count"
    # live_* categories behave like their base category
    assert verdict("[g(y=2)]", [f, g], [t_g], "live_multiple").valid
    # names match exactly: case and dots included
    assert not verdict("[F(x=1)]", [f], [t_f]).valid
    dotted = fn("math.factorial", n="integer")
    assert verdict("[math.factorial(n=5)]", [dotted], [{"math.factorial": {"n": [5]}}]).valid
    v = verdict("[math_factorial(n=5)]", [dotted], [{"math.factorial": {"n": [5]}}])
    assert v.error_type == "simple_function_checker:wrong_func_name"


def test_irrelevance_and_relevance():
    f = fn("f", x="integer")
    for decoder in ("lenient", "bfcl"):
        assert verdict("No function fits this request.", [f], [], "irrelevance", decoder).valid
        assert verdict("[]", [f], [], "irrelevance", decoder).valid
        v = verdict("[f(x=1)]", [f], [], "irrelevance", decoder)
        assert (v.valid, v.error_type) == (False, "irrelevance_error:decoder_success")
        assert verdict("[f(x=1)]", [f], [], "live_relevance", decoder).valid
        assert verdict("Nothing to call.", [f], [], "live_relevance", decoder).error_type == "relevance_error:decoder_failed"
    # a call in a python fence: BFCL cannot decode it, so for irrelevance it counts as no call
    assert verdict("```python\n[f(x=1)]\n```", [f], [], "irrelevance", "bfcl").valid
    assert not verdict("```python\n[f(x=1)]\n```", [f], [], "irrelevance", "lenient").valid


def test_decoder_failure_and_structured_output():
    f = fn("f", required=["x"], x="integer")
    truth = [{"f": {"x": [1]}}]
    v = verdict("I would call f with x=1", [f], truth)
    assert (v.valid, v.error_type) == (False, "ast_decoder:decoder_failed") and v.reason
    assert check([{"name": "f", "arguments": {"x": 1}}], [f], truth, "simple").valid
    assert check([{"f": {"x": 1}}], [f], truth, "simple").valid  # BFCL's decoded form
    openai = [{"id": "c", "type": "function", "function": {"name": "f", "arguments": '{"x": 1}'}}]
    assert check(openai, [{"type": "function", "function": f}], truth, "simple").valid  # OpenAI tools too


def test_never_raises_on_bad_records():
    for functions, truth in [([], [{"f": {"x": [1]}}]), ([{"nope": 1}], [{"f": {"x": [1]}}]), (None, [{"f": {}}]),
                             ([fn(x="integer")], [{"f": {"x": 5}}]), ([fn(x="integer")], [{"f": "bad"}])]:
        v = check("[f(x=1)]", functions, truth, "simple")
        assert isinstance(v, Verdict) and not v.valid


def test_verdict_json_round_trip():
    v = Verdict(False, "type_error:simple", "f: x should be integer, got str '1'")
    assert Verdict.from_json(v.to_json()) == v


def test_gold_calls_satisfy_the_checker():
    functions = [fn(required=["a", "b"], a="integer", b="float", c="string", d="dict", e=("array", "dict"))]
    truth = [{"f": {"a": [1], "b": ["", 2.5], "c": ["", "x"], "d": [{"k": ["v"], "z": ["", 1]}],
                    "e": [[{"n": ["a", "b"]}]]}}]
    calls = gold_calls(truth, functions)
    assert calls == [{"name": "f", "arguments": {"a": 1, "b": 2.5, "d": {"k": "v"}, "e": [{"n": "a"}]}}]
    assert check(calls, functions, truth, "simple").valid


def test_standardize_string():
    assert standardize_string("New York, N.Y. - 2024_01/02 * 3^2") == "newyorkny202401023" + "2"
    assert standardize_string("It's") == 'it"s'


def test_unknown_decoder_is_a_programming_error():
    with pytest.raises(ValueError, match="decoder"):
        check("[f()]", [fn()], [{"f": {}}], "simple", decoder="strict")
    assert check("[f()]", [fn()], [{"f": {}}], "simple", decoder=None).valid  # None = the default (lenient)
