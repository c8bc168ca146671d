"""Leak check: how many test items also occur in the training pool, per test set.

Real pools overlap public benchmarks (ToolACE and xLAM derive part of their data from the same API collections and
request templates as BFCL, API-Bank and ACEBench), and a test figure on items the model trained on measures recall,
not tool calling. So before a run trusts a test set, this counts, per test set (eval spec) and per category:

- `same_request`: test items whose **request** also occurs in the pool. The request is the text of the dialogue's
  user turns, in order; ACEBench writes its whole dialogue into one message (the reader's "Conversation history
  1..t:" header, then `user:` / `system:` lines), of which the `user:` lines are the user turns, so an ACEBench item
  meets a pool item whose user turns say the same. Texts are compared after `normalize`: Unicode NFKC, lower-cased, every
  punctuation character (Unicode category P*) replaced by a space, whitespace runs collapsed to one space, trimmed.
- `same_request_and_calls`: of those, the items where some pool item with the same request has gold calls that the
  test item's own judge accepts: the pool item's gold calls (`Sample.gold_calls`) judged as structured calls by the
  AST checker against the test item's truth and tools (`Sample.verdict`, `eval.decoder`) — so calls are compared the
  way the checker compares them: name, BFCL types, string normalisation, any of the acceptable values, parallel
  calls in any order; no call on both sides counts as the same. An ACEBench item is judged by ACEBench's rule on
  the pool calls rendered as its python-syntax answer.

The first few leaked ids of each test set are kept as examples (test id → pool id), so a reader can look.
Only the standard library plus the project's checker: it runs in `toolace-r eval --pool` and in the driver's
`leaks` stage (after the loop, before any test set is evaluated).
"""
from __future__ import annotations

import re
import unicodedata
from collections import defaultdict
from pathlib import Path
from typing import Any, Iterable, Mapping

from toolace_r.data.schema import Sample

EXAMPLES = 5  # leaked (test id, pool id) pairs kept per test set
NORMALIZATION = ("NFKC, lower-cased, punctuation (Unicode P*) replaced by spaces, whitespace collapsed; request = "
                 "the user turns (of ACEBench's one-message dialogue, its user: lines)")

_SPACE = re.compile(r"\s+")
_ACE_HEADER = re.compile(r"^\s*conversation history 1\.\.t:\s*", re.IGNORECASE)
_SPEAKER = re.compile(r"^\s*(user|system|assistant)\s*:\s*", re.IGNORECASE | re.MULTILINE)


def normalize(text: str) -> str:
    """NFKC, lower-case, punctuation → space, whitespace collapsed: `What's the weather, Paris?` → `what s the
    weather paris`."""
    text = unicodedata.normalize("NFKC", text).lower()
    text = "".join(" " if unicodedata.category(ch).startswith("P") else ch for ch in text)
    return _SPACE.sub(" ", text).strip()


def request_text(sample: Sample) -> str:
    """The normalised request of a sample: its user turns in order (ACEBench's wrapper removed)."""
    turns = []
    for msg in sample.messages:
        if msg.get("role") != "user":
            continue
        content = msg.get("content") or ""
        if not isinstance(content, str):  # OpenAI content parts
            content = " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
        if sample.scoring.get("kind") == "acebench":
            content = _acebench_user_lines(content)
        turns.append(content)
    return normalize("\n".join(turns))


def _acebench_user_lines(content: str) -> str:
    """ACEBench's one user message (header, then `user:` / `system:` lines) → the user's lines only, labels removed
    (a line without a label continues the speaker before it)."""
    keep, out = True, []
    for line in _ACE_HEADER.sub("", content).split("\n"):
        m = _SPEAKER.match(line)
        if m:
            keep = m.group(1).lower() == "user"
            line = line[m.end():]
        if keep:
            out.append(line)
    return "\n".join(out)


def _same_calls(test: Sample, pool_item: Sample, decoder: str) -> bool:
    """Does the test item's own judge accept the pool item's gold calls?"""
    calls = pool_item.gold_calls()
    if test.scoring:  # a benchmark rule that reads answer text (ACEBench)
        from toolace_r.data.prompts import render_answer

        return bool(test.verdict(render_answer(calls), decoder).valid)
    return bool(test.verdict(calls, decoder).valid)


def check_leaks(tests: Mapping[str, Mapping[str, list[Sample]]], pool: Iterable[Sample],
                decoder: str = "lenient") -> dict[str, Any]:
    """`tests` = {test set label: {category: samples}} (evaluate.load_groups per spec) against the pool →
    {"pool_size", "normalization", "sets": {label: {"n", "same_request", "same_request_and_calls", "categories":
    {category: {"n", "same_request", "same_request_and_calls"}}, "examples": [{"test", "pool", "same_calls"}]}}}."""
    by_request: dict[str, list[Sample]] = defaultdict(list)
    size = 0
    for item in pool:
        size += 1
        text = request_text(item)
        if text:
            by_request[text].append(item)
    sets: dict[str, Any] = {}
    for label, groups in tests.items():
        entry: dict[str, Any] = {"n": 0, "same_request": 0, "same_request_and_calls": 0, "categories": {},
                                 "examples": []}
        for category, samples in groups.items():
            cat = {"n": len(samples), "same_request": 0, "same_request_and_calls": 0}
            for sample in samples:
                matches = by_request.get(request_text(sample)) or []
                if not matches:
                    continue
                cat["same_request"] += 1
                exact = next((m for m in matches if _same_calls(sample, m, decoder)), None)
                cat["same_request_and_calls"] += exact is not None
                if len(entry["examples"]) < EXAMPLES:
                    entry["examples"].append({"test": sample.id, "category": category,
                                              "pool": (exact or matches[0]).id, "same_calls": exact is not None})
            entry["categories"][category] = cat
            for key in ("n", "same_request", "same_request_and_calls"):
                entry[key] += cat[key]
        sets[label] = entry
    return {"pool_size": size, "normalization": NORMALIZATION, "sets": sets}


def format_leaks(report: Mapping[str, Any] | None) -> str:
    """The lines printed before (eval) or beside (run report) the test figures."""
    if not report:
        return ""
    lines = [f"Leak check against the training pool ({report['pool_size']} samples; {report['normalization']}):",
             f"  {'test set':<28} {'n':>6} {'same request':>14} {'+ same calls':>14}"]
    for label, s in report["sets"].items():
        lines.append(f"  {label:<28} {s['n']:>6} {_share(s['same_request'], s['n']):>14} "
                     f"{_share(s['same_request_and_calls'], s['n']):>14}")
        for cat, c in s["categories"].items() if len(s["categories"]) > 1 else ():
            if c["same_request"]:
                lines.append(f"    {cat:<26} {c['n']:>6} {_share(c['same_request'], c['n']):>14} "
                             f"{_share(c['same_request_and_calls'], c['n']):>14}")
        if s["examples"]:
            lines.append("    e.g. " + ", ".join(f"{e['test']} = pool {e['pool']}" for e in s["examples"][:3]))
    leaked = sum(s["same_request"] for s in report["sets"].values())
    lines.append("  no test item occurs in the pool" if not leaked else
                 "  WARNING: test items above also occur in the training pool; their figures measure recall")
    return "\n".join(lines)


def _share(k: int, n: int) -> str:
    return f"{k} ({k / n:.1%})" if n else "0"


def leak_groups(cfg: Any, specs: list[str]) -> dict[str, dict[str, list[Sample]]]:
    """The test sets as evaluate() reads them (eval.limit applied), keyed by spec label (`bfcl`, `apibank`, ...,
    or the file stem; the spec itself when two share a label) → {category: samples}."""
    from toolace_r.evaluate import load_groups

    out: dict[str, dict[str, list[Sample]]] = {}
    labels = [spec.split(":", 1)[0] if ":" in spec else Path(spec).stem for spec in specs]
    for spec, label in zip(specs, labels):
        out[spec if labels.count(label) > 1 else label] = load_groups(cfg, [spec])
    return out


def leak_stage(cfg: Any, pool: list[Sample]) -> dict[str, Any]:
    """The driver's `leaks` stage: the test sets (eval.data) against the pool the loop trained on (dev excluded),
    run after the loop has stopped and before any test set is evaluated; a leak is logged as a warning."""
    import logging

    report = check_leaks(leak_groups(cfg, list(cfg.eval.data)), pool, cfg.eval.decoder)
    report["pool"] = cfg.pool.path
    log = logging.getLogger(__name__)
    for label, s in report["sets"].items():
        level = logging.WARNING if s["same_request"] else logging.INFO
        log.log(level, "leak check: test set %s: %d of %d items have a request that occurs in the pool, %d with the "
                "same gold calls", label, s["same_request"], s["n"], s["same_request_and_calls"])
    return report
