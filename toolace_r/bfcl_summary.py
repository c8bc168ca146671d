"""BFCL's categories and the leaderboard's summary scores, computed the way the official code computes them.

Per-category accuracy alone is not what the field quotes: the Berkeley Function Calling Leaderboard reports
aggregates, and they are not a pooled mean over samples. This module re-states the aggregation of `bfcl-eval`
2026.3.23 (`bfcl_eval/eval_checker/eval_runner_helper.py`, `generate_leaderboard_csv`; the v3 variant at gorilla
@ ea13468e) so a `toolace-r eval` figure can be put beside a leaderboard column:

- Non-Live AST = unweighted mean of simple, multiple, parallel, parallel_multiple, where "simple" is itself the
  unweighted mean of simple_python, simple_java, simple_javascript (v3 file names: simple, java, javascript);
- Live AST = mean of live_simple, live_multiple, live_parallel, live_parallel_multiple weighted by sample count;
- Irrelevance = unweighted mean of irrelevance and live_irrelevance; Relevance = live_relevance;
- v3 only: Non-Live overall = unweighted mean of the four non-live AST groups and irrelevance; Live overall = the
  count-weighted mean of the four live AST categories, live_irrelevance and live_relevance.

The leaderboard's Overall also needs categories this project does not run (multi-turn; for v4 agentic web search
and memory): it is never printed, and the summary says which categories it lacks. Where a summary's own category is
absent (not in the directory, not asked for) the official table shows "N/A"; so does this one, naming what is
missing, rather than counting the missing category as 0 the way BFCL's overall columns do.

Intervals: a single category's is the Wilson 95 % interval; a summary's is a normal interval whose variance is the
same linear combination as the mean (weights squared), each category's variance read off its Wilson half-width so
that it stays positive at 0 % and 100 %. Only the standard library: this runs inside reports and tests.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from toolace_r.stats import Z95, wilson_interval

# v4 names; the v3 file names of the three "simple" languages map onto them
NON_LIVE = ("simple_python", "simple_java", "simple_javascript", "multiple", "parallel", "parallel_multiple",
            "irrelevance")
LIVE = ("live_simple", "live_multiple", "live_parallel", "live_parallel_multiple", "live_irrelevance",
        "live_relevance")
AST_CATEGORIES = NON_LIVE + LIVE
V3_NAMES = {"simple": "simple_python", "java": "simple_java", "javascript": "simple_javascript"}
V4_TO_V3 = {v: k for k, v in V3_NAMES.items()}
ALL_NAMES = frozenset(AST_CATEGORIES) | frozenset(V3_NAMES)  # every name a BFCL AST category file may carry

# BFCL categories outside what this project runs, by the part of the leaderboard they feed (prefix match)
NOT_RUN = {
    "multi_turn": "multi-turn (stateful execution of API sequences)",
    "web_search": "agentic: web search",
    "memory": "agentic: memory",
    "format_sensitivity": "format sensitivity (not scored in the overall)",
}
# the leaderboard's overall: what it weighs besides the parts computed here
OVERALL_NEEDS = {
    3: "multi-turn (multi_turn_base, multi_turn_miss_func, multi_turn_miss_param, multi_turn_long_context): "
       "v3 overall = unweighted mean of Live overall, Non-Live overall and Multi-Turn overall",
    4: "multi-turn (multi_turn_base, multi_turn_miss_func, multi_turn_miss_param, multi_turn_long_context) and "
       "agentic (web_search_base, web_search_no_snippet, memory_kv, memory_vector, memory_rec_sum): v4 overall = "
       "10 % Non-Live + 10 % Live + 10 % Irrelevance + 30 % Multi-Turn + 40 % Agentic",
}


def canonical(category: str) -> str:
    """A BFCL category name as v4 spells it (`simple` → `simple_python`, ...); other names unchanged."""
    return V3_NAMES.get(category, category)


def guess_version(names) -> int:
    """BFCL version from category names alone (when the directory cannot be read again): the v3 spellings of the
    simple categories say 3, anything else is taken as 4."""
    return 3 if set(names) & set(V3_NAMES) else 4


def not_run_reason(category: str) -> str | None:
    """Why a BFCL category is outside what this project evaluates, or None for an AST category."""
    for prefix, why in NOT_RUN.items():
        if category.startswith(prefix):
            return why
    return None


@dataclass(frozen=True)
class Part:
    """One figure of the summary: accuracy over `n` samples, its variance for the interval, what it lacks."""
    accuracy: float
    n: int
    var: float
    missing: tuple[str, ...] = ()
    wilson: tuple[float, float] | None = None  # a single category's exact-ish interval

    def to_dict(self) -> dict[str, Any]:
        if self.missing:
            return {"accuracy": None, "n": self.n, "missing": list(self.missing)}
        lo, hi = self.wilson or (max(0.0, self.accuracy - Z95 * self.var ** 0.5),
                                 min(1.0, self.accuracy + Z95 * self.var ** 0.5))
        return {"accuracy": self.accuracy, "n": self.n, "ci95": [lo, hi]}


def category_part(name: str, n: int, correct: int) -> Part:
    if n <= 0:
        return Part(0.0, 0, 0.0, (name,))
    lo, hi = wilson_interval(correct, n)
    return Part(correct / n, n, ((hi - lo) / 2 / Z95) ** 2, (), (lo, hi))


def weighted(parts: list[Part]) -> Part:
    """BFCL's calculate_weighted_accuracy: sum(acc_i * n_i) / sum(n_i)."""
    total = sum(p.n for p in parts)
    missing = tuple(m for p in parts for m in p.missing)
    if missing or total == 0:
        return Part(0.0, total, 0.0, missing or ("(no samples)",))
    return Part(sum(p.accuracy * p.n for p in parts) / total, total,
                sum((p.n / total) ** 2 * p.var for p in parts), ())


def unweighted(parts: list[Part]) -> Part:
    """BFCL's calculate_unweighted_accuracy: sum(acc_i) / len(parts); n is the total sample count."""
    missing = tuple(m for p in parts for m in p.missing)
    total = sum(p.n for p in parts)
    if missing:
        return Part(0.0, total, 0.0, missing)
    return Part(sum(p.accuracy for p in parts) / len(parts), total,
                sum(p.var for p in parts) / len(parts) ** 2, ())


def summary_parts(scores: Mapping[str, tuple[int, int]], version: int) -> dict[str, Part]:
    """{category: (n, correct)} (v3 or v4 names) → the leaderboard's figures, in display order.

    Keys: `non_live_ast`, `simple` (the language mean), `live_ast`, `irrelevance_all`, `relevance`, and for v3
    `non_live_overall_v3`, `live_overall_v3`."""
    canon: dict[str, tuple[int, int]] = {}
    for name, (n, k) in scores.items():
        canon[canonical(name)] = (int(n), int(k))
    cat = {c: category_part(c, *canon.get(c, (0, 0))) for c in AST_CATEGORIES}
    simple = unweighted([cat["simple_python"], cat["simple_java"], cat["simple_javascript"]])
    non_live_groups = [simple, cat["multiple"], cat["parallel"], cat["parallel_multiple"]]
    live_ast = [cat["live_simple"], cat["live_multiple"], cat["live_parallel"], cat["live_parallel_multiple"]]
    out = {
        "non_live_ast": unweighted(non_live_groups),
        "simple": simple,
        "live_ast": weighted(live_ast),
        "irrelevance_all": unweighted([cat["irrelevance"], cat["live_irrelevance"]]),
        "relevance": cat["live_relevance"],
    }
    if version == 3:
        out["non_live_overall_v3"] = unweighted(non_live_groups + [cat["irrelevance"]])
        out["live_overall_v3"] = weighted(live_ast + [cat["live_irrelevance"], cat["live_relevance"]])
    return out


# The printed table: (summary key or category, depth), leaderboard figures with their categories beneath them
LABELS = {
    "non_live_ast": "Non-Live AST (unweighted mean of 4)",
    "simple": "simple (unweighted mean of 3 languages)",
    "live_ast": "Live AST (weighted by n)",
    "irrelevance_all": "Irrelevance (mean of non-live, live)",
    "relevance": "Relevance (= live_relevance)",
    "non_live_overall_v3": "v3 Non-Live overall (mean of 5, + irrel.)",
    "live_overall_v3": "v3 Live overall (weighted, + (ir)relevance)",
}
LAYOUT = (
    ("non_live_ast", 0), ("simple", 1), ("simple_python", 2), ("simple_java", 2), ("simple_javascript", 2),
    ("multiple", 1), ("parallel", 1), ("parallel_multiple", 1),
    ("live_ast", 0), ("live_simple", 1), ("live_multiple", 1), ("live_parallel", 1), ("live_parallel_multiple", 1),
    ("irrelevance_all", 0), ("irrelevance", 1), ("live_irrelevance", 1),
    ("relevance", 0),
    ("non_live_overall_v3", 0), ("live_overall_v3", 0),
)


def bfcl_summary(single: Mapping[str, tuple[int, int]], refined: Mapping[str, tuple[int, int]] | None,
                 version: int) -> dict[str, Any]:
    """The summary written to metrics.json: per figure, single-pass and refined accuracy with n and 95 % interval
    (accuracy None and the missing categories named where a part is absent), and why there is no overall."""
    out: dict[str, Any] = {"benchmark": "bfcl", "version": version, "source": "bfcl-eval 2026.3.23 "
                           "eval_runner_helper.generate_leaderboard_csv" + (" (v3 grouping)" if version == 3 else "")}
    for label, scores in (("single", single), ("refined", refined)):
        if scores is not None:
            out[label] = {k: p.to_dict() for k, p in summary_parts(scores, version).items()}
    out["per_category"] = {
        canonical(c): {"single": category_part(c, *single[c]).to_dict(),
                       **({"refined": category_part(c, *refined[c]).to_dict()} if refined and c in refined else {})}
        for c in sorted(single, key=lambda c: AST_CATEGORIES.index(canonical(c)))}
    out["overall"] = None
    out["overall_needs"] = OVERALL_NEEDS.get(version, OVERALL_NEEDS[4])
    return out


def scores_from_result(result: Mapping[str, Mapping[str, Any]], prefix: str = "") -> tuple[dict, dict]:
    """Per-group metrics of evaluate.summarize → ({category: (n, correct single)}, {category: (n, correct
    refined)}) for the BFCL AST groups named `prefix + category`."""
    single: dict[str, tuple[int, int]] = {}
    refined: dict[str, tuple[int, int]] = {}
    for key, m in result.items():
        if not key.startswith(prefix) or key[len(prefix):] not in ALL_NAMES:
            continue
        n = int(m["n"])
        single[key[len(prefix):]] = (n, round(m["accuracy"] * n))
        refined[key[len(prefix):]] = (n, round(m["refined_accuracy"] * n))
    return single, refined


W = 46  # the label column of this block and of toolace_r.tables' whole table, which shares its columns


def cell(d: Mapping[str, Any] | None) -> str:
    """`  71.2%   [64.5%, 77.1%]`, blank without a figure, N/A for a part that lacks categories; the two columns of a
    figure here and in toolace_r.tables' table."""
    if d is None:
        return f"{'':>7} {'':>16}"
    if d.get("accuracy") is None:
        return f"{'N/A':>7} {'':>16}"
    ci = d.get("ci95")
    text = f"[{ci[0]:.1%}, {ci[1]:.1%}]" if ci else ""
    return f"{d['accuracy']:>7.1%} {text:>16}"


def format_summary(summary: dict[str, Any]) -> str:
    """The BFCL block printed after the per-category table: each leaderboard figure with its categories indented
    beneath it, single pass and refined with 95 % intervals, then why there is no leaderboard overall."""
    version = summary["version"]
    single, refined = summary.get("single", {}), summary.get("refined") or {}
    per_cat = summary.get("per_category", {})
    head = (f"{f'BFCL v{version} summary (leaderboard aggregation)':<{W}} {'n':>5} {'single':>7} {'95% CI':>16} "
            f"{'refined':>7} {'95% CI':>16}")
    lines = [head, "-" * len(head)]
    for key, depth in LAYOUT:
        if key in single:
            fig, ref, label = single[key], refined.get(key), LABELS[key]
        elif key in per_cat:
            fig, ref = per_cat[key]["single"], per_cat[key].get("refined")
            label = V4_TO_V3.get(key, key) if version == 3 else key  # as the user's files spell it
        else:
            continue
        lines.append(f"{'  ' * depth + label:<{W}} {fig['n']:>5} {cell(fig)} {cell(ref)}")
        if key in single and fig.get("accuracy") is None:
            missing = ", ".join(V4_TO_V3.get(m, m) if version == 3 else m for m in fig["missing"])
            lines.append(f"{'  ' * (depth + 1)}(N/A: no results for {missing})")
    lines.append("-" * len(head))
    lines.append(f"No leaderboard overall: it also needs {summary['overall_needs']}; toolace-r runs the "
                 f"single-turn AST categories only.")
    return "\n".join(lines)
