"""toolace_r.testing, the seam through which production code looks for a fault test's hook: unarmed, it does
nothing; armed, the training failure happens once, on the last worker, at the step asked for."""
from __future__ import annotations

import pytest

from toolace_r import testing


def test_unarmed_nothing_happens(tmp_path, monkeypatch):
    monkeypatch.delenv(testing.KILL_AFTER_STAGE_ENV, raising=False)
    testing.after_stage("iter_000/train")  # still alive
    monkeypatch.setenv(testing.KILL_AFTER_STAGE_ENV, "iter_001/train")
    testing.after_stage("iter_000/train")  # another stage: still alive
    assert testing.train_fault(tmp_path) == {}
    for step in range(1, 5):
        testing.maybe_fail_step({}, step, rank=1, world=2)


def test_training_fails_once_on_the_last_worker_at_the_step(tmp_path):
    with testing.fail_training_once(at_step=3):
        config = testing.train_fault(tmp_path)
    assert testing.train_fault(tmp_path) == {}  # only inside the block
    testing.maybe_fail_step(config, 3, rank=0, world=2)  # not the last worker
    testing.maybe_fail_step(config, 2, rank=1, world=2)  # not the step
    with pytest.raises(RuntimeError, match="injected failure at step 3"):
        testing.maybe_fail_step(config, 3, rank=1, world=2)
    assert (tmp_path / testing.FAIL_MARKER).read_text() == "failed at step 3\n"
    testing.maybe_fail_step(config, 3, rank=1, world=2)  # the restarted attempt trains through
