"""Batched generation shared by probing, evaluation and serving.

One `Generator` wraps a Hugging Face causal LM and its tokenizer. `generate(prompts, n=k, ...)` returns k answers
per prompt. What makes it fast on a CPU as well as on a GPU:

- prompts are tokenized once and sorted by length (longest first, so an out-of-memory shows up in the first batch),
  then cut into batches: each batch pads to a similar length, so little compute goes into padding;
- left padding, so every row's next token sits in the same (last) column;
- the k sampled answers of a prompt share its prompt: the prompt is run through the model once, its KV cache is
  copied k times, and only the answers are decoded k-fold (`share_prefix=True`, the default). Plain
  `num_return_sequences` would run the prompt k times; on tool-calling prompts (a long tool list, a short answer)
  the prompt is most of the work (benchmarks/probe_throughput.py measures both);
- greedy decoding (temperature 0) computes one answer and copies it n times: the n answers are identical anyway.

Sampling is deterministic given `seed`: the torch RNG is reseeded per batch (seed + batch index) inside
`torch.random.fork_rng`, so the caller's RNG state is untouched and the same inputs give the same answers.
"""
from __future__ import annotations

import inspect
import logging
from dataclasses import dataclass
from typing import Any, Sequence

import torch
from transformers import LogitsProcessor

log = logging.getLogger(__name__)


@dataclass
class Generation:
    text: str  # decoded answer, special tokens removed, up to (excluding) EOS
    n_tokens: int  # generated tokens up to and excluding EOS / padding


class Generator:
    """Batched `model.generate` with left padding, length-sorted batches and k answers per prompt."""

    def __init__(self, model: Any, tokenizer: Any):
        self.model = model
        self.tokenizer = tokenizer
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.pad_id: int = self.tokenizer.pad_token_id
        self.stop_ids: set[int] = stop_ids(model, tokenizer)
        # Preallocated KV caches (see prefix_cache); switched off, with a warning, for a model that refuses them.
        self.static_cache = True
        # Running totals, for benchmarks and logs: real prompt tokens vs. the padded grid actually computed.
        self.stats = {"prompts": 0, "prompt_tokens": 0, "padded_prompt_tokens": 0, "generated_tokens": 0}
        # transformers 5 renamed `past_key_values` to `cache` and 4.50 `num_logits_to_keep` to `logits_to_keep`.
        forward_args = inspect.signature(model.forward).parameters
        self._cache_arg = "cache" if "cache" in forward_args else "past_key_values"
        self._logits_arg = next((a for a in ("logits_to_keep", "num_logits_to_keep") if a in forward_args), None)

    @classmethod
    def from_path(
        cls, path: str, dtype: str = "auto", device: str | torch.device | None = None, trust_remote_code: bool = False
    ) -> "Generator":
        """Load with `models.load_model`: bf16 on a GPU when there is one, fp32 on CPU (models.pick_dtype)."""
        from toolace_r.models import load_model

        model, tokenizer = load_model(path, dtype=dtype, device=device, trust_remote_code=trust_remote_code)
        return cls(model, tokenizer)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def generate(
        self,
        prompts: Sequence[str],
        n: int = 1,
        temperature: float = 0.0,
        top_p: float = 1.0,
        max_new_tokens: int = 128,
        seed: int = 0,
        batch_size: int = 32,
        logits_processor: Any = None,
        share_prefix: bool = True,
    ) -> list[list["Generation"]]:
        """`n` answers for each prompt, in prompt order. temperature 0 = greedy (n identical answers).

        `batch_size` counts prompts per `model.generate` call (each expands to n rows when sampling).
        `logits_processor` (a transformers LogitsProcessorList) constrains decoding, e.g. a grammar.
        """
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not prompts:
            return []
        greedy = temperature <= 0.0
        draws = 1 if greedy else n
        encoded = self.tokenizer(list(prompts), add_special_tokens=False)["input_ids"]
        self._check_lengths(encoded, max_new_tokens)
        order = sorted(range(len(prompts)), key=lambda i: len(encoded[i]), reverse=True)
        results: list[list[Generation]] = [[] for _ in prompts]
        for batch_index, start in enumerate(range(0, len(order), batch_size)):
            idx = order[start : start + batch_size]
            batch = self.tokenizer.pad({"input_ids": [encoded[i] for i in idx]}, padding=True, return_tensors="pt")
            with torch.random.fork_rng(devices=[] if self.device.type == "cpu" else [self.device]):
                torch.manual_seed(seed + batch_index)
                rows = self._generate_batch(
                    batch["input_ids"], batch["attention_mask"], draws, greedy, temperature, top_p,
                    max_new_tokens, logits_processor, share_prefix,
                )
            for j, i in enumerate(idx):
                answers = [self._decode(r) for r in rows[j * draws : (j + 1) * draws]]
                results[i] = answers * n if greedy else answers
                self.stats["generated_tokens"] += sum(a.n_tokens for a in answers)
            self.stats["prompts"] += len(idx)
            self.stats["prompt_tokens"] += int(batch["attention_mask"].sum())
            self.stats["padded_prompt_tokens"] += batch["input_ids"].numel()
        return results

    # --- internals ------------------------------------------------------------------------------------------------
    def _generation_config(self, greedy: bool, temperature: float, top_p: float, max_new_tokens: int, returns: int,
                           cache_given: bool = False):
        from transformers import GenerationConfig

        # Our config is the authority on the sampling distribution: top_k and repetition penalties a checkpoint ships
        # with are switched off, so that a pass rate means the same thing for every model.
        sampling = {} if greedy else {"temperature": float(temperature), "top_p": float(top_p)}
        return GenerationConfig(
            max_new_tokens=max_new_tokens,
            num_return_sequences=returns,
            do_sample=not greedy,
            top_k=0 if not greedy else None,
            repetition_penalty=1.0,
            pad_token_id=self.pad_id,
            eos_token_id=sorted(self.stop_ids) or None,
            # see prefix_cache: no per-step concatenation of the KV cache (a cache passed in is static already)
            cache_implementation="static" if self.static_cache and not cache_given else None,
            **sampling,
        )

    @torch.inference_mode()
    def _generate_batch(
        self, input_ids, attention_mask, draws, greedy, temperature, top_p, max_new_tokens, logits_processor, share_prefix
    ) -> torch.Tensor:
        """Generated token ids, `draws` consecutive rows per prompt, prompt columns cut off."""
        args = (input_ids, attention_mask, draws, greedy, temperature, top_p, max_new_tokens, logits_processor,
                share_prefix)
        try:
            return self._generate_rows(*args)
        except (TypeError, ValueError, NotImplementedError) as err:  # not out-of-memory: that is a RuntimeError
            if not self.static_cache:
                raise
            log.warning("%s does not take a static KV cache (%s: %s); decoding with a dynamic one",
                        type(self.model).__name__, type(err).__name__, err)
            self.static_cache = False
            return self._generate_rows(*args)

    def _generate_rows(
        self, input_ids, attention_mask, draws, greedy, temperature, top_p, max_new_tokens, logits_processor, share_prefix
    ) -> torch.Tensor:
        device = self.device
        input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
        prompt_len = input_ids.shape[1]
        shared = draws > 1 and share_prefix and prompt_len > 1
        gen_config = self._generation_config(greedy, temperature, top_p, max_new_tokens, 1 if shared else draws,
                                             cache_given=shared)
        kwargs: dict[str, Any] = {"generation_config": gen_config}
        if logits_processor is not None:
            kwargs["logits_processor"] = logits_processor
        if shared:
            kwargs[self._cache_arg] = self.prefix_cache(
                input_ids, attention_mask, copies=draws,
                max_cache_len=prompt_len + max_new_tokens if self.static_cache else None)
            input_ids = input_ids.repeat_interleave(draws, dim=0)
            attention_mask = attention_mask.repeat_interleave(draws, dim=0)
        out = self.model.generate(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
        return out[:, prompt_len:].cpu()

    @torch.inference_mode()
    def prefix_cache(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, copies: int = 1,
                     max_cache_len: int | None = None):
        """KV cache of every left-padded prompt but its last token, each row repeated `copies` times: generate()
        then computes only the uncached last prompt token and the answers.

        With `max_cache_len` the cache is a preallocated StaticCache of that length: decoding then writes each new
        token in place, where a DynamicCache concatenates the whole cache at every step (that copy was ~2/3 of the
        decoding time of k=4 probing batches on CPU; static is ~3x faster there, token for token the same answers).

        Positions count real tokens only, as generate() counts them for the tokens after the prefix: without them
        a left-padded row's prefix would sit `pad` positions further from its answer than in training."""
        mask = attention_mask[:, :-1]
        kwargs = {self._cache_arg: None, "use_cache": True, "position_ids": (mask.long().cumsum(-1) - 1).clamp(min=0)}
        if self._logits_arg:
            kwargs[self._logits_arg] = 1  # the prefix's logits are not needed: skip the vocab projection
        out = self.model(input_ids=input_ids[:, :-1], attention_mask=mask, **kwargs)
        cache = getattr(out, self._cache_arg)
        if max_cache_len is not None:
            return _to_static_cache(self.model.config, cache, copies, max_cache_len)
        cache.batch_repeat_interleave(copies)
        return cache

    def _decode(self, row: torch.Tensor) -> Generation:
        tokens = row.tolist()
        end = next((i for i, t in enumerate(tokens) if t in self.stop_ids or t == self.pad_id), len(tokens))
        text = self.tokenizer.decode(tokens[:end], skip_special_tokens=True)
        return Generation(text=text.strip(), n_tokens=end)

    def _check_lengths(self, encoded: list[list[int]], max_new_tokens: int) -> None:
        limit = getattr(self.model.config, "max_position_embeddings", None)
        if not limit:
            return
        longest = max(range(len(encoded)), key=lambda i: len(encoded[i]))
        if len(encoded[longest]) + max_new_tokens > limit:
            from toolace_r.errors import ToolaceError

            raise ToolaceError(
                f"prompt {longest} has {len(encoded[longest])} tokens; with max_new_tokens={max_new_tokens} it exceeds "
                f"the model's max_position_embeddings={limit}"
            )


def _to_static_cache(config: Any, cache: Any, copies: int, max_cache_len: int) -> Any:
    """A StaticCache holding `cache`'s keys and values, each row repeated `copies` times, room for `max_cache_len`
    positions. Filled through the public `Cache.update`, as a forward pass would fill it."""
    from transformers import StaticCache

    static = StaticCache(config=config, max_cache_len=max_cache_len)
    for index, layer in enumerate(cache.layers):
        static.update(layer.keys.repeat_interleave(copies, dim=0), layer.values.repeat_interleave(copies, dim=0), index)
    return static


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


class ForceTokens(LogitsProcessor):
    """A logits processor that makes the model emit a given continuation (then EOS) after given prompts, through the
    ordinary `generate` path; rows whose prompt is not listed decode freely.

    Why: to replay known answers through the real decoding, parsing and checking code (tests force a model to say
    the gold answer and expect pass rate 1), or to score a fixed answer with the same sampling settings.
    `forced` maps a prompt's token ids (as the Generator encodes it: no added special tokens) to the answer's ids.
    """

    def __init__(self, forced: dict[tuple[int, ...], list[int]], pad_id: int, eos_id: int):
        self.forced = {tuple(p): list(a) + [eos_id] for p, a in forced.items()}
        self.pad_id = pad_id

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        for row, ids in enumerate(input_ids.tolist()):
            start = next((i for i, t in enumerate(ids) if t != self.pad_id), len(ids))
            ids = ids[start:]
            for prompt, answer in self.forced.items():
                if len(ids) >= len(prompt) and tuple(ids[: len(prompt)]) == prompt:
                    step = len(ids) - len(prompt)
                    token = answer[min(step, len(answer) - 1)]
                    scores[row, :] = float("-inf")
                    scores[row, token] = 0.0
                    break
        return scores

    @classmethod
    def for_texts(cls, tokenizer: Any, forced_texts: dict[str, str]) -> "ForceTokens":
        """Prompt text → answer text, encoded exactly as Generator encodes prompts."""
        encode = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
        return cls({tuple(encode(p)): encode(a) for p, a in forced_texts.items()}, tokenizer.pad_token_id,
                   tokenizer.eos_token_id)
