"""The driver side of training: `train()` (and the `toolace-r train` command) launch one Ray Train run.

    validate rows → Ray Data dataset → TorchTrainer(N workers, DeepSpeed config from cfg.train) → fit
    → copy the final checkpoint's model dir to OUT/model, write OUT/metrics.jsonl and OUT/train_summary.json

Why it is built this way:
- Rows reach the workers as Ray Data shards (`get_dataset_shard`), never inside the trainer closure, so a corpus of
  any size costs the driver nothing to ship. The split is `Dataset.split(equal=True)` (a custom DataConfig) rather
  than the default streaming split because it is deterministic: a restarted worker gets the same rows, so resuming at
  "step s" means the same micro-batches as before the failure.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import re
import shutil
import time
import uuid
from pathlib import Path
from typing import Any

from toolace_r.config import Config
from toolace_r.errors import ConfigError
from toolace_r.train.checkpoint import FINAL_MARK, HF_SUBDIR, METRICS_FILE, PROGRESS_FILE, read_progress
from toolace_r.train.rows import load_rows
from toolace_r.train.worker import _train_worker

log = logging.getLogger(__name__)


def _presplit(dataset: Any, world_size: int):
    """DataConfig that hands worker i the i-th part of `Dataset.split(world, equal=True)`, split here in the driver.

    Deterministic: the same rows for a worker on every attempt (the default streaming split hands out blocks
    first-come, first-served). Split before `fit()`: once the workers hold every CPU of the cluster, a split that
    needs Ray Data tasks would wait for a free CPU forever (train.num_workers × cpus_per_worker = all CPUs)."""
    from ray.train import DataConfig

    parts = dataset.split(world_size, equal=True)

    class PreSplit(DataConfig):
        def configure(self, datasets, world_size, worker_handles, worker_node_ids, **kwargs):
            if world_size != len(parts):  # a split here could wait forever for a CPU (see above): say so instead
                raise RuntimeError(f"Ray Train started {world_size} workers, the data was split for {len(parts)}: "
                                   "toolace-r trains with a fixed train.num_workers (no elastic scaling)")
            return [{"train": part.iterator()} for part in parts]

    return PreSplit()


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def run_name_for(resume_key: str, cfg: Config, model_ref: str, rows: list[dict], out: Path) -> str:
    """The Ray Train run name of a resumable training: `<resume_key>-<fingerprint>`.

    Ray Train resumes the run found under the same (storage path, name) from its last checkpoint, so a rerun of a
    stage killed mid-training — same key, same OUT — continues where the checkpoints left off instead of at step 0.
    The fingerprint (OUT, the whole train config, the model and the rows) makes a name that is reused only for the
    very same training: a rerun with another config, model or corpus, or another run dir sharing train.storage_path,
    starts a fresh run rather than resuming a checkpoint of a different one.
    """
    blob = json.dumps({"out": str(out), "key": resume_key, "train": dataclasses.asdict(cfg.train), "model": model_ref,
                       "rows": rows}, sort_keys=True, ensure_ascii=False, default=str)
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", resume_key).strip("-") or "train"
    return f"{slug}-{hashlib.sha256(blob.encode()).hexdigest()[:12]}"


def train(cfg: Config, model_path: str, data: str | list[dict], out_dir: str, *, resume_key: str = "",
          shared_out: str = "") -> dict:
    """Fine-tune `model_path` on training rows with Ray Train + DeepSpeed; the model lands in OUT/model.

    Returns model_dir, steps, loss_first, loss_last (means of the first/last few steps), tokens_per_s (real tokens
    over the training loop, all workers), padding_fraction, train_tokens (prompt + target tokens processed), wall_s
    (including Ray Train start-up), plus restarts and the Ray Train storage path.
    `resume_key` (the driver's stage key, with the run dir's name) makes the run resumable: the Ray Train run name is
    derived from it, OUT and the inputs (run_name_for), so calling train() again after the driver was killed
    continues from the last checkpoint, and after a finished run returns its model without training. Without it
    every call is a fresh run.

    On a multi-node cluster, `model_path` must be readable on every node (a shared path, a hub name or a URI that
    the workers `storage.localize`) and train.storage_path must be shared storage (NFS, s3://...): checkpoints and
    the final model travel through it, so OUT only has to exist on the driver.
    `shared_out`: OUT's location in object storage when OUT is the driver's mirror of a remote run dir
    (storage.RunDir.shared). Then Ray Train's storage defaults to SHARED_OUT/ray_train, the model is written to
    SHARED_OUT/model (and `model_dir` is that URI: what probe, eval and the next training read, via
    storage.localize) and not into OUT, and rank 0 writes the live metrics and progress files only when it runs on
    the driver's node (elsewhere OUT would be a stray dir on another machine); the final metrics reach OUT through
    the last checkpoint either way.
    """
    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from toolace_r import storage
    from toolace_r.io import write_json, write_text

    t_start = time.time()
    tcfg = cfg.train
    if model_path in ("", "tiny"):
        raise ConfigError("model.path must be a model directory or hub name (build one with `toolace-r tiny-model`)")
    if tcfg.num_workers < 1:
        raise ConfigError(f"train.num_workers = {tcfg.num_workers}, expected >= 1")
    if len(tcfg.betas) != 2:
        raise ConfigError(f"train.betas = {tcfg.betas}, expected two numbers")
    if tcfg.tokens_per_micro_batch < 1 or tcfg.max_length < 2:
        raise ConfigError("train.tokens_per_micro_batch and train.max_length must be positive")
    # samples given as a pool are rendered in the model's own style (its toolace_r.json, as probe and eval render
    # them, and as the exported tool chat template assumes), else the configured one
    from toolace_r.models import prompt_style_for

    rows = load_rows(data, prompt_style_for(cfg, model_path))
    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    local_model = Path(model_path)
    model_ref = str(local_model.resolve()) if local_model.exists() else model_path

    from toolace_r import ray_session, testing
    from toolace_r.console import Progress, watch

    ray_session.start_or_join(cfg)  # nothing when Ray is up (the driver's, a test's)
    dataset = ray.data.from_items(
        [{"id": r["id"], "kind": r["kind"], "chat": json.dumps(r["chat"], ensure_ascii=False), "completion": r["completion"]}
         for r in rows])

    dataset.context.enable_progress_bars = False  # workers read their shard in one go; the bars only add noise
    # Worker i gets rows [i·n/w, (i+1)·n/w) of `rows` in this order (_presplit: split_at_indices, independent of the
    # block layout), and reads them in order: the same config trains on the same micro-batches on every run.
    dataset.context.execution_options.preserve_order = True
    remote_out = bool(shared_out) and storage.is_remote(shared_out)
    # train.storage_path, else beside the stage's output: in the store for a remote run dir, never in the mirror
    storage_path = storage.normalize(tcfg.storage_path) if tcfg.storage_path else \
        storage.join(shared_out, "ray_train") if remote_out else str(out / "ray_train")
    if resume_key:  # a remote run dir is named by its URI: a driver on another node (another mirror) resumes it too
        run_name = run_name_for(resume_key, cfg, model_ref, rows, shared_out if remote_out else out)
    else:  # a fresh name: a reused one would resume that run
        run_name = f"train-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    resources = {"CPU": tcfg.cpus_per_worker}
    if tcfg.use_gpu:
        resources["GPU"] = 1
    trainer = TorchTrainer(
        _train_worker,
        train_loop_config={
            "cfg": cfg, "model_path": model_ref, "out_dir": str(out),
            "out_node": ray.get_runtime_context().get_node_id() if remote_out else "",  # OUT is this node's mirror
            **testing.train_fault(out),  # fault tests only: a worker fails once (toolace_r.testing)
        },
        scaling_config=ScalingConfig(num_workers=tcfg.num_workers, use_gpu=tcfg.use_gpu,
                                     resources_per_worker=resources, placement_strategy=tcfg.placement_strategy),
        torch_config=TorchConfig(backend="nccl" if tcfg.use_gpu else "gloo"),
        datasets={"train": dataset},
        dataset_config=_presplit(dataset, tcfg.num_workers),
        run_config=RunConfig(name=run_name, **storage.ray_train_storage(storage_path),
                             failure_config=FailureConfig(max_failures=tcfg.max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=2)),
    )
    log.info("training %d rows on %d workers (ZeRO-%d), Ray Train run %s/%s", len(rows), tcfg.num_workers,
             tcfg.zero_stage, storage_path, run_name)
    progress_file = out / PROGRESS_FILE
    progress_file.unlink(missing_ok=True)  # an earlier run's
    with Progress("train", None, "steps") as bar, watch(bar, lambda: read_progress(progress_file)):
        result = trainer.fit()
    progress_file.unlink(missing_ok=True)
    if result.error:
        raise result.error
    if result.checkpoint is None:
        raise RuntimeError(f"Ray Train run {run_name} finished without a final checkpoint")

    model_dir = out / "model"
    with result.checkpoint.as_directory() as ckpt_dir:
        ckpt = Path(ckpt_dir)
        if remote_out:  # the store is where every node reads it; the stage is recorded only after this returns
            model_uri = storage.join(shared_out, "model")
            storage.copy_dir(ckpt / HF_SUBDIR, model_uri)
            shutil.rmtree(model_dir, ignore_errors=True)  # an older local copy would be pushed over it
        else:
            staging = out / f".model.{uuid.uuid4().hex[:6]}"
            shutil.copytree(ckpt / HF_SUBDIR, staging)
            if model_dir.exists():
                shutil.rmtree(model_dir)
            os.replace(staging, model_dir)
        write_text(out / METRICS_FILE, (ckpt / METRICS_FILE).read_text())
        final = json.loads((ckpt / FINAL_MARK).read_text())
    records = [json.loads(x) for x in (out / METRICS_FILE).read_text().splitlines() if x]
    k = max(1, min(5, len(records) // 4))
    summary = {
        "model_dir": model_uri if remote_out else str(model_dir),
        "steps": int(final["step"]),
        "loss_first": _mean([r["loss"] for r in records[:k]]),
        "loss_last": _mean([r["loss"] for r in records[-k:]]),
        "tokens_per_s": final["tokens_per_s"],
        "padding_fraction": final["padding_fraction"],
        "train_tokens": final["train_tokens"],
        "target_tokens": final["target_tokens"],
        "rows": final["rows"],
        "wall_s": time.time() - t_start,
        "loop_s": final["loop_s"],
        "cpu_s": final["cpu_s"],
        "restarts": final["attempt"],
        "peak_gpu_bytes": int(final.get("peak_gpu_bytes", 0)),
        "zero_stage": tcfg.zero_stage,
        "num_workers": tcfg.num_workers,
        "ray_train_path": f"{storage_path}/{run_name}",
    }
    write_json(out / "train_summary.json", summary)
    log.info("trained %d steps: loss %.4f → %.4f, %.0f tok/s, padding %.1f%%, model at %s", summary["steps"],
             summary["loss_first"], summary["loss_last"], summary["tokens_per_s"], 100 * summary["padding_fraction"],
             summary["model_dir"])
    return summary


def train_command(args, cfg: Config) -> int:
    """`toolace-r train --config F --data FILE --out DIR model.path=DIR`."""
    if not args.data:
        raise ConfigError("train needs --data (a JSONL of training rows, or a pool file)")
    out_dir = args.out or str(Path(cfg.run.dir) / "train")
    summary = train(cfg, cfg.model.path, args.data, out_dir, resume_key="train")  # a rerun resumes (see train)
    print(json.dumps(summary, indent=2))
    return 0
