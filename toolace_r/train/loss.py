"""Exact loss normalisation of an optimizer step, under DeepSpeed's data parallelism and gradient accumulation.

The loss of one optimizer step is the sum of the target-token cross entropies over all of that step's micro-batches
on all ranks, divided by the number of target tokens of the whole step (all ranks):

    L_step = Σ_ranks Σ_micro Σ_targets CE  /  N_step

as TRL / HF Trainer do with `num_items_in_batch`. HF's default per-micro-batch mean (`model(**batch).loss`) is not
that: micro-batches are formed by a token budget, so a micro-batch with few target tokens (long prompts, short
answers) weighs as much as one with many, and each rank's average counts as much as every other rank's.

How it is computed:
- `step_target_counts` counts each step's target tokens on this rank from the run's schedule (known up front,
  rows.build_schedule), and `global_step_targets` sums the vector over the ranks with one all_reduce at start. The
  counts depend only on the schedule, so a resumed worker (start_step > 0) gets the same N for every step.
- `micro_batch_step` runs one micro-batch: forward, the micro-batch's share `Σ CE / N_step`, scaled by
  `deepspeed_loss_factor` (which cancels DeepSpeed's own scaling, see there), `engine.backward`, `engine.step`. It
  returns the unscaled share, so the shares summed over the step's micro-batches and ranks are L_step itself: the
  logged loss, not a mean of micro-batch means.

A target token is a label that a prediction is scored against (rows.target_count): `labels[1:]` that are not
IGNORE_INDEX, what HF Trainer counts for `num_items_in_batch`.
"""
from __future__ import annotations

import contextlib
from typing import Any, Callable, Sequence

from toolace_r.train.rows import IGNORE_INDEX, target_count


def step_target_counts(examples: Sequence[dict], schedule: Sequence[Sequence[int]], grad_accum: int,
                       total_steps: int) -> list[int]:
    """This rank's target tokens per optimizer step: step s is `schedule[s*grad_accum:(s+1)*grad_accum]`."""
    ga = max(1, grad_accum)
    per_row = [target_count(e) for e in examples]
    return [sum(per_row[i] for micro in schedule[s * ga:(s + 1) * ga] for i in micro) for s in range(total_steps)]


def global_step_targets(local_counts: Sequence[int], device: Any = "cpu") -> list[int]:
    """Each step's target tokens over all ranks: one all_reduce (sum) of the per-step vector, every rank calls it
    once (identity without a process group)."""
    import torch
    import torch.distributed as dist

    counts = torch.tensor(list(local_counts), dtype=torch.long, device=device)
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(counts)
    return [int(c) for c in counts.cpu().tolist()]


def deepspeed_loss_factor(engine: Any) -> int:
    """What the per-micro-batch loss is multiplied by so that the gradient the optimizer sees is exactly ∇ L_step.

    `gradient_accumulation_steps × data-parallel world size` (the world size only when DeepSpeed averages gradients,
    its default `gradient_allreduce_op: mean`; with `sum` it is 1). Read against DeepSpeed 0.19's source:
    - `engine.backward(loss)` (scale_wrt_gas=True, the default) differentiates `loss / gradient_accumulation_steps`.
      Its output hooks divide by the GAS again only for a backward that does not go through `engine.backward` (the
      graph tracker marks ours as already scaled), so the division happens once.
    - The gradient reduction averages over the data-parallel ranks in every ZeRO stage: stage 0
      `allreduce_bucket` (all_reduce, then × predivide_factor / dp_world_size, factor 1 by default); stages 1 and 2
      `average_tensor` (`tensor.div_(dp_world_size / sequence_parallel_size)` before the reduce, or
      `gradient_reduction_w_predivide` without reduce_scatter); stage 3 `__avg_scatter_contiguous_grads` /
      `__avg_scatter_grads` (`reduce_scatter_coalesced` pre-divides by the partition world size).
      Sequence parallelism is not used here (size 1).
    So rank r's micro-batch gradient g reaches the optimizer as Σ_r g / (GAS · dp); feeding it `g · GAS · dp`
    leaves the plain sum Σ_ranks Σ_micro ∇(Σ CE / N_step) = ∇ L_step. Gradient clipping then clips that exact
    gradient.
    """
    ga = int(engine.gradient_accumulation_steps())
    dp = int(engine.dp_world_size) if getattr(engine, "gradient_average", True) else 1
    sp = int(getattr(engine, "sequence_parallel_size", 1) or 1)
    if sp != 1:
        raise NotImplementedError("exact loss normalisation assumes no sequence parallelism")
    return ga * dp


def hf_takes_num_items(model: Any) -> bool:
    """Whether `model(**batch, num_items_in_batch=n).loss` is `Σ CE / n`: a causal LM class of transformers itself
    (a peft wrapper is looked through) that does not opt out with `accepts_loss_kwargs = False`. A model from remote
    code may take **kwargs and silently ignore the count, so it gets the loss computed from the logits instead."""
    module = getattr(model, "module", model)  # a DeepSpeed engine's model
    if hasattr(module, "get_base_model"):  # peft
        module = module.get_base_model()
    cls = type(module)
    return (cls.__module__.startswith("transformers.") and hasattr(module, "loss_function")
            and getattr(module, "accepts_loss_kwargs", True) is not False)


def summed_token_loss(logits: Any, labels: Any) -> Any:
    """Σ of the target-token cross entropies (fp32), labels shifted as HF's ForCausalLMLoss shifts them."""
    import torch.nn.functional as F

    shift_logits = logits[..., :-1, :].float()
    shift_labels = labels[..., 1:].to(shift_logits.device)
    return F.cross_entropy(shift_logits.reshape(-1, shift_logits.size(-1)), shift_labels.reshape(-1),
                           ignore_index=IGNORE_INDEX, reduction="sum")


def micro_batch_loss(model: Any, batch: dict, step_targets: int, use_hf_loss: bool) -> Any:
    """This micro-batch's share of the step's loss, `Σ CE / step_targets` (a graph-carrying scalar)."""
    n = max(1, int(step_targets))
    if use_hf_loss:
        return model(**batch, num_items_in_batch=n, use_cache=False).loss
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    logits = model(**inputs, use_cache=False).logits
    return summed_token_loss(logits, batch["labels"]) / n


def micro_batch_step(engine: Any, batch: dict, step_targets: int, factor: int, use_hf_loss: bool,
                     autocast: Callable[[], Any] = contextlib.nullcontext) -> float:
    """Forward (under `autocast()`), backward and `engine.step()` of one micro-batch of a step whose target tokens
    over all ranks are `step_targets`; `factor` is `deepspeed_loss_factor(engine)`. Returns the micro-batch's share
    `Σ CE / step_targets`: summed over the step's micro-batches and ranks it is the step's mean target-token loss."""
    with autocast():
        share = micro_batch_loss(engine, batch, step_targets, use_hf_loss)
    engine.backward(share * factor)
    engine.step()
    return float(share.detach().item())
