"""Model-aware selection: every policy, the iteration-0 seed subset, accumulation, counts, errors, the writer/CLI."""
from __future__ import annotations

import json
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from toolace_r.config import SelectConfig
from toolace_r.errors import ConfigError, DataError
from toolace_r.select import read_selection, seed_subset, select, write_selection

K = 4


def rows_for(n_correct: dict[str, int], k: int = K) -> list[dict]:
    return [{"id": i, "k": k, "n_correct": c, "pass_rate": c / k} for i, c in n_correct.items()]


# 4 mastered, 6 learnable (p = 1/4 .. 3/4), 10 too hard
POOL = {**{f"m{i}": K for i in range(4)}, **{f"l{i}": 1 + i % 3 for i in range(6)}, **{f"h{i}": 0 for i in range(10)}}


def test_learnable_keeps_partial_drops_mastered_and_mixes_in_a_fraction_of_too_hard():
    sel = select(rows_for(POOL), SelectConfig(policy="learnable", too_hard_fraction=0.3, accumulate=False), 1)
    learnable = {f"l{i}" for i in range(6)}
    mixed = {i for i in sel.ids if i.startswith("h")}
    assert learnable <= set(sel.ids)
    assert not any(i.startswith("m") for i in sel.ids)  # p = 1: mastered, dropped
    assert len(mixed) == 3  # round(0.3 × 10)
    assert all(sel.reasons[i] == "learnable" for i in learnable)
    assert all(sel.reasons[i] == "too_hard_mixed_in" for i in mixed)
    assert sel.counts == {"probed": 20, "mastered": 4, "too_hard": 10, "learnable": 6, "too_hard_mixed_in": 3,
                          "chosen_now": 9, "accumulated": 0, "selected": 9, "new": 9}
    assert sel.ids == sorted(sel.ids)


def test_learnable_with_no_mix_in_holds_back_every_too_hard_sample():
    sel = select(rows_for(POOL), SelectConfig(too_hard_fraction=0.0, accumulate=False), 2)
    assert set(sel.ids) == {f"l{i}" for i in range(6)}


def test_mixed_in_draw_is_seeded_and_independent_of_row_order():
    cfg = SelectConfig(too_hard_fraction=0.5, seed=11, accumulate=False)
    rows = rows_for(POOL)
    shuffled = rows[:]
    random.Random(5).shuffle(shuffled)
    assert select(rows, cfg, 1).ids == select(shuffled, cfg, 1).ids
    draws = {tuple(select(rows, SelectConfig(too_hard_fraction=0.5, seed=s, accumulate=False), 1).ids) for s in range(6)}
    assert len(draws) > 1  # the seed matters


def test_threshold_keeps_the_closed_interval():
    rows = rows_for({"a": 0, "b": 1, "c": 2, "d": 3, "e": 4})
    sel = select(rows, SelectConfig(policy="threshold", min_pass=0.25, max_pass=0.75, accumulate=False), 1)
    assert sel.ids == ["b", "c", "d"]
    assert set(sel.reasons.values()) == {"in_threshold"}
    with pytest.raises(ConfigError, match="min_pass"):
        select(rows, SelectConfig(policy="threshold", min_pass=0.8, max_pass=0.2), 1)


def test_all_keeps_everything_even_mastered():
    sel = select(rows_for(POOL), SelectConfig(policy="all", accumulate=False), 1)
    assert sel.ids == sorted(POOL)
    assert sel.counts["mastered"] == 4 and sel.counts["selected"] == 20


def test_random_has_the_requested_size_and_ignores_pass_rates():
    rows = rows_for(POOL)
    sel = select(rows, SelectConfig(policy="random", random_size=7, accumulate=False), 1)
    assert len(sel.ids) == 7 and set(sel.reasons.values()) == {"random"}
    # the ablation passes the size of the model-aware selection it compares against
    model_aware = select(rows, SelectConfig(accumulate=False), 1)
    same_size = select(rows, SelectConfig(policy="random", accumulate=False), 1, random_size=len(model_aware.ids))
    assert len(same_size.ids) == len(model_aware.ids)
    with pytest.raises(ConfigError, match="random_size"):
        select(rows, SelectConfig(policy="random", random_size=0), 1)


def test_iteration_zero_without_a_probe_is_the_seed_subset():
    ids = [f"s{i:03d}" for i in range(200)]
    plain = [{"id": i} for i in ids]  # before any training there may be no probe at all
    by_fraction = select(plain, SelectConfig(seed_fraction=0.25), 0)
    assert len(by_fraction.ids) == 50 and set(by_fraction.reasons.values()) == {"seed_subset"}
    by_size = select(plain, SelectConfig(seed_size=30, seed_fraction=0.9), 0)
    assert len(by_size.ids) == 30  # seed_size overrides seed_fraction
    assert select(plain, SelectConfig(seed_fraction=1.0), 0).ids == sorted(ids)
    assert select(plain, SelectConfig(seed_size=500), 0).ids == sorted(ids)
    assert seed_subset(reversed(ids), SelectConfig(seed_size=30)) == by_size.ids  # order-independent
    # a probed starting model (warm base): iteration 0 selects by the policy, the seed subset is not used
    probed = select(rows_for(POOL), SelectConfig(seed_size=5, too_hard_fraction=0.0, accumulate=False), 0)
    assert probed.ids == select(rows_for(POOL), SelectConfig(too_hard_fraction=0.0, accumulate=False), 1).ids
    assert set(probed.reasons.values()) == {"learnable"}
    with pytest.raises(ConfigError, match="seed_fraction"):
        select(plain, SelectConfig(seed_fraction=0.0), 0)


def test_accumulation_unions_with_the_previous_selection():
    previous = {"m0", "m1", "h0", "gone"}  # mastered since, still too hard, or not even in this probe
    sel = select(rows_for(POOL), SelectConfig(too_hard_fraction=0.0, accumulate=True), 2, previous)
    assert previous <= set(sel.ids)
    assert {f"l{i}" for i in range(6)} <= set(sel.ids)
    assert all(sel.reasons[i] == "accumulated" for i in previous)
    assert sel.counts["accumulated"] == 4 and sel.counts["new"] == 6 and sel.counts["selected"] == 10
    # a previously selected id chosen again keeps its current reason and is not "new"
    again = select(rows_for(POOL), SelectConfig(too_hard_fraction=0.0), 3, {"l0"})
    assert again.reasons["l0"] == "learnable" and again.counts["new"] == 5
    no_acc = select(rows_for(POOL), SelectConfig(too_hard_fraction=0.0, accumulate=False), 2, previous)
    assert set(no_acc.ids) == {f"l{i}" for i in range(6)} and no_acc.counts["new"] == 6


def test_bad_probe_rows_are_named():
    with pytest.raises(DataError, match="duplicate id 'a'"):
        select([{"id": "a", "pass_rate": 0.5}, {"id": "a", "pass_rate": 0.5}], SelectConfig(), 1)
    with pytest.raises(DataError, match="'b'.*outside"):
        select([{"id": "b", "pass_rate": 1.5}], SelectConfig(), 1)
    with pytest.raises(DataError, match="'c' has no pass_rate"):
        select([{"id": "c"}], SelectConfig(), 1)
    with pytest.raises(DataError, match="record 1.*no id"):
        select([{"id": "x", "pass_rate": 0.0}, {"pass_rate": 0.0}], SelectConfig(), 1)
    with pytest.raises(DataError, match="n_correct"):
        select([{"id": "d", "k": 2, "n_correct": 3, "pass_rate": 1.0}], SelectConfig(), 1)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, K), min_size=0, max_size=40), st.floats(0, 1), st.booleans())
def test_learnable_invariants(n_correct, fraction, accumulate):
    rows = rows_for({f"x{i}": c for i, c in enumerate(n_correct)})
    sel = select(rows, SelectConfig(too_hard_fraction=fraction, accumulate=accumulate), 1)
    by_id = {r["id"]: r["n_correct"] for r in rows}
    assert all(by_id[i] < K for i in sel.ids)  # never a mastered sample
    assert all(i in sel.ids for i, c in by_id.items() if 0 < c < K)  # every learnable one
    too_hard = sum(c == 0 for c in by_id.values())
    assert sel.counts["too_hard_mixed_in"] == round(fraction * too_hard)
    assert sel.counts["mastered"] + sel.counts["learnable"] + sel.counts["too_hard"] == len(rows)
    assert set(sel.reasons) == set(sel.ids)


def test_writer_round_trips_and_cli_selects_from_probe_parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from toolace_r.cli import main

    rows = rows_for(POOL)
    probe_dir = tmp_path / "probe"
    probe_dir.mkdir()
    pq.write_table(pa.Table.from_pylist(rows[:10]), probe_dir / "part-0.parquet")
    pq.write_table(pa.Table.from_pylist(rows[10:]), probe_dir / "part-1.parquet")

    expected = select(rows, SelectConfig(too_hard_fraction=0.2), 1)
    path = write_selection(expected, tmp_path / "direct", iteration=1)
    assert read_selection(path).ids == expected.ids
    assert json.loads(open(path).read())["counts"]["selected"] == len(expected.ids)

    assert main(["select", "--probe", str(probe_dir), "--iteration", "1", "--out", str(tmp_path / "cli"),
                 "select.too_hard_fraction=0.2"]) == 0
    assert read_selection(tmp_path / "cli").ids == expected.ids
    # iteration 2 with the previous selection: accumulation through the CLI
    assert main(["select", "--probe", str(probe_dir), "--iteration", "2", "--out", str(tmp_path / "cli2"),
                 "--previous", str(tmp_path / "cli" / "selection.json"), "select.too_hard_fraction=0.0"]) == 0
    assert set(expected.ids) <= set(read_selection(tmp_path / "cli2").ids)
