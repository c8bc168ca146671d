"""toolace_r.train.loss: the loss of an optimizer step is Σ target-token CE over all micro-batches and ranks / the
step's global target count — checked with the real DeepSpeed engine on a 2-process gloo group against one process
training on each step's rows together."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from toolace_r.config import load_config
from toolace_r.train.loss import (
    global_step_targets,
    hf_takes_num_items,
    micro_batch_loss,
    step_target_counts,
    summed_token_loss,
)
from toolace_r.train.rows import IGNORE_INDEX, build_schedule, collate, target_count

from . import loss_ranks
from .loss_ranks import GRAD_ACCUM, LR, RESULT_FILE, STEPS, rank_data, tiny_llama

REPO = Path(__file__).resolve().parents[2]


def test_target_counts_follow_the_schedule_step_by_step():
    """Per-step counts index the schedule by optimizer step (what a resumed worker at step s reads), the first label
    never counts (causal shift), and without a process group the global count is the local one."""
    ex = [{"labels": [IGNORE_INDEX, 5, 6]}, {"labels": [7, IGNORE_INDEX, 8, 9]}, {"labels": [IGNORE_INDEX] * 3 + [4]}]
    assert [target_count(e) for e in ex] == [2, 2, 1]
    schedule = [[0], [1, 2], [2], [0]]
    assert step_target_counts(ex, schedule, grad_accum=2, total_steps=2) == [5, 3]
    assert step_target_counts(ex, schedule, grad_accum=1, total_steps=4) == [2, 3, 1, 2]
    assert global_step_targets([5, 3]) == [5, 3]

    tcfg = load_config(None, ["train.epochs=2", "train.grad_accum=2", "train.tokens_per_micro_batch=64"]).train
    rows = [{"input_ids": [1] * n, "labels": [IGNORE_INDEX] * (n // 2) + [1] * (n - n // 2)} for n in range(4, 30)]
    schedule, steps = build_schedule(len(rows), [len(r["input_ids"]) for r in rows], tcfg)
    counts = step_target_counts(rows, schedule, 2, steps)
    assert len(counts) == steps and sum(counts) == sum(target_count(rows[i]) for m in schedule for i in m)


def test_hf_num_items_and_logits_paths_give_the_summed_loss():
    """`num_items_in_batch` through the HF forward and the loss computed from the logits both give Σ CE / n; with n
    the micro-batch's own count it is HF's plain mean."""
    model = tiny_llama()
    examples, schedule = rank_data()[1]
    batch = collate([examples[i] for i in schedule[0]], pad_id=0)
    own = sum(target_count(examples[i]) for i in schedule[0])
    assert hf_takes_num_items(model)
    hf = micro_batch_loss(model, batch, 100, use_hf_loss=True)
    mine = micro_batch_loss(model, batch, 100, use_hf_loss=False)
    mean = model(**batch, use_cache=False).loss
    torch.testing.assert_close(hf, mine)
    torch.testing.assert_close(hf * 100 / own, mean)
    torch.testing.assert_close(summed_token_loss(model(**batch).logits, batch["labels"]) / own, mean)

    # train.lora: the peft wrapper passes the count through to the transformers model inside
    from peft import get_peft_model

    from toolace_r.config import LoraConfig
    from toolace_r.train.export import _peft_config

    lora = get_peft_model(tiny_llama(), _peft_config(LoraConfig(enabled=True, dropout=0.0)))
    assert hf_takes_num_items(lora)
    torch.testing.assert_close(micro_batch_loss(lora, batch, 100, use_hf_loss=True),
                               micro_batch_loss(lora, batch, 100, use_hf_loss=False))

    class RemoteCode(torch.nn.Module):  # a model from outside transformers: its loss comes from the logits
        def forward(self, **kwargs):
            return model(**kwargs)

    assert not hf_takes_num_items(RemoteCode())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _reference() -> tuple[dict, list[float]]:
    """One process, each step's rows of both ranks together, HF's plain mean over all of them (= Σ CE / N_step),
    plain SGD: (weights after STEPS steps, step losses)."""
    model = tiny_llama()
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    data = rank_data()
    losses = []
    for step in range(STEPS):
        window = slice(step * GRAD_ACCUM, (step + 1) * GRAD_ACCUM)
        rows = [ex[i] for ex, sched in data for micro in sched[window] for i in micro]
        loss = model(**collate(rows, pad_id=0), use_cache=False).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return {k: v.detach().clone() for k, v in model.state_dict().items()}, losses


def test_two_ranks_with_unequal_micro_batches_match_one_process(tmp_path):
    """2 gloo ranks × 2 micro-batches per step, with 2-4 target tokens per micro-batch on one rank and 16-23 on the
    other, under ZeRO 0, 1, 2 and 3 (and the logits path): the weights after 2 SGD steps match one process on each
    step's rows together, and the logged step loss is that process's loss. Today's per-micro-batch mean does not."""
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    port, script = _free_port(), Path(loss_ranks.__file__)
    logs = [open(tmp_path / f"rank{r}.log", "w") for r in range(2)]
    procs = [subprocess.Popen([sys.executable, str(script), str(r), "2", str(port), str(tmp_path)], env=env,
                              stdout=logs[r], stderr=subprocess.STDOUT) for r in range(2)]
    try:
        codes = [p.wait(timeout=240) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        for f in logs:
            f.close()
    assert codes == [0, 0], "\n".join((tmp_path / f"rank{r}.log").read_text()[-3000:] for r in range(2))

    results = torch.load(tmp_path / RESULT_FILE)
    data = rank_data()
    want_counts = [sum(target_count(ex[i]) for ex, s in data for m in s[k * GRAD_ACCUM:(k + 1) * GRAD_ACCUM] for i in m)
                   for k in range(STEPS)]
    assert results["step_targets"] == want_counts
    ref, ref_losses = _reference()
    init = results["init"]
    torch.testing.assert_close(init, tiny_llama().state_dict())  # the ranks start from the reference's weights

    def delta(state: dict) -> torch.Tensor:
        return torch.cat([(state[k] - init[k]).flatten() for k in sorted(ref)])

    want = delta(ref)
    assert want.abs().max() > 1e-3  # the steps move the weights
    for variant in ("zero0", "zero1", "zero2", "zero3", "zero2_logits"):
        torch.testing.assert_close(delta(results[variant]), want, rtol=1e-4, atol=1e-6, msg=lambda m: f"{variant}: {m}")
        assert results["shares"][variant] == pytest.approx(ref_losses, rel=1e-5), variant
    # the data tells exact normalisation from today's mean of per-micro-batch means
    today = delta(results["today_zero2"])
    assert (today - want).norm() > 0.05 * want.norm()
