"""ACEBench's categories and its own summary of the scores, computed the way ACEBench computes them.

Re-stated from ACEBench/ACEBench @ e6db74b7 (`category.py`; `model_eval/evaluation_helper.py` generate_result_csv;
`eval_main.py` normal_multi_turn_eval): per category an accuracy (multi-turn categories end-to-end, by
conversation); normal = the unweighted mean of its 12 categories, special = of its 3. ACEBench's Summary also weighs
the agent categories, which this project does not run: it is never printed, and the summary says what it lacks.
The readers (toolace_r.data.acebench) take the category names from here, as the BFCL readers take theirs from
toolace_r.bfcl_summary; the table's intervals for these means are added by toolace_r.tables. Only the standard
library and toolace_r.stats: this runs inside reports and tests.
"""
from __future__ import annotations

from typing import Any

from toolace_r.stats import wilson_interval

NORMAL = ("normal_atom_bool", "normal_atom_enum", "normal_atom_number", "normal_atom_list",
          "normal_atom_object_short", "normal_atom_object_deep", "normal_single_turn_single_function",
          "normal_single_turn_parallel_function", "normal_multi_turn_user_adjust", "normal_multi_turn_user_switch",
          "normal_similar_api", "normal_preference")
SPECIAL = ("special_incomplete", "special_error_param", "special_irrelevant")
AGENT = ("agent_multi_step", "agent_multi_turn")
CATEGORIES = NORMAL + SPECIAL
# ACEBench's Summary = 0.2676 special + 0.578 normal + 0.1545 agent: never printed without agent
OVERALL_NEEDS = "agent (agent_multi_step, agent_multi_turn): ACEBench's Summary = 0.578 × normal + 0.2676 × " \
                "special + 0.1545 × agent"


def conversation_metrics(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Extra per-group metrics for an ACEBench multi-turn group (evaluate.summarize adds them): ACEBench scores these
    categories by conversation (`..._<conversation>_<turn>` ids) — a conversation counts only when all its turns
    are right (end-to-end accuracy); `process` = the mean share of right turns per conversation. {} otherwise."""
    if not rows or any("multi_turn" not in str(r.get("category")) or r.get("category") not in CATEGORIES
                       for r in rows):
        return {}
    out: dict[str, Any] = {}
    for prefix, key in (("", "valid"), ("refined_", "refined_valid")):
        convs: dict[str, list[bool]] = {}
        for r in rows:
            convs.setdefault(str(r["id"]).rsplit("_", 1)[0], []).append(bool(r[key]))
        out["conversations"] = len(convs)
        out[prefix + "conversations_right"] = sum(all(v) for v in convs.values())
        out[prefix + "process_accuracy"] = sum(sum(v) / len(v) for v in convs.values()) / len(convs)
    return out


def _figure(n: int, k: int) -> dict[str, Any]:
    return {"accuracy": k / n if n else None, "n": n, "ci95": list(wilson_interval(k, n))}


def acebench_summary(result: dict[str, dict[str, Any]], prefix: str = "") -> dict[str, Any] | None:
    """Per-group metrics of evaluate.summarize (groups named prefix + ACEBench category) → ACEBench's figures:
    per category (multi-turn: end-to-end over conversations), normal = unweighted mean of its 12 categories,
    special = of its 3, single pass and refined; a part with a category missing has accuracy None and names what
    is missing. No Summary: it needs the agent categories (overall None, overall_needs says why)."""
    groups = {key[len(prefix):]: m for key, m in result.items()
              if key.startswith(prefix) and key[len(prefix):] in CATEGORIES}
    if not groups:
        return None
    out: dict[str, Any] = {"benchmark": "acebench", "source": "ACEBench @ e6db74b7 eval_main.py + "
                           "model_eval/evaluation_helper.py generate_result_csv",
                           "prompting": "ACEBench's system prompts per kind; special items are told its three "
                                        "reply formats and judged on what the answer says"}
    for label, acc in (("single", "accuracy"), ("refined", "refined_accuracy")):
        per = {}
        for c in CATEGORIES:
            m = groups.get(c)
            if m is None:
                continue
            if "conversations" in m:
                right = m["conversations_right" if label == "single" else "refined_conversations_right"]
                per[c] = dict(_figure(int(m["conversations"]), int(right)), items=int(m["n"]), unit="conversation",
                              process=m["process_accuracy" if label == "single" else "refined_process_accuracy"])
            else:
                per[c] = _figure(int(m["n"]), round(m[acc] * m["n"]))
        part: dict[str, Any] = {"categories": per}
        for name, members in (("normal", NORMAL), ("special", SPECIAL)):
            missing = [c for c in members if c not in per]
            part[name] = {"accuracy": None, "missing": missing} if missing else \
                {"accuracy": sum(per[c]["accuracy"] for c in members) / len(members), "of": len(members)}
        out[label] = part
    out["overall"] = None
    out["overall_needs"] = OVERALL_NEEDS
    return out


def format_acebench(summary: dict[str, Any]) -> str:
    """The printed ACEBench block: normal and special as ACEBench averages them, and why there is no Summary."""
    single, refined = summary["single"], summary.get("refined") or {}

    def pct(d: dict | None) -> str:
        return f"{d['accuracy']:.1%}" if d and d.get("accuracy") is not None else "n/a"

    lines = [f"{'ACEBench (its own scoring)':<44} {'single':>7} {'refined':>8}"]
    for name in ("normal", "special"):
        s = single[name]
        note = f"missing {', '.join(s['missing'])}" if s.get("missing") else f"unweighted mean of {s['of']}"
        lines.append(f"{name:<44} {pct(s):>7} {pct(refined.get(name)):>8}   ({note})")
        for c in (NORMAL if name == "normal" else SPECIAL):
            d = single["categories"].get(c)
            if d is not None:
                unit = f"   (end-to-end, {d['n']} conversations)" if d.get("unit") == "conversation" else ""
                lines.append(f"  {c:<42} {pct(d):>7} {pct(refined.get('categories', {}).get(c)):>8}{unit}")
    lines.append(f"no ACEBench Summary: it also needs {summary['overall_needs']}")
    lines.append("special items were prompted with ACEBench's reply formats and scored on what the answer says; every "
                 "ACEBench item is decoded by ACEBench's own rules, whatever eval.decoder says")
    return "\n".join(lines)
