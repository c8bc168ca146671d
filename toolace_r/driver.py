"""The iterative ToolACE-R job driver: the paper's loop, run stage by stage on Ray, resumable after any crash.

    pool, dev ← split(pool, pool.dev_size)                dev: stratified by category, never trained on
    for t = 0, 1, ...:
        rows_t   ← probe(model_t, pool)                 k sampled answers per pool sample → pass rate (t = 0: optional)
        S_t      ← select(rows_t, S_<t)                  model-aware: keep what the model can learn but has not mastered
        D_t      ← build_corpus(S_t, rows_t)             direct samples + self-refinement samples from its own answers
        model_t+1 ← train(model_t, D_t)                  continues from the previous iteration's model
        dev_t    ← evaluate(model_t+1, dev)               single pass and adaptive refinement
        stop when t + 1 = max_iterations, S_t adds nothing new, or dev_t has not improved for `patience` iterations
    final ← argmax_t dev_t (run.final_model_metric; ties → earlier t); no dev split → the last model
    then, and only then: evaluate(untrained model, test), evaluate(model_t+1, test) for every t   (eval.data)

Every decision sees dev figures only; the test sets are read after the loop has stopped and the final model has been
recorded, so the test curve in the report is an honest estimate, never a figure something was tuned on.

`run(cfg)` below is that loop. Every stage writes into `RUN_DIR/iter_NNN/` and is recorded in `RUN_DIR/state.json`
(atomic writes) once it has finished; a rerun with the same run dir replays the recorded results and resumes at
the first unfinished stage, so no finished stage runs twice. The report (report.json + report.html) is rebuilt after
every stage. Ablation arms (plain SFT, random selection, no refinement corpus) are configs of this same loop:
`select.policy=all|random`, `refine.corpus=false`.
"""
from __future__ import annotations

import copy
import hashlib
import json
import logging
import shutil
import time
from collections import Counter
from pathlib import Path
from typing import Any, Callable

from omegaconf import OmegaConf

from toolace_r import io as rio
from toolace_r import ray_session, testing
from toolace_r.config import Config, RunConfig, drop_retired_keys, to_dict, to_yaml
from toolace_r.data.schema import Sample
from toolace_r.errors import ConfigError, DataError
from toolace_r.report import STATE_FILE, iter_key, write_report

log = logging.getLogger("toolace_r.driver")

CONFIG_FILE = "config.yaml"
DEV_FILE = "dev.jsonl"  # the dev split (Sample rows), what every iter_NNN/dev_eval evaluates
# Keys that only say how (or how long) to run, not what is computed: they may change between a run and its resume.
RESUME_SAFE = (
    "run.dir", "run.ray_address", "run.num_cpus", "run.log_level", "run.max_iterations", "run.patience",
    "run.stop_when_selection_stalls", "run.stop_when_accuracy_stalls", "run.final_model_metric",
    "probe.num_actors", "probe.cpus_per_actor", "probe.gpus_per_actor", "probe.batch_size",
    "eval.num_actors", "eval.cpus_per_actor", "eval.gpus_per_actor", "eval.batch_size",
    "eval.endpoint.",  # only `toolace-r eval --model openai:...` reads these; the driver never evaluates an endpoint
    "train.storage_path", "train.max_failures", "train.checkpoint_every", "serve.", "ablation.",
)


# ------------------------------------------------------------------------------------------------ run state
class RunState:
    """`RUN_DIR/state.json`: finished stages with their (small, JSON) results and timings, plus an event history.

    {"stages": {"iter_001/train": {"started_at", "finished_at", "wall_s", "result": {...}}, ...},
     "history": [{"stage", "event": "start"|"finish", "time"}, ...], "stopped": {"iteration", "reason"} | null}
    """

    def __init__(self, run_dir: Path):
        self.path = run_dir / STATE_FILE
        self.data: dict[str, Any] = (
            rio.read_json(self.path) if self.path.is_file() else {"version": 1, "stages": {}, "history": [], "stopped": None}
        )

    def done(self, key: str) -> bool:
        return key in self.data["stages"]

    def result(self, key: str) -> Any:
        return self.data["stages"][key]["result"]

    def start(self, key: str) -> float:
        now = time.time()
        self.data["history"].append({"stage": key, "event": "start", "time": now})
        self.save()
        return now

    def finish(self, key: str, result: Any, started: float) -> None:
        now = time.time()
        self.data["stages"][key] = {"started_at": started, "finished_at": now, "wall_s": now - started, "result": result}
        self.data["history"].append({"stage": key, "event": "finish", "time": now})
        self.save()

    def set_stopped(self, iteration: int | None, reason: str | None) -> None:
        self.data["stopped"] = None if reason is None else {"iteration": iteration, "reason": reason}
        self.save()

    def save(self) -> None:
        rio.write_json(self.path, self.data)


def run_stage(state: RunState, run_dir: Path, key: str, fn: Callable[[], Any], push: Callable[[], None] | None = None) -> Any:
    """Run one stage unless state.json says it finished; record its result; rebuild the report; `push` the run dir
    to its remote location (storage.RunDir) when it has one."""
    if state.done(key):
        entry = state.data["stages"][key]
        log.info("· %-20s already finished (%.1f s) — reusing its result", key, entry["wall_s"])
        return entry["result"]
    log.info("━━━━ %s ━━━━", key)
    started = state.start(key)
    result = fn()
    state.finish(key, result, started)
    testing.after_stage(key)  # fault tests only: a crash at this stage boundary (toolace_r.testing)
    log.info("✓ %-20s done in %.1f s", key, time.time() - started)
    write_report(run_dir)
    if push:
        push()
    return result


# ------------------------------------------------------------------------------------------------ stop criteria
def stop_after_select(run_cfg: RunConfig, iteration: int, n_selected: int, n_new: int) -> str | None:
    """Checked after selection, before training on it."""
    if n_selected == 0:
        return "nothing selected: every pool sample is mastered or out of reach"
    if iteration > 0 and run_cfg.stop_when_selection_stalls and n_new == 0:
        return "selected set no longer growing (no new samples selected)"
    return None


def accuracy_stalled(accuracies: list[float], patience: int) -> bool:
    """True when the best accuracy so far is `patience` or more iterations old (ties do not count as improvement)."""
    if not accuracies:
        return False
    best = max(range(len(accuracies)), key=lambda i: (accuracies[i], -i))  # first iteration reaching the best
    return len(accuracies) - 1 - best >= max(1, patience)


def stop_after_eval(run_cfg: RunConfig, iteration: int, accuracies: list[float]) -> str | None:
    """Checked after each iteration's dev evaluation. `accuracies` = the dev split's `run.final_model_metric` of
    iterations 0..t (empty without a dev split: then only max_iterations can stop the loop here)."""
    if run_cfg.stop_when_accuracy_stalls and accuracy_stalled(accuracies, run_cfg.patience):
        return f"dev {run_cfg.final_model_metric} has not improved for {max(1, run_cfg.patience)} iteration(s)"
    if iteration + 1 >= run_cfg.max_iterations:
        return f"max_iterations ({run_cfg.max_iterations}) reached"
    return None


def check_decision_config(cfg: Config) -> None:
    """Accuracy-based decisions need the dev split: no figure of the test sets may drive one."""
    if cfg.pool.dev_size < 0:
        raise ConfigError(f"pool.dev_size must be >= 0, got {cfg.pool.dev_size}")
    if cfg.run.stop_when_accuracy_stalls and cfg.pool.dev_size <= 0:
        raise ConfigError("run.stop_when_accuracy_stalls=true needs a dev split to watch, but pool.dev_size is 0; "
                          "set pool.dev_size (samples carved out of the pool) or run.stop_when_accuracy_stalls=false "
                          "(the test sets are never used for a decision)")


def choose_final_model(models: dict[int, str], dev: dict[int, dict | None], metric: str) -> dict | None:
    """The final model, chosen on the dev split only: the trained iteration with the best dev `metric` (ties → the
    earlier iteration). `models`: iteration → model dir of every trained iteration; `dev`: iteration → its dev
    evaluation (evaluate()'s result; absent without a dev split, then the last iteration's model is final).
    The untrained model is not a candidate: the run's deliverable is a model it trained; the report still compares
    the final model with the untrained one on the test sets (paired test), which shows when training did not pay."""
    from toolace_r.report import eval_summary, fmt_ci

    if not models:
        return None
    its = sorted(models)
    scored = {it: eval_summary(dev[it]) for it in its if dev.get(it)}
    if not scored:
        last = its[-1]
        return {"iteration": last, "model_dir": models[last], "metric": None, "value": None,
                "reason": f"no dev split (pool.dev_size = 0): the last iteration's model ({last}), chosen without "
                          f"any accuracy figure"}
    best = max(scored, key=lambda it: (scored[it][metric] if scored[it][metric] is not None else -1.0, -it))
    fig = scored[best]
    return {"iteration": best, "model_dir": models[best], "metric": metric, "value": fig[metric],
            "reason": f"best dev {metric} {fmt_ci(fig[metric], fig[f'{metric}_ci95'])} at iteration {best} of "
                      f"{len(its)} trained (iterations {its[0]}–{its[-1]}, ties to the earlier); dev n = {fig['n']}"}


def final_vs_baseline(baseline_outputs: Path, final_outputs: Path) -> dict | None:
    """Paired tests of the final model against the untrained one on the same test items (outputs.jsonl of both,
    matched by group and id): {"accuracy": PAIRED, "refined_accuracy": PAIRED}, a = untrained, b = final."""
    from toolace_r.report import paired

    if not (baseline_outputs.is_file() and final_outputs.is_file()):
        return None
    base = {(r["group"], r["id"]): r for r in rio.read_jsonl(baseline_outputs)}
    final = {(r["group"], r["id"]): r for r in rio.read_jsonl(final_outputs)}
    keys = sorted(base.keys() & final.keys())
    if len(keys) != len(base) or len(keys) != len(final):
        log.warning("final vs untrained: %d shared test items (%d and %d evaluated); comparing the shared ones",
                    len(keys), len(base), len(final))
    return {rate: paired([bool(base[k][col]) for k in keys], [bool(final[k][col]) for k in keys])
            for rate, col in (("accuracy", "valid"), ("refined_accuracy", "refined_valid"))}


# ------------------------------------------------------------------------------------------------ run dir + config
def _flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(obj, dict):
        out: dict[str, Any] = {}
        for k, v in obj.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: obj}


def config_differences(saved: dict, current: dict) -> tuple[list[str], list[str]]:
    """(keys whose change would make the resumed run inconsistent, resume-safe keys that changed)."""
    a, b = _flatten(saved), _flatten(current)
    changed = sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))
    safe = [k for k in changed if any(k == s or (s.endswith(".") and k.startswith(s)) for s in RESUME_SAFE)]
    return [k for k in changed if k not in safe], safe


def prepare_run_dir(cfg: Config, run_dir: Path | None = None) -> Path:
    """Create RUN_DIR (or use `run_dir`, the local mirror of a remote one) and save the config there; on a rerun
    refuse a config that would change what was computed."""
    run_dir = (run_dir or Path(cfg.run.dir)).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    saved_path = run_dir / CONFIG_FILE
    current = to_dict(cfg)
    if saved_path.is_file():
        # keys an earlier version saved that the schema no longer has (they never had an effect): not a difference
        saved = drop_retired_keys(OmegaConf.to_container(OmegaConf.load(saved_path), resolve=True))
        unsafe, safe = config_differences(saved, current)  # type: ignore[arg-type]
        if unsafe:
            details = ", ".join(f"{k}: {_flatten(saved).get(k)!r} → {_flatten(current).get(k)!r}" for k in unsafe[:8])
            raise ConfigError(
                f"run dir {run_dir} was started with a different config ({details}); resuming would mix results "
                f"of two setups. Use a new run.dir, or delete {run_dir} to start over."
            )
        if safe:
            log.warning("resuming %s with changed run settings: %s", run_dir, ", ".join(safe))
    rio.write_text(saved_path, to_yaml(cfg))
    return run_dir


# ------------------------------------------------------------------------------------------------ stages
def pool_fingerprint(samples: list[Sample]) -> str:
    return hashlib.sha256("\n".join(sorted(s.id for s in samples)).encode()).hexdigest()[:16]


def load_pool_stage(cfg: Config, state: RunState, run_dir: Path) -> tuple[list[Sample], list[Sample]]:
    """Load the pool (deterministic for a given config), carve the dev split out of it (pool.dev_size, stratified by
    category; written to RUN_DIR/dev.jsonl) and check on resume that both are still the same. Returns (the pool the
    loop probes, selects and trains on, the dev split)."""
    from toolace_r.data.pool import load_pool_result, split_dev

    t0 = time.time()
    read = load_pool_result(cfg.pool)
    pool = read.samples
    ids = Counter(s.id for s in pool)
    dupes = [i for i, n in ids.items() if n > 1]
    if dupes:
        raise DataError(f"pool {cfg.pool.path}: {len(dupes)} duplicate sample ids, e.g. {dupes[0]!r}; ids must be unique")
    if not pool:
        raise DataError(f"pool {cfg.pool.path}: no samples")
    fingerprint = pool_fingerprint(pool)  # of the pool as loaded, dev included
    loaded = len(pool)
    pool, dev = split_dev(pool, cfg.pool.dev_size, cfg.pool.dev_seed)
    dev_fingerprint = pool_fingerprint(dev) if dev else None
    if state.done("pool"):
        then = state.result("pool")
        if then["fingerprint"] != fingerprint:
            raise DataError(f"pool {cfg.pool.path} changed since run dir {run_dir} was started "
                            f"({loaded} samples now, {then.get('loaded_size', then['pool_size'])} then); use a new run.dir")
        if then.get("dev_fingerprint") != dev_fingerprint:
            raise DataError(f"the dev split changed since run dir {run_dir} was started ({len(dev)} samples now, "
                            f"{then.get('dev_size', 0)} then; pool.dev_size / pool.dev_seed): decisions made on the old "
                            f"one would be mixed with the new; use a new run.dir")
    else:
        started = state.start("pool")
        state.finish("pool", {"pool_size": len(pool), "loaded_size": loaded, "fingerprint": fingerprint,
                              "categories": dict(Counter(s.category for s in pool)),
                              "dev_size": len(dev), "dev_fingerprint": dev_fingerprint, "dev_seed": cfg.pool.dev_seed,
                              "dev_categories": dict(Counter(s.category for s in dev)),
                              "records": read.records, "skipped": read.skipped, "skip_examples": read.errors[:5]},
                     started)
    if dev:
        rio.write_samples(run_dir / DEV_FILE, dev)
        log.info("dev split: %d samples (%s) carved out of the pool, fingerprint %s", len(dev),
                 ", ".join(f"{c} {n}" for c, n in sorted(Counter(s.category for s in dev).items())), dev_fingerprint)
    log.info("pool: %d samples (%s) from %d records loaded in %.1f s", len(pool),
             ", ".join(f"{c} {n}" for c, n in sorted(Counter(s.category for s in pool).items())), read.records,
             time.time() - t0)
    if read.skipped:
        log.warning("pool: %d bad records skipped (pool.on_error=skip); first: %s", read.skipped, read.errors[0])
    return pool, dev


def base_model_stage(cfg: Config, pool: list[Sample], run_dir: Path,
                     publish: Callable[[Path], str] = str) -> dict:
    """model.path; "tiny-base" = the warm tiny base model (shipped, cached or pre-trained on the general corpus:
    toolace_r.base_model); "tiny" = a randomly initialised tiny Llama with a tokenizer trained on the pool text,
    built into RUN_DIR/base_model and `publish`ed (storage.RunDir.publish: the name every node reads it by)."""
    if cfg.model.path == "tiny-base":
        from toolace_r.base_model import base_spec, check_disjoint, resolve_base_model, spec_hash

        check_disjoint(cfg)
        return {"model_dir": str(resolve_base_model(cfg)), "built": False, "base_hash": spec_hash(base_spec(cfg))}
    if cfg.model.path != "tiny":
        return {"model_dir": cfg.model.path, "built": False}
    from toolace_r.data.pool import pool_texts
    from toolace_r.models import build_tiny_model

    out = run_dir / "base_model"
    shutil.rmtree(out, ignore_errors=True)
    build_tiny_model(out, pool_texts(pool, cfg.model.prompt_style), cfg.model.tiny, cfg.model.prompt_style)
    return {"model_dir": publish(out), "built": True}


def prompt_style(cfg: Config, model_dir: str) -> str:
    """The model's own prompt style (its toolace_r.json, read from the store for a URI), else model.prompt_style."""
    from toolace_r.models import prompt_style_for

    return prompt_style_for(cfg, model_dir)


def summarize_probe(rows: list[dict]) -> dict:
    """Pass-rate histogram (k + 1 bins: 0/k … k/k) and mastered / learnable / too-hard counts."""
    k = max((int(r["k"]) for r in rows), default=0)
    counts = [0] * (k + 1)
    for r in rows:
        counts[round(float(r["pass_rate"]) * k)] += 1
    rates = [float(r["pass_rate"]) for r in rows]
    return {
        "n": len(rows),
        "k": k,
        "histogram": {"bins": [j / k for j in range(k + 1)] if k else [0.0], "counts": counts},
        "mean_pass_rate": sum(rates) / len(rates) if rates else None,
        "counts": {
            "mastered": sum(p >= 1.0 for p in rates),
            "learnable": sum(0.0 < p < 1.0 for p in rates),
            "too_hard": sum(p <= 0.0 for p in rates),
        },
    }


def probe_stage(cfg: Config, model_dir: str, pool: list[Sample], out: Path) -> dict:
    from toolace_r.probe import probe, read_probe

    # An older complete result (killed before the stage was recorded) is replaced; a probe killed half-way left its
    # finished batches in a partial dir beside `out`, and the rerun probes only the rest (probe._partial_dir).
    shutil.rmtree(out, ignore_errors=True)
    path = probe(cfg, model_dir, pool, str(out))
    summary = summarize_probe(read_probe(path))
    log.info("probe: %d samples × k=%d, mean pass rate %.3f — mastered %d, learnable %d, too hard %d",
             summary["n"], summary["k"], summary["mean_pass_rate"] or 0.0, *summary["counts"].values())
    return {"path": str(path), **summary}


def unprobed_rows(pool: list[Sample]) -> list[dict]:
    """Iteration 0 without probing: the pool ids with no pass rate (select takes its seed subset from them)."""
    return [{"id": s.id, "category": s.category} for s in pool]


def select_stage(cfg: Config, rows: list[dict], iteration: int, previous: set[str], out: Path,
                 random_size: int | None = None) -> dict:
    from toolace_r.select import select

    kwargs = {"random_size": random_size} if random_size is not None and cfg.select.policy == "random" else {}
    sel = select(rows, cfg.select, iteration, set(previous) if iteration > 0 else None, **kwargs)
    path = out / "selection.json"
    rio.write_json(path, {"iteration": iteration, "ids": list(sel.ids), "reasons": sel.reasons, "counts": sel.counts})
    new = len(set(sel.ids) - previous)
    log.info("select (%s): %d samples, %d new, %d selected so far — %s", cfg.select.policy, len(sel.ids), new,
             len(previous | set(sel.ids)), sel.counts)
    return {"path": str(path), "selected": len(sel.ids), "new": new, "selected_total": len(previous | set(sel.ids)),
            "counts": sel.counts}


def corpus_stage(cfg: Config, by_id: dict[str, Sample], rows: list[dict], ids: list[str], style: str, out: Path) -> dict:
    from toolace_r.refine_corpus import build_corpus

    # the decoder that judged the probe rows reads the "keep" targets of the right answers (refine_corpus.keep_target)
    corpus = build_corpus(by_id, rows, ids, cfg.refine, style, decoder=cfg.probe.decoder)
    path = out / "corpus.jsonl"
    rio.write_jsonl(path, corpus)
    kinds = Counter(r["kind"] for r in corpus)
    log.info("corpus: %d rows (%s)", len(corpus), ", ".join(f"{k} {n}" for k, n in sorted(kinds.items())))
    return {"path": str(path), "rows": len(corpus), "kinds": dict(kinds),
            "refine_samples": len(corpus) - kinds.get("direct", 0)}


def train_stage(cfg: Config, model_dir: str, corpus_path: str, out: Path, shared_out: str = "") -> dict:
    """→ out/model, out/metrics.jsonl (per step); keyed by run dir and stage, so a rerun after a kill mid-training
    resumes from the stage's last Ray Train checkpoint. `shared_out`: out's URI when the run dir is remote (the
    model and the checkpoints then live there, not in the driver's mirror: train's `shared_out`)."""
    from toolace_r.train import train

    extra = {"shared_out": shared_out} if shared_out else {}
    metrics = train(cfg, model_dir, corpus_path, str(out), resume_key=f"{out.parent.name}/{out.name}/train", **extra)
    if (out / "metrics.jsonl").is_file():
        rio.write_text(out / "train_metrics.jsonl", (out / "metrics.jsonl").read_text())
    log.info("train: %s steps, loss %.3f → %.3f, %.0f tokens/s, model → %s", metrics.get("steps"),
             metrics.get("loss_first") or float("nan"), metrics.get("loss_last") or float("nan"),
             metrics.get("tokens_per_s") or 0.0, metrics["model_dir"])
    return json.loads(json.dumps(metrics, default=str))  # JSON-safe copy for state.json


def eval_stage(cfg: Config, model_dir: str, out: Path, dev_spec: str | None = None) -> dict:
    """Evaluate on the test sets (eval.data) into out/eval/ and out/eval.json, or — with `dev_spec`, the dev split's
    file — on the dev split into out/dev_eval/ (same eval settings; eval.limit does not cut it, pool.dev_size is its
    size). Per group and overall the result also gets exact counts and the paired test refined vs single pass."""
    from toolace_r.evaluate import evaluate
    from toolace_r.report import add_item_statistics

    name = "dev_eval" if dev_spec else "eval"
    if dev_spec:
        eval_cfg = copy.deepcopy(cfg)
        eval_cfg.eval.limit = 0
        specs = [dev_spec]
    else:
        eval_cfg, specs = cfg, list(cfg.eval.data)
    shutil.rmtree(out / name, ignore_errors=True)
    result = evaluate(eval_cfg, model_dir, specs, str(out / name))
    if (out / name / "outputs.jsonl").is_file():
        add_item_statistics(result, rio.read_jsonl(out / name / "outputs.jsonl"))
    if not dev_spec:
        rio.write_json(out / "eval.json", result)
    o = result.get("overall", {})
    log.info("%s: accuracy %.3f single pass, %.3f with adaptive refinement (mean rounds %.2f) on %s samples",
             "dev eval" if dev_spec else "test eval", o.get("accuracy") or 0.0, o.get("refined_accuracy") or 0.0,
             o.get("mean_rounds") or 0.0, o.get("n"))
    return json.loads(json.dumps(result, default=str))


# ------------------------------------------------------------------------------------------------ the loop
def run(cfg: Config, random_sizes: dict[int, int] | None = None) -> dict:
    """Run (or resume) the iterative ToolACE-R loop described in the module docstring; returns report.json's object.

    `random_sizes` (iteration → size) is for the random-selection ablation arm (select.policy=random): each
    iteration draws as many samples as the model-aware arm selected at that iteration."""
    from toolace_r.storage import RunDir

    t_start = time.time()
    check_decision_config(cfg)
    if cfg.probe.decoder != cfg.eval.decoder:
        log.warning("probe.decoder=%s differs from eval.decoder=%s: pass rates and the refinement corpus's \"keep\" "
                    "targets follow a judge other than the one the model is scored by (leave probe.decoder unset to "
                    "follow eval.decoder)", cfg.probe.decoder, cfg.eval.decoder)
    location = RunDir(cfg.run.dir)  # a path, or s3://… / gs://… used through a local mirror
    location.pull()
    run_dir = prepare_run_dir(cfg, location.local)
    state = RunState(run_dir)
    state.data["decoders"] = {"probe": cfg.probe.decoder, "eval": cfg.eval.decoder}  # the report labels its figures
    state.save()
    log.info("run dir %s (%s)", location.location, "resuming" if state.data["stages"] else "new run")
    started_ray = ray_session.start_or_join(cfg)
    try:
        stage = lambda key, fn: run_stage(state, run_dir, key, fn, location.push)  # noqa: E731
        pool, dev = load_pool_stage(cfg, state, run_dir)
        dev_spec = str(run_dir / DEV_FILE) if dev else None
        by_id = {s.id: s for s in pool}
        # Every model dir handed to actors and train workers is named the way every node reads it: a path of a local
        # (or shared-mount) run dir, the run dir's URI for a remote one (the dir lives in the store, see storage.py)
        # (location.recorded: a remote run dir started before that recorded its mirror paths; they are URIs now)
        model = location.recorded(
            stage("base_model", lambda: base_model_stage(cfg, pool, run_dir, location.publish))["model_dir"])
        base_model = model
        if dev_spec:  # where the dev curve starts; not a candidate for the final model (choose_final_model)
            stage("baseline/dev_eval", lambda: eval_stage(cfg, base_model, run_dir / "baseline", dev_spec))

        selected: set[str] = set()
        metric = cfg.run.final_model_metric
        accuracies: list[float] = []  # dev `metric` of each trained iteration (empty without a dev split)
        models: dict[int, str] = {}  # iteration → the model it trained
        dev_results: dict[int, dict] = {}
        reason, iteration = None, -1
        for iteration in range(cfg.run.max_iterations):
            it_dir = run_dir / f"iter_{iteration:03d}"
            it_dir.mkdir(exist_ok=True)
            style = prompt_style(cfg, model)
            rows: list[dict] = []  # probe rows: pass rates for select, the model's own answers for the corpus
            if iteration > 0 or cfg.run.probe_first_iteration:
                probed = stage(iter_key(iteration, "probe"), lambda: probe_stage(cfg, model, pool, it_dir / "probe"))
                from toolace_r.probe import read_probe

                rows = read_probe(probed["path"])
            size = (random_sizes or {}).get(iteration)
            sel = stage(iter_key(iteration, "select"),
                        lambda: select_stage(cfg, rows or unprobed_rows(pool), iteration, selected, it_dir, size))
            ids = rio.read_json(sel["path"])["ids"]
            reason = stop_after_select(cfg.run, iteration, len(ids), len(set(ids) - selected))
            selected |= set(ids)
            if reason:
                break
            corpus = stage(iter_key(iteration, "corpus"),
                           lambda: corpus_stage(cfg, by_id, rows, ids, style, it_dir))
            start_from = model if cfg.train.init == "continue" else base_model  # "base": STaR-style restart
            shared_it = location.shared(it_dir) if location.remote else ""
            trained = stage(iter_key(iteration, "train"),
                            lambda: train_stage(cfg, start_from, corpus["path"], it_dir, shared_it))
            model = models[iteration] = location.recorded(trained["model_dir"])
            if dev_spec:
                dev_results[iteration] = stage(iter_key(iteration, "dev_eval"),
                                               lambda: eval_stage(cfg, model, it_dir, dev_spec))
                accuracies.append(float(dev_results[iteration]["overall"][metric]))
            reason = stop_after_eval(cfg.run, iteration, accuracies)
            if reason:
                break
        if reason is None:
            reason = "max_iterations reached" if cfg.run.max_iterations > 0 else "max_iterations is 0"
        state.set_stopped(iteration, reason)
        log.info("stopped after iteration %d: %s (%.1f s this invocation)", iteration, reason, time.time() - t_start)
        final = choose_final_model(models, dev_results, metric)
        state.data["final_model"] = final  # recorded before any test set is read
        state.save()
        if final:
            log.info("final model: iteration %s, %s — %s", final["iteration"], final["model_dir"], final["reason"])

        # The test sets (eval.data), only now: the untrained model and every trained iteration, for the report.
        # First how many test items the pool already holds (toolace_r.leaks): the report shows it beside them.
        from toolace_r.leaks import leak_stage

        stage("leaks", lambda: leak_stage(cfg, pool))
        stage("baseline/eval", lambda: eval_stage(cfg, base_model, run_dir / "baseline"))
        for it, model_dir in sorted(models.items()):
            if cfg.run.test_every_iteration or (final and it == final["iteration"]):
                stage(iter_key(it, "eval"), lambda: eval_stage(cfg, model_dir, run_dir / f"iter_{it:03d}"))
        state.data["final_vs_baseline"] = final and final_vs_baseline(
            run_dir / "baseline" / "eval" / "outputs.jsonl",
            run_dir / f"iter_{final['iteration']:03d}" / "eval" / "outputs.jsonl")
        state.save()
        report = write_report(run_dir)
        location.push()
        return report
    finally:
        if started_ray:
            import ray

            ray.shutdown()


def format_summary(report: dict) -> str:
    """The table `toolace-r run` prints at the end: per model the dev figure the driver decided on, the test figures
    (evaluated after the loop stopped), each as accuracy [95 % Wilson interval]; `*` marks the final model."""
    from toolace_r.report import fmt_ci

    final = report.get("final_model") or {}
    metric = final.get("metric") or "refined_accuracy"
    dev_head = f"dev {'refined' if metric == 'refined_accuracy' else 'single'}"
    ci = lambda ev, rate: fmt_ci(ev.get(rate), ev.get(f"{rate}_ci95")) if ev else "–"  # noqa: E731
    w = 21
    lines = [f"{'iteration':>11} {dev_head:>{w}} {'test single':>{w}} {'test refined':>{w}} {'rounds':>6} "
             f"{'selected':>8} {'refine':>6} {'wall s':>7}"]
    base, base_dev = report.get("baseline") or {}, report.get("baseline_dev") or {}
    if base or base_dev:
        rounds = f"{base['mean_rounds']:.2f}" if base.get("mean_rounds") is not None else "–"
        lines.append(f"{'untrained':>11} {ci(base_dev, metric):>{w}} {ci(base, 'accuracy'):>{w}} "
                     f"{ci(base, 'refined_accuracy'):>{w}} {rounds:>6}")
    for e in report["iterations"]:
        ev, dev = e["eval"] or {}, e.get("dev_eval") or {}
        rounds = f"{ev['mean_rounds']:.2f}" if ev.get("mean_rounds") is not None else "–"
        label = f"{e['iteration']}{' *' if e.get('final') else '  '}"
        lines.append(f"{label:>11} {ci(dev, metric):>{w}} {ci(ev, 'accuracy'):>{w}} {ci(ev, 'refined_accuracy'):>{w}} "
                     f"{rounds:>6} {e['selected'] or 0:>8} {e['refine_samples'] or 0:>6} {sum(e['wall_s'].values()):>7.1f}")
    from toolace_r.report import format_leaks_and_summaries

    extras = format_leaks_and_summaries(report)  # per-iteration benchmark summaries, the leak check (report.py)
    if report.get("decoder"):
        lines.append(report["decoder"]["label"])
    if final:
        lines.append(f"\n* final model: {final.get('reason')}")
        vs = final.get("test_vs_baseline") or {}
        for rate, label in (("accuracy", "single pass"), ("refined_accuracy", "refined")):
            t = vs.get(rate)
            if t:
                lines.append(f"  test vs untrained, {label}: {t['diff']:+.3f} ({t['a_only']} items only the untrained "
                             f"model gets right, {t['b_only']} only the final one; exact McNemar p = {t['p_value']:.3g})")
    return "\n".join(lines + ([f"\n{extras}"] if extras else []))


def run_command(args, cfg: Config) -> int:
    """`toolace-r run --config jobs/demo.yaml [key=value ...]`."""
    logging.getLogger("toolace_r").setLevel(cfg.run.log_level.upper())
    report = run(cfg)
    run_dir = Path(report["run_dir"])
    print(format_summary(report))
    stopped = report.get("stopped") or {}
    print(f"\nstopped: {stopped.get('reason')}\nreport: {run_dir / 'report.json'}\nplots:  {run_dir / 'report.html'}")
    if report.get("final_model_dir"):
        print(f"model:  {report['final_model_dir']}")
    return 0
