"""toolace_r.train.driver: the `train` command's checks, the driver-side data split, and workers that hold every CPU."""
from __future__ import annotations

import json

import pytest

from toolace_r.train import train

from .common import fixed_rows, ray_cfg


def test_train_command_needs_data_and_a_real_model(tmp_path):
    from toolace_r.cli import main

    assert main(["train", "--out", str(tmp_path)]) == 2  # no --data
    (tmp_path / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in fixed_rows()))
    assert main(["train", "--data", str(tmp_path / "rows.jsonl"), "--out", str(tmp_path), "model.path=tiny"]) == 2


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_workers_that_take_every_cpu_still_get_their_data(ray_local, tiny_model_dir, tmp_path):
    """2 workers × 1 CPU on a 2-CPU Ray: no CPU is left for Ray Data tasks once the workers start, so the shards are
    split in the driver before fit(). An odd number of rows (an equal split must cut a block: a Ray Data task) used
    to hang here."""
    from toolace_r.config import BuiltinPoolConfig
    from toolace_r.data.pool import load_builtin
    from toolace_r.train import rows_from_samples

    assert ray_local.cluster_resources().get("CPU") == 2
    samples, _ = load_builtin(BuiltinPoolConfig(n_train=401, n_heldout=0, seed=0))
    cfg = ray_cfg(2, **{"train.max_steps": "2", "train.epochs": "1", "train.checkpoint_every": "0"})
    result = train(cfg, str(tiny_model_dir), rows_from_samples(samples, "compact"), str(tmp_path / "all_cpus"))
    assert result["steps"] == 2 and result["rows"] == 400  # an equal split of 401 rows drops one


def test_presplit_hands_each_worker_its_part_and_refuses_another_world_size(ray_local):
    """The driver-side split gives worker i the i-th equal part; Ray Train asking for another number of workers gets
    a clear error instead of a split inside the run (which can wait forever for a CPU the workers hold)."""
    import ray

    from toolace_r.train import _presplit

    dataset = ray.data.from_items([{"i": i} for i in range(7)])
    config = _presplit(dataset, 2)
    shards = config.configure({"train": dataset}, 2, [], [])
    parts = [sorted(row["i"] for row in shard["train"].iter_rows()) for shard in shards]
    assert [len(p) for p in parts] == [3, 3] and not set(parts[0]) & set(parts[1])
    with pytest.raises(RuntimeError, match="3 workers, the data was split for 2"):
        config.configure({"train": dataset}, 3, [], [])


def test_resumable_run_names_follow_the_stage_and_its_inputs(tmp_path):
    """The Ray Train run name of a keyed training is the same for the same stage, OUT, config, model and rows (so
    a rerun resumes that run), and differs as soon as any of them does (so it never resumes another training)."""
    from toolace_r.config import load_config
    from toolace_r.train import validate_rows
    from toolace_r.train.driver import run_name_for

    cfg, rows, out = load_config(None, []), validate_rows(fixed_rows()), tmp_path / "iter_001"
    name = run_name_for("demo/iter_001/train", cfg, "/m", rows, out)
    assert name.startswith("demo-iter_001-train-") and name == run_name_for("demo/iter_001/train", cfg, "/m", rows, out)
    other_cfg = load_config(None, ["train.lr=1e-4"])
    assert len({name, run_name_for("demo/iter_002/train", cfg, "/m", rows, out),
                run_name_for("demo/iter_001/train", other_cfg, "/m", rows, out),
                run_name_for("demo/iter_001/train", cfg, "/other", rows, out),
                run_name_for("demo/iter_001/train", cfg, "/m", rows[:-1], out),
                run_name_for("demo/iter_001/train", cfg, "/m", rows, tmp_path / "elsewhere")}) == 6


def test_the_driver_keys_its_train_stage_by_run_dir_and_iteration(monkeypatch, tmp_path):
    import toolace_r.train
    from toolace_r import driver
    from toolace_r.config import load_config

    calls = []
    monkeypatch.setattr(toolace_r.train, "train", lambda *a, **k: calls.append(k) or {"model_dir": "m"})
    driver.train_stage(load_config(None, []), "model", "corpus.jsonl", tmp_path / "run" / "iter_002")
    assert calls == [{"resume_key": "run/iter_002/train"}]
