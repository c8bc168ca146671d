"""Ablation: arm configs and budget logic (fast), then a minimal two-arm ablation end to end (slow)."""
from __future__ import annotations

import random
from pathlib import Path

import pytest

from toolace_r.ablation import (ABLATION_HTML, ABLATION_JSON, ARM_OVERRIDES, arm_config, budget_check, check_arms,
                                format_table, run_ablation, selection_sizes, token_budget)
from toolace_r.config import load_config
from toolace_r.errors import ConfigError
from toolace_r.io import write_json
from toolace_r.train import build_schedule


def _cfg(tmp_path: Path, *extra: str):
    return load_config(None, [f"run.dir={tmp_path}", "ablation.token_budget=5000", *extra])


def test_arm_configs_differ_only_in_their_own_keys(tmp_path):
    cfg = _cfg(tmp_path, "select.seed_fraction=0.5", "run.max_iterations=2")
    arms = {a: arm_config(a, cfg, tmp_path, "/models/base") for a in ARM_OVERRIDES}
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
        assert Path(arm.run.dir) == tmp_path / "arms" / name
        assert (tmp_path / "arms" / f"{name}.yaml").is_file()


def test_budget_and_arm_list_are_checked(tmp_path):
    with pytest.raises(ConfigError, match="token_budget"):
        token_budget(load_config(None, [f"run.dir={tmp_path}"]))
    assert token_budget(load_config(None, ["train.max_tokens=123"])) == 123
    with pytest.raises(ConfigError, match="unknown arm 'nope'"):
        check_arms(["full", "nope"])
    with pytest.raises(ConfigError, match="add 'full'"):
        check_arms(["random_select", "plain_sft"])
    assert check_arms(["plain_sft", "full"]) == ["full", "plain_sft"]  # full always runs first


def test_selection_sizes_read_from_the_full_arm(tmp_path):
    for it, n in ((0, 5), (1, 8)):
        write_json(tmp_path / f"iter_{it:03d}" / "selection.json", {"ids": [f"x{i}" for i in range(n)]})
    assert selection_sizes(tmp_path) == {0: 5, 1: 8}


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
    cfg = load_config(None, [
        f"run.dir={tmp_path / 'abl'}", "run.max_iterations=1", "ablation.arms=[full,plain_sft]",
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
    assert set(report["arms"]) == {"full", "plain_sft"}
    tokens = {}
    for name, arm in report["arms"].items():
        assert len(arm["iterations"]) == 1, name
        it = arm["iterations"][0]
        ev = it["eval"]
        assert 0.0 <= ev["accuracy"] <= 1.0 and len(ev["accuracy_by_rounds"]) == 2
        assert ev["accuracy_by_rounds"][0] == pytest.approx(ev["accuracy"])
        assert ev["accuracy_by_rounds"][-1] == pytest.approx(ev["refined_accuracy"])
        assert set(ev["categories"]) >= {"simple", "irrelevance"}
        assert it["wall_s"] > 0
        tokens[name] = it["train_tokens"]
    # plain SFT trained on the whole pool, full on half of it — yet both processed the same token budget
    assert report["arms"]["plain_sft"]["iterations"][0]["selected"] > report["arms"]["full"]["iterations"][0]["selected"]
    assert all(6000 <= t for t in tokens.values())
    assert max(tokens.values()) / min(tokens.values()) - 1 <= 0.05, tokens
    assert report["budget"]["within_tolerance"]
    # one shared base model; the untrained model's eval is shared, not rerun
    assert Path(report["arms"]["full"]["run_dir"]).parent.parent == root and (root / "base_model" / "config.json").is_file()
    assert report["arms"]["plain_sft"]["baseline"] == report["arms"]["full"]["baseline"]
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
