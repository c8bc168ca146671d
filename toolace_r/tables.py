"""The one table `toolace-r eval` prints: every category, then every benchmark's own summary, single pass and
refined, each figure with its 95 % interval — and the parts of the summaries that the benchmark modules leave out.

- A category's interval is the Wilson interval of its counts (toolace_r.stats.wilson_interval).
- A mean over categories (BFCL's Non-Live AST, ACEBench's normal / special) gets the normal interval whose variance
  is the same linear combination as the mean, each category's variance read off its Wilson half-width
  (toolace_r.bfcl_summary.unweighted), so every figure in the table carries an interval computed one way.
- API-Bank's summary is its two levels, reported separately as the paper's family reports them; no pooled figure.

The BFCL block is bfcl_summary.format_summary's (its columns are this table's); ACEBench's and API-Bank's blocks are
laid out here in the same columns from the summaries in metrics.json.
"""
from __future__ import annotations

from typing import Any, Mapping

from toolace_r.acebench_summary import NORMAL, SPECIAL
from toolace_r.bfcl_summary import W, category_part, cell, unweighted
from toolace_r.stats import wilson_interval

APIBANK_LEVELS = ("apibank_l1", "apibank_l2")


def figure(n: int, k: int) -> dict[str, Any]:
    """{"accuracy", "n", "ci95"} of k right out of n (Wilson)."""
    return {"accuracy": k / n if n else None, "n": n, "ci95": list(wilson_interval(k, n)) if n else None}


def _count(m: Mapping[str, Any], rate: str, count: str) -> int:
    return int(m[count]) if m.get(count) is not None else round(float(m[rate]) * int(m["n"]))


def category_figures(m: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Single-pass and refined figures of one evaluate.summarize group."""
    n = int(m["n"])
    return (figure(n, _count(m, "accuracy", "correct")), figure(n, _count(m, "refined_accuracy", "refined_correct")))


def add_intervals(result: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Each group of an evaluate() result (and overall) gets `accuracy_ci95` / `refined_accuracy_ci95` (Wilson)."""
    for m in result.values():
        if isinstance(m, dict) and m.get("n"):
            single, refined = category_figures(m)
            m["accuracy_ci95"], m["refined_accuracy_ci95"] = single["ci95"], refined["ci95"]
    return result


def apibank_summary(result: Mapping[str, Mapping[str, Any]], prefix: str = "") -> dict[str, Any] | None:
    """API-Bank's figures: level-1 and level-2 call accuracy (published files) with Wilson intervals; no pooled
    figure (the paper's family reports the levels separately)."""
    levels = {lv: result[prefix + lv] for lv in APIBANK_LEVELS if prefix + lv in result}
    if not levels:
        return None
    out: dict[str, Any] = {"benchmark": "apibank", "levels_reported_separately": True}
    for label, (rate, count) in (("single", ("accuracy", "correct")),
                                 ("refined", ("refined_accuracy", "refined_correct"))):
        out[label] = {lv: figure(int(m["n"]), _count(m, rate, count)) for lv, m in levels.items()}
    return out


def add_acebench_intervals(summary: dict[str, Any]) -> dict[str, Any]:
    """ACEBench's normal / special means get the interval of an unweighted mean of their categories' figures."""
    for label in ("single", "refined"):
        part = summary.get(label)
        if not part:
            continue
        for name, members in (("normal", NORMAL), ("special", SPECIAL)):
            if part[name].get("accuracy") is None:
                continue
            cats = [part["categories"][c] for c in members]
            mean = unweighted([category_part(c, int(d["n"]), round(d["accuracy"] * d["n"]))
                               for c, d in zip(members, cats)]).to_dict()
            part[name].update(ci95=mean["ci95"], n=mean["n"])
    return summary


def _row(label: str, n: Any, single: Mapping | None, refined: Mapping | None, extra: str = "") -> str:
    return f"{label:<{W}} {n if n is not None else '':>5} {cell(single)} {cell(refined)}{extra}"


def header(title: str) -> list[str]:
    head = f"{title:<{W}} {'n':>5} {'single':>7} {'95% CI':>16} {'refined':>7} {'95% CI':>16}"
    return [head]


def format_categories(result: Mapping[str, Mapping[str, Any]]) -> list[str]:
    lines = [header("category")[0] + f" {'rounds':>6} {'tokens':>8} {'time s':>7}"]
    rule = "-" * len(lines[0])
    lines.append(rule)
    for group, m in result.items():
        if not isinstance(m, dict) or "n" not in m:
            continue
        if group == "overall":
            lines.append(rule)
        label = "overall (pooled samples, no benchmark's)" if group == "overall" else group
        single, refined = category_figures(m)
        lines.append(_row(label, m["n"], single, refined,
                          f" {m['mean_rounds']:>6.2f} {m['tokens']:>8} {m.get('time_s', 0.0):>7.1f}"))
    return lines


def format_acebench(summary: Mapping[str, Any]) -> list[str]:
    single, refined = summary["single"], summary.get("refined") or {}
    lines = header("ACEBench (its own scoring)")
    for name, members in (("normal", NORMAL), ("special", SPECIAL)):
        s, r = single[name], refined.get(name)
        note = f"N/A: {len(s['missing'])} categories missing" if s.get("missing") else f"unweighted mean of {s['of']}"
        lines.append(_row(f"{name} ({note})"[:W], s.get("n"), s, r))
        for c in members:
            d = single["categories"].get(c)
            if d is not None:
                unit = "  (end-to-end, conversations)" if d.get("unit") == "conversation" else ""
                lines.append(_row(f"  {c}", d["n"], d, refined.get("categories", {}).get(c), unit))
    lines.append(f"no ACEBench Summary: it also needs {summary['overall_needs']}")
    lines.append("special items were prompted with ACEBench's reply formats and scored on what the answer says")
    return lines


def format_apibank(summary: Mapping[str, Any]) -> list[str]:
    lines = header("API-Bank call accuracy (levels apart)")
    for lv, d in summary["single"].items():
        lines.append(_row(f"  {lv}", d["n"], d, summary.get("refined", {}).get(lv)))
    return lines


def format_blocks(summaries: Mapping[str, Mapping[str, Any]], rule: str = "") -> list[str]:
    """Each benchmark's summary block (BFCL, ACEBench, API-Bank), in the table's columns, `rule` between them."""
    from toolace_r.bfcl_summary import format_summary

    lines: list[str] = []
    for s in summaries.values():
        kind = s.get("benchmark")
        block = (format_summary(s).splitlines() if kind == "bfcl" else format_acebench(s) if kind == "acebench"
                 else format_apibank(s) if kind == "apibank" else [])
        if block:
            lines += ([rule] if rule else []) + [ln for ln in block if not set(ln) <= {"-"}]
    return lines


def format_results(result: Mapping[str, Mapping[str, Any]], summaries: Mapping[str, Mapping[str, Any]]) -> str:
    """The whole table: categories, then each benchmark's summary block in the same columns."""
    lines = format_categories(result)
    return "\n".join(lines + format_blocks(summaries, "-" * len(lines[0])))
