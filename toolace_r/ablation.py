"""Ablations side by side: is each part of ToolACE-R worth it on *your* pool and test sets — and by more than noise?

`toolace-r ablate --config jobs/demo_ablation.yaml [key=value ...]` runs every arm named in `ablation.arms` once per
seed in `ablation.seeds`, each (arm, seed) as a config of the one driver loop (toolace_r.driver.run — never a fork
of it), into its own normal, resumable run dir `RUN_DIR/arms/<arm>/seed_<s>/`:

    full              the job config as written: model-aware selection + self-refinement corpus
    plain_sft         select.policy=all, refine.corpus=false, seed_fraction=1: SFT on the whole pool every iteration
    random_select     select.policy=random, accumulate=false: each iteration of seed s trains on a random subset exactly
                      as large as the full arm's seed-s training set at that iteration (read from its selection.json
                      files, so full's seed s runs first)
    no_refine_corpus  refine.corpus=false: model-aware selection, direct samples only

What a seed changes (SEED_KEYS): seed s adds s to the job config's probe.generation.seed (the k sampled answers),
select.seed (seed subset, too-hard mix-in, random subsets), refine.seed (which wrong/right answers become refinement
rows, the corpus trim) and train.seed (data order, micro-batch plan, LoRA init). Nothing else differs between seeds.

What every arm and seed shares, so the comparison is fair:
- the pool, the dev split and the test sets (same config sections; the eval seed is not varied);
- the base model: model.path, or for model.path=tiny one model built ONCE into RUN_DIR/base_model that every run's
  model.path points at; the untrained model's evaluation runs once (first run) and is reused by all the others;
- the number of iterations: run.stop_when_selection_stalls / stop_when_accuracy_stalls are off, no run stops early;
- the training-token budget: train.max_tokens = ablation.token_budget for every train stage of every run (the trainer
  cycles over its rows until it has processed that many tokens). ablation.json checks train_tokens agree within 5 %.

Runs go one after another by default: full's first seed (it evaluates the shared untrained model), then the rest of
full and the arms that need nothing from full, then random_select (it needs full's sizes). `ablation.concurrent=true`
runs each of those groups as concurrent Ray tasks (each task is only the driver loop, 0 CPUs; its probe/train/eval
stages ask Ray for their own resources as usual), which pays only when the cluster has room for several runs' stages.

Report: RUN_DIR/ablation.json + ablation.html (+ plots/*.png), rewritten after every run. Per arm: the final model of
each seed-run (as its report.json names it, chosen on the dev split) evaluated on the test sets — mean, 95 % Student-t
interval over seeds and the per-seed values, single pass and with adaptive refinement; per pair of arms a paired
McNemar test pooled over seeds and the mean accuracy difference with its t-interval; per iteration the same means and
intervals; per category; and the training tokens the full arm needed to reach plain SFT's final accuracy.
The keys are listed in docs/ABLATION.md.
"""
from __future__ import annotations

import base64
import html
import itertools
import logging
import shutil
import time
from pathlib import Path
from typing import Any, Callable

from toolace_r import io as rio
from toolace_r.config import Config, load_config, to_yaml
from toolace_r.errors import ConfigError
from toolace_r.report import STATE_FILE, fmt_value, iter_key
from toolace_r.stats import mcnemar, t_interval

log = logging.getLogger("toolace_r.ablation")

ABLATION_JSON = "ablation.json"
ABLATION_HTML = "ablation.html"
REPORT_JSON = "report.json"  # each seed-run's own report (toolace_r.report)
FULL = "full"
REFERENCE = "plain_sft"  # tokens_to_match: how many tokens full needs to reach this arm's final accuracy
# Arm name → overrides on top of the job config (the arms differ ONLY in these keys).
ARM_OVERRIDES: dict[str, list[str]] = {
    "full": [],
    # probe.k=1: plain SFT uses no pass rates and no probed answers; the driver still probes, so keep it cheap
    "plain_sft": ["select.policy=all", "refine.corpus=false", "select.seed_fraction=1.0", "select.seed_size=0",
                  "probe.k=1"],
    "random_select": ["select.policy=random", "select.accumulate=false"],
    "no_refine_corpus": ["refine.corpus=false"],
}
ARM_DESCRIPTIONS = {
    "full": "model-aware selection + refinement corpus (the job config)",
    "plain_sft": "SFT on the whole pool every iteration, no refinement corpus",
    "random_select": "random subset of the full arm's selection size (same seed), with refinement corpus",
    "no_refine_corpus": "model-aware selection, no refinement corpus",
}
# Every random choice of a run that is not shared between runs: seed s sets each of these to (job config value + s).
SEED_KEYS = ("probe.generation.seed", "select.seed", "refine.seed", "train.seed")
BUDGET_TOLERANCE = 0.05
MIN_SEEDS = 3  # fewer still runs, with a warning: two values give a t-interval of little use, one gives none


# ------------------------------------------------------------------------------------------------ arm configs
def token_budget(cfg: Config) -> int:
    """Training tokens per train stage for every arm: ablation.token_budget, else train.max_tokens."""
    budget = cfg.ablation.token_budget or cfg.train.max_tokens
    if budget <= 0:
        raise ConfigError("ablation.token_budget must be > 0: the tokens every train stage of every arm processes "
                          "(e.g. 2 epochs' worth of the full arm's corpus); the arms must spend the same budget")
    return int(budget)


def check_arms(arms: list[str]) -> list[str]:
    unknown = [a for a in arms if a not in ARM_OVERRIDES]
    if unknown:
        raise ConfigError(f"ablation.arms: unknown arm {unknown[0]!r}, expected some of {list(ARM_OVERRIDES)}")
    if len(set(arms)) != len(arms):
        raise ConfigError(f"ablation.arms lists an arm twice: {arms}")
    if not arms:
        raise ConfigError("ablation.arms is empty")
    if "random_select" in arms and FULL not in arms:
        raise ConfigError("ablation arm random_select draws the full arm's selection sizes: add 'full' to ablation.arms")
    return [a for a in ARM_OVERRIDES if a in arms]  # full first, then the fixed order


def check_seeds(seeds: list[int]) -> list[int]:
    seeds = [int(s) for s in seeds]
    if not seeds:
        raise ConfigError(f"ablation.seeds is empty: give at least {MIN_SEEDS} seeds, e.g. ablation.seeds=[0,1,2]")
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"ablation.seeds lists a seed twice: {seeds}")
    if any(s < 0 for s in seeds):
        raise ConfigError(f"ablation.seeds must be >= 0 (they are added to the job config's seeds): {seeds}")
    if len(seeds) < MIN_SEEDS:
        log.warning("ablation.seeds has %d seed(s): the 95 %% intervals over seeds need at least %d to mean much",
                    len(seeds), MIN_SEEDS)
    return seeds


def seed_overrides(cfg: Config, seed: int) -> list[str]:
    """`key=value` for every key of SEED_KEYS: the job config's value + seed."""
    out = []
    for key in SEED_KEYS:
        node: Any = cfg
        for part in key.split("."):
            node = getattr(node, part)
        out.append(f"{key}={int(node) + int(seed)}")
    return out


def seed_run_dir(root: Path, arm: str, seed: int) -> Path:
    return Path(root) / "arms" / arm / f"seed_{seed}"


def arm_overrides(name: str, cfg: Config, root: Path, model_path: str, seed: int) -> list[str]:
    """Every override that turns the job config into arm `name`, seed `seed`: what all runs share first, then the
    seed's keys, then the arm's own."""
    return [
        f"run.dir={seed_run_dir(root, name, seed)}",
        f"model.path={model_path}",
        "run.stop_when_selection_stalls=false",
        "run.stop_when_accuracy_stalls=false",
        f"train.max_tokens={token_budget(cfg)}",
        *seed_overrides(cfg, seed),
        *ARM_OVERRIDES[name],
    ]


def arm_config(name: str, cfg: Config, root: Path, model_path: str, seed: int) -> Config:
    """The job config with the arm's and seed's overrides, through the same typed loader as the command line (so a
    bad combination is the same ConfigError); also saved as RUN_DIR/arms/<name>/seed_<s>.yaml for the record."""
    base = root / "arms" / name / f"seed_{seed}.base.yaml"
    rio.write_text(base, to_yaml(cfg))
    arm = load_config(base, arm_overrides(name, cfg, root, model_path, seed))
    base.unlink()
    rio.write_text(root / "arms" / name / f"seed_{seed}.yaml", to_yaml(arm))
    return arm


def selection_sizes(run_dir: Path) -> dict[int, int]:
    """iteration → size of the training set the (full) run selected, from its iter_NNN/selection.json files."""
    sizes = {}
    for path in sorted(Path(run_dir).glob("iter_*/selection.json")):
        sizes[int(path.parent.name[5:])] = len(rio.read_json(path)["ids"])
    return sizes


# ------------------------------------------------------------------------------------------------ running
def shared_base_model(cfg: Config, root: Path) -> str:
    """model.path; for "tiny" one tiny model built into RUN_DIR/base_model (reused on a rerun); for "tiny-base" the
    warm base model's directory (toolace_r.base_model)."""
    if cfg.model.path == "tiny-base":  # the warm tiny base model: resolved (or built) once, not once per run
        from toolace_r.base_model import resolve_base_model

        return str(resolve_base_model(cfg))
    if cfg.model.path != "tiny":
        return cfg.model.path
    out = root / "base_model"
    if (out / "config.json").is_file():
        log.info("shared base model: reusing %s", out)
        return str(out)
    from toolace_r.data.pool import load_pool, pool_texts
    from toolace_r.models import build_tiny_model

    tmp = root / "base_model.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    build_tiny_model(tmp, pool_texts(load_pool(cfg.pool), cfg.model.prompt_style), cfg.model.tiny, cfg.model.prompt_style)
    tmp.rename(out)
    log.info("shared base model built: %s", out)
    return str(out)


def share_baseline(first_dir: Path, run_dir: Path) -> None:
    """Give a new run dir the first run's finished evaluation(s) of the untrained model (same model, same dev and
    test sets): every `baseline…` stage of its state.json and its baseline/ folder. The driver replays a finished
    stage instead of running it again."""
    first_state = first_dir / STATE_FILE
    if (run_dir / STATE_FILE).exists() or not first_state.is_file():
        return
    stages = {k: v for k, v in rio.read_json(first_state)["stages"].items() if k.startswith("baseline")}
    if not stages:
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    if (first_dir / "baseline").is_dir():
        shutil.copytree(first_dir / "baseline", run_dir / "baseline", dirs_exist_ok=True)
    rio.write_json(run_dir / STATE_FILE, {"version": 1, "stages": stages, "history": [], "stopped": None})


def _run_arm(arm_cfg: Config, random_sizes: dict[int, int] | None) -> dict:
    from toolace_r.driver import run

    return run(arm_cfg, random_sizes=random_sizes)


Job = tuple[str, int]  # (arm, seed)


def _run_group(jobs: list[Job], configs: dict[Job, Config], sizes: Callable[[Job], dict[int, int] | None],
               concurrent: bool, after_each: Callable[[], Any]) -> None:
    """Run (or resume) a group of (arm, seed) runs that need nothing from each other; the report after each."""
    if concurrent and len(jobs) > 1:
        import ray

        remote = ray.remote(num_cpus=0)(_run_arm)
        log.info("running %s concurrently as Ray tasks", ", ".join(f"{a}/seed_{s}" for a, s in jobs))
        pending = {remote.remote(configs[j], sizes(j)): j for j in jobs}
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                ray.get(ref)  # raises the run's error
                a, s = pending.pop(ref)
                log.info("run %s/seed_%d finished", a, s)
            after_each()
        return
    for a, s in jobs:
        log.info("━━━━━━━━ arm %s, seed %d ━━━━━━━━", a, s)
        _run_arm(configs[(a, s)], sizes((a, s)))
        after_each()


def full_sizes_for(root: Path, seed: int) -> dict[int, int]:
    """random_select of seed s trains on as many samples per iteration as full's seed-s run selected."""
    sizes = selection_sizes(seed_run_dir(root, FULL, seed))
    if not sizes:
        raise ConfigError(f"random_select seed {seed} needs the full arm's seed-{seed} selections, but "
                          f"{seed_run_dir(root, FULL, seed)} has no iter_*/selection.json; run the full arm first")
    return sizes


def run_ablation(cfg: Config) -> dict:
    """Run (or resume) every (arm, seed), then write and return the ablation report."""
    from toolace_r import ray_session

    arms = check_arms(list(cfg.ablation.arms))
    seeds = check_seeds(list(cfg.ablation.seeds))
    budget = token_budget(cfg)
    if not cfg.run.test_every_iteration:
        raise ConfigError("the ablation needs run.test_every_iteration=true: tokens_to_match reads the full arm's "
                          "test accuracy after every iteration")
    root = Path(cfg.run.dir).resolve()
    root.mkdir(parents=True, exist_ok=True)
    rio.write_text(root / "config.yaml", to_yaml(cfg))
    started_ray = ray_session.start_or_join(cfg)  # one Ray for every run (each run's driver joins it)
    try:
        model_path = shared_base_model(cfg, root)
        configs = {(a, s): arm_config(a, cfg, root, model_path, s) for a in arms for s in seeds}
        log.info("ablation: arms %s × seeds %s, %d iterations each, %d training tokens per train stage, base model %s",
                 ", ".join(arms), seeds, cfg.run.max_iterations, budget, model_path)
        report = lambda: write_ablation_report(root, arms, seeds, budget, cfg.eval.max_rounds)  # noqa: E731
        sizes = lambda job: full_sizes_for(root, job[1]) if job[0] == "random_select" else None  # noqa: E731
        first = (arms[0], seeds[0])  # evaluates the untrained model that every other run reuses
        _run_group([first], configs, sizes, False, report)
        for job in configs:
            if job != first:
                share_baseline(seed_run_dir(root, *first), seed_run_dir(root, *job))
        independent = [j for j in configs if j != first and j[0] != "random_select"]
        _run_group(independent, configs, sizes, cfg.ablation.concurrent, report)
        _run_group([j for j in configs if j[0] == "random_select"], configs, sizes, cfg.ablation.concurrent, report)
        return report()
    finally:
        if started_ray:
            import ray

            ray.shutdown()


# ------------------------------------------------------------------------------------------------ one seed-run
def _read_json(path: Path) -> Any:
    return rio.read_json(path) if path.is_file() else None


def _eval_entry(result: dict | None) -> dict | None:
    """evaluate()'s {category: {...}, "overall": {...}} (an eval.json file) → the figures the ablation reports."""
    if not result:
        return None
    overall = result.get("overall", {})
    return {
        "n": overall.get("n"),
        "accuracy": overall.get("accuracy"),
        "refined_accuracy": overall.get("refined_accuracy"),
        "accuracy_by_rounds": overall.get("accuracy_by_rounds"),
        "mean_rounds": overall.get("mean_rounds"),
        "categories": {c: {"n": m.get("n"), "accuracy": m.get("accuracy"), "refined_accuracy": m.get("refined_accuracy")}
                       for c, m in result.items() if c != "overall" and isinstance(m, dict)},
    }


def eval_dir(run_dir: Path, iteration: int | None) -> Path:
    """Where a run's test evaluation of one model lies: iter_NNN/ (eval.json, eval/outputs.jsonl), or baseline/ for
    the untrained model (iteration None)."""
    return run_dir / ("baseline" if iteration is None else f"iter_{iteration:03d}")


def final_choice(run_dir: Path, state: dict, evaluated: list[int]) -> dict | None:
    """The run's final model as its report.json (else its state.json) names it: `final_model` = {"iteration",
    "model_dir", "metric", "value", "reason", ...}, chosen by the driver on the dev split. An older run dir with a
    plain path there, or none: the last iteration that has a test evaluation."""
    report = _read_json(run_dir / REPORT_JSON) or {}
    named = report.get("final_model") if "final_model" in report else state.get("final_model")
    if isinstance(named, dict):
        it = named.get("iteration")
        if not isinstance(it, int) or isinstance(it, bool) or it < 0:
            if not named.get("model_dir"):
                return None  # nothing chosen yet
            it = None  # the untrained model was named final
        return {"iteration": it, "model_dir": named.get("model_dir"), "metric": named.get("metric"),
                "value": named.get("value"), "reason": named.get("reason"), "source": "final_model"}
    if not evaluated:
        return None
    return {"iteration": evaluated[-1], "model_dir": named if isinstance(named, str) else None, "metric": None,
            "value": None, "reason": "last iteration (the run names no final_model dict)", "source": "last iteration"}


def run_summary(run_dir: Path) -> dict:
    """One seed-run's figures: training figures per iteration from state.json, test accuracies from the
    iter_NNN/eval.json files, and — once the run has stopped — its final model with that model's test figures."""
    run_dir = Path(run_dir)
    state = _read_json(run_dir / STATE_FILE) or {}
    stages = state.get("stages", {})
    result = lambda key: (stages.get(key) or {}).get("result") or {}  # noqa: E731
    numbers = {int(k[5:8]) for k in stages if k.startswith("iter_") and k[5:8].isdigit()}
    numbers |= {int(p.parent.name[5:]) for p in run_dir.glob("iter_*/eval.json") if p.parent.name[5:].isdigit()}
    iterations, cumulative = [], 0
    for it in sorted(numbers):
        train, select = result(iter_key(it, "train")), result(iter_key(it, "select"))
        corpus = result(iter_key(it, "corpus"))
        cumulative += train.get("train_tokens") or 0
        prefix = f"iter_{it:03d}/"
        iterations.append({
            "iteration": it,
            "eval": _eval_entry(_read_json(eval_dir(run_dir, it) / "eval.json")),
            "train_tokens": train.get("train_tokens"),
            "train_tokens_cumulative": cumulative,
            "train_steps": train.get("steps"),
            "loss_last": train.get("loss_last"),
            "selected": select.get("selected"),
            "corpus_rows": corpus.get("rows"),
            "refine_samples": corpus.get("refine_samples"),
            "wall_s": round(sum(v.get("wall_s", 0.0) for k, v in stages.items() if k.startswith(prefix)), 1),
        })
    final = None
    if state.get("stopped"):  # an unfinished run has no final model yet
        choice = final_choice(run_dir, state, [e["iteration"] for e in iterations if e["eval"]])
        if choice:
            where = eval_dir(run_dir, choice["iteration"])
            entry = _eval_entry(_read_json(where / "eval.json"))
            if entry:
                tokens = sum(e["train_tokens"] or 0 for e in iterations
                             if choice["iteration"] is not None and e["iteration"] <= choice["iteration"])
                final = dict(choice, eval=entry, train_tokens=tokens, outputs=str(where / "eval" / "outputs.jsonl"))
    return {
        "run_dir": str(run_dir),
        "baseline": _eval_entry(_read_json(run_dir / "baseline" / "eval.json")),
        "iterations": iterations,
        "final": final,
        "train_tokens_total": sum(e["train_tokens"] or 0 for e in iterations),
        "wall_s": round(sum(e["wall_s"] for e in iterations), 1),
        "stopped": state.get("stopped"),
    }


def read_verdicts(path: str | Path) -> dict[str, tuple[bool, bool]] | None:
    """outputs.jsonl → {item key: (single-pass verdict, refined verdict)}; the key is the item id within its eval
    group (two test sets may reuse an id). None when the file is missing."""
    path = Path(path)
    if not path.is_file():
        return None
    return {f"{r.get('group', '')}\t{r['id']}": (bool(r.get("valid")), bool(r.get("refined_valid")))
            for r in rio.read_jsonl(path)}


# ------------------------------------------------------------------------------------------------ over seeds
def over_seeds(pairs: list[tuple[int, float | None]]) -> dict:
    """(seed, value) pairs → {"mean", "ci95": [lo, hi] (stats.t_interval), "n", "values", "seeds"}; a missing value
    (None) leaves its seed out. No value: mean and ci95 are None."""
    kept = [(s, float(v)) for s, v in pairs if v is not None]
    out: dict[str, Any] = {"mean": None, "ci95": None, "n": len(kept), "values": [v for _, v in kept],
                           "seeds": [s for s, _ in kept]}
    if kept:
        mean, lo, hi = t_interval(out["values"])
        out.update(mean=mean, ci95=[lo, hi])
    return out


def _get(entry: dict | None, *path: Any) -> Any:
    for p in path:
        if entry is None:
            return None
        try:
            entry = entry[p]
        except (KeyError, IndexError, TypeError):
            return None
    return entry


def arm_aggregate(runs: dict[int, dict], max_rounds: int) -> dict:
    """An arm's figures over its seed-runs: the final models' test figures, and each iteration's."""
    finals = {s: r["final"] for s, r in runs.items() if r["final"]}
    fin = lambda *path: over_seeds([(s, _get(f["eval"], *path)) for s, f in finals.items()])  # noqa: E731
    cats = sorted({c for f in finals.values() for c in f["eval"]["categories"]})
    final = {
        "n_seeds": len(finals),
        "iteration": {str(s): f["iteration"] for s, f in finals.items()},
        "accuracy": fin("accuracy"),
        "refined_accuracy": fin("refined_accuracy"),
        "accuracy_by_rounds": [fin("accuracy_by_rounds", r) for r in range(max_rounds)],
        "mean_rounds": fin("mean_rounds"),
        "train_tokens": over_seeds([(s, f["train_tokens"]) for s, f in finals.items()]),
        "categories": {c: {"accuracy": fin("categories", c, "accuracy"),
                           "refined_accuracy": fin("categories", c, "refined_accuracy")} for c in cats},
    }
    iterations = []
    for it in sorted({e["iteration"] for r in runs.values() for e in r["iterations"]}):
        entries = {s: next((e for e in r["iterations"] if e["iteration"] == it), None) for s, r in runs.items()}
        per = lambda *path: over_seeds([(s, _get(e, *path)) for s, e in entries.items() if e])  # noqa: E731
        iterations.append({
            "iteration": it,
            "accuracy": per("eval", "accuracy"),
            "refined_accuracy": per("eval", "refined_accuracy"),
            "accuracy_by_rounds": [per("eval", "accuracy_by_rounds", r) for r in range(max_rounds)],
            "train_tokens": per("train_tokens"),
            "train_tokens_cumulative": per("train_tokens_cumulative"),
            "selected": per("selected"),
            "refine_samples": per("refine_samples"),
            "wall_s": per("wall_s"),
        })
    return {"final": final, "iterations": iterations,
            "train_tokens_total": over_seeds([(s, r["train_tokens_total"]) for s, r in runs.items()])}


def compare_arms(a: str, b: str, runs_a: dict[int, dict], runs_b: dict[int, dict],
                 verdicts: Callable[[str], dict | None]) -> dict:
    """Arm a vs arm b on the test items, their final models of the same seed paired: per metric (single pass,
    refined) an exact McNemar test on the per-item verdicts concatenated over seeds (pairs matched by seed and item
    id), and the accuracy difference a − b per seed with its t-interval over seeds."""
    seeds = [s for s in runs_a if runs_a[s]["final"] and (runs_b.get(s) or {}).get("final")]
    out: dict[str, Any] = {"a": a, "b": b, "seeds": seeds}
    for metric, field, index in (("single", "accuracy", 0), ("refined", "refined_accuracy", 1)):
        va: list[bool] = []
        vb: list[bool] = []
        paired, unmatched = [], 0
        for s in seeds:
            da, db = verdicts(runs_a[s]["final"]["outputs"]), verdicts(runs_b[s]["final"]["outputs"])
            if da is None or db is None:
                continue
            keys = sorted(set(da) & set(db))
            unmatched += len(set(da) ^ set(db))
            va += [da[k][index] for k in keys]
            vb += [db[k][index] for k in keys]
            paired.append(s)
        diff = over_seeds([(s, _sub(runs_a[s]["final"]["eval"][field], runs_b[s]["final"]["eval"][field]))
                           for s in seeds])
        out[metric] = {**mcnemar(va, vb), "seeds_paired": paired, "unmatched_items": unmatched,
                       "accuracy_diff": diff}
    return out


def _sub(x: float | None, y: float | None) -> float | None:
    return None if x is None or y is None else x - y


def tokens_to_match(runs: dict[int, dict], reference: dict[int, dict], arm: str = FULL, ref: str = REFERENCE) -> dict:
    """Per seed: the cumulative training tokens of `arm` up to its first iteration whose test accuracy (single pass)
    is >= `ref`'s final test accuracy of the same seed (None if no iteration reaches it), and the tokens `ref`
    trained its final model on; the ratio of the two; then each over seeds. A reported figure, not a decision."""
    per_seed = []
    for s, r in runs.items():
        target = (reference.get(s) or {}).get("final")
        if not r["final"] or not target or target["eval"]["accuracy"] is None:
            continue
        goal = target["eval"]["accuracy"]
        hit = next((e for e in r["iterations"] if _get(e, "eval", "accuracy") is not None
                    and e["eval"]["accuracy"] >= goal), None)
        tokens = hit["train_tokens_cumulative"] if hit else None
        per_seed.append({"seed": s, "target_accuracy": goal, "reference_tokens": target["train_tokens"],
                         "iteration": hit["iteration"] if hit else None, "tokens": tokens,
                         "ratio": tokens / target["train_tokens"] if tokens is not None and target["train_tokens"]
                         else None})
    return {
        "arm": arm, "reference": ref, "metric": "accuracy",
        "n_seeds": len(per_seed),
        "reached": sum(p["tokens"] is not None for p in per_seed),
        "tokens": over_seeds([(p["seed"], p["tokens"]) for p in per_seed]),
        "reference_tokens": over_seeds([(p["seed"], p["reference_tokens"]) for p in per_seed]),
        "ratio": over_seeds([(p["seed"], p["ratio"]) for p in per_seed]),
        "per_seed": per_seed,
    }


def budget_check(runs: dict[str, dict], tolerance: float = BUDGET_TOLERANCE) -> dict:
    """Per iteration and in total: the spread of the runs' train_tokens, (max − min) / min."""
    def spread(values: list[int]) -> float | None:
        values = [v for v in values if v]
        return (max(values) - min(values)) / min(values) if len(values) > 1 else None

    n_iter = max((len(a["iterations"]) for a in runs.values()), default=0)
    per_iter = []
    for it in range(n_iter):
        tokens = {n: a["iterations"][it]["train_tokens"] for n, a in runs.items() if it < len(a["iterations"])}
        per_iter.append({"iteration": it, "train_tokens": tokens, "spread": spread(list(tokens.values()))})
    total = spread([a["train_tokens_total"] for a in runs.values()])
    spreads = [p["spread"] for p in per_iter if p["spread"] is not None] + ([total] if total is not None else [])
    return {"tolerance": tolerance, "per_iteration": per_iter, "total_spread": total,
            "within_tolerance": all(s <= tolerance for s in spreads)}


def build_ablation_report(root: Path, arms: list[str], seeds: list[int], budget: int, max_rounds: int) -> dict:
    root = Path(root)
    runs = {a: {s: run_summary(seed_run_dir(root, a, s)) for s in seeds} for a in arms}
    cache: dict[str, dict | None] = {}

    def verdicts(path: str) -> dict | None:
        if path not in cache:
            cache[path] = read_verdicts(path)
        return cache[path]

    summaries = {a: {"description": ARM_DESCRIPTIONS[a], "overrides": ARM_OVERRIDES[a],
                     **arm_aggregate(runs[a], max_rounds),
                     "runs": [dict(seed=s, **runs[a][s]) for s in seeds]} for a in arms}
    baseline = next((r["baseline"] for a in arms for r in runs[a].values() if r["baseline"]), None)
    return {
        "run_dir": str(root),
        "updated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "token_budget_per_train_stage": budget,
        "max_rounds": max_rounds,
        "seeds": list(seeds),
        "seed_keys": list(SEED_KEYS),
        "baseline": baseline,
        "arms": summaries,
        "comparisons": [compare_arms(a, b, runs[a], runs[b], verdicts) for a, b in itertools.combinations(arms, 2)],
        "tokens_to_match": tokens_to_match(runs[FULL], runs[REFERENCE]) if FULL in arms and REFERENCE in arms else None,
        "budget": budget_check({f"{a}/seed_{s}": runs[a][s] for a in arms for s in seeds}),
    }


# ------------------------------------------------------------------------------------------------ plots
def _yerr(aggs: list[dict]) -> list[list[float]]:
    """matplotlib's asymmetric error bars from over_seeds entries (0 where no interval is known)."""
    lo = [a["mean"] - a["ci95"][0] if a["ci95"] else 0.0 for a in aggs]
    hi = [a["ci95"][1] - a["mean"] if a["ci95"] else 0.0 for a in aggs]
    return [lo, hi]


def _plots(report: dict) -> dict[str, bytes]:
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def png(fig) -> bytes:
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
        plt.close(fig)
        return buf.getvalue()

    arms = report["arms"]
    colors = {a: f"C{i}" for i, a in enumerate(arms)}
    n_seeds = len(report["seeds"])
    out: dict[str, bytes] = {}

    fig, ax = plt.subplots(figsize=(6.8, 4.0))
    for j, (a, s) in enumerate(arms.items()):
        for key, style, label, alpha in (("accuracy", "o-", "single pass", 1.0),
                                         ("refined_accuracy", "s--", "refined", 0.7)):
            pts = [e for e in s["iterations"] if e[key]["mean"] is not None]
            if not pts:
                continue
            xs = [e["iteration"] + (j - len(arms) / 2) * 0.04 for e in pts]  # a small offset keeps bars apart
            ax.errorbar(xs, [e[key]["mean"] for e in pts], yerr=_yerr([e[key] for e in pts]), fmt=style,
                        color=colors[a], alpha=alpha, capsize=3, label=f"{a} {label}")
    base = report.get("baseline")
    if base and base.get("accuracy") is not None:
        ax.axhline(base["accuracy"], color="grey", linestyle=":", label="untrained")
    ax.set_xlabel("iteration")
    ax.set_ylabel("test accuracy")
    ax.set_ylim(0, 1)
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize="x-small", loc="best")
    ax.set_title(f"Test accuracy per iteration: mean over {n_seeds} seeds, 95 % interval")
    out["accuracy"] = png(fig)

    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    for a, s in arms.items():
        curve = [c for c in s["final"]["accuracy_by_rounds"] if c["mean"] is not None]
        if curve:
            ax.errorbar(range(1, len(curve) + 1), [c["mean"] for c in curve], yerr=_yerr(curve), fmt="o-",
                        color=colors[a], capsize=3, label=a)
    ax.set_xlabel("max refinement rounds (1 = single pass)")
    ax.set_ylabel("test accuracy")
    ax.set_xticks(range(1, report["max_rounds"] + 1))
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize="small")
    ax.set_title("Adaptive refinement: accuracy vs max rounds (final models)")
    out["rounds"] = png(fig)

    cats = sorted({c for s in arms.values() for c in s["final"]["categories"]})
    if cats:
        fig, ax = plt.subplots(figsize=(7.2, 3.8))
        width = 0.8 / max(1, len(arms))
        for j, (a, s) in enumerate(arms.items()):
            aggs = [(s["final"]["categories"].get(c) or {}).get("accuracy") or over_seeds([]) for c in cats]
            ax.bar([i + j * width for i in range(len(cats))], [g["mean"] or 0.0 for g in aggs], width=width,
                   yerr=_yerr([g if g["mean"] is not None else {"mean": 0.0, "ci95": None} for g in aggs]),
                   capsize=2, color=colors[a], label=a)
        ax.set_xticks([i + 0.4 - width / 2 for i in range(len(cats))], cats, fontsize="small")
        ax.set_ylabel("single-pass accuracy")
        ax.set_ylim(0, 1)
        ax.legend(fontsize="x-small")
        ax.set_title("Per category (final models, mean and 95 % interval over seeds)")
        out["categories"] = png(fig)
    return out


# ------------------------------------------------------------------------------------------------ tables
def fmt_ci(agg: dict | None, digits: int = 3) -> str:
    """'0.055 [0.031, 0.079]'; one seed: '0.055 (n=1)'; nothing: '–'."""
    if not agg or agg.get("mean") is None:
        return "–"
    if agg["n"] < 2:
        return f"{agg['mean']:.{digits}f} (n=1)"
    lo, hi = agg["ci95"]
    return f"{agg['mean']:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"


def _fmt_mean(agg: dict | None, digits: int = 0) -> str:
    return "–" if not agg or agg.get("mean") is None else f"{agg['mean']:.{digits}f}"


def _fmt_p(p: float | None) -> str:
    return "–" if p is None else (f"{p:.3f}" if p >= 0.001 else f"{p:.1e}")


def final_rows(report: dict) -> tuple[list[str], list[list[str]]]:
    header = ["arm", "seeds", "single: mean [95 % CI]", "refined: mean [95 % CI]", "single per seed",
              "refined per seed", "final iteration per seed"]
    rows = []
    for a, s in report["arms"].items():
        f = s["final"]
        rows.append([a, f"{f['n_seeds']}/{len(report['seeds'])}", fmt_ci(f["accuracy"]), fmt_ci(f["refined_accuracy"]),
                     " ".join(fmt_value(v) for v in f["accuracy"]["values"]) or "–",
                     " ".join(fmt_value(v) for v in f["refined_accuracy"]["values"]) or "–",
                     " ".join("base" if it is None else str(it) for it in f["iteration"].values()) or "–"])
    return header, rows


def comparison_rows(report: dict) -> tuple[list[str], list[list[str]]]:
    header = ["a vs b", "seeds", "single: a − b [95 % CI]", "a only / b only", "p (McNemar)",
              "refined: a − b [95 % CI]", "a only / b only", "p (McNemar)"]
    rows = []
    for c in report["comparisons"]:
        cells = [f"{c['a']} vs {c['b']}", str(len(c["seeds"]))]
        for metric in ("single", "refined"):
            m = c[metric]
            cells += [fmt_ci(m["accuracy_diff"]), f"{m['a_only']} / {m['b_only']}", _fmt_p(m["p_value"])]
        rows.append(cells)
    return header, rows


def table_rows(report: dict) -> tuple[list[str], list[list[str]]]:
    r = report["max_rounds"]
    header = ["arm", "iter", "seeds", "single: mean [95 % CI]", "refined: mean [95 % CI]",
              *[f"≤{k} rnd" for k in range(1, r + 1)], "train tok", "selected", "refine rows", "wall s"]
    rows = []
    b = report.get("baseline")
    if b:
        rows.append(["untrained", "base", "shared", fmt_value(b["accuracy"]), fmt_value(b["refined_accuracy"]),
                     *[fmt_value(x) for x in (b.get("accuracy_by_rounds") or [None] * r)], "", "", "", ""])
    for a, s in report["arms"].items():
        for e in s["iterations"]:
            rows.append([a, str(e["iteration"]), str(e["accuracy"]["n"]), fmt_ci(e["accuracy"]),
                         fmt_ci(e["refined_accuracy"]), *[fmt_value(c["mean"]) for c in e["accuracy_by_rounds"]],
                         _fmt_mean(e["train_tokens"]), _fmt_mean(e["selected"]), _fmt_mean(e["refine_samples"]),
                         _fmt_mean(e["wall_s"], 1)])
    return header, rows


def category_rows(report: dict) -> tuple[list[str], list[list[str]]]:
    cats = sorted({c for s in report["arms"].values() for c in s["final"]["categories"]})
    rows = []
    for a, s in report["arms"].items():
        cat = s["final"]["categories"]
        rows.append([a] + [f"{fmt_value(_get(cat, c, 'accuracy', 'mean'))} / "
                           f"{fmt_value(_get(cat, c, 'refined_accuracy', 'mean'))}" for c in cats])
    return ["arm (final models, mean over seeds)"] + cats, rows


def tokens_line(report: dict) -> str:
    t = report.get("tokens_to_match")
    if not t or not t["n_seeds"]:
        return "tokens to match plain SFT: – (needs finished full and plain_sft runs of the same seed)"
    return (f"tokens to match plain SFT: {t['arm']} reached {t['reference']}'s final test accuracy in {t['reached']} "
            f"of {t['n_seeds']} seeds, after {_fmt_mean(t['tokens'])} training tokens on average "
            f"(vs {_fmt_mean(t['reference_tokens'])} for {t['reference']}: ratio {fmt_ci(t['ratio'], 2)})")


def budget_line(report: dict) -> str:
    b = report["budget"]
    spread = b["total_spread"]
    return (f"training-token budget {report['token_budget_per_train_stage']} per train stage; spread between runs "
            f"{'–' if spread is None else f'{spread:.1%}'} ({'within' if b['within_tolerance'] else 'NOT within'} "
            f"{b['tolerance']:.0%})")


def format_table(report: dict) -> str:
    def text(header: list[str], rows: list[list[str]]) -> str:
        widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
        line = lambda cells: "  ".join(str(c).rjust(w) for c, w in zip(cells, widths))  # noqa: E731
        return "\n".join([line(header), "-" * (sum(widths) + 2 * len(widths))] + [line(r) for r in rows])

    parts = [f"final models on the test sets, seeds {report['seeds']} (mean [95 % t-interval over seeds]):",
             text(*final_rows(report))]
    if report["comparisons"]:
        parts += ["\npaired comparisons, pooled over seeds (a − b: mean difference over seeds; p: exact McNemar):",
                  text(*comparison_rows(report))]
    parts += ["\nper iteration (test accuracy, mean over seeds):", text(*table_rows(report)),
              "\nper category, single / refined:", text(*category_rows(report)),
              "", tokens_line(report), budget_line(report)]
    return "\n".join(parts)


def render_html(report: dict, plots: dict[str, bytes]) -> str:
    def table(header: list[str], rows: list[list[str]]) -> str:
        head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
        body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows)
        return f"<table><tr>{head}</tr>{body}</table>"

    imgs = "".join(f'<img alt="{k}" src="data:image/png;base64,{base64.b64encode(v).decode()}">' for k, v in plots.items())
    arms = "".join(f"<li><b>{html.escape(a)}</b>: {html.escape(s['description'])} "
                   f"<code>{html.escape(' '.join(s['overrides']) or '(job config)')}</code></li>"
                   for a, s in report["arms"].items())
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>toolace-r ablation — {html.escape(report['run_dir'])}</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1200px}} table{{border-collapse:collapse;margin:1em 0}}
td,th{{border:1px solid #ccc;padding:3px 8px;text-align:right}} img{{max-width:49%;margin:4px}}</style></head>
<body><h1>toolace-r ablation</h1>
<p>run dir <code>{html.escape(report['run_dir'])}</code> · updated {report['updated_at']} ·
seeds {html.escape(str(report['seeds']))} (seed s adds s to {html.escape(', '.join(report['seed_keys']))}) ·
{html.escape(budget_line(report))}</p>
<ul>{arms}</ul>
<h2>Final models on the test sets</h2>
<p>Each seed-run's final model (chosen on the dev split), evaluated once on the test sets: mean over seeds and the
95 % Student-t interval of that mean; single = one pass, refined = adaptive refinement (≤ {report['max_rounds']}
rounds).</p>{table(*final_rows(report))}
<h2>Paired comparisons</h2>
<p>a − b: the accuracy difference of the two arms' final models of the same seed, mean and t-interval over seeds.
a only / b only: test items (all seeds together) that only a / only b gets right; p: exact two-sided McNemar test on
those counts — the chance of a split at least this uneven if the two arms were equally good. A small p (&lt; 0.05,
or &lt; 0.05 / number of comparisons read together) says the difference is unlikely to be noise.</p>
{table(*comparison_rows(report))}
<p>{html.escape(tokens_line(report))}</p>
<div>{imgs}</div>
<h2>Test accuracy per arm and iteration</h2>
<p>≤r rnd = refinement capped at r rounds (mean over seeds)</p>{table(*table_rows(report))}
<h2>Per category (final models; single / refined, mean over seeds)</h2>{table(*category_rows(report))}
</body></html>
"""


def write_ablation_report(root: Path, arms: list[str], seeds: list[int], budget: int, max_rounds: int) -> dict:
    """RUN_DIR/ablation.json, ablation.html and plots/*.png; returns the report object."""
    report = build_ablation_report(root, arms, seeds, budget, max_rounds)
    rio.write_json(root / ABLATION_JSON, report)
    try:
        plots = _plots(report)
    except Exception as err:  # the JSON is written; a plot problem must not lose the run
        log.warning("ablation plots failed: %s", err)
        plots = {}
    for name, data in plots.items():
        with rio.atomic_path(root / "plots" / f"{name}.png") as tmp:
            tmp.write_bytes(data)
    rio.write_text(root / ABLATION_HTML, render_html(report, plots))
    return report


def ablate_command(args, cfg: Config) -> int:
    """`toolace-r ablate --config jobs/demo_ablation.yaml [key=value ...]`."""
    logging.getLogger("toolace_r").setLevel(cfg.run.log_level.upper())
    t0 = time.time()
    report = run_ablation(cfg)
    root = Path(report["run_dir"])
    print(format_table(report))
    print(f"\nablation wall time {time.time() - t0:.0f} s\nreport: {root / ABLATION_JSON}\nhtml:   {root / ABLATION_HTML}"
          f"\nplots:  {root / 'plots'}")
    return 0
