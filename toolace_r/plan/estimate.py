"""Per-process memory of each stage of a job, from the model's shape and the config: the formulas.

Training (one Ray Train worker = one GPU, or one CPU process): weights, gradients and optimizer states as DeepSpeed's
ZeRO keeps them (the same byte counts as DeepSpeed's own `estimate_zero2/3_model_states_mem_needs`, which
tests/test_plan.py checks), DeepSpeed's buffers at its default bucket sizes (our DeepSpeed config sets none), the
activations autograd keeps for the backward at the micro-batch's token budget, and the logits. The activation bytes
per token and layer are counted from what a Hugging Face Llama-style decoder layer saves for its backward (sdpa
attention, no dropout; RMSNorm computes in fp32), per precision:

- bf16:     16h + 10q + 8i   (norms: fp32 input + normed + output; q, k, v (k, v repeated to all heads), attention
                              output and its reshaped copy; MLP gate, up, act, product)
- fp32:     24h + 20q + 16i
- amp_bf16: 26h + 10q + 8i   (fp32 residual stream and norms, bf16 copies of each linear's input)

(h hidden size, q = heads × head_dim, i intermediate size.) With gradient checkpointing only each layer's input is
kept, plus one layer recomputed during its backward. The logits cost 12 bytes per token and vocabulary entry at the
start of the backward: the fp32 log-probabilities cross-entropy keeps, their gradient and the logits' gradient. The
peak is everything kept + the logits' 12 bytes, or, with checkpointing, + the larger of the logits and one recomputed
layer: measured on the demo model (tests/test_plan.py), the layer is rebuilt only after the logits' buffers are freed.

Inference (probe, eval, serve; one actor or replica) runs toolace_r.engine, which admits a request while (rows after
admission) × (longest reserved length: prompt + max_new_tokens) ≤ its KV budget in tokens, the budget being
`engine.kv_cache_gb` GiB / (2 × layers × kv_heads × head_dim × dtype bytes); 0 = KV_FREE_SHARE (40 %) of what is free on the GPU
after loading the model (here: the GPU's size − weights − RUNTIME_GPU), 2 GiB on CPU. So a stage needs weights + the
KV cache of the rows the budget admits (no more than the stage submits at once: its Ray Data batch, or
serve.max_batch_size; refinement rounds grow an admitted row past its reservation, and that is counted) + the larger
of one prefill pass (at most `PREFILL_TOKENS` padded prompt tokens, whatever the batch) and one decode pass (one token
per running row, plus a draft on greedy refinement rounds), each with its logits. With kv_cache_gb=0 on a GPU the
stage fits by construction when a pass (and any refinement growth) fits in the 10 % the engine leaves. Prompt length is not in the config; the
plan assumes `prompt_tokens` (default train.max_length, the longest row training keeps).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from toolace_r.config import Config, TrainConfig
from toolace_r.engine.core import DEFAULT_KV_CACHE_GB, DRAFT_LOOKAHEAD, KV_FREE_SHARE, PREFILL_TOKENS
from toolace_r.plan.shapes import ModelShape

GIB = 1024 ** 3
# DeepSpeed's defaults for the buckets our deepspeed_config leaves unset (deepspeed/runtime/zero/config.py)
REDUCE_BUCKET = 500_000_000
PREFETCH_BUCKET = 50_000_000
REFINE_TURN_TOKENS = 64  # the refinement instruction turn and chat-template tokens added per round (prompts.py)
LOGIT_BYTES = 12  # per token and vocab entry: fp32 log-probs + their gradient + the logits' gradient
LOGIT_BYTES_INFER = 8  # per kept position and vocab entry at inference: the logits and their fp32 softmax
RUNTIME_GPU = 2.0 * GIB  # per GPU process: CUDA context, NCCL and cuBLAS workspaces, the caching allocator's slack


def count(n: float) -> str:
    """A parameter count for a note: 8.03 B, 1.31 M."""
    return f"{n / 1e9:.2f} B" if n >= 1e9 else f"{n / 1e6:.2f} M"


def fmt(b: float) -> str:
    """Bytes for a report line: MiB below 1 GiB."""
    if b < GIB:
        return f"{b / 2**20:.1f} MiB"
    return f"{b / GIB:.2f} GiB" if b < 10 * GIB else f"{b / GIB:.1f} GiB"


@dataclass
class Part:
    name: str
    bytes: float
    note: str = ""


@dataclass
class Stage:
    """One stage's memory per process (GPU or CPU process) and what it runs on."""
    name: str  # train | probe | eval | serve
    on_gpu: bool
    processes: int  # processes of this stage at once (for a CPU job they share the machine's RAM)
    parts: list[Part]
    peak: float  # tensor bytes at the peak (not the plain sum where phases do not overlap)
    host: float = 0.0  # host RAM per process for what is offloaded
    notes: list[str] = field(default_factory=list)
    setting: str = ""  # one line of the settings it was computed for
    engine: "EngineFigures | None" = None  # inference stages: how the engine's KV budget sizes the batch


def precision(tcfg: TrainConfig, on_gpu: bool) -> str:
    """bf16 | fp32 | amp_bf16, as train/optim.py decides it."""
    if tcfg.precision == "bf16" or (tcfg.precision == "auto" and on_gpu):
        return "bf16"
    return "amp_bf16" if tcfg.precision == "amp_bf16" else "fp32"


def micro_batch_tokens(tcfg: TrainConfig) -> int:
    """Padded tokens of the largest micro-batch: rows × longest row ≤ the budget, except that a row longer than the
    budget is a micro-batch of its own (train/rows.py plan_micro_batches)."""
    return max(tcfg.tokens_per_micro_batch, tcfg.max_length)


def layer_activation_bytes(shape: ModelShape, mode: str) -> int:
    """Bytes autograd keeps per token for one decoder layer (module docstring)."""
    h, q, i = shape.hidden, shape.heads * shape.head_dim, shape.intermediate
    return {"bf16": 16 * h + 10 * q + 8 * i, "fp32": 24 * h + 20 * q + 16 * i, "amp_bf16": 26 * h + 10 * q + 8 * i}[mode]


def activation_bytes(shape: ModelShape, tcfg: TrainConfig, mode: str, checkpointing: bool) -> float:
    tokens = micro_batch_tokens(tcfg)
    per_layer = layer_activation_bytes(shape, mode)
    final_norm = {"bf16": 8, "fp32": 12, "amp_bf16": 10}[mode] * shape.hidden
    mask = tokens * min(tcfg.max_length, tokens)  # a bool [rows, 1, s, s] attention mask, rows = tokens / s
    lora = 0
    if tcfg.lora.enabled:  # dropout mask + output of each adapted projection's input, and its r-wide A output
        a = 2 if mode == "bf16" else 4
        lora = len(tcfg.lora.target_modules) * ((a + 1) * shape.hidden + a * tcfg.lora.r)
    if checkpointing:  # each layer's input; the layer recomputed in the backward is `recompute_bytes`
        kept = shape.layers * (2 if mode == "bf16" else 4) * shape.hidden
    else:
        kept = shape.layers * (per_layer + lora)
    return tokens * (kept + final_norm) + mask


def recompute_bytes(shape: ModelShape, tcfg: TrainConfig, mode: str) -> float:
    """With checkpointing: one layer's activations, rebuilt during its backward. Measured on the demo model, this
    comes after the logits' buffers of the backward's start are freed, so the peak holds the larger of the two."""
    lora = len(tcfg.lora.target_modules) * 5 * shape.hidden if tcfg.lora.enabled else 0
    return micro_batch_tokens(tcfg) * (layer_activation_bytes(shape, mode) + lora)


def train_stage(shape: ModelShape, tcfg: TrainConfig) -> Stage:
    """Memory of one training worker (module docstring)."""
    on_gpu = tcfg.use_gpu
    mode = precision(tcfg, on_gpu)
    w = 2 if mode == "bf16" else 4
    n, z, P = max(1, tcfg.num_workers), tcfg.zero_stage, shape.n_params
    T = shape.lora_params if tcfg.lora.enabled else P
    offload = tcfg.offload_optimizer and z >= 1
    weights = P * w / (n if z == 3 else 1)
    if offload:  # gradients and optimizer states live in host RAM (fp32): DeepSpeed's cpu_offload estimate
        grads, optim, host = 0.0, 0.0, 16 * T / n
    elif z == 0:
        grads, optim, host = T * w, (8 if mode != "bf16" else 16) * T, 0.0  # bf16: + fp32 master and fp32 grads
    elif z == 3:
        grads, optim, host = 4 * T / n, 12 * T / n, 0.0  # fp32 gradient partition; fp32 master + Adam m, v
    else:
        grads, optim, host = T * w / (1 if z == 1 else n), 16 * T / n, 0.0
    parts = [
        Part("weights", weights, f"{count(P)} params × {w} B" + (f" / {n} (ZeRO-3)" if z == 3 else "")),
        Part("gradients", grads, ("in host RAM (offload)" if offload else "fp32, / " + str(n) if z == 3 else
                                  f"{w} B, / {n}" if z == 2 else f"{w} B, whole") + (", LoRA only" if tcfg.lora.enabled else "")),
        Part("optimizer states", optim, "in host RAM (offload)" if offload else "fp32 master + Adam m, v"
             + (" + fp32 gradients" if z in (1, 2) or (z == 0 and mode == "bf16") else "")),
    ]
    ckpt = tcfg.gradient_checkpointing
    if mode == "amp_bf16":  # autocast keeps a bf16 copy of every weight a linear saved for its backward
        copies = 2 * (shape.vocab * shape.hidden if ckpt else P / (n if z == 3 else 1))  # checkpointed: lm_head's only
        parts.append(Part("autocast weight copies", copies, "bf16" + (", lm_head only (checkpointing)" if ckpt else "")))
    buffers, note = 0.0, ""
    if z in (1, 2):
        elements = REDUCE_BUCKET if on_gpu else min(REDUCE_BUCKET, T)  # on CPU torch.empty pages are touched as filled
        width = 4 if z == 1 and mode == "bf16" else w
        buffers = elements * width * (2 if on_gpu and z == 2 else 1)  # overlap_comm (on GPU): two buckets
        note = f"gradient reduce bucket{'s ×2' if on_gpu and z == 2 else ''} ({elements:.2g} elements)"
    elif z == 3:
        buffers = w * (2 * shape.largest_layer + PREFETCH_BUCKET + REDUCE_BUCKET)
        note = f"largest module gathered + its gradient ({shape.largest_layer / 1e6:.0f} M params), prefetch and reduce buckets"
    if buffers:
        parts.append(Part("DeepSpeed buffers", buffers, note))
    acts = activation_bytes(shape, tcfg, mode, ckpt)
    recompute = recompute_bytes(shape, tcfg, mode)
    other = activation_bytes(shape, tcfg, mode, not ckpt) + (0 if ckpt else recompute)
    tokens = micro_batch_tokens(tcfg)
    parts.append(Part("activations", acts, f"checkpointing {'on: layer inputs' if ckpt else 'off'}; "
                      f"{'without' if ckpt else 'with'} it {fmt(other)}"))
    logits = LOGIT_BYTES * tokens * shape.vocab
    parts.append(Part("logits", logits,
                      f"{tokens:,} tokens × {shape.vocab:,} vocab × 4 B fp32, ×3: log-probs, their grad, logits grad"))
    peak = sum(p.bytes for p in parts)
    if ckpt:
        parts.append(Part("recomputed layer", recompute, "one layer rebuilt in the backward, after the logits' "
                          "buffers are freed: the peak holds the larger of the two"))
        peak += max(0.0, recompute - logits)
    setting = (f"{n} workers, ZeRO-{z}{' + optimizer offload' if offload else ''}, {mode}, "
               f"{'LoRA r=' + str(tcfg.lora.r) if tcfg.lora.enabled else 'full fine-tuning'}, "
               f"{tokens:,} tokens per micro-batch, checkpointing {'on' if ckpt else 'off'}")
    return Stage("train", on_gpu, n, parts, peak, host=host, setting=setting)


def with_train(tcfg: TrainConfig, **changes) -> TrainConfig:
    """A copy of cfg.train with `changes` (lora_enabled sets train.lora.enabled)."""
    lora = changes.pop("lora_enabled", None)
    out = dataclasses.replace(tcfg, **changes)
    if lora is not None:
        out = dataclasses.replace(out, lora=dataclasses.replace(tcfg.lora, enabled=lora))
    return out


# ------------------------------------------------------------------------------------------------ inference
def weight_bytes(dtype: str, on_gpu: bool) -> int:
    """models.pick_dtype: auto = bf16 on GPU, fp32 on CPU."""
    if dtype == "auto":
        return 2 if on_gpu else 4
    return 4 if dtype == "float32" else 2


def kv_bytes_per_token(shape: ModelShape, a: int) -> int:
    """Keys and values of one token in every layer: what the engine divides its budget by."""
    return 2 * shape.layers * shape.kv_width * a


def pass_token_bytes(shape: ModelShape, a: int) -> int:
    """Working memory per token of a forward pass without autograd, one layer at a time: the MLP's gate, up and
    act, hidden and residual, q and the attention output."""
    return (3 * shape.intermediate + 2 * shape.hidden + 2 * shape.heads * shape.head_dim) * a


@dataclass
class EngineFigures:
    """How an inference stage's engine sizes its batch (toolace_r.engine.core: `_fits`, `default_kv_cache_tokens`)."""
    budget: float | None  # KV-cache budget in bytes; None: KV_FREE_SHARE of a GPU whose size is not known
    budget_tokens: int | None  # budget / KV bytes per token, as the engine counts it
    reserve: int  # tokens admission reserves per row: prompt + max_new_tokens
    grown: int  # tokens a row holds after its last refinement round (= reserve without refinement)
    copies: int  # rows per request (probing's k samples share one prefill)
    memory_rows: int | None  # rows of `reserve` tokens the budget admits, whole requests (None: budget unknown)
    submitted: int  # rows the stage hands its engine at once (its Ray Data batch, or serve.max_batch_size)
    rows: int  # rows decoding at once: min(memory_rows, submitted), at least one request
    one_request: float  # KV bytes of one request at admission: the least budget that admits anything


def kv_budget(cfg: Config, on_gpu: bool, weights: float, gpu_bytes: float | None) -> tuple[float | None, str]:
    """(budget bytes, how it was set): engine.kv_cache_gb, or when 0 its default (module docstring)."""
    gb = cfg.engine.kv_cache_gb
    if gb > 0:
        return gb * GIB, f"engine.kv_cache_gb={gb:g}"
    if not on_gpu:
        return DEFAULT_KV_CACHE_GB * GIB, f"engine.kv_cache_gb=0: {DEFAULT_KV_CACHE_GB:g} GiB on CPU"
    if not gpu_bytes:
        return None, "engine.kv_cache_gb=0: 40 % of free GPU memory (GPU size unknown: give --gpu-memory)"
    free = max(0.0, gpu_bytes - weights - RUNTIME_GPU)
    return KV_FREE_SHARE * free, f"engine.kv_cache_gb=0: {KV_FREE_SHARE:.0%} of the {fmt(free)} free after the weights"


def inference_stage(name: str, shape: ModelShape, cfg: Config, prompt: int, on_gpu: bool, processes: int,
                    copies: int, new_tokens: int, rounds: int, submitted: int, drafts: bool,
                    gpu_bytes: float | None = None, submitted_key: str = "") -> Stage:
    """One engine: `copies` rows per request (probing's k samples), `rounds` of adaptive refinement (each round adds
    the previous answer and the instruction to the row), `submitted` rows handed to the engine at once, `drafts`:
    greedy refinement rounds verify the previous answer as a draft (a decode pass feeds up to DRAFT_LOOKAHEAD
    extra tokens per row)."""
    a = weight_bytes(cfg.model.dtype, on_gpu)
    kv = kv_bytes_per_token(shape, a)
    weights = shape.n_params * a
    budget, how = kv_budget(cfg, on_gpu, weights, gpu_bytes)
    budget_tokens = None if budget is None else int(budget // kv)
    reserve = prompt + new_tokens
    grown = reserve if rounds <= 1 else prompt + rounds * (new_tokens + REFINE_TURN_TOKENS)
    memory_rows = None if budget_tokens is None else budget_tokens // (copies * reserve) * copies
    # the engine admits a request into an empty batch whatever its size: at least one request decodes
    rows = max(copies, min(submitted, memory_rows if memory_rows is not None else submitted))
    eng = EngineFigures(budget, budget_tokens, reserve, grown, copies, memory_rows, submitted, rows,
                        copies * reserve * kv)
    cache = rows * grown * kv
    per_token = pass_token_bytes(shape, a)
    # prefill: at most PREFILL_TOKENS padded tokens (a longer prompt is a pass of its own), no more than the prompts
    # in flight; a greedy follow-up round's draft is fed with its segment and scored (its logits kept)
    prompts = max(1, rows // copies)
    pre_tokens = min(max(PREFILL_TOKENS, prompt), prompts * prompt)
    pre_rows = max(1, pre_tokens // prompt)
    pre_logits = pre_rows * (1 + (new_tokens if drafts else 0)) * shape.vocab * LOGIT_BYTES_INFER
    pre = pre_tokens * per_token + pre_tokens * grown + pre_logits  # + the bool [tokens, cache columns] mask
    # decode: one token per running row, + a draft proposal on greedy refinement rounds
    dec_tokens = rows * (1 + (DRAFT_LOOKAHEAD if drafts else 0))
    dec_logits = dec_tokens * shape.vocab * LOGIT_BYTES_INFER
    dec = dec_tokens * per_token + dec_tokens * grown + dec_logits
    note = f"{rows} rows × {grown:,} tokens" + (f" ({prompt:,} prompt + {rounds} refinement rounds)" if rounds > 1
                                                  else f" ({prompt:,} prompt + {new_tokens} new)")
    parts = [Part("weights", weights, f"{count(shape.n_params)} params × {a} B"),
             Part("KV cache", cache, note),
             Part("prefill pass", pre, f"{pre_tokens:,} padded prompt tokens (PREFILL_TOKENS={PREFILL_TOKENS:,}), "
                                       f"one layer at a time, + logits"),
             Part("decode pass", dec, f"{rows} rows × {dec_tokens // rows} token{'s' if dec_tokens > rows else ''}"
                                      f"{' (draft verification)' if drafts else ''}, + logits")]
    peak = weights + cache + max(pre, dec)
    setting = f"{processes} {'GPU' if on_gpu else 'CPU'} process{'es' if processes > 1 else ''}, " \
              f"{'bf16' if a == 2 else 'fp32'}, {prompt:,}-token prompts assumed, {how}"
    notes = []
    if budget is None:
        notes.append(f"KV budget: {how.split(': ', 1)[1]}; figured here with the {submitted} rows submitted at once")
    else:
        held = f"the {fmt(budget)} KV budget ({budget_tokens:,} tokens) admits {memory_rows} rows of {reserve:,} " \
               f"tokens (prompt + max_new_tokens){' in requests of ' + str(copies) if copies > 1 else ''}"
        if memory_rows < copies:
            held += f": not one request of {copies} × {reserve:,} tokens, so the engine runs one at a time, " \
                    f"over the budget"
        elif submitted < memory_rows:
            held += f"; {submitted} are submitted at once ({submitted_key})" if submitted_key else ""
        notes.append(held)
        if cache > budget and memory_rows >= copies:
            notes.append(f"refinement rounds grow each admitted row from the {reserve:,} tokens admission reserves to "
                         f"{grown:,}: the cache can pass the budget by {fmt(cache - budget)}")
    return Stage(name, on_gpu, processes, parts, peak, notes=notes, setting=setting, engine=eng)


def probe_stage(shape: ModelShape, cfg: Config, prompt: int, gpu_bytes: float | None = None) -> Stage:
    g, p = cfg.probe.generation, cfg.probe
    copies = 1 if g.temperature <= 0 else p.k
    return inference_stage("probe", shape, cfg, prompt, p.gpus_per_actor > 0, p.num_actors, copies,
                           g.max_new_tokens, 1, p.batch_size * copies, False, gpu_bytes,
                           f"probe.batch_size={p.batch_size} samples × {copies}")


def _drafts(cfg: Config, rounds: int, temperature: float) -> bool:
    r = cfg.refine
    return rounds > 1 and temperature <= 0 and r.draft_verify and r.keep_answer == "repeat"


def eval_stage(shape: ModelShape, cfg: Config, prompt: int, gpu_bytes: float | None = None) -> Stage:
    e = cfg.eval
    return inference_stage("eval", shape, cfg, prompt, e.gpus_per_actor > 0, max(1, e.num_actors), 1,
                           e.generation.max_new_tokens, e.max_rounds, e.batch_size,
                           _drafts(cfg, e.max_rounds, e.generation.temperature), gpu_bytes,
                           f"eval.batch_size={e.batch_size}")


def serve_stage(shape: ModelShape, cfg: Config, prompt: int, gpu_bytes: float | None = None) -> Stage:
    s = cfg.serve
    return inference_stage("serve", shape, cfg, prompt, s.num_gpus > 0, s.max_replicas, 1, s.max_new_tokens,
                           s.max_rounds, s.max_batch_size, _drafts(cfg, s.max_rounds, 0.0), gpu_bytes,
                           f"serve.max_batch_size={s.max_batch_size}")


def with_kv(cfg: Config, gb: float) -> Config:
    """A copy of cfg with engine.kv_cache_gb = gb."""
    return dataclasses.replace(cfg, engine=dataclasses.replace(cfg.engine, kv_cache_gb=gb))
