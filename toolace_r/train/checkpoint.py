"""What a training run leaves behind while it runs: Ray Train checkpoints, metrics and rank 0's progress file.

A Ray Train checkpoint of this package is a directory holding the DeepSpeed checkpoint (tag CKPT_TAG: every rank's
shard, merged by Ray Train) and rank 0's METRICS_FILE so far; the final one instead holds the HF model (HF_SUBDIR),
METRICS_FILE and FINAL_MARK with the run's summary. `_Totals` rides in the DeepSpeed client state, so a resumed run
reports whole-run figures.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

CKPT_TAG = "ds"  # DeepSpeed checkpoint tag inside every Ray Train checkpoint
FINAL_MARK = "FINAL"  # file in the last checkpoint: the run is complete, the HF model is in HF_SUBDIR
HF_SUBDIR = "hf_model"
METRICS_FILE = "metrics.jsonl"
PROGRESS_FILE = ".progress.json"  # rank 0's {"step", "total", "attempt", "loss"}, rewritten as it trains; the driver's bar


@dataclass
class _Totals:
    """Counters summed over all workers, carried in checkpoints so a resumed run reports whole-run figures."""
    real_tokens: float = 0.0
    pad_tokens: float = 0.0
    target_tokens: float = 0.0
    loop_s: float = 0.0
    cpu_s: float = 0.0  # process CPU seconds of all workers in the loop: a load-independent cost on a shared machine


def _write_progress(path: Path, step: int, total: int, attempt: int, loss: float | None) -> None:
    """Rank 0's progress for the driver's bar (read_progress), replaced in one rename. Best effort: OUT may not be
    reachable from a worker on another node, and a progress bar is not worth failing a training run for."""
    try:
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"step": step, "total": total, "attempt": attempt, "loss": loss}))
        os.replace(tmp, path)
    except OSError:
        pass


def read_progress(path: Path) -> tuple[int, int | None, str]:
    """(steps done, total steps, "loss x | attempt n") from a PROGRESS_FILE; raises while there is none."""
    data = json.loads(Path(path).read_text())
    notes = [f"loss {data['loss']:.3f}"] if data.get("loss") is not None else []
    if data.get("attempt"):
        notes.append(f"attempt {int(data['attempt']) + 1}")
    return int(data["step"]), int(data["total"]), " | ".join(notes)


def _report_checkpoint(engine, step: int, totals: _Totals, attempt: int, records: list | None, metrics: dict) -> None:
    """Every rank writes its DeepSpeed shard into its own temp dir; Ray Train merges them into one checkpoint dir."""
    import dataclasses

    import ray.train

    tmp = Path(tempfile.mkdtemp(prefix="toolace_ckpt_"))
    try:
        engine.save_checkpoint(str(tmp), tag=CKPT_TAG, client_state={
            "step": step, "totals": dataclasses.asdict(totals), "attempt": attempt})
        if records is not None:
            (tmp / METRICS_FILE).write_text("".join(json.dumps(r) + "\n" for r in records))
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(str(tmp)))
        _wait_until_report_collected()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _wait_until_report_collected(timeout_s: float = 120.0) -> None:
    """Block until Ray Train's controller has taken this worker's last report off the worker's queue.

    Why: `ray.train.report` returns once the report is queued inside the worker; the controller polls the queues
    every RAY_TRAIN_HEALTH_CHECK_INTERVAL_S (2 s) and registers a checkpoint only once it holds every rank's report.
    A worker process killed inside that window takes its queued report with it, the checkpoint is never registered,
    and the restart resumes from the one before — or from step 0 — redoing more than checkpoint_every steps (found
    by tests/test_faults.py, issue 10). Waiting costs at most one poll interval per checkpoint. It reads Ray Train
    v2 internals; where they are absent (another Ray version) it returns at once.
    """
    try:
        from ray.train.v2._internal.execution.context import get_train_context

        pending = get_train_context().execution_context.result_queue
        _ = pending.unfinished_tasks
    except Exception:  # noqa: BLE001 - not Ray Train v2: nothing to wait for
        return
    deadline = time.monotonic() + timeout_s
    while pending.unfinished_tasks and time.monotonic() < deadline:
        time.sleep(0.02)

