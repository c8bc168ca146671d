"""How the engine picks a token: greedy argmax, or temperature + nucleus (top_p) sampling from a generator seeded per
sequence.

Why a random stream per sequence: a sampled answer then depends on its own seed only, not on which other sequences
happened to share its forward passes or in which order they were admitted. Probing k answers of a sample gives the same
answers alone, in a batch of 16 samples, or in a server's stream of requests. Each sequence draws one uniform number per
token from its own `random.Random(seed)`; the tokens of a whole pass are then picked in one batched operation
(`sample`: inverse-CDF over the nucleus), so per-sequence streams cost no per-row tensor work.

Our settings are the authority on the distribution: nothing a checkpoint ships (top_k, repetition penalties) applies,
so a pass rate means the same for every model.
"""
from __future__ import annotations

import random
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Sampling:
    """Decoding settings of one request."""
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    seed: int = 0
    max_new_tokens: int = 128

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0


class Picker:
    """Picks tokens for one sequence: `picker(logits[..., vocab]) → ids[...]` (the interface guides call), and
    `draw()`, its next uniform number, for a batched `sample` of many sequences at once."""

    def __init__(self, sampling: Sampling, seed: int):
        self.sampling = sampling
        self.rng = None if sampling.greedy else random.Random(seed)

    @property
    def greedy(self) -> bool:
        return self.rng is None

    def draw(self) -> float:
        return self.rng.random()

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        if self.rng is None:
            return logits.argmax(dim=-1)
        flat = logits.reshape(-1, logits.shape[-1])
        uniforms = torch.tensor([self.draw() for _ in range(flat.shape[0])], dtype=torch.float64)
        return sample(flat, self.sampling.temperature, self.sampling.top_p, uniforms).reshape(logits.shape[:-1])


def sample(logits: torch.Tensor, temperature: float, top_p: float, uniforms: torch.Tensor) -> torch.Tensor:
    """One token per row of logits [rows, vocab]: softmax(logits / temperature) restricted to the nucleus (the
    smallest set of most likely tokens whose probability reaches top_p, as transformers' TopPLogitsWarper keeps it;
    the most likely token always stays), picked by inverse CDF at `uniforms[row]` in [0, 1)."""
    probs = torch.softmax(logits.double() / temperature, dim=-1)
    target = uniforms.to(probs.device)[:, None]
    if top_p >= 1.0:  # the whole distribution: no order needed
        cumulative = probs.cumsum(dim=-1)
        return torch.searchsorted(cumulative, target * cumulative[:, -1:]).clamp(max=probs.shape[-1] - 1).squeeze(-1)
    # the nucleus is almost always among the few most likely tokens: sort those only, and the whole vocabulary just
    # for rows whose top candidates do not reach top_p (the same tokens either way)
    candidates = min(probs.shape[-1], _CANDIDATES)
    sorted_probs, order = probs.topk(candidates, dim=-1)
    short = sorted_probs.sum(dim=-1) < min(top_p, 1.0 - 1e-9)
    if candidates < probs.shape[-1] and bool(short.any()):
        full_probs, full_order = probs[short].sort(dim=-1, descending=True)
        index = short.nonzero().squeeze(-1)
        sorted_probs = _widen(sorted_probs, probs.shape[-1])
        order = _widen(order, probs.shape[-1])
        sorted_probs[index], order[index] = full_probs, full_order
    cumulative = sorted_probs.cumsum(dim=-1)
    keep = (cumulative - sorted_probs) < top_p  # the mass of the more likely tokens is below top_p
    sorted_probs = sorted_probs * keep
    cumulative = sorted_probs.cumsum(dim=-1)
    index = torch.searchsorted(cumulative, target * cumulative[:, -1:]).clamp(max=cumulative.shape[-1] - 1)
    return order.gather(-1, index).squeeze(-1)


_CANDIDATES = 64


def _widen(t: torch.Tensor, width: int) -> torch.Tensor:
    """t [rows, k] padded with zeros to [rows, width] (zero probability, token 0: never picked)."""
    return torch.cat([t, t.new_zeros((t.shape[0], width - t.shape[1]))], dim=-1)
