"""Ablations side by side: is each part of ToolACE-R worth it on *your* pool and eval set?

`toolace-r ablate --config jobs/demo_ablation.yaml [key=value ...]` runs the arms named in `ablation.arms`, each as a
config of the one driver loop (toolace_r.driver.run — never a fork of it), into `RUN_DIR/arms/<arm>/`:

    full              the job config as written: model-aware selection + self-refinement corpus
    plain_sft         select.policy=all, refine.corpus=false, seed_fraction=1: SFT on the whole pool every iteration
    random_select     select.policy=random, accumulate=false: each iteration trains on a random subset exactly as
                      large as the full arm's training set at that iteration (read from its selection.json files,
                      so the full arm runs first)
    no_refine_corpus  refine.corpus=false: model-aware selection, direct samples only

What every arm shares, so the comparison is fair:
- the pool and the eval set (same config sections);
- the model init: a tiny model (model.path=tiny) is built ONCE into RUN_DIR/base_model and every arm's model.path
  points at it; the untrained model's evaluation is run once (full arm) and reused by the other arms;
- the number of iterations: run.stop_when_selection_stalls / stop_when_accuracy_stalls are off, no arm stops early;
- the training-token budget: train.max_tokens = ablation.token_budget for every train stage of every arm (the trainer
  cycles over its rows until it has processed that many tokens), so an arm that selects fewer samples sees them
  more often instead of training less. ablation.json checks the arms' train_tokens agree within 5 %.

Arms run one after another by default. `ablation.concurrent=true` runs the arms after `full` as concurrent Ray tasks
(each task is only the driver loop, 0 CPUs; its probe/train/eval stages ask Ray for their own resources as usual),
so the cluster needs room for up to (arms − 1) × max(train.num_workers × train.cpus_per_worker,
probe.num_actors × probe.cpus_per_actor, eval.num_actors × eval.cpus_per_actor) CPUs at once to gain anything; on a
small machine Ray simply queues the stages.

Report: RUN_DIR/ablation.json + ablation.html (+ plots/*.png): per arm and iteration held-out accuracy single pass,
with adaptive refinement, and capped at 1..eval.max_rounds rounds; training tokens; wall time; per-category accuracy.
"""
from __future__ import annotations

import base64
import html
import logging
import shutil
import time
from pathlib import Path
from typing import Any

from toolace_r import io as rio
from toolace_r.config import Config, load_config, to_yaml
from toolace_r.errors import ConfigError
from toolace_r.report import STATE_FILE, iter_key

log = logging.getLogger("toolace_r.ablation")

ABLATION_JSON = "ablation.json"
ABLATION_HTML = "ablation.html"
FULL = "full"
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
    "random_select": "random subset of the full arm's selection size, with refinement corpus",
    "no_refine_corpus": "model-aware selection, no refinement corpus",
}
BUDGET_TOLERANCE = 0.05


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


def arm_overrides(name: str, cfg: Config, root: Path, model_path: str) -> list[str]:
    """Every override that turns the job config into arm `name` (shared settings first, then the arm's own)."""
    return [
        f"run.dir={root / 'arms' / name}",
        f"model.path={model_path}",
        "run.stop_when_selection_stalls=false",
        "run.stop_when_accuracy_stalls=false",
        f"train.max_tokens={token_budget(cfg)}",
        *ARM_OVERRIDES[name],
    ]


def arm_config(name: str, cfg: Config, root: Path, model_path: str) -> Config:
    """The job config with the arm's overrides, through the same typed loader as the command line (so a bad
    combination is the same ConfigError); also saved as RUN_DIR/arms/<name>.yaml for the record."""
    base = root / "arms" / f"{name}.base.yaml"
    rio.write_text(base, to_yaml(cfg))
    arm = load_config(base, arm_overrides(name, cfg, root, model_path))
    base.unlink()
    rio.write_text(root / "arms" / f"{name}.yaml", to_yaml(arm))
    return arm


def selection_sizes(run_dir: Path) -> dict[int, int]:
    """iteration → size of the training set the (full) arm selected, from its iter_NNN/selection.json files."""
    sizes = {}
    for path in sorted(run_dir.glob("iter_*/selection.json")):
        sizes[int(path.parent.name[5:])] = len(rio.read_json(path)["ids"])
    return sizes


# ------------------------------------------------------------------------------------------------ running
def shared_base_model(cfg: Config, root: Path) -> str:
    """model.path, or for "tiny" one tiny model built into RUN_DIR/base_model (reused on a rerun)."""
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


def share_baseline(full_dir: Path, arm_dir: Path) -> None:
    """Give a new arm run dir the full arm's finished evaluation of the untrained model (same model, same eval
    set): the driver replays a finished stage instead of running it again."""
    full_state = full_dir / STATE_FILE
    if (arm_dir / STATE_FILE).exists() or not full_state.is_file():
        return
    stage = rio.read_json(full_state)["stages"].get("baseline/eval")
    if not stage:
        return
    arm_dir.mkdir(parents=True, exist_ok=True)
    if (full_dir / "baseline").is_dir():
        shutil.copytree(full_dir / "baseline", arm_dir / "baseline", dirs_exist_ok=True)
    rio.write_json(arm_dir / STATE_FILE, {"version": 1, "stages": {"baseline/eval": stage}, "history": [], "stopped": None})


def _run_arm(arm_cfg: Config, random_sizes: dict[int, int] | None) -> dict:
    from toolace_r.driver import run

    return run(arm_cfg, random_sizes=random_sizes)


def run_ablation(cfg: Config) -> dict:
    """Run (or resume) every arm, then write and return the ablation report."""
    from toolace_r.driver import init_ray

    arms = check_arms(list(cfg.ablation.arms))
    budget = token_budget(cfg)
    root = Path(cfg.run.dir).resolve()
    root.mkdir(parents=True, exist_ok=True)
    rio.write_text(root / "config.yaml", to_yaml(cfg))
    started_ray = init_ray(cfg)  # one Ray for every arm (the driver joins it instead of starting its own)
    try:
        model_path = shared_base_model(cfg, root)
        configs = {a: arm_config(a, cfg, root, model_path) for a in arms}
        log.info("ablation: arms %s, %d iterations each, %d training tokens per train stage, base model %s",
                 ", ".join(arms), cfg.run.max_iterations, budget, model_path)
        rest = [a for a in arms if a != FULL]
        if FULL in arms:
            log.info("━━━━━━━━ arm full ━━━━━━━━")
            _run_arm(configs[FULL], None)
            write_ablation_report(root, arms, budget, cfg.eval.max_rounds)  # a partial report after every arm
            for a in rest:
                share_baseline(root / "arms" / FULL, root / "arms" / a)
        sizes = selection_sizes(root / "arms" / FULL) if FULL in arms else {}
        randoms = {a: (sizes if a == "random_select" else None) for a in rest}
        if cfg.ablation.concurrent and len(rest) > 1:
            import ray

            remote = ray.remote(num_cpus=0)(_run_arm)
            log.info("running arms %s concurrently as Ray tasks", ", ".join(rest))
            ray.get([remote.remote(configs[a], randoms[a]) for a in rest])
        else:
            for a in rest:
                log.info("━━━━━━━━ arm %s ━━━━━━━━", a)
                _run_arm(configs[a], randoms[a])
                write_ablation_report(root, arms, budget, cfg.eval.max_rounds)
        return write_ablation_report(root, arms, budget, cfg.eval.max_rounds)
    finally:
        if started_ray:
            import ray

            ray.shutdown()


# ------------------------------------------------------------------------------------------------ report
def _eval_entry(result: dict | None) -> dict | None:
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


def arm_summary(run_dir: Path) -> dict:
    """One arm's figures from its state.json (what the driver recorded)."""
    state = rio.read_json(run_dir / STATE_FILE) if (run_dir / STATE_FILE).is_file() else {"stages": {}}
    stages = state["stages"]
    result = lambda key: (stages.get(key) or {}).get("result")  # noqa: E731
    iterations = []
    for it in sorted({int(k[5:8]) for k in stages if k.startswith("iter_")}):
        train = result(iter_key(it, "train")) or {}
        select = result(iter_key(it, "select")) or {}
        corpus = result(iter_key(it, "corpus")) or {}
        iterations.append({
            "iteration": it,
            "eval": _eval_entry(result(iter_key(it, "eval"))),
            "train_tokens": train.get("train_tokens"),
            "train_steps": train.get("steps"),
            "loss_last": train.get("loss_last"),
            "selected": select.get("selected"),
            "corpus_rows": corpus.get("rows"),
            "refine_samples": corpus.get("refine_samples"),
            "wall_s": round(sum(stages[iter_key(it, s)]["wall_s"] for s in ("probe", "select", "corpus", "train", "eval")
                                if iter_key(it, s) in stages), 1),
        })
    evaluated = [e for e in iterations if e["eval"]]
    return {
        "run_dir": str(run_dir),
        "baseline": _eval_entry(result("baseline/eval")),
        "iterations": iterations,
        "final": evaluated[-1]["eval"] if evaluated else None,
        "train_tokens_total": sum(e["train_tokens"] or 0 for e in iterations),
        "wall_s": round(sum(e["wall_s"] for e in iterations), 1),
        "stopped": state.get("stopped"),
    }


def budget_check(arms: dict[str, dict], tolerance: float = BUDGET_TOLERANCE) -> dict:
    """Per iteration and in total: the spread of the arms' train_tokens, (max − min) / min."""
    def spread(values: list[int]) -> float | None:
        values = [v for v in values if v]
        return (max(values) - min(values)) / min(values) if len(values) > 1 else None

    n_iter = max((len(a["iterations"]) for a in arms.values()), default=0)
    per_iter = []
    for it in range(n_iter):
        tokens = {n: a["iterations"][it]["train_tokens"] for n, a in arms.items() if it < len(a["iterations"])}
        per_iter.append({"iteration": it, "train_tokens": tokens, "spread": spread(list(tokens.values()))})
    total = spread([a["train_tokens_total"] for a in arms.values()])
    spreads = [p["spread"] for p in per_iter if p["spread"] is not None] + ([total] if total is not None else [])
    return {"tolerance": tolerance, "per_iteration": per_iter, "total_spread": total,
            "within_tolerance": all(s <= tolerance for s in spreads)}


def build_ablation_report(root: Path, arms: list[str], budget: int, max_rounds: int) -> dict:
    summaries = {a: dict(arm_summary(root / "arms" / a), description=ARM_DESCRIPTIONS[a], overrides=ARM_OVERRIDES[a])
                 for a in arms}
    return {
        "run_dir": str(root),
        "updated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "token_budget_per_train_stage": budget,
        "max_rounds": max_rounds,
        "arms": summaries,
        "budget": budget_check(summaries),
    }


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
    out: dict[str, bytes] = {}

    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    for a, s in arms.items():
        pts = [(e["iteration"], e["eval"]) for e in s["iterations"] if e["eval"]]
        if not pts:
            continue
        xs = [x for x, _ in pts]
        ax.plot(xs, [ev["accuracy"] for _, ev in pts], "o-", color=colors[a], label=f"{a} single pass")
        ax.plot(xs, [ev["refined_accuracy"] for _, ev in pts], "s--", color=colors[a], alpha=0.7, label=f"{a} refined")
    base = next((s["baseline"] for s in arms.values() if s["baseline"]), None)
    if base:
        ax.axhline(base["accuracy"], color="grey", linestyle=":", label="untrained")
    ax.set_xlabel("iteration")
    ax.set_ylabel("held-out accuracy")
    ax.set_ylim(0, 1)
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize="x-small", loc="best")
    ax.set_title("Held-out accuracy per iteration")
    out["accuracy"] = png(fig)

    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    for a, s in arms.items():
        curve = (s["final"] or {}).get("accuracy_by_rounds")
        if curve:
            ax.plot(range(1, len(curve) + 1), curve, "o-", color=colors[a], label=a)
    ax.set_xlabel("max refinement rounds (1 = single pass)")
    ax.set_ylabel("held-out accuracy")
    ax.set_xticks(range(1, report["max_rounds"] + 1))
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize="small")
    ax.set_title("Adaptive refinement: accuracy vs max rounds (last iteration)")
    out["rounds"] = png(fig)

    cats = sorted({c for s in arms.values() if s["final"] for c in s["final"]["categories"]})
    if cats:
        fig, ax = plt.subplots(figsize=(7.2, 3.8))
        width = 0.8 / max(1, len(arms))
        for j, (a, s) in enumerate(arms.items()):
            cat = (s["final"] or {}).get("categories", {})
            ax.bar([i + j * width for i in range(len(cats))], [(cat.get(c) or {}).get("accuracy") or 0 for c in cats],
                   width=width, color=colors[a], label=a)
        ax.set_xticks([i + 0.4 - width / 2 for i in range(len(cats))], cats, fontsize="small")
        ax.set_ylabel("single-pass accuracy")
        ax.set_ylim(0, 1)
        ax.legend(fontsize="x-small")
        ax.set_title("Per category (last iteration)")
        out["categories"] = png(fig)
    return out


def _fmt(v: Any, digits: int = 3) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def table_rows(report: dict) -> tuple[list[str], list[list[str]]]:
    r = report["max_rounds"]
    header = ["arm", "iter", "single", "refined", *[f"≤{k} rnd" for k in range(1, r + 1)], "train tok", "selected",
              "refine rows", "wall s"]
    rows = []
    for a, s in report["arms"].items():
        if s["baseline"]:
            b = s["baseline"]
            rows.append([a, "base", _fmt(b["accuracy"]), _fmt(b["refined_accuracy"]),
                         *[_fmt(x) for x in (b.get("accuracy_by_rounds") or [None] * r)], "", "", "", ""])
        for e in s["iterations"]:
            ev = e["eval"] or {}
            curve = ev.get("accuracy_by_rounds") or [None] * r
            rows.append([a, str(e["iteration"]), _fmt(ev.get("accuracy")), _fmt(ev.get("refined_accuracy")),
                         *[_fmt(x) for x in curve], _fmt(e["train_tokens"]), _fmt(e["selected"]),
                         _fmt(e["refine_samples"]), _fmt(e["wall_s"], 1)])
    return header, rows


def category_rows(report: dict) -> tuple[list[str], list[list[str]]]:
    cats = sorted({c for s in report["arms"].values() if s["final"] for c in s["final"]["categories"]})
    rows = []
    for a, s in report["arms"].items():
        cat = (s["final"] or {}).get("categories", {})
        rows.append([a] + [f"{_fmt((cat.get(c) or {}).get('accuracy'))} / {_fmt((cat.get(c) or {}).get('refined_accuracy'))}"
                           for c in cats])
    return ["arm (last iteration)"] + cats, rows


def format_table(report: dict) -> str:
    def text(header: list[str], rows: list[list[str]]) -> str:
        widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
        line = lambda cells: "  ".join(str(c).rjust(w) for c, w in zip(cells, widths))  # noqa: E731
        return "\n".join([line(header), "-" * (sum(widths) + 2 * len(widths))] + [line(r) for r in rows])

    b = report["budget"]
    spread = b["total_spread"]
    return (text(*table_rows(report)) + "\n\nper category, single / refined:\n" + text(*category_rows(report))
            + f"\n\ntraining-token budget {report['token_budget_per_train_stage']} per train stage; "
              f"spread between arms {'–' if spread is None else f'{spread:.1%}'} "
              f"({'within' if b['within_tolerance'] else 'NOT within'} {b['tolerance']:.0%})")


def render_html(report: dict, plots: dict[str, bytes]) -> str:
    def table(header: list[str], rows: list[list[str]]) -> str:
        head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
        body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows)
        return f"<table><tr>{head}</tr>{body}</table>"

    imgs = "".join(f'<img alt="{k}" src="data:image/png;base64,{base64.b64encode(v).decode()}">' for k, v in plots.items())
    arms = "".join(f"<li><b>{html.escape(a)}</b>: {html.escape(s['description'])} "
                   f"<code>{html.escape(' '.join(s['overrides']) or '(job config)')}</code></li>"
                   for a, s in report["arms"].items())
    b = report["budget"]
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>toolace-r ablation — {html.escape(report['run_dir'])}</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1150px}} table{{border-collapse:collapse;margin:1em 0}}
td,th{{border:1px solid #ccc;padding:3px 8px;text-align:right}} img{{max-width:49%;margin:4px}}</style></head>
<body><h1>toolace-r ablation</h1>
<p>run dir <code>{html.escape(report['run_dir'])}</code> · updated {report['updated_at']} ·
{report['token_budget_per_train_stage']} training tokens per train stage in every arm
(spread {_fmt(b['total_spread'])}, {'within' if b['within_tolerance'] else 'NOT within'} {b['tolerance']:.0%})</p>
<ul>{arms}</ul>
<div>{imgs}</div>
<h2>Held-out accuracy per arm and iteration</h2>
<p>single = one pass; refined = adaptive refinement (≤ {report['max_rounds']} rounds);
≤r rnd = refinement capped at r rounds</p>{table(*table_rows(report))}
<h2>Per category (single / refined)</h2>{table(*category_rows(report))}
</body></html>
"""


def write_ablation_report(root: Path, arms: list[str], budget: int, max_rounds: int) -> dict:
    """RUN_DIR/ablation.json, ablation.html and plots/*.png; returns the report object."""
    report = build_ablation_report(root, arms, budget, max_rounds)
    rio.write_json(root / ABLATION_JSON, report)
    try:
        plots = _plots(report)
    except Exception as err:  # the JSON is written; a plot problem must not lose the run
        log.warning("ablation plots failed: %s", err)
        plots = {}
    for name, data in plots.items():
        (root / "plots").mkdir(exist_ok=True)
        (root / "plots" / f"{name}.png").write_bytes(data)
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
