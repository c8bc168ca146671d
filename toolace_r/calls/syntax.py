"""The tool-call language: read model text into calls, write calls back as text.

A call is `{"name": str, "arguments": dict}`; an answer is a list of calls. The project's own answer syntax is python
call syntax, `[f(a=1, b="x"), g(c=[1, 2])]`, but real model output also comes as JSON (`{"name", "arguments"}` or a
list of those, arguments as an object or a JSON string), Hermes/Qwen `<tool_call>{...}</tool_call>` blocks, OpenAI
`tool_calls` objects, inside code fences, or after a sentence of prose. `parse_calls(text)` (the *lenient* decoder)
accepts all of these; `parse_calls(text, decoder="bfcl")` reproduces the Berkeley Function Calling Leaderboard's own
decoder, quirks included (see bfcl.py), for scores comparable with the leaderboard.

Nothing here evaluates model text: python syntax is read with `ast.parse` and walked node by node, JSON with `json`.
Tool names that are not Python identifiers (`Market Trends API`, `spotify.play`, `/madlibs-diceware`) and argument
names that are Python keywords (`from=`) are swapped for placeholders before `ast.parse` and swapped back after.

Contract: plain prose with no call attempt parses to `[]`; a malformed call attempt raises `CallParseError` with the
reason; no other exception escapes for any input string.
"""
from __future__ import annotations

import ast
import json
import keyword
import math
import re
import warnings
from typing import Any

from toolace_r.errors import CallParseError

Call = dict[str, Any]  # {"name": str, "arguments": dict}

DECODERS = ("lenient", "bfcl")


def decoder_label(decoder: str) -> str:
    """How a report names the decoder behind its figures: only `bfcl` reads answers as the leaderboard does."""
    return f"{decoder} (the leaderboard's)" if decoder == "bfcl" else f"{decoder} (not the leaderboard's)"


# Model text is parsed under this file name, so that Python's compile-time warnings about it ("invalid decimal
# literal", "invalid escape sequence") are silenced without touching warnings about real code.
SOURCE_NAME = "<model-output>"
for _category in (SyntaxWarning, DeprecationWarning):
    warnings.filterwarnings("ignore", category=_category, module=re.escape(SOURCE_NAME))


# ----------------------------------------------------------------------------------------------------------------
# parsing
# ----------------------------------------------------------------------------------------------------------------
def parse_calls(text: str, decoder: str = "lenient") -> list[Call]:
    """Model text → `[{"name", "arguments"}]`. `[]` for prose with no call attempt (lenient decoder only: BFCL's
    decoder rejects prose with CallParseError, which BFCL counts as "no call"). Raises CallParseError otherwise."""
    if decoder == "bfcl":
        from toolace_r.calls.bfcl import decode_bfcl

        return decode_bfcl(text)
    if decoder != "lenient":
        raise ValueError(f"unknown decoder {decoder!r}; expected one of {DECODERS}")
    if not isinstance(text, str):
        raise CallParseError(f"model output must be text, got {type(text).__name__}")
    try:
        return _parse_lenient(text)
    except CallParseError:
        raise
    except (RecursionError, MemoryError) as err:
        raise CallParseError(f"output too deeply nested or too large to read ({type(err).__name__})") from None


_THINK_RE = re.compile(r"<think>.*?(?:</think>|$)", re.DOTALL)
_FENCE_RE = re.compile(r"```[ \t]*[A-Za-z0-9_+-]*[ \t]*\r?\n?(.*?)(?:```|$)", re.DOTALL)
_TOOL_CALL_RE = re.compile(r"<tool_call>(.*?)(?:</tool_call>|$)", re.DOTALL)
# A call head at the very start: a name without spaces, then "(".
_HEAD_RE = re.compile(r"[^\s()\[\]{}\"'`,;:!?=<>]+\(")
# A name with spaces ("Market Trends API(") counts as a call attempt only when the text also ends like a call.
_SPACED_HEAD_RE = re.compile(r"[A-Za-z_/][\w./\- ]{0,120}\(")
# A call list inside prose: "Here you go: [get_weather(city="Paris")]".
_EMBEDDED_RE = re.compile(r"\[[ \t]*[A-Za-z_/][\w./\-]{0,80}(?: [\w./\-]{1,80}){0,8}[ \t]*\(")


def _parse_lenient(text: str) -> list[Call]:
    s = text.strip()
    if not s:
        return []
    direct_error: CallParseError | None = None
    if _looks_like_call(s):
        try:
            return _parse_direct(s)
        except CallParseError as err:  # maybe wrapped text after all (a fence or tags inside): look further
            direct_error = err
    if "<think>" in s:
        without = _THINK_RE.sub("", s)
        if without != s:
            return _parse_lenient(without)
    if "<tool_call>" in s:
        return _parse_tool_call_blocks(s)
    if "```" in s:
        fence = _FENCE_RE.search(s)
        inner = fence.group(1).strip() if fence else s
        if inner != s:
            try:
                return _parse_lenient(inner) if inner else []
            except CallParseError:
                if direct_error is None:
                    raise
    if direct_error is not None:
        raise direct_error
    m = _EMBEDDED_RE.search(s)
    if m:
        end = _balanced_end(s, m.start())
        return _parse_python(s[m.start():end] if end is not None else s[m.start():])
    return []  # prose, no call attempt


def _looks_like_call(s: str) -> bool:
    return s[0] in "[{" or _HEAD_RE.match(s) is not None or (
        _SPACED_HEAD_RE.match(s) is not None and s.endswith((")", "]")))


def _parse_direct(s: str) -> list[Call]:
    """Text that starts like an answer: JSON when it reads as JSON, python call syntax otherwise."""
    if s[0] == "{" or (s[0] == "[" and s[1:].lstrip()[:1] in ("{", "]", "")):
        try:
            obj = json.loads(s)
        except ValueError:
            obj = _NOT_JSON
        except RecursionError:
            raise CallParseError("JSON nested too deeply") from None
        if obj is not _NOT_JSON:
            return calls_from_objects(obj)
    return _parse_python(s)


_NOT_JSON = object()


def _parse_tool_call_blocks(s: str) -> list[Call]:
    calls: list[Call] = []
    for i, block in enumerate(_TOOL_CALL_RE.findall(s)):
        body = block.strip()
        if not body:
            raise CallParseError(f"<tool_call> block {i} is empty")
        try:
            obj = json.loads(body)
        except ValueError as err:
            if body[0] in "{[" and not _HEAD_RE.match(body):
                raise CallParseError(f"<tool_call> block {i} is not valid JSON: {err}") from None
            calls.extend(_parse_python(body))  # some models write python calls inside the tags
            continue
        except RecursionError:
            raise CallParseError(f"<tool_call> block {i}: JSON nested too deeply") from None
        calls.extend(calls_from_objects(obj))
    return calls


_CALL_KEYS = {"name", "arguments", "parameters", "function", "tool_calls", "type", "id"}


def calls_from_objects(obj: Any) -> list[Call]:
    """Decoded JSON / Python objects → calls. Accepts `{"name", "arguments"|"parameters"}` (arguments as an object
    or a JSON string), OpenAI tool calls `{"type": "function", "function": {...}}`, an assistant message or
    response with `"tool_calls"`, BFCL's decoded form `{name: {args}}`, and lists of any of these."""
    if isinstance(obj, list):
        out: list[Call] = []
        for item in obj:
            out.extend(calls_from_objects(item))
        return out
    if not isinstance(obj, dict):
        raise CallParseError(f"expected a call object or a list of them, got {_kind(obj)}")
    if "tool_calls" in obj:
        tool_calls = obj["tool_calls"]
        if tool_calls is None:
            return []
        if not isinstance(tool_calls, list):
            raise CallParseError(f"'tool_calls' must be a list, got {_kind(tool_calls)}")
        return calls_from_objects(tool_calls)
    if isinstance(obj.get("function"), dict):  # OpenAI tool call
        return calls_from_objects(obj["function"])
    if "name" in obj or "function" in obj:
        name = obj["name"] if "name" in obj else obj["function"]
        if not isinstance(name, str) or not name.strip():
            raise CallParseError(f"call name must be a non-empty string, got {_short(name)}")
        args = obj.get("arguments", obj.get("parameters", {}))
        if args is None:
            args = {}
        if isinstance(args, str):
            try:
                args = json.loads(args) if args.strip() else {}
            except ValueError as err:
                raise CallParseError(f"arguments of {name!r} are not valid JSON: {err}") from None
            except RecursionError:
                raise CallParseError(f"arguments of {name!r} are nested too deeply") from None
        if not isinstance(args, dict):
            raise CallParseError(f"arguments of {name!r} must be an object, got {_kind(args)}")
        return [{"name": name, "arguments": args}]
    if len(obj) == 1:  # BFCL's decoded form {name: {args}}
        ((name, args),) = obj.items()
        if isinstance(name, str) and name and name not in _CALL_KEYS and isinstance(args, dict):
            return [{"name": name, "arguments": args}]
    raise CallParseError(f"object is not a tool call (keys: {_short(sorted(map(str, obj)))})")


# --- python call syntax ---------------------------------------------------------------------------------------
def _parse_python(s: str) -> list[Call]:
    try:
        return _calls_from_tree(ast.parse(s, filename=SOURCE_NAME, mode="eval").body, {})
    except (SyntaxError, ValueError, _NeedsSubstitution):
        pass  # names Python cannot read: substitute placeholders and try again
    substituted, names = _substitute_names(s)
    try:
        tree = ast.parse(substituted, filename=SOURCE_NAME, mode="eval")
    except SyntaxError as err:
        raise CallParseError(f"not valid call syntax: {err.msg} (line {err.lineno}, column {err.offset})") from None
    except ValueError as err:
        raise CallParseError(f"not valid call syntax: {err}") from None
    try:
        return _calls_from_tree(tree.body, names)
    except _NeedsSubstitution as err:
        raise CallParseError(str(err)) from None


class _NeedsSubstitution(CallParseError):
    """A call target Python parsed but we cannot name (`None(a=1)`): retry with placeholders."""


def _calls_from_tree(body: ast.expr, names: dict[str, str]) -> list[Call]:
    if isinstance(body, ast.Call):
        return [_call(body, names)]
    if isinstance(body, (ast.List, ast.Tuple)):
        if all(isinstance(e, ast.Call) for e in body.elts):
            return [_call(e, names) for e in body.elts]
        if all(isinstance(e, ast.Dict) for e in body.elts):  # JSON-like call objects in python syntax
            return calls_from_objects(_value(body, names))
        bad = next(e for e in body.elts if not isinstance(e, ast.Call))
        # `[A/(x=1)]` parses, as a division: retry with placeholder names before calling it malformed
        raise _NeedsSubstitution(f"list item {body.elts.index(bad)} is not a call ({_node_text(bad)})")
    if isinstance(body, ast.Dict):
        return calls_from_objects(_value(body, names))
    raise _NeedsSubstitution(f"expected a call or a list of calls, got {_node_text(body)}")


def _call(node: ast.Call, names: dict[str, str]) -> Call:
    name = _call_name(node.func, names)
    if name is None:
        raise _NeedsSubstitution(f"call target is not a function name: {_node_text(node.func)}")
    if node.args:
        raise CallParseError(
            f"{name}: positional argument {_node_text(node.args[0])}; tool calls take keyword arguments (name=value)"
        )
    args: dict[str, Any] = {}
    for kw in node.keywords:
        if kw.arg is None:
            raise CallParseError(f"{name}: **{_node_text(kw.value)} is not allowed; write each argument as name=value")
        key = names.get(kw.arg, kw.arg)
        if key in args:
            raise CallParseError(f"{name}: argument {key!r} given twice")
        args[key] = _value(kw.value, names)
    return {"name": name, "arguments": args}


def _call_name(func: ast.expr, names: dict[str, str]) -> str | None:
    parts = []
    while isinstance(func, ast.Attribute):
        parts.append(func.attr)
        func = func.value
    if not isinstance(func, ast.Name):
        return None
    parts.append(func.id)
    name = ".".join(reversed(parts))
    return names.get(name, name)


_NAME_LITERALS = {"true": True, "false": False, "null": None, "none": None, "True": True, "False": False, "None": None}


def _value(node: ast.expr, names: dict[str, str]) -> Any:
    """An argument value node → Python value. Literals as written; JSON spellings true/false/null accepted; a bare
    name or a call without keywords is kept as its source text (BFCL reads them as strings); a call with keywords is
    a nested call `{name: {args}}` (BFCL's reading)."""
    if isinstance(node, ast.Constant):
        v = node.value
        if v is Ellipsis:
            return "..."
        if isinstance(v, (bytes, complex)):
            raise CallParseError(f"unsupported literal {_node_text(node)}")
        return v
    if isinstance(node, ast.List):
        return [_value(e, names) for e in node.elts]
    if isinstance(node, ast.Tuple):
        return tuple(_value(e, names) for e in node.elts)
    if isinstance(node, ast.Dict):
        out = {}
        for k, v in zip(node.keys, node.values):
            if k is None:
                raise CallParseError(f"dict unpacking **{_node_text(v)} is not a value")
            key = _value(k, names)
            try:
                out[key] = _value(v, names)
            except TypeError:
                raise CallParseError(f"dict key {_node_text(k)} is not hashable") from None
        return out
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        operand = _value(node.operand, names)
        if isinstance(operand, bool) or not isinstance(operand, (int, float)):
            raise CallParseError(f"sign applied to a non-number: {_node_text(node)}")
        return -operand if isinstance(node.op, ast.USub) else operand
    if isinstance(node, ast.Name):
        return _NAME_LITERALS.get(node.id, names.get(node.id, node.id))
    if isinstance(node, ast.BinOp):
        return safe_arith(node)
    if isinstance(node, ast.Call):
        if node.keywords and not node.args:
            call = _call(node, names)
            return {call["name"]: call["arguments"]}
        return _unparse(node)
    if isinstance(node, (ast.Attribute, ast.Subscript)):
        return _unparse(node)
    raise CallParseError(f"unsupported expression as a value: {_node_text(node)}")


# --- safe arithmetic (BFCL accepts `4 + 1` as a value; it evaluates it, we compute it without eval) -------------
_MAX_BITS = 1 << 16  # results larger than this are refused instead of computed (no hang on 9**9**9)
_MAX_LEN = 1 << 16

_BINOPS = {
    ast.Add: lambda a, b: a + b, ast.Sub: lambda a, b: a - b, ast.Mult: lambda a, b: a * b,
    ast.Div: lambda a, b: a / b, ast.FloorDiv: lambda a, b: a // b, ast.Mod: lambda a, b: a % b,
    ast.Pow: lambda a, b: a ** b, ast.LShift: lambda a, b: a << b, ast.RShift: lambda a, b: a >> b,
    ast.BitOr: lambda a, b: a | b, ast.BitXor: lambda a, b: a ^ b, ast.BitAnd: lambda a, b: a & b,
    ast.MatMult: lambda a, b: a @ b,
}
_UNARY = {ast.USub: lambda a: -a, ast.UAdd: lambda a: +a, ast.Not: lambda a: not a, ast.Invert: lambda a: ~a}


def safe_arith(node: ast.expr) -> Any:
    """Compute a constant expression made of literals and operators, as Python would, refusing huge results.
    Raises CallParseError for anything else (names, calls, comprehensions) or for an error in the computation."""
    try:
        return _arith(node)
    except CallParseError:
        raise
    except (ArithmeticError, TypeError, ValueError, RecursionError, MemoryError) as err:
        raise CallParseError(f"cannot compute {_node_text(node)}: {type(err).__name__}: {err}") from None


def _arith(node: ast.expr) -> Any:
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.BinOp):
        a, b = _arith(node.left), _arith(node.right)
        _guard_size(node.op, a, b)
        return _BINOPS[type(node.op)](a, b)
    if isinstance(node, ast.UnaryOp):
        return _UNARY[type(node.op)](_arith(node.operand))
    if isinstance(node, ast.List):
        return [_arith(e) for e in node.elts]
    if isinstance(node, ast.Tuple):
        return tuple(_arith(e) for e in node.elts)
    if isinstance(node, ast.Set):
        return {_arith(e) for e in node.elts}
    if isinstance(node, ast.Dict) and None not in node.keys:
        return {_arith(k): _arith(v) for k, v in zip(node.keys, node.values)}
    raise CallParseError(f"not a constant expression: {_node_text(node)}")


def _guard_size(op: ast.operator, a: Any, b: Any) -> None:
    def bits(x: Any) -> int:
        return abs(int(x)).bit_length() if isinstance(x, int) else 64

    if isinstance(op, ast.Pow) and isinstance(a, int) and isinstance(b, int) and b > 0:
        if bits(a) * b > _MAX_BITS:
            raise CallParseError("exponentiation result too large")
    elif isinstance(op, ast.LShift) and isinstance(b, int) and b > _MAX_BITS:
        raise CallParseError("shift result too large")
    elif isinstance(op, ast.Mult):
        for seq, n in ((a, b), (b, a)):
            if isinstance(seq, (str, bytes, list, tuple)) and isinstance(n, int) and len(seq) * n > _MAX_LEN:
                raise CallParseError("repeated sequence too large")


# --- pre-pass for names that are not identifiers --------------------------------------------------------------
# At each position where a call name or an argument name can start (text start, after "[", "(" or ","), a name that
# Python cannot read is replaced by a placeholder identifier; the mapping is applied back after parsing.
_CALL_NAME_AT = re.compile(r"\s*([^\s=()\[\]{}\"'`,;:#][^=()\[\]{}\"'`,;#\n]{0,200}?)[ \t]*\(")
_ARG_NAME_AT = re.compile(r"\s*([A-Za-z_$][\w$.\-]{0,200})\s*=(?!=)")
_NUMBER_LIKE = re.compile(r"[-+]?[\d.][\w.+-]*")


def _is_dotted_identifier(name: str) -> bool:
    return all(p.isidentifier() and not keyword.iskeyword(p) for p in name.split("."))


def _substitute_names(s: str) -> tuple[str, dict[str, str]]:
    out: list[str] = []
    names: dict[str, str] = {}
    placeholders: dict[str, str] = {}

    def placeholder(name: str) -> str:
        if name not in placeholders:
            ph = f"__toolace_name_{len(placeholders)}__"
            placeholders[name] = ph
            names[ph] = name
        return placeholders[name]

    def try_heads(pos: int) -> int:
        """At a head position: substitute a non-identifier call or argument name; return the new position."""
        m = _CALL_NAME_AT.match(s, pos)
        if m and not _is_dotted_identifier(m.group(1)) and not _is_literal_start(m.group(1)):
            # stop before "(" so that the main loop sees it and looks for argument names after it
            out.append(s[pos:m.start(1)] + placeholder(m.group(1)) + s[m.end(1):m.end() - 1])
            return m.end() - 1
        m = _ARG_NAME_AT.match(s, pos)
        if m and not _is_dotted_identifier(m.group(1)):
            out.append(s[pos:m.start(1)] + placeholder(m.group(1)) + s[m.end(1):m.end()])
            return m.end()
        return pos

    i, n = 0, len(s)
    i = try_heads(0)
    while i < n:
        c = s[i]
        if c in "\"'":
            end = _string_end(s, i)
            out.append(s[i:end])
            i = end
            continue
        out.append(c)
        i += 1
        if c in "[(,":
            i = try_heads(i)
    return "".join(out), names


def _is_literal_start(text: str) -> bool:
    return _NUMBER_LIKE.fullmatch(text) is not None


def _string_end(s: str, i: int) -> int:
    """Index just past the string literal starting at s[i] (a quote); len(s) if it never closes."""
    q = s[i]
    triple = s.startswith(q * 3, i)
    delim = q * 3 if triple else q
    j = i + len(delim)
    n = len(s)
    while j < n:
        c = s[j]
        if c == "\\":
            j += 2
            continue
        if s.startswith(delim, j):
            return j + len(delim)
        if c == "\n" and not triple:
            return j
        j += 1
    return n


def _balanced_end(s: str, start: int) -> int | None:
    """Index just past the bracket group opening at s[start], skipping string literals; None if unbalanced."""
    depth = 0
    i, n = start, len(s)
    while i < n:
        c = s[i]
        if c in "\"'":
            i = _string_end(s, i)
            continue
        if c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
            if depth == 0:
                return i + 1
        i += 1
    return None


# --- small helpers ------------------------------------------------------------------------------------------------
def _unparse(node: ast.AST) -> str:
    try:
        return ast.unparse(node)
    except (ValueError, RecursionError):  # e.g. an int too long to print
        raise CallParseError("expression too large to read") from None


def _node_text(node: ast.AST) -> str:
    try:
        text = ast.unparse(node)
    except Exception:  # noqa: BLE001 - only used to word an error message
        text = type(node).__name__
    return text if len(text) <= 60 else text[:57] + "..."


def _kind(obj: Any) -> str:
    return f"{type(obj).__name__} {_short(obj)}"


def _short(obj: Any, limit: int = 60) -> str:
    try:
        text = repr(obj)
    except Exception:  # noqa: BLE001 - repr of a huge int can fail
        text = f"<{type(obj).__name__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


# ----------------------------------------------------------------------------------------------------------------
# rendering
# ----------------------------------------------------------------------------------------------------------------
_ESCAPES = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _py_str(s: str) -> str:
    """A double-quoted Python string literal that ast.parse reads back to exactly `s`."""
    parts = []
    for ch in s:
        esc = _ESCAPES.get(ch)
        if esc is not None:
            parts.append(esc)
        elif ch < " " or ch == "\x7f" or "\ud800" <= ch <= "\udfff":
            parts.append(f"\\u{ord(ch):04x}")
        else:
            parts.append(ch)
    return '"' + "".join(parts) + '"'


_SIMPLE_STR = re.compile(r'[^"\\\x00-\x1f\x7f\ud800-\udfff]*\Z')


def py_value(v: Any) -> str:
    """A Python value → python-call-syntax source that `parse_calls` reads back to the same value."""
    if isinstance(v, str):
        return '"' + v + '"' if _SIMPLE_STR.match(v) else _py_str(v)
    if v is None or isinstance(v, bool):
        return repr(v)
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "float(\"nan\")"  # not read back as a number: NaN never equals itself anyway
        if math.isinf(v):
            return "1e999" if v > 0 else "-1e999"
        return repr(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(py_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{py_value(k)}: {py_value(x)}" for k, x in v.items()) + "}"
    return _py_str(str(v))


def render_python(calls: list[Call]) -> str:
    """[{"name", "arguments"}] → `[f(a=1), g(b="x")]`. Names are written as they are, also when they are not
    identifiers (`[Market Trends API(x=1)]`): the lenient decoder reads them back."""
    return "[" + ", ".join(
        f"{c['name']}(" + ", ".join(f"{k}={py_value(v)}" for k, v in (c.get("arguments") or {}).items()) + ")"
        for c in calls
    ) + "]"


def render_json(calls: list[Call]) -> str:
    """Calls → a JSON list of `{"name", "arguments"}` objects."""
    return json.dumps(
        [{"name": c["name"], "arguments": c.get("arguments") or {}} for c in calls], ensure_ascii=False
    )


def render_openai(calls: list[Call]) -> list[dict[str, Any]]:
    """Calls → OpenAI chat-completions `tool_calls` (arguments as a JSON string, ids `call_0`, `call_1`, ...)."""
    return [
        {
            "id": f"call_{i}",
            "type": "function",
            "function": {"name": c["name"], "arguments": json.dumps(c.get("arguments") or {}, ensure_ascii=False)},
        }
        for i, c in enumerate(calls)
    ]


# ----------------------------------------------------------------------------------------------------------------
# comparing
# ----------------------------------------------------------------------------------------------------------------
def _canonical(v: Any) -> Any:
    if isinstance(v, dict):
        return ("d", tuple(sorted(((repr(k), _canonical(x)) for k, x in v.items()))))
    if isinstance(v, (list, tuple)):
        return ("l", tuple(_canonical(x) for x in v))
    return (type(v).__name__, repr(v))


def calls_equal(a: list[Call], b: list[Call]) -> bool:
    """Same calls, in any order: names equal and arguments equal by value and type (1 ≠ 1.0 ≠ True, list = tuple).
    Used to stop refinement when an answer repeats."""
    if len(a) != len(b):
        return False
    key = lambda c: (str(c.get("name")), _canonical(c.get("arguments") or {}))  # noqa: E731
    return sorted(map(key, a)) == sorted(map(key, b))
