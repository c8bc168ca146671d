"""One sample schema for every source format.

A `Sample` is one point where the assistant must act: the tools on offer, the dialogue up to that point, and the
truth in BFCL's possible-answer form (`[{func_name: {param: [acceptable values]}}]`, empty = the right answer is
no call). Every reader in `formats.py` produces these; everything downstream (probe, corpus, train, eval) consumes
them. Rows for Ray Data / parquet carry the nested parts as JSON strings so that any Arrow version stores them.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

CATEGORIES = ("simple", "multiple", "parallel", "parallel_multiple", "irrelevance")


@dataclass
class Sample:
    id: str
    tools: list[dict[str, Any]]  # [{"name", "description", "parameters": {"type": "dict"|"object", "properties", "required"}}]
    # OpenAI-style chat history up to the call: {"role": system|user|assistant|tool, "content": str}; an assistant
    # turn that called tools also has "tool_calls": [{"name": str, "arguments": dict}] (already parsed, not JSON text).
    messages: list[dict[str, Any]]
    truth: list[dict[str, dict[str, list[Any]]]] = field(default_factory=list)
    category: str = ""  # CATEGORIES, or a benchmark's own (BFCL live_simple, ...); inferred when empty
    source: str = ""  # where it came from, e.g. "bfcl_v3/simple" or the file name
    # A benchmark's own scoring rule, for items whose benchmark judges differently from the AST checker on `truth`
    # (ACEBench: {"kind": "acebench", "category", "answer", "functions", "gold"}); {} = the AST checker.
    scoring: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.category:
            self.category = infer_category(self.tools, self.truth)

    # --- rows for Ray Data / parquet -------------------------------------------------------------
    def to_row(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "tools": json.dumps(self.tools, ensure_ascii=False),
            "messages": json.dumps(self.messages, ensure_ascii=False),
            "truth": json.dumps(self.truth, ensure_ascii=False),
            "category": self.category,
            "source": self.source,
            "scoring": json.dumps(self.scoring, ensure_ascii=False),
        }

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> "Sample":
        def load(value: Any) -> Any:
            return json.loads(value) if isinstance(value, (str, bytes)) else value

        return cls(
            id=str(row["id"]),
            tools=load(row["tools"]),
            messages=load(row["messages"]),
            truth=load(row["truth"]),
            category=str(row.get("category") or ""),
            source=str(row.get("source") or ""),
            scoring=load(row.get("scoring") or "{}"),
        )

    @property
    def wants_call(self) -> bool:
        return bool(self.truth)

    def gold_calls(self) -> list[dict[str, Any]]:
        """One concrete call list that the checker accepts for the truth: the first acceptable value of each param,
        params whose first acceptable value is "" (may be omitted) left out, BFCL's per-key acceptable lists inside
        dict values resolved. Used as the training target. Delegates to the checker so the two cannot disagree."""
        from toolace_r.calls.checker import gold_calls  # lazy: calls does not import data, keep it that way

        return gold_calls(self.truth, self.tools)

    def gold_answer(self) -> str:
        """The answer text the item's own judge accepts (what `--model oracle:gold` answers): the benchmark's
        reference text where a scoring rule gives one (ACEBench's special items are judged on what the answer
        says), else the rendered gold calls."""
        if self.scoring.get("gold") is not None:
            return str(self.scoring["gold"])
        from toolace_r.data.prompts import render_answer  # lazy, like gold_calls

        return render_answer(self.gold_calls())

    def verdict(self, output: Any, decoder: str = "lenient") -> Any:
        """Judge one answer: by the item's benchmark rule where it has one (ACEBench: its own decoder and checker,
        whatever `decoder` says), else by the AST checker on `truth` with `decoder`. Returns a calls.Verdict."""
        if self.scoring.get("kind") == "acebench":
            from toolace_r.calls.acebench import check_acebench

            return check_acebench(output, self.scoring)
        from toolace_r.calls import check

        return check(output, self.tools, self.truth, self.category, decoder)


def infer_category(tools: list[dict[str, Any]], truth: list[dict[str, Any]]) -> str:
    if not truth:
        return "irrelevance"
    names = {next(iter(entry)) for entry in truth}
    if len(truth) == 1:
        return "simple" if len(tools) <= 1 else "multiple"
    return "parallel" if len(names) == 1 and len(tools) <= 1 else "parallel_multiple"


def calls_to_truth(calls: list[dict[str, Any]]) -> list[dict[str, dict[str, list[Any]]]]:
    """Exact calls (name + arguments) → BFCL truth with one acceptable value per param. BFCL writes a dict value
    with acceptable lists per key (`{"addr": [{"city": ["Rome"]}]}`), also for dicts inside a list; so do we."""
    return [{c["name"]: {k: [_acceptable(v)] for k, v in c.get("arguments", {}).items()}} for c in calls]


def _acceptable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: [v] for k, v in value.items()}
    if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        return [{k: [x] for k, x in v.items()} for v in value]
    return value
