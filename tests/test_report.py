"""report.py: report.json structure from a state.json, and the HTML page with its embedded plots."""
from __future__ import annotations

import base64
import re

from toolace_r import io as rio
from toolace_r.report import build_report, iter_key, write_report


def _eval(acc: float, refined: float) -> dict:
    return {
        "simple": {"n": 10, "accuracy": acc + 0.1, "refined_accuracy": refined + 0.1, "mean_rounds": 1.5, "tokens": 100,
                   "time_s": 1.0},
        "irrelevance": {"n": 10, "accuracy": acc - 0.1, "refined_accuracy": refined - 0.1, "mean_rounds": 1.2,
                        "tokens": 80, "time_s": 1.0},
        "overall": {"n": 20, "accuracy": acc, "refined_accuracy": refined, "mean_rounds": 1.35, "tokens": 180,
                    "time_s": 2.0},
    }


def _stage(result: dict, wall: float = 2.0) -> dict:
    return {"started_at": 0.0, "finished_at": wall, "wall_s": wall, "result": result}


def two_iteration_state() -> dict:
    """Iteration 0 (seed, not probed) finished; iteration 1 probed and selected, training not done yet."""
    return {
        "stages": {
            "pool": _stage({"pool_size": 100, "fingerprint": "x"}),
            "base_model": _stage({"model_dir": "/r/base_model"}),
            "baseline/eval": _stage(_eval(0.05, 0.06)),
            iter_key(0, "select"): _stage({"selected": 50, "new": 50, "selected_total": 50, "counts": {"seed": 50}}),
            iter_key(0, "corpus"): _stage({"rows": 50, "refine_samples": 0, "kinds": {"direct": 50}}),
            iter_key(0, "train"): _stage({"model_dir": "/r/iter_000/model", "loss_first": 6.0, "loss_last": 1.0,
                                          "tokens_per_s": 9000.0, "train_tokens": 12345, "steps": 10}, 30.0),
            iter_key(0, "eval"): _stage(_eval(0.5, 0.55)),
            iter_key(1, "probe"): _stage({"n": 100, "k": 4, "histogram": {"bins": [0, .25, .5, .75, 1],
                                                                           "counts": [30, 10, 10, 10, 40]},
                                          "mean_pass_rate": 0.55,
                                          "counts": {"mastered": 40, "learnable": 30, "too_hard": 30}}),
            iter_key(1, "select"): _stage({"selected": 70, "new": 20, "selected_total": 70, "counts": {}}),
        },
        "history": [],
        "stopped": None,
    }


def test_report_structure_and_nulls_for_unfinished_stages(tmp_path):
    report = build_report(two_iteration_state(), tmp_path)
    assert report["baseline"]["accuracy"] == 0.05 and report["baseline"]["refined_accuracy"] == 0.06
    assert [e["iteration"] for e in report["iterations"]] == [0, 1]
    it0, it1 = report["iterations"]
    assert it0["eval"]["accuracy"] == 0.5 and it0["eval"]["refined_accuracy"] == 0.55
    assert it0["eval"]["categories"]["simple"]["accuracy"] == 0.6
    assert it0["pass_rate_histogram"] is None and it0["counts"] is None  # iteration 0 was not probed
    assert it0["train"]["train_tokens"] == 12345 and it0["train"]["loss_last"] == 1.0
    assert it0["wall_s"] == {"select": 2.0, "corpus": 2.0, "train": 30.0, "eval": 2.0}
    assert it0["pool_size"] == 100 and it0["selected"] == 50 and it0["refine_samples"] == 0
    assert it1["counts"] == {"mastered": 40, "learnable": 30, "too_hard": 30}
    assert it1["pass_rate_histogram"]["counts"] == [30, 10, 10, 10, 40]
    assert it1["eval"] is None and it1["train"] is None  # not run yet
    assert report["final_model"] == "/r/iter_000/model"


def test_write_report_files_with_embedded_plots(tmp_path):
    rio.write_json(tmp_path / "state.json", two_iteration_state())
    report = write_report(tmp_path)
    assert rio.read_json(tmp_path / "report.json")["iterations"][0]["eval"]["accuracy"] == report["iterations"][0]["eval"]["accuracy"]
    page = (tmp_path / "report.html").read_text()
    images = re.findall(r'alt="(\w+)" src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert [name for name, _ in images] == ["accuracy", "pass_rates", "selected"]
    for name, data in images:
        assert base64.b64decode(data)[:8] == b"\x89PNG\r\n\x1a\n"
        assert (tmp_path / "plots" / f"{name}.png").read_bytes() == base64.b64decode(data)  # the same figure as a file
    assert "untrained" in page and "0.550" in page


def test_report_of_an_empty_run_dir(tmp_path):
    report = write_report(tmp_path)
    assert report["iterations"] == [] and report["baseline"] is None
    assert (tmp_path / "report.html").is_file()
