"""Probing on a local Ray with a tiny model: one row per sample, k answers, verdicts = calls.check, atomic output;
a model forced (through the real generate path) to say the gold answer gets p = 1 and is dropped as mastered."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pyarrow as pa
import pytest
import ray.cloudpickle

from toolace_r.calls import check
from toolace_r.config import BuiltinPoolConfig, Config, SelectConfig, load_config
from toolace_r.data.pool import load_builtin
from toolace_r.data.prompts import render_answer
from toolace_r.errors import ConfigError, DataError
from toolace_r.models import load_tokenizer
from toolace_r.probe import SUMMARY_FILE, ProbeActor, _samples_from_table, probe, read_probe
from toolace_r.select import select
from toolace_r.testing import forced_text

# Ray workers cannot import this test module by name: ship the forcing actor class by value.
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


class GoldForcingActor(ProbeActor):
    """The real probe actor whose model is constrained (a guide, toolace_r.testing) to emit the gold answer for the ids in
    `forced_ids`, written as `written` writes it. Prompt rendering, generate, decoding, parsing and checking are all
    the production code."""

    forced_ids: frozenset[str] = frozenset()

    @staticmethod
    def written(gold: str) -> str:
        return gold

    def guides(self, samples, prompts):
        tok = self.generator.tokenizer
        return [forced_text(tok, self.written(render_answer(s.gold_calls()))) if s.id in self.forced_ids else None
                for s in samples]


def fenced(gold: str) -> str:
    """The gold answer in a ```python fence: the lenient decoder reads it, BFCL's decoder (and so the leaderboard)
    rejects it (design/BFCL_RULES.md)."""
    return f"```python\n{gold}\n```"


@pytest.fixture(scope="module")
def pool():
    train, _ = load_builtin(BuiltinPoolConfig(n_train=60, n_heldout=5, seed=1))
    by_category: dict[str, list] = {}
    for s in train:
        by_category.setdefault(s.category, []).append(s)
    picked = [s for group in by_category.values() for s in group[:3]]  # every category, incl. irrelevance
    assert len({s.category for s in picked}) >= 3
    return picked


def probe_cfg(k: int = 3, max_new_tokens: int = 16, *overrides: str) -> Config:
    cfg = load_config(None, list(overrides))  # the defaults, as a job gets them
    cfg.probe.k = k
    cfg.probe.num_actors = 1
    cfg.probe.cpus_per_actor = 1.0
    cfg.probe.batch_size = 4
    cfg.probe.generation.max_new_tokens = max_new_tokens
    cfg.probe.generation.temperature = 1.0
    return cfg


def test_every_sample_gets_one_row_with_k_answers_judged_by_the_checker(ray_local, tiny_model_dir, pool, tmp_path):
    out = probe(probe_cfg(k=3), str(tiny_model_dir), pool, tmp_path / "probe")
    rows = read_probe(out)
    assert sorted(r["id"] for r in rows) == sorted(s.id for s in pool)
    by_id = {s.id: s for s in pool}
    for row in rows:
        sample = by_id[row["id"]]
        assert row["k"] == 3 and len(row["answers"]) == 3 and len(row["verdicts"]) == 3 and len(row["n_tokens"]) == 3
        assert 0.0 <= row["pass_rate"] <= 1.0
        assert row["category"] == sample.category
        recomputed = [check(a, sample.tools, sample.truth, sample.category, "bfcl") for a in row["answers"]]
        assert [json.loads(v) for v in row["verdicts"]] == [v.to_dict() for v in recomputed]
        assert row["n_correct"] == sum(v.valid for v in recomputed)
        assert row["pass_rate"] == row["n_correct"] / 3
        assert all(0 <= n <= 16 for n in row["n_tokens"])
    summary = json.loads((Path(out) / SUMMARY_FILE).read_text())
    assert summary["n"] == len(pool) and summary["answers"] == 3 * len(pool)
    assert summary["mastered"] + summary["learnable"] + summary["too_hard"] == len(pool)


def test_forced_gold_answers_get_pass_rate_one_and_are_dropped_as_mastered(ray_local, tiny_model_dir, pool, tmp_path):
    import ray.data

    forced = frozenset(s.id for s in pool[::2])
    actor = type("ForcingActor", (GoldForcingActor,), {"forced_ids": forced})
    out_dir = tmp_path / "probe"
    out_dir.mkdir()
    (out_dir / "stale.parquet").write_text("an older, broken result")  # must be replaced as a whole
    dataset = ray.data.from_items([s.to_row() for s in pool])  # probe also takes a Dataset the caller built
    tokenizer = load_tokenizer(str(tiny_model_dir))
    longest = max(len(tokenizer(render_answer(s.gold_calls()))["input_ids"]) for s in pool if s.id in forced)
    out = probe(probe_cfg(k=2, max_new_tokens=longest + 2), str(tiny_model_dir), dataset, out_dir, actor_cls=actor)

    rows = {r["id"]: r for r in read_probe(out)}
    assert set(rows) == {s.id for s in pool}
    assert not (out_dir / "stale.parquet").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp dirs left behind
    for s in pool:
        if s.id in forced:
            assert rows[s.id]["answers"] == [render_answer(s.gold_calls())] * 2
            assert rows[s.id]["pass_rate"] == 1.0, rows[s.id]["verdicts"]
    assert any(rows[i]["pass_rate"] < 1.0 for i in rows.keys() - forced)  # the random model does not pass by luck

    selection = select(rows.values(), SelectConfig(policy="learnable", too_hard_fraction=1.0, accumulate=False), 1)
    assert forced.isdisjoint(selection.ids)  # mastered: dropped
    assert selection.counts["mastered"] >= len(forced)
    assert (rows.keys() - forced) - {i for i in rows if rows[i]["pass_rate"] == 1.0} <= set(selection.ids)


def test_the_probe_judges_with_the_leaderboards_decoder_by_default(ray_local, tiny_model_dir, pool, tmp_path):
    """A right call in a form BFCL's decoder rejects (a ```python fence) is a wrong answer to the probe with the
    default config — it judges as the evaluation does (eval.decoder = bfcl), so such an answer never becomes a
    "keep" row of the refinement corpus. With eval.decoder=lenient the probe follows and accepts it."""
    wants_call = [s for s in pool if s.truth][:3]
    forced = frozenset(s.id for s in wants_call)
    actor = type("FencingActor", (GoldForcingActor,), {"forced_ids": forced, "written": staticmethod(fenced)})
    tokenizer = load_tokenizer(str(tiny_model_dir))
    longest = max(len(tokenizer(fenced(render_answer(s.gold_calls())))["input_ids"]) for s in wants_call)
    for overrides, valid in (((), False), (("eval.decoder=lenient",), True)):
        cfg = probe_cfg(1, longest + 2, *overrides)
        assert cfg.probe.decoder == ("lenient" if valid else "bfcl")
        rows = {r["id"]: r for r in read_probe(probe(cfg, str(tiny_model_dir), wants_call,
                                                     tmp_path / f"probe_{cfg.probe.decoder}", actor_cls=actor))}
        for s in wants_call:
            (answer,), (verdict,) = rows[s.id]["answers"], rows[s.id]["verdicts"]
            assert answer == fenced(render_answer(s.gold_calls()))
            assert check(answer, s.tools, s.truth, s.category, "lenient").valid  # a right call, leniently read
            assert json.loads(verdict)["valid"] is valid and rows[s.id]["pass_rate"] == float(valid)
            if not valid:
                assert json.loads(verdict)["error_type"] == "ast_decoder:decoder_failed"
        summary = json.loads((tmp_path / f"probe_{cfg.probe.decoder}" / SUMMARY_FILE).read_text())
        assert summary["decoder"] == cfg.probe.decoder


def test_bad_inputs_are_named(tiny_model_dir, tmp_path):
    with pytest.raises(DataError, match="lack column"):
        _samples_from_table(pa.table({"id": ["a"], "tools": ["[]"]}))
    with pytest.raises(DataError, match="'b' cannot be read"):
        _samples_from_table(pa.table({"id": ["b"], "tools": ["[not json"], "messages": ["[]"], "truth": ["[]"],
                                      "category": ["simple"]}))
    cfg = probe_cfg()
    cfg.probe.k = 0
    with pytest.raises(ConfigError, match="probe.k"):
        probe(cfg, str(tiny_model_dir), [], tmp_path / "x")
    with pytest.raises(ConfigError, match="tiny-model"):
        probe(probe_cfg(), "tiny", [], tmp_path / "x")


@pytest.mark.slow
def test_probe_command_runs_standalone(ray_local, tiny_model_dir, pool, tmp_path):
    from toolace_r.cli import main
    from toolace_r.io import write_samples

    pool_file = tmp_path / "pool.jsonl"
    write_samples(pool_file, pool)
    out = tmp_path / "cli_probe"
    code = main(["probe", f"model.path={tiny_model_dir}", f"pool.path={pool_file}", "probe.k=2",
                 "probe.generation.max_new_tokens=8", "probe.cpus_per_actor=1", "--out", str(out)])
    assert code == 0
    rows = read_probe(out)
    assert sorted(r["id"] for r in rows) == sorted(s.id for s in pool)
    assert all(r["k"] == 2 for r in rows)
