"""BFCL's leaderboard aggregation (toolace_r.bfcl_summary) against figures computed by hand from per-category
results, the way bfcl-eval 2026.3.23's eval_runner_helper.generate_leaderboard_csv combines them."""
from __future__ import annotations

import pytest

from toolace_r.bfcl_summary import (bfcl_summary, category_part, format_summary, guess_version, scores_from_result,
                                    summary_parts)
from toolace_r.stats import wilson_interval

# per-category (n, correct), v4 names; sizes as in BFCL v4 where it matters for the weighting
V4 = {
    "simple_python": (400, 380), "simple_java": (100, 60), "simple_javascript": (50, 30),
    "multiple": (200, 180), "parallel": (200, 170), "parallel_multiple": (200, 160), "irrelevance": (240, 216),
    "live_simple": (258, 200), "live_multiple": (1053, 800), "live_parallel": (16, 8),
    "live_parallel_multiple": (24, 12), "live_irrelevance": (884, 700), "live_relevance": (18, 15),
}
V3 = {{"simple_python": "simple", "simple_java": "java", "simple_javascript": "javascript"}.get(k, k): v
      for k, v in V4.items()}


def test_worked_example_v4_matches_hand_computed_aggregation():
    parts = summary_parts(V4, 4)
    # simple = unweighted mean of the three languages: (0.95 + 0.60 + 0.60) / 3 = 43/60
    assert parts["simple"].accuracy == pytest.approx(43 / 60)
    # Non-Live AST = unweighted mean of simple, multiple, parallel, parallel_multiple:
    # (43/60 + 0.90 + 0.85 + 0.80) / 4 = (43 + 153) / 240 = 49/60 — not the pooled 1020/1150 (= 0.887)
    assert parts["non_live_ast"].accuracy == pytest.approx(49 / 60)
    assert parts["non_live_ast"].n == 1150
    # Live AST = count-weighted: (200 + 800 + 8 + 12) / (258 + 1053 + 16 + 24)
    assert parts["live_ast"].accuracy == pytest.approx(1020 / 1351)
    assert parts["live_ast"].n == 1351
    # Irrelevance = unweighted mean of non-live and live irrelevance: (0.9 + 700/884) / 2
    assert parts["irrelevance_all"].accuracy == pytest.approx((0.9 + 700 / 884) / 2)
    assert parts["relevance"].accuracy == pytest.approx(15 / 18)
    assert "non_live_overall_v3" not in parts and "live_overall_v3" not in parts


def test_worked_example_v3_grouping():
    parts = summary_parts(V3, 3)  # v3 file names: simple, java, javascript
    assert parts["non_live_ast"].accuracy == pytest.approx(49 / 60)
    # v3 Non-Live overall adds irrelevance to the unweighted mean: (43/60 + 0.9 + 0.85 + 0.8 + 0.9) / 5 = 5/6
    assert parts["non_live_overall_v3"].accuracy == pytest.approx(5 / 6)
    # v3 Live overall weights live irrelevance and relevance in by count: (1020 + 700 + 15) / (1351 + 884 + 18)
    assert parts["live_overall_v3"].accuracy == pytest.approx(1735 / 2253)
    assert parts["live_overall_v3"].n == 2253


def test_missing_category_gives_na_naming_it_not_a_zero():
    partial = {k: v for k, v in V4.items() if k not in ("simple_java", "live_relevance")}
    parts = summary_parts(partial, 4)
    assert parts["simple"].missing == ("simple_java",) and parts["non_live_ast"].missing == ("simple_java",)
    assert parts["relevance"].missing == ("live_relevance",)
    assert parts["live_ast"].accuracy == pytest.approx(1020 / 1351)  # complete: still computed
    summary = bfcl_summary(partial, partial, 4)
    assert summary["single"]["non_live_ast"] == {"accuracy": None, "n": 1050, "missing": ["simple_java"]}
    text = format_summary(summary)
    assert "N/A: no results for simple_java" in text and "N/A: no results for live_relevance" in text


def test_intervals_single_category_is_wilson_and_summaries_bracket_the_mean():
    part = category_part("multiple", 200, 180)
    assert part.to_dict()["ci95"] == list(wilson_interval(180, 200))
    summary = bfcl_summary(V4, V4, 4)
    for key, fig in summary["single"].items():
        lo, hi = fig["ci95"]
        assert 0.0 <= lo < fig["accuracy"] < hi <= 1.0, key
    perfect = bfcl_summary({k: (n, n) for k, (n, _) in V4.items()}, None, 4)
    assert perfect["single"]["non_live_ast"]["accuracy"] == 1.0
    assert perfect["single"]["non_live_ast"]["ci95"][1] == 1.0 and perfect["single"]["non_live_ast"]["ci95"][0] < 1
    assert "refined" not in perfect


def test_no_leaderboard_overall_and_what_it_needs():
    for version, names in ((4, V4), (3, V3)):
        summary = bfcl_summary(names, names, version)
        assert summary["overall"] is None and "multi_turn_base" in summary["overall_needs"]
        text = format_summary(summary)
        assert "No leaderboard overall" in text
        assert not any(line.lower().startswith("overall") for line in text.splitlines())
    assert "web_search" in bfcl_summary(V4, None, 4)["overall_needs"]
    assert "web_search" not in bfcl_summary(V3, None, 3)["overall_needs"]


def test_scores_from_eval_result_and_table_uses_the_files_spelling():
    # evaluate.summarize output: accuracy / refined_accuracy per group, keys prefixed when several specs ran
    result = {f"bfcl/{k}": {"n": n, "accuracy": k_ / n, "refined_accuracy": min(n, k_ + 1) / n}
              for k, (n, k_) in V3.items()}
    result["builtin/simple"] = {"n": 10, "accuracy": 0.1, "refined_accuracy": 0.1}
    single, refined = scores_from_result(result, "bfcl/")
    assert single == V3 and refined["java"] == (100, 61)
    assert guess_version(single) == 3 and guess_version(V4) == 4
    summary = bfcl_summary(single, refined, 3)
    assert summary["single"]["non_live_ast"]["accuracy"] == pytest.approx(49 / 60)
    assert summary["refined"]["simple"]["accuracy"] == pytest.approx((381 / 400 + 61 / 100 + 31 / 50) / 3)
    text = format_summary(summary)
    assert "BFCL v3 summary" in text and "    java " in text and "simple_java" not in text
    assert "v3 Non-Live overall" in text and "83.3%" in text
