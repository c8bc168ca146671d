"""Argument values as BFCL's and ACEBench's decoders read them: the rules the two share, stated once.

ACEBench's prompt-mode decoder is a copy of BFCL's (`resolve_ast_by_type`), so a keyword argument's node becomes a
value by the same rules in both: a literal as written (`...` → "..."); any unary operator on a literal *negates* it;
lists, tuples and dicts element by element; arithmetic on literals computed (both `eval` it; here `safe_arith`); a
bare name is its own text; `a[0]` is its text; a call with keywords is a nested `{name: {args}}`. `LiteralReader`
holds those rules; toolace_r.calls.bfcl and toolace_r.calls.acebench each subclass it for where they differ:

- `call_without_keywords`: a call without keywords used as a value — BFCL: its source text; ACEBench: `{name: {}}`;
- `unpacked_name`: the argument name `**x` gets — BFCL "**" (BFCL itself: None, a name no schema has); ACEBench None;
- `unparse`: BFCL turns an expression too large to print into a decode failure; ACEBench lets `ast.unparse` raise;
- `prefix` and `unsupported`: the wording of decode errors, which verdict reasons quote;
- `value_first`: ACEBench's reader reads a dict entry's value before its key, so when both are unreadable it is the
  value's error that is reported.
"""
from __future__ import annotations

import ast
from typing import Any

from toolace_r.calls.syntax import _node_text, safe_arith
from toolace_r.errors import CallParseError


def dotted_name(func: ast.expr) -> str:
    """A callee as both decoders name it: an attribute chain joined with dots; "" when it is neither a name nor an
    attribute chain (only the attributes are kept when the chain does not start at a name)."""
    parts = []
    while isinstance(func, ast.Attribute):
        parts.append(func.attr)
        func = func.value
    if isinstance(func, ast.Name):
        parts.append(func.id)
    return ".".join(reversed(parts))


class LiteralReader:
    """Reads a value node by the shared rules (module docstring); subclasses say where their benchmark differs."""

    prefix = ""  # put before every decode error's text
    unpacked_name: str | None = None  # the argument name of `**x`
    value_first = False  # a dict entry's value is read before its key

    def value(self, node: ast.expr) -> Any:
        if isinstance(node, ast.Constant):
            return "..." if node.value is Ellipsis else node.value
        if isinstance(node, ast.UnaryOp):
            # the operand's literal is negated whatever the operator; a non-literal operand or a non-number fails
            operand = node.operand
            if not isinstance(operand, ast.Constant):
                raise CallParseError(f"{self.prefix}unary operator on a non-literal: {_node_text(node)}")
            try:
                return -operand.value
            except TypeError:
                raise CallParseError(f"{self.prefix}cannot negate {_node_text(operand)}") from None
        if isinstance(node, ast.List):
            return [self.value(e) for e in node.elts]
        if isinstance(node, ast.Dict):
            out = {}
            for k, v in zip(node.keys, node.values):
                if k is None:
                    raise CallParseError(f"{self.prefix}dict unpacking is not a value")
                try:
                    if self.value_first:
                        item = self.value(v)
                        key = self.value(k)
                    else:
                        key = self.value(k)
                        item = self.value(v)
                    out[key] = item
                except TypeError:
                    raise CallParseError(f"{self.prefix}unhashable dict key {_node_text(k)}") from None
            return out
        if isinstance(node, ast.BinOp):
            return safe_arith(node)
        if isinstance(node, ast.Name):
            return node.id
        if isinstance(node, ast.Call):
            if not node.keywords:
                return self.call_without_keywords(node)
            return {dotted_name(node.func): self.arguments(node)}
        if isinstance(node, ast.Tuple):
            return tuple(self.value(e) for e in node.elts)
        if isinstance(node, ast.Subscript):
            return self.unparse(node.value) + "[" + self.unparse(node.slice) + "]"
        raise CallParseError(self.unsupported(node))

    def arguments(self, node: ast.Call) -> dict[Any, Any]:
        """A call's keyword arguments (positional ones are dropped, as both benchmarks do); a repeated name keeps
        its last value."""
        args: dict[Any, Any] = {}
        for kw in node.keywords:
            args[self.unpacked_name if kw.arg is None else kw.arg] = self.value(kw.value)
        return args

    def call_without_keywords(self, node: ast.Call) -> Any:
        raise NotImplementedError

    def unparse(self, node: ast.AST) -> str:
        return ast.unparse(node)

    def unsupported(self, node: ast.expr) -> str:
        raise NotImplementedError
