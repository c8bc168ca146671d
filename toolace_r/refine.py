"""Adaptive self-refinement at inference (PAPER.md §3): answer, then let the model check its own answer until two
rounds agree.

Round 1 answers the request. Round r > 1 shows the model its previous answer with the fixed instruction
(`prompts.refine_messages`) and asks again. An item stops when its parsed calls equal the previous round's
(`calls.calls_equal`: order-insensitive; two no-call answers are equal; an unparseable answer never counts as stable),
when a model trained with `refine.keep_answer: confirm` answers the confirmation phrase instead of repeating its call
(the previous answer then stands), or at `max_rounds`. Many items refine together in one batch and each stops on its own.

Why a decoder of our own rather than `model.generate`: the two things that make later rounds cheap need control over
the KV cache between rounds.

- Prefix reuse. Round r's prompt is round 1's prompt + round 1's answer + the instruction (the chat template appends
  turns), so the cache built while answering round 1 already holds most of it. We tokenise round r's full prompt,
  keep the cached tokens up to the longest common prefix with it, and feed only the rest. Where BPE merges across the
  boundary change the tokens, the common prefix is simply shorter (down to a full recompute); the tokens the model sees
  are always exactly those of the full prompt, so the result equals recomputing from scratch.
- Draft verification (greedy only). A model that means to keep its answer will reproduce the previous answer token by
  token. We feed that answer as a draft right after the prompt, in the same forward pass, and accept the longest
  prefix the model's own argmax agrees with (as speculative decoding verifies a draft). The first disagreement is the
  model's next token. A stable round then costs one forward pass. After a disagreement the answer often rejoins the
  draft (one value edited, the rest kept), so each later pass proposes the draft's continuation from where the
  answer's last tokens occur in it (prompt-lookup decoding on the previous answer) and verifies it the same way.

Both leave holes in a row's cache (dropped suffixes, rejected draft tokens), which cost nothing under full attention.
A sliding-window layer attends to its last W slots, holes included, so for such models both are switched off
(`holes_are_free`) and rounds are decoded plainly.

Batching without moving memory: every row of the batch shares one `DynamicCache`. New tokens of different lengths are
left-padded into one block; the 2-D attention mask marks pads, rejected draft tokens and dropped suffixes as holes, and
explicit `position_ids` count only the real tokens of a row, so each row sees exactly its own sequence. Rows whose
refinement is finished leave the batch (`batch_select_indices`). Within a round, rows whose answer is finished are
parked once a quarter of the batch is: their cache rows are set aside until the round ends, so the passes that
finish the longer answers run on the unfinished rows only (a pass's cost grows with its rows on a CPU, and with
memory traffic on a GPU).
"""
from __future__ import annotations

import inspect
import itertools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from toolace_r import generation
from toolace_r.data import prompts

log = logging.getLogger(__name__)


@dataclass
class RefineItem:
    tools: list[dict[str, Any]]
    messages: list[dict[str, Any]]
    # the round-1 prompt's token ids when the caller already has them (the server tokenises each request to check it
    # against the context limit); None: rendered and tokenised here
    prompt_ids: list[int] | None = None
    # toolace_r.constrain.CallConstraint: every round's answer is decoded under it (a valid call, or with
    # allow_text a call or no-call text); None: plain decoding
    constraint: Any = None


@dataclass
class RefineResult:
    answer: str  # the last round's answer text
    calls: list[dict[str, Any]] | None  # its parsed calls; None when it does not parse
    rounds: int  # rounds used (1 = the first answer only)
    tokens: int  # tokens generated over all rounds (EOS included: each costs a decoding step)
    first_answer: str  # round 1's answer: the single-pass answer
    forward_passes: int  # forward passes this item took part in (a verified draft costs one)
    answers: list[str] = field(default_factory=list)  # every round's answer, in order


@dataclass
class RoundStats:
    """What one refinement round cost the whole batch (for benchmarks and logs)."""
    items: int = 0
    forward_passes: int = 0  # model calls (each runs the whole batch)
    tokens_fed: int = 0  # real (non-pad) tokens fed
    tokens_generated: int = 0
    draft_tokens: int = 0
    draft_accepted: int = 0
    time_s: float = 0.0  # wall clock
    cpu_s: float = 0.0  # this process's CPU time: steadier than wall clock on a shared, oversubscribed machine


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def stop_ids(model: Any, tokenizer: Any) -> set[int]:
    """Token ids that end an answer (generation.stop_ids); refinement cannot decode without one."""
    ids = generation.stop_ids(model, tokenizer)
    if not ids:
        raise ValueError("the tokenizer has no EOS token and the model's generation config names none")
    return ids


_PLAIN_ONLY_NOTED: set[int] = set()  # models already logged as decoding without the cache shortcuts


def holes_are_free(model: Any) -> bool:
    """Whether masked slots in the middle of a row (a cropped answer, rejected draft tokens) leave its answers as plain
    decoding's: true for full-attention caches. A sliding-window layer attends to its last W slots, holes included,
    so a row with holes there would see fewer real tokens than with plain decoding (left padding, the only holes
    plain decoding makes, falls out of the window first)."""
    from transformers import DynamicCache

    try:
        layers = getattr(DynamicCache(config=model.config), "layers", None)
    except TypeError:  # older transformers: one plain cache for every layer
        return True
    return layers is None or all(type(layer) is _DynamicLayer for layer in layers)


def _grow_in_place(cache: Any) -> None:
    """Swap the plain full-attention layers of a DynamicCache for `_GrowingLayer`s (sliding-window and other special
    layers stay as they are). Transformers versions without per-layer caches keep the plain cache."""
    layers = getattr(cache, "layers", None)
    if _DynamicLayer is not object and isinstance(layers, list):
        cache.layers = [_GrowingLayer() if type(layer) is _DynamicLayer else layer for layer in layers]


try:
    from transformers.cache_utils import DynamicLayer as _DynamicLayer
except ImportError:  # older transformers: _grow_in_place leaves the cache alone
    _DynamicLayer = object


class _GrowingLayer(_DynamicLayer):
    """A DynamicLayer whose keys and values live in buffers with spare room that double when full: appending a
    token writes it in place (amortised cost of the new tokens), where DynamicLayer concatenates the whole cache at
    every decoding step — the copy that was ~2/3 of decoding time on CPU (see generation.prefix_cache)."""

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.device = key_states.device
        self._k = key_states.new_empty((*key_states.shape[:2], 0, key_states.shape[3]))
        self._v = value_states.new_empty((*value_states.shape[:2], 0, value_states.shape[3]))
        self._len = 0
        self._refresh()
        self.is_initialized = True

    def _refresh(self) -> None:
        self.keys, self.values = self._k[:, :, :self._len], self._v[:, :, :self._len]

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        need = self._len + key_states.shape[-2]
        if need > self._k.shape[-2]:
            capacity = max(need, 2 * self._k.shape[-2], 64)
            self._k = self._grown(self._k, capacity)
            self._v = self._grown(self._v, capacity)
        self._k[:, :, self._len:need] = key_states
        self._v[:, :, self._len:need] = value_states
        self._len = need
        self._refresh()
        return self.keys, self.values

    def _grown(self, buffer: torch.Tensor, capacity: int) -> torch.Tensor:
        bigger = buffer.new_empty((*buffer.shape[:2], capacity, buffer.shape[3]))
        bigger[:, :, :self._len] = buffer[:, :, :self._len]
        return bigger

    def get_seq_length(self) -> int:
        return self._len if self.is_initialized else 0

    def crop(self, tokens_to_remove: int) -> None:
        if tokens_to_remove > 0:
            raise ValueError("crop takes a negative number of tokens to remove")
        if self.is_initialized and tokens_to_remove:
            self._len = max(0, self._len + tokens_to_remove)
            self._refresh()

    def batch_repeat_interleave(self, repeats: int) -> None:
        if self.is_initialized:
            self._k, self._v = self._k.repeat_interleave(repeats, dim=0), self._v.repeat_interleave(repeats, dim=0)
            self._refresh()

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        if self.is_initialized:
            self._k, self._v = self._k[indices], self._v[indices]
            self._refresh()

    def take_rows(self, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Copies of these rows' keys and values (the filled length only), for `put_rows` later."""
        return self._k[indices, :, :self._len], self._v[indices, :, :self._len]

    def put_rows(self, n_rows: int, live_rows: list[int], taken: list[tuple[list[int], torch.Tensor, torch.Tensor]]
                 ) -> None:
        """Rebuild an `n_rows` batch: the rows now held go to `live_rows`, each (rows, keys, values) of `taken` to its
        rows. Taken rows are no longer than the cache; the slots after them stay zero (finite values under a mask
        that hides them: uninitialised memory could hold NaN, which a mask does not hide)."""
        k = self._k.new_zeros((n_rows, *self._k.shape[1:]))
        v = self._v.new_zeros((n_rows, *self._v.shape[1:]))
        live = torch.tensor(live_rows, dtype=torch.long, device=k.device)
        k[live], v[live] = self._k, self._v
        for rows, tk, tv in taken:
            if tk.shape[-2] > self._len:
                raise RuntimeError("a parked row is longer than the cache it returns to")
            index = torch.tensor(rows, dtype=torch.long, device=k.device)
            k[index, :, :tk.shape[-2]], v[index, :, :tv.shape[-2]] = tk, tv
        self._k, self._v = k, v
        self._refresh()


class CachedBatch:
    """Rows that share one KV cache, each with its own logical token sequence.

    `seqs[b]` is the sequence row b's next token is conditioned on; `slots[b][i]` is where its i-th token sits in the
    cache. Dropping a row's tail ("crop") only clears those mask slots, so rows never need the same length.
    A row whose answer is finished can be parked (`park`): its cache rows are set aside and the forward passes run
    without it until `unpark` puts it back, so finished rows stop costing compute while the others decode.
    """

    def __init__(self, model: Any, pad_id: int, n_rows: int):
        from transformers import DynamicCache

        self.model = model
        self.device = next(model.parameters()).device
        self.pad_id = pad_id
        try:
            self.cache = DynamicCache(config=model.config)
        except TypeError:  # older transformers
            self.cache = DynamicCache()
        _grow_in_place(self.cache)
        # sliding-window and linear-attention layers cannot drop their last tokens: keep the holes there
        layers = getattr(self.cache, "layers", None)
        self._croppable = layers is None or all(type(layer) in (_DynamicLayer, _GrowingLayer) for layer in layers)
        # rows in the cache's batch (the rest are parked), in cache order; mask rows follow this order
        self.live: list[int] = list(range(n_rows))
        self._pos = {b: b for b in self.live}
        self._parked: list[tuple[list[int], list[tuple[torch.Tensor, torch.Tensor]], torch.Tensor]] = []
        self.mask = torch.zeros((n_rows, 0), dtype=torch.long, device=self.device)
        self.seqs: list[list[int]] = [[] for _ in range(n_rows)]
        self.slots: list[list[int]] = [[] for _ in range(n_rows)]
        self.forward_calls = 0
        params = inspect.signature(model.forward).parameters
        self._cache_kw = "cache" if "cache" in params else "past_key_values"

    @property
    def rows(self) -> int:
        return len(self.seqs)

    def feed(self, segments: list[list[int]], keep: int = 1, right_aligned: bool = False) -> torch.Tensor:
        """Append segments[b] to row b (empty = nothing for that row; parked rows must be empty) in one forward pass;
        return the logits of the last `keep` positions of the live rows, [len(live), keep, vocab], in `live` order.
        Segments are left-padded so every row's last token sits at -1; `right_aligned` pads on the right instead (row
        b's tokens at 0..len-1: ask for keep = the widest segment), so that holes left by rejected tokens gather at the
        end of the cache, where `trim` removes them."""
        if any(segments[b] for b in range(self.rows) if b not in self._pos):
            raise ValueError("feed() got tokens for a parked row")
        width = max(len(s) for s in segments)
        if width == 0:
            raise ValueError("feed() needs at least one token")
        keep = min(keep, width)
        start = self.mask.shape[1]
        n_live = len(self.live)
        ids = torch.full((n_live, width), self.pad_id, dtype=torch.long)
        new_mask = torch.zeros((n_live, width), dtype=torch.long)
        positions = torch.zeros((n_live, width), dtype=torch.long)
        for p, b in enumerate(self.live):
            seg, n = segments[b], len(self.seqs[b])
            if not seg:
                positions[p, :] = max(n - 1, 0)
                continue
            off = 0 if right_aligned else width - len(seg)
            real = slice(off, off + len(seg))
            ids[p, real] = torch.tensor(seg, dtype=torch.long)
            new_mask[p, real] = 1
            positions[p, :] = n  # pads: any position, they are masked
            positions[p, real] = torch.arange(n, n + len(seg))
            self.slots[b].extend(range(start + off, start + off + len(seg)))
            self.seqs[b].extend(seg)
        self.mask = torch.cat([self.mask, new_mask.to(self.device)], dim=1)
        out = self.model(
            input_ids=ids.to(self.device),
            attention_mask=self.mask,
            position_ids=positions.to(self.device),
            use_cache=True,
            logits_to_keep=keep,
            **{self._cache_kw: self.cache},
        )
        self.forward_calls += 1
        return out.logits[:, -keep:, :]

    def trim(self) -> None:
        """Drop the cache's trailing slots that are holes in every row (rejected draft tokens, right padding), so that
        speculation does not leave the attention a growing tail of masked slots to read."""
        if not self._croppable:
            return
        live = self.mask.any(dim=0).nonzero()
        end = int(live[-1]) + 1 if live.numel() else 0
        end = max([end] + [row_mask.shape[1] for _, _, row_mask in self._parked])  # parked rows' slots stay
        extra = self.mask.shape[1] - end
        if extra > 0 and self.cache.get_seq_length() == self.mask.shape[1]:
            self.cache.crop(-extra)
            self.mask = self.mask[:, :end]

    def crop(self, b: int, length: int) -> None:
        """Keep only the first `length` tokens of row b's sequence (the rest become holes in the mask)."""
        if length >= len(self.seqs[b]):
            return
        if b not in self._pos:
            raise ValueError(f"crop() of parked row {b}: unpark() first")
        dropped = self.slots[b][length:]
        if dropped:
            self.mask[self._pos[b], torch.tensor(dropped, device=self.device)] = 0
        del self.seqs[b][length:], self.slots[b][length:]

    def select(self, keep_rows: list[int]) -> None:
        """Keep only these rows (in this order)."""
        self.unpark()
        if keep_rows == list(range(self.rows)):
            return
        index = torch.tensor(keep_rows, dtype=torch.long, device=self.device)
        self.cache.batch_select_indices(index)
        self.mask = self.mask[index]
        self.seqs = [self.seqs[i] for i in keep_rows]
        self.slots = [self.slots[i] for i in keep_rows]
        self.live = list(range(self.rows))
        self._pos = {b: b for b in self.live}

    def park(self, rows: list[int]) -> bool:
        """Take these live rows out of the forward passes until `unpark`. On a CPU a pass costs in proportion to
        rows × tokens, so a finished row riding along as padding costs as much as a decoding one. Returns False (and
        does nothing) where the cache's layers cannot set rows aside, or when no row would be left to run."""
        gone = set(rows)
        stay = [p for p, b in enumerate(self.live) if b not in gone]
        layers = getattr(self.cache, "layers", None) or [None]
        if not all(type(layer) is _GrowingLayer for layer in layers) or not rows or not stay:
            return False
        index = torch.tensor([self._pos[b] for b in rows], dtype=torch.long, device=self.device)
        self._parked.append((list(rows), [layer.take_rows(index) for layer in self.cache.layers], self.mask[index]))
        stay_index = torch.tensor(stay, dtype=torch.long, device=self.device)
        self.cache.batch_select_indices(stay_index)
        self.mask = self.mask[stay_index]
        self.live = [self.live[p] for p in stay]
        self._pos = {b: p for p, b in enumerate(self.live)}
        return True

    def unpark(self) -> None:
        """Put every parked row back, all rows in their original order. Parked rows missed the passes run since:
        their mask is zero over those slots."""
        if not self._parked:
            return
        mask = torch.zeros((self.rows, self.mask.shape[1]), dtype=self.mask.dtype, device=self.device)
        mask[torch.tensor(self.live, dtype=torch.long, device=self.device)] = self.mask
        for rows, _, row_mask in self._parked:
            mask[torch.tensor(rows, dtype=torch.long, device=self.device), :row_mask.shape[1]] = row_mask
        for i, layer in enumerate(self.cache.layers):
            layer.put_rows(self.rows, self.live, [(rows, *kv[i]) for rows, kv, _ in self._parked])
        self.mask = mask
        self._parked = []
        self.live = list(range(self.rows))
        self._pos = {b: b for b in self.live}


class _Picker:
    """Greedy argmax, or temperature sampling from a seeded generator."""

    def __init__(self, temperature: float, seed: int, device: torch.device):
        self.temperature = temperature
        self.generator = None
        if temperature > 0:
            self.generator = torch.Generator(device=device)
            self.generator.manual_seed(seed)

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        if self.temperature <= 0:
            return logits.argmax(dim=-1)
        probs = torch.softmax(logits.float() / self.temperature, dim=-1)
        flat = probs.reshape(-1, probs.shape[-1])
        return torch.multinomial(flat, 1, generator=self.generator).reshape(probs.shape[:-1])


_LOOKUP_START, _LOOKUP_MAX = 4, 32  # draft tokens proposed per pass after a disagreement (see _decode_round)
# park finished rows once they are 1/_PARK_DIVISOR of the live rows: each park copies the live cache, so parking every
# finished row at once costs more than it saves (96 demo items: never 6.94 CPU s, every row 5.09, 1/4 4.96, 1/2 4.97)
_PARK_DIVISOR = 4


def _lookup(out: list[int], draft: list[int], after: int, ngram: int = 3) -> tuple[list[int], int]:
    """Where the answer so far has rejoined the draft: the draft's tokens after the latest `ngram`..1 tokens of `out`,
    searched from draft position `after` on (an edited answer moves forward through the draft), else from the start.
    Returns (proposal, the draft position the proposal starts at); ([], after) when nothing matches.

    Why: a refined answer that changes is mostly a small edit of the previous one (one argument's value, one call
    more or less). After the edit the model rejoins its previous answer, and the rest of the draft can be verified
    in one pass again (prompt-lookup decoding, with the previous answer as the lookup text)."""
    for n in range(min(ngram, len(out)), 0, -1):
        tail = out[-n:]
        start = max(after, n)
        for j in itertools.chain(range(start, len(draft)), range(n, min(start, len(draft)))):
            if draft[j - n:j] == tail:
                return draft[j:], j
    return [], after


def _decode_round(
    batch: CachedBatch,
    segments: list[list[int]],
    drafts: list[list[int]] | None,
    pick: _Picker,
    eos: set[int],
    max_new_tokens: int,
    stats: RoundStats,
    passes: list[int],
    on_tokens: Callable[[int, list[int]], bool] | None = None,
    guides: list[Any] | None = None,
) -> list[list[int]]:
    """One answer per row: feed each row's new prompt tokens (+ its draft), then decode until EOS or the token limit.
    Returns the generated ids per row (EOS included when reached). `passes[b]` counts forward passes row b took part in.

    With drafts (greedy only), every pass verifies a proposal per row: the whole draft right after the prompt, and
    after a disagreement the draft's continuation from where the answer rejoins it (`_lookup`). A row accepts the
    longest proposal prefix its own argmax agrees with, plus the model's token after it — so the answer equals plain
    one-token-at-a-time decoding, in fewer passes.

    `on_tokens(row, new_ids)`, when given, is called after every pass with the tokens each row gained in it (for a
    server that streams them). It only reads: the decoded ids are the same with or without it. It returns True to
    stop a row whose consumer is gone (a disconnected client): that row's answer ends there, the other rows decode
    on unchanged.

    `guides[b]` (toolace_r.constrain.RowGuide), when given, constrains row b: its tokens (draft verification
    included) are chosen by the guide from this pass's logits instead of `pick` alone. Rows without one decode as
    without guides."""
    rows = batch.rows

    def ended(out: list[int]) -> bool:
        return bool(out) and (out[-1] in eos or len(out) >= max_new_tokens)

    drafts = [d[:max_new_tokens] for d in drafts] if drafts else [[] for _ in range(rows)]
    outs: list[list[int]] = [[] for _ in range(rows)]
    done = [False] * rows
    cursor = [0] * rows  # per row: how far into its draft the last proposal started
    # per row: how many draft tokens to propose after the first pass. Every proposed token is computed for the whole
    # batch width, so the length adapts as in assisted generation: doubles while proposals are taken whole, halves
    # when they are not (a row whose answer went its own way stops paying for long proposals)
    budget = [_LOOKUP_START] * rows
    heads = segments  # what each row feeds before its proposal: the new prompt tokens, then its last token
    proposals = drafts
    first = True
    while not all(done):
        feeds = [[] if done[b] else heads[b] + proposals[b] for b in range(rows)]
        lengths = [len(batch.seqs[b]) + len(heads[b]) for b in range(rows)]  # a row's length before its proposal
        keep = max(len(proposals[b]) for b in range(rows) if not done[b]) + 1
        # the first pass's heads are prompt segments of different lengths: left-aligned, logits of the tail only;
        # after it every head is one token, and right alignment lets `trim` drop the rejected tokens' slots
        logits = batch.feed(feeds, keep=keep, right_aligned=not first)
        stats.forward_passes += 1
        stats.tokens_fed += sum(len(f) for f in feeds)
        choice = pick(logits).tolist()  # [live rows, keep]
        for p, b in enumerate(batch.live):
            if done[b]:
                continue
            passes[b] += 1
            prop = proposals[b]
            # preds[i] = the model's token after head + prop[:i]
            preds = choice[p][keep - len(prop) - 1:] if first else choice[p][:len(prop) + 1]
            if guides is not None and guides[b] is not None:
                at = keep - len(prop) - 1 if first else 0
                preds = guides[b].predict(logits[p, at:at + len(prop) + 1], prop, pick, max_new_tokens - len(outs[b]),
                                          preds)
            accepted = 0
            while accepted < len(prop) and preds[accepted] == prop[accepted]:
                accepted += 1
                if prop[accepted - 1] in eos or len(outs[b]) + accepted >= max_new_tokens:
                    break  # the answer ends inside the proposal
            stats.draft_tokens += len(prop)
            stats.draft_accepted += accepted
            if not first and prop:
                budget[b] = min(2 * budget[b], _LOOKUP_MAX) if accepted == len(prop) else max(1, budget[b] // 2)
            before = len(outs[b])
            outs[b].extend(prop[:accepted])
            if not ended(outs[b]):
                outs[b].append(preds[accepted])
                # the proposal tokens after the accepted ones were fed but are not part of this row's sequence
                batch.crop(b, lengths[b] + accepted)
            done[b] = ended(outs[b])
            if guides is not None and guides[b] is not None:
                guides[b].sync(outs[b])
            if on_tokens is not None and on_tokens(b, outs[b][before:]):
                done[b] = True
        batch.trim()
        finished = [b for b in batch.live if done[b]]
        if finished and len(finished) < len(batch.live) and _PARK_DIVISOR * len(finished) >= len(batch.live):
            batch.park(finished)  # stop computing them (one cache copy)
        first = False
        heads = [[o[-1]] if o else [] for o in outs]
        proposals = []
        for b in range(rows):
            prop: list[int] = []
            if not done[b] and drafts[b]:
                prop, cursor[b] = _lookup(outs[b], drafts[b], cursor[b])
                prop = prop[:min(budget[b], max_new_tokens - len(outs[b]))]
            proposals.append(prop)
    batch.unpark()
    stats.tokens_generated += sum(len(o) for o in outs)
    return outs


def _parse(text: str) -> list[dict[str, Any]] | None:
    from toolace_r.calls import parse_calls
    from toolace_r.errors import CallParseError

    try:
        return parse_calls(text)
    except CallParseError:
        return None


def _stable(calls: list | None, previous: list | None) -> bool:
    from toolace_r.calls import calls_equal

    return calls is not None and previous is not None and calls_equal(calls, previous)


@torch.inference_mode()
def adaptive_refine(
    model: Any,
    tokenizer: Any,
    items: list[RefineItem],
    max_rounds: int = 3,
    max_new_tokens: int = 128,
    style: str = "toolace",
    draft_verify: bool = True,
    reuse_prefix: bool = True,
    temperature: float = 0.0,
    *,
    batch_size: int = 16,
    adaptive: bool = True,
    seed: int = 0,
    stats: dict[int, RoundStats] | None = None,
    on_tokens: Callable[[int, int, list[int]], bool] | None = None,
    on_result: Callable[[int, RefineResult], None] | None = None,
    keep_answer: str = "repeat",
) -> list[RefineResult]:
    """Answer every item, then refine each until two consecutive rounds agree or `max_rounds` (see module doc).

    `adaptive=False` always runs `max_rounds` rounds (the fixed-rounds baseline). `stats`, when given, is filled with
    the cost of each round number across all batches. Draft verification applies to greedy decoding only; with
    temperature > 0 it is switched off (a sampled answer is not the argmax the draft is checked against).

    Hooks for a streaming server (both only read; the answers are the same with or without them):
    `on_tokens(item, round, new_ids)` after every forward pass with the tokens the item gained (EOS included);
    returning True stops the item (its consumer is gone): its round ends there and it refines no further.
    `on_result(item, result)` the moment an item's last round is decided, before the rest of its batch finishes.

    `keep_answer` is how the model was trained to keep a right answer (refine.keep_answer): "repeat" it, or "confirm"
    it with `prompts.CONFIRM_ANSWER`, which ends the item with its previous answer (no draft to verify then).
    """
    if keep_answer not in prompts.REFINE_INSTRUCTIONS:
        raise ValueError(f"keep_answer must be one of {sorted(prompts.REFINE_INSTRUCTIONS)}, got {keep_answer!r}")
    if max_rounds < 1:
        raise ValueError(f"max_rounds must be >= 1, got {max_rounds}")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    draft_verify = draft_verify and temperature <= 0 and keep_answer == "repeat"
    if (draft_verify or reuse_prefix) and not holes_are_free(model):
        if id(model) not in _PLAIN_ONLY_NOTED:
            _PLAIN_ONLY_NOTED.add(id(model))
            log.info("the model has sliding-window attention layers: prefix reuse and draft verification are off "
                     "(holes in a row's cache would take window slots and change its answers)")
        draft_verify = reuse_prefix = False
    eos = stop_ids(model, tokenizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(eos)
    device = next(model.parameters()).device
    pick = _Picker(temperature, seed, device)
    stats = stats if stats is not None else {}

    def encode(text: str) -> list[int]:
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    def decode(ids: list[int]) -> str:
        if ids and ids[-1] in eos:
            ids = ids[:-1]
        return tokenizer.decode(ids, skip_special_tokens=True).strip()

    first_prompts = [it.prompt_ids if it.prompt_ids is not None
                     else encode(prompts.render_prompt(tokenizer, it.tools, it.messages, style)) for it in items]
    order = sorted(range(len(items)), key=lambda i: -len(first_prompts[i]))  # similar lengths share a batch
    results: list[RefineResult | None] = [None] * len(items)
    for start in range(0, len(order), batch_size):
        chunk = order[start:start + batch_size]
        item_tokens = item_result = None
        if on_tokens is not None:
            def item_tokens(j: int, rnd: int, ids: list[int], chunk: list[int] = chunk) -> bool:
                return on_tokens(chunk[j], rnd, ids)
        if on_result is not None:
            def item_result(j: int, res: RefineResult, chunk: list[int] = chunk) -> None:
                on_result(chunk[j], res)
        for i, res in zip(chunk, _refine_batch(
            model, tokenizer, [items[i] for i in chunk], [first_prompts[i] for i in chunk], encode, decode,
            pick, eos, pad_id, max_rounds, max_new_tokens, style, draft_verify, reuse_prefix, adaptive, stats,
            item_tokens, item_result, keep_answer,
        )):
            results[i] = res
    return results  # type: ignore[return-value]


def _refine_batch(model, tokenizer, items, first_prompts, encode, decode, pick, eos, pad_id, max_rounds,
                  max_new_tokens, style, draft_verify, reuse_prefix, adaptive, stats, on_tokens=None,
                  on_result=None, keep_answer="repeat") -> list[RefineResult]:
    n = len(items)
    device = next(model.parameters()).device
    answers: list[list[str]] = [[] for _ in range(n)]
    answer_ids: list[list[int]] = [[] for _ in range(n)]
    calls: list[list | None] = [None] * n
    tokens = [0] * n
    passes = [0] * n
    active = list(range(n))  # item indices still refining, in batch-row order
    batch: CachedBatch | None = None
    stopped: set[int] = set()  # items whose consumer is gone (on_tokens returned True)

    def result(i: int) -> RefineResult:
        return RefineResult(answer=answers[i][-1], calls=calls[i], rounds=len(answers[i]), tokens=tokens[i],
                            first_answer=answers[i][0], forward_passes=passes[i], answers=answers[i])

    for rnd in range(1, max_rounds + 1):
        st = stats.setdefault(rnd, RoundStats())
        st.items += len(active)
        _sync(device)
        t0, c0 = time.perf_counter(), time.process_time()
        if rnd == 1:
            full = [first_prompts[i] for i in active]
        else:
            full = [encode(prompts.render_prompt(tokenizer, items[i].tools, items[i].messages, style,
                                                 previous_answer=answers[i][-1], keep_answer=keep_answer))
                    for i in active]
        if batch is None or not reuse_prefix:
            batch = CachedBatch(model, pad_id, len(active))
            segments = full
        else:
            segments = []
            for row, ids in enumerate(full):
                # keep the cached tokens the new prompt starts with; always feed at least one token
                keep = min(_common_prefix(batch.seqs[row], ids), len(ids) - 1)
                batch.crop(row, keep)
                segments.append(ids[keep:])
        drafts = [answer_ids[i] for i in active] if (draft_verify and rnd > 1) else None
        row_passes = [0] * len(active)
        row_tokens = None
        if on_tokens is not None:
            def row_tokens(row: int, ids: list[int], rnd: int = rnd, rows: list[int] = active) -> bool:
                if on_tokens(rows[row], rnd, ids):
                    stopped.add(rows[row])
                return rows[row] in stopped
        guides = None
        if any(items[i].constraint is not None for i in active):
            from toolace_r import constrain

            vocab = constrain.vocab_for(model, tokenizer, eos)
            confirm = rnd > 1 and keep_answer == "confirm"  # the confirmation phrase stands for the previous call
            guides = [constrain.guide(items[i].constraint, vocab, allow_confirm=confirm)
                      if items[i].constraint is not None else None for i in active]
        outs = _decode_round(batch, segments, drafts, pick, eos, max_new_tokens, st, row_passes, row_tokens, guides)
        _sync(device)
        st.time_s += time.perf_counter() - t0
        st.cpu_s += time.process_time() - c0
        still: list[int] = []
        for row, i in enumerate(active):
            text = decode(outs[row])
            if rnd > 1 and keep_answer == "confirm" and text == prompts.CONFIRM_ANSWER:
                text, parsed, stable = answers[i][-1], calls[i], True  # confirmed: the previous answer stands
            else:
                parsed = _parse(text)
                stable = rnd > 1 and _stable(parsed, calls[i])
            answers[i].append(text)
            answer_ids[i] = outs[row]
            calls[i] = parsed
            tokens[i] += len(outs[row])
            passes[i] += row_passes[row]
            if rnd < max_rounds and not (adaptive and stable) and i not in stopped:
                still.append(row)
            elif on_result is not None:
                on_result(i, result(i))
        if not still:
            break
        batch.select(still)
        active = [active[row] for row in still]
    return [result(i) for i in range(n)]

