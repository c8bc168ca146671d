"""report.py: report.json structure from a state.json, and the HTML page with its embedded plots."""
from __future__ import annotations

import base64
import re

import pytest

from toolace_r import io as rio
from toolace_r.driver import format_summary
from toolace_r.evaluate import summarize
from toolace_r.report import add_item_statistics, build_report, iter_key, paired, render_html, write_report
from toolace_r.stats import mcnemar, wilson_interval


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
    # the loop has not stopped: no final model is chosen yet (the driver records its choice when it stops)
    assert report["final_model"] is None and report["final_model_dir"] is None
    assert not it0["final"] and report["dev"] is None and report["baseline_dev"] is None
    # intervals without exact counts (an older state.json) come from rate × n
    assert report["baseline"]["accuracy_ci95"] == list(wilson_interval(1, 20))
    assert it0["eval"]["categories"]["simple"]["accuracy_ci95"] == list(wilson_interval(6, 10))


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


def test_the_report_says_which_decoder_read_the_answers(tmp_path):
    """The driver records the decoders in state.json; report.json, report.html and the console summary label the
    figures: bfcl is the leaderboard's decoder, lenient is not, and a probe set apart from eval is named too."""
    from toolace_r.driver import format_summary

    cases = [({"probe": "bfcl", "eval": "bfcl"}, "decoder: bfcl (the leaderboard's)"),
             ({"probe": "lenient", "eval": "lenient"}, "decoder: lenient (not the leaderboard's)"),
             ({"probe": "lenient", "eval": "bfcl"},
              "decoder: bfcl (the leaderboard's); the probe judged with lenient (not the leaderboard's)")]
    for decoders, label in cases:
        rio.write_json(tmp_path / "state.json", dict(two_iteration_state(), decoders=decoders))
        report = write_report(tmp_path, plots=False)
        assert report["decoder"] == {**decoders, "label": label}
        assert rio.read_json(tmp_path / "report.json")["decoder"]["label"] == label
        assert label.replace("'", "&#x27;") in render_html(report, {})
        assert label in format_summary(report).splitlines()
    assert build_report(two_iteration_state(), tmp_path)["decoder"] is None  # a run dir from before: not recorded


def test_report_of_an_empty_run_dir(tmp_path):
    report = write_report(tmp_path)
    assert report["iterations"] == [] and report["baseline"] is None
    assert (tmp_path / "report.html").is_file()


# ------------------------------------------------------------------------------------------------ statistics
def _outputs(pattern: dict[str, list[tuple[int, int]]]) -> list[dict]:
    """evaluate()'s output rows from (valid, refined_valid) pairs per group."""
    rows = []
    for group, pairs in pattern.items():
        for i, (single, refined) in enumerate(pairs):
            rows.append({"id": f"{group}-{i}", "group": group, "category": group, "first_answer": "a",
                         "answer": "a" if single == refined else "b", "valid": bool(single),
                         "refined_valid": bool(refined), "refined_error_type": None if refined else "wrong",
                         "rounds": 2, "tokens": 10, "forward_passes": 2, "time_s": 0.1,
                         "valid_by_round": [bool(single), bool(refined)]})
    return rows


def _evaluated(pattern: dict[str, list[tuple[int, int]]]) -> tuple[dict, list[dict]]:
    outputs = _outputs(pattern)
    return add_item_statistics(summarize(outputs), outputs), outputs


DEV = {"simple": [(1, 1)] * 6 + [(0, 1)] * 3 + [(0, 0)] * 3, "irrelevance": [(1, 1)] * 2 + [(1, 0)] + [(0, 0)] * 5}
TEST = {"simple": [(1, 1)] * 9 + [(0, 1)] * 5 + [(1, 0)] + [(0, 0)] * 5, "multiple": [(0, 0)] * 7 + [(1, 1)] * 3}
BASE_TEST = {"simple": [(0, 0)] * 20, "multiple": [(0, 0)] * 7 + [(1, 1)] * 3}


def finished_state() -> tuple[dict, dict[str, list[dict]]]:
    """A stopped run with a dev split: dev and test evaluations of the untrained model and two iterations, the
    driver's choice (iteration 0, better on dev although iteration 1 is better on test)."""
    state = two_iteration_state()
    stages = state["stages"]
    stages["pool"] = _stage({"pool_size": 80, "loaded_size": 100, "fingerprint": "x", "dev_size": 20,
                             "dev_fingerprint": "d", "dev_categories": {"simple": 12, "irrelevance": 8}})
    outputs = {}
    for key, pattern in [("baseline/dev_eval", BASE_TEST), ("baseline/eval", BASE_TEST),
                         (iter_key(0, "dev_eval"), DEV), (iter_key(0, "eval"), TEST),
                         (iter_key(1, "dev_eval"), {g: v[:-2] + [(0, 0)] * 2 for g, v in DEV.items()}),
                         (iter_key(1, "eval"), {g: [(1, 1)] * len(v) for g, v in TEST.items()})]:
        result, outputs[key] = _evaluated(pattern)
        stages[key] = _stage(result)
    stages[iter_key(1, "train")] = _stage({"model_dir": "/r/iter_001/model", "train_tokens": 1, "steps": 1})
    stages[iter_key(1, "corpus")] = _stage({"rows": 70, "refine_samples": 20})
    dev0 = build_report({"stages": stages}, "/r")["iterations"][0]["dev_eval"]
    state["stopped"] = {"iteration": 1, "reason": "max_iterations (2) reached"}
    state["final_model"] = {"iteration": 0, "model_dir": "/r/iter_000/model", "metric": "refined_accuracy",
                            "value": dev0["refined_accuracy"], "reason": "best dev refined_accuracy ... at iteration 0"}
    base = outputs["baseline/eval"]
    final = outputs[iter_key(0, "eval")]
    state["final_vs_baseline"] = {rate: paired([r[col] for r in base], [r[col] for r in final])
                                  for rate, col in (("accuracy", "valid"), ("refined_accuracy", "refined_valid"))}
    return state, outputs


def test_every_accuracy_carries_the_wilson_interval_of_its_counts(tmp_path):
    state, outputs = finished_state()
    report = build_report(state, tmp_path)
    evals = {"baseline/eval": report["baseline"], "baseline/dev_eval": report["baseline_dev"]}
    for e in report["iterations"]:
        evals[iter_key(e["iteration"], "eval")] = e["eval"]
        evals[iter_key(e["iteration"], "dev_eval")] = e["dev_eval"]
    for key, summary in evals.items():
        rows = outputs[key]
        groups = {"overall": rows} | {g: [r for r in rows if r["group"] == g] for g in {r["group"] for r in rows}}
        for group, items in groups.items():
            fig = summary if group == "overall" else summary["categories"][group]
            n, k, k_ref = len(items), sum(r["valid"] for r in items), sum(r["refined_valid"] for r in items)
            assert fig["n"] == n
            assert fig["accuracy"] == k / n and fig["accuracy_ci95"] == list(wilson_interval(k, n)), (key, group)
            assert fig["refined_accuracy_ci95"] == list(wilson_interval(k_ref, n)), (key, group)
            pair = mcnemar([r["valid"] for r in items], [r["refined_valid"] for r in items])
            assert fig["refined_vs_single"]["a_only"] == pair["a_only"]  # only the single pass right
            assert fig["refined_vs_single"]["b_only"] == pair["b_only"]  # only refinement right
            assert fig["refined_vs_single"]["p_value"] == pair["p_value"]
    t = report["iterations"][0]["eval"]["refined_vs_single"]  # TEST: 5 items fixed by refinement, 1 broken
    assert (t["a_only"], t["b_only"]) == (1, 5) and t["diff"] == pytest.approx(4 / 30)
    assert t["p_value"] == pytest.approx(2 * (1 + 6) / 2 ** 6)


def test_final_model_entry_marks_the_choice_and_its_figures(tmp_path):
    state, _ = finished_state()
    rio.write_json(tmp_path / "state.json", state)
    report = write_report(tmp_path)
    final = report["final_model"]
    assert final["iteration"] == 0 and final["model_dir"] == "/r/iter_000/model" == report["final_model_dir"]
    assert final["metric"] == "refined_accuracy" and final["reason"].startswith("best dev")
    assert final["dev"] == {k: v for k, v in report["iterations"][0]["dev_eval"].items() if k != "categories"}
    assert final["test"]["accuracy"] == report["iterations"][0]["eval"]["accuracy"]
    assert final["test_vs_baseline"]["accuracy"]["b_only"] == 10  # simple: 10 right single pass vs 0 untrained
    assert [e["final"] for e in report["iterations"]] == [True, False]
    assert report["dev"] == {"size": 20, "fingerprint": "d", "categories": {"simple": 12, "irrelevance": 8}}
    assert report["pool_size"] == 80  # what the loop trained on: the dev split is not in it
    page = (tmp_path / "report.html").read_text()
    dev0 = report["iterations"][0]["dev_eval"]
    figure = f"{dev0['refined_accuracy']:.3f} [{dev0['refined_accuracy_ci95'][0]:.3f}, {dev0['refined_accuracy_ci95'][1]:.3f}]"
    assert figure in page and "★ final" in page and "dev refined" in page and "test refined" in page
    table = format_summary(report)
    assert figure in table and "* final model: best dev" in table
    line0 = next(line for line in table.splitlines() if line.strip().startswith("0 *"))
    assert figure in line0


def test_report_shows_each_iterations_benchmark_summaries_and_the_leak_check(tmp_path):
    """What `toolace-r eval` prints per benchmark is in report.json per iteration, on the console and in the HTML;
    so is the leak check the driver ran before the test sets."""
    from toolace_r.evaluate import benchmark_summaries
    from toolace_r.leaks import check_leaks
    from toolace_r.data.schema import Sample

    def with_summary(acc: float) -> dict:
        result = {f"apibank_l{i}": {"n": 20, "accuracy": acc, "refined_accuracy": acc, "mean_rounds": 1.0,
                                    "tokens": 0, "time_s": 0.0} for i in (1, 2)}
        result["overall"] = {"n": 40, "accuracy": acc, "refined_accuracy": acc, "mean_rounds": 1.0, "tokens": 0,
                             "time_s": 0.0}
        result["overall"]["summaries"] = benchmark_summaries(["apibank:x"], result)
        return result

    state = two_iteration_state()
    state["stages"]["baseline/eval"] = _stage(with_summary(0.25))
    state["stages"][iter_key(0, "eval")] = _stage(with_summary(0.5))
    item = Sample(id="t1", tools=[], messages=[{"role": "user", "content": "Hi!"}], truth=[])
    state["stages"]["leaks"] = _stage(check_leaks({"apibank": {"apibank_l1": [item]}},
                                                  [Sample(id="p9", tools=[], truth=[],
                                                          messages=[{"role": "user", "content": "hi"}])]))
    report = build_report(state, tmp_path)
    assert report["iterations"][0]["eval"]["summaries"]["apibank"]["single"]["apibank_l1"]["accuracy"] == 0.5
    assert report["leaks"]["sets"]["apibank"]["same_request_and_calls"] == 1
    text = format_summary(report)
    l1 = [ln for ln in text.splitlines() if ln.startswith("API-Bank apibank_l1")]
    lo, hi = wilson_interval(10, 20)
    assert len(l1) == 2 and f"0.500 [{lo:.3f}, {hi:.3f}]" in l1[1] and "untrained" in l1[0]
    assert "Leak check" in text and "t1 = pool p9" in text
    page = render_html(report, {})
    assert "Benchmark summaries of the test sets" in page and "API-Bank apibank_l2" in page
    assert "Leak check" in page and "t1 = p9" in page
