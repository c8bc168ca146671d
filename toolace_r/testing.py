"""Test seams. Fault injection for the fault-tolerance tests: the one seam through which production code looks for a
test's hook; and `forced_text`, an engine guide that makes the real decoding path emit known text.

Production code asks three narrow questions here; outside those tests nothing is armed and each one does nothing:

- `after_stage(key)` — driver.run_stage, right after a stage has been recorded as finished: SIGKILLs this process
  when the env var KILL_AFTER_STAGE_ENV names `key`, i.e. a crash at a stage boundary before the report is rebuilt
  (tests/test_faults.py sets it on a driver it runs as a subprocess).
- `train_fault(out)` — train.driver.train, building the workers' loop config: the keys that make a worker fail,
  {} unless the caller is inside `fail_training_once(step)` (tests/train/test_worker.py).
- `maybe_fail_step(config, step, rank, world)` — train.worker, after each optimizer step's micro-batches: with those
  keys, the last worker raises once after `step`; a marker file in OUT records that it happened, so the attempt
  Ray Train restarts from the last checkpoint trains through.
"""
from __future__ import annotations

import contextlib
import os
import signal
from pathlib import Path
from typing import Any, Iterator

KILL_AFTER_STAGE_ENV = "TOOLACE_TEST_KILL_AFTER_STAGE"
FAIL_MARKER = ".injected_failure"  # in the training's OUT dir once the injected failure has happened

_fail_training_at_step = 0  # set by fail_training_once, in the process that calls train()


def after_stage(key: str) -> None:
    """SIGKILL this process if a test asked for a crash right after stage `key` (KILL_AFTER_STAGE_ENV)."""
    if os.environ.get(KILL_AFTER_STAGE_ENV) == key:
        os.kill(os.getpid(), signal.SIGKILL)


@contextlib.contextmanager
def fail_training_once(at_step: int) -> Iterator[None]:
    """Within this block, every train() makes its last worker raise once after optimizer step `at_step`."""
    global _fail_training_at_step
    before, _fail_training_at_step = _fail_training_at_step, at_step
    try:
        yield
    finally:
        _fail_training_at_step = before


def train_fault(out: str | Path) -> dict[str, Any]:
    """The entries train() adds to its workers' loop config: none unless inside fail_training_once."""
    if not _fail_training_at_step:
        return {}
    return {"fail_once_at_step": _fail_training_at_step, "fail_marker": str(Path(out) / FAIL_MARKER)}


def maybe_fail_step(config: dict[str, Any], step: int, rank: int, world: int) -> None:
    """In a training worker after optimizer step `step` (1-based): raise if `config` carries train_fault's entries
    for this step, this is the last worker, and the failure has not happened yet (the marker file)."""
    at_step = int(config.get("fail_once_at_step") or 0)
    if not at_step or step != at_step or rank != world - 1 or not config.get("fail_marker"):
        return
    marker = Path(config["fail_marker"])
    if marker.exists():  # fail once only: the marker survives the restart
        return
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(f"failed at step {step}\n")
    raise RuntimeError(f"injected failure at step {step} (test of fault tolerance)")


class ForcedText:
    """An engine guide (the interface of toolace_r.constrain.RowGuide: `predict`, `sync`) that makes a sequence emit
    `ids` and then EOS, through the ordinary decoding path: tests force a model to say the gold answer and expect a
    pass rate of 1, so prompts, decoding, parsing and checking are all the production code."""

    def __init__(self, ids: list[int], eos: int):
        self.target = list(ids) + [eos]
        self.position = 0

    def predict(self, logits: Any, proposal: list[int], pick: Any, remaining: int,
                unmasked: list[int] | None = None) -> list[int]:
        preds: list[int] = []
        for i in range(len(proposal) + 1):
            preds.append(self.target[min(self.position + i, len(self.target) - 1)])
            if i == len(proposal) or preds[-1] != proposal[i]:
                break
        return preds

    def sync(self, tokens: list[int]) -> None:
        self.position = len(tokens)


def forced_text(tokenizer: Any, text: str) -> Any:
    """A guide factory (one fresh ForcedText per sequence) forcing `text`, encoded as prompts are encoded."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return lambda: ForcedText(ids, tokenizer.eos_token_id)
