"""Does each stage fit, and if not, what to change: `toolace-r plan` and the check `toolace-r run` makes first.

A GPU stage is judged per GPU against `--gpu-memory` (or the local GPU's size); a CPU stage against this machine's
RAM, all its processes together (a CPU job runs on one machine). On top of the tensors each process pays a fixed
runtime cost: `RUNTIME_GPU` for the CUDA context, NCCL and cuBLAS workspaces and the caching allocator's slack,
`RUNTIME_CPU` for Python, torch and the Ray worker. A stage that does not fit lists the changes that would make it
fit, each re-estimated with the same formulas (checkpointing, ZeRO-3, optimizer offload, a smaller micro-batch,
LoRA; for inference the engine's KV budget `engine.kv_cache_gb`, bf16 weights, fewer CPU processes), and a combination
when no single change is enough. An inference stage has no batch size to set: its engine admits what its KV budget
holds (toolace_r.plan.estimate).
"""
from __future__ import annotations

import dataclasses
import logging
import math
import os
from dataclasses import dataclass

from toolace_r.config import Config
from toolace_r.errors import ConfigError
from toolace_r.plan import estimate as est
from toolace_r.plan.shapes import ModelShape, model_shape

log = logging.getLogger(__name__)

GIB = est.GIB
RUNTIME_GPU = est.RUNTIME_GPU
RUNTIME_CPU = 0.5 * GIB
KV_KEY = "engine.kv_cache_gb"  # one budget for every engine: probe and eval actors, serve replicas
KV_STEP = 0.1  # GiB: the granularity of a suggested engine.kv_cache_gb
PROCESS_KEYS = {"train": "train.num_workers", "probe": "probe.num_actors", "eval": "eval.num_actors",
                "serve": "serve.max_replicas"}


def need(stage: est.Stage) -> float:
    """Bytes the stage needs of what it is judged against: per GPU, or all CPU processes' RAM together."""
    if stage.on_gpu:
        return stage.peak + RUNTIME_GPU
    return stage.processes * (stage.peak + stage.host + RUNTIME_CPU)


@dataclass
class Verdict:
    stage: est.Stage
    need: float
    capacity: float | None  # None: GPU memory unknown, not checked
    fixes: list[str]

    @property
    def fits(self) -> bool | None:
        return None if self.capacity is None else self.need <= self.capacity


def ram_bytes() -> float:
    return float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


def local_gpu_bytes() -> float | None:
    try:
        import torch

        return float(torch.cuda.get_device_properties(0).total_memory) if torch.cuda.is_available() else None
    except Exception:  # noqa: BLE001 - no usable CUDA: the GPU size is simply unknown
        return None


def stages(cfg: Config, shape: ModelShape, prompt_tokens: int | None = None, serve: bool = True,
           gpu_bytes: float | None = None) -> list[est.Stage]:
    """Every stage `toolace-r run` runs (probe only when it probes), and serving; `gpu_bytes` sizes the engines'
    default KV budget on a GPU (engine.kv_cache_gb=0)."""
    prompt = prompt_tokens or cfg.train.max_length
    if shape.max_positions:
        prompt = min(prompt, shape.max_positions)
    out = [est.train_stage(shape, cfg.train)]
    if cfg.run.max_iterations > 1 or cfg.run.probe_first_iteration:
        out.append(est.probe_stage(shape, cfg, prompt, gpu_bytes))
    out.append(est.eval_stage(shape, cfg, prompt, gpu_bytes))
    if serve:
        out.append(est.serve_stage(shape, cfg, prompt, gpu_bytes))
    return out


_fmt = est.fmt


def _train_fixes(shape: ModelShape, cfg: Config, capacity: float) -> list[str]:
    tcfg = cfg.train
    fits = lambda t: need(est.train_stage(shape, t)) <= capacity  # noqa: E731
    options: list[tuple[str, dict]] = []
    if not tcfg.gradient_checkpointing:
        options.append(("train.gradient_checkpointing=true", {"gradient_checkpointing": True}))
    if tcfg.zero_stage < 3 and tcfg.num_workers > 1:
        options.append(("train.zero_stage=3", {"zero_stage": 3}))
    if not tcfg.offload_optimizer:
        options.append(("train.offload_optimizer=true" + ("" if tcfg.zero_stage else " train.zero_stage=1"),
                        {"offload_optimizer": True, "zero_stage": max(1, tcfg.zero_stage)}))
    if not tcfg.lora.enabled:
        options.append((f"train.lora.enabled=true ({shape.lora_params / 1e6:.1f} M trainable params)",
                        {"lora_enabled": True}))
    lines = []
    for text, change in options:
        changed = est.with_train(tcfg, **change)
        after = need(est.train_stage(shape, changed))
        lines.append(f"{text}: {_fmt(after)}{'  fits' if after <= capacity else ''}")
    micro = _micro_batch_fix(shape, tcfg, fits)
    if micro:
        lines.append(micro)
    if not any(line.endswith("fits") for line in lines):
        combined, texts = tcfg, []
        for text, change in options:
            combined = est.with_train(combined, **change)
            texts.append(text.split(" (")[0])
            if fits(combined):
                lines.append(f"together: {' '.join(texts)}: {_fmt(need(est.train_stage(shape, combined)))}  fits")
                break
        else:
            micro = _micro_batch_fix(shape, combined, fits)
            lines.append(f"together: {' '.join(texts)} and {micro}" if micro else
                         "nothing this plan knows of makes it fit: more GPUs (train.num_workers) or larger ones")
    return lines


def _micro_batch_fix(shape: ModelShape, tcfg, fits) -> str | None:
    """The largest micro-batch (a multiple of 256 tokens) that fits, with grad_accum raised to keep the tokens per
    optimizer step; None when even 256 tokens do not."""
    current = est.micro_batch_tokens(tcfg)
    sized = lambda t: est.with_train(tcfg, tokens_per_micro_batch=t, max_length=min(tcfg.max_length, t))  # noqa: E731
    lo, hi = 0, current // 256  # multiples of 256
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if fits(sized(mid * 256)) else (lo, mid - 1)
    if lo == 0 or lo * 256 >= current:
        return None
    t = lo * 256
    ga = math.ceil(max(1, tcfg.grad_accum) * tcfg.tokens_per_micro_batch / t)
    cut = f" train.max_length={t} (longer prompts are cut from the left)" if t < tcfg.max_length else ""
    return f"train.tokens_per_micro_batch={t} train.grad_accum={ga}{cut}: fits"


BUILD = {"probe": est.probe_stage, "eval": est.eval_stage, "serve": est.serve_stage}


def _kv_fix(shape: ModelShape, cfg: Config, stage: est.Stage, capacity: float, prompt: int,
            gpu_bytes: float | None) -> str | None:
    """The largest engine.kv_cache_gb (a multiple of KV_STEP) with which the stage fits and its engine still admits
    one whole request; None when there is none."""
    build = BUILD[stage.name]
    eng = stage.engine
    after = lambda gb: need(build(shape, est.with_kv(cfg, gb), prompt, gpu_bytes))  # noqa: E731
    least = math.ceil(eng.one_request / GIB / KV_STEP - 1e-9)
    top = math.floor((eng.budget if eng.budget is not None else capacity) / GIB / KV_STEP)
    if top < least or after(least * KV_STEP) > capacity:
        return None
    lo, hi = least, top
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if after(mid * KV_STEP) <= capacity else (lo, mid - 1)
    gb = round(lo * KV_STEP, 1)
    fixed = build(shape, est.with_kv(cfg, gb), prompt, gpu_bytes)
    return (f"{KV_KEY}={gb:g}: {_fmt(need(fixed))}, {fixed.engine.rows} rows of {fixed.engine.reserve:,} tokens "
            f"decoding at once (the budget of every engine of the job)  fits")


def _inference_fixes(shape: ModelShape, cfg: Config, stage: est.Stage, capacity: float, prompt: int,
                     gpu_bytes: float | None = None) -> list[str]:
    build = BUILD[stage.name]
    lines = []
    kv = _kv_fix(shape, cfg, stage, capacity, prompt, gpu_bytes)
    if kv:
        lines.append(kv)
    if stage.on_gpu and est.weight_bytes(cfg.model.dtype, True) == 4:
        half = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, dtype="bfloat16"))
        after = need(build(shape, half, prompt, gpu_bytes))
        lines.append(f"model.dtype=bfloat16: {_fmt(after)}{'  fits' if after <= capacity else ''}")
    if not stage.on_gpu and stage.processes > 1:
        per = need(stage) / stage.processes
        if per <= capacity:
            lines.append(f"{PROCESS_KEYS[stage.name]}={int(capacity // per)}: fits")
    if not lines:
        lines.append(f"the weights alone need {_fmt(shape.n_params * est.weight_bytes(cfg.model.dtype, stage.on_gpu))}"
                     f": a device with more memory")
    return lines


def judge(cfg: Config, shape: ModelShape, gpu_bytes: float | None, prompt_tokens: int | None = None,
          serve: bool = True) -> list[Verdict]:
    prompt = min(prompt_tokens or cfg.train.max_length, shape.max_positions or 10**9)
    ram = ram_bytes()
    verdicts = []
    for stage in stages(cfg, shape, prompt_tokens, serve, gpu_bytes):
        capacity = gpu_bytes if stage.on_gpu else ram
        v = Verdict(stage, need(stage), capacity, [])
        if v.fits is False:
            v.fixes = (_train_fixes(shape, cfg, capacity) if stage.name == "train"
                       else _inference_fixes(shape, cfg, stage, capacity, prompt, gpu_bytes))
        verdicts.append(v)
    return verdicts


def format_plan(shape: ModelShape, verdicts: list[Verdict], gpu_source: str) -> str:
    lines = [f"model: {shape.source}: {est.count(shape.n_params)} parameters, {shape.layers} layers, hidden "
             f"{shape.hidden}, {shape.heads} heads / {shape.kv_heads} KV heads, intermediate {shape.intermediate}, "
             f"vocab {shape.vocab:,}", f"GPU memory: {gpu_source}; RAM of this machine: {_fmt(ram_bytes())}", ""]
    for v in verdicts:
        s = v.stage
        lines.append(f"{s.name}  ({s.setting})")
        for p in s.parts:
            lines.append(f"  {p.name:<24}{_fmt(p.bytes):>12}  {p.note}")
        if s.host:
            lines.append(f"  {'host RAM (offloaded)':<24}{_fmt(s.host):>12}  per worker, not on the GPU")
        runtime = RUNTIME_GPU if s.on_gpu else RUNTIME_CPU
        lines.append(f"  {'runtime':<24}{_fmt(runtime):>12}  {'CUDA context, NCCL, allocator slack' if s.on_gpu else 'Python, torch, Ray worker'}")
        where = "per GPU" if s.on_gpu else f"{s.processes} CPU process{'es' if s.processes > 1 else ''}, RAM"
        verdict = ("not checked (no GPU memory given: --gpu-memory GB)" if v.fits is None else
                   f"of {_fmt(v.capacity)}: {'fits' if v.fits else 'DOES NOT FIT'}")
        lines.append(f"  {'peak ' + where:<24}{_fmt(v.need):>12}  {verdict}" if len(where) < 20 else
                     f"  peak, {where}: {_fmt(v.need)} {verdict}")
        for note in s.notes:
            lines.append(f"  note: {note}")
        for fix in v.fixes:
            lines.append(f"  change: {fix}")
        lines.append("")
    bad = [v.stage.name for v in verdicts if v.fits is False]
    unknown = [v.stage.name for v in verdicts if v.fits is None]
    if bad:
        lines.append(f"does not fit: {', '.join(bad)} (see 'change:' under each)")
    else:
        lines.append("the job fits" + (f" (not checked: {', '.join(unknown)}: give --gpu-memory)" if unknown else ""))
    return "\n".join(lines)


def _gpu_bytes(gpu_memory: float | None) -> tuple[float | None, str]:
    if gpu_memory:
        return gpu_memory * GIB, f"{gpu_memory:g} GiB per GPU (--gpu-memory)"
    local = local_gpu_bytes()
    if local:
        return local, f"{local / GIB:.1f} GiB per GPU (this machine's GPU 0)"
    return None, "unknown (no --gpu-memory, no local GPU)"


def plan_command(args, cfg: Config) -> int:
    """`toolace-r plan --config JOB.yaml [--gpu-memory GB] [--model-config PATH] [--prompt-tokens N]`: exit 0 when
    every checked stage fits, 1 when one does not."""
    shape = model_shape(cfg, args.model_config)
    gpu, source = _gpu_bytes(args.gpu_memory)
    verdicts = judge(cfg, shape, gpu, args.prompt_tokens)
    print(format_plan(shape, verdicts, source))
    return 1 if any(v.fits is False for v in verdicts) else 0


def check_before_run(cfg: Config, args) -> None:
    """`toolace-r run`'s first step: refuse a job a stage of which cannot fit, naming the stage. The model's shape
    must be known without a download; when it is not, the check is skipped with a warning (the run itself will say
    what is wrong with model.path)."""
    if getattr(args, "no_memory_check", False):
        log.warning("memory check skipped (--no-memory-check)")
        return
    try:
        shape = model_shape(cfg, getattr(args, "model_config", None))
    except ConfigError as err:
        log.warning("memory check skipped: %s", err)
        return
    gpu, source = _gpu_bytes(getattr(args, "gpu_memory", None))
    verdicts = judge(cfg, shape, gpu, serve=False)
    bad = [v for v in verdicts if v.fits is False]
    if bad:
        def first_fix(v: Verdict) -> str:
            return next((f for f in v.fixes if f.endswith("fits")), v.fixes[0]).split(":")[0]

        what = "; ".join(f"{v.stage.name} needs {_fmt(v.need)} {'per GPU' if v.stage.on_gpu else 'of RAM'} of "
                         f"{_fmt(v.capacity)} (try {first_fix(v)})" for v in bad)
        raise ConfigError(f"the job cannot fit: {what}. `toolace-r plan --config ...` lists every stage and what to "
                          f"change; --no-memory-check runs it anyway")
    unchecked = [v.stage.name for v in verdicts if v.fits is None]
    log.info("memory check: %s fit%s", ", ".join(f"{v.stage.name} {_fmt(v.need)}" for v in verdicts if v.fits),
             f"; not checked ({source}): {', '.join(unchecked)}" if unchecked else "")
