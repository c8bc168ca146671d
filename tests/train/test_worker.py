"""toolace_r.train.worker through real Ray Train + DeepSpeed runs (2 CPU workers, the session's tiny model): ZeRO-2
and ZeRO-3 learn a small fixed set, the exported model beats the untrained one at greedy decoding, and a worker that
fails mid-run costs at most `checkpoint_every` steps.

Each trainer.fit costs ~15–40 s of Ray Train start-up on this machine, so these are two fits in all.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from toolace_r.data.prompts import prompt_text
from toolace_r.models import META_FILE
from toolace_r.testing import FAIL_MARKER, fail_training_once
from toolace_r.train import train

from .common import fixed_rows, ray_cfg


def greedy_prefix_score(model_dir: str, rows: list[dict]) -> tuple[float, int]:
    """(mean fraction of each completion that the greedy answer gets right from its start, exact matches)."""
    from toolace_r.generation import Generator

    gen = Generator.from_path(model_dir)
    prompts = [prompt_text(gen.tokenizer, r["chat"]) for r in rows]
    answers = [g[0].text.strip() for g in gen.generate(prompts, temperature=0.0, max_new_tokens=32)]
    score, exact = 0.0, 0
    for answer, row in zip(answers, rows):
        want = row["completion"]
        n = 0
        while n < min(len(answer), len(want)) and answer[n] == want[n]:
            n += 1
        score += n / len(want)
        exact += answer == want
    return score / len(rows), exact


def _check_learned(result: dict, out: Path, untrained: tuple[float, int], rows: list[dict]) -> None:
    assert result["steps"] == 80  # 16 rows, 2 workers, 1 length-grouped micro-batch each → 2 steps/epoch × 40
    assert result["loss_last"] < 0.35 * result["loss_first"], result
    assert result["padding_fraction"] <= 0.05
    assert result["train_tokens"] > 0 and result["tokens_per_s"] > 0
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(1, 81))
    assert all({"loss", "lr", "tokens_per_s", "padding_fraction"} <= r.keys() for r in records)
    model_dir = Path(result["model_dir"])
    assert (model_dir / "config.json").exists() and (model_dir / META_FILE).exists()
    score, exact = greedy_prefix_score(str(model_dir), rows)
    assert score > untrained[0] + 0.3 and exact >= untrained[1], (score, exact, untrained)


@pytest.fixture(scope="module")
def untrained_score(tiny_model_dir):
    return greedy_prefix_score(str(tiny_model_dir), fixed_rows())


@pytest.mark.slow
def test_zero2_learns_the_fixed_set_and_export_beats_untrained(ray_local, tiny_model_dir, untrained_score, tmp_path):
    """ZeRO-2 with the CPU's fast path, precision=amp_bf16 (ZeRO-3 below runs plain fp32)."""
    rows = fixed_rows()
    result = train(ray_cfg(2, **{"train.precision": "amp_bf16"}), str(tiny_model_dir), rows, str(tmp_path / "z2"))
    _check_learned(result, tmp_path / "z2", untrained_score, rows)
    assert result["restarts"] == 0


@pytest.mark.slow
def test_zero3_survives_a_worker_failure_and_learns(ray_local, tiny_model_dir, untrained_score, tmp_path):
    """The last worker raises once after step 25; the run resumes from the step-20 checkpoint (≤ checkpoint_every
    steps lost) and ends with the planned 80 steps. Rows go in as a JSONL file, the CLI's path."""
    rows = fixed_rows()
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "z3"
    with fail_training_once(at_step=25):
        result = train(ray_cfg(3), str(tiny_model_dir), str(data), str(out))
    assert (out / FAIL_MARKER).exists() and result["restarts"] == 1
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    resumed = [r["step"] for r in records if r["attempt"] == 1]
    assert resumed[0] == 21 and resumed[-1] == 80  # redone from the last checkpoint (step 20), not from 0
    _check_learned(result, out, untrained_score, rows)


