"""toolace_r.storage: run dirs, model dirs and Ray Train checkpoints at a path or URI.

`file://` is tested for real, through Ray Train too. For the remote branch (mirror, pull/push, per-node model cache)
an object store is played by a pyarrow SubTreeFileSystem over a temp dir under a made-up `fake://` scheme: the code
under test (what gets copied where, when, and what a resumed driver sees) runs unchanged, only S3 itself is absent.
"""
from __future__ import annotations

import json
from pathlib import Path

import pyarrow.fs
import pytest

from toolace_r import io, storage
from toolace_r.errors import ConfigError


def test_paths_and_uris_are_told_apart_without_network(tmp_path):
    assert storage.scheme("runs/x") == "" and storage.scheme("file:///a") == "file" and storage.scheme("S3://b") == "s3"
    assert not storage.is_remote("runs/x") and not storage.is_remote(f"file://{tmp_path}")
    assert storage.is_remote("s3://bucket/runs") and storage.is_remote("gs://bucket/runs")
    assert storage.local_path(f"file://{tmp_path}/a%20b") == tmp_path / "a b"
    assert storage.normalize(f"file://{tmp_path}/run") == str(tmp_path / "run")
    assert storage.join("s3://bucket/runs/", "iter_001", "model") == "s3://bucket/runs/iter_001/model"
    assert storage.join(f"file://{tmp_path}", "iter_001") == str(tmp_path / "iter_001")
    with pytest.raises(ConfigError, match="s3:// location has no local path"):
        storage.local_path("s3://bucket/x")
    with pytest.raises(ConfigError, match="must be absolute"):
        storage.local_path("file://relative/path")


def test_run_dir_on_file_uri_is_the_path_itself(tmp_path):
    run = storage.RunDir(f"file://{tmp_path}/runs/demo")
    assert not run.remote and run.local == tmp_path / "runs" / "demo" and run.local.is_dir()
    io.write_json(run.local / "state.json", {"done": ["iter_000/probe"]})
    run.push()  # nothing to do locally, must not fail or move anything
    assert json.loads((tmp_path / "runs/demo/state.json").read_text()) == {"done": ["iter_000/probe"]}
    assert run.uri("iter_000", "model") == str(tmp_path / "runs/demo/iter_000/model")
    assert storage.localize(run.uri("iter_000", "model")) == str(tmp_path / "runs/demo/iter_000/model")


@pytest.fixture
def fake_store(tmp_path, monkeypatch):
    """`fake://bucket/...` → files under tmp_path/store, through pyarrow like s3:// would be."""
    root = tmp_path / "store"
    root.mkdir()
    real = storage.filesystem

    def filesystem(uri):
        if storage.scheme(uri) == "fake":
            return pyarrow.fs.SubTreeFileSystem(str(root), pyarrow.fs.LocalFileSystem()), str(uri)[len("fake://"):]
        return real(uri)

    monkeypatch.setattr(storage, "filesystem", filesystem)
    monkeypatch.setenv(storage.CACHE_ENV, str(tmp_path / "cache"))
    return root


def test_remote_run_dir_mirrors_pushes_and_resumes(fake_store, tmp_path):
    run = storage.RunDir("fake://bucket/runs/demo")
    assert run.remote and str(run.local).startswith(str(tmp_path / "cache"))
    assert run.pull() is False  # nothing there yet: a fresh run
    io.write_json(run.local / "state.json", {"done": ["iter_000/probe"]})
    (run.local / "iter_000" / "model").mkdir(parents=True)
    (run.local / "iter_000" / "model" / "config.json").write_text("{}")
    run.push()
    assert json.loads((fake_store / "bucket/runs/demo/state.json").read_text()) == {"done": ["iter_000/probe"]}
    assert (fake_store / "bucket/runs/demo/iter_000/model/config.json").is_file()

    # A resumed driver on another node: empty local mirror, pulls the finished stages back.
    import shutil

    shutil.rmtree(run.local)
    again = storage.RunDir("fake://bucket/runs/demo")
    assert again.pull() is True
    assert io.read_json(again.local / "state.json") == {"done": ["iter_000/probe"]}

    # A probe actor on a third node gets the model dir by URI and a local copy; a second call reuses it.
    local = Path(storage.localize(again.uri("iter_000", "model")))
    assert (local / "config.json").read_text() == "{}" and local != again.local / "iter_000" / "model"
    (fake_store / "bucket/runs/demo/iter_000/model/config.json").write_text('{"changed": 1}')
    assert Path(storage.localize(again.uri("iter_000", "model"))) == local
    assert (local / "config.json").read_text() == "{}"  # model dirs are immutable: the cached copy is used


def test_copy_of_a_missing_dir_names_it(fake_store):
    with pytest.raises(ConfigError, match="fake://bucket/nope: not a directory"):
        storage.localize("fake://bucket/nope")


@pytest.mark.slow
def test_ray_train_checkpoints_land_at_a_file_uri(ray_local, tmp_path):
    """Ray Train reads storage_path itself: a file:// location must hold the run's checkpoints afterwards."""
    import tempfile

    import ray.train
    from ray.train.torch import TorchTrainer

    def loop(config):
        with tempfile.TemporaryDirectory() as d:
            Path(d, "weights.txt").write_text("step-1")
            ray.train.report({"step": 1}, checkpoint=ray.train.Checkpoint.from_directory(d))

    uri = f"file://{tmp_path}/train_storage"
    trainer = TorchTrainer(
        loop,
        scaling_config=ray.train.ScalingConfig(num_workers=1, use_gpu=False, resources_per_worker={"CPU": 1}),
        run_config=ray.train.RunConfig(name="storage_test", **storage.ray_train_storage(uri)),
    )
    result = trainer.fit()
    ckpt = Path(result.checkpoint.path)
    assert ckpt.is_relative_to(tmp_path / "train_storage")
    assert (ckpt / "weights.txt").read_text() == "step-1"


def test_pull_leaves_model_dirs_and_checkpoints_in_the_store(fake_store, tmp_path):
    """A resumed driver gets back the small files it reads itself; model dirs and Ray Train checkpoints stay in the
    store (workers localize them), wherever they sit in the tree."""
    import shutil

    bucket = fake_store / "bucket/runs/demo"
    for name in ("state.json", "iter_000/corpus.jsonl", "iter_000/probe/part-0.parquet", "base_model/config.json",
                 "iter_000/model/model.safetensors", "iter_000/ray_train/run-1/checkpoint_000000/ds/x.pt",
                 "iter_000/model_notes.txt"):
        (bucket / name).parent.mkdir(parents=True, exist_ok=True)
        (bucket / name).write_text(name)
    run = storage.RunDir("fake://bucket/runs/demo")
    assert run.pull() is True
    pulled = sorted(str(p.relative_to(run.local)) for p in run.local.rglob("*") if p.is_file())
    assert pulled == ["iter_000/corpus.jsonl", "iter_000/model_notes.txt", "iter_000/probe/part-0.parquet",
                      "state.json"]
    shutil.rmtree(run.local)


def test_shared_names_and_publish_a_dir_for_every_node(fake_store, tmp_path):
    run = storage.RunDir("fake://bucket/runs/demo")
    assert run.shared(run.local / "iter_001") == "fake://bucket/runs/demo/iter_001"
    with pytest.raises(ConfigError, match="not inside the run dir's local mirror"):
        run.shared(tmp_path / "elsewhere")
    (run.local / "base_model").mkdir()
    (run.local / "base_model" / "config.json").write_text("{}")
    assert run.publish(run.local / "base_model") == "fake://bucket/runs/demo/base_model"
    assert (fake_store / "bucket/runs/demo/base_model/config.json").read_text() == "{}"
    assert not (run.local / "base_model").exists()  # a push would otherwise upload it after every stage

    local = storage.RunDir(tmp_path / "runs" / "x")  # local (or a shared mount): the path is the shared name
    (local.local / "base_model").mkdir()
    assert local.publish(local.local / "base_model") == str(tmp_path / "runs/x/base_model")
    assert (local.local / "base_model").is_dir()


def test_small_files_and_ray_train_storage_through_the_store(fake_store, tmp_path):
    (fake_store / "bucket/m").mkdir(parents=True)
    meta = '{"prompt_style": "signature", "keep_answer": "confirm"}'
    (fake_store / "bucket/m/toolace_r.json").write_text(meta)
    assert storage.read_text("fake://bucket/m/toolace_r.json") == meta
    assert storage.read_text("fake://bucket/m/missing.json") is None
    kwargs = storage.ray_train_storage("fake://bucket/runs/x/ray_train")
    assert kwargs["storage_path"] == "bucket/runs/x/ray_train"
    assert isinstance(kwargs["storage_filesystem"], pyarrow.fs.SubTreeFileSystem)

    from toolace_r.config import load_config
    from toolace_r.models import keep_answer_for, prompt_style_for

    cfg = load_config(None, ["model.prompt_style=compact"])
    assert prompt_style_for(cfg, "fake://bucket/m") == "signature"  # read from the store...
    assert keep_answer_for(cfg, "fake://bucket/m") == "confirm"
    assert not (tmp_path / "cache" / "models").exists()  # ...without downloading the model dir
    assert prompt_style_for(cfg, "fake://bucket/other") == "compact"  # no toolace_r.json: the configured ones
    assert keep_answer_for(cfg, "fake://bucket/other") == "repeat"


def test_a_resumed_run_dir_that_recorded_mirror_paths_reads_its_models_from_the_store(fake_store, tmp_path):
    """A remote run dir written before model dirs lived in the store (d36b4d0) recorded them by their path in the
    driver's mirror and pushed them with the mirror; pull() leaves them in the store now, so the recorded path names
    nothing on a fresh node. `recorded` turns it into the URI, which localize() reads; other names pass unchanged."""
    import shutil

    run = storage.RunDir("fake://bucket/runs/old")
    (run.local / "iter_000" / "model").mkdir(parents=True)
    (run.local / "iter_000" / "model" / "config.json").write_text("{}")
    old_record = str(run.local.resolve() / "iter_000" / "model")  # what d36b4d0's train() wrote to state.json
    run.push()
    shutil.rmtree(run.local)  # a fresh node: nothing but the store
    resumed = storage.RunDir("fake://bucket/runs/old")
    resumed.pull()
    assert not Path(old_record).exists()
    assert resumed.recorded(old_record) == "fake://bucket/runs/old/iter_000/model"
    assert (Path(storage.localize(resumed.recorded(old_record))) / "config.json").read_text() == "{}"
    # the same mirror under another cache root (another TOOLACE_CACHE_DIR) is recognised by its name
    elsewhere = str(tmp_path / "other_cache" / "runs" / run.local.name / "base_model")
    assert resumed.recorded(elsewhere) == "fake://bucket/runs/old/base_model"
    for unchanged in ("fake://bucket/runs/old/iter_000/model", str(tmp_path / "tiny-base"), "meta-llama/Llama-3.1-8B"):
        assert resumed.recorded(unchanged) == unchanged
    local = storage.RunDir(tmp_path / "runs" / "x")  # a local run dir's paths are what every node reads
    assert local.recorded(str(local.local / "iter_000" / "model")) == str(local.local / "iter_000" / "model")
