"""ACEBench as published: `acebench:DIR` reads a `data_en` directory (ACEBench/ACEBench `data_all/data_en/`) and its
`possible_answer/`. How ACEBench itself summarises the scores, and its list of categories, are in
toolace_r.acebench_summary (beside bfcl_summary).

Files are JSON Lines despite the `.json` suffix: `data_<category>.json` with `{id, question, function, time |
profile}`, where `question` is one string of `user:` / `system:` lines and each function carries a JSON schema under
`parameters` (some distractors under `arguments`); `possible_answer/data_<category>.json` holds `{id,
ground_truth}`. The categories (ACEBench's category.py):

- normal: atom_{bool,enum,number,list,object_short,object_deep}, single_turn_{single,parallel}_function,
  multi_turn_user_{adjust,switch}, similar_api, preference — ground truth `{Name: {param: value}}` (or a list of
  such alternatives), judged by ACEBench's AST rules (toolace_r.calls.acebench);
- special: incomplete (`{Name: [missing params]}`), error_param (`{param: [wrong values]}`), irrelevant (a sentence)
  — judged on what the answer says, so each item is prompted as ACEBench prompts it: its system prompt for the
  special data tells the model the three reply formats, and the checker looks for their phrases;
- agent: multi_step / multi_turn run against ACEBench's stateful sandbox (a simulated phone, a travel system, a
  user model): not evaluated here. Asked for by name they are refused; found in the directory they are skipped
  with a logged note.

Prompting as ACEBench does (model_inference/common_inference.py): one system message with its instructions for the
item's kind (normal / preference, with the profile / special), and the time line where the record has one; the
dialogue as ONE user message "Conversation history 1..t:\\n<question>". The instructions here are ACEBench's,
condensed; the reply formats of the special prompt are verbatim, since the checker matches them. The tool list is
rendered by this project's system prompt (eval prompt style) in front of those instructions, not as ACEBench's
Python repr of the raw schemas.

Every sample carries its scoring rule (`Sample.scoring = {"kind": "acebench", "category", "answer", "functions",
"gold"}`): `Sample.verdict` judges by ACEBench's rules, and `gold` is an answer ACEBench's checker accepts (the
first alternative's calls for normal items; the reply format filled in with the answer's names and values for
special ones), which is what `--model oracle:gold` answers.
"""
from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

from toolace_r.acebench_summary import AGENT, CATEGORIES, NORMAL, SPECIAL
from toolace_r.calls.acebench import LIMITATION_PHRASE, MISSING_PHRASE, WRONG_VALUE_PHRASE
from toolace_r.calls.syntax import render_python
from toolace_r.data.formats import _BadRecord, _Ctx, answer_records, json_lines, normalize_tool, read_records
from toolace_r.data.schema import Sample, calls_to_truth
from toolace_r.errors import DataError

log = logging.getLogger(__name__)

# category.py's groups, accepted in `acebench:DIR:normal,special_incomplete`
GROUPS = {"normal": NORMAL, "special": SPECIAL, "agent": AGENT,
          "atom": tuple(c for c in NORMAL if "_atom_" in c),
          "multi_turn": ("normal_multi_turn_user_adjust", "normal_multi_turn_user_switch")}
AGENT_REFUSAL = ("ACEBench's agent categories (agent_multi_step, agent_multi_turn) are scored by running the "
                 "model against ACEBench's stateful sandbox (simulated phone and travel APIs, an LLM user); this "
                 "harness has no such sandbox and does not evaluate them")

_REPLY_FORMAT = ("Give the API requests as [ApiName(key1='value1', key2='value2', ...)], several separated by "
                 "commas: [ApiName(key1='value1', ...), ApiName(key1='value1', ...)]. The answer starts with \"[\" "
                 "and ends with \"]\", with no other text.")
NORMAL_PROMPT = (
    "You are the assistant. From the API specifications and the conversation history (steps 1..t), give the API "
    "requests the assistant should make at step t+1. " + _REPLY_FORMAT + "\n"
    "A parameter is optional unless its description says otherwise: include the parameters the user mentions, "
    "leave out the ones they do not. Where a description does not fix a value's format, use the user's own words. "
    "An API without parameters is called as [ApiName()]; never invent parameter names.")
PREFERENCE_PROMPT = (
    "You are the assistant. From the API specifications, the conversation history (steps 1..t) and the user's "
    "profile below, give the API requests the assistant should make at step t+1. " + _REPLY_FORMAT + "\n"
    "A parameter is optional unless its description says otherwise: include the parameters the user or the profile "
    "mentions, leave out the others. Where a description does not fix a value's format, take the value from the "
    "user's words or the profile. An API without parameters is called as [ApiName()]; never invent parameter names."
    "\n\nUser profile:\n{profile}")
SPECIAL_PROMPT = (
    "You are the assistant. From the API specifications and the conversation history (steps 1..t), decide what the "
    "assistant does at step t+1.\n"
    "1. When the user's request is clear and the functions can solve it, output the API requests only: "
    "[ApiName(key1='value1', key2='value2', ...), ...] (values in the user's words unless a format is given; every "
    "request that is needed).\n"
    "2. When the request is unclear, incomplete or wrong, or beyond the functions, say so in exactly one of these "
    "forms, checked in this order:\n"
    "   (1) a value does not match the type or form the API defines: "
    "[\"There is incorrect value (value) for the parameters (key) in the conversation history.\"]\n"
    "   (2) details the API requires are missing: "
    "[\"Missing necessary parameters (key1, key2, ...) for the api (ApiName)\"], with the missing parameters' names "
    "and the API's name\n"
    "   (3) no function can do what is asked: "
    "[\"Due to the limitations of the function, I cannot solve this problem.\"]")
USER_PREFIX = "Conversation history 1..t:\n"


def load_acebench(spec_rest: str, limit: int = 0, on_error: str = "raise") -> dict[str, list[Sample]]:
    """`acebench:DIR[:names]` → {category: samples}; DIR is a data_en directory (or one holding data_en/); names are
    categories (`normal_atom_bool` or `atom_bool`) or category.py's groups (normal, special, atom, multi_turn)."""
    root_text, _, names = spec_rest.partition(":")
    if names and not re.fullmatch(r"[\w,]+", names):
        root_text, names = spec_rest, ""
    root = Path(root_text)
    if root.is_dir() and not list(root.glob("data_*.json")) and (root / "data_en").is_dir():
        root = root / "data_en"
    if not root.is_dir():
        raise DataError(f"ACEBench data directory {root_text} does not exist (spec 'acebench:{spec_rest}')")
    present = sorted(m.group(1) for f in root.glob("data_*.json") if (m := re.fullmatch(r"data_(\w+)\.json", f.name)))
    if names:
        wanted = _expand(names.split(","))
    else:
        wanted = [c for c in CATEGORIES if c in present]
        skipped = [c for c in present if c not in CATEGORIES]
        if skipped:
            log.warning("acebench: %s not evaluated (%s)", ", ".join(skipped),
                        "agent categories need ACEBench's sandbox" if all(c in AGENT for c in skipped)
                        else "not an ACEBench normal/special category")
    if not wanted:
        raise DataError(f"no ACEBench normal/special question files (data_<category>.json) in {root}")
    out = {}
    for cat in wanted:
        path = root / f"data_{cat}.json"
        if not path.is_file():
            raise DataError(f"no ACEBench question file for category {cat!r} in {root}")
        out[cat] = read_category(path, cat, on_error=on_error, limit=limit)
    return out


def _expand(names: list[str]) -> list[str]:
    out: list[str] = []
    for raw in (n.strip() for n in names if n.strip()):
        found = GROUPS.get(raw) or ((raw,) if raw in CATEGORIES + AGENT else None) \
            or next(((c,) for c in CATEGORIES + AGENT if c in (f"normal_{raw}", f"special_{raw}")), None)
        if found is None:
            raise DataError(f"unknown ACEBench category {raw!r}; expected one of {', '.join(CATEGORIES)} or "
                            f"{', '.join(GROUPS)}")
        if any(c in AGENT for c in found):
            raise DataError(f"acebench: {raw!r} refused: {AGENT_REFUSAL}")
        out += [c for c in found if c not in out]
    return out


def read_category(path: Path, category: str, on_error: str = "raise", limit: int = 0) -> list[Sample]:
    """One data_<category>.json with its possible answers → samples (bad records raise DataError naming the file,
    the record and the field, or are skipped and logged under on_error="skip")."""
    answers = _answers(path.parent / "possible_answer" / path.name)
    records = _jsonl(path)
    records = records[:limit] if limit else records
    ctx = _Ctx(path=str(path), stem=path.stem, category=category)
    result = read_records(records, ctx, lambda record, ctx: [read_record(record, answers, category, ctx)], on_error)
    for error in result.errors:
        log.warning("%s", error)
    log.info("%s: %d records -> %d samples%s", path, len(records), len(result.samples),
             f", {result.skipped} skipped" if result.skipped else "")
    return result.samples


def _answers(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise DataError(f"ACEBench answer file {path} not found (every normal/special category has one)")
    return {str(rec["id"]): rec["ground_truth"] for rec in answer_records(_jsonl(path), path)}


def _jsonl(path: Path) -> list[dict | _BadRecord]:
    """ACEBench's files are JSON Lines whatever their size (a one-line file is not "one JSON document")."""
    out: list[dict | _BadRecord] = []
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise DataError(f"not UTF-8 text ({err.reason} at byte {err.start})", path=str(path)) from None
    for lineno, value, error in json_lines(text):
        if error is not None:
            out.append(_BadRecord(f"line {lineno} is not valid JSON: {error}"))
        else:
            out.append(value if isinstance(value, dict) else _BadRecord(f"line {lineno} is a {type(value).__name__}"))
    return out


def read_record(record: dict, answers: dict[str, Any], category: str, ctx: _Ctx) -> Sample:
    rid = record.get("id")
    if not isinstance(rid, str) or not rid:
        raise ctx.error("missing or not a string", "id")
    question = record.get("question")
    if not isinstance(question, str):
        raise ctx.error(f"expected str, got {type(question).__name__}", "question")
    functions = record.get("function")
    if not isinstance(functions, list) or not all(isinstance(f, dict) for f in functions):
        raise ctx.error("expected a list of function objects", "function")
    if rid not in answers:
        raise ctx.error(f"no possible answer for id {rid!r}", "id")
    answer = answers[rid]
    tools = []
    for i, fn in enumerate(functions):
        schema = fn.get("parameters", fn.get("arguments", {}))  # distractors write their schema under "arguments"
        tools.append(normalize_tool({"name": fn.get("name"), "description": fn.get("description", ""),
                                     "parameters": schema}, f"function[{i}]", ctx))
    if category.startswith("special"):
        gold, truth = special_gold(answer, category, ctx), []
    else:
        calls = normal_gold(answer, ctx)
        gold, truth = render_python(calls), calls_to_truth(calls)
    messages = [{"role": "system", "content": system_instructions(record, category, ctx)},
                {"role": "user", "content": USER_PREFIX + question}]
    return Sample(id=rid, tools=tools, messages=messages, truth=truth, category=category,
                  source=f"acebench/{category}",
                  scoring={"kind": "acebench", "category": category, "answer": answer, "functions": functions,
                           "gold": gold})


def system_instructions(record: dict, category: str, ctx: _Ctx) -> str:
    if "preference" in category:
        profile = record.get("profile")
        if not isinstance(profile, (str, dict)):
            raise ctx.error("preference items need a profile (str or object)", "profile")
        return PREFERENCE_PROMPT.replace("{profile}", profile if isinstance(profile, str) else json.dumps(profile))
    time = record.get("time") or ""
    if not isinstance(time, str):
        raise ctx.error(f"expected str, got {type(time).__name__}", "time")
    body = SPECIAL_PROMPT if category.startswith("special") else NORMAL_PROMPT
    return body + ("\n\n" + time if time.strip() else "")


def normal_gold(answer: Any, ctx: _Ctx) -> list[dict[str, Any]]:
    """The first alternative of a normal answer as calls; `f_1`, `f_2` keys are two calls of `f` (ACEBench strips
    a `_<digits>` suffix from answer keys)."""
    first = answer[0] if isinstance(answer, list) and answer else answer
    if not isinstance(first, dict) or not first or not all(isinstance(v, dict) for v in first.values()):
        raise ctx.error("normal ground_truth must be {Name: {param: value}} or a list of those", "ground_truth")
    return [{"name": re.sub(r"_\d+$", "", str(name)), "arguments": dict(args)} for name, args in first.items()]


def special_gold(answer: Any, category: str, ctx: _Ctx) -> str:
    """The reply ACEBench's special prompt asks for, filled in from the answer: what its checker accepts."""
    if "irrelevant" in category:
        text = answer if isinstance(answer, str) and LIMITATION_PHRASE in answer else \
            "Due to the limitations of the function, I cannot solve this problem."
        return json.dumps([text], ensure_ascii=False)
    if not isinstance(answer, dict) or not answer or not all(isinstance(v, list) for v in answer.values()):
        raise ctx.error("special ground_truth must be {name: [values]}", "ground_truth")
    if "incomplete" in category:
        text = "; ".join(f"{MISSING_PHRASE} ({', '.join(map(str, values))}) for the api ({name})"
                         for name, values in answer.items())
    elif "error" in category:
        values = [str(v) for vs in answer.values() for v in vs]
        text = f"{WRONG_VALUE_PHRASE} ({', '.join(values)}) for the parameters ({', '.join(answer)}) in the " \
               f"conversation history."
    else:
        raise ctx.error(f"unknown special category {category!r}", "id")
    return json.dumps([text], ensure_ascii=False)
