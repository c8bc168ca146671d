"""One rank of tests/train/test_loss.py's distributed check, run as a script: `loss_ranks.py RANK WORLD PORT OUT`.

Builds the same seeded tiny Llama on every rank, trains it for STEPS optimizer steps with the real DeepSpeed engine
(the production `deepspeed_config`, ZeRO 0-3) and the production `micro_batch_step`, over a gloo group, and rank 0
saves the weights after each variant to OUT/RESULT_FILE. SGD (no momentum, no weight decay, no clipping) makes the
weight change the gradient itself. Also run: today's per-micro-batch mean (`engine(**batch).loss`), to show the data
tells the two apart.

The data (`rank_data`) is shared with the test, which trains one process on each step's rows together.
"""
from __future__ import annotations

import os
import sys

STEPS = 2
GRAD_ACCUM = 2
LR = 0.5
RESULT_FILE = "results.pt"
VARIANTS = ["zero0", "zero1", "zero2", "zero3", "zero2_logits", "today_zero2"]


def tiny_llama():
    """A seeded random Llama (the production model class; HF's causal LM loss)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64,
                         tie_word_embeddings=True, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    return LlamaForCausalLM(config)


def _row(seed: int, length: int, targets: int) -> dict:
    """A tokenised row as encode_row makes it: `length` ids, the last `targets` of them the answer."""
    import random

    rng = random.Random(seed)
    ids = [rng.randrange(3, 64) for _ in range(length)]
    return {"input_ids": ids, "labels": [-100] * (length - targets) + ids[length - targets:]}


def rank_data(world: int = 2) -> list[tuple[list[dict], list[list[int]]]]:
    """(examples, schedule) of each rank: STEPS steps × GRAD_ACCUM micro-batches, of very unequal target counts
    (rank 0 has long prompts and short answers, rank 1 the opposite), as token-budgeted micro-batches come out."""
    assert world == 2
    # (length, target tokens) per row
    rank0 = [(20, 2), (12, 3), (10, 1), (18, 4), (9, 2), (11, 1), (7, 2)]
    rank1 = [(16, 13), (16, 10), (24, 21), (14, 12), (22, 19), (8, 6)]
    sched0 = [[0], [1, 2], [3], [4, 5, 6]]
    sched1 = [[0, 1], [2], [3, 4], [5]]
    ex0 = [_row(100 + i, n, t) for i, (n, t) in enumerate(rank0)]
    ex1 = [_row(200 + i, n, t) for i, (n, t) in enumerate(rank1)]
    return [(ex0, sched0), (ex1, sched1)]


def main(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), LOCAL_WORLD_SIZE=str(world),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    import deepspeed
    import torch

    from toolace_r.config import load_config
    from toolace_r.train.export import gather_state_dict
    from toolace_r.train.loss import (
        deepspeed_loss_factor,
        global_step_targets,
        hf_takes_num_items,
        micro_batch_step,
        step_target_counts,
    )
    from toolace_r.train.optim import _skip_shm_comm_build, deepspeed_config
    from toolace_r.train.rows import collate

    torch.set_num_threads(1)
    _skip_shm_comm_build()
    deepspeed.init_distributed(dist_backend="gloo")
    examples, schedule = rank_data(world)[rank]
    step_targets = global_step_targets(step_target_counts(examples, schedule, GRAD_ACCUM, STEPS))
    results: dict = {"step_targets": step_targets, "shares": {}}
    if rank == 0:
        results["init"] = {k: v.clone() for k, v in tiny_llama().state_dict().items()}
    for variant in VARIANTS:
        stage = int(variant.split("zero")[1][0])
        tcfg = load_config(None, [f"train.zero_stage={stage}", f"train.grad_accum={GRAD_ACCUM}", "train.grad_clip=0",
                                  "train.precision=fp32"]).train
        model = tiny_llama()
        optimizer = torch.optim.SGD(model.parameters(), lr=LR)
        engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer,
                                          config=deepspeed_config(tcfg, world, on_gpu=False))
        engine.train()
        factor, use_hf = deepspeed_loss_factor(engine), hf_takes_num_items(engine.module)
        if variant.endswith("_logits"):
            use_hf = False
        elif not variant.startswith("today"):
            assert use_hf, "a transformers Llama takes num_items_in_batch"
        shares = []
        for step in range(STEPS):
            step_share = torch.zeros(1, dtype=torch.float64)
            for micro in schedule[step * GRAD_ACCUM:(step + 1) * GRAD_ACCUM]:
                batch = collate([examples[i] for i in micro], pad_id=0)
                if variant.startswith("today"):  # the worker loop before exact normalisation
                    loss = engine(**batch, use_cache=False).loss
                    engine.backward(loss)
                    engine.step()
                    step_share += loss.item()
                else:
                    step_share += micro_batch_step(engine, batch, step_targets[step], factor, use_hf)
            torch.distributed.all_reduce(step_share)
            shares.append(float(step_share))
        results["shares"][variant] = shares
        state = gather_state_dict(engine, stage)  # every rank calls it (ZeRO-3 gathers)
        if rank == 0:
            results[variant] = {k: v.detach().float().cpu().clone() for k, v in state.items()}
        del engine, optimizer, model
    if rank == 0:
        torch.save(results, os.path.join(out, RESULT_FILE))
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
