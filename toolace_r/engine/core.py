"""The decoding engine: one model, one KV cache, continuous batching. Probing, evaluation and serving all decode here.

A request is a prompt (token ids), its sampling settings and `n` sequences to draw. The engine admits requests while
the KV-cache budget allows (`kv_cache_tokens`: rows x reserved length, see `_fits`), and every `step()`:

1. prefills what is new: the prompts of admitted requests and the follow-up rounds of running ones, together, in a
   cache of their own (the rows that are decoding are not padded to the prompts' length, and gain hole columns only
   where the prefilled rows come back wider than the cache);
   a request with n > 1 is prefilled once and its row copied n - 1 times (one prefill, n continuations);
2. decodes one token for every other running sequence, in one pass (a greedy follow-up round verifies a draft in the
   same pass: several tokens);
3. ends what is finished: a sequence at EOS or its token limit asks its request for a follow-up round
   (`next_round`, e.g. adaptive refinement), or leaves: its row is free at once for the next request.

So a new prompt starts decoding while others are mid-answer, and a finished row never waits for its batch.

Follow-up rounds (refinement) are the engine's to make cheap, because both tricks need the cache:
- prefix reuse: the new round's prompt usually extends the row's sequence (the previous prompt + answer + an
  instruction); the row keeps its tokens up to the longest common prefix and feeds only the rest;
- draft verification (greedy): a round that will likely repeat the previous answer is given it as a draft; the pass
  feeds the draft after the prompt and accepts the longest prefix the model's argmax agrees with, then proposes the
  draft's continuation from where the answer rejoins it (prompt-lookup decoding on the previous answer). The answer
  is token for token what plain decoding gives, in fewer passes.

Per request: `on_tokens(j, round, new_ids) -> stop` is called after every pass with the tokens sequence j gained
(streaming; returning True cancels that sequence), `guide` (toolace_r.constrain.RowGuide, or anything with its
`predict`/`sync`) constrains the tokens (a grammar, forced text in tests), `cancel(request)` ends it mid-batch.

Why our own engine and not transformers' ContinuousBatchingManager: measured on this project's CPU box, see
docs/ENGINE.md — it was ~3x slower than batched `generate` on the demo model, and it has no per-request logits
processor, no draft verification and no reuse of a finished request's cache for a follow-up round.
"""
from __future__ import annotations

import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from toolace_r.engine.cache import RowCache, holes_are_free
from toolace_r.engine.sampling import Picker, Sampling, sample

log = logging.getLogger(__name__)

_LOOKUP_START = 4  # draft tokens first proposed after a disagreement; doubles up to DRAFT_LOOKAHEAD (assisted generation)
DRAFT_LOOKAHEAD = 32  # the most draft tokens one pass verifies per sequence
PREFILL_TOKENS = 4096  # padded prompt tokens per prefill pass: bounds a pass's activation memory and latency
DEFAULT_KV_CACHE_GB = 2.0  # CPU: the cache budget when none is configured
# GPU, none configured: this share of the memory free after loading. Not more: the buffers hold up to 1.25x the
# budget (spare columns), and growing or compacting them copies into a new buffer while the old one is alive.
KV_FREE_SHARE = 0.4


@dataclass
class Round:
    """A follow-up round: the full prompt to answer next (the engine reuses the cached prefix it shares with the
    sequence so far), a draft the answer will likely repeat (verified, greedy only), and its guide."""
    prompt: list[int]
    draft: list[int] | None = None
    guide: Any = None


@dataclass
class RoundStats:
    """What one round number cost, over all sequences in it (benchmarks and logs)."""
    items: int = 0
    forward_passes: int = 0  # passes in which a sequence of this round took part
    tokens_fed: int = 0  # real (non-pad) tokens fed
    tokens_generated: int = 0
    draft_tokens: int = 0
    draft_accepted: int = 0
    time_s: float = 0.0  # wall clock of those passes, shared between the rounds in a pass by their rows
    cpu_s: float = 0.0  # this process's CPU time, shared the same way


@dataclass
class PassStats:
    """What one kind of forward pass cost (prefill: prompts and follow-up rounds, fed apart; decode: one token, or a
    verified draft, for every other running sequence). Prefill is compute the batch cannot share; decoding is what
    batching makes cheaper per row (benchmarks/serve_load reads both)."""
    passes: int = 0
    rows: int = 0  # sequences fed, summed over the passes
    tokens_fed: int = 0
    time_s: float = 0.0
    cpu_s: float = 0.0


@dataclass(eq=False)
class Request:
    """A submitted request: its sequences' answers (every round's token ids), filled in as they finish."""
    prompt: list[int]
    sampling: Sampling
    n: int = 1
    guide: Any = None
    # next_round(j, round, answer_ids, stopped) after each round of sequence j: the follow-up Round, or None to end
    # it (stopped: on_tokens ended it, no follow-up is taken; the answer is still reported)
    next_round: Callable[[int, int, list[int], bool], Round | None] | None = None
    on_tokens: Callable[[int, int, list[int]], bool] | None = None
    on_done: Callable[["Request"], None] | None = None
    answers: list[list[list[int]]] = field(default_factory=list)  # [sequence][round] → ids (EOS included)
    passes: list[int] = field(default_factory=list)  # [sequence] → forward passes it took part in
    stopped: list[bool] = field(default_factory=list)  # [sequence] → ended by on_tokens/cancel, not by itself
    cancelled: bool = False
    error: BaseException | None = None  # what failed this request alone (its guide, its next_round, its on_tokens)
    done: bool = False
    id: int = 0
    started: int = 0  # sequences admitted so far


@dataclass(eq=False)
class _Seq:
    request: Request
    j: int
    picker: Picker
    guide: Any
    row: int = -1  # its row in `cache`; -1: admitted, no row yet
    cache: RowCache | None = None
    round: int = 1
    segment: list[int] = field(default_factory=list)  # prompt tokens still to feed (prefill)
    proposal: list[int] = field(default_factory=list)  # draft tokens proposed in the next pass
    draft: list[int] = field(default_factory=list)
    cursor: int = 0
    budget: int = _LOOKUP_START
    out: list[int] = field(default_factory=list)
    fork_of: "_Seq | None" = None  # copies this sequence's row after its prefill, then picks its own tokens


class Engine:
    """Continuous-batching decoder over one model (see the module docstring)."""

    def __init__(self, model: Any, tokenizer: Any, kv_cache_tokens: int = 0, max_rows: int = 0,
                 draft_verify: bool = True, reuse_prefix: bool = True):
        from toolace_r.generation import stop_ids

        self.model, self.tokenizer = model, tokenizer
        self.device = next(model.parameters()).device
        self.eos = stop_ids(model, tokenizer)
        if not self.eos:
            raise ValueError("the tokenizer has no EOS token and the model's generation config names none")
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(self.eos)
        self.shortcuts = holes_are_free(model)
        if not self.shortcuts:
            log.info("%s has attention layers that are not full attention (a sliding window): the engine decodes one "
                     "sequence at a time, without prefix reuse or drafts", type(model).__name__)
        self.max_rows = max_rows if self.shortcuts else 1
        self.draft_verify = draft_verify and self.shortcuts
        self.reuse_prefix = reuse_prefix and self.shortcuts
        self.kv_cache_tokens = kv_cache_tokens or default_kv_cache_tokens(model)
        self.limit = int(getattr(model.config, "max_position_embeddings", 0) or 0)
        self.cache = RowCache(model, self.pad_id)
        self.stats: dict[int, RoundStats] = {}
        self.pass_stats = {"prefill": PassStats(), "decode": PassStats()}
        self._waiting: deque[Request] = deque()
        self._running: list[_Seq] = []
        self._lock = threading.Lock()
        self._ids = itertools.count(1)

    # --- requests -----------------------------------------------------------------------------------------------
    def submit(self, request: Request) -> Request:
        """Queue a request (any thread); `step()` admits it when the cache has room."""
        if not request.prompt:
            raise ValueError("a request needs at least one prompt token")
        if request.n < 1:
            raise ValueError(f"n must be >= 1, got {request.n}")
        if self.limit and len(request.prompt) + request.sampling.max_new_tokens > self.limit:
            raise ValueError(f"the prompt has {len(request.prompt)} tokens; with max_new_tokens="
                             f"{request.sampling.max_new_tokens} it exceeds the model's context of {self.limit}")
        request.id = next(self._ids)
        request.answers = [[] for _ in range(request.n)]
        request.passes = [0] * request.n
        request.stopped = [False] * request.n
        with self._lock:
            self._waiting.append(request)
        return request

    def cancel(self, request: Request) -> None:
        """End a request (any thread): its sequences leave the batch at the next step, their answers as they are."""
        request.cancelled = True

    @property
    def running(self) -> int:
        """Sequences decoding now."""
        return len(self._running)

    @property
    def waiting(self) -> int:
        """Requests submitted, not yet admitted."""
        return len(self._waiting)

    @property
    def idle(self) -> bool:
        return not self._running and not self._waiting

    def run(self, requests: list[Request]) -> list[Request]:
        """Submit `requests`, longest prompt first (an out-of-memory shows up at once, and similar lengths are
        prefilled together), and step until every one of them is done; returns them in the order given."""
        for request in sorted(requests, key=lambda r: -len(r.prompt)):
            self.submit(request)
        while not all(r.done for r in requests):
            self.step()
        return requests

    @torch.inference_mode()
    def step(self) -> bool:
        """Admit, prefill, decode one token, retire. Returns whether work remains."""
        self._drop_cancelled()
        self._admit()
        # room the cache may need before the longest running sequence ends: one growth instead of many
        self.cache.selection.columns_hint = self.cache.width + max(
            (len(s.segment) + len(s.proposal) + s.request.sampling.max_new_tokens - len(s.out)
             for s in self._running), default=0)
        self._prefill()
        decoding = [s for s in self._running if not s.segment and s.fork_of is None]
        if any(not s.proposal for s in decoding):
            # every row of a pass computes as many positions as the longest proposal: a sequence in its first round
            # (no draft) would pay for the others' lookahead, so drafts are proposed only in passes where every
            # row has one (a follow-up round's first pass, in the prefill above, always verifies its whole draft)
            for seq in decoding:
                seq.proposal = []
        if decoding:
            self._pass(decoding, first=False)
        self._tidy()
        return not self.idle

    # --- admission ----------------------------------------------------------------------------------------------
    def _reserve(self, request: Request) -> int:
        return len(request.prompt) + request.sampling.max_new_tokens

    def _fits(self, request: Request) -> bool:
        """Whether the cache can take the request's rows, each as long as the longest reservation (the layout is
        rows x columns; compaction keeps the columns near the longest row)."""
        rows = len(self._running) + (request.n if self.shortcuts else 1)
        if self.max_rows and rows > self.max_rows:
            return False
        longest = max([self._reserve(request)] + [len(s.cache.seqs[s.row]) + s.request.sampling.max_new_tokens
                                                  if s.cache is not None else self._reserve(s.request)
                                                  for s in self._running])
        return rows * longest <= self.kv_cache_tokens

    def _admit(self) -> None:
        with self._lock:
            while self._waiting and (not self._running or self._fits(self._waiting[0])):
                request = self._waiting[0]
                self._waiting.popleft()
                self._start(request, range(request.n) if self.shortcuts else [request.started])
                if _pending(request):
                    self._waiting.appendleft(request)  # one sequence at a time: the next one later

    def _start(self, request: Request, js: Any) -> None:
        js = list(js)
        request.started += len(js)
        first: _Seq | None = None
        for j in js:
            seed = request.sampling.seed + j  # sequence j of a request: its own stream
            seq = _Seq(request, j, Picker(request.sampling, seed), _fresh(request.guide))
            if first is None:
                first = seq
                seq.segment = list(request.prompt)
            else:
                seq.fork_of = first
            self._running.append(seq)
            self.stats.setdefault(1, RoundStats()).items += 1

    def _prefill(self) -> None:
        """Prefill what is new this step: the prompts of admitted requests and the follow-up rounds of running
        sequences, together, each prefill group (_chunks) in a cache of its own, then move their rows into the
        engine's cache. A follow-up round takes its row's kept prefix along (one row's copy, packed to the left).

        Why apart: a pass appends its columns to every row of the cache it runs on. Prefilled in the engine's cache,
        a 100-token follow-up segment would give every other row 100 hole columns, which every later decoding pass
        reads until a compaction copies the whole cache. Apart, a prompt attends over its group's columns only, the
        engine's cache grows by the decoded tokens (and by what a prefilled row is wider than the cache, when it
        is), and a group is a consecutive range of rows when it comes back (a view, not a gather). Copies of an
        n > 1 request's row (its other sequences) are made there too."""
        firsts = [s for s in self._running if s.fork_of is None and (s.cache is None or s.segment)]
        if not firsts:
            return
        self.cache.reserve_rows(self.cache.rows + sum(1 for s in self._running if s.cache is None))
        for chunk in _chunks(firsts, PREFILL_TOKENS):
            chunk = [s for s in chunk if s in self._running]  # an earlier chunk's pass may have failed its request
            if not chunk:
                continue
            empty = self.cache.rows == 0 and self.cache.width == 0
            side = self.cache if empty else RowCache(self.model, self.pad_id)
            members = chunk + [f for s in chunk for f in self._running if f.fork_of is s]
            for seq, row in zip(members, side.add_rows(len(members))):
                if seq.cache is not None:  # a follow-up round: its prefix comes along, its row here is freed
                    side.take_row(row, seq.cache, seq.row)
                    self._free_row(seq)
                seq.row, seq.cache = row, side
            self._pass(chunk, first=True)
            if side is not self.cache and self.cache.rows == 0:
                self.cache = side  # every row it held came here: its columns would be holes only
            elif side is not self.cache:
                moved = self.cache.adopt(side)
                for seq in self._running:
                    if seq.cache is side:
                        seq.row, seq.cache = moved[seq.row], self.cache

    def _drop_cancelled(self) -> None:
        with self._lock:
            for request in [r for r in self._waiting if r.cancelled]:
                self._waiting.remove(request)
                request.stopped = [True] * request.n
                self._finish_request(request)
        for seq in [s for s in self._running if s.request.cancelled]:
            if seq in self._running:  # not gone with the sequence it was to be forked from
                seq.request.stopped[seq.j] = True
                self._leave(seq)

    # --- one forward pass ---------------------------------------------------------------------------------------
    def _pass(self, seqs: list[_Seq], first: bool) -> None:
        """Feed each sequence its new tokens (prompt segment or last token) + its draft proposal; pick its next
        tokens from the logits; accept the proposal's agreed prefix."""
        wall, cpu = time.perf_counter(), time.process_time()
        seqs = sorted(seqs, key=lambda s: s.row)  # consecutive rows are a view of the cache, not a copy
        heads = [s.segment if first else s.out[-1:] for s in seqs]
        keep = max(len(s.proposal) for s in seqs) + 1
        rounds = [s.round for s in seqs]  # before the pass ends rounds
        fed = [len(h) + len(s.proposal) for h, s in zip(heads, seqs)]
        logits = seqs[0].cache.feed([s.row for s in seqs], [h + s.proposal for h, s in zip(heads, seqs)], keep=keep,
                                    right_aligned=not first)
        forks = {id(s): [f for f in self._running if f.fork_of is s] for s in seqs} if first else {}
        # who picks from which logits row: each sequence from its own, a copy (n > 1) from its original's
        pickers = [(s, p) for p, s in enumerate(seqs)] + [(f, p) for p, s in enumerate(seqs) for f in forks.get(id(s), ())]
        choices = dict(zip((id(s) for s, _ in pickers), _pick(pickers, logits, keep, first)))
        for p, seq in enumerate(seqs):
            if seq not in self._running:  # its request failed on an earlier row of this pass
                continue
            at = keep - len(seq.proposal) - 1 if first else 0
            window = logits[p, at:at + len(seq.proposal) + 1]
            try:
                for fork in forks.get(id(seq), ()):
                    seq.cache.copy_row(seq.row, [fork.row])
                    fork.fork_of = None
                    self._accept(fork, window, choices[id(fork)][at:at + 1], first)
                seq.segment = []
                self._accept(seq, window, choices[id(seq)][at:at + len(seq.proposal) + 1], first)
            except Exception as err:  # noqa: BLE001 - one request's callback or guide fails that request only
                log.warning("request %d failed: %s: %s", seq.request.id, type(err).__name__, err)
                self._fail(seq.request, err)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self._account(rounds, fed, time.perf_counter() - wall, time.process_time() - cpu, first)

    def _accept(self, seq: _Seq, window: torch.Tensor, preds: list[int], first: bool) -> None:
        limit = seq.request.sampling.max_new_tokens
        prop = seq.proposal
        if seq.guide is not None:
            preds = seq.guide.predict(window, prop, seq.picker, limit - len(seq.out), preds)
        accepted = 0
        while accepted < len(prop) and preds[accepted] == prop[accepted]:
            accepted += 1
            if prop[accepted - 1] in self.eos or len(seq.out) + accepted >= limit:
                break  # the answer ends inside the proposal
        stats = self.stats.setdefault(seq.round, RoundStats())
        stats.draft_tokens += len(prop)
        stats.draft_accepted += accepted
        if not first and prop:
            seq.budget = min(2 * seq.budget, DRAFT_LOOKAHEAD) if accepted == len(prop) else max(1, seq.budget // 2)
        before = len(seq.out)
        length = len(seq.cache.seqs[seq.row]) - len(prop)  # the row's sequence without the proposal
        seq.out.extend(prop[:accepted])
        if not self._ended(seq):
            seq.out.append(preds[accepted])
        seq.cache.crop(seq.row, length + accepted)  # proposal tokens after the accepted ones were fed, not kept
        if seq.guide is not None:
            seq.guide.sync(seq.out)
        seq.request.passes[seq.j] += 1
        seq.proposal = []
        request = seq.request
        if request.on_tokens is not None and request.on_tokens(seq.j, seq.round, seq.out[before:]):
            request.stopped[seq.j] = True
            self._end_round(seq, stop=True)
        elif self._ended(seq):
            self._end_round(seq)
        elif seq.draft:
            seq.proposal, seq.cursor = _lookup(seq.out, seq.draft, seq.cursor)
            seq.proposal = seq.proposal[:min(seq.budget, limit - len(seq.out))]

    def _ended(self, seq: _Seq) -> bool:
        return bool(seq.out) and (seq.out[-1] in self.eos or len(seq.out) >= seq.request.sampling.max_new_tokens)

    # --- rounds and leaving -------------------------------------------------------------------------------------
    def _end_round(self, seq: _Seq, stop: bool = False) -> None:
        request = seq.request
        request.answers[seq.j].append(seq.out)
        self.stats.setdefault(seq.round, RoundStats()).tokens_generated += len(seq.out)
        follow = None if request.next_round is None else request.next_round(seq.j, seq.round, seq.out, stop)
        if follow is None or stop:
            self._leave(seq)
            return
        seq.round += 1
        self.stats.setdefault(seq.round, RoundStats()).items += 1
        seq.guide = follow.guide
        greedy = request.sampling.greedy
        seq.draft = list(follow.draft or [])[:request.sampling.max_new_tokens] if (
            self.draft_verify and greedy) else []
        seq.proposal, seq.cursor, seq.budget = list(seq.draft), 0, _LOOKUP_START
        seq.out = []
        row_seq = seq.cache.seqs[seq.row]
        keep = min(_common_prefix(row_seq, follow.prompt), len(follow.prompt) - 1) if self.reuse_prefix else 0
        seq.cache.crop(seq.row, keep)
        seq.segment = follow.prompt[keep:]

    def _leave(self, seq: _Seq) -> None:
        self._running.remove(seq)
        if seq.cache is not None:
            self._free_row(seq)
        for fork in [s for s in self._running if s.fork_of is seq]:  # cancelled before its prefill
            fork.request.stopped[fork.j] = True
            self._leave(fork)
        request = seq.request
        if not any(s.request is request for s in self._running) and not _pending(request):
            self._finish_request(request)

    def _free_row(self, seq: _Seq) -> None:
        """Give seq's row back to its cache; the cache's last row moves into it (see RowCache.release)."""
        moved = seq.cache.release(seq.row)
        if moved is not None:
            next(s for s in self._running if s is not seq and s.cache is seq.cache and s.row == moved).row = seq.row

    def _fail(self, request: Request, err: BaseException) -> None:
        request.error = err
        request.stopped = [True] * request.n
        with self._lock:
            if request in self._waiting:
                self._waiting.remove(request)
        request.started = request.n
        for seq in [s for s in self._running if s.request is request]:
            if seq in self._running:
                self._leave(seq)
        if not request.done:
            self._finish_request(request)

    def reset(self) -> None:
        """Forget every running sequence and start from an empty cache (after a failed forward pass); waiting
        requests stay queued."""
        self._running = []
        self.cache = RowCache(self.model, self.pad_id)

    def _finish_request(self, request: Request) -> None:
        request.done = True
        if request.on_done is not None:
            request.on_done(request)

    def _tidy(self) -> None:
        """Drop trailing hole columns; compact when a quarter of the columns are more than the longest row needs (each
        pass reads every column: the copy pays off within a few passes)."""
        if not self._running:
            if self.cache.width:
                self.cache = RowCache(self.model, self.pad_id)  # nothing to keep: start empty
            return
        self.cache.trim()
        if self.cache.excess() > 0.25:
            self.cache.compact()

    def _account(self, rounds: list[int], fed: list[int], wall: float, cpu: float, first: bool) -> None:
        """Charge a pass to its kind (prefill or decode) and to the round numbers of the sequences in it: each round
        once per pass, time by rows."""
        kind = self.pass_stats["prefill" if first else "decode"]
        kind.passes, kind.rows, kind.tokens_fed = kind.passes + 1, kind.rows + len(rounds), kind.tokens_fed + sum(fed)
        kind.time_s, kind.cpu_s = kind.time_s + wall, kind.cpu_s + cpu
        for rnd in set(rounds):
            share = rounds.count(rnd) / len(rounds)
            stats = self.stats.setdefault(rnd, RoundStats())
            stats.forward_passes += 1
            stats.tokens_fed += sum(f for r, f in zip(rounds, fed) if r == rnd)
            stats.time_s += wall * share
            stats.cpu_s += cpu * share


def _pick(pickers: list[tuple[_Seq, int]], logits: torch.Tensor, keep: int, first: bool) -> list[list[int]]:
    """For each (sequence, its logits row): its picks at every logits position. Greedy: argmax everywhere (it may
    verify a draft). Sampled (never a draft: one position, the next token's): one batched `sample` per (temperature,
    top_p), each sequence at its own uniform draw."""
    argmax = logits.argmax(dim=-1).tolist()
    choice = [list(argmax[p]) for _, p in pickers]
    at = keep - 1 if first else 0
    groups: dict[tuple[float, float], list[int]] = {}
    for i, (seq, _) in enumerate(pickers):
        if not seq.picker.greedy:
            groups.setdefault((seq.request.sampling.temperature, seq.request.sampling.top_p), []).append(i)
    for (temperature, top_p), members in groups.items():
        rows = torch.tensor([pickers[i][1] for i in members], dtype=torch.long, device=logits.device)
        uniforms = torch.tensor([pickers[i][0].picker.draw() for i in members], dtype=torch.float64)
        for i, token in zip(members, sample(logits[rows, at], temperature, top_p, uniforms).tolist()):
            choice[i][at] = token
    return choice


def _pending(request: Request) -> int:
    """Sequences of a request not yet started (an engine that decodes one sequence at a time starts them in turn)."""
    return request.n - request.started


def _fresh(guide: Any) -> Any:
    """Each sequence gets its own guide state (a request's guide is a factory when n > 1)."""
    return guide() if callable(guide) and not hasattr(guide, "predict") else guide


def _chunks(seqs: list[Any], budget: int) -> list[list[Any]]:
    """Prefill groups, sorted by length, each at most `budget` padded tokens (at least one sequence)."""
    out: list[list[Any]] = []
    for seq in sorted(seqs, key=lambda s: len(s.segment) + len(s.proposal)):
        width = len(seq.segment) + len(seq.proposal)
        if out and width * (len(out[-1]) + 1) <= budget:
            out[-1].append(seq)
        else:
            out.append([seq])
    return out


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def _lookup(out: list[int], draft: list[int], after: int, ngram: int = 3) -> tuple[list[int], int]:
    """Where the answer so far has rejoined the draft: the draft's tokens after the latest `ngram`..1 tokens of `out`,
    searched from draft position `after` on (an edited answer moves forward through the draft), else from the start.
    Returns (proposal, the draft position the proposal starts at); ([], after) when nothing matches.

    Why: a refined answer that changes is mostly a small edit of the previous one (one argument's value, one call
    more or less); after the edit the model rejoins its previous answer, and the rest of the draft can be verified in
    one pass again (prompt-lookup decoding, with the previous answer as the lookup text)."""
    for n in range(min(ngram, len(out)), 0, -1):
        tail = out[-n:]
        start = max(after, n)
        for j in itertools.chain(range(start, len(draft)), range(n, min(start, len(draft)))):
            if draft[j - n:j] == tail:
                return draft[j:], j
    return [], after


def default_kv_cache_tokens(model: Any, gb: float = 0.0) -> int:
    """Cache budget in tokens: `gb` GiB (0: DEFAULT_KV_CACHE_GB on CPU, KV_FREE_SHARE of free GPU memory) divided by
    what one token's keys and values take in every layer."""
    config = model.config
    layers = int(getattr(config, "num_hidden_layers", 1))
    heads = int(getattr(config, "num_key_value_heads", None) or getattr(config, "num_attention_heads", 1))
    head_dim = int(getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads)
    param = next(model.parameters())
    per_token = 2 * layers * heads * head_dim * param.element_size()
    if not gb:
        if param.device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(param.device)
            gb = KV_FREE_SHARE * free / 2**30
        else:
            gb = DEFAULT_KV_CACHE_GB
    return max(1, int(gb * 2**30 // per_token))
