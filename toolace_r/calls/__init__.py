"""Tool calls: the call language (parse/render, syntax.py), BFCL's decoder (bfcl.py) and the AST checker
(checker.py). Everything the rest of the project needs is importable from here."""
from toolace_r.calls.checker import Verdict, check, gold_calls, prepare_functions, standardize_string
from toolace_r.calls.syntax import (
    DECODERS,
    calls_equal,
    calls_from_objects,
    decoder_label,
    parse_calls,
    render_json,
    render_openai,
    render_python,
)

__all__ = [
    "DECODERS",
    "Verdict",
    "calls_equal",
    "calls_from_objects",
    "check",
    "decoder_label",
    "gold_calls",
    "parse_calls",
    "prepare_functions",
    "render_json",
    "render_openai",
    "render_python",
    "standardize_string",
]
