"""k answers per prompt, for probing: a thin caller of the decoding engine (toolace_r.engine).

`Generator.generate(prompts, n=k, ...)` submits one engine request per prompt, its n sequences sharing one prefill
of the prompt (the engine copies the prompt's cache row n - 1 times), and returns each prompt's answers as text.
Batching is the engine's: requests run continuously under its KV-cache budget, so an answer that ends early frees
its row for the next prompt instead of waiting for the longest answer of a fixed batch.

Sampling is deterministic per prompt: prompt i draws from `seeds[i]` (sequence j from seeds[i] + j), so a sample's
answers do not depend on which other samples were probed with it. Greedy decoding (temperature 0) computes one answer
and copies it n times: the n answers are identical anyway.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch


@dataclass
class Generation:
    text: str  # decoded answer, special tokens removed, up to (excluding) EOS
    n_tokens: int  # generated tokens up to and excluding EOS


class Generator:
    """A model, its tokenizer and one decoding engine; `generate` answers prompts k times."""

    def __init__(self, model: Any, tokenizer: Any, kv_cache_tokens: int = 0):
        from toolace_r.engine import Engine

        self.model, self.tokenizer = model, tokenizer
        self.engine = Engine(model, tokenizer, kv_cache_tokens=kv_cache_tokens)
        self.stop_ids = self.engine.eos

    @classmethod
    def from_path(cls, path: str, dtype: str = "auto", device: str | torch.device | None = None,
                  trust_remote_code: bool = False, kv_cache_tokens: int = 0) -> "Generator":
        """Load with `models.load_model`: bf16 on a GPU when there is one, fp32 on CPU (models.pick_dtype)."""
        from toolace_r.models import load_model

        model, tokenizer = load_model(path, dtype=dtype, device=device, trust_remote_code=trust_remote_code)
        return cls(model, tokenizer, kv_cache_tokens)

    @torch.inference_mode()
    def generate(
        self,
        prompts: Sequence[str],
        n: int = 1,
        temperature: float = 0.0,
        top_p: float = 1.0,
        max_new_tokens: int = 128,
        seed: int | Sequence[int] = 0,
        guides: Sequence[Any] | None = None,
    ) -> list[list[Generation]]:
        """`n` answers for each prompt, in prompt order. temperature 0 = greedy (n identical answers).

        `seed`: one int (prompt i draws from seed + i * n) or one seed per prompt. `guides[i]` constrains prompt i's
        answers (toolace_r.constrain.RowGuide or a zero-argument factory of one per sequence; toolace_r.testing has
        one that forces known text)."""
        from toolace_r.engine import Request, Sampling

        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        seeds = [seed + i * n for i in range(len(prompts))] if isinstance(seed, int) else list(seed)
        if len(seeds) != len(prompts):
            raise ValueError(f"got {len(seeds)} seeds for {len(prompts)} prompts")
        draws = 1 if temperature <= 0 else n
        encoded = self.tokenizer(list(prompts), add_special_tokens=False)["input_ids"] if prompts else []
        requests = [Request(prompt=ids, sampling=Sampling(temperature, top_p, s, max_new_tokens), n=draws,
                            guide=guides[i] if guides is not None else None)
                    for i, (ids, s) in enumerate(zip(encoded, seeds))]
        self.engine.run(requests)
        out = []
        for request in requests:
            answers = [self._decode(seq[-1]) for seq in request.answers]
            out.append(answers * n if draws == 1 else answers)
        return out

    def _decode(self, ids: list[int]) -> Generation:
        end = next((i for i, t in enumerate(ids) if t in self.stop_ids), len(ids))
        return Generation(text=self.tokenizer.decode(ids[:end], skip_special_tokens=True).strip(), n_tokens=end)


def stop_ids(model: Any, tokenizer: Any) -> set[int]:
    """EOS ids from the model's generation config (may be a list, e.g. Qwen's <|im_end|> and <|endoftext|>) and the
    tokenizer."""
    ids: set[int] = set()
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if isinstance(configured, int):
        ids.add(configured)
    elif configured:
        ids.update(int(x) for x in configured)
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    return ids


def pin_torch_threads(cpus: float) -> int:
    """Give this process's torch `max(1, int(cpus))` intra-op threads — the CPUs its Ray actor or worker was given —
    and return that number. Call it first thing in every actor and training worker.

    Why: a reduction (a matmul, a softmax sum) is split across threads, so the thread count decides the order in
    which floats are added, and a different order now and then flips a greedy argmax or a sampled token. torch's
    default is the number of cores it sees, which differs between machines and is not what Ray reserved. With
    the count taken from the config, the same config computes the same floats on any machine load.
    (torch.set_num_threads also sets MKL's thread count and turns MKL's dynamic thread adjustment off.)"""
    import os

    n = max(1, int(cpus))
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):  # libraries that read them later
        os.environ[var] = str(n)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # speed only: tokens are the same either way
    torch.set_num_threads(n)
    return n
