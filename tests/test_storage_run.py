"""A run whose run dir is in object storage: every node reads model dirs and checkpoints from the store.

The store is `fake://` (tests/fake_store.py): pyarrow's SubTreeFileSystem over a temp dir, plugged into
storage.filesystem of the driver and, as Ray's worker setup hook, of every Ray worker — the pyarrow layer an s3://
URI goes through, with the code under test unchanged. The Ray workers get their own TOOLACE_CACHE_DIR, apart from
the driver's mirror, so a model they load must have come out of the store: a driver-local path handed to them would
name nothing (the driver's mirror holds no model dir at all).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from processes import end_session  # tests/processes.py
from toolace_r import storage
from toolace_r.config import load_config

REPO = Path(__file__).resolve().parents[1]
RUN = "fake://bucket/runs/e2e"


def test_the_driver_hands_a_remote_run_dirs_train_stage_its_uri(monkeypatch, tmp_path):
    """train_stage passes the stage's URI on to train() only for a remote run dir (a local one keeps its call)."""
    import toolace_r.train
    from toolace_r import driver

    calls = []
    monkeypatch.setattr(toolace_r.train, "train", lambda *a, **k: calls.append(k) or {"model_dir": "m"})
    driver.train_stage(load_config(None, []), "model", "corpus.jsonl", tmp_path / "run" / "iter_002",
                       "s3://bucket/run/iter_002")
    driver.train_stage(load_config(None, []), "model", "corpus.jsonl", tmp_path / "run" / "iter_002")
    assert calls == [{"resume_key": "run/iter_002/train", "shared_out": "s3://bucket/run/iter_002"},
                     {"resume_key": "run/iter_002/train"}]


def _run_overrides() -> list[str]:
    """One iteration of the loop, as small as it gets: the untrained model probed (probe_first_iteration), 4 steps
    of training with a checkpoint every 2, the trained model evaluated on 8 dev and 8 test items."""
    return [
        f"run.dir={RUN}", "run.max_iterations=1", "run.probe_first_iteration=true",
        "run.stop_when_selection_stalls=false", "model.prompt_style=compact", "model.tiny.vocab_size=384",
        "model.tiny.hidden_size=32", "model.tiny.num_layers=1", "model.tiny.num_heads=2",
        "model.tiny.intermediate_size=64", "pool.builtin.n_train=48", "pool.builtin.n_heldout=8", "pool.dev_size=8",
        "probe.k=2", "probe.generation.max_new_tokens=12", "eval.generation.max_new_tokens=12", "eval.max_rounds=1",
        "eval.limit=8", "select.policy=all", "train.num_workers=1", "train.max_steps=4", "train.warmup_steps=1",
        "train.tokens_per_micro_batch=1024", "train.checkpoint_every=2",
    ]


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_run_on_an_object_store_keeps_models_and_checkpoints_there(tmp_path, monkeypatch):
    store, driver_cache, worker_cache = tmp_path / "store", tmp_path / "driver_cache", tmp_path / "worker_cache"
    store.mkdir()
    env = dict(os.environ, PYTHONPATH=f"{REPO}{os.pathsep}{REPO / 'tests'}", FAKE_STORE_ROOT=str(store),
               FAKE_STORE_WORKER_CACHE=str(worker_cache), TOOLACE_CACHE_DIR=str(driver_cache))
    env.pop("RAY_ADDRESS", None)
    with open(tmp_path / "driver.log", "w") as log:
        proc = subprocess.Popen([sys.executable, str(REPO / "tests" / "fake_store.py"), *_run_overrides()], cwd=REPO,
                                env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            rc = proc.wait(timeout=540)
        finally:
            end_session(proc.pid)
    output = (tmp_path / "driver.log").read_text()
    assert rc == 0, output[-4000:]

    # Everything the run wrote is in the store, under the run dir's URI.
    root = store / "bucket" / "runs" / "e2e"
    for name in ("config.yaml", "state.json", "report.json", "dev.jsonl", "iter_000/corpus.jsonl",
                 "base_model/config.json", "iter_000/model/config.json", "iter_000/model/model.safetensors"):
        assert (root / name).is_file(), name
    stages = json.loads((root / "state.json").read_text())["stages"]
    assert stages["base_model"]["result"]["model_dir"] == f"{RUN}/base_model"
    trained = stages["iter_000/train"]["result"]
    assert trained["model_dir"] == f"{RUN}/iter_000/model" and trained["steps"] == 4
    # Ray Train wrote its checkpoints (every 2 steps, then the final model) into the store itself
    assert trained["ray_train_path"].startswith(f"{RUN}/iter_000/ray_train/")
    run_path = root / trained["ray_train_path"][len(RUN) + 1:]
    assert sorted(p.name for p in run_path.glob("checkpoint_*")), list(run_path.iterdir())
    assert any((p / "FINAL").is_file() for p in run_path.glob("checkpoint_*"))
    # the trained model remembers what it was trained from by its URI, and keeps the base model's prompt style
    meta = json.loads((root / "iter_000/model/toolace_r.json").read_text())
    assert meta["trained_from"] == f"{RUN}/base_model" and meta["prompt_style"] == "compact"
    assert meta["keep_answer"] == "repeat"  # how its refinement rows kept a right answer (refine.keep_answer)

    # Probe and eval actors were handed the URIs...
    probe_summary = json.loads((root / "iter_000/probe/summary.json").read_text())
    assert probe_summary["model_path"] == f"{RUN}/base_model"
    assert json.loads((root / "iter_000/dev_eval/metrics.json").read_text())["model"] == f"{RUN}/iter_000/model"
    assert json.loads((root / "iter_000/eval/metrics.json").read_text())["model"] == f"{RUN}/iter_000/model"
    assert json.loads((root / "report.json").read_text())["final_model_dir"] == f"{RUN}/iter_000/model"

    # ...and read the models out of the store into their own node cache (the workers' TOOLACE_CACHE_DIR).
    localized = {(d / ".toolace_complete").read_text().strip() for d in (worker_cache / "models").iterdir()
                 if (d / ".toolace_complete").is_file()}
    assert localized == {f"{RUN}/base_model", f"{RUN}/iter_000/model"}
    # The driver's mirror holds the small files it reads itself, no model dir or checkpoint, and downloaded none.
    monkeypatch.setenv(storage.CACHE_ENV, str(driver_cache))
    mirror = storage._cache_dir(RUN, "runs")
    assert (mirror / "state.json").is_file() and (mirror / "iter_000" / "corpus.jsonl").is_file()
    heavy = [p for p in mirror.rglob("*") if p.name in storage.SKIP_ON_PULL or p.suffix == ".safetensors"]
    assert heavy == [] and not (driver_cache / "models").exists()
