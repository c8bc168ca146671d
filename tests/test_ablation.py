"""Ablation: arm and seed configs, budget logic, aggregation over seeds on fake run dirs (fast), then a minimal
two-arm ablation end to end (slow)."""
from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from toolace_r import ablation
from toolace_r.ablation import (ABLATION_HTML, ABLATION_JSON, ARM_OVERRIDES, SEED_KEYS, arm_config, budget_check,
                                build_ablation_report, check_arms, check_seeds, format_table, render_html, run_ablation,
                                run_summary, seed_run_dir, selection_sizes, token_budget, write_ablation_report)
from toolace_r.config import load_config
from toolace_r.errors import ConfigError
from toolace_r.io import read_json, write_json, write_jsonl
from toolace_r.stats import mcnemar, t_interval
from toolace_r.train import build_schedule


def _cfg(tmp_path: Path, *extra: str):
    return load_config(None, [f"run.dir={tmp_path}", "ablation.token_budget=5000", *extra])


def test_arm_configs_differ_only_in_their_own_keys(tmp_path):
    cfg = _cfg(tmp_path, "select.seed_fraction=0.5", "run.max_iterations=2")
    arms = {a: arm_config(a, cfg, tmp_path, "/models/base", 0) for a in ARM_OVERRIDES}
    plain, full, rnd, norc = arms["plain_sft"], arms["full"], arms["random_select"], arms["no_refine_corpus"]
    assert plain.select.policy == "all" and plain.refine.corpus is False and plain.select.seed_fraction == 1.0
    assert full.select.policy == cfg.select.policy and full.refine.corpus is True and full.select.seed_fraction == 0.5
    assert rnd.select.policy == "random" and rnd.select.accumulate is False and rnd.refine.corpus is True
    assert norc.select.policy == cfg.select.policy and norc.refine.corpus is False
    for name, arm in arms.items():  # what every arm shares
        assert arm.model.path == "/models/base"
        assert arm.train.max_tokens == 5000
        assert arm.run.stop_when_selection_stalls is False and arm.run.stop_when_accuracy_stalls is False
        assert arm.run.max_iterations == 2 and arm.pool == cfg.pool and arm.eval == cfg.eval
        assert Path(arm.run.dir) == tmp_path / "arms" / name / "seed_0"
        assert (tmp_path / "arms" / name / "seed_0.yaml").is_file()


def test_budget_and_arm_list_are_checked(tmp_path):
    with pytest.raises(ConfigError, match="token_budget"):
        token_budget(load_config(None, [f"run.dir={tmp_path}"]))
    assert token_budget(load_config(None, ["train.max_tokens=123"])) == 123
    with pytest.raises(ConfigError, match="unknown arm 'nope'"):
        check_arms(["full", "nope"])
    with pytest.raises(ConfigError, match="add 'full'"):
        check_arms(["random_select", "plain_sft"])
    assert check_arms(["plain_sft", "full"]) == ["full", "plain_sft"]  # full always runs first
    with pytest.raises(ConfigError, match="test_every_iteration"):  # tokens_to_match needs the test curve
        run_ablation(load_config(None, [f"run.dir={tmp_path}", "train.max_tokens=100",
                                        "run.test_every_iteration=false"]))


def test_selection_sizes_read_from_the_full_arm(tmp_path):
    for it, n in ((0, 5), (1, 8)):
        write_json(tmp_path / f"iter_{it:03d}" / "selection.json", {"ids": [f"x{i}" for i in range(n)]})
    assert selection_sizes(tmp_path) == {0: 5, 1: 8}


# ------------------------------------------------------------------------------------------------ seeds
def test_each_seed_shifts_exactly_the_seed_keys_and_gets_its_own_run_dir(tmp_path):
    cfg = _cfg(tmp_path, "select.seed=10", "train.seed=5", "probe.generation.seed=7", "refine.seed=1")
    assert cfg.ablation.seeds == [0, 1, 2]  # the default
    runs = {s: arm_config("full", cfg, tmp_path, "/models/base", s) for s in (0, 2)}
    for s, run in runs.items():
        assert (run.probe.generation.seed, run.select.seed, run.refine.seed, run.train.seed) == (7 + s, 10 + s, 1 + s, 5 + s)
        assert Path(run.run.dir) == seed_run_dir(tmp_path, "full", s) == tmp_path / "arms" / "full" / f"seed_{s}"
        # shared by every seed: base model (and its init seed), pool, dev/test evaluation, budget
        assert run.model.path == "/models/base" and run.model.tiny == cfg.model.tiny
        assert run.pool == cfg.pool and run.eval == cfg.eval and run.train.max_tokens == 5000
    zero, two = runs[0], runs[2]
    assert zero.train.lr == two.train.lr and zero.select.policy == two.select.policy
    assert SEED_KEYS == ("probe.generation.seed", "select.seed", "refine.seed", "train.seed")


def test_seed_list_is_checked():
    assert check_seeds([3, 1]) == [3, 1]
    for bad, match in (([], "empty"), ([0, 0], "twice"), ([-1, 2, 3], ">= 0")):
        with pytest.raises(ConfigError, match=match):
            check_seeds(bad)


# ------------------------------------------------------------------------------------------------ fake seed-runs
GROUPS = ["simple"] * 3 + ["irrelevance"] * 3  # item q0..q2 simple, q3..q5 irrelevance


def _eval(single: str, refined: str) -> dict:
    """An eval.json object from two verdict strings ("110000": items q0, q1 right)."""
    def acc(v: str, idx: list[int]) -> float:
        return sum(v[i] == "1" for i in idx) / len(idx)

    every = list(range(len(single)))
    out = {c: {"n": 3, "accuracy": acc(single, [i for i in every if GROUPS[i] == c]),
               "refined_accuracy": acc(refined, [i for i in every if GROUPS[i] == c])} for c in ("simple", "irrelevance")}
    out["overall"] = {"n": len(single), "accuracy": acc(single, every), "refined_accuracy": acc(refined, every),
                      "accuracy_by_rounds": [acc(single, every), acc(refined, every)], "mean_rounds": 1.5}
    return out


def fake_run(root: Path, arm: str, seed: int, iters: list[tuple[str, str, int]], final: int | str | None,
             stopped: bool = True) -> Path:
    """A seed-run dir as the driver leaves it, without training: state.json (select/corpus/train results),
    iter_NNN/eval.json + eval/outputs.jsonl + selection.json, baseline/, report.json whose final_model is the dict
    {"iteration": final, ...} (int), a plain path (str), or absent (None)."""
    run_dir = seed_run_dir(root, arm, seed)
    stages = {"baseline/eval": {"wall_s": 1.0, "result": _eval("000111", "000111")}}
    for it, (single, refined, tokens) in enumerate(iters):
        d = run_dir / f"iter_{it:03d}"
        stages[f"iter_{it:03d}/select"] = {"wall_s": 0.5, "result": {"selected": 10 * (it + 1)}}
        stages[f"iter_{it:03d}/corpus"] = {"wall_s": 0.5, "result": {"rows": 20, "refine_samples": 5}}
        stages[f"iter_{it:03d}/train"] = {"wall_s": 2.0, "result": {"train_tokens": tokens, "steps": 3}}
        write_json(d / "selection.json", {"ids": [f"x{i}" for i in range(10 * (it + 1))]})
        write_json(d / "eval.json", _eval(single, refined))
        write_jsonl(d / "eval" / "outputs.jsonl", [
            {"id": f"q{i}", "group": "builtin", "valid": single[i] == "1", "refined_valid": refined[i] == "1"}
            for i in range(len(single))])
    write_json(run_dir / "baseline" / "eval.json", _eval("000111", "000111"))
    write_json(run_dir / "state.json", {"version": 1, "stages": stages, "history": [],
                                        "stopped": {"iteration": len(iters) - 1, "reason": "max"} if stopped else None})
    if isinstance(final, int):
        write_json(run_dir / "report.json", {"final_model": {
            "iteration": final, "model_dir": str(run_dir / f"iter_{final:03d}" / "model"), "metric": "accuracy",
            "value": 0.5, "reason": "best dev accuracy", "dev": {"n": 6, "accuracy": 0.5}}})
    elif isinstance(final, str):
        write_json(run_dir / "report.json", {"final_model": final})
    return run_dir


def _acc(v: str) -> float:
    return v.count("1") / len(v)


# (single, refined, train_tokens) per iteration, and the final iteration named by report.json (chosen on dev)
FULL_RUNS = {
    0: ([("100000", "100000", 100), ("111000", "111100", 120)], 1),
    1: ([("110000", "111000", 101), ("100000", "100000", 120)], 0),  # dev chose iteration 0
    2: ([("001100", "001100", 102), ("111110", "111110", 120)], 1),
}
PLAIN_RUNS = {
    0: ([("010000", "000000", 105), ("011000", "001000", 115)], 1),
    1: ([("000000", "000000", 105), ("110100", "100000", 115)], 1),
    2: ([("100000", "000000", 105), ("100001", "000001", 115)], 1),
}


def _fake_ablation(root: Path) -> dict:
    for arm, runs in (("full", FULL_RUNS), ("plain_sft", PLAIN_RUNS)):
        for seed, (iters, final) in runs.items():
            fake_run(root, arm, seed, iters, final)
    return build_ablation_report(root, ["full", "plain_sft"], [0, 1, 2], 100, 2)


def test_final_figures_are_mean_and_t_interval_over_seeds_of_the_dev_chosen_models(tmp_path):
    report = _fake_ablation(tmp_path)
    full = report["arms"]["full"]["final"]
    assert full["iteration"] == {"0": 1, "1": 0, "2": 1}
    singles = [_acc("111000"), _acc("110000"), _acc("111110")]  # seed 1's final model is iteration 0
    refined = [_acc("111100"), _acc("111000"), _acc("111110")]
    for key, values in (("accuracy", singles), ("refined_accuracy", refined)):
        mean, lo, hi = t_interval(values)
        assert full[key]["values"] == pytest.approx(values) and full[key]["seeds"] == [0, 1, 2]
        assert full[key]["mean"] == pytest.approx(mean) and full[key]["ci95"] == pytest.approx([lo, hi])
    assert full["n_seeds"] == 3
    assert full["categories"]["simple"]["accuracy"]["values"] == pytest.approx([1.0, 2 / 3, 1.0])
    assert full["train_tokens"]["values"] == [220, 101, 222]  # tokens up to the final model
    # per iteration: mean over seeds with the same interval
    it0 = report["arms"]["full"]["iterations"][0]
    values = [_acc("100000"), _acc("110000"), _acc("001100")]
    assert it0["accuracy"]["mean"] == pytest.approx(t_interval(values)[0])
    assert it0["accuracy"]["ci95"] == pytest.approx(list(t_interval(values)[1:]))
    assert it0["train_tokens"]["values"] == [100, 101, 102]
    assert report["baseline"]["accuracy"] == 0.5 and report["seeds"] == [0, 1, 2]
    assert report["budget"]["per_iteration"][1]["spread"] == pytest.approx(5 / 115)
    assert json.loads(json.dumps(report)) == report  # ablation.json round-trips


def test_paired_comparison_pools_item_verdicts_over_seeds(tmp_path):
    (cmp,) = _fake_ablation(tmp_path)["comparisons"]
    assert (cmp["a"], cmp["b"], cmp["seeds"]) == ("full", "plain_sft", [0, 1, 2])
    # hand count, final models — single: s0 111000 vs 011000 → a 1; s1 110000 vs 110100 → b 1;
    # s2 111110 vs 100001 → a 4, b 1.  refined: s0 111100 vs 001000 → a 3; s1 111000 vs 100000 → a 2;
    # s2 111110 vs 000001 → a 5, b 1.
    single, refined = cmp["single"], cmp["refined"]
    assert (single["n"], single["a_only"], single["b_only"]) == (18, 5, 2)
    assert single["p_value"] == pytest.approx(58 / 128)  # 2 · P(X ≤ 2), X ~ Bin(7, ½)
    assert (refined["n"], refined["a_only"], refined["b_only"]) == (18, 10, 1)
    assert refined["p_value"] == pytest.approx(24 / 2048)
    assert refined["p_value"] == mcnemar([True] * 10 + [False], [False] * 10 + [True])["p_value"]
    diffs = [_acc("111000") - _acc("011000"), _acc("110000") - _acc("110100"), _acc("111110") - _acc("100001")]
    assert single["accuracy_diff"]["values"] == pytest.approx(diffs)
    assert single["accuracy_diff"]["ci95"] == pytest.approx(list(t_interval(diffs)[1:]))
    assert single["unmatched_items"] == 0 and single["seeds_paired"] == [0, 1, 2]


def test_tokens_to_match_takes_the_first_iteration_at_plain_sfts_final_accuracy(tmp_path):
    t = _fake_ablation(tmp_path)["tokens_to_match"]
    by_seed = {p["seed"]: p for p in t["per_seed"]}
    # seed 0: target 2/6; full 1/6 then 3/6 → iteration 1, 100 + 120 tokens
    assert (by_seed[0]["iteration"], by_seed[0]["tokens"], by_seed[0]["reference_tokens"]) == (1, 220, 220)
    # seed 1: target 3/6; full reaches 2/6 at best → never
    assert by_seed[1]["iteration"] is None and by_seed[1]["tokens"] is None and by_seed[1]["ratio"] is None
    # seed 2: target 2/6; full's iteration 0 has exactly 2/6 (≥ counts) → 102 tokens
    assert (by_seed[2]["iteration"], by_seed[2]["tokens"]) == (0, 102)
    assert by_seed[2]["ratio"] == pytest.approx(102 / 220)
    assert (t["n_seeds"], t["reached"]) == (3, 2)
    assert t["tokens"]["values"] == [220, 102] and t["tokens"]["mean"] == pytest.approx(161)
    assert t["reference_tokens"]["mean"] == pytest.approx(220)


def test_final_model_falls_back_to_the_last_iteration_and_unfinished_runs_do_not_count(tmp_path):
    iters = [("100000", "100000", 10), ("110000", "110000", 10)]
    path_style = run_summary(fake_run(tmp_path, "full", 0, iters, "/old/report/path"))
    assert path_style["final"]["iteration"] == 1 and path_style["final"]["source"] == "last iteration"
    assert run_summary(fake_run(tmp_path, "full", 1, iters, None))["final"]["iteration"] == 1
    in_state = fake_run(tmp_path, "full", 3, iters, None)  # no report.json yet: the driver's state.json decision
    state = read_json(in_state / "state.json")
    write_json(in_state / "state.json", dict(state, final_model={"iteration": 0, "model_dir": "m", "metric": "accuracy"}))
    assert run_summary(in_state)["final"]["iteration"] == 0
    unfinished = run_summary(fake_run(tmp_path, "full", 2, iters, 0, stopped=False))
    assert unfinished["final"] is None and len(unfinished["iterations"]) == 2
    report = build_ablation_report(tmp_path, ["full"], [0, 1, 2], 10, 2)
    assert report["arms"]["full"]["final"]["accuracy"]["seeds"] == [0, 1]
    assert report["arms"]["full"]["iterations"][1]["accuracy"]["n"] == 3  # per-iteration figures still shown
    assert report["comparisons"] == [] and report["tokens_to_match"] is None
    assert run_summary(tmp_path / "never_started")["iterations"] == []


def test_report_files_tables_and_html_show_intervals_and_p_values(tmp_path):
    _fake_ablation(tmp_path)
    report = write_ablation_report(tmp_path, ["full", "plain_sft"], [0, 1, 2], 100, 2)
    assert read_json(tmp_path / ABLATION_JSON)["comparisons"][0]["single"]["a_only"] == 5
    assert {p.name for p in (tmp_path / "plots").iterdir()} == {"accuracy.png", "rounds.png", "categories.png"}
    mean, lo, hi = t_interval([_acc("111000"), _acc("110000"), _acc("111110")])
    ci = f"{mean:.3f} [{lo:.3f}, {hi:.3f}]"
    text = format_table(report)
    assert ci in text and "0.012" in text and "0.453" in text  # the p-values: refined, single
    assert "reached plain_sft's final test accuracy in 2 of 3 seeds" in text
    page = (tmp_path / ABLATION_HTML).read_text()
    assert ci in page and "McNemar" in page and "0.453" in page and page.count("data:image/png") == 3
    assert ci in render_html(report, {})  # the page needs no plots


def test_random_select_of_seed_s_gets_full_seed_s_sizes_and_every_run_reuses_one_baseline(tmp_path, monkeypatch):
    """run_ablation's orchestration with the driver replaced by a fake that records its calls (no training)."""
    calls = []

    def fake_run_arm(cfg, random_sizes):
        run_dir = Path(cfg.run.dir)
        state = read_json(run_dir / "state.json") if (run_dir / "state.json").is_file() else None
        calls.append((run_dir.parent.name, run_dir.name, random_sizes, state and list(state["stages"])))
        stages = dict(state["stages"]) if state else {"pool": {"wall_s": 1.0, "result": {}},
                                                      "baseline/dev_eval": {"wall_s": 1.0, "result": {}},
                                                      "baseline/eval": {"wall_s": 1.0, "result": {}}}
        if run_dir.parent.name == "full":  # full's seed s selects 10 + s, then 20 + s samples
            seed = cfg.train.seed - 4
            for it, n in enumerate((10 + seed, 20 + seed)):
                write_json(run_dir / f"iter_{it:03d}" / "selection.json", {"ids": [f"x{i}" for i in range(n)]})
        write_json(run_dir / "baseline" / "eval.json", _eval("000111", "000111"))
        write_json(run_dir / "state.json", {"version": 1, "stages": stages, "history": [],
                                            "stopped": {"iteration": 1, "reason": "max"}})
        return {}

    monkeypatch.setattr(ablation, "_run_arm", fake_run_arm)
    monkeypatch.setattr("toolace_r.ray_session.start_or_join", lambda cfg: False)
    cfg = _cfg(tmp_path / "abl", f"model.path={tmp_path / 'model'}", "train.seed=4", "ablation.seeds=[0,1,2]",
               "ablation.arms=[full,random_select,plain_sft]")
    report = run_ablation(cfg)
    order = [(arm, seed) for arm, seed, _, _ in calls]
    assert order[0] == ("full", "seed_0")  # evaluates the untrained model for everyone
    assert order.index(("random_select", "seed_2")) > order.index(("full", "seed_2"))
    assert sorted(order) == sorted((a, f"seed_{s}") for a in ("full", "random_select", "plain_sft") for s in (0, 1, 2))
    for arm, seed, sizes, before in calls:
        s = int(seed[5:])
        assert sizes == ({0: 10 + s, 1: 20 + s} if arm == "random_select" else None)
        # the untrained model's dev and test evaluations are shared, nothing else
        assert before == (None if (arm, seed) == ("full", "seed_0") else ["baseline/dev_eval", "baseline/eval"])
    assert set(report["arms"]) == {"full", "random_select", "plain_sft"} and (tmp_path / "abl" / ABLATION_JSON).is_file()


def test_budget_check_flags_a_spread_above_five_percent():
    arm = lambda *t: {"iterations": [{"train_tokens": x} for x in t], "train_tokens_total": sum(t)}  # noqa: E731
    ok = budget_check({"a": arm(1000, 1000), "b": arm(1030, 990)})
    assert ok["within_tolerance"] and ok["per_iteration"][0]["spread"] == pytest.approx(0.03)
    bad = budget_check({"a": arm(1000, 1000), "b": arm(1000, 1100)})
    assert not bad["within_tolerance"] and bad["per_iteration"][1]["spread"] == pytest.approx(0.10)


@pytest.mark.parametrize("n_rows", [12, 200])
def test_token_budget_schedule_reaches_the_budget_with_small_or_large_sets(n_rows):
    """Small sets are cycled for more epochs, large ones cut short; the stop is the first step at the budget."""
    rng = random.Random(n_rows)
    lengths = [rng.randint(40, 120) for _ in range(n_rows)]
    budget = 6000
    tcfg = load_config(None, [f"train.max_tokens={budget}", "train.tokens_per_micro_batch=400", "train.epochs=1"]).train
    schedule, steps = build_schedule(n_rows, lengths, tcfg)
    tokens = [sum(lengths[i] for i in b) for b in schedule]
    assert len(schedule) == steps and sum(tokens) >= budget > sum(tokens[:-1])
    one_epoch = sum(lengths)
    assert (sum(tokens) > one_epoch) == (one_epoch < budget)  # cycled only when one epoch is short of the budget


def test_token_budget_schedule_gives_two_workers_the_same_steps():
    """Two shards with different lengths: agree_min stands in for the all-reduce; the run reaches the budget."""
    rng = random.Random(1)
    shards = [[rng.randint(30, 80) for _ in range(25)], [rng.randint(60, 120) for _ in range(25)]]
    tcfg = load_config(None, ["train.max_tokens=9000", "train.tokens_per_micro_batch=300"]).train
    # Simulate lock-step collectives: run both workers' plans, each call answering with the min over both.
    import threading

    barrier, values, results = threading.Barrier(2), [None, None], [None, None]

    def worker(rank):
        def agree_min(n):
            values[rank] = n
            barrier.wait()
            out = min(values)
            barrier.wait()
            return out
        results[rank] = build_schedule(len(shards[rank]), shards[rank], tcfg, agree_min, world=2)

    threads = [threading.Thread(target=worker, args=(r,)) for r in (0, 1)]
    [t.start() for t in threads]
    [t.join(timeout=30) for t in threads]
    (sa, na), (sb, nb) = results
    assert na == nb and len(sa) == len(sb) == na
    total = sum(shards[0][i] for b in sa for i in b) + sum(shards[1][i] for b in sb for i in b)
    assert 9000 <= total <= 9000 * 1.05


# ------------------------------------------------------------------------------------------------ end to end (slow)
@pytest.mark.slow
def test_minimal_ablation_spends_equal_budgets_and_reports_every_arm(tmp_path, ray_local):
    """Two arms × one seed (seed 3, so the seed overrides are visible) — as cheap as a two-run ablation gets; the
    aggregation over several seeds is tested on fake run dirs above."""
    cfg = load_config(None, [
        f"run.dir={tmp_path / 'abl'}", "run.max_iterations=1", "ablation.arms=[full,plain_sft]", "ablation.seeds=[3]",
        "ablation.token_budget=6000", "model.prompt_style=compact", "model.tiny.vocab_size=512",
        "model.tiny.hidden_size=64", "model.tiny.num_layers=2", "model.tiny.intermediate_size=128",
        "pool.builtin.n_train=120", "pool.builtin.n_heldout=30", "eval.limit=30", "eval.max_rounds=2",
        "eval.generation.max_new_tokens=32", "probe.k=2", "probe.generation.max_new_tokens=32",
        "select.seed_fraction=0.5", "train.num_workers=1", "train.tokens_per_micro_batch=1024",
        "train.warmup_steps=1", "train.checkpoint_every=0",
    ])
    report = run_ablation(cfg)
    root = tmp_path / "abl"
    assert (root / ABLATION_JSON).is_file() and (root / ABLATION_HTML).is_file()
    assert set(report["arms"]) == {"full", "plain_sft"} and report["seeds"] == [3]
    tokens = {}
    for name, arm in report["arms"].items():
        (run,) = arm["runs"]
        assert run["seed"] == 3 and Path(run["run_dir"]) == root / "arms" / name / "seed_3"
        assert load_config(root / "arms" / name / "seed_3.yaml").train.seed == cfg.train.seed + 3
        assert len(run["iterations"]) == 1, name
        it = run["iterations"][0]
        ev = it["eval"]
        assert 0.0 <= ev["accuracy"] <= 1.0 and len(ev["accuracy_by_rounds"]) == 2
        assert ev["accuracy_by_rounds"][0] == pytest.approx(ev["accuracy"])
        assert ev["accuracy_by_rounds"][-1] == pytest.approx(ev["refined_accuracy"])
        assert set(ev["categories"]) >= {"simple", "irrelevance"}
        assert it["wall_s"] > 0
        assert run["final"] is not None and arm["final"]["accuracy"]["values"] == [run["final"]["eval"]["accuracy"]]
        tokens[name] = it["train_tokens"]
    # plain SFT trained on the whole pool, full on half of it — yet both processed the same token budget
    assert report["arms"]["plain_sft"]["runs"][0]["iterations"][0]["selected"] > \
        report["arms"]["full"]["runs"][0]["iterations"][0]["selected"]
    assert all(6000 <= t for t in tokens.values())
    assert max(tokens.values()) / min(tokens.values()) - 1 <= 0.05, tokens
    assert report["budget"]["within_tolerance"]
    # one shared base model; the untrained model's eval is shared, not rerun
    assert (root / "base_model" / "config.json").is_file()
    assert report["arms"]["plain_sft"]["runs"][0]["baseline"] == report["arms"]["full"]["runs"][0]["baseline"]
    (cmp,) = report["comparisons"]
    assert cmp["single"]["n"] == report["arms"]["full"]["runs"][0]["final"]["eval"]["n"] > 0 and cmp["seeds"] == [3]
    assert "plain_sft" in format_table(report)


def test_accuracy_by_rounds_is_the_accuracy_of_stopping_at_each_round():
    """evaluate.summarize: round 1 = single pass, last round = refined; an item fixed at round 2 counts from 2 on."""
    from toolace_r.evaluate import summarize

    base = dict(group="simple", first_answer="a", answer="b", rounds=2, tokens=1, forward_passes=1, time_s=0.0,
                refined_error_type="")
    rows = [dict(base, valid=False, refined_valid=True, valid_by_round=[False, True, True]),
            dict(base, valid=True, refined_valid=False, valid_by_round=[True, False, False]),
            dict(base, valid=True, refined_valid=True, valid_by_round=[True, True, True])]
    m = summarize(rows)["overall"]
    assert m["accuracy_by_rounds"] == pytest.approx([2 / 3, 2 / 3, 2 / 3])
    assert m["accuracy_by_rounds"][0] == m["accuracy"] and m["accuracy_by_rounds"][-1] == m["refined_accuracy"]
    rows[0]["valid_by_round"] = [False, False, True]
    assert summarize(rows)["overall"]["accuracy_by_rounds"] == pytest.approx([2 / 3, 1 / 3, 2 / 3])
