"""Judge calls against BFCL ground truth with BFCL's AST semantics.

Truth is BFCL's possible-answer list `[{func_name: {param: [acceptable values]}}]` (`[]` = the right answer is no
call). The rules, as the leaderboard applies them (design/BFCL_RULES.md, BFCL's ast_checker at v3):

- category by substring: "irrelevance" → valid iff no call was decoded; "relevance" → valid iff some call was;
  "parallel" → the calls match the truth one to one in any order (greedy, in truth order); "multiple" → exactly one
  call, judged against the truth's function; otherwise (simple) exactly one call, judged against the FIRST schema;
- one call: the name must match exactly; every schema-required param present; every param given must be in both the
  schema and the truth; each value type-checked by the schema type (string, integer, float — an int is accepted —,
  boolean, array/tuple with a one-level item check, dict, any = string); a value of another type than the schema's
  but of the truth's type is a "variable" and compared exactly; strings compared after normalisation (drop space
  and `,./-_*^`, lower-case, `'`→`"`), also inside lists and dict values; a param left out is fine only when `""`
  is among its acceptable values.

The verdict carries BFCL's error type (`simple_function_checker:wrong_func_name`, `type_error:simple`,
`value_error:string`, ...) and a sentence for humans. `check` never raises: model output can be anything.
Schemas are preprocessed once per `functions` object (cached by identity): the checker runs k×pool times in probing.
"""
from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from typing import Any

from toolace_r.calls.syntax import DECODERS, Call, _short, calls_from_objects, parse_calls
from toolace_r.errors import CallParseError


@dataclass(frozen=True)
class Verdict:
    valid: bool
    error_type: str = ""  # "" when valid; BFCL's error type otherwise
    reason: str = ""  # one sentence for humans; "" when valid

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str) -> "Verdict":
        d = json.loads(text)
        return cls(bool(d["valid"]), str(d.get("error_type", "")), str(d.get("reason", "")))


VALID = Verdict(True)

# Schema type → Python type. BFCL's mapping, plus JSON-Schema spellings and the Java/JavaScript type names of
# BFCL's java/javascript categories (their values are judged as python-syntax values here).
TYPE_MAP: dict[str, type] = {
    "string": str, "integer": int, "float": float, "boolean": bool, "array": list, "tuple": list, "dict": dict,
    "any": str,
    # JSON Schema / OpenAPI spellings found in tool-calling pools
    "object": dict, "number": float, "str": str, "int": int, "bool": bool, "list": list,
    # java / javascript categories
    "String": str, "Boolean": bool, "HashMap": dict, "Array": list, "ArrayList": list, "long": int, "double": float,
    "char": str, "Integer": int, "Long": int, "Double": float, "Float": float, "short": int, "byte": int,
}
NESTED_TYPES = {"array", "tuple", "Array", "ArrayList", "list"}

_STRIP_RE = re.compile(r"[ ,./\-_*^]")


def standardize_string(s: str) -> str:
    """BFCL's string normalisation: drop spaces and `,./-_*^`, lower-case, single quotes → double quotes."""
    return _STRIP_RE.sub("", s).lower().replace("'", '"')


# ----------------------------------------------------------------------------------------------------------------
# entry point
# ----------------------------------------------------------------------------------------------------------------
def check(
    output: str | list[dict[str, Any]],
    functions: list[dict[str, Any]],
    truth: list[dict[str, Any]],
    category: str,
    decoder: str = "lenient",
) -> Verdict:
    """Judge one model output. `output` is raw model text (decoded with `decoder`) or already-structured calls
    (`[{"name", "arguments"}]`, OpenAI tool calls, or BFCL's `[{name: {args}}]`). Never raises for any output or
    record; only an unknown `decoder` name (a programming error) raises ValueError."""
    decoder = decoder or "lenient"
    if decoder not in DECODERS:
        raise ValueError(f"unknown decoder {decoder!r}; expected one of {DECODERS}")
    try:
        return _check(output, functions, truth, category, decoder)
    except Exception as err:  # noqa: BLE001 - a checker that raises would abort a whole probing job
        return Verdict(False, "checker_error:bad_record", f"could not judge this record: {type(err).__name__}: {err}")


def call_rule(category: str | None, truth: list[dict[str, Any]]) -> str:
    """Which answers a record's category and truth call for, by BFCL's substring rule: "none" (irrelevance, or no
    truth outside a relevance category: right iff no call is decoded), "any" (live_relevance: right iff some call
    is) or "truth" (the calls are judged against the truth). The one place this rule is written: the oracle of
    toolace_r.evaluate answers by it too."""
    category = category or ""
    if "irrelevance" in category or (not truth and "relevance" not in category):
        return "none"
    if "relevance" in category:
        return "any"
    return "truth"


def _check(output: Any, functions: list[dict], truth: list[dict], category: str, decoder: str) -> Verdict:
    calls: list[Call] | None
    try:
        if isinstance(output, str):
            calls = parse_calls(output, decoder)
        else:
            calls = calls_from_objects(output if isinstance(output, list) else [output])
        decode_error = ""
    except CallParseError as err:
        calls, decode_error = None, str(err)

    rule = call_rule(category, truth)
    if rule == "none":
        if calls:
            names = ", ".join(str(c["name"]) for c in calls)
            return Verdict(False, "irrelevance_error:decoder_success",
                           f"made {len(calls)} call(s) ({_clip(names)}) where no function fits")
        return VALID
    if rule == "any":  # live_relevance
        if calls:
            return VALID
        return Verdict(False, "relevance_error:decoder_failed",
                       f"no function call where one was expected{': ' + decode_error if decode_error else ''}")
    if calls is None:
        return Verdict(False, "ast_decoder:decoder_failed", f"could not read the output as calls: {decode_error}")

    fns = prepare_functions(functions)
    category = category or ""
    if "parallel" in category:
        return _check_parallel(fns, calls, truth)
    if "multiple" in category:
        if len(calls) != len(truth):
            return Verdict(False, "multiple_function_checker:wrong_count",
                           f"expected {len(truth)} call, got {len(calls)}")
        return _check_call(fns.find(_truth_name(truth[0])), calls[0], truth[0])
    if len(calls) != 1:
        return Verdict(False, "simple_function_checker:wrong_count", f"expected exactly 1 call, got {len(calls)}")
    return _check_call(fns.first, calls[0], truth[0])


def _check_parallel(fns: "PreparedFunctions", calls: list[Call], truth: list[dict]) -> Verdict:
    if len(calls) != len(truth):
        return Verdict(False, "parallel_function_checker_no_order:wrong_count",
                       f"expected {len(truth)} calls, got {len(calls)}")
    matched: set[int] = set()
    for i, entry in enumerate(truth):
        fn = fns.find(_truth_name(entry))
        last: Verdict | None = None
        for j, call in enumerate(calls):
            if j in matched:
                continue
            last = _check_call(fn, call, entry)
            if last.valid:
                matched.add(j)
                break
        if last is None or not last.valid:
            sub = f" (closest: {last.error_type}: {last.reason})" if last is not None else ""
            return Verdict(False, "parallel_function_checker_no_order:cannot_find_match",
                           f"no call matches expected call {i} ({_clip(_truth_name(entry))}){sub}")
    return VALID


def _truth_name(entry: dict) -> str:
    return next(iter(entry))


# ----------------------------------------------------------------------------------------------------------------
# schema preprocessing
# ----------------------------------------------------------------------------------------------------------------
class PreparedFunction:
    """One schema, read once: name, required params, and per param (type name, python type, item python type)."""

    __slots__ = ("name", "required", "params")

    def __init__(self, schema: dict[str, Any]):
        if isinstance(schema.get("function"), dict):  # OpenAI tool format {"type": "function", "function": {...}}
            schema = schema["function"]
        self.name = schema.get("name")
        parameters = schema.get("parameters") or {}
        self.required = list(parameters.get("required") or [])
        self.params: dict[str, tuple[str, type | None, type | None]] = {}
        for pname, details in (parameters.get("properties") or {}).items():
            details = details if isinstance(details, dict) else {}
            type_name = details.get("type")
            if isinstance(type_name, list):  # JSON Schema unions, e.g. ["string", "null"]: first non-null
                type_name = next((t for t in type_name if t != "null"), None)
            expected = TYPE_MAP.get(type_name) if isinstance(type_name, str) else None
            nested = None
            if type_name in NESTED_TYPES:
                items = details.get("items")
                if isinstance(items, dict):
                    nested = TYPE_MAP.get(items.get("type")) if isinstance(items.get("type"), str) else None
            self.params[pname] = (str(type_name), expected, nested)


class PreparedFunctions:
    __slots__ = ("functions", "by_name", "first")

    def __init__(self, functions: list[dict[str, Any]]):
        self.functions = functions
        prepared = [PreparedFunction(f) for f in functions]
        self.first = prepared[0] if prepared else None
        self.by_name: dict[str, PreparedFunction] = {}
        for p in prepared:
            self.by_name.setdefault(p.name, p)  # the first schema of a name wins, as in BFCL

    def find(self, name: str) -> PreparedFunction | None:
        return self.by_name.get(name)


_CACHE: dict[int, PreparedFunctions] = {}
_CACHE_MAX = 8192


def prepare_functions(functions: list[dict[str, Any]]) -> PreparedFunctions:
    """Preprocessed schemas for `functions`, cached by object identity (treat schemas as read-only)."""
    key = id(functions)
    hit = _CACHE.get(key)
    if hit is not None and hit.functions is functions:
        return hit
    prepared = PreparedFunctions(functions if isinstance(functions, list) else [functions])
    if len(_CACHE) >= _CACHE_MAX:
        try:
            _CACHE.pop(next(iter(_CACHE)))
        except (KeyError, RuntimeError, StopIteration):  # another thread evicted first
            pass
    _CACHE[key] = prepared
    return prepared


# ----------------------------------------------------------------------------------------------------------------
# one call
# ----------------------------------------------------------------------------------------------------------------
def _check_call(fn: PreparedFunction | None, call: Call, entry: dict[str, Any]) -> Verdict:
    (truth_name, acceptable_map), = entry.items()
    if fn is None:
        return Verdict(False, "simple_function_checker:wrong_func_name",
                       f"no schema for the expected function {truth_name!r}")
    name = call.get("name")
    if name != fn.name:
        return Verdict(False, "simple_function_checker:wrong_func_name",
                       f"expected function {fn.name!r}, got {_clip(str(name))!r}")
    args = call.get("arguments") or {}
    for p in fn.required:
        if p not in args:
            return Verdict(False, "simple_function_checker:missing_required", f"{fn.name}: missing required {p!r}")
    for p, value in args.items():
        if p not in fn.params or p not in acceptable_map:
            where = "schema" if p not in fn.params else "expected answer"
            return Verdict(False, "simple_function_checker:unexpected_param",
                           f"{fn.name}: unexpected argument {_clip(str(p))!r} (not in the {where})")
        verdict = _check_param(fn.name, p, value, acceptable_map[p], *fn.params[p])
        if verdict is not None:
            return verdict
    for p, acceptable in acceptable_map.items():
        if p not in args and "" not in acceptable:
            return Verdict(False, "simple_function_checker:missing_optional",
                           f"{fn.name}: argument {p!r} left out, but the expected answer needs it")
    return VALID


def _check_param(fname: str, param: str, value: Any, acceptable: list, type_name: str,
                 expected: type | None, nested: type | None) -> Verdict | None:
    """None when the value is acceptable, else the failing verdict."""
    if type_name == "tuple" and type(value) is tuple:
        value = list(value)
    if expected is float and type(value) is int:
        value = float(value)

    is_variable = False
    if expected is not None:
        ok, is_variable, error_type = _type_check(value, acceptable, expected, nested)
        if not ok:
            return Verdict(False, error_type, _type_reason(fname, param, value, type_name, nested, error_type))
        if not is_variable:
            if expected is dict:
                return _dict_check(fname, param, value, acceptable)
            if expected is list and nested is dict:
                return _list_dict_check(fname, param, value, acceptable)
            if expected is str:
                std = standardize_string(value)
                if any(type(a) is str and standardize_string(a) == std for a in acceptable):
                    return None
                return Verdict(False, "value_error:string",
                               f"{fname}: {param}={_short(value)} is not among {_short(acceptable)}")
            if expected is list:
                return _list_check(fname, param, value, acceptable)
    elif type(value) is str:  # unknown schema type (not in BFCL data): compare strings normalised, others exactly
        std = standardize_string(value)
        if any(type(a) is str and standardize_string(a) == std for a in acceptable):
            return None
    if value in acceptable:
        return None
    return Verdict(False, "value_error:others", f"{fname}: {param}={_short(value)} is not among {_short(acceptable)}")


def _answer_type(acceptable: list) -> type | None:
    for a in acceptable:
        if a != "":
            return type(a)
    return None


def _type_check(value: Any, acceptable: list, expected: type, nested: type | None) -> tuple[bool, bool, str]:
    """BFCL's type_checker → (ok, is_variable, error_type). A value of the truth's type rather than the schema's is a
    "variable" (compared exactly later); lists get a one-level item check, skipped when an acceptable is not a list
    (e.g. "")."""
    answer_type = _answer_type(acceptable)
    is_variable = answer_type is not None and answer_type is not expected
    if type(value) is expected:
        if nested is None:
            return True, is_variable, ""
        for item in acceptable:
            if type(item) is not list or all(_item_type_ok(v, item, nested) for v in value):
                return True, is_variable, ""
        if answer_type is not None and type(value) is answer_type:
            return False, True, "type_error:nested"
        return False, True, "type_error:simple"
    if answer_type is not None and type(value) is answer_type:
        return True, True, ""
    return False, False, "type_error:simple"


def _item_type_ok(value: Any, acceptable_items: list, nested: type) -> bool:
    if type(value) is nested:
        return True
    answer_type = _answer_type(acceptable_items)
    return answer_type is not None and type(value) is answer_type


def _type_reason(fname: str, param: str, value: Any, type_name: str, nested: type | None, error_type: str) -> str:
    if error_type == "type_error:nested":
        return f"{fname}: {param} should be a {type_name} of {nested.__name__ if nested else '?'}, got {_short(value)}"
    return f"{fname}: {param} should be {type_name}, got {type(value).__name__} {_short(value)}"


def _std(x: Any) -> Any:
    return standardize_string(x) if type(x) is str else x


def _list_check(fname: str, param: str, value: list, acceptable: list) -> Verdict | None:
    std_value = [_std(x) for x in value]
    for a in acceptable:
        if isinstance(a, (list, tuple, str)) and std_value == [_std(x) for x in a]:
            return None
    return Verdict(False, "value_error:list/tuple", f"{fname}: {param}={_short(value)} is not among {_short(acceptable)}")


def _dict_check(fname: str, param: str, value: dict, acceptable: list) -> Verdict | None:
    """BFCL's dict_checker: some non-"" acceptable dict must take every given key with an acceptable (normalised)
    value, and every key it lists without "" must be given. Returns the last failure when none fits."""
    failure = Verdict(False, "dict_checker:unclear", f"{fname}: {param}={_short(value)} matches no expected dict")
    for answer in acceptable:
        if answer == "":
            continue
        failure = _dict_against(fname, param, value, answer)
        if failure is None:
            return None
    return failure


def _dict_against(fname: str, param: str, value: dict, answer: Any) -> Verdict | None:
    if not isinstance(answer, dict):
        return Verdict(False, "dict_checker:unclear", f"{fname}: {param}: expected answer is not a dict")
    failure = None
    for key, v in value.items():
        if key not in answer:
            failure = Verdict(False, "value_error:dict_key", f"{fname}: {param} has unexpected key {_short(key)}")
            break
        allowed = answer[key]
        if isinstance(allowed, str):
            allowed = list(allowed)
        if not isinstance(allowed, (list, tuple)) or _std(v) not in [_std(a) for a in allowed]:
            failure = Verdict(False, "value_error:dict_value",
                              f"{fname}: {param}[{_short(key)}]={_short(v)} is not among {_short(allowed)}")
            break
    # BFCL checks missing keys even after a value failed, and a missing key then names the error.
    for key, allowed in answer.items():
        if key not in value and "" not in allowed:
            return Verdict(False, "value_error:dict_key", f"{fname}: {param} is missing key {_short(key)}")
    return failure


def _list_dict_check(fname: str, param: str, value: list, acceptable: list) -> Verdict | None:
    """BFCL's list_dict_checker: some acceptable list of dicts of the same length matches element by element."""
    failure = Verdict(False, "list_dict_checker:unclear", f"{fname}: {param}={_short(value)} matches no expected list")
    for answer in acceptable:
        if not isinstance(answer, (list, str)) or len(value) != len(answer):
            failure = Verdict(False, "value_error:list_dict_count",
                              f"{fname}: {param} has {len(value)} dicts; expected {_short(answer)}")
            continue
        for item, expected_item in zip(value, answer):
            if not isinstance(item, dict):
                failure = Verdict(False, "value_error:dict_value", f"{fname}: {param} holds a non-dict {_short(item)}")
                break
            failure = _dict_check(fname, param, item, [expected_item])
            if failure is not None:
                break
        else:
            return None
    return failure


def gold_calls(truth: list[dict[str, Any]], functions: list[dict[str, Any]] | None = None) -> list[Call]:
    """One concrete call list that the checker accepts for `truth` (the training target / reference answer).

    Per param: a schema-required one takes its first acceptable value that is not ""; an optional one its first
    acceptable value, left out when that is ""; one the schema does not know is left out when "" allows it. Dict
    params (and arrays of dicts) hold acceptable lists per key in BFCL's truth, so their first choices are taken too.
    """
    fns = prepare_functions(functions) if functions is not None else None
    calls = []
    for entry in truth:
        (name, params), = entry.items()
        fn = fns.find(name) if fns is not None else None
        required = set(fn.required) if fn is not None else set()
        args: dict[str, Any] = {}
        for p, acceptable in params.items():
            choices = [a for a in acceptable if a != ""] if p in required else list(acceptable)
            unknown = fn is not None and p not in fn.params
            if not choices or choices[0] == "" or (unknown and "" in acceptable):
                continue
            expected, nested = (fn.params[p][1], fn.params[p][2]) if fn is not None and not unknown else (None, None)
            args[p] = _concrete(choices[0], expected, nested)
        calls.append({"name": name, "arguments": args})
    return calls


def _concrete(value: Any, expected: type | None, nested: type | None) -> Any:
    """Resolve BFCL's per-key acceptable lists inside dict values (and lists of dicts) to their first choice."""
    if expected is dict and isinstance(value, dict):
        return _concrete_dict(value)
    if expected is None and isinstance(value, dict) and all(isinstance(v, list) for v in value.values()):
        return _concrete_dict(value)  # no schema: BFCL's dict-of-acceptables shape
    if nested is dict and isinstance(value, list):
        return [_concrete_dict(v) if isinstance(v, dict) else v for v in value]
    return value


def _concrete_dict(d: dict) -> dict:
    out = {}
    for k, allowed in d.items():
        if isinstance(allowed, list):
            if allowed and allowed[0] != "":  # "" first: the key may be left out
                out[k] = allowed[0]
        else:
            out[k] = allowed
    return out


def _clip(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."
