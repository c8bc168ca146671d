"""API-Bank for evaluation: `apibank:FILE_OR_DIR` reads the test data as its authors published it, or Hammer's copy.

Two structures, told apart by the records' keys:

- **published** (AlibabaResearch/DAMO-ConvAI `api-bank/test-data/level-{1,2}-api.json`): a JSON array of `{file,
  id, instruction, input, expected_output}`. The API descriptions are JSON lines in `instruction` after "API
  descriptions:" (`{name, description, input_parameters: {p: {type, description}}, output_parameters}`); the
  dialogue is `input`, lines `User: ...` / `AI: ...` / `API-Request: [Name(k='v')]->result` up to "Generate API
  Request:"; the gold call is `expected_output`, `API-Request: [Name(key='value', ...)]`. Level 1 gives the APIs;
  level 2 gives only ToolSearcher, and the API to call is described by ToolSearcher's result inside the dialogue,
  so the tools of a sample are the instruction's APIs plus the ones ToolSearcher returned before that point. The
  `*-response.json` files (reply generation, scored by ROUGE) are not call tests: skipped with a logged note.
- **Hammer's** (MadeAgents/Hammer `data/test/original/apibank_l{1,2}.json`: `{query, tools, answers}`), read by
  toolace_r.data.formats.read_apibank as before.

Scoring is call accuracy by the AST checker: the gold call against the model's call, as the paper's family scores
API-Bank (rather than API-Bank's own sandbox execution). Group keys: `apibank_l1` / `apibank_l2` for the published
`level-1-api` / `level-2-api` files, the file stem otherwise.

Known defects of the published data, handled and logged, never silently:
- 47 gold calls write a list inside quotes (`health_data='[{'name': ...}]'`, `attendees='['John']'`), which is not
  Python: such a call is split at `, key=` and a quoted value holding a list/dict literal is read as that literal.
  The schema types of those parameters are `list` / `list(str)`, so the list is the intended value (Hammer's copy
  keeps the quoted text as a string instead).
- Some gold calls cannot be matched by any answer the AST checker accepts: 14 of the 135 level-2 items ask for an
  API whose description the dialogue never shows (the ToolSearcher result before it was left out upstream, e.g.
  `QueryReminder-level-3-2.jsonl` #1), and 8 of the 399 level-1 items pass `device_id`, a parameter the API's own
  description does not have (it has `name`: `TimedSwitch-level-1-*`, `CancelTimedSwitch-level-1-*`). No answer can
  be judged against a schema the model was never given: these items are left out of the score and each is named in
  a logged warning. (Hammer's copy keeps the 8 level-1 items, which every model then fails.)
"""
from __future__ import annotations

import ast
import json
import logging
import re
from pathlib import Path
from typing import Any

from toolace_r.calls import parse_calls
from toolace_r.data.formats import _Ctx, _load_records, _relax_required, checked_reader, normalize_tool, \
    read_records, read_samples_file
from toolace_r.data.schema import Sample
from toolace_r.errors import CallParseError, DataError

log = logging.getLogger(__name__)

RAW_KEYS = frozenset({"file", "id", "instruction", "input", "expected_output"})
GROUP_NAMES = {"level-1-api": "apibank_l1", "level-2-api": "apibank_l2"}
_REQUEST = re.compile(r"^\s*API-Request:\s*(\[.*\])\s*$", re.DOTALL)
_HISTORY_CALL = re.compile(r"^API-Request:\s*(\[.*?\])->(.*)$", re.DOTALL)
_SPEAKER = re.compile(r"^(User|AI|API-Request|Generate API Request):\s?(.*)$", re.DOTALL)
_YEAR = re.compile(r"The current year is \d{4}\.")


class Unanswerable(Exception):
    """The gold call names an API, or passes a parameter, that the item never describes (module docstring)."""


def load_apibank(target_text: str, limit: int = 0, on_error: str = "raise") -> dict[str, list[Sample]]:
    """`apibank:FILE_OR_DIR` → {group: samples}, each file in the published or in Hammer's structure."""
    target = Path(target_text)
    if not target.exists():
        raise DataError(f"API-Bank path {target} does not exist (spec 'apibank:{target_text}')")
    files = sorted(target.glob("*.json")) if target.is_dir() else [target]
    out: dict[str, list[Sample]] = {}
    for f in files:
        if f.name.endswith("-response.json"):
            log.warning("apibank: %s skipped: a reply-generation file (scored by ROUGE upstream), not a call test", f)
            continue
        records = _load_records(f)
        first = next((r for r in records if isinstance(r, dict)), {})
        if RAW_KEYS <= set(first):
            key, samples = GROUP_NAMES.get(f.stem, f.stem), read_raw_file(f, records, on_error, limit)
        else:
            key, samples = f.stem, read_samples_file(f, "apibank", on_error, limit=limit).samples
        if key in out:
            raise DataError(f"apibank: two files make group {key!r} in {target}; give one of them")
        out[key] = samples
    if not out:
        raise DataError(f"no API-Bank call-test JSON files in {target} (spec 'apibank:{target_text}')")
    return out


def read_raw_file(path: Path, records: list, on_error: str = "raise", limit: int = 0) -> list[Sample]:
    """A published level-N-api.json (its records already loaded) → samples; see the module docstring."""
    records = records[:limit] if limit else records
    ctx = _Ctx(path=str(path), stem=path.stem)
    undescribed: list[str] = []

    def read(record: dict, ctx: _Ctx) -> list[Sample]:
        try:
            return [read_raw_record(record, ctx)]
        except Unanswerable as why:  # left out of the score, named in one warning below
            undescribed.append(str(why))
            return []

    result = read_records(records, ctx, checked_reader(read), on_error)
    for error in result.errors:
        log.warning("%s", error)
    samples, skipped = result.samples, result.skipped
    log.info("%s: %d records (API-Bank as published) -> %d samples%s", path, len(records), len(samples),
             f", {skipped} skipped" if skipped else "")
    if undescribed:
        log.warning("%s: %d of %d items left out of the score: the gold call uses an API or a parameter the item "
                    "never describes (upstream data defect): %s", path, len(undescribed), len(records),
                    "; ".join(undescribed))
    return samples


def read_raw_record(record: dict, ctx: _Ctx) -> Sample:
    for key in ("instruction", "input", "expected_output", "file"):
        if not isinstance(record.get(key), str):
            raise ctx.error(f"missing or not a string ({type(record.get(key)).__name__})", key)
    rid = record.get("id")
    if not isinstance(rid, int) and not (isinstance(rid, str) and rid):
        raise ctx.error("missing or not an int / string", "id")
    sample_id = f"{re.sub(r'[.]jsonl?$', '', record['file'])}#{rid}"
    tools = _instruction_tools(record["instruction"], ctx)
    messages, found = _dialogue(record["input"], ctx)
    for tool in found:  # APIs ToolSearcher described earlier in the dialogue, after the instruction's own
        if tool["name"] not in {t["name"] for t in tools}:
            tools.append(tool)
    year = _YEAR.search(record["instruction"])
    if year:  # the dates in the gold calls need it
        messages.insert(0, {"role": "system", "content": year.group(0)})
    m = _REQUEST.match(record["expected_output"])
    if not m:
        raise ctx.error("expected 'API-Request: [Name(key=value, ...)]'", "expected_output")
    calls = parse_request(m.group(1), "expected_output", ctx)
    by_name = {t["name"]: t for t in tools}
    for call in calls:
        if call["name"] not in by_name:
            raise Unanswerable(f"{sample_id} calls {call['name']}")
        unknown = [k for k in call["arguments"] if k not in by_name[call["name"]]["parameters"]["properties"]]
        if unknown:
            raise Unanswerable(f"{sample_id} passes {', '.join(unknown)} to {call['name']}")
    _fix_list_values(calls, tools)
    _relax_required(tools, calls)
    truth = [{c["name"]: {k: [_acceptable(v)] for k, v in c["arguments"].items()}} for c in calls]
    return Sample(id=sample_id, tools=tools, messages=messages, truth=truth, source=ctx.stem)


def _acceptable(value: Any) -> Any:
    """BFCL's truth form: a dict value holds a list of acceptable values per key; everything else is kept as is
    (a list of dicts too: their parameters' schemas give no item type, so the checker compares them whole)."""
    return {k: [v] for k, v in value.items()} if isinstance(value, dict) else value


def _instruction_tools(text: str, ctx: _Ctx) -> list[dict[str, Any]]:
    head, sep, body = text.partition("API descriptions:")
    if not sep:
        raise ctx.error("no 'API descriptions:' section", "instruction")
    tools = []
    for j, line in enumerate(x for x in body.split("\n") if x.strip()):
        try:
            desc = json.loads(line)
        except json.JSONDecodeError as err:
            raise ctx.error(f"API description {j} is not valid JSON: {err}", "instruction") from None
        tools.append(_tool(desc, f"instruction.apis[{j}]", ctx))
    if not tools:
        raise ctx.error("no API descriptions after 'API descriptions:'", "instruction")
    return tools


def _tool(desc: Any, where: str, ctx: _Ctx) -> dict[str, Any]:
    if not isinstance(desc, dict) or not isinstance(desc.get("name"), str):
        raise ctx.error("an API description needs a string 'name'", where)
    params = desc.get("input_parameters", {})
    if not isinstance(params, dict):
        raise ctx.error("input_parameters must be an object", where + ".input_parameters")
    return normalize_tool({"name": desc["name"], "description": desc.get("description", ""), "parameters": params},
                          where, ctx)


def _dialogue(text: str, ctx: _Ctx) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """`input` → (messages, tools described by ToolSearcher results). A line without a speaker continues the turn
    before it; "Generate API Request:" ends the dialogue."""
    messages: list[dict[str, Any]] = []
    found: list[dict[str, Any]] = []
    for lineno, line in enumerate(text.split("\n")):
        where = f"input.line[{lineno}]"
        m = _SPEAKER.match(line)
        if m is None:
            if line.strip() and messages and messages[-1]["role"] in ("user", "assistant", "tool") \
                    and not messages[-1].get("tool_calls"):
                messages[-1]["content"] += "\n" + line
            elif line.strip():
                raise ctx.error(f"line without a speaker (User:/AI:/API-Request:): {line[:60]!r}", where)
            continue
        speaker, body = m.group(1), m.group(2)
        if speaker == "Generate API Request":
            break
        if speaker in ("User", "AI"):
            messages.append({"role": "user" if speaker == "User" else "assistant", "content": body})
            continue
        call = _HISTORY_CALL.match(line)
        if call is None:
            raise ctx.error("expected 'API-Request: [Name(...)]->result'", where)
        calls = parse_request(call.group(1), where, ctx)
        result = call.group(2).strip()
        messages.append({"role": "assistant", "content": "", "tool_calls": calls})
        messages.append({"role": "tool", "content": result})
        if any(c["name"] == "ToolSearcher" for c in calls):
            found += _searched_tools(result, where, ctx)
    if not any(m["role"] == "user" for m in messages):
        raise ctx.error("no 'User:' turn in the dialogue", "input")
    return messages, found


def _searched_tools(result: str, where: str, ctx: _Ctx) -> list[dict[str, Any]]:
    """API descriptions in a ToolSearcher result (a Python literal: one dict or a list of dicts)."""
    try:
        value = ast.literal_eval(result)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return []  # a result that is not a description (an error text): nothing learned
    items = value if isinstance(value, list) else [value]
    return [_tool(d, f"{where}.result", ctx) for d in items
            if isinstance(d, dict) and isinstance(d.get("name"), str) and "input_parameters" in d]


def parse_request(text: str, where: str, ctx: _Ctx) -> list[dict[str, Any]]:
    """`[Name(key='value', ...)]` → calls: Python call syntax read with ast (toolace_r.calls.parse_calls); where the
    published text is not Python (a list written inside quotes), split at `, key=` instead."""
    try:
        calls = parse_calls(text)
    except CallParseError as err:
        calls = _split_call(text)
        if calls is None:
            raise ctx.error(f"API request cannot be read: {err}", where) from None
    if not calls:
        raise ctx.error("no API request found", where)
    return calls


_CALL_TEXT = re.compile(r"^\[\s*(\w+)\((.*)\)\s*\]$", re.DOTALL)
_KEY = re.compile(r"(?:^|,)\s*(\w+)\s*=\s*")


def _split_call(text: str) -> list[dict[str, Any]] | None:
    m = _CALL_TEXT.match(text.strip())
    if m is None:
        return None
    name, body = m.group(1), m.group(2)
    keys = list(_KEY.finditer(body))
    if not keys or keys[0].start() != 0:
        return None
    args: dict[str, Any] = {}
    for i, k in enumerate(keys):
        raw = body[k.end(): keys[i + 1].start() if i + 1 < len(keys) else len(body)].strip()
        if len(raw) >= 2 and raw[0] == raw[-1] and raw[0] in "'\"":
            args[k.group(1)] = raw[1:-1]
        else:
            try:
                args[k.group(1)] = ast.literal_eval(raw)
            except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
                return None
    return [{"name": name, "arguments": args}]


def _fix_list_values(calls: list[dict[str, Any]], tools: list[dict[str, Any]]) -> None:
    """A string value holding a list/dict literal for a parameter whose schema is an array / dict → that literal."""
    by_name = {t["name"]: t for t in tools}
    for call in calls:
        props = by_name[call["name"]]["parameters"]["properties"]
        for key, value in call["arguments"].items():
            kind = (props.get(key) or {}).get("type")
            if kind in ("array", "dict") and isinstance(value, str) and value.strip()[:1] in ("[", "{"):
                try:
                    literal = ast.literal_eval(value.strip())
                except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
                    continue
                if isinstance(literal, list if kind == "array" else dict):
                    call["arguments"][key] = literal
