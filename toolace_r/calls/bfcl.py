"""BFCL's own decoder for prompt-mode (python call syntax) answers, quirks included.

Scores are comparable with the Berkeley Function Calling Leaderboard only if model text is read the way BFCL reads
it (v3, gorilla @ ea13468e: `default_decode_ast_prompting` + `ast_parse` + `resolve_ast_by_type`). This module
re-implements that reading from BFCL's published behaviour (design/BFCL_RULES.md), without its `eval`:

- the text is stripped of backticks, newlines and spaces at both ends, wrapped in `[` `]` when they are missing,
  then stripped of `[`, `]` and `'` at both ends, and parsed as ONE Python expression: so a missing outer bracket,
  an extra leading `[` or a whole list inside quotes are fine, while a ```` ```python ```` fence, a newline between
  calls, indentation after `[` and an empty list `[]` are decode failures;
- the expression must be a call, or a tuple / list / set of calls;
- positional arguments are dropped silently; `**x` becomes an argument named "**" (BFCL: None) that no schema has;
- values: literals as written (`...` → "..."); any unary operator on a literal *negates* it (`+5` → -5,
  `not True` → -1); a bare name is its own text; `a[0]` is its text; a call without keywords is its source text
  and a call with keywords a nested `{name: {args}}`; arithmetic on literals is computed (`4 + 1` → 5);
  attributes, sets, f-strings, lambdas, comprehensions, comparisons fail the decode.

Where BFCL would run arbitrary code (`eval` of an arithmetic expression that calls a builtin) we refuse instead:
such an output is a decode failure here. That is the one known divergence, and no benchmark answer relies on it.
"""
from __future__ import annotations

import ast
from typing import Any

from toolace_r.calls.syntax import SOURCE_NAME, Call, _node_text, safe_arith
from toolace_r.errors import CallParseError


def decode_bfcl(text: str) -> list[Call]:
    """BFCL-decode `text` into calls; raises CallParseError where BFCL's decoder fails ('ast_decoder:decoder_failed',
    or "no call" for irrelevance)."""
    if not isinstance(text, str):
        raise CallParseError(f"model output must be text, got {type(text).__name__}")
    s = text.strip("`\n ")
    if not s.startswith("["):
        s = "[" + s
    if not s.endswith("]"):
        s = s + "]"
    s = s.strip("[]'")
    try:
        tree = ast.parse(s, filename=SOURCE_NAME, mode="eval")
    except SyntaxError as err:
        raise CallParseError(f"BFCL decoder: {type(err).__name__}: {err.msg} (line {err.lineno})") from None
    except (ValueError, RecursionError, MemoryError, OverflowError) as err:
        raise CallParseError(f"BFCL decoder: {type(err).__name__}: {err}") from None
    try:
        body = tree.body
        if isinstance(body, ast.Call):
            elements = [body]
        elif isinstance(body, (ast.List, ast.Tuple, ast.Set)):
            elements = body.elts
        else:
            raise CallParseError(f"BFCL decoder: expected calls, got {_node_text(body)}")
        calls = []
        for element in elements:
            if not isinstance(element, ast.Call):
                raise CallParseError(f"BFCL decoder: list element is not a call: {_node_text(element)}")
            name, args = _call(element)
            calls.append({"name": name, "arguments": args})
        return calls
    except CallParseError:
        raise
    except (RecursionError, MemoryError) as err:
        raise CallParseError(f"BFCL decoder: {type(err).__name__}") from None


def _call(node: ast.Call) -> tuple[str, dict[str, Any]]:
    parts = []
    func = node.func
    while isinstance(func, ast.Attribute):
        parts.append(func.attr)
        func = func.value
    if isinstance(func, ast.Name):
        parts.append(func.id)
    name = ".".join(reversed(parts))  # "" when the callee is neither a name nor an attribute chain, as in BFCL
    args: dict[str, Any] = {}
    for kw in node.keywords:  # positional args are ignored, as in BFCL
        args["**" if kw.arg is None else kw.arg] = _value(kw.value)
    return name, args


def _value(node: ast.expr) -> Any:
    if isinstance(node, ast.Constant):
        return "..." if node.value is Ellipsis else node.value
    if isinstance(node, ast.UnaryOp):
        # BFCL negates the operand's literal whatever the operator; a non-literal operand or a non-number fails.
        operand = node.operand
        if not isinstance(operand, ast.Constant):
            raise CallParseError(f"BFCL decoder: unary operator on a non-literal: {_node_text(node)}")
        try:
            return -operand.value
        except TypeError:
            raise CallParseError(f"BFCL decoder: cannot negate {_node_text(operand)}") from None
    if isinstance(node, ast.List):
        return [_value(e) for e in node.elts]
    if isinstance(node, ast.Dict):
        out = {}
        for k, v in zip(node.keys, node.values):
            if k is None:
                raise CallParseError("BFCL decoder: dict unpacking is not a value")
            key = _value(k)
            try:
                out[key] = _value(v)
            except TypeError:
                raise CallParseError(f"BFCL decoder: unhashable dict key {_node_text(k)}") from None
        return out
    if isinstance(node, ast.BinOp):
        return safe_arith(node)
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Call):
        if not node.keywords:
            return _unparse(node)
        name, args = _call(node)
        return {name: args}
    if isinstance(node, ast.Tuple):
        return tuple(_value(e) for e in node.elts)
    if isinstance(node, ast.Subscript):
        return _unparse(node.value) + "[" + _unparse(node.slice) + "]"
    raise CallParseError(f"BFCL decoder: unsupported value {type(node).__name__}: {_node_text(node)}")


def _unparse(node: ast.AST) -> str:
    try:
        return ast.unparse(node)
    except (ValueError, RecursionError):
        raise CallParseError("BFCL decoder: expression too large to read") from None
