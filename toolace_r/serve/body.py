"""Reading a request body: the size limit, then JSON, with every way a body can be malformed answered by a 400
(or 413) naming the problem, never a 5xx.

Python's `json.loads` is a fine parser for well-formed bodies, but a few inputs make it raise something other than
JSONDecodeError, or accept what is not JSON, and before this module each was a 500 or a silent surprise:
  - deep nesting: `[[[[...]]]]` 5 000 levels down exhausts the interpreter's recursion limit (RecursionError). The
    depth is bounded BEFORE parsing, by a scan of the text that counts brackets outside strings (`check_depth`);
  - an integer with more than 4 300 digits: int() refuses it with ValueError (CPython's guard against quadratic
    conversion; `sys.get_int_max_str_digits`);
  - a number beyond the float range (`1e999999`) and the non-standard `NaN` / `Infinity` tokens, which json accepts
    and turns into inf/nan that no OpenAI field can hold;
  - invalid UTF-8 (and UTF-16/32, which json.loads(bytes) guesses at): JSON bodies must be UTF-8 (RFC 8259 §8.1);
  - duplicate keys in one object (see `_Limits.unique_keys` for the policy).
The same limits apply to the JSON strings inside a request (`parse_json`: tool-call `arguments` in the history).
"""
from __future__ import annotations

import json
import math
import re
import sys
from typing import Any

from fastapi import Request

from toolace_r.serve.schema import ApiError

# Deepest nesting of arrays/objects a body may have. A chat request is 4 levels deep to a message's text parts; the
# deepest legitimate part is a tool's `parameters` JSON schema, where each nested object costs 2 levels (`properties`,
# then the property's schema): 128 leaves room for schemas ~60 objects deep, and stays far below Python's recursion
# limit (1 000 frames) for json.loads, pydantic, json.dumps and the chat template's `tojson` downstream.
MAX_JSON_DEPTH = 128
# Longest integer literal accepted: CPython's default limit for int(); longer ones would raise ValueError inside
# json.loads. No field of a request needs more than 20 digits, so this only bounds work. The interpreter's own limit
# (PYTHONINTMAXSTRDIGITS, -X int_max_str_digits) applies when it is lower: see `_int_digit_limit`.
MAX_INT_DIGITS = 4300


def _int_digit_limit() -> int:
    """The longest integer literal int() accepts in this interpreter, at most MAX_INT_DIGITS (0 there: no limit)."""
    own = sys.get_int_max_str_digits()
    return min(MAX_INT_DIGITS, own) if own else MAX_INT_DIGITS

# A JSON string (escapes included) or one bracket. Strings are matched whole so that brackets inside them are skipped;
# an unterminated string runs to the end of the text. That second branch keeps the scan linear: without it, a text of
# `"\"\"\"...` would be re-tried as a string from every escaped quote, each try scanning to the end (quadratic).
_TOKEN = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*(?:"|\\?\Z)|[\[\]{}]', re.DOTALL)
_OPEN = frozenset("[{")


def _bad(message: str, param: str | None = None) -> ApiError:
    return ApiError(400, message, param=param, code="invalid_json")


def check_depth(text: str, limit: int = MAX_JSON_DEPTH, where: str = "request body", param: str | None = None) -> None:
    """Raise a 400 when arrays/objects nest deeper than `limit`, without parsing (so without recursion).

    Exact for valid JSON: a string cannot hold an unescaped quote, so `_TOKEN` sees every string whole and counts
    only the brackets outside strings. On invalid JSON the count may be off, but such a body is a 400 either way.
    Linear in the text, and stops at the first bracket past the limit, so a 1 MB `[[[[...` costs microseconds."""
    depth = 0
    for match in _TOKEN.finditer(text):
        token = match.group()
        if token in _OPEN:
            depth += 1
            if depth > limit:
                raise _bad(f"{where} nests arrays/objects more than {limit} levels deep (at character "
                           f"{match.start()}); flatten it", param)
        elif token in "]}":  # a string token starts with '"', never equals a bracket
            depth -= 1


class _Limits:
    """json.loads hooks that turn the inputs it mishandles into a 400 naming the problem and where it is."""

    def __init__(self, where: str, param: str | None):
        self.where, self.param = where, param

    def parse_int(self, literal: str) -> int:
        digits, limit = len(literal.lstrip("-")), _int_digit_limit()
        if digits > limit:
            raise _bad(f"{self.where} holds an integer with {digits} digits; the limit is {limit}", self.param)
        return int(literal)

    def parse_float(self, literal: str) -> float:
        value = float(literal)
        if math.isinf(value):
            shown = literal if len(literal) <= 40 else literal[:37] + "..."
            raise _bad(f"{self.where} holds the number {shown}, which is out of range (beyond a 64-bit float)",
                       self.param)
        return value

    def parse_constant(self, name: str) -> float:
        raise _bad(f"{self.where} holds {name}, which is not a JSON number (RFC 8259); send a finite number or null",
                   self.param)

    def unique_keys(self, pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        """Objects with a key twice are refused (400) rather than resolved "last wins" as json.loads does.

        Why: RFC 8259 §4 leaves such objects' meaning unpredictable, and parsers do disagree (first wins, last wins,
        or an error), so a gateway that checks `model` or `tool_choice` in front of this server could see another
        request than the one the model answers. No client library produces duplicates (they serialise dicts); a body
        that has them was written by hand or tampered with, and saying so beats guessing."""
        out = dict(pairs)
        if len(out) != len(pairs):
            seen: set[str] = set()
            for key, _ in pairs:
                if key in seen:
                    shown = key if len(key) <= 64 else key[:61] + "..."
                    raise _bad(f"{self.where} has the key {shown!r} twice in one object; JSON keys must be unique "
                               "(parsers disagree on which value wins)", self.param)
                seen.add(key)
        return out


def parse_json(text: str, where: str = "request body", param: str | None = None) -> Any:
    """`json.loads(text)` with the limits above: any malformed or pathological text is an ApiError(400) whose message
    starts with `where` and whose `param` is `param`. Used for the body and for the JSON strings inside it (the
    `arguments` of tool calls in the history)."""
    check_depth(text, where=where, param=param)
    limits = _Limits(where, param)
    try:
        value = json.loads(text, parse_int=limits.parse_int, parse_float=limits.parse_float,
                           parse_constant=limits.parse_constant, object_pairs_hook=limits.unique_keys)
    except json.JSONDecodeError as err:
        raise _bad(f"{where} is not valid JSON: {err}", param) from None
    except RecursionError:  # unreachable after check_depth; kept so that no text can ever become a 500
        raise _bad(f"{where} nests too deeply to parse", param) from None
    try:  # JSON may escape a lone UTF-16 surrogate ("\ud800"); tokenizers cannot encode it (was a 500)
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise _bad(f"{where} holds a lone UTF-16 surrogate escape (e.g. \\ud800) in a string; send valid Unicode "
                   "text", param) from None
    return value


def parse_json_body(raw: bytes) -> Any:
    """The body's JSON value, or an ApiError(400, code="invalid_json") naming what is wrong. Pure, no HTTP."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise _bad(f"request body is not valid UTF-8 (byte 0x{raw[err.start]:02x} at offset {err.start}: "
                   f"{err.reason}); JSON bodies must be UTF-8") from None
    text = text.removeprefix("\ufeff")  # a UTF-8 byte order mark: RFC 8259 allows a parser to ignore it
    if not text.strip():
        raise _bad("request body is empty; expected a JSON object")
    return parse_json(text)


async def read_json_body(request: Request, max_bytes: int) -> Any:
    """The body as JSON, refusing oversize bodies before reading them whole (Content-Length) or while reading."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > max_bytes:
        raise ApiError(413, f"request body is {declared} bytes; the limit is {max_bytes}", code="body_too_large")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise ApiError(413, f"request body exceeds the limit of {max_bytes} bytes", code="body_too_large")
        chunks.append(chunk)
    return parse_json_body(b"".join(chunks))
