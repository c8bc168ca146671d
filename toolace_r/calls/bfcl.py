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

from toolace_r.calls.literals import LiteralReader, dotted_name
from toolace_r.calls.syntax import SOURCE_NAME, Call, _node_text
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
            # "" when the callee is neither a name nor an attribute chain, as in BFCL
            calls.append({"name": dotted_name(element.func), "arguments": _READER.arguments(element)})
        return calls
    except CallParseError:
        raise
    except (RecursionError, MemoryError) as err:
        raise CallParseError(f"BFCL decoder: {type(err).__name__}") from None


class _BfclReader(LiteralReader):
    """BFCL's value reading (toolace_r.calls.literals has what it shares with ACEBench's)."""

    prefix = "BFCL decoder: "
    unpacked_name = "**"

    def call_without_keywords(self, node: ast.Call) -> str:
        return self.unparse(node)

    def unparse(self, node: ast.AST) -> str:
        try:
            return ast.unparse(node)
        except (ValueError, RecursionError):
            raise CallParseError("BFCL decoder: expression too large to read") from None

    def unsupported(self, node: ast.expr) -> str:
        return f"BFCL decoder: unsupported value {type(node).__name__}: {_node_text(node)}"


_READER = _BfclReader()
