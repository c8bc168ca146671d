"""Constrained decoding of tool calls: an answer that must be (or, guided, may be) a call stays a valid one.

What the constraint allows (`CallConstraint`): the project's answer syntax as `calls.render_python` writes it,
`[f(a=1, b="x"), g(c=[1, 2])]`, with

- function names from the allowed tools only (tool_choice "required": any of them; a named function: that one);
- per call, the tool's parameters in the schema's order, each at most once, every `required` one present, no other;
- values of the parameter's JSON-schema type, written the way `render_python` writes them: string `"..."` (escapes
  `\\ \\" \\n \\r \\t \\uXXXX`), integer, number (an integer or a decimal / exponent literal), boolean `True`/`False`,
  null `None`, array `[v, ...]` of its `items`, object `{"k": v, ...}` with its `properties` (in order, `required`
  ones present) or any keys without them, enum: one of the listed values; no `type`: any of these. BFCL's type
  names (`float`, `dict`, `tuple`, `any` = string, ...) read as the checker reads them (toolace_r.calls.checker);
- `max_calls=1` (`parallel_tool_calls: false`): exactly one call;
- `allow_text` (the `guided` option of tool_choice "auto"): instead of a call list, text that holds no call opening
  (`[ { ( <` or a backtick), which the call parser reads as no call; an answer that starts with `[` is a call list;
- `allow_confirm` (refinement rounds > 1 of a model trained with refine.keep_answer=confirm): `prompts.CONFIRM_ANSWER`,
  which stands for the previous round's (constrained) call.

Why the fixed parameter order: a grammar that lets every order through needs a state per subset of the parameters
given so far (exponential); the schema's order is the order `render_python` and every training target use (the demo's
model writes it in all 1 223 calls of its held-out answers), so nothing a trained model writes is lost.

How: the grammar is generated from the tool schemas as Lark and run by llguidance (a Rust grammar engine; byte-level,
so it works with any HF fast tokenizer, and its matcher rolls back, which draft verification needs). Per row and step
it gives the mask of allowed tokens (`RowGuide.mask`). The grammar does not bound the answer's length, so a model
that rambles inside a string would be cut off by max_tokens with an unclosed call: `RowGuide` also tracks where the
answer is in the call syntax (`Tracker`, a small pushdown automaton over the same language) and knows the shortest
text that closes it from there (the open string, value, missing required arguments with minimal values, brackets).
A token is taken only if the closing after it still fits in the tokens left; otherwise the closing tokens are forced
from that step on. So every answer is closed within the budget whenever the shortest complete call fits in it.

The decoder consults a row through `RowGuide.choose(logits, pick, remaining)` (mask → the decoder's own picker → the
budget check), `RowGuide.sync(tokens)` (the row's answer so far, after draft tokens were accepted or rejected) and
`RowGuide.predict` (the per-position choices that verify a draft). The decoder imports this module only for a batch
that holds a constrained row, and rows without a constraint decode exactly as before.
"""
from __future__ import annotations

import copy
import json
import logging
import math
import threading
from dataclasses import dataclass
from typing import Any, Callable

import torch

from toolace_r.data.prompts import CONFIRM_ANSWER

log = logging.getLogger(__name__)

CALL_OPENINGS = "[{<(`"  # text that holds none of these is never read as a call attempt (calls.parse_calls)
MAX_SCHEMA_DEPTH = 16  # nested schemas deeper than this accept any value there

# ---------------------------------------------------------------------------------------------------------------------
# JSON schema → value specs
# ---------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Spec:
    """What a value may be. kind: str int num bool null enum list obj dict any union."""
    kind: str
    options: tuple[str, ...] = ()  # enum: the allowed values as render_python writes them
    items: "Spec | None" = None  # list: its items; dict: its values
    props: tuple[tuple[str, "Spec", bool], ...] = ()  # obj: (key, spec, required) in schema order
    alts: tuple["Spec", ...] = ()  # union: at most one per first character class (see _cls)


ANY = Spec("any")
STR, INT, NUM, BOOL, NULL = Spec("str"), Spec("int"), Spec("num"), Spec("bool"), Spec("null")
_TYPES = {
    "string": STR, "str": STR, "String": STR, "char": STR, "any": STR,  # BFCL's "any" is checked as a string
    "integer": INT, "int": INT, "long": INT, "short": INT, "byte": INT, "Integer": INT, "Long": INT,
    "number": NUM, "float": NUM, "double": NUM, "Float": NUM, "Double": NUM,
    "boolean": BOOL, "bool": BOOL, "Boolean": BOOL,
    "null": NULL,
}
_LISTS = {"array", "tuple", "list", "Array", "ArrayList"}
_OBJECTS = {"object", "dict", "HashMap"}


def _literal(value: Any) -> str | None:
    """An enum value as render_python writes it; None for values it cannot write back as themselves."""
    from toolace_r.calls.syntax import py_value

    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is None or isinstance(value, (str, bool, int, float)):
        return py_value(value)
    return None


def spec_of(schema: Any, depth: int = 0) -> Spec:
    """A parameter's JSON schema → its Spec (unknown or missing types: any value)."""
    if not isinstance(schema, dict) or depth > MAX_SCHEMA_DEPTH:
        return ANY
    values = schema.get("enum") if isinstance(schema.get("enum"), list) else (
        [schema["const"]] if "const" in schema else None)
    if values:
        options = tuple(dict.fromkeys(o for o in map(_literal, values) if o is not None))
        if options:
            return _union([Spec("enum", options=options)])
    for key in ("anyOf", "oneOf"):
        if isinstance(schema.get(key), list) and schema[key]:
            return _union([spec_of(s, depth + 1) for s in schema[key]])
    kind = schema.get("type")
    if isinstance(kind, list):
        return _union([spec_of({**schema, "type": k}, depth) for k in kind]) if kind else ANY
    if kind is None:
        kind = "object" if isinstance(schema.get("properties"), dict) else "array" if "items" in schema else None
    if not isinstance(kind, str):
        return ANY
    if kind in _TYPES:
        return _TYPES[kind]
    if kind in _LISTS:
        items = schema.get("items")
        return Spec("list", items=spec_of(items, depth + 1) if isinstance(items, dict) else ANY)
    if kind in _OBJECTS:
        props = schema.get("properties")
        if isinstance(props, dict) and props:
            required = _required(schema)
            return Spec("obj", props=tuple((str(k), spec_of(v, depth + 1), k in required) for k, v in props.items()))
        extra = schema.get("additionalProperties")
        return Spec("dict", items=spec_of(extra, depth + 1) if isinstance(extra, dict) else ANY)
    return ANY


def _required(schema: dict[str, Any]) -> set[str]:
    names = schema.get("required")
    return {n for n in names if isinstance(n, str)} if isinstance(names, list) else set()


def _cls(text_start: str) -> str:
    """The class of a value by its first character: q string, n number, b boolean, z None, l list, o dict."""
    c = text_start[:1]
    if c == '"':
        return "q"
    if c.isdigit() or c == "-":
        return "n"
    return {"T": "b", "F": "b", "N": "z", "[": "l", "{": "o"}.get(c, "?")


_KIND_CLASS = {"str": "q", "int": "n", "num": "n", "bool": "b", "null": "z", "list": "l", "obj": "o", "dict": "o"}


def _union(specs: list[Spec]) -> Spec:
    """Alternatives → one Spec whose alternatives differ in their first character (so a value's first character says
    which one it is, for the grammar and the tracker alike); same-class alternatives are merged into the looser one."""
    flat: list[Spec] = []
    for s in specs:
        flat.extend(s.alts if s.kind == "union" else [s])
    if any(s.kind == "any" for s in flat):
        return ANY
    by_class: dict[str, Spec] = {}
    for s in flat:
        parts: list[tuple[str, Spec]]
        if s.kind == "enum":
            groups: dict[str, list[str]] = {}
            for o in s.options:
                groups.setdefault(_cls(o), []).append(o)
            parts = [(c, Spec("enum", options=tuple(os))) for c, os in groups.items()]
        else:
            parts = [(_KIND_CLASS[s.kind], s)]
        for c, part in parts:
            by_class[c] = _merge(by_class[c], part) if c in by_class else part
    alts = tuple(by_class.values())
    return alts[0] if len(alts) == 1 else Spec("union", alts=alts)


def _merge(a: Spec, b: Spec) -> Spec:
    if a == b:
        return a
    if a.kind == "enum" and b.kind == "enum":
        return Spec("enum", options=tuple(dict.fromkeys(a.options + b.options)))
    kinds = {a.kind, b.kind}
    if kinds <= {"str", "enum"}:
        return STR
    if kinds <= {"int", "num", "enum"}:
        numbers = [o for s in (a, b) if s.kind == "enum" for o in s.options]
        return NUM if "num" in kinds or any(not o.lstrip("-").isdigit() for o in numbers) else INT
    if kinds <= {"bool", "enum"}:
        return BOOL
    if kinds == {"list"}:
        return Spec("list", items=_union([a.items or ANY, b.items or ANY]))
    return Spec("dict", items=ANY)  # two different objects: any dict


def _key(name: str) -> str:
    """An object property's key as render_python writes it, with the `: ` after it."""
    from toolace_r.calls.syntax import py_value

    return py_value(name) + ": "


def min_text(spec: Spec) -> str:
    """The shortest value of `spec` (what a forced closing fills a missing argument with)."""
    kind = spec.kind
    if kind == "str":
        return '""'
    if kind in ("int", "num", "any"):
        return "0"
    if kind == "bool":
        return "True"
    if kind == "null":
        return "None"
    if kind == "enum":
        return min(spec.options, key=len)
    if kind == "list":
        return "[]"
    if kind == "dict":
        return "{}"
    if kind == "obj":
        return "{" + ", ".join(_key(k) + min_text(s) for k, s, req in spec.props if req) + "}"
    return min((min_text(a) for a in spec.alts), key=len)


# ---------------------------------------------------------------------------------------------------------------------
# The constraint of one request
# ---------------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Function:
    name: str
    params: tuple[tuple[str, Spec, bool], ...]  # (name, spec, required) in schema order


class CallConstraint:
    """What one request's answer may be (module doc): calls to `tools` (project schemas `{name, parameters}`), at
    most `max_calls` (None: any number ≥ 1), or with `allow_text` prose that holds no call. Tokenizer-free: a
    decoder turns it into per-row guides (`guide`)."""

    def __init__(self, tools: list[dict[str, Any]], *, allow_text: bool = False, max_calls: int | None = None):
        if max_calls not in (None, 1):
            raise ValueError(f"max_calls must be None or 1, got {max_calls!r}")
        functions = []
        for tool in tools:
            if isinstance(tool.get("function"), dict):  # OpenAI {"type": "function", "function": {...}}
                tool = tool["function"]
            params = tool.get("parameters") if isinstance(tool.get("parameters"), dict) else {}
            props = params.get("properties") if isinstance(params.get("properties"), dict) else {}
            functions.append(Function(str(tool.get("name", "")), tuple(
                (str(k), spec_of(v), k in _required(params)) for k, v in props.items())))
        if not functions and not allow_text:
            raise ValueError("a call is demanded but no tools are given")
        self.functions = tuple(functions)
        self.allow_text = allow_text
        self.max_calls = max_calls
        self._lark: dict[bool, str] = {}
        self._shapes: _Shapes | None = None

    def lark(self, allow_confirm: bool = False) -> str:
        """The grammar (Lark, as llguidance reads it); `allow_confirm` adds prompts.CONFIRM_ANSWER."""
        if allow_confirm not in self._lark:
            self._lark[allow_confirm] = _Grammar(self, allow_confirm).text()
        return self._lark[allow_confirm]

    def tracker(self, allow_confirm: bool = False) -> "Tracker":
        """A fresh tracker at the start of an answer."""
        if self._shapes is None:
            self._shapes = _Shapes(self)
        return Tracker(self._shapes, allow_confirm)


# ---------------------------------------------------------------------------------------------------------------------
# Grammar (Lark, as llguidance reads it)
# ---------------------------------------------------------------------------------------------------------------------
_TERMINALS = r"""
STRING: /"([^"\\\x00-\x1f\x7f]|\\["\\nrt]|\\u[0-9a-fA-F]{4})*"/
INT: /-?(0|[1-9][0-9]{0,17})/
NUMBER: /-?(0|[1-9][0-9]{0,17})(\.[0-9]{1,17})?([eE][-+]?[0-9]{1,2})?/
PROSE: /[^\[{<(`]+/
"""


def _lit(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)


class _Grammar:
    def __init__(self, constraint: CallConstraint, allow_confirm: bool):
        self.c, self.allow_confirm = constraint, allow_confirm
        self.rules: list[str] = []
        self.value_rules: dict[Spec, str] = {}
        self.any_rule: str | None = None

    def rule(self, name: str, body: str) -> str:
        self.rules.append(f"{name}: {body}")
        return name

    def text(self) -> str:
        c = self.c
        answers = []
        if c.functions:
            calls = [f"{_lit(f.name + '(')} {self.args(f'f{i}', [(p + '=', s, r) for p, s, r in f.params])} \")\""
                     for i, f in enumerate(c.functions)]
            self.rule("call", " | ".join(calls))
            answers.append('"[" call "]"' if c.max_calls == 1 else '"[" call (", " call)* "]"')
        if c.allow_text:
            answers.append("PROSE")
        if self.allow_confirm:
            answers.append(_lit(CONFIRM_ANSWER))
        start = "start: " + " | ".join(answers) + (" |" if c.allow_text else "")  # guided: an empty answer too
        return "\n".join([start, *self.rules]) + "\n" + _TERMINALS

    def args(self, prefix: str, params: list[tuple[str, Spec, bool]]) -> str:
        """The text between the brackets of a call (or object): params in order, optional ones may be left out,
        `, ` between them. Rules a_i (nothing written yet) and b_i (something written) keep it linear in size."""
        b_next: str | None = None  # b_{i+1}; None: nothing can follow
        a_next: str | None = None  # a_{i+1}; None: nothing can follow
        for i in reversed(range(len(params))):
            key, spec, required = params[i]
            p = f"{_lit(key)} {self.value(spec)}"
            tail = f" {b_next}" if b_next else ""
            b_body = f'", " {p}' if required else f'(", " {p})?'
            b_i = self.rule(f"{prefix}_b{i}", b_body + tail) if i else None  # b_0 is never used
            take = f"{p}{tail}"
            if required:
                a_body = take
            elif a_next is None:
                a_body = f"({take})?"
            else:
                a_body = f"{take} | {a_next}"  # this one, or start at a later one
            a_next = self.rule(f"{prefix}_a{i}", a_body)
            b_next = b_i
        return a_next or ""

    def value(self, spec: Spec) -> str:
        kind = spec.kind
        if kind == "str":
            return "STRING"
        if kind == "int":
            return "INT"
        if kind == "num":
            return "NUMBER"
        if kind == "bool":
            return '("True" | "False")'
        if kind == "null":
            return '"None"'
        if kind == "enum":
            return "(" + " | ".join(_lit(o) for o in spec.options) + ")"
        if kind == "any":
            return self.any_value()
        if spec in self.value_rules:
            return self.value_rules[spec]
        name = f"v{len(self.value_rules)}"
        self.value_rules[spec] = name
        if kind == "list":
            item = self.value(spec.items or ANY)
            self.rule(name, f'"[" ({item} (", " {item})*)? "]"')
        elif kind == "dict":
            item = self.value(spec.items or ANY)
            self.rule(name, f'"{{" (STRING ": " {item} (", " STRING ": " {item})*)? "}}"')
        elif kind == "obj":
            inner = self.args(name, [(_key(k), s, r) for k, s, r in spec.props])
            self.rule(name, f'"{{" {inner} "}}"')
        else:  # union
            self.rule(name, " | ".join(self.value(a) for a in spec.alts))
        return name

    def any_value(self) -> str:
        if self.any_rule is None:
            self.any_rule = "any"
            self.rule("any", 'STRING | NUMBER | "True" | "False" | "None" | "[" (any (", " any)*)? "]" '
                             '| "{" (STRING ": " any (", " STRING ": " any)*)? "}"')
        return self.any_rule


# ---------------------------------------------------------------------------------------------------------------------
# Tracker: where an answer is in the call syntax, and the shortest text that closes it
# ---------------------------------------------------------------------------------------------------------------------
# Every frame reads one byte at a time (`step`) and answers one of these; the tracker only ever sees text the grammar
# allowed, so frames do not validate — a byte they cannot place is a bug (ValueError).
_CONSUMED, _DONE, _DONE_AGAIN, _AGAIN = range(4)  # consumed | consumed, frame complete | complete, byte not
#                                                   consumed (re-read by the parent) | a child was pushed: re-read


class _Shape:
    """Precomputed closing texts of a parameter list (a call's arguments, an object's properties)."""

    def __init__(self, params: list[tuple[str, Spec, bool]], close: str, open_: str = ""):
        self.keys = tuple(k.encode() for k, _, _ in params)
        self.specs = tuple(s for _, s, _ in params)
        self.required = tuple(r for _, _, r in params)
        self.mins = tuple(min_text(s) for s in self.specs)
        self.open, self.close = open_.encode(), close.encode()
        n = len(params)
        # rest[i]: ", k=v" for every required param from i on (each with its leading separator)
        self.rest = [b""] * (n + 1)
        for i in reversed(range(n)):
            self.rest[i] = (b", " + self.keys[i] + self.mins[i].encode() if self.required[i] else b"") + self.rest[i + 1]
        self.first_required = [n] * (n + 1)
        for i in reversed(range(n)):
            self.first_required[i] = i if self.required[i] else self.first_required[i + 1]

    def key_choices(self, i: int) -> list[int]:
        """Params that may come next when the next one allowed is i: up to and including the first required one."""
        return list(range(i, min(self.first_required[i] + 1, len(self.keys))))

    def after_key(self, j: int) -> bytes:
        """Closing once param j's key is written: its minimal value, the remaining required params, the bracket."""
        return self.mins[j].encode() + self.rest[j + 1] + self.close

    def from_start(self, i: int) -> bytes:
        """Closing where a key or the bracket may come and nothing is written yet."""
        return self.rest[i][2:] + self.close if self.rest[i] else self.close

    def need_key(self, i: int) -> bytes:
        """Closing right after ", " (a key must come): the cheapest key from i on, then what it still needs."""
        return min((self.keys[j] + self.after_key(j) for j in self.key_choices(i)), key=len)

    def minimal(self) -> bytes:
        return self.open + self.from_start(0)


class _Shapes:
    """The per-constraint data the tracker needs: each function's name literal and argument shape."""

    def __init__(self, constraint: CallConstraint):
        self.c = constraint
        self.names = tuple((f.name + "(").encode() for f in constraint.functions)
        self.args = tuple(_Shape([(p + "=", s, r) for p, s, r in f.params], ")") for f in constraint.functions)
        self.calls = tuple(n + a.from_start(0) for n, a in zip(self.names, self.args))  # each minimal call
        self.cheapest_call = min(self.calls, key=len) if self.calls else b""
        self.obj_shapes: dict[Spec, _Shape] = {}

    def obj(self, spec: Spec) -> _Shape:
        shape = self.obj_shapes.get(spec)
        if shape is None:
            shape = _Shape([(_key(k), s, r) for k, s, r in spec.props], "}", "{")
            self.obj_shapes[spec] = shape
        return shape


class _Frame:
    result: Any = None

    def step(self, c: int, tr: "Tracker") -> int:
        raise NotImplementedError

    def child_done(self, result: Any, tr: "Tracker") -> None:
        raise NotImplementedError

    def close(self, child: Any) -> tuple[bytes, Any]:
        """(text that completes this frame given its open child completed as `child`, this frame's result)."""
        raise NotImplementedError

    def _separator(self, c: int) -> int | None:
        """The `, ` between a list's items, a dict's entries or a call's arguments: after → comma → need."""
        if self.state == "after" and c == 0x2C:
            self.state = "comma"
            return _CONSUMED
        if self.state == "comma" and c == 0x20:
            self.state = "need"
            return _CONSUMED
        return None


class _Lit(_Frame):
    """One of several literal byte strings (a function name with its "(", a key, an enum value, True/False/None)."""

    def __init__(self, options: tuple[bytes, ...], costs: tuple[int, ...] | None = None,
                 tags: tuple[Any, ...] | None = None):
        self.options, self.buf = options, b""
        self.costs = costs or (0,) * len(options)
        self.tags = tags or tuple(range(len(options)))

    def step(self, c: int, tr: "Tracker") -> int:
        nb = self.buf + bytes((c,))
        if any(o.startswith(nb) for o in self.options):
            self.buf = nb
            if nb in self.options and not any(o != nb and o.startswith(nb) for o in self.options):
                self.result = self.tags[self.options.index(nb)]
                return _DONE
            return _CONSUMED
        if self.buf in self.options:
            self.result = self.tags[self.options.index(self.buf)]
            return _DONE_AGAIN
        raise ValueError(f"byte {bytes((c,))!r} after {self.buf!r} fits none of {self.options!r}")

    def close(self, child: Any) -> tuple[bytes, Any]:
        k = min((k for k, o in enumerate(self.options) if o.startswith(self.buf)),
                key=lambda k: len(self.options[k]) + self.costs[k])
        return self.options[k][len(self.buf):], self.tags[k]


def _utf8_feed(lead: int, due: int, c: int) -> tuple[int, int]:
    """(lead byte of the open character, continuation bytes still due) after byte c: a closing must complete a
    UTF-8 character split across tokens (the grammar reads characters: a string cannot close after half of one)."""
    if 0x80 <= c <= 0xBF and due:
        return lead, due - 1
    if c >= 0xC0:
        return c, (1 if c < 0xE0 else 2 if c < 0xF0 else 3)
    return 0, 0


def _utf8_completion(lead: int, due: int) -> bytes:
    if not due:
        return b""
    full = 1 if lead < 0xE0 else 2 if lead < 0xF0 else 3
    # the byte right after some leads has a narrower range (no overlong forms, no surrogates, nothing past U+10FFFF)
    head = {0xE0: 0xA0, 0xF0: 0x90}.get(lead, 0x80) if due == full else 0x80
    return bytes((head,)) + b"\x80" * (due - 1)


class _Str(_Frame):
    def __init__(self):
        self.opened, self.esc = False, 0  # esc: 0 plain, -1 after a backslash, n > 0 hex digits still due
        self.lead = self.due = 0  # an open UTF-8 character (_utf8_feed)

    def step(self, c: int, tr: "Tracker") -> int:
        if not self.opened:
            if c != 0x22:
                raise ValueError(f"a string must open with a quote, got {bytes((c,))!r}")
            self.opened = True
        elif self.esc == -1:
            self.esc = 4 if c == 0x75 else 0  # \uXXXX
        elif self.esc > 0:
            self.esc -= 1
        elif c == 0x5C:
            self.esc = -1
        elif c == 0x22:
            return _DONE
        else:
            self.lead, self.due = _utf8_feed(self.lead, self.due, c)
        return _CONSUMED

    def close(self, child: Any) -> tuple[bytes, Any]:
        if not self.opened:
            return b'""', None
        if self.esc == -1:
            return b'\\"', None  # the backslash becomes an escaped backslash, then the quote
        return _utf8_completion(self.lead, self.due) + b"0" * max(self.esc, 0) + b'"', None


class _Num(_Frame):
    _NEED_DIGIT = {"start", "sign", "dot", "e", "esign"}

    def __init__(self, integer: bool):
        self.integer, self.state = integer, "start"

    def step(self, c: int, tr: "Tracker") -> int:
        s, digit = self.state, 0x30 <= c <= 0x39
        if s == "start" and c == 0x2D:
            self.state = "sign"
        elif s in ("start", "sign") and digit:
            self.state = "zero" if c == 0x30 else "int"
        elif s == "int" and digit:
            pass
        elif s in ("zero", "int") and not self.integer and c == 0x2E:
            self.state = "dot"
        elif s in ("zero", "int", "frac") and not self.integer and c in (0x65, 0x45):
            self.state = "e"
        elif s in ("dot", "frac") and digit:
            self.state = "frac"
        elif s == "e" and c in (0x2B, 0x2D):
            self.state = "esign"
        elif s in ("e", "esign", "exp") and digit:
            self.state = "exp"
        elif s in self._NEED_DIGIT:
            raise ValueError(f"byte {bytes((c,))!r} where a number needs a digit")
        else:
            return _DONE_AGAIN
        return _CONSUMED

    def close(self, child: Any) -> tuple[bytes, Any]:
        return (b"0" if self.state in self._NEED_DIGIT else b""), None


def _value_frame(spec: Spec, c: int, tr: "Tracker") -> _Frame:
    """The frame that reads a value of `spec` whose first byte is c."""
    kind = spec.kind
    if kind in ("any", "union"):
        cls = _cls(chr(c))
        if kind == "any":
            spec = {"q": STR, "n": NUM, "b": BOOL, "z": NULL, "l": Spec("list", items=ANY),
                    "o": Spec("dict", items=ANY)}.get(cls, ANY)
        else:
            spec = next((a for a in spec.alts if (_cls(a.options[0]) if a.kind == "enum"
                                                  else _KIND_CLASS[a.kind]) == cls), ANY)
        if spec is ANY:
            raise ValueError(f"no value starts with {bytes((c,))!r}")
        kind = spec.kind
    if kind == "str":
        return _Str()
    if kind in ("int", "num"):
        return _Num(kind == "int")
    if kind == "enum":
        return _Lit(tuple(o.encode() for o in spec.options))
    if kind == "bool":
        return _Lit((b"True", b"False"))
    if kind == "null":
        return _Lit((b"None",))
    if kind == "list":
        return _List(spec.items or ANY)
    if kind == "dict":
        return _Dict(spec.items or ANY)
    if kind == "obj":
        return _Args(tr.shapes.obj(spec), opened=False)
    raise ValueError(f"cannot read a value of kind {kind}")


class _List(_Frame):
    def __init__(self, items: Spec):
        self.items, self.state = items, "open"  # open first value after comma need

    def step(self, c: int, tr: "Tracker") -> int:
        s = self.state
        if s == "open":
            self.state = "first"
            return _CONSUMED
        if s == "first" and c == 0x5D or s == "after" and c == 0x5D:
            return _DONE
        if s in ("first", "need"):
            tr.stack.append(_value_frame(self.items, c, tr))
            self.state = "value"
            return _AGAIN
        if (done := self._separator(c)) is not None:
            return done
        raise ValueError(f"byte {bytes((c,))!r} in a list ({s})")

    def child_done(self, result: Any, tr: "Tracker") -> None:
        self.state = "after"

    def close(self, child: Any) -> tuple[bytes, Any]:
        item = min_text(self.items).encode()
        return {"open": b"[]", "comma": b" " + item + b"]", "need": item + b"]"}.get(self.state, b"]"), None


class _Dict(_Frame):
    """`{"k": v, ...}` with any string keys."""

    def __init__(self, values: Spec):
        self.values, self.state = values, "open"

    def step(self, c: int, tr: "Tracker") -> int:
        s = self.state
        if s == "open":
            self.state = "first"
            return _CONSUMED
        if s in ("first", "after") and c == 0x7D:
            return _DONE
        if s in ("first", "need"):
            tr.stack.append(_Str())
            self.state = "key"
            return _AGAIN
        if s == "colon" and c == 0x3A:
            self.state = "colon_sp"
            return _CONSUMED
        if s == "colon_sp" and c == 0x20:
            self.state = "value"
            return _CONSUMED
        if s == "value":
            tr.stack.append(_value_frame(self.values, c, tr))
            self.state = "in_value"
            return _AGAIN
        if (done := self._separator(c)) is not None:
            return done
        raise ValueError(f"byte {bytes((c,))!r} in a dict ({s})")

    def child_done(self, result: Any, tr: "Tracker") -> None:
        self.state = "colon" if self.state == "key" else "after"

    def close(self, child: Any) -> tuple[bytes, Any]:
        v = min_text(self.values).encode()
        return {"open": b"{}", "first": b"}", "key": b": " + v + b"}", "colon": b": " + v + b"}",
                "colon_sp": b" " + v + b"}", "value": v + b"}", "comma": b' "": ' + v + b"}",
                "need": b'"": ' + v + b"}"}.get(self.state, b"}"), None


class _Args(_Frame):
    """A call's arguments after `name(` up to `)`, or an object with properties `{...}`: keys in order."""

    def __init__(self, shape: _Shape, opened: bool = True):
        self.shape, self.i, self.j = shape, 0, -1
        self.state = "start" if opened else "open"  # open start key value child after comma need

    def _key(self, tr: "Tracker") -> None:
        sh = self.shape
        choices = sh.key_choices(self.i)
        tr.stack.append(_Lit(tuple(sh.keys[j] for j in choices),
                             tuple(len(sh.after_key(j)) for j in choices), tuple(choices)))
        self.state = "key"

    def step(self, c: int, tr: "Tracker") -> int:
        s, sh = self.state, self.shape
        if s == "open":
            self.state = "start"
            return _CONSUMED
        if s in ("start", "after") and c == sh.close[0]:
            return _DONE
        if s in ("start", "need"):
            self._key(tr)
            return _AGAIN
        if s == "value":
            tr.stack.append(_value_frame(sh.specs[self.j], c, tr))
            self.state = "child"
            return _AGAIN
        if (done := self._separator(c)) is not None:
            return done
        raise ValueError(f"byte {bytes((c,))!r} in arguments ({s})")

    def child_done(self, result: Any, tr: "Tracker") -> None:
        if self.state == "key":
            self.j, self.i, self.state = result, result + 1, "value"
        else:
            self.state = "after"

    def close(self, child: Any) -> tuple[bytes, Any]:
        s, sh = self.state, self.shape
        if s == "open":
            return sh.minimal(), None
        if s == "start":
            return sh.from_start(self.i), None
        if s == "key":
            return sh.after_key(child), None
        if s == "value":
            return sh.after_key(self.j), None
        if s == "comma":
            return b" " + sh.need_key(self.i), None
        if s == "need":
            return sh.need_key(self.i), None
        return sh.rest[self.i] + sh.close, None  # child, after


class _Answer(_Frame):
    """The whole answer: a call list, prose (allow_text) or the confirmation phrase (allow_confirm)."""

    def __init__(self, shapes: _Shapes, allow_confirm: bool):
        self.shapes, self.allow_confirm = shapes, allow_confirm
        self.state, self.calls = "start", 0  # start prose confirm open name args after comma need done
        self.lead = self.due = 0  # an open UTF-8 character in prose

    def _name(self, tr: "Tracker") -> None:
        sh = self.shapes
        tr.stack.append(_Lit(sh.names, tuple(len(a.from_start(0)) + 1 for a in sh.args)))
        self.state = "name"

    def step(self, c: int, tr: "Tracker") -> int:
        s, c_ = self.state, self.shapes.c
        if s == "start":
            if c == 0x5B and c_.functions:
                self.state = "open"
                return _CONSUMED
            if c_.allow_text:
                self.state = "prose"
                self.lead, self.due = _utf8_feed(0, 0, c)
                return _CONSUMED
            if self.allow_confirm:
                tr.stack.append(_Lit((CONFIRM_ANSWER.encode(),)))
                self.state = "confirm"
                return _AGAIN
            raise ValueError(f"an answer must open with '[', got {bytes((c,))!r}")
        if s == "prose":
            self.lead, self.due = _utf8_feed(self.lead, self.due, c)
            return _CONSUMED
        if s in ("open", "need"):
            self._name(tr)
            return _AGAIN
        if s == "after" and c == 0x2C:
            self.state = "comma"
            return _CONSUMED
        if s == "after" and c == 0x5D:
            self.state = "done"
            return _CONSUMED
        if s == "comma" and c == 0x20:
            self.state = "need"
            return _CONSUMED
        raise ValueError(f"byte {bytes((c,))!r} in the answer ({s})")

    def child_done(self, result: Any, tr: "Tracker") -> None:
        if self.state == "name":
            tr.stack.append(_Args(self.shapes.args[result]))
            self.state = "args"
        elif self.state == "args":
            self.calls += 1
            self.state = "after"
        else:  # confirm
            self.state = "done"

    def close(self, child: Any) -> tuple[bytes, Any]:
        s, sh = self.state, self.shapes
        if s == "start":
            options = [b"[" + sh.cheapest_call + b"]"] if sh.c.functions else []
            if sh.c.allow_text:
                options.append(b"")
            if self.allow_confirm:
                options.append(CONFIRM_ANSWER.encode())
            return min(options, key=len), None
        if s in ("open", "need"):
            return sh.cheapest_call + b"]", None
        if s == "name":
            return sh.args[child].from_start(0) + b"]", None
        if s in ("args", "after"):
            return b"]", None
        if s == "comma":
            return b" " + sh.cheapest_call + b"]", None
        if s == "prose":
            return _utf8_completion(self.lead, self.due), None
        return b"", None  # confirm, done


class Tracker:
    """A pushdown automaton over the constrained language: fed the answer's bytes, it knows the shortest text that
    closes the answer (`closing`). Cheap to copy (a list of small frames), which rollback and look-ahead use."""

    def __init__(self, shapes: _Shapes, allow_confirm: bool):
        self.shapes = shapes
        self.stack: list[_Frame] = [_Answer(shapes, allow_confirm)]

    def copy(self) -> "Tracker":
        other = object.__new__(Tracker)
        other.shapes = self.shapes
        other.stack = [copy.copy(f) for f in self.stack]
        return other

    def feed(self, data: bytes) -> None:
        for c in data:
            while True:
                top = self.stack[-1]
                code = top.step(c, self)
                if code == _CONSUMED:
                    break
                if code == _AGAIN:
                    continue
                self.stack.pop()
                self.stack[-1].child_done(top.result, self)
                if code == _DONE:
                    break

    def closing(self) -> bytes:
        out, child = b"", None
        for frame in reversed(self.stack):
            text, child = frame.close(child)
            out += text
        return out


# ---------------------------------------------------------------------------------------------------------------------
# Per-tokenizer data, and the per-row guide the decoder consults
# ---------------------------------------------------------------------------------------------------------------------
class Vocab:
    """llguidance's view of one tokenizer (built once per tokenizer, ~1 s for a 150k vocabulary) and a cache of
    compiled grammars (a fresh matcher per row is a deep copy of the cached one)."""

    _lock = threading.Lock()
    _cache: dict[tuple, "Vocab"] = {}

    def __init__(self, tokenizer: Any, eos: set[int], n_vocab: int):
        import llguidance.hf

        self.tokenizer, self.eos, self.n_vocab = tokenizer, frozenset(eos), n_vocab
        self.ll = llguidance.hf.from_tokenizer(tokenizer, n_vocab=n_vocab, eos_token=sorted(eos))
        self.eos_id = min(eos)
        self._bytes: dict[int, bytes] = {}
        self._matchers: dict[str, Any] = {}

    @classmethod
    def of(cls, tokenizer: Any, eos: set[int], n_vocab: int) -> "Vocab":
        key = (id(tokenizer), frozenset(eos), n_vocab)
        with cls._lock:
            hit = cls._cache.get(key)
            if hit is None or hit.tokenizer is not tokenizer:
                hit = cls(tokenizer, eos, n_vocab)
                cls._cache[key] = hit
            return hit

    def token_bytes(self, token: int) -> bytes:
        data = self._bytes.get(token)
        if data is None:
            data = self._bytes[token] = bytes(self.ll.decode_bytes([token]))
        return data

    def encode(self, text: bytes) -> list[int]:
        return list(self.ll.tokenize_bytes(text))

    def matcher(self, grammar: str) -> Any:
        """A fresh matcher for `grammar` (compiled once, then copied). ValueError if llguidance refuses it."""
        import llguidance

        with self._lock:
            proto = self._matchers.get(grammar)
            if proto is None:
                proto = llguidance.LLMatcher(self.ll, llguidance.LLMatcher.grammar_from_lark(grammar), log_level=0)
                if proto.is_error():
                    raise ValueError(f"the tool-call grammar was refused by llguidance: {proto.get_error()}")
                if len(self._matchers) > 512:
                    self._matchers.clear()
                self._matchers[grammar] = proto
            return proto.deep_copy()


@dataclass
class GuideStats:
    steps: int = 0  # choices made under the constraint
    forced: int = 0  # answers whose closing was forced by the token budget
    bad_closings: int = 0  # closings llguidance refused (a tracker bug): the row went on with the mask alone


class RowGuide:
    """One row's constraint in one decoding round. The tokens so far are those last given to `sync` (or taken by
    `predict`); `mask()` is the set of allowed next tokens; `choose` picks the next one within the budget."""

    def __init__(self, constraint: CallConstraint, vocab: Vocab, allow_confirm: bool = False,
                 stats: GuideStats | None = None):
        self.vocab = vocab
        grammar = constraint.lark(allow_confirm)
        self.matcher = vocab.matcher(grammar)
        self.trackers = [constraint.tracker(allow_confirm)]  # [k]: after the first k tokens (EOS never fed)
        self.tokens: list[int] = []
        self.plan: tuple[int, list[int]] | None = None  # (at how many tokens, closing ids) once forced
        self.stats = stats if stats is not None else TOTALS

    # --- the tokens so far ------------------------------------------------------------------------------------
    def _push(self, token: int) -> None:
        if token in self.vocab.eos:
            self.tokens.append(token)
            self.trackers.append(self.trackers[-1])
            return
        if not self.matcher.consume_token(token):
            raise ValueError(f"token {token} breaks the tool-call grammar: {self.matcher.get_error()}")
        tracker = self.trackers[-1]
        if tracker is not None:
            tracker = tracker.copy()
            try:
                tracker.feed(self.vocab.token_bytes(token))
            except ValueError as err:  # a tracker bug must not fail the request: the mask alone from here
                self.stats.bad_closings += 1
                log.error("tool-call tracker lost its place after %r: %s", self.vocab.tokenizer.decode(self.tokens
                                                                                                        + [token]), err)
                tracker = None
        self.tokens.append(token)
        self.trackers.append(tracker)

    def sync(self, tokens: list[int]) -> None:
        """Make `tokens` the answer so far (rolls back what differs, then takes the rest)."""
        keep = 0
        n = min(len(tokens), len(self.tokens))
        while keep < n and tokens[keep] == self.tokens[keep]:
            keep += 1
        drop = len(self.tokens) - keep
        if drop:
            fed = sum(1 for t in self.tokens[keep:] if t not in self.vocab.eos)
            if fed and not self.matcher.rollback(fed):
                raise RuntimeError("llguidance could not roll the matcher back")
            del self.tokens[keep:], self.trackers[keep + 1:]
            if self.plan is not None and self.plan[0] > keep:
                self.plan = None
        for token in tokens[keep:]:
            self._push(token)

    # --- the next token ---------------------------------------------------------------------------------------
    def mask(self) -> torch.Tensor:
        """Allowed next tokens (bool, n_vocab); EOS only where the answer is complete."""
        return self._unpack(self.matcher.compute_bitmask(), self.vocab.n_vocab)

    @staticmethod
    def _unpack(bits: bytes, width: int) -> torch.Tensor:
        import numpy as np

        flags = np.unpackbits(np.frombuffer(bits, dtype=np.uint8), bitorder="little")[:width].astype(bool)
        if flags.shape[0] < width:  # logits wider than the tokenizer's vocabulary: those ids are never allowed
            flags = np.concatenate([flags, np.zeros(width - flags.shape[0], dtype=bool)])
        return torch.from_numpy(flags)

    @staticmethod
    def _allows(bits: bytes, token: int) -> bool:
        return 0 <= token < 8 * len(bits) and bool(bits[token >> 3] >> (token & 7) & 1)

    def closing(self) -> list[int]:
        """Token ids of the shortest text that completes the answer from here ([] when it is complete or unknown)."""
        tracker = self.trackers[-1]
        return self.vocab.encode(tracker.closing()) if tracker is not None else []

    def _fits(self, token: int, budget: int) -> bool:
        """Whether the answer can still be closed within `budget` tokens after taking `token`."""
        tracker = self.trackers[-1]
        if tracker is None:
            return True
        tracker = tracker.copy()
        try:
            tracker.feed(self.vocab.token_bytes(token))
        except ValueError:
            return True  # reported when the token is taken (_push)
        text = tracker.closing()
        return len(text) <= budget or len(self.vocab.encode(text)) <= budget  # a token holds ≥ 1 byte

    def choose(self, logits: torch.Tensor, pick: Callable[[torch.Tensor], torch.Tensor], remaining: int,
               unmasked: int | None = None) -> int:
        """The next token: `pick` (the decoder's argmax or sampler) over the allowed tokens, unless taking it would
        leave too few of the `remaining` tokens to close the answer; then the closing is forced from here on.

        `unmasked`: what `pick` already chose from these logits without the mask (the decoder picks every row). When
        it is allowed it is the answer — for argmax plainly; for sampling too, since a draw from the whole
        distribution that lands in the allowed set is a draw from the distribution restricted to it (a rejection
        sampler's first try) — so the full mask is only unpacked and applied when the model's own choice is refused."""
        self.stats.steps += 1
        if self.plan is not None:
            at, ids = self.plan
            if len(self.tokens) - at < len(ids):
                return ids[len(self.tokens) - at]
        bits = self.matcher.compute_bitmask()
        token = unmasked if unmasked is not None else int(pick(logits.unsqueeze(0))[0])
        if not self._allows(bits, token):
            allowed = self._unpack(bits, logits.shape[-1]).to(logits.device)
            token = int(pick(logits.masked_fill(~allowed, float("-inf")).unsqueeze(0))[0])
        if token in self.vocab.eos or remaining <= 0 or self.plan is not None or self._fits(token, remaining - 1):
            return token
        ids = self.closing()
        if not ids:  # complete already (or the tracker is lost): end here if the grammar allows it
            return self.vocab.eos_id if self._allows(bits, self.vocab.eos_id) else token
        trial = self.matcher.deep_copy()
        if not (trial.consume_tokens(ids) and trial.is_accepting()):
            self.stats.bad_closings += 1
            log.error("closing %r of %r was refused by the grammar", ids, self.vocab.tokenizer.decode(self.tokens))
            self.plan = (len(self.tokens), [])  # stop trying; the mask alone from here
            return token
        self.stats.forced += 1
        self.plan = (len(self.tokens), ids)
        return ids[0]

    def predict(self, logits: torch.Tensor, proposal: list[int], pick: Callable[[torch.Tensor], torch.Tensor],
                remaining: int, unmasked: list[int] | None = None) -> list[int]:
        """Verify a draft: logits[i] follows the answer so far + proposal[:i] (`unmasked[i]`: the decoder's own pick
        there). Returns the choices up to and including the first that differs from the proposal (or the one after
        the whole proposal). Leaves the guide after the proposal tokens it agreed with; the decoder then syncs it
        to what the row kept."""
        preds: list[int] = []
        for i in range(len(proposal) + 1):
            token = self.choose(logits[i], pick, remaining - i, unmasked[i] if unmasked is not None else None)
            preds.append(token)
            if i == len(proposal) or token != proposal[i] or token in self.vocab.eos:
                break
            self._push(token)
        return preds


TOTALS = GuideStats()  # every guide's counts in this process (tests and logs read it)


def vocab_for(model: Any, tokenizer: Any, eos: set[int]) -> Vocab:
    """The (cached) Vocab of a model's tokenizer: the mask is as wide as the model's logits."""
    config = getattr(model, "config", None)
    n_vocab = max(len(tokenizer), int(getattr(config, "vocab_size", 0) or 0))
    return Vocab.of(tokenizer, eos, n_vocab)


def guide(constraint: CallConstraint, vocab: Vocab, allow_confirm: bool = False,
          stats: GuideStats | None = None) -> RowGuide:
    """A fresh row guide for one decoding round."""
    return RowGuide(constraint, vocab, allow_confirm, stats)


def shortest_answer_tokens(constraint: CallConstraint, vocab: Vocab) -> int:
    """Tokens of the shortest answer the constraint allows (0 where no-call text is allowed): a request whose
    max_tokens is below it cannot be answered with a call. Also compiles the grammar, so a schema llguidance cannot
    take fails here (ValueError), before the model runs."""
    vocab.matcher(constraint.lark())
    return len(vocab.encode(constraint.tracker().closing()))
