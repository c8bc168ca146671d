"""ACEBench's own scoring, so `acebench:DIR` figures can be put beside the ones ACEBench publishes.

Re-stated from ACEBench/ACEBench @ e6db74b7 (`eval_main.py`, `model_eval/checker.py`, `model_inference/utils.py`),
quirks included, because the leaderboard's numbers come out of exactly these rules:

- **decoding** (normal categories): every whitespace character of the answer is removed (also inside strings:
  "New York" is read as "NewYork"), then the text is parsed as ONE Python expression that must be a list (or tuple)
  of calls; a bare call without brackets, prose or a code fence is `wrong_output_format`. A call is
  `{name: {keyword: value}}` (positional arguments dropped, dotted names joined); a call without keywords used as a
  value is `{name: {}}`; a unary operator negates its literal; arithmetic on literals is computed (ACEBench `eval`s
  it; here `safe_arith`, refusing anything that is not arithmetic on literals — the one deliberate divergence).
- **normal** (`normal_checker`): as many calls as the answer has functions; answer keys lose a `_<digits>` suffix
  (`f_1`, `f_2` = two calls of `f`); the multiset of names must equal the answer's; each expected call passes when
  SOME output call of that name passes `simple_function_checker` against the schema whose name is a *substring* of
  the answer key (the first such schema). Per call: every `required` parameter given, no parameter outside both the
  schema and the answer; types by ACEBench's table (`number` → int, `object` → dict, ...); a value of the answer's
  type rather than the schema's is a "variable" and not compared at all; strings: the normalised answer must be a
  *substring* of the normalised output; lists: equal after normalising their strings; dicts: same number of keys,
  each value's normalised text must contain the answer's (`str(x) in str(y)`), nested dicts recursively; lists of
  dicts element by element. Numbers and booleans are type-checked only, never compared with the answer — ACEBench's
  checker has no branch for them. An answer given as a list holds alternatives: any one passing is enough.
- **special** (`special_eval`): the raw answer text (whitespace kept) is searched for phrases. incomplete: "Missing
  necessary parameters", the function name and every missing parameter name; error_param: "There is incorrect
  value" and every wrong value; irrelevant: "the limitations of the function". These are the phrases ACEBench's
  system prompt for the special categories tells the model to use.

`check_acebench(output, rule)` judges one answer: `rule` is a sample's scoring rule (toolace_r.data.acebench builds
it: {"kind": "acebench", "category", "answer", "functions"}). Like `check`, it never raises for any output.
"""
from __future__ import annotations

import ast
import re
from collections import Counter
from typing import Any

from toolace_r.calls.checker import Verdict, standardize_string
from toolace_r.calls.literals import LiteralReader, dotted_name
from toolace_r.calls.syntax import SOURCE_NAME, _node_text, _short
from toolace_r.errors import CallParseError

# ACEBench's schema type → Python type table (checker.py PYTHON_TYPE_MAPPING; "number" is int there).
TYPES: dict[str, type] = {
    "string": str, "integer": int, "float": float, "boolean": bool, "array": list, "tuple": list, "dict": dict,
    "any": str, "list": list, "object": dict, "objectArray": list, "list(string)": list, "list(enum)": list,
    "int": int, "enum": enumerate, "number": int,
}
NESTED = ("array", "tuple", "list(string)", "list(enum)", "object", "objectArray")
_SUFFIX = re.compile(r"_\d+$")

# The phrases special_eval looks for (the reply formats of ACEBench's special-data system prompt).
MISSING_PHRASE = "Missing necessary parameters"
WRONG_VALUE_PHRASE = "There is incorrect value"
LIMITATION_PHRASE = "the limitations of the function"


class _Fail(Exception):
    """A checker failure, carried up to `check_acebench` as a Verdict."""

    def __init__(self, error_type: str, reason: str):
        super().__init__(reason)
        self.verdict = Verdict(False, error_type, reason)


# ----------------------------------------------------------------------------------------------------------------
# entry point
# ----------------------------------------------------------------------------------------------------------------
def check_acebench(output: str, rule: dict[str, Any]) -> Verdict:
    """Judge one answer text by ACEBench's rules for rule["category"]. Never raises."""
    try:
        category = str(rule.get("category", ""))
        if not isinstance(output, str):
            return Verdict(False, "wrong_output_format", f"answer must be text, got {type(output).__name__}")
        if category.startswith("special"):
            return check_special(output, rule.get("answer"), category)
        return check_normal(output, rule.get("functions") or [], rule.get("answer"))
    except _Fail as fail:
        return fail.verdict
    except Exception as err:  # noqa: BLE001 - where ACEBench's own checker would crash on a record
        return Verdict(False, "checker_error:bad_record", f"could not judge this record: {type(err).__name__}: {err}")


def check_normal(output: str, functions: list[dict[str, Any]], answer: Any) -> Verdict:
    try:
        calls = decode(output)
    except CallParseError as err:
        return Verdict(False, "wrong_output_format", f"Invalid syntax. Failed to decode AST. {err}")
    alternatives = answer if isinstance(answer, list) else [answer]
    first: Verdict | None = None
    for alt in alternatives:
        verdict = _normal_checker(functions, calls, alt)
        if verdict.valid:
            return verdict
        first = first or verdict
    return first or Verdict(False, "checker_error:bad_record", "the record has no possible answer")


def check_special(output: str, answer: Any, category: str) -> Verdict:
    if "incomplete" in category:
        for name, values in _items(answer):
            if MISSING_PHRASE not in output:
                return Verdict(False, "error_detection", f"did not say {MISSING_PHRASE!r} (missing {values} of {name})")
            if name not in output:
                return Verdict(False, "error_correction", f"did not name the function {name!r}")
            for value in values:
                if value not in output:
                    return Verdict(False, "error_correction", f"did not name the missing parameter {value!r}")
    elif "error" in category:
        for name, values in _items(answer):
            if WRONG_VALUE_PHRASE not in output:
                return Verdict(False, "error_detection", f"did not say {WRONG_VALUE_PHRASE!r} (wrong {name}={values})")
            for value in values:
                if value not in output:
                    return Verdict(False, "error_correction", f"did not name the wrong value {value!r}")
    elif "irrelevant" in category:
        if LIMITATION_PHRASE not in output:
            return Verdict(False, "error_detection", f"did not say {LIMITATION_PHRASE!r}")
    else:
        return Verdict(False, "checker_error:bad_record", f"unknown special category {category!r}")
    return Verdict(True)


def _items(answer: Any) -> list[tuple[str, list[str]]]:
    if not isinstance(answer, dict):
        raise _Fail("checker_error:bad_record", f"special answer must be {{name: [values]}}, got {_short(answer)}")
    return [(str(k), [str(x) for x in (v if isinstance(v, list) else [v])]) for k, v in answer.items()]


# ----------------------------------------------------------------------------------------------------------------
# decoding
# ----------------------------------------------------------------------------------------------------------------
def decode(text: str) -> list[dict[str, dict[str, Any]]]:
    """ACEBench's decode_ast for prompt-mode answers → [{name: {param: value}}]; CallParseError where it fails."""
    squeezed = "".join(text.split())
    try:
        tree = ast.parse(squeezed, filename=SOURCE_NAME, mode="eval")
    except SyntaxError as err:
        raise CallParseError(f"{type(err).__name__}: {err.msg}") from None
    except (ValueError, RecursionError, MemoryError, OverflowError) as err:
        raise CallParseError(f"{type(err).__name__}: {err}") from None
    body = tree.body
    if not isinstance(body, (ast.List, ast.Tuple, ast.Set)):
        raise CallParseError(f"expected a list of calls, got {_node_text(body)}")
    out = []
    try:
        for element in body.elts:
            if not isinstance(element, ast.Call):
                raise CallParseError(f"list element is not a call: {_node_text(element)}")
            out.append({dotted_name(element.func): _READER.arguments(element)})
    except (RecursionError, MemoryError) as err:
        raise CallParseError(type(err).__name__) from None
    return out


class _AceReader(LiteralReader):
    """ACEBench's value reading (toolace_r.calls.literals has what it shares with BFCL's)."""

    value_first = True

    def call_without_keywords(self, node: ast.Call) -> dict[str, dict[str, Any]]:
        return {dotted_name(node.func): {}}

    def unsupported(self, node: ast.expr) -> str:
        return f"Unsupported AST type: {type(node).__name__}"


_READER = _AceReader()


# ----------------------------------------------------------------------------------------------------------------
# normal categories
# ----------------------------------------------------------------------------------------------------------------
def _normal_checker(functions: list[dict[str, Any]], calls: list[dict], answer: Any) -> Verdict:
    if not isinstance(answer, dict):
        return Verdict(False, "checker_error:bad_record", f"possible answer must be {{name: params}}: {_short(answer)}")
    if len(calls) != len(answer):
        return Verdict(False, "wrong functions number", f"expected {len(answer)} call(s), got {len(calls)}")
    keys = list(answer)
    expected = [(_SUFFIX.sub("", k), answer[k]) for k in keys]
    got = Counter(next(iter(c)) for c in calls)
    want = Counter(name for name, _ in expected)
    for name in got:
        if name not in want:
            return Verdict(False, "function_mismatch", f"extra function {name!r} is not in the ground truth")
    for name in want:
        if name not in got:
            return Verdict(False, "function_mismatch", f"function {name!r} of the ground truth was not called")
    for name, count in got.items():
        if count != want[name]:
            return Verdict(False, "function_mismatch", f"{name!r} called {count} time(s), expected {want[name]}")
    for key, (name, params) in zip(keys, expected):
        schema = next((f for f in functions if isinstance(f, dict) and str(f.get("name")) in key), None)
        if schema is None:
            return Verdict(False, "checker_error:bad_record", f"no schema whose name is part of {key!r}")
        last = Verdict(False, "simple_function_checker:unclear", "wrong_function")
        for call in calls:
            if next(iter(call)) == name:
                try:
                    _simple_function_checker(schema, call, {name: params})
                    last = Verdict(True)
                    break
                except _Fail as fail:
                    last = fail.verdict  # the reason of a call to the right function beats "wrong_function"
        if not last.valid:
            return last
    return Verdict(True)


def _schema_params(schema: dict[str, Any]) -> Any:
    # ACEBench writes the target function's schema under "parameters" (distractors sometimes under "arguments")
    return schema["parameters"] if "parameters" in schema else schema.get("arguments", {})


def _simple_function_checker(schema: dict[str, Any], call: dict, answer: dict) -> None:
    """Raises _Fail where ACEBench's simple_function_checker returns invalid."""
    params_schema = _schema_params(schema)
    expected = next(iter(answer.values()))
    given = next(iter(call.values()))
    if given == {} and params_schema == {}:
        return
    if given == {} or params_schema == {}:
        raise _Fail("wrong_param", "no arguments given, or the function takes none")
    if expected == params_schema.get("properties"):
        return
    if expected == {}:
        raise _Fail("wrong_param", "the answer expects no arguments")
    fname = schema["name"]
    if fname not in call:
        raise _Fail("wrong_function_name", f"expected function {fname!r}, got {next(iter(call))!r}")
    details = params_schema.get("properties") or {}
    for p in params_schema.get("required") or []:
        if p not in given:
            raise _Fail("lack_args", f"{fname}: missing required {p!r}")
    for p, value in given.items():
        if p not in details or p not in expected:
            raise _Fail("addition_args", f"{fname}: unexpected argument {p!r}")
        type_desc = details[p].get("type") if isinstance(details[p], dict) else None
        if type_desc not in TYPES:
            raise _Fail("checker_error:bad_record", f"{fname}: {p} has a type ACEBench does not know: {type_desc!r}")
        py_type, nested = TYPES[type_desc], None
        if type_desc in NESTED:
            items = details[p].get("items")
            item_type = items.get("type") if isinstance(items, dict) else None
            if item_type is None:  # ACEBench: no items type → by the type's name, else dict
                item_type = "string" if "string" in type_desc else "enum" if "enum" in type_desc else "dict"
            if item_type not in TYPES:
                raise _Fail("checker_error:bad_record", f"{fname}: {p} has items of unknown type {item_type!r}")
            nested = TYPES[item_type]
        if type_desc == "tuple" and type(value) is tuple:
            value = list(value)
        if type_desc == "float" and type(value) is int:
            value = float(value)
        is_variable = _type_checker(fname, p, value, expected[p], py_type, nested)
        if is_variable:
            continue
        if py_type is dict:
            _dict_checker(fname, p, value, expected[p])
        elif py_type is list and nested is dict:
            if type_desc == "objectArray" and len(value) != len(expected[p]):
                raise _Fail("value_error:dict_items", f"{fname}: {p} has the wrong number of items")
            _list_dict_checker(fname, p, value, expected[p])
        elif py_type is str:
            if standardize_string(expected[p]) not in standardize_string(value):
                raise _Fail("value_error:string", f"{fname}: {p}={_short(value)}, expected {_short(expected[p])}")
        elif py_type is list:
            _list_checker(fname, p, value, expected[p])


def _answer_type(answer: Any) -> type | None:
    return None if answer == "" else type(answer)


def _type_checker(fname: str, param: str, value: Any, answer: Any, py_type: type, nested: type | None) -> bool:
    """ACEBench's type_checker: returns is_variable, raises _Fail for a type error. Note that the nested check walks
    the ANSWER value itself (its elements, a dict's keys), as ACEBench does."""
    answer_type = _answer_type(answer)
    is_variable = answer_type is not None and answer_type is not py_type
    if value == "true":
        value = True
    elif value == "false":
        value = False
    nested_failed = False
    if type(value) is py_type:
        if nested is None:
            return is_variable
        for item in _iterate(answer):
            ok = True
            if type(item) is list:
                for v in value:
                    try:
                        _type_checker(fname, param, v, item, nested, None)
                    except _Fail:
                        ok = False
                        break
            if ok:
                return is_variable
        nested_failed = True
    if answer_type is not None and (type(value) is answer_type or answer == value):
        if nested_failed:
            raise _Fail("type_error", f"{fname}: nested type check failed for {param}={_short(value)}")
        return True
    raise _Fail("type_error", f"{fname}: wrong type for {param}: expected {py_type.__name__}, got "
                              f"{type(value).__name__}")


def _iterate(value: Any) -> list:
    try:
        return list(value)
    except TypeError:  # ACEBench would crash iterating a number: a bad record
        raise _Fail("checker_error:bad_record", f"cannot iterate the answer {_short(value)}") from None


def _std(x: Any) -> Any:
    return standardize_string(x) if type(x) is str else x


def _list_checker(fname: str, param: str, value: list, answer: Any) -> None:
    if [_std(x) for x in value] != [_std(x) for x in _iterate(answer)]:
        raise _Fail("value_error:list/tuple", f"{fname}: {param}={_short(value)}, expected {_short(answer)}")


def _dict_checker(fname: str, param: str, value: Any, answer: Any) -> None:
    if not isinstance(value, dict):
        raise _Fail("value_error", f"{fname}: {param} should be a dict, got {_short(value)}")
    if not isinstance(answer, dict):
        raise _Fail("checker_error:bad_record", f"{fname}: {param}: the answer is not a dict: {_short(answer)}")
    if len(value) != len(answer):
        raise _Fail("value_error", f"{fname}: {param} has {len(value)} keys, expected {len(answer)}")
    for key, v in value.items():
        if v == "true":
            v = True
        elif v == "false":
            v = False
        if key not in answer:
            raise _Fail("value_error", f"{fname}: {param} has unexpected key {_short(key)}")
        want = answer[key]
        if isinstance(want, dict):
            _dict_checker(fname, param, v, want)
            continue
        if str(_std(want)) not in str(_std(v)):
            raise _Fail("value_error", f"{fname}: {param}[{_short(key)}]={_short(v)}, expected {_short(want)}")


def _list_dict_checker(fname: str, param: str, value: list, answer: Any) -> None:
    items = _iterate(answer)
    if len(value) != len(items):
        raise _Fail("value_error:list_dict_count", f"{fname}: {param} has {len(value)} items, expected {len(items)}")
    for v, a in zip(value, items):
        _dict_checker(fname, param, v, a)
