"""Agreement cases from the BFCL files: model-like outputs with the verdict BFCL's published rules give them.

`python -m toolace_r.calls.cases --bfcl ../shared/data/bfcl_v3 --out cases.jsonl` writes one line per case in
`toolace-r check`'s input format plus the reference `"valid"` and the `"rule"` it illustrates; then
`toolace-r check --input cases.jsonl --decoder bfcl` prints the agreement. Each label comes from a rule in
design/BFCL_RULES.md (decoding quirks, type rules, string normalisation, omission rules, category rules), not from
this project's checker, so the agreement measures the checker against the rules.
"""
from __future__ import annotations

import argparse
import json
import random
from pathlib import Path
from typing import Any, Iterator

from toolace_r.calls.checker import gold_calls
from toolace_r.calls.syntax import py_value, render_python

CATEGORIES = ("simple", "multiple", "parallel", "parallel_multiple", "irrelevance")
NO_CALL = "None of the given functions can be used for this request."
# Records whose own truth the official checker rejects (see tests/calls/test_bfcl_data.py): no case is built on them.
SKIP_IDS = {"simple_363"}


def load_bfcl(bfcl_dir: str | Path, category: str) -> list[tuple[dict, list]]:
    base = Path(bfcl_dir)
    questions = [json.loads(line) for line in (base / f"BFCL_v3_{category}.json").open(encoding="utf-8")]
    answer_file = base / "possible_answer" / f"BFCL_v3_{category}.json"
    answers = {}
    if answer_file.exists():
        answers = {r["id"]: r["ground_truth"] for r in map(json.loads, answer_file.open(encoding="utf-8"))}
    return [(q, answers.get(q["id"], [])) for q in questions if q["id"] not in SKIP_IDS]


def _render(calls: list[dict], sep: str = ", ", quote: str = '"') -> str:
    def value(v: Any) -> str:
        if quote == "'" and isinstance(v, str):
            return "'" + v + "'"
        if quote == "'" and isinstance(v, list):
            return "[" + ", ".join(value(x) for x in v) + "]"
        return py_value(v)

    return "[" + sep.join(
        f"{c['name']}(" + ", ".join(f"{k}={value(v)}" for k, v in c["arguments"].items()) + ")" for c in calls
    ) + "]"


def _with(calls: list[dict], i: int, param: str, value: Any = None, drop: bool = False) -> list[dict]:
    out = [dict(c, arguments=dict(c["arguments"])) for c in calls]
    if drop:
        out[i]["arguments"].pop(param, None)
    else:
        out[i]["arguments"][param] = value
    return out


_SENTINEL = "__raw_value_sentinel__"


def _raw(calls: list[dict], i: int, param: str, source: str) -> str:
    """The python rendering of `calls` with call i's `param` written as the raw source text given."""
    return render_python(_with(calls, i, param, _SENTINEL)).replace(f'"{_SENTINEL}"', source, 1)


def _schema(functions: list[dict], name: str) -> dict:
    return next((f for f in functions if f["name"] == name), {"parameters": {"properties": {}, "required": []}})


def _ascii_plain(s: str) -> bool:
    return s.isascii() and not any(c in s for c in "'\"\\\n")


def cases_for_record(question: dict, truth: list, category: str, rng: random.Random) -> Iterator[tuple[str, str, bool]]:
    """(rule, output text, valid by BFCL's rules) for one record."""
    functions = question["function"]
    if category == "irrelevance":
        fn = functions[0]
        call = [{"name": fn["name"], "arguments": {p: "x" for p in fn["parameters"].get("required", [])}}]
        yield "irrelevance: no-call sentence", NO_CALL, True
        yield "irrelevance: empty list (decode fails = no call)", "[]", True
        yield "irrelevance: a call", render_python(call), False
        yield "irrelevance: a call without brackets", render_python(call)[1:-1], False
        yield "irrelevance: a call in a ```python fence (decode fails)", "```python\n" + render_python(call) + "\n```", True
        yield "irrelevance: prose then a call (decode fails)", "Let me call it: " + render_python(call), True
        return

    gold = gold_calls(truth, functions)
    text = render_python(gold)
    yield "gold answer", text, True
    yield "no outer brackets", text[1:-1], True
    yield "plain ``` fence", "```\n" + text + "\n```", True
    yield "```python fence", "```python\n" + text + "\n```", False
    yield "extra leading [", "[" + text, True
    yield "missing final ]", text[:-1], True
    yield "whole list in quotes", "['" + text[1:-1] + "']", True
    yield "indented after [", "[\n    " + text[1:-1] + "\n]", False
    yield "empty list", "[]", False
    yield "no spaces", _render(gold, sep=","), True
    strings = [v for c in gold for v in c["arguments"].values() if isinstance(v, str)]
    if all(_ascii_plain(s) for s in strings):
        yield "single-quoted strings", _render(gold, quote="'"), True
    if len(gold) >= 2:
        yield "newline between calls", _render(gold, sep=",\n"), False
        if "parallel" in category:
            # BFCL matches greedily in truth order: with overlapping acceptable values a reordering can fail
            yield "calls in reverse order", render_python(gold[::-1]), _greedy_matches(gold[::-1], truth)
    if "parallel" not in category:
        yield "call repeated", render_python(gold + gold[:1]), False
    name = gold[0]["name"]
    if "." in name:
        yield "dots in the name as underscores", render_python([dict(gold[0], name=name.replace(".", "_"))] + gold[1:]), False
    yield "name in upper case", render_python([dict(gold[0], name=name.upper())] + gold[1:]), name == name.upper()

    for i, call in enumerate(gold):
        entry = next(iter(truth[i].values()))
        schema = _schema(functions, call["name"])
        props = schema["parameters"].get("properties", {})
        required = schema["parameters"].get("required", [])
        for p, acceptable in entry.items():
            t = props.get(p, {}).get("type")
            allowed = [a for a in acceptable if a != ""]
            v = call["arguments"].get(p)
            if p in call["arguments"]:
                if p not in required:
                    yield f"optional {t} left out", render_python(_with(gold, i, p, drop=True)), "" in acceptable
                else:
                    yield "required left out", render_python(_with(gold, i, p, drop=True)), False
                    rest = ", ".join(f"{k}={py_value(x)}" for k, x in call["arguments"].items() if k != p)
                    positional = f"{call['name']}({py_value(v)}{', ' + rest if rest else ''})"
                    others = [render_python([c])[1:-1] for j, c in enumerate(gold) if j != i]
                    yield "required given positionally", "[" + ", ".join([positional] + others) + "]", False
            if not allowed or p not in call["arguments"]:
                continue
            if t == "string" and all(isinstance(a, str) for a in allowed) and isinstance(v, str) and _ascii_plain(v):
                yield "string upper-cased", render_python(_with(gold, i, p, v.upper())), True
                spaced = " - ".join(v.split(" ")) + "_"
                yield "string with spaces/dashes/underscores", render_python(_with(gold, i, p, spaced)), True
                yield "string with extra word", render_python(_with(gold, i, p, v + " extra")), False
                yield "string with ! appended", render_python(_with(gold, i, p, v + "!")), False
                yield "int for string", render_python(_with(gold, i, p, 12345)), False
            elif t == "integer" and all(type(a) is int for a in allowed) and type(v) is int:
                yield "float for integer", render_python(_with(gold, i, p, float(v))), False
                yield "string for integer", render_python(_with(gold, i, p, str(v))), False
                yield "integer off by one", render_python(_with(gold, i, p, v + 1)), (v + 1) in allowed
                if v > 0:
                    yield "unary plus (BFCL negates it)", _raw(gold, i, p, f"+{v}"), -v in allowed
                if v not in (0, 1):
                    yield "bool for integer", render_python(_with(gold, i, p, True)), False
                yield "integer as arithmetic", _raw(gold, i, p, f"{v - 1} + 1"), True
            elif t == "float" and all(type(a) in (int, float) for a in allowed) and type(v) in (int, float):
                if float(v).is_integer() and abs(v) < 1e15:
                    yield "int for float", render_python(_with(gold, i, p, int(v))), True
                yield "string for float", render_python(_with(gold, i, p, str(float(v)))), False
                yield "float changed", render_python(_with(gold, i, p, float(v) + 0.37)), (float(v) + 0.37) in allowed
            elif t == "boolean" and all(type(a) is bool for a in allowed) and type(v) is bool:
                yield "int for bool", render_python(_with(gold, i, p, int(v))), False
                yield "bool flipped", render_python(_with(gold, i, p, not v)), (not v) in allowed
                yield "string for bool", render_python(_with(gold, i, p, str(v).lower())), False
            elif t in ("array", "tuple") and isinstance(v, list) and v:
                item_type = props.get(p, {}).get("items", {}).get("type")
                yield "list reversed", render_python(_with(gold, i, p, v[::-1])), any(
                    isinstance(a, list) and _list_eq(v[::-1], a) for a in allowed)
                # an empty list equals "" for BFCL's list comparison (it walks "" as a sequence of no characters)
                yield "list item dropped", render_python(_with(gold, i, p, v[:-1])), any(
                    isinstance(a, list) and _list_eq(v[:-1], a) for a in allowed) or (len(v) == 1 and "" in acceptable)
                if item_type == "float" and all(isinstance(x, float) and x.is_integer() for x in v):
                    ints = [int(x) for x in v]
                    yield "ints in a float list", render_python(_with(gold, i, p, ints)), "" in acceptable
                if t == "array":
                    items = ", ".join(py_value(x) for x in v)
                    yield "tuple for array", _raw(gold, i, p, f"({items},)"), False
        for p, spec in props.items():
            if p not in entry:
                value = spec.get("default", "x") if not isinstance(spec.get("default"), (dict, list)) else "x"
                yield "schema param not in the answer", render_python(_with(gold, i, p, value)), False
                break
        yield "unknown param", render_python(_with(gold, i, "zz_unknown", 1)), False
    if len(gold) >= 2:
        yield "one call missing", render_python(gold[1:]), False


def _greedy_matches(calls: list[dict], truth: list[dict]) -> bool:
    """BFCL's parallel rule for gold-derived calls: each truth entry, in order, takes the first unused call whose
    name and values it accepts."""
    used: set[int] = set()
    for entry in truth:
        (name, acceptable), = entry.items()
        for j, call in enumerate(calls):
            if j not in used and call["name"] == name and _accepts(acceptable, call["arguments"]):
                used.add(j)
                break
        else:
            return False
    return True


def _accepts(acceptable: dict, args: dict) -> bool:
    from toolace_r.calls.checker import standardize_string as std

    def norm(x: Any) -> Any:
        return std(x) if isinstance(x, str) else x

    if any(p not in acceptable for p in args):
        return False
    if any(p not in args and "" not in allowed for p, allowed in acceptable.items()):
        return False
    def ok(v: Any, allowed: list) -> bool:
        if isinstance(v, dict) or (isinstance(v, list) and any(isinstance(x, dict) for x in v)):
            return True  # gold-derived dicts are built from the acceptable values themselves
        if isinstance(v, list):
            return any(isinstance(a, list) and _list_eq(v, a) for a in allowed)
        return norm(v) in [norm(a) for a in allowed] or v in allowed

    return all(ok(v, acceptable[p]) for p, v in args.items())


def _list_eq(a: list, b: list) -> bool:
    from toolace_r.calls.checker import standardize_string as std

    if len(a) != len(b):
        return False
    return all((std(x) if isinstance(x, str) else x) == (std(y) if isinstance(y, str) else y) for x, y in zip(a, b))


def build_cases(bfcl_dir: str | Path, limit_per_record: int = 0, seed: int = 0) -> list[dict[str, Any]]:
    """All agreement cases for the BFCL v3 python categories (and irrelevance), in file order."""
    rng = random.Random(seed)
    cases = []
    for category in CATEGORIES:
        for question, truth in load_bfcl(bfcl_dir, category):
            produced = list(cases_for_record(question, truth, category, rng))
            if limit_per_record and len(produced) > limit_per_record:
                produced = rng.sample(produced, limit_per_record)
            for k, (rule, output, valid) in enumerate(produced):
                cases.append({
                    "id": f"{question['id']}#{k}", "category": category, "functions": question["function"],
                    "output": output, "ground_truth": truth, "valid": bool(valid), "rule": rule,
                })
    return cases


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bfcl", required=True, help="BFCL v3 data dir (BFCL_v3_*.json + possible_answer/)")
    parser.add_argument("--out", required=True)
    parser.add_argument("--limit-per-record", type=int, default=0, help="sample at most this many cases per record")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    cases = build_cases(args.bfcl, args.limit_per_record, args.seed)
    with open(args.out, "w", encoding="utf-8") as f:
        for case in cases:
            f.write(json.dumps(case, ensure_ascii=False) + "\n")
    n_valid = sum(c["valid"] for c in cases)
    print(f"wrote {len(cases)} cases ({n_valid} valid, {len(cases) - n_valid} invalid) to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
