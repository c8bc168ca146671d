"""Readers: public tool-calling data sets → `Sample`s.

Formats (detected from the records' content, or named with `format=`):
  toolace   Team-ACE/ToolACE: `system` (tools as a JSON list inside it) + `conversations` from user/assistant/tool;
            calls written `[Func Name(arg="v")]` (parsed by toolace_r.calls.parse_calls).
  sharegpt  LLaMA-Factory ShareGPT: `conversations` from human/gpt/function_call/observation, `tools` JSON string.
  openai    OpenAI / TRL: `messages` with `tool_calls`, `tools` as `{"type": "function", "function": {...}}`.
  bfcl      BFCL v3/v4 question file; the truth comes from possible_answer/<same name> (irrelevance and
            relevance have none).
  apibank   API-Bank in the Hammer structure: `query`, `tools`, `answers`.
  toolrl    ToolRL: `instruction`/`input`/`output` with `<tool_call>` blocks, or rlla_4k's `prompt`/`reward_model`.
  samples   our own Sample rows (io.write_samples, parquet written by the driver).
Containers: JSON (array or one object), JSON Lines, parquet (file or directory), a HF `datasets` save_to_disk dir.

A dialogue yields one Sample per assistant turn that calls tools, with the history before it (earlier calls kept as
`tool_calls`, tool results as role "tool"). Tools are normalised to BFCL's schema (`{"name", "description",
"parameters": {"type": "dict", "properties", "required"}}` with BFCL type names); truth is BFCL's possible-answer
form. A malformed record raises DataError naming the file, the record index and the field; with on_error="skip"
it is skipped, counted in ReadResult.skipped/errors and logged — never dropped silently.
"""
from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from toolace_r.bfcl_summary import ALL_NAMES as BFCL_NAMES
from toolace_r.data.schema import CATEGORIES, Sample, calls_to_truth
from toolace_r.errors import CallParseError, DataError

log = logging.getLogger(__name__)

FORMATS = ("toolace", "sharegpt", "openai", "bfcl", "apibank", "toolrl", "samples")


@dataclass
class ReadResult:
    samples: list[Sample]
    skipped: int = 0  # records skipped under on_error="skip"
    errors: list[str] = field(default_factory=list)  # one message per skipped record
    format: str = ""
    records: int = 0  # records read (after `limit`)


@dataclass
class _Ctx:
    """Where a record came from, for error messages and ids."""
    path: str
    stem: str
    index: int = 0
    answers: dict[str, Any] | None = None  # BFCL: id -> ground truth
    category: str = ""  # BFCL: category from the file name
    require_declared: bool = False  # a truth call must name one of the record's tools

    def error(self, message: str, field: str | None = None) -> DataError:
        return DataError(message, path=self.path, index=self.index, field=field)


class _BadRecord:
    """A record that could not even be decoded (a broken JSON line): raised or skipped like any bad record."""

    def __init__(self, message: str):
        self.message = message


# ---------------------------------------------------------------------------------------------------------------
# Tool schemas
# ---------------------------------------------------------------------------------------------------------------
_TYPE_NAMES = {
    "string": "string", "str": "string", "text": "string", "date": "string", "datetime": "string",
    "integer": "integer", "int": "integer", "long": "integer",
    "number": "float", "float": "float", "double": "float",
    "boolean": "boolean", "bool": "boolean",
    "array": "array", "list": "array",
    "tuple": "tuple",
    "object": "dict", "dict": "dict", "map": "dict", "hashmap": "dict",
    "any": "any", "null": "any",
}
_GENERIC = re.compile(r"^(list|array|tuple|dict|set|sequence|iterable)\s*[\[(]\s*(.*?)\s*[\])]$", re.IGNORECASE)


def normalize_type(raw: Any) -> tuple[str, dict[str, Any]]:
    """A type as written by some data set → (BFCL type name, extra schema keys such as `items`).
    `List[int]` → ("array", {"items": {"type": "integer"}}); "str, optional" → "string"; unknown → "any"."""
    if isinstance(raw, list):  # JSON-schema union like ["string", "null"]
        names = [t for t in raw if t != "null"]
        return normalize_type(names[0]) if names else ("any", {})
    if not isinstance(raw, str):
        return "any", {}
    text = raw.split(",")[0].strip() if ", optional" in raw.lower() else raw.strip()
    lowered = text.lower()
    if lowered in _TYPE_NAMES:
        return _TYPE_NAMES[lowered], {}
    m = _GENERIC.match(text)
    if m:
        outer, inner = m.group(1).lower(), m.group(2)
        if outer in ("dict",):
            return "dict", {}
        kind = "tuple" if outer == "tuple" else "array"
        if inner and "," not in inner:  # List[int] → items int; Tuple[float, float] keeps no single item type
            item_type, item_extra = normalize_type(inner)
            return kind, {"items": {"type": item_type, **item_extra}}
        return kind, {}
    return "any", {}


def _normalize_property(prop: Any, where: str, ctx: _Ctx) -> dict[str, Any]:
    if not isinstance(prop, dict):
        raise ctx.error(f"parameter schema must be an object, got {type(prop).__name__}", where)
    out = dict(prop)
    type_name, extra = normalize_type(prop.get("type", "any"))
    out["type"] = type_name
    for key, value in extra.items():
        out.setdefault(key, value)
    if isinstance(out.get("items"), dict):
        out["items"] = _normalize_property(out["items"], where + ".items", ctx)
    if isinstance(out.get("properties"), dict):
        out["properties"] = {k: _normalize_property(v, f"{where}.properties.{k}", ctx)
                             for k, v in out["properties"].items()}
    return out


def _is_optional(prop: dict[str, Any]) -> bool:
    """Flat schemas (API-Bank, ToolRL) mark optional parameters in the type, the description or by a default."""
    type_text = str(prop.get("type", "")).lower()
    desc = str(prop.get("description", "")).lower()
    default = prop.get("default", None)
    return "optional" in type_text or desc.startswith("[optional]") or default not in (None, "")


def normalize_tool(tool: Any, where: str, ctx: _Ctx) -> dict[str, Any]:
    """Any supported tool description → `{"name", "description", "parameters": {"type": "dict", ...}}`."""
    if isinstance(tool, dict) and tool.get("type") == "function" and isinstance(tool.get("function"), dict):
        tool = tool["function"]  # OpenAI format
    if not isinstance(tool, dict):
        raise ctx.error(f"a tool must be an object, got {type(tool).__name__}", where)
    name = tool.get("name")
    if not isinstance(name, str) or not name:
        raise ctx.error("tool has no name", where + ".name")
    params = tool.get("parameters", {}) or {}
    if not isinstance(params, dict):
        raise ctx.error(f"parameters must be an object, got {type(params).__name__}", where + ".parameters")
    nested = params.get("properties")
    # JSON-schema form, unless "properties" is just a parameter of that name in a flat schema (ToolRL has one)
    if params.get("type") in ("object", "dict") or (
        isinstance(nested, dict) and all(isinstance(v, dict) for v in nested.values())
    ):
        props = params.get("properties") or {}
        if not isinstance(props, dict):
            raise ctx.error("properties must be an object", where + ".parameters.properties")
        required = params.get("required") or []
        if not isinstance(required, list):
            raise ctx.error("required must be a list", where + ".parameters.required")
        flat = False
    else:  # flat {param: {type, description}} (API-Bank, ToolRL)
        props, flat = params, True
        required = [k for k, v in props.items() if isinstance(v, dict) and not _is_optional(v)]
    properties = {}
    for pname, prop in props.items():
        norm = _normalize_property(prop, f"{where}.parameters.{pname}", ctx)
        if flat and norm.get("default") == "":
            norm.pop("default")
        properties[str(pname)] = norm
    return {
        "name": name,
        "description": str(tool.get("description", "") or ""),
        "parameters": {"type": "dict", "properties": properties, "required": [str(r) for r in required]},
    }


def _relax_required(tools: list[dict[str, Any]], calls: list[dict[str, Any]]) -> None:
    """Flat schemas (API-Bank, ToolRL) do not say which parameters are required, so `normalize_tool` guesses; a
    parameter the record's own answer leaves out is evidently optional, and is dropped from `required` so the
    reference answer passes the checker."""
    by_name = {t["name"]: t for t in tools}
    for call in calls:
        tool = by_name.get(call["name"])
        if tool is not None:
            req = tool["parameters"]["required"]
            req[:] = [r for r in req if r in call["arguments"]]


def _tools_list(value: Any, field_name: str, ctx: _Ctx) -> list[dict[str, Any]]:
    if isinstance(value, str):
        try:
            value = json.loads(value) if value.strip() else []
        except json.JSONDecodeError as err:
            raise ctx.error(f"not valid JSON: {err}", field_name) from None
    if value is None:
        value = []
    if isinstance(value, dict):
        value = [value]
    if not isinstance(value, list):
        raise ctx.error(f"expected a list of tools, got {type(value).__name__}", field_name)
    return [normalize_tool(t, f"{field_name}[{i}]", ctx) for i, t in enumerate(value)]


def _arguments(value: Any, where: str, ctx: _Ctx) -> dict[str, Any]:
    """Call arguments given as an object or as a JSON string (OpenAI writes them as a string)."""
    if isinstance(value, str):
        try:
            value = json.loads(value) if value.strip() else {}
        except json.JSONDecodeError as err:
            raise ctx.error(f"arguments are not valid JSON: {err}", where) from None
    if value is None:
        value = {}
    if not isinstance(value, dict):
        raise ctx.error(f"arguments must be an object, got {type(value).__name__}", where)
    return value


def _call(obj: Any, where: str, ctx: _Ctx, args_key: str = "arguments") -> dict[str, Any]:
    if isinstance(obj, dict) and isinstance(obj.get("function"), dict):  # OpenAI tool_call
        obj = obj["function"]
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str) or not obj["name"]:
        raise ctx.error("a call needs a non-empty string 'name'", where)
    raw_args = obj.get(args_key, obj.get("arguments", obj.get("parameters")))
    return {"name": obj["name"], "arguments": _arguments(raw_args, f"{where}.{args_key}", ctx)}


def _check_declared(names: list[str], tools: list[dict[str, Any]], where: str, ctx: _Ctx) -> None:
    """With ctx.require_declared, a truth call must name one of the record's tools: a training target calling a
    function the prompt never offered teaches the model to invent functions, and no answer can ever pass the check."""
    if not ctx.require_declared:
        return
    declared = {t["name"] for t in tools}
    for name in names:
        if name not in declared:
            offered = ", ".join(repr(n) for n in sorted(declared)[:8]) or "none"
            raise ctx.error(f"truth calls {name!r}, which is not among the record's tools ({offered})", where)


def _surrogate_path(value: Any, path: str) -> str | None:
    """Where (a field path) the first string that is not valid Unicode sits, or None."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return path
        return None
    if isinstance(value, dict):
        for k, v in value.items():
            found = _surrogate_path(k, path) or _surrogate_path(v, f"{path}.{k}")
            if found:
                return found
    elif isinstance(value, list):
        for i, v in enumerate(value):
            found = _surrogate_path(v, f"{path}[{i}]")
            if found:
                return found
    return None


def _check_unicode(sample: Sample, ctx: _Ctx) -> None:
    """A lone UTF-16 surrogate (a "\\ud83d" escape without its pair: an emoji cut in half) reads fine from JSON but
    is not text: every later write (UTF-8 JSON Lines, parquet, the tokenizer) fails on it, far from this record."""
    for key in ("id", "tools", "messages", "truth"):
        where = _surrogate_path(getattr(sample, key), key)
        if where:
            raise ctx.error(f"sample {sample.id!r}: text is not valid Unicode (a lone UTF-16 surrogate, e.g. an "
                            f"emoji cut in half)", where)


def _require(record: dict, key: str, kind: type | tuple, ctx: _Ctx) -> Any:
    if key not in record:
        raise ctx.error("missing", key)
    value = record[key]
    if not isinstance(value, kind):
        expected = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise ctx.error(f"expected {expected}, got {type(value).__name__}", key)
    return value


def _base_id(record: dict, ctx: _Ctx) -> str:
    rid = record.get("id")
    return str(rid) if isinstance(rid, (str, int)) and str(rid) else f"{ctx.stem}-{ctx.index:05d}"


# ---------------------------------------------------------------------------------------------------------------
# Dialogue walker shared by toolace / sharegpt / openai
# ---------------------------------------------------------------------------------------------------------------
class _Dialogue:
    """Accumulates history; each assistant call turn becomes a Sample with the history before it."""

    def __init__(self, record: dict, tools: list[dict], ctx: _Ctx, source: str):
        self.base, self.tools, self.ctx, self.source = _base_id(record, ctx), tools, ctx, source
        self.history: list[dict[str, Any]] = []
        self.samples: list[Sample] = []

    def say(self, role: str, content: Any) -> None:
        self.history.append({"role": role, "content": "" if content is None else str(content)})

    def call(self, calls: list[dict[str, Any]], content: str, where: str) -> None:
        _check_declared([c["name"] for c in calls], self.tools, where, self.ctx)
        self.samples.append(Sample(
            id=f"{self.base}-{len(self.samples)}",
            tools=self.tools,
            messages=[dict(m) for m in self.history],
            truth=calls_to_truth(calls),
            source=self.source,
        ))
        self.history.append({"role": "assistant", "content": content, "tool_calls": calls})


def _turns(record: dict, key: str, ctx: _Ctx) -> list[tuple[str, Any, str]]:
    """(speaker, text, field path) for ShareGPT-like turns written either {from, value} or {role, content}."""
    turns = _require(record, key, list, ctx)
    out = []
    for i, turn in enumerate(turns):
        where = f"{key}[{i}]"
        if not isinstance(turn, dict):
            raise ctx.error(f"a turn must be an object, got {type(turn).__name__}", where)
        speaker = turn.get("from", turn.get("role"))
        if not isinstance(speaker, str):
            raise ctx.error("turn has no 'from'/'role'", where)
        text = turn.get("value", turn.get("content"))
        out.append((speaker, text, where))
    return out


_TOOLACE_SPEAKERS = {"user": "user", "assistant": "assistant", "tool": "tool", "system": "system"}


def read_toolace(record: dict, ctx: _Ctx) -> list[Sample]:
    system = _require(record, "system", str, ctx)
    tools = _tools_list(_find_json_tools(system, ctx), "system", ctx)
    dialog = _Dialogue(record, tools, ctx, ctx.stem)
    from toolace_r.calls import parse_calls  # the calls engineer's parser handles names with spaces, dots, slashes

    for speaker, text, where in _turns(record, "conversations", ctx):
        role = _TOOLACE_SPEAKERS.get(speaker)
        if role is None:
            raise ctx.error(f"unknown speaker {speaker!r} (expected user/assistant/tool)", where + ".from")
        if not isinstance(text, str):
            raise ctx.error("turn text must be a string", where + ".value")
        if role == "assistant":
            try:
                calls = parse_calls(text)
            except CallParseError as err:
                raise ctx.error(f"assistant call cannot be parsed: {err}", where + ".value") from None
            if calls:
                dialog.call(calls, text, where + ".value")
                continue
        dialog.say(role, text)
    return dialog.samples


def _find_json_tools(text: str, ctx: _Ctx) -> list:
    """The first JSON array of objects with a "name" inside a system prompt (ToolACE puts the tools there)."""
    decoder = json.JSONDecoder()
    # a list of tool objects starts with "[" then "{": trying every "[" would be slow on huge prompts full of them
    for m in re.finditer(r"\[\s*\{", text):
        try:
            value, _ = decoder.raw_decode(text, m.start())
        except json.JSONDecodeError:
            continue
        except RecursionError:
            raise ctx.error("JSON in the system prompt is nested too deeply to read", "system") from None
        if isinstance(value, list) and value and all(isinstance(t, dict) and "name" in t for t in value):
            return value
    raise ctx.error("no JSON list of tools found in the system prompt", "system")


_SHAREGPT_SPEAKERS = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                      "observation": "tool", "tool": "tool", "function": "tool", "system": "system",
                      "function_call": "function_call"}


def read_sharegpt(record: dict, ctx: _Ctx) -> list[Sample]:
    tools = _tools_list(record.get("tools"), "tools", ctx)
    dialog = _Dialogue(record, tools, ctx, ctx.stem)
    if isinstance(record.get("system"), str) and record["system"]:
        dialog.say("system", record["system"])
    for speaker, text, where in _turns(record, "conversations", ctx):
        role = _SHAREGPT_SPEAKERS.get(speaker)
        if role is None:
            raise ctx.error(f"unknown speaker {speaker!r}", where + ".from")
        if role != "function_call":
            dialog.say(role, text)
            continue
        value = text
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except json.JSONDecodeError as err:
                raise ctx.error(f"function_call is not valid JSON: {err}", where + ".value") from None
        items = value if isinstance(value, list) else [value]  # LLaMA-Factory writes parallel calls as a list
        calls = [_call(c, f"{where}.value[{j}]", ctx) for j, c in enumerate(items)]
        dialog.call(calls, text if isinstance(text, str) else json.dumps(value), where + ".value")
    return dialog.samples


def read_openai(record: dict, ctx: _Ctx) -> list[Sample]:
    tools = _tools_list(record.get("tools"), "tools", ctx)
    dialog = _Dialogue(record, tools, ctx, ctx.stem)
    messages = _require(record, "messages", list, ctx)
    for i, msg in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(msg, dict) or not isinstance(msg.get("role"), str):
            raise ctx.error("a message needs a string 'role'", where)
        role = msg["role"]
        if role not in ("system", "user", "assistant", "tool", "function"):
            raise ctx.error(f"unknown role {role!r}", where + ".role")
        raw_calls = msg.get("tool_calls") or ([msg["function_call"]] if msg.get("function_call") else [])
        if role == "assistant" and raw_calls:
            if not isinstance(raw_calls, list):
                raise ctx.error("tool_calls must be a list", where + ".tool_calls")
            calls = [_call(c, f"{where}.tool_calls[{j}]", ctx) for j, c in enumerate(raw_calls)]
            dialog.call(calls, msg.get("content") or "", where + ".tool_calls")
            continue
        content = msg.get("content")
        if isinstance(content, list):  # content parts: keep the text ones
            content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
        dialog.say("tool" if role == "function" else role, content)
    return dialog.samples


# ---------------------------------------------------------------------------------------------------------------
# Single-decision formats: bfcl / apibank / toolrl / samples
# ---------------------------------------------------------------------------------------------------------------
def read_bfcl_record(record: dict, ctx: _Ctx) -> list[Sample]:
    rid = _require(record, "id", str, ctx)
    question = _require(record, "question", list, ctx)
    if len(question) != 1 or not isinstance(question[0], list):
        raise ctx.error("only single-turn BFCL questions are supported (expected one list of messages)", "question")
    messages = []
    for i, msg in enumerate(question[0]):
        if not isinstance(msg, dict) or not isinstance(msg.get("role"), str):
            raise ctx.error("a message needs a string 'role'", f"question[0][{i}]")
        messages.append({"role": msg["role"], "content": str(msg.get("content", ""))})
    tools = _tools_list(_require(record, "function", list, ctx), "function", ctx)
    if ctx.answers is None:  # irrelevance: the right answer is no call
        truth = []
    else:
        if rid not in ctx.answers:
            raise ctx.error(f"no possible answer for id {rid!r}", "id")
        truth = ctx.answers[rid]
        if not isinstance(truth, list) or not all(isinstance(t, dict) and len(t) == 1 for t in truth):
            raise ctx.error("ground_truth must be a list of {function: {param: [values]}}", "ground_truth")
        _check_truth(truth, tools, "ground_truth", ctx)
        _check_declared([next(iter(t)) for t in truth], tools, "ground_truth", ctx)
    # BFCL's own category names stay: the checker dispatches on them by substring as BFCL does (live_relevance
    # = any call, live_parallel = order-free, simple_java = simple); anything else is inferred from the truth
    category = ctx.category if ctx.category in CATEGORIES or ctx.category in BFCL_NAMES else ""
    return [Sample(id=rid, tools=tools, messages=messages, truth=truth, category=category,
                   source=f"bfcl/{ctx.category or ctx.stem}")]


_APIBANK_ROLES = {"user": "user", "agent": "assistant", "tool": "tool", "system": "system"}


def _apibank_calls(text: str, where: str, ctx: _Ctx) -> list[dict[str, Any]]:
    """An earlier API-Bank call: assistant content "```[{"name", "arguments"}]```"."""
    body = text.strip().strip("`").strip()
    if body.startswith("json"):
        body = body[4:].strip()
    try:
        value = json.loads(body)
    except json.JSONDecodeError as err:
        raise ctx.error(f"assistant call is not valid JSON: {err}", where) from None
    items = value if isinstance(value, list) else [value]
    return [_call(c, f"{where}[{j}]", ctx) for j, c in enumerate(items)]


def read_apibank(record: dict, ctx: _Ctx) -> list[Sample]:
    tools = _tools_list(_require(record, "tools", list, ctx), "tools", ctx)
    answers = _require(record, "answers", list, ctx)
    calls = [_call(a, f"answers[{j}]", ctx) for j, a in enumerate(answers)]
    for j, c in enumerate(calls):
        _check_declared([c["name"]], tools, f"answers[{j}].name", ctx)
    messages: list[dict[str, Any]] = []
    for i, msg in enumerate(_require(record, "query", list, ctx)):
        where = f"query[{i}]"
        if not isinstance(msg, dict) or not isinstance(msg.get("role"), str):
            raise ctx.error("a message needs a string 'role'", where)
        content = str(msg.get("content", "") or "")
        if msg["role"] == "assistant":  # an earlier API request, written as JSON in a code fence
            messages.append({"role": "assistant", "content": "",
                             "tool_calls": _apibank_calls(content, where + ".content", ctx)})
        elif msg["role"] in _APIBANK_ROLES:
            messages.append({"role": _APIBANK_ROLES[msg["role"]], "content": content})
        else:
            raise ctx.error(f"unknown role {msg['role']!r}", where + ".role")
    _relax_required(tools, calls)
    return [Sample(id=_base_id(record, ctx), tools=tools, messages=messages, truth=calls_to_truth(calls),
                   source=ctx.stem)]


_TOOLRL_TOOL = re.compile(r"(?m)^\d+\.\s*Name:\s*(.*)\nDescription:\s*((?:.|\n)*?)\nParameters:\s*(.*)$")
_TOOLRL_TURN = re.compile(r"<(user|tool_call|obs|response)>(.*?)</\1>", re.DOTALL)
_TOOL_CALL_BLOCK = re.compile(r"<tool_call>(.*?)</tool_call>", re.DOTALL)
_THINK = re.compile(r"<think>.*?</think>", re.DOTALL)  # reasoning text may quote the tags themselves


def _json_objects(text: str, where: str, ctx: _Ctx) -> list[Any]:
    """Consecutive JSON values in a <tool_call> block (one call per line in ToolRL)."""
    decoder, pos, out = json.JSONDecoder(), 0, []
    text = text.strip()
    while pos < len(text):
        while pos < len(text) and text[pos] in " \t\r\n,":
            pos += 1
        if pos >= len(text):
            break
        try:
            value, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as err:
            raise ctx.error(f"tool call is not valid JSON: {err}", where) from None
        out.append(value)
    return out


def _toolrl_calls(block: str, where: str, ctx: _Ctx) -> list[dict[str, Any]]:
    items = []
    for value in _json_objects(block, where, ctx):
        items.extend(value if isinstance(value, list) else [value])
    return [_call(c, f"{where}[{j}]", ctx, args_key="parameters") for j, c in enumerate(items)]


def read_toolrl(record: dict, ctx: _Ctx) -> list[Sample]:
    if "prompt" in record:  # rlla_4k form: chat prompt + reward_model.ground_truth
        prompt = _require(record, "prompt", list, ctx)
        for i, m in enumerate(prompt):
            if not (isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content", ""), str)):
                raise ctx.error("a prompt message needs a string 'role' and 'content'", f"prompt[{i}]")
        system = next((m.get("content", "") for m in prompt if isinstance(m, dict) and m.get("role") == "system"), "")
        dialogue = "\n".join(m.get("content", "") for m in prompt if isinstance(m, dict) and m.get("role") == "user")
        reward = _require(record, "reward_model", dict, ctx)
        output, out_field = reward.get("ground_truth"), "reward_model.ground_truth"
        sys_field = "prompt[system].content"
    else:
        system, sys_field = _require(record, "instruction", str, ctx), "instruction"
        dialogue = record.get("input", "") or ""
        if not isinstance(dialogue, str):
            raise ctx.error(f"expected str, got {type(dialogue).__name__}", "input")
        output, out_field = record.get("output"), "output"
    if not isinstance(output, str):
        raise ctx.error("missing or not a string", out_field)
    tools = []
    for j, m in enumerate(_TOOLRL_TOOL.finditer(system)):
        try:
            params = json.loads(m.group(3)) if m.group(3).strip() else {}
        except json.JSONDecodeError as err:
            raise ctx.error(f"parameters of tool {m.group(1)!r} are not valid JSON: {err}", sys_field) from None
        tool = {"name": m.group(1).strip(), "description": m.group(2).strip(), "parameters": params}
        tools.append(normalize_tool(tool, f"{sys_field}.tools[{j}]", ctx))
    if not tools:
        raise ctx.error("no tools ('N. Name: ... Parameters: ...') found", sys_field)
    messages: list[dict[str, Any]] = []
    for m in _TOOLRL_TURN.finditer(_THINK.sub("", dialogue)):
        tag, body = m.group(1), m.group(2).strip()
        if tag == "user":
            messages.append({"role": "user", "content": body})
        elif tag == "obs":
            messages.append({"role": "tool", "content": body})
        elif tag == "response":
            messages.append({"role": "assistant", "content": body})
        else:
            messages.append({"role": "assistant", "content": "",
                             "tool_calls": _toolrl_calls(body, "input.tool_call", ctx)})
    if not any(m["role"] == "user" for m in messages):
        raise ctx.error("no <user> turn in the dialogue", "input")
    calls = []
    for block in _TOOL_CALL_BLOCK.findall(_THINK.sub("", output)):
        calls += _toolrl_calls(block, out_field, ctx)
    _check_declared([c["name"] for c in calls], tools, out_field, ctx)
    _relax_required(tools, calls)
    return [Sample(id=_base_id(record, ctx), tools=tools, messages=messages, truth=calls_to_truth(calls),
                   source=ctx.stem)]


def read_sample_row(record: dict, ctx: _Ctx) -> list[Sample]:
    for key in ("id", "tools", "messages", "truth"):
        if key not in record:
            raise ctx.error("missing", key)
    try:
        sample = Sample.from_row(record)
    except (json.JSONDecodeError, TypeError, ValueError) as err:
        raise ctx.error(f"cannot decode: {err}", "tools/messages/truth") from None
    for key, value in (("tools", sample.tools), ("messages", sample.messages), ("truth", sample.truth)):
        if not isinstance(value, list):
            raise ctx.error(f"expected a list, got {type(value).__name__}", key)
    # our rows are kept as written (already normalised); only what every later stage relies on is checked
    for i, tool in enumerate(sample.tools):
        normalize_tool(tool, f"tools[{i}]", ctx)  # raises DataError naming the part of the schema that is wrong
    for i, msg in enumerate(sample.messages):
        if not (isinstance(msg, dict) and isinstance(msg.get("role"), str)):
            raise ctx.error("a message needs a string 'role'", f"messages[{i}]")
    _check_truth(sample.truth, sample.tools, "truth", ctx)
    _check_declared([next(iter(t)) for t in sample.truth], sample.tools, "truth", ctx)
    return [sample]


def _check_truth(truth: list, tools: list[dict[str, Any]], where: str, ctx: _Ctx) -> None:
    """Truth read as written (possible_answer/, our own rows) feeds the checker and the training target: check its
    shape, and that the reference answer can be built from it with the record's tools."""
    for i, entry in enumerate(truth):
        params = next(iter(entry.values())) if isinstance(entry, dict) and len(entry) == 1 else None
        if not isinstance(params, dict) or not all(isinstance(v, list) for v in params.values()):
            raise ctx.error("truth entries are {function: {param: [acceptable values]}}", f"{where}[{i}]")
    from toolace_r.calls.checker import gold_calls  # lazy, as in schema.py: calls does not import data

    try:
        gold_calls(truth, tools)
    except (TypeError, AttributeError, KeyError, ValueError) as err:
        raise ctx.error(f"no reference answer can be built from this truth with the record's tools "
                        f"({type(err).__name__}: {err})", "tools") from None


RECORD_READERS: dict[str, Callable[[dict, _Ctx], list[Sample]]] = {
    "toolace": read_toolace, "sharegpt": read_sharegpt, "openai": read_openai, "bfcl": read_bfcl_record,
    "apibank": read_apibank, "toolrl": read_toolrl, "samples": read_sample_row,
}


# ---------------------------------------------------------------------------------------------------------------
# Detection and containers
# ---------------------------------------------------------------------------------------------------------------
def detect_format(record: dict) -> str | None:
    """The format of one record from its keys (and speaker names); None when no reader fits."""
    keys = set(record)
    if {"id", "tools", "messages", "truth"} <= keys:
        return "samples"
    if {"question", "function"} <= keys:
        return "bfcl"
    if {"query", "answers", "tools"} <= keys:
        return "apibank"
    if ("instruction" in keys and "output" in keys) or ("prompt" in keys and "reward_model" in keys):
        return "toolrl"
    if "messages" in keys:
        return "openai"
    if "conversations" in keys and isinstance(record["conversations"], list):
        speakers = {t.get("from", t.get("role")) for t in record["conversations"] if isinstance(t, dict)}
        if speakers & {"human", "gpt", "function_call", "observation"}:
            return "sharegpt"
        if "system" in keys:
            return "toolace"
        if "tools" in keys:
            return "sharegpt"
    return None


def _load_records(path: Path) -> list[dict | _BadRecord]:
    """Every record of a JSON / JSONL / parquet file or a parquet / HF datasets directory."""
    if path.is_dir():
        if any((path / f).is_file() for f in ("dataset_dict.json", "state.json", "dataset_info.json")):
            import datasets

            ds = datasets.load_from_disk(str(path))
            splits = [ds[k] for k in ds] if isinstance(ds, datasets.DatasetDict) else [ds]
            return [row for split in splits for row in split.to_list()]
        files = sorted(path.glob("*.parquet")) or sorted(path.glob("**/*.parquet"))
        if not files:
            raise DataError("directory is neither a HF datasets dir nor holds parquet files", path=str(path))
        return [row for f in files for row in _load_records(f)]
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()
    text = path.read_text(encoding="utf-8")
    stripped = text.lstrip()
    if stripped.startswith("["):
        try:
            value = json.loads(text)
        except json.JSONDecodeError as err:
            # records after the break cannot be found again, so this is a file error even under on_error=skip
            raise DataError(f"not valid JSON: {err}{_where_array_breaks(text)}", path=str(path)) from None
        except RecursionError:
            raise DataError("not readable: JSON nested too deeply", path=str(path)) from None
        return [r if isinstance(r, dict) else _BadRecord(f"record is a {type(r).__name__}, not an object")
                for r in value]
    whole_error: json.JSONDecodeError | None = None
    try:  # one JSON object holding the whole file
        value = json.loads(text)
        if isinstance(value, dict):
            lists = [v for v in value.values() if isinstance(v, list) and v and all(isinstance(r, dict) for r in v)]
            return lists[0] if detect_format(value) is None and len(lists) == 1 else [value]
    except json.JSONDecodeError as err:
        whole_error = err
    except RecursionError:
        pass
    records: list[dict | _BadRecord] = []  # JSON Lines (BFCL's .json files are JSON Lines too)
    for lineno, row, error in json_lines(text):
        if isinstance(error, json.JSONDecodeError):
            records.append(_BadRecord(f"line is not valid JSON: {error.msg} at file line {lineno} "
                                      f"column {error.colno}"))
        elif error is not None:
            records.append(_BadRecord(f"line is not readable: JSON nested too deeply at file line {lineno}"))
        else:
            records.append(row if isinstance(row, dict) else _BadRecord(f"record is a {type(row).__name__}"))
    if whole_error is not None and len(records) > 1 and all(isinstance(r, _BadRecord) for r in records):
        # not JSON Lines after all: one (pretty-printed) JSON document that does not parse, e.g. a truncated one
        raise DataError(f"not valid JSON (nor JSON Lines): {whole_error}", path=str(path))
    return records


def json_lines(text: str) -> Iterator[tuple[int, Any, json.JSONDecodeError | RecursionError | None]]:
    """(file line number, value, None) for each non-blank line of a JSON Lines text, or (line number, None, the
    error) for a line that does not decode; the callers word the error. Split on "\n" only: str.splitlines() also
    breaks at U+2028, U+0085, ... which JSON allows raw inside strings."""
    for lineno, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except (json.JSONDecodeError, RecursionError) as err:
            yield lineno, None, err
            continue
        yield lineno, value, None


def _where_array_breaks(text: str) -> str:
    """For a JSON array that does not parse: which record it breaks in (the ones before it are intact)."""
    decoder, pos, index = json.JSONDecoder(), text.index("[") + 1, 0
    try:
        while True:
            while pos < len(text) and text[pos] in " \t\r\n,":
                pos += 1
            if pos >= len(text) or text[pos] == "]":
                return ""
            _, pos = decoder.raw_decode(text, pos)
            index += 1
    except (json.JSONDecodeError, RecursionError):
        before = f"records 0-{index - 1} parse" if index else "no record parses"
        return f" (in record {index}; {before}; a broken JSON array cannot be skipped record by record, " \
               f"JSON Lines can)"


def _bfcl_context(path: Path) -> tuple[dict[str, Any] | None, str]:
    """(id → ground truth from possible_answer/<name>, category from the file name). Irrelevance and relevance
    files have no answers: their truth is empty and the category tells the checker what is right."""
    m = re.match(r"BFCL_v\d+_(.+)\.jsonl?$", path.name)
    category = m.group(1) if m else path.stem
    answer_file = path.parent / "possible_answer" / path.name
    if "relevance" in category:  # irrelevance: no call is right; live_relevance: any call is (BFCL reads no answer)
        return None, category
    if not answer_file.is_file():
        raise DataError(f"BFCL answer file {answer_file} not found (only irrelevance and relevance files lack one)",
                        path=str(path))
    return {rec["id"]: rec["ground_truth"] for rec in answer_records(_load_records(answer_file), answer_file)}, category


def answer_records(records: list[dict | _BadRecord], path: Path) -> Iterator[dict]:
    """The records of a possible-answer file (BFCL's, ACEBench's), each with an 'id' and a 'ground_truth': a record
    without them is a DataError naming the file and the record, whatever on_error says (no question can be judged
    against a broken answer file)."""
    for i, rec in enumerate(records):
        if isinstance(rec, _BadRecord) or "id" not in rec or "ground_truth" not in rec:
            raise DataError("answer record needs 'id' and 'ground_truth'", path=str(path), index=i,
                            field="ground_truth")
        yield rec


def read_records(records: list[dict | _BadRecord], ctx: _Ctx, reader: Callable[[dict, _Ctx], list[Sample]],
                 on_error: str = "raise") -> ReadResult:
    """`reader` over every record, with ctx.index set to the record's: a bad record (a _BadRecord, or a DataError
    from the reader) raises under on_error="raise", and under "skip" is counted in ReadResult.skipped with its
    message in .errors (the caller logs them). The loop of every reader: read_samples_file, toolace_r.data.apibank
    (the published files) and toolace_r.data.acebench."""
    result = ReadResult(samples=[], records=len(records))
    for index, record in enumerate(records):
        ctx.index = index
        try:
            if isinstance(record, _BadRecord):
                raise ctx.error(record.message)
            samples = reader(record, ctx)
        except DataError as err:
            if on_error == "raise":
                raise
            result.skipped += 1
            result.errors.append(str(err))
            continue
        result.samples.extend(samples)
    return result


def checked_reader(reader: Callable[[dict, _Ctx], list[Sample]]) -> Callable[[dict, _Ctx], list[Sample]]:
    """`reader` with the checks that span records: every sample's text is valid Unicode and its id is new (a record
    that fails either is a bad record, and its ids are not remembered)."""
    seen_ids: set[str] = set()

    def read(record: dict, ctx: _Ctx) -> list[Sample]:
        samples = reader(record, ctx)
        for s in samples:
            _check_unicode(s, ctx)
            if s.id in seen_ids:
                raise ctx.error(f"duplicate sample id {s.id!r}", "id")
        seen_ids.update(s.id for s in samples)
        return samples

    return read


def read_samples_file(path: str | Path, format: str = "auto", on_error: str = "raise", limit: int = 0,
                      require_declared: bool = False) -> ReadResult:
    """Read every sample in `path`. format="auto" detects it from the first records; on_error is "raise" (DataError
    naming file, record index and field) or "skip" (skip, count in ReadResult.skipped, log); limit caps records.
    require_declared: a truth call naming a function that is not among the record's tools is a bad record (the
    training pool asks for it; benchmark files are read as they are: BFCL's simple_363 is such a record)."""
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', not {on_error!r}")
    if format != "auto" and format not in RECORD_READERS:
        raise DataError(f"unknown format {format!r}; expected auto or one of {', '.join(FORMATS)}", path=str(path))
    p = Path(path)
    if not p.exists():
        raise DataError("no such file or directory", path=str(path))
    try:
        records = _load_records(p)
    except DataError:
        raise
    except Exception as err:  # unreadable parquet / dataset dir, bad encoding: say which file, not a stack trace
        raise DataError(f"cannot read: {type(err).__name__}: {err}", path=str(path)) from err
    if limit:
        records = records[:limit]
    if format == "auto":
        found = [detect_format(r) for r in records[:20] if isinstance(r, dict)]
        known = [f for f in found if f]
        if not known:
            keys = sorted(next((r for r in records if isinstance(r, dict)), {}).keys())
            raise DataError(f"cannot tell the format from the records (keys {keys}); set pool.format to one of "
                            f"{', '.join(FORMATS)}", path=str(path))
        format = max(dict.fromkeys(known), key=known.count)  # a tie goes to the first seen, not to hash order
    ctx = _Ctx(path=str(path), stem=p.stem if p.is_file() else p.name, require_declared=require_declared)
    if format == "bfcl":
        ctx.answers, ctx.category = _bfcl_context(p)
    checked = checked_reader(RECORD_READERS[format])
    no_call = 0

    def reader(record: dict, ctx: _Ctx) -> list[Sample]:
        nonlocal no_call
        samples = checked(record, ctx)
        no_call += not samples
        return samples

    result = read_records(records, ctx, reader, on_error)
    result.format = format
    log.info("%s: %d records (%s) -> %d samples%s%s", path, len(records), format, len(result.samples),
             f", {no_call} records without a tool call" if no_call else "",
             f", {result.skipped} skipped" if result.skipped else "")
    if result.skipped:
        log.warning("%s: skipped %d bad records (pool.on_error=skip); first: %s", path, result.skipped,
                    result.errors[0])
    return result


def read_bfcl(path: str | Path, on_error: str = "raise", limit: int = 0) -> ReadResult:
    """A BFCL question file with its possible_answer/ file next to it."""
    return read_samples_file(path, "bfcl", on_error, limit)
