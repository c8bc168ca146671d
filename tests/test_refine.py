"""Adaptive refinement (toolace_r.refine) through the real decoding code.

Two kinds of model:
- `ScriptedLlama`: a real tiny LlamaForCausalLM (real forward, real KV cache) whose logits are then steered so that the
  answer is a function of the prompt text the row actually sees. The row's tokens are read back from the cache
  itself (an extra cache layer records the fed ids), through the attention mask, so a bookkeeping bug in the decoder
  (wrong holes, wrong rows after a batch shrinks, a stale draft) changes the answer. Each item's user message names a
  behaviour ("case:stable", "case:flip", ...), which lets one batch hold items that stop at different rounds.
- plain random tiny Llamas at several seeds: no steering, so prefix reuse and draft verification must reproduce plain
  round-by-round decoding by numerics alone, and round 1 must equal `model.generate`.
"""
from __future__ import annotations

import re

import pytest
import torch

from conftest import sharp_llama
from toolace_r.data import prompts
from toolace_r.engine.cache import GrowingLayer
from toolace_r.refine import RefineItem, RoundStats, adaptive_refine

TOOLS = [{"name": "f", "description": "test function", "parameters": {"type": "dict", "properties": {
    "x": {"type": "integer", "description": "a number"}}, "required": ["x"]}}]

# Each case maps the previous answer shown in the prompt (None in round 1) to the answer text.
def _next_x(prev: str | None) -> str:
    if prev is None:
        return "[f(x=1)]"
    x = int(re.search(r"x=(\d+)", prev).group(1))
    return f"[f(x={x + 1})]"


CASES = {
    "stable": lambda prev: "[f(x=1)]",
    "flip": _next_x,  # a different answer every round: never stable
    "fix": lambda prev: "[f(x=2)]" if prev is None else "[f(x=7)]",  # corrected in round 2, confirmed in round 3
    "partial": lambda prev: "[f(x=12)]" if prev is None else "[f(x=123)]",  # round 2 shares a prefix with the draft
    "broken": lambda prev: "[f(x=",  # unparseable, the same every round: never counts as stable
    "nocall": lambda prev: prompts.NO_CALL_ANSWER,  # no call twice = stable
    "long": lambda prev: "[f(x=1), f(x=2), f(x=3), f(x=4)]",
    # round 2 edits the first call and keeps the rest: after the edit the answer rejoins the draft
    "edit": lambda prev: "[f(x=1), f(x=2), f(x=3), f(x=4)]" if prev is None else "[f(x=9), f(x=2), f(x=3), f(x=4)]",
    # a model trained with refine.keep_answer=confirm: it confirms a right answer instead of writing it again (shown
    # the repeat instruction it repeats its call, as a repeat-trained model would: _next)
    "confirm": lambda prev: "[f(x=5)]" if prev is None else prompts.CONFIRM_ANSWER,
    "confirm_fix": lambda prev: ("[f(x=2)]" if prev is None else "[f(x=3)]" if prev == "[f(x=2)]"
                                 else prompts.CONFIRM_ANSWER),
}


def _item(case: str, filler: str = "") -> RefineItem:
    return RefineItem(tools=TOOLS, messages=[{"role": "user", "content": f"{filler}case:{case} please"}])


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tokenizer():
    from toolace_r.models import train_tiny_tokenizer

    texts = []
    for case, fn in CASES.items():
        for prev in (None, "[f(x=1)]", "[f(x=12)]", "[f(x=3)]"):
            chat = prompts.refine_messages(TOOLS, _item(case).messages, fn(prev), "compact")
            texts.append(" ".join(m["content"] for m in chat))
    return train_tiny_tokenizer(texts * 4, vocab_size=400)


def _tiny_llama(tokenizer, seed: int, hidden: int = 32, layers: int = 1, cls=None):
    return sharp_llama(seed, cls, vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden,
                       num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=4,
                       max_position_embeddings=4096, bos_token_id=tokenizer.bos_token_id,
                       eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)


def _scripted(tokenizer, seed: int = 0):
    from transformers import LlamaForCausalLM

    assistant = tokenizer.convert_tokens_to_ids("<|assistant|>")
    eos = tokenizer.eos_token_id

    class ScriptedLlama(LlamaForCausalLM):
        """Real forward pass, then the logit of the scripted next token is raised far above the rest."""

        def forward(self, input_ids=None, attention_mask=None, cache=None, logits_to_keep=0, **kw):
            out = super().forward(input_ids=input_ids, attention_mask=attention_mask, cache=cache,
                                  logits_to_keep=logits_to_keep, **kw)
            side = self.config.num_hidden_layers  # an extra cache layer records the ids fed to each row
            while len(cache.layers) <= side:  # the decoder's own layer type: it follows row parking and crops
                cache.layers.append(GrowingLayer(cache.layers[0].selection))
            rec = input_ids[:, None, :, None].float()
            ids, _ = cache.layers[side].update(rec, rec)
            ids = ids[:, 0, :, 0].long()
            keep = out.logits.shape[1]
            total = ids.shape[1]
            for b in range(ids.shape[0]):
                for k in range(keep):
                    q = total - keep + k
                    if attention_mask[b, q] == 0:
                        continue  # a pad: its logits are never read
                    context = ids[b, : q + 1][attention_mask[b, : q + 1] == 1].tolist()
                    out.logits[b, k, self._next(context)] += 1000.0
            return out

        def _next(self, context: list[int]) -> int:
            if assistant not in context:
                return eos  # inside a prompt: a position whose logits the decoder does not read
            last = len(context) - 1 - context[::-1].index(assistant)
            prompt_text = tokenizer.decode(context[: last + 1])
            case = re.search(r"case:(\w+)", prompt_text).group(1)
            shown = re.findall(r"<\|assistant\|>(.*?)<\|end\|>", prompt_text)  # earlier answers in the prompt
            answer = CASES[case](shown[-1] if shown else None)
            if case.startswith("confirm") and shown and prompts.CONFIRM_INSTRUCTION not in prompt_text:
                answer = shown[-1]
            target = tokenizer(answer, add_special_tokens=False)["input_ids"]
            target = target + [eos]
            partial = context[last + 1:]
            return target[min(len(partial), len(target) - 1)]

    return _tiny_llama(tokenizer, seed, cls=ScriptedLlama)


def _refine(model, tokenizer, items, **kw):
    kw.setdefault("max_new_tokens", 48)
    kw.setdefault("style", "compact")
    return adaptive_refine(model, tokenizer, items, **kw)


# ------------------------------------------------------------------------------------------------ stopping
def test_stops_after_round_two_when_the_answer_repeats(tokenizer):
    model = _scripted(tokenizer)
    stats: dict[int, RoundStats] = {}
    (res,) = _refine(model, tokenizer, [_item("stable")], max_rounds=3, stats=stats)
    n = len(tokenizer("[f(x=1)]", add_special_tokens=False)["input_ids"]) + 1  # + EOS
    assert (res.rounds, res.answer, res.first_answer) == (2, "[f(x=1)]", "[f(x=1)]")
    assert res.calls == [{"name": "f", "arguments": {"x": 1}}]
    assert res.answers == ["[f(x=1)]", "[f(x=1)]"]
    assert res.tokens == 2 * n
    # round 1 = prefill + one pass per token after the first; round 2 = one pass verifying the whole draft
    assert res.forward_passes == n + 1
    assert stats[2].forward_passes == 1 and stats[2].draft_accepted == n


def test_a_confirmed_answer_stands_and_ends_refinement(tokenizer):
    """keep_answer=confirm: the refinement prompt carries the confirm instruction, and the confirmation phrase ends
    the item with its previous answer (it is never returned as the answer: it is not a call, nor a no-call)."""
    model = _scripted(tokenizer)
    stats: dict[int, RoundStats] = {}
    confirmed, fixed = _refine(model, tokenizer, [_item("confirm"), _item("confirm_fix")], max_rounds=4,
                               keep_answer="confirm", stats=stats)
    assert (confirmed.rounds, confirmed.answer, confirmed.first_answer) == (2, "[f(x=5)]", "[f(x=5)]")
    assert confirmed.calls == [{"name": "f", "arguments": {"x": 5}}]
    assert confirmed.answers == ["[f(x=5)]", "[f(x=5)]"]
    assert (fixed.rounds, fixed.answer, fixed.first_answer) == (3, "[f(x=3)]", "[f(x=2)]")
    assert fixed.calls == [{"name": "f", "arguments": {"x": 3}}]
    # confirming costs the phrase's tokens, not the call's: no draft of the previous answer is fed
    assert stats[2].draft_accepted == 0
    def n(text: str) -> int:
        return len(tokenizer(text, add_special_tokens=False)["input_ids"]) + 1  # + EOS
    assert confirmed.tokens == n("[f(x=5)]") + n(prompts.CONFIRM_ANSWER)


def test_a_confirm_trained_model_asked_the_repeat_way_repeats_its_call(tokenizer):
    """The instruction follows keep_answer: asked with the repeat instruction, the same model repeats its call (the
    scripted model does what a repeat-trained one would), and two equal calls end refinement as usual."""
    model = _scripted(tokenizer)
    (res,) = _refine(model, tokenizer, [_item("confirm")], max_rounds=4)
    assert (res.rounds, res.answers) == (2, ["[f(x=5)]", "[f(x=5)]"])


def test_unknown_keep_answer_is_refused(tokenizer):
    with pytest.raises(ValueError, match="keep_answer"):
        _refine(_scripted(tokenizer), tokenizer, [_item("stable")], keep_answer="copy")


def test_stops_at_max_rounds_when_the_answer_keeps_changing(tokenizer):
    model = _scripted(tokenizer)
    for max_rounds in (1, 2, 4):
        (res,) = _refine(model, tokenizer, [_item("flip")], max_rounds=max_rounds)
        assert res.rounds == max_rounds
        assert res.answers == [f"[f(x={r + 1})]" for r in range(max_rounds)]
        assert res.first_answer == "[f(x=1)]" and res.answer == f"[f(x={max_rounds})]"


def test_each_item_in_a_batch_stops_on_its_own(tokenizer):
    model = _scripted(tokenizer)
    cases = ["flip", "stable", "fix", "broken", "nocall", "partial", "long", "stable"]
    items = [_item(c, filler="x " * i) for i, c in enumerate(cases)]  # different prompt lengths → left padding
    results = _refine(model, tokenizer, items, max_rounds=4, max_rows=8)
    rounds = {c: r.rounds for c, r in zip(cases, results)}
    assert rounds == {"flip": 4, "stable": 2, "fix": 3, "broken": 4, "nocall": 2, "partial": 3, "long": 2}
    by_case = dict(zip(cases, results))
    assert by_case["fix"].answers == ["[f(x=2)]", "[f(x=7)]", "[f(x=7)]"]
    assert by_case["broken"].calls is None  # unparseable to the end
    assert by_case["nocall"].calls == [] and by_case["nocall"].answer == prompts.NO_CALL_ANSWER
    assert by_case["partial"].answers == ["[f(x=12)]", "[f(x=123)]", "[f(x=123)]"]
    for case, res in by_case.items():
        expected = sum(len(tokenizer(a, add_special_tokens=False)["input_ids"]) + 1 for a in res.answers)
        assert res.tokens == expected, case


def test_round_one_uses_the_callers_prompt_ids_when_given(tokenizer):
    """A caller that already tokenised the round-1 prompt (the server does, to check the context limit) passes the ids
    and they are what round 1 answers: "stable" given the prompt of "fix" answers like "fix" in round 1; given its own
    prompt's ids it answers exactly as without them."""
    model = _scripted(tokenizer)

    def ids(case: str) -> list[int]:
        text = prompts.render_prompt(tokenizer, TOOLS, _item(case).messages, "compact")
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    plain, own, other = (_refine(model, tokenizer, [RefineItem(TOOLS, _item("stable").messages, given)])[0]
                         for given in (None, ids("stable"), ids("fix")))
    assert own.answers == plain.answers == ["[f(x=1)]", "[f(x=1)]"]
    assert other.first_answer == "[f(x=2)]"


def test_fixed_rounds_mode_never_stops_early(tokenizer):
    model = _scripted(tokenizer)
    results = _refine(model, tokenizer, [_item("stable"), _item("nocall")], max_rounds=3, adaptive=False)
    assert [r.rounds for r in results] == [3, 3]


def test_draft_is_partly_accepted_then_decoding_continues(tokenizer):
    model = _scripted(tokenizer)
    stats: dict[int, RoundStats] = {}
    (res,) = _refine(model, tokenizer, [_item("partial")], max_rounds=2, stats=stats)
    assert res.answers == ["[f(x=12)]", "[f(x=123)]"]
    assert 0 < stats[2].draft_accepted < stats[2].draft_tokens
    assert stats[2].forward_passes > 1


def test_after_an_edit_the_rest_of_the_draft_is_verified_in_bulk(tokenizer):
    """An answer that changes one value early and then rejoins its previous answer: the draft's continuation is
    proposed again after the edit (prompt-lookup), so round 2 takes far fewer passes than it has tokens."""
    model = _scripted(tokenizer)
    stats: dict[int, RoundStats] = {}
    (res,) = _refine(model, tokenizer, [_item("edit")], max_rounds=2, stats=stats)
    assert res.answers == ["[f(x=1), f(x=2), f(x=3), f(x=4)]", "[f(x=9), f(x=2), f(x=3), f(x=4)]"]
    n = len(tokenizer(res.answers[1], add_special_tokens=False)["input_ids"]) + 1
    assert stats[2].tokens_generated == n
    assert stats[2].forward_passes <= n // 4, (stats[2].forward_passes, n)
    assert stats[2].draft_accepted >= 0.75 * n  # all but the edited value and one token per pass


def test_bad_arguments_are_refused(tokenizer):
    model = _scripted(tokenizer)
    with pytest.raises(ValueError, match="max_rounds"):
        _refine(model, tokenizer, [_item("stable")], max_rounds=0)
    with pytest.raises(ValueError, match="max_new_tokens"):
        _refine(model, tokenizer, [_item("stable")], max_new_tokens=0)


# ------------------------------------------------------------------------------------------------ equivalence
def _all_modes(model, tokenizer, items, **kw):
    out = {}
    for draft in (False, True):
        for reuse in (False, True):
            stats: dict[int, RoundStats] = {}
            res = _refine(model, tokenizer, items, draft_verify=draft, reuse_prefix=reuse, stats=stats, **kw)
            out[(draft, reuse)] = (res, stats)
    return out


def test_prefix_reuse_and_draft_verification_equal_plain_decoding_scripted(tokenizer):
    model = _scripted(tokenizer)
    cases = ["flip", "stable", "fix", "broken", "nocall", "partial", "long", "edit"]
    items = [_item(c, filler="y " * (3 * i)) for i, c in enumerate(cases)]
    modes = _all_modes(model, tokenizer, items, max_rounds=4, max_rows=4)
    plain, plain_stats = modes[(False, False)]
    for key, (res, stats) in modes.items():
        assert [r.answers for r in res] == [r.answers for r in plain], key
        assert [r.tokens for r in res] == [r.tokens for r in plain], key
    # reuse feeds fewer prompt tokens in later rounds; drafts cut the passes of later rounds
    assert modes[(False, True)][1][2].tokens_fed < plain_stats[2].tokens_fed
    assert modes[(True, True)][1][2].forward_passes < plain_stats[2].forward_passes
    assert sum(r.forward_passes for r in modes[(True, True)][0]) < sum(r.forward_passes for r in plain)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_prefix_reuse_and_draft_verification_equal_plain_decoding_random_models(tokenizer, seed):
    """Unsteered random models: every answer differs, drafts are mostly rejected mid-way, answers are not canonical
    BPE (so the reused prefix often ends inside the previous answer). Token-for-token equal in every mode."""
    model = _tiny_llama(tokenizer, seed, hidden=64, layers=2)
    items = [_item(c, filler="z " * (2 * i)) for i, c in enumerate(["flip", "stable", "fix", "long", "nocall"])]
    modes = _all_modes(model, tokenizer, items, max_rounds=3, max_new_tokens=12, max_rows=3, adaptive=False)
    plain, _ = modes[(False, False)]
    for key, (res, _) in modes.items():
        assert [r.answers for r in res] == [r.answers for r in plain], (seed, key)
    assert all(r.rounds == 3 for r in plain)


@pytest.mark.parametrize("seed", [0, 3])
def test_round_one_equals_hf_generate(tokenizer, seed):
    model = _tiny_llama(tokenizer, seed, hidden=64, layers=2)
    items = [_item(c, filler="w " * i) for i, c in enumerate(["stable", "flip", "long"])]
    results = _refine(model, tokenizer, items, max_rounds=1, max_new_tokens=10, max_rows=3)
    for item, res in zip(items, results):
        text = prompts.render_prompt(tokenizer, item.tools, item.messages, "compact")
        enc = tokenizer(text, add_special_tokens=False, return_tensors="pt")
        gen = model.generate(**enc, max_new_tokens=10, do_sample=False, pad_token_id=tokenizer.pad_token_id)
        ref = tokenizer.decode(gen[0, enc["input_ids"].shape[1]:], skip_special_tokens=True).strip()
        assert res.first_answer == ref


def test_sliding_window_models_decode_plainly_and_answer_as_alone(tokenizer):
    """A sliding-window model attends to its last W cache slots, holes included, so the cache shortcuts would change
    its answers (they did, before the guard): with the defaults its answers equal plain decoding and items run alone."""
    from transformers import MistralConfig, MistralForCausalLM

    from toolace_r.engine.cache import holes_are_free

    torch.manual_seed(0)
    config = MistralConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=4, sliding_window=16,
                           max_position_embeddings=4096, eos_token_id=tokenizer.eos_token_id,
                           pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id)
    model = MistralForCausalLM(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0, 0.3)
    model.generation_config.eos_token_id = [tokenizer.eos_token_id] + list(range(5, len(tokenizer), 7))
    assert not holes_are_free(model) and holes_are_free(_tiny_llama(tokenizer, 0))
    items = [_item(c, filler="z " * (2 * i)) for i, c in enumerate(["flip", "stable", "fix", "long", "nocall"])]
    kw = dict(max_rounds=3, max_new_tokens=12, max_rows=5)
    default = [r.answers for r in _refine(model, tokenizer, items, **kw)]
    plain = [r.answers for r in _refine(model, tokenizer, items, draft_verify=False, reuse_prefix=False, **kw)]
    alone = [_refine(model, tokenizer, [item], **kw)[0].answers for item in items]
    assert default == plain == alone


def test_reuse_survives_a_template_whose_tokens_merge_across_the_boundary(tokenizer):
    """A template without special tokens between turns: BPE may merge the end of round 1's prompt with what follows,
    so round 2's tokens do not start with round 1's. The common prefix is then shorter; the result is unchanged."""
    import copy

    merged = copy.deepcopy(tokenizer)
    merged.chat_template = ("{% for m in messages %}{{ m['content'] }}{% endfor %}"
                            "{% if add_generation_prompt %}=={% endif %}")
    model = _tiny_llama(merged, 5, hidden=64, layers=2)
    items = [_item(c) for c in ("stable", "fix")]
    r1 = merged(prompts.render_prompt(merged, TOOLS, items[0].messages, "compact"), add_special_tokens=False)["input_ids"]
    r2 = merged(prompts.render_prompt(merged, TOOLS, items[0].messages, "compact", "[f(x=1)]"),
                add_special_tokens=False)["input_ids"]
    assert r2[: len(r1)] != r1  # the boundary really breaks the plain prefix
    modes = _all_modes(model, merged, items, max_rounds=3, max_new_tokens=10, adaptive=False)
    plain, _ = modes[(False, False)]
    for key, (res, _) in modes.items():
        assert [r.answers for r in res] == [r.answers for r in plain], key
