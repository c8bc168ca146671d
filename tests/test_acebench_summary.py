"""ACEBench's own summary (toolace_r.acebench_summary): per category, multi-turn end-to-end by conversation, normal
and special as unweighted means of their categories, and no Summary without the agent categories."""
from __future__ import annotations

import pytest

from toolace_r.acebench_summary import NORMAL, acebench_summary, conversation_metrics, format_acebench


def test_summary_follows_acebench_averaging():
    rows = [{"id": f"normal_multi_turn_user_switch_{c}_{t}", "category": "normal_multi_turn_user_switch",
             "valid": ok, "refined_valid": True} for c, t, ok in ((0, 0, True), (0, 1, False), (1, 0, True))]
    extra = conversation_metrics(rows)
    assert extra == {"conversations": 2, "conversations_right": 1, "process_accuracy": 0.75,
                     "refined_conversations_right": 2, "refined_process_accuracy": 1.0}
    result = {"normal_multi_turn_user_switch": {"n": 3, "accuracy": 2 / 3, "refined_accuracy": 1.0, **extra},
              "special_incomplete": {"n": 4, "accuracy": 0.5, "refined_accuracy": 0.5},
              "special_error_param": {"n": 2, "accuracy": 1.0, "refined_accuracy": 1.0},
              "special_irrelevant": {"n": 10, "accuracy": 0.9, "refined_accuracy": 0.9}}
    summary = acebench_summary(result)
    single = summary["single"]
    assert single["categories"]["normal_multi_turn_user_switch"]["accuracy"] == 0.5  # end-to-end, 1 of 2
    assert single["special"]["accuracy"] == pytest.approx((0.5 + 1.0 + 0.9) / 3)  # unweighted, not by n
    assert single["normal"]["accuracy"] is None and len(single["normal"]["missing"]) == len(NORMAL) - 1
    assert summary["refined"]["categories"]["normal_multi_turn_user_switch"]["accuracy"] == 1.0
    assert summary["overall"] is None and "agent" in summary["overall_needs"]
    text = format_acebench(summary)
    assert "no ACEBench Summary" in text and "missing" in text
    assert acebench_summary({"simple": {"n": 1, "accuracy": 1.0, "refined_accuracy": 1.0}}) is None
