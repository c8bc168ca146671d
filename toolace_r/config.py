"""The one typed configuration of toolace-r.

Every job (run, probe, train, eval, serve, ablate) reads the same schema: a YAML file under `jobs/` merged onto
these dataclasses, then `key=value` overrides from the command line. OmegaConf's structured mode makes an unknown
key or a wrong type an error; `load_config` turns that error into a `ConfigError` naming the key and the source.

Paper decisions that are ours (PAPER.md, marked [D]) are fields with defaults here, never constants in code.
"""
from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from toolace_r.data.prompts import SYSTEM_TEMPLATES
from toolace_r.errors import ConfigError

log = logging.getLogger(__name__)


@dataclass
class TinyModelConfig:
    """Shape of a locally built Llama-architecture model (tests, demo). No hub access."""
    vocab_size: int = 2048
    hidden_size: int = 128
    num_layers: int = 4
    num_heads: int = 4
    intermediate_size: int = 512
    max_position_embeddings: int = 1024
    seed: int = 0


@dataclass
class BaseModelConfig:
    """How the warm tiny base model (`model.path=tiny-base`, toolace_r/base_model.py) is pre-trained on the general
    tool-use corpus (toolace_r/data/general_pool.py): the demo's stand-in for a downloaded instruct model."""
    train_tokens: int = 6_000_000  # fresh general-corpus tokens (prompt + answer)
    tokens_per_step: int = 2048  # rows × longest row per optimizer step: small steps, many of them, learn copying
    lr: float = 2.0e-3
    warmup_steps: int = 100
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.1
    max_length: int = 384
    bf16_autocast: bool = True  # on CPU: fp32 weights, bf16 matmuls (1.5-2x faster where the CPU has avx512_bf16)
    tokenizer_samples: int = 20000  # general-corpus samples the byte-level BPE is trained on
    # Natural requests: this share of the rows comes from the built-in catalogue's `natural_domains` (requests as
    # people word them, tools the target pool must not use: keep pool.builtin.domains disjoint, the driver checks);
    # the rest are made-up tools (toolace_r.data.general_pool), which force copying names and values.
    natural_domains: list[str] = field(default_factory=list)
    natural_fraction: float = 0.0
    sample_seed: int = 0  # which tools and requests are drawn
    seed: int = 0  # init and batch order
    threads: int = 1  # torch threads while building: one thread is robust when the box is busy (two OpenMP threads
    # on a shared 2-core box wait on each other: measured 0.6 k vs 7.5 k tokens/s beside a CPU-bound process)


@dataclass
class ModelConfig:
    # A local HF directory or a hub name (passed to from_pretrained unchanged). "tiny-base" = the warm tiny base
    # model pre-trained on the general tool-use corpus (shipped / cached / built: toolace_r/base_model.py; shape
    # model.tiny, recipe model.base). "tiny" = a randomly initialised one built into RUN_DIR/base_model from the pool.
    path: str = "tiny"
    dtype: str = "auto"  # auto (bf16 on GPU, fp32 on CPU) | float32 | bfloat16 | float16
    trust_remote_code: bool = False
    # How prompts are written (toolace_r/data/prompts.py): "toolace" (ToolACE's system prompt with JSON tools),
    # "compact" (same JSON, shorter instruction) or "signature" (one `name(param: type)` line per tool: fewest tokens,
    # what a tiny from-scratch CPU model learns from fastest). Saved with every model dir this project writes, so eval and serve match training.
    prompt_style: str = "toolace"
    tiny: TinyModelConfig = field(default_factory=TinyModelConfig)
    base: BaseModelConfig = field(default_factory=BaseModelConfig)


@dataclass
class BuiltinPoolConfig:
    """The generated default pool (toolace_r.data.default_pool)."""
    n_train: int = 4000
    n_heldout: int = 200
    seed: int = 0
    # catalogue domains the pool draws its tools from (toolace_r.data.default_pool.DOMAINS); empty = all 12
    domains: list[str] = field(default_factory=list)
    # share of each category (normalised); single calls are easy for a tiny model, parallel and irrelevance hard
    mix: dict[str, float] = field(default_factory=lambda: {
        "simple": 0.2, "multiple": 0.35, "parallel": 0.15, "parallel_multiple": 0.15, "irrelevance": 0.15})


@dataclass
class PoolConfig:
    # A file (JSON, JSONL, parquet) or HF datasets directory, or "builtin" for the generated default pool.
    path: str = "builtin"
    format: str = "auto"  # auto | toolace | sharegpt | openai | bfcl | apibank | toolrl | samples
    on_error: str = "raise"  # raise | skip (skips are counted and reported)
    limit: int = 0  # 0 = all records
    builtin: BuiltinPoolConfig = field(default_factory=BuiltinPoolConfig)
    # Dev split: this many samples are carved out of the loaded pool (after `limit`), stratified by category (each
    # category keeps its share, largest remainder), drawn from `dev_seed` — deterministic for a given pool and seed,
    # whatever order the samples come in. The loop never probes, selects or trains on them; every accuracy-based
    # decision (run.stop_when_accuracy_stalls, the final model) is made on them, and the test sets (eval.data) are
    # evaluated only after the loop has stopped. Written to RUN_DIR/dev.jsonl; eval.limit does not apply to it.
    # 0 = no dev split: no accuracy-based decision is made and the final model is the last iteration's.
    dev_size: int = 0
    dev_seed: int = 0


@dataclass
class GenerationConfig:
    """Decoding settings shared by probing, evaluation and serving."""
    max_new_tokens: int = 128
    temperature: float = 0.7
    top_p: float = 0.95
    seed: int = 0


@dataclass
class EngineConfig:
    """The decoding engine (toolace_r.engine) every probe actor, eval actor and serve replica runs."""
    # KV-cache budget per engine in GiB: the engine admits sequences while rows x reserved length (prompt +
    # max_new_tokens) fits, so batch sizes follow from memory. 0 = 40 % of free GPU memory after loading the model,
    # 2 GiB on CPU.
    kv_cache_gb: float = 0.0


@dataclass
class ProbeConfig:
    k: int = 8  # sampled answers per candidate sample
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    num_actors: int = 1  # Ray Data actors, each holding the model once
    cpus_per_actor: float = 1.0
    gpus_per_actor: float = 0.0
    batch_size: int = 16  # samples per map_batches batch
    # How the probe reads answers before judging them: "" (default) = eval.decoder, so the pass rates and the
    # refinement corpus's "keep" targets follow the judge the model is scored by (Config.__post_init__ fills it in);
    # lenient | bfcl to set it apart (the driver warns: a corpus may then teach keeping answers eval rejects).
    decoder: str = ""


@dataclass
class SelectConfig:
    # learnable: keep 0<p<1, drop p=1, hold back p=0 except `too_hard_fraction` of them
    # threshold: keep min_pass <= p <= max_pass;  all: keep everything;  random: random subset (ablation)
    policy: str = "learnable"
    min_pass: float = 0.0
    max_pass: float = 1.0
    too_hard_fraction: float = 0.25
    seed_fraction: float = 1.0  # iteration 0 trains on this fraction of the pool (the model starts at p = 0)
    seed_size: int = 0  # >0: absolute size of the iteration-0 seed subset (overrides seed_fraction)
    accumulate: bool = True  # selected sets accumulate across iterations
    random_size: int = 0  # for policy=random: how many samples (0 = same as the previous model-aware selection)
    seed: int = 0


@dataclass
class RefineConfig:
    # Self-refinement training corpus (PAPER.md §2)
    corpus: bool = True
    wrong_per_sample: int = 1  # refinement samples built from wrong answers, per selected id
    right_per_sample: int = 1  # ... from right answers (target = the identical answer)
    corpus_fraction: float = 0.5  # refinement samples at most this fraction of the training set
    # What a refinement round answers when the previous answer is right: "repeat" it (the paper's "keep the unchanged
    # answer") or "confirm" it with a fixed phrase (prompts.CONFIRM_ANSWER), after which the previous answer stands.
    # Recorded in the trained model's toolace_r.json, so evaluation and serving ask it the way it was trained.
    keep_answer: str = "repeat"
    # Adaptive refinement at inference (PAPER.md §3); its rounds are capped by eval.max_rounds and serve.max_rounds
    draft_verify: bool = True  # verify a repeated answer in one forward pass (greedy only)
    reuse_prefix: bool = True  # reuse the KV cache of the shared prompt prefix
    seed: int = 0


@dataclass
class LoraConfig:
    enabled: bool = False
    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])


@dataclass
class TrainConfig:
    # Where each iteration's training starts: "continue" from the previous iteration's model, or "base": from the
    # starting model every time, on that iteration's (accumulated) selection (STaR-style; no drift from re-training
    # the same rows on top of themselves).
    init: str = "continue"
    num_workers: int = 2
    cpus_per_worker: float = 1.0
    use_gpu: bool = False
    placement_strategy: str = "PACK"  # PACK | SPREAD | STRICT_PACK | STRICT_SPREAD
    zero_stage: int = 2
    offload_optimizer: bool = False
    # auto (bf16 on GPU, fp32 on CPU) | fp32 | bf16 | amp_bf16 (fp32 weights and optimizer, forward under bf16
    # autocast: ~1.3x the tokens/s of fp32 on a CPU with avx512_bf16, no bf16 rounding of the weights)
    precision: str = "auto"
    # Recompute each decoder layer's activations in the backward instead of keeping them (HF's checkpointing,
    # non-reentrant): only every layer's input is kept, not its attention/MLP intermediates, for one extra forward
    # per step. An 8B model at 16 k tokens per micro-batch needs it to fit an 80 GB GPU; the tiny CPU models do not
    # (it would only slow them down).
    gradient_checkpointing: bool = False
    lr: float = 2.0e-3
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.1
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    warmup_steps: int = 20
    epochs: float = 1.0
    max_steps: int = 0  # >0 caps the number of optimizer steps
    max_tokens: int = 0  # >0: train on this many tokens (prompt + target, all workers; epochs cycled) instead of `epochs`
    tokens_per_micro_batch: int = 4096  # per worker; batches are grouped by length
    grad_accum: int = 1
    grad_clip: float = 1.0
    max_length: int = 512
    checkpoint_every: int = 50  # optimizer steps between Ray Train checkpoints
    max_failures: int = 2
    storage_path: str = ""  # Ray Train storage (local dir or URI); default RUN_DIR/ray_train
    lora: LoraConfig = field(default_factory=LoraConfig)
    seed: int = 0


@dataclass
class EndpointConfig:
    """`toolace-r eval --model openai:URL[#name]`: a served model behind an OpenAI-compatible chat API
    (toolace_r.endpoint). Only how the requests are made; what is judged is the same as in-process."""
    concurrency: int = 4  # requests in flight at once (a thread pool)
    timeout_s: float = 120.0  # per request attempt
    max_retries: int = 4  # on 408/409/429/5xx and lost connections, with exponential backoff (openai client)
    api_key_env: str = "OPENAI_API_KEY"  # env var holding the key sent as `Authorization: Bearer`; unset = none
    # JSON fields added to every request body: e.g. {max_refine_rounds: 1} makes a toolace-r server answer in one
    # pass; vendor options for other servers. Empty = a plain OpenAI request.
    extra_body: dict[str, Any] = field(default_factory=dict)


@dataclass
class EvalConfig:
    data: list[str] = field(default_factory=lambda: ["builtin"])  # specs: builtin | bfcl:DIR | apibank:FILE | FILE
    generation: GenerationConfig = field(default_factory=lambda: GenerationConfig(temperature=0.0))
    max_rounds: int = 3
    # bfcl: BFCL's own decoder (toolace_r/calls/bfcl.py), so scores compare with the leaderboard's; lenient: also
    # reads fences, prose around calls, tool_call JSON (labelled "not the leaderboard's" wherever a figure is shown)
    decoder: str = "bfcl"
    # Guided decoding (toolace_r.constrain, the server's `guided` option of tool_choice "auto"): an answer that opens
    # a call list stays a valid call to the item's tools (names, required arguments, types, enums), in every round;
    # a no-call answer is still possible. Off: the model decodes freely (what the paper's figures measure).
    guided: bool = False
    num_actors: int = 1
    cpus_per_actor: float = 1.0
    gpus_per_actor: float = 0.0
    batch_size: int = 32
    limit: int = 0  # per data spec, 0 = all
    endpoint: EndpointConfig = field(default_factory=EndpointConfig)


@dataclass
class ServeConfig:
    model: str = ""  # model dir to serve
    model_name: str = "toolace-r"
    host: str = "127.0.0.1"
    port: int = 8000
    route_prefix: str = "/"
    min_replicas: int = 1
    max_replicas: int = 2
    target_ongoing_requests: float = 4.0
    upscale_delay_s: float = 5.0
    downscale_delay_s: float = 60.0
    max_ongoing_requests: int = 32
    num_cpus: float = 1.0
    num_gpus: float = 0.0
    batching: bool = True  # false: one request decodes at a time (the unbatched baseline of benchmarks/serve_load.py)
    max_batch_size: int = 16  # the most requests a replica decodes at once (within engine.kv_cache_gb)
    max_rounds: int = 3
    max_new_tokens: int = 256
    max_body_bytes: int = 1_000_000
    api_key_env: str = "TOOLACE_API_KEY"  # if this env var is set, requests need `Authorization: Bearer <it>`


@dataclass
class AblationConfig:
    arms: list[str] = field(default_factory=lambda: ["full", "plain_sft", "random_select", "no_refine_corpus"])
    concurrent: bool = False
    token_budget: int = 0  # training tokens per train stage, the same for every arm; 0 = use train.max_tokens
    # Every arm runs once per seed s (RUN_DIR/arms/<arm>/seed_<s>/); seed s adds s to probe.generation.seed,
    # select.seed, refine.seed and train.seed (toolace_r/ablation.py SEED_KEYS). >= 3 for a meaningful interval.
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])


@dataclass
class RunConfig:
    dir: str = "runs/demo"
    max_iterations: int = 3
    stop_when_selection_stalls: bool = True
    # stop when the dev metric (final_model_metric) has not improved for `patience` iterations; needs pool.dev_size > 0
    stop_when_accuracy_stalls: bool = False
    # The dev-split figure that picks report.json's final_model (best iteration, ties → the earlier one) and that
    # stop_when_accuracy_stalls watches: refined_accuracy (what the server answers with) | accuracy (single pass).
    final_model_metric: str = "refined_accuracy"
    probe_first_iteration: bool = False  # probe the untrained model too (iteration 0 trains on the seed subset anyway)
    # Evaluate the test sets (eval.data) for every trained iteration — the per-iteration test curve in the report —
    # or only for the final model (and the untrained one). Test evaluations are reporting, never a decision; the dev
    # curve is there either way. The ablation's tokens-to-match figure needs the whole curve.
    test_every_iteration: bool = True
    patience: int = 1
    ray_address: str = ""  # "" = ray.init() default (local, or the cluster of a `ray job submit`)
    num_cpus: int = 0  # local Ray only; 0 = all
    log_level: str = "INFO"


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    pool: PoolConfig = field(default_factory=PoolConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    probe: ProbeConfig = field(default_factory=ProbeConfig)
    select: SelectConfig = field(default_factory=SelectConfig)
    refine: RefineConfig = field(default_factory=RefineConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    serve: ServeConfig = field(default_factory=ServeConfig)
    ablation: AblationConfig = field(default_factory=AblationConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def __post_init__(self) -> None:
        # One judge for probing and evaluation unless a job sets probe.decoder itself: filled in here, so that both
        # `load_config` (OmegaConf builds the dataclass) and a plain `Config()` see the decoder that will be used.
        if not self.probe.decoder:
            self.probe.decoder = self.eval.decoder


_CHOICES = {
    "model.dtype": {"auto", "float32", "bfloat16", "float16"},
    "model.prompt_style": set(SYSTEM_TEMPLATES),  # every style prompts.py can render
    "pool.format": {"auto", "toolace", "sharegpt", "openai", "bfcl", "apibank", "toolrl", "samples"},
    "pool.on_error": {"raise", "skip"},
    "run.final_model_metric": {"refined_accuracy", "accuracy"},
    "probe.decoder": {"", "lenient", "bfcl"},  # "" = eval.decoder
    "eval.decoder": {"lenient", "bfcl"},
    "select.policy": {"learnable", "threshold", "all", "random"},
    "train.init": {"continue", "base"},
    "refine.keep_answer": {"repeat", "confirm"},
    "train.zero_stage": {0, 1, 2, 3},
    "train.precision": {"auto", "fp32", "bf16", "amp_bf16"},
    "train.placement_strategy": {"PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"},
}


# Keys the schema once had and has no more, with why. A command-line override naming one is an error saying so (the
# user asked for something that would do nothing); a YAML file naming one — an older job file, or the config.yaml an
# earlier version saved in a run dir — loads with a warning, the key dropped (it never had an effect, so nothing that
# file computed changes), and driver.prepare_run_dir ignores them when it compares a resumed run's saved config.
RETIRED_KEYS = {
    "run.seed": "it was read nowhere; each random choice has its own seed: pool.builtin.seed, pool.dev_seed, "
                "probe.generation.seed, select.seed, refine.seed, train.seed, eval.generation.seed",
    "refine.max_rounds": "it was read nowhere; refinement rounds at inference are eval.max_rounds (evaluation, and "
                         "the driver's dev and test evaluations) and serve.max_rounds (serving)",
    "probe.generation.batch_size": "the decoding engine batches continuously; how many sequences decode at once "
                                   "follows from its KV-cache budget, engine.kv_cache_gb",
    "eval.generation.batch_size": "the decoding engine batches continuously; how many sequences decode at once "
                                  "follows from its KV-cache budget, engine.kv_cache_gb",
    "serve.batch_wait_timeout_s": "a replica's engine takes each request at its next decoding step (continuous "
                                  "batching): no request waits for company",
}


def drop_retired_keys(tree: Any, source: str | None = None) -> Any:
    """A copy of `tree` (a plain dict, e.g. a loaded YAML) without RETIRED_KEYS; each one dropped is logged as a
    warning naming `source`, unless it is None. Anything but a dict is returned as it is."""
    if not isinstance(tree, dict):
        return tree
    tree = copy.deepcopy(tree)
    for dotted, why in RETIRED_KEYS.items():
        *parents, leaf = dotted.split(".")
        node = tree
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict) and leaf in node:
            del node[leaf]
            if source is not None:
                log.warning("%s: key %r is ignored: %s; delete it from the file", source, dotted, why)
    return tree


def _error_key(err: OmegaConfBaseException) -> str:
    key = getattr(err, "full_key", None) or getattr(err, "key", None)
    return str(key) if key else "?"


def _merge(base: DictConfig, other: Any, source: str) -> DictConfig:
    try:
        return OmegaConf.merge(base, other)  # type: ignore[return-value]
    except OmegaConfBaseException as err:
        reason = str(getattr(err, "msg", None) or err).splitlines()[0]
        raise ConfigError(f"{source}: key {_error_key(err)!r}: {reason}") from None


def _validate_choices(cfg: DictConfig, source: str) -> None:
    for dotted, allowed in _CHOICES.items():
        value = OmegaConf.select(cfg, dotted)
        if value not in allowed:
            raise ConfigError(f"{source}: key {dotted!r} = {value!r}, expected one of {sorted(allowed, key=str)}")


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Schema defaults ← YAML file ← `key=value` overrides. Raises ConfigError naming the key and where it came from."""
    cfg: DictConfig = OmegaConf.structured(Config)
    source = "defaults"
    if path:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        try:
            loaded = OmegaConf.load(path)
        except Exception as err:  # YAML syntax errors come from yaml, not omegaconf
            raise ConfigError(f"{path}: not valid YAML: {err}") from None
        cfg = _merge(cfg, drop_retired_keys(OmegaConf.to_container(loaded), str(path)), str(path))
        source = str(path)
    if overrides:
        bad = [o for o in overrides if "=" not in o]
        if bad:
            raise ConfigError(f"command line: override {bad[0]!r} is not of the form key=value")
        for o in overrides:
            key = o.split("=", 1)[0].lstrip("+~")
            if key in RETIRED_KEYS:
                raise ConfigError(f"command line: key {key!r} no longer exists: {RETIRED_KEYS[key]}")
        try:
            dotlist = OmegaConf.from_dotlist(list(overrides))
        except OmegaConfBaseException as err:
            raise ConfigError(f"command line: {err}") from None
        cfg = _merge(cfg, dotlist, "command line")
        source = f"{source} + command line"
    _validate_choices(cfg, source)
    return OmegaConf.to_object(cfg)  # type: ignore[return-value]


def to_yaml(cfg: Config) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def to_dict(cfg: Config) -> dict:
    return OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)  # type: ignore[return-value]
