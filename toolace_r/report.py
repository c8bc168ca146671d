"""The run report: `RUN_DIR/report.json` and `RUN_DIR/report.html` (plots embedded as PNG).

Built only from what the driver recorded in `RUN_DIR/state.json` (every finished stage stores a small JSON result
there), so it can be rebuilt at any moment — the driver does so after every stage, and a person can watch the run
by reloading the HTML page. `toolace-r`'s report is meant to answer one question at a glance: did the model-aware
iterations help, and does adaptive refinement add to single-pass accuracy?

report.json:
    {"run_dir", "updated_at", "stopped": {"iteration", "reason"} | null, "final_model": path | null,
     "baseline": {"accuracy", "refined_accuracy", "mean_rounds", "categories": {cat: {...}}},
     "iterations": [{"iteration", "eval": {"accuracy", "refined_accuracy", "mean_rounds", "categories": {...}},
                     "pool_size", "pass_rate_histogram": {"bins", "counts"} | null,
                     "counts": {"mastered", "learnable", "too_hard"} | null, "selected", "selected_total", "new_selected",
                     "refine_samples", "corpus_rows", "train": {"loss_first", "loss_last", "tokens_per_s", "train_tokens",
                     "steps", "wall_s"}, "wall_s": {stage: seconds}}, ...]}
Fields of a stage that has not run yet are null.
"""
from __future__ import annotations

import base64
import html
import io
import logging
import time
from pathlib import Path
from typing import Any

from toolace_r import io as rio

log = logging.getLogger(__name__)

STATE_FILE = "state.json"
REPORT_JSON = "report.json"
REPORT_HTML = "report.html"
PLOTS_DIR = "plots"
ITER_STAGES = ("probe", "select", "corpus", "train", "eval")
TRAIN_KEYS = ("loss_first", "loss_last", "tokens_per_s", "train_tokens", "steps", "padding_fraction", "wall_s")


def iter_key(iteration: int, stage: str) -> str:
    """The state.json key of one stage of one iteration, e.g. `iter_002/train`; also its sub-directory name."""
    return f"iter_{iteration:03d}/{stage}"


def eval_summary(result: dict[str, Any] | None) -> dict[str, Any] | None:
    """evaluate()'s `{category: {...}, "overall": {...}}` → overall figures on top, categories below."""
    if not result:
        return None
    overall = result.get("overall", {})
    categories = {
        cat: {k: m.get(k) for k in ("n", "accuracy", "refined_accuracy", "mean_rounds")}
        for cat, m in result.items()
        if cat != "overall" and isinstance(m, dict)
    }
    return {
        "n": overall.get("n"),
        "accuracy": overall.get("accuracy"),
        "refined_accuracy": overall.get("refined_accuracy"),
        "mean_rounds": overall.get("mean_rounds"),
        "tokens": overall.get("tokens"),
        "time_s": overall.get("time_s"),
        "categories": categories,
    }


def _result(stages: dict[str, Any], key: str) -> dict[str, Any] | None:
    entry = stages.get(key)
    return entry.get("result") if entry else None


def iteration_entry(stages: dict[str, Any], iteration: int, pool_size: int | None) -> dict[str, Any]:
    probe = _result(stages, iter_key(iteration, "probe")) or {}
    select = _result(stages, iter_key(iteration, "select")) or {}
    corpus = _result(stages, iter_key(iteration, "corpus")) or {}
    train = _result(stages, iter_key(iteration, "train"))
    return {
        "iteration": iteration,
        "eval": eval_summary(_result(stages, iter_key(iteration, "eval"))),
        "pool_size": pool_size,
        "probed": probe.get("n"),
        "pass_rate_histogram": probe.get("histogram"),
        "mean_pass_rate": probe.get("mean_pass_rate"),
        "counts": probe.get("counts"),
        "selected": select.get("selected"),
        "selected_total": select.get("selected_total"),
        "new_selected": select.get("new"),
        "selection_counts": select.get("counts"),
        "refine_samples": corpus.get("refine_samples"),
        "corpus_rows": corpus.get("rows"),
        "train": {k: train.get(k) for k in TRAIN_KEYS} if train else None,
        "wall_s": {
            stage: round(stages[iter_key(iteration, stage)]["wall_s"], 2)
            for stage in ITER_STAGES
            if iter_key(iteration, stage) in stages
        },
    }


def build_report(state: dict[str, Any], run_dir: str | Path) -> dict[str, Any]:
    """The report.json object from a state.json object (pure; no file access)."""
    stages = state.get("stages", {})
    pool = _result(stages, "pool") or {}
    iterations = sorted({int(key[5:8]) for key in stages if key.startswith("iter_")})
    baseline = eval_summary(_result(stages, "baseline/eval"))
    last_model = None
    for it in iterations:
        train = _result(stages, iter_key(it, "train"))
        if train:
            last_model = train.get("model_dir")
    return {
        "run_dir": str(run_dir),
        "updated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "stopped": state.get("stopped"),
        "final_model": last_model,
        "base_model": (_result(stages, "base_model") or {}).get("model_dir"),
        "pool_size": pool.get("pool_size"),
        "pool_skipped": pool.get("skipped", 0),  # bad records skipped under pool.on_error=skip
        "baseline": baseline,
        "iterations": [iteration_entry(stages, it, pool.get("pool_size")) for it in iterations],
        "wall_s_total": round(sum(s.get("wall_s", 0.0) for s in stages.values()), 1),
    }


# ---------------------------------------------------------------------------------------------------------- plots
def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _plots(report: dict[str, Any]) -> dict[str, str]:
    """Three figures as base64 PNG: accuracy per iteration, pass-rate histograms, selected-set size."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out: dict[str, str] = {}
    its = report["iterations"]
    evald = [e for e in its if e["eval"]]
    fig, ax = plt.subplots(figsize=(6, 3.6))
    if evald:
        xs = [e["iteration"] for e in evald]
        ax.plot(xs, [e["eval"]["accuracy"] for e in evald], "o-", label="single pass")
        if all(e["eval"].get("refined_accuracy") is not None for e in evald):
            ax.plot(xs, [e["eval"]["refined_accuracy"] for e in evald], "s--", label="adaptive refinement")
        ax.set_xticks(xs)
    base = report.get("baseline") or {}
    if base.get("accuracy") is not None:
        ax.axhline(base["accuracy"], color="grey", linestyle=":", label=f"untrained model ({base['accuracy']:.3f})")
    ax.set_xlabel("iteration")
    ax.set_ylabel("held-out accuracy")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="best", fontsize="small")
    ax.set_title("Held-out accuracy per iteration")
    out["accuracy"] = _png(fig)
    plt.close(fig)

    hists = [e for e in its if e["pass_rate_histogram"]]
    if hists:
        fig, ax = plt.subplots(figsize=(6, 3.6))
        width = 0.8 / len(hists)
        for j, e in enumerate(hists):
            h = e["pass_rate_histogram"]
            xs = [i + j * width for i in range(len(h["counts"]))]
            ax.bar(xs, h["counts"], width=width, label=f"iteration {e['iteration']}")
        labels = [f"{b:.2g}" for b in hists[-1]["pass_rate_histogram"]["bins"]]
        ax.set_xticks([i + 0.4 - width / 2 for i in range(len(labels))], labels)
        ax.set_xlabel("pass rate (correct / k sampled answers)")
        ax.set_ylabel("pool samples")
        ax.legend()
        ax.set_title("Pool pass rates, probed with the model entering each iteration", fontsize="medium")
        out["pass_rates"] = _png(fig)
        plt.close(fig)

    sel = [e for e in its if e["selected"] is not None]
    if sel:
        fig, ax = plt.subplots(figsize=(6, 3.2))
        xs = [e["iteration"] for e in sel]
        ax.bar(xs, [e["selected"] for e in sel], label="trained on")
        if all(e["selected_total"] is not None for e in sel):
            ax.plot(xs, [e["selected_total"] for e in sel], "ko-", label="selected so far (union)")
        ax.set_xticks(xs)
        ax.set_xlabel("iteration")
        ax.set_ylabel("samples")
        ax.legend()
        ax.set_title("Selected set size")
        out["selected"] = _png(fig)
        plt.close(fig)
    return out


# ----------------------------------------------------------------------------------------------------------- html
def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return html.escape(str(value))


def _table(header: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_fmt(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def render_html(report: dict[str, Any], plots: dict[str, str]) -> str:
    base = report.get("baseline") or {}
    rows = []
    if base:
        rows.append(["untrained", base.get("accuracy"), base.get("refined_accuracy"), base.get("mean_rounds"),
                     None, None, None, None, None, None])
    for e in report["iterations"]:
        ev, tr = e["eval"] or {}, e["train"] or {}
        rows.append([e["iteration"], ev.get("accuracy"), ev.get("refined_accuracy"), ev.get("mean_rounds"),
                     e["selected"], e["refine_samples"], tr.get("loss_first"), tr.get("loss_last"),
                     tr.get("train_tokens"), round(sum(e["wall_s"].values()), 1)])
    main = _table(["iteration", "accuracy", "refined accuracy", "mean rounds", "selected", "refine samples",
                   "loss first", "loss last", "train tokens", "wall s"], rows)
    cats = sorted({c for e in report["iterations"] if e["eval"] for c in e["eval"]["categories"]}
                  | set((base.get("categories") or {}).keys()))
    cat_rows = []
    for label, ev in [("untrained", base)] + [(e["iteration"], e["eval"]) for e in report["iterations"] if e["eval"]]:
        if not ev:
            continue
        cells = [label]
        for c in cats:
            m = (ev.get("categories") or {}).get(c) or {}
            acc, ref = m.get("accuracy"), m.get("refined_accuracy")
            cells.append(None if acc is None else f"{acc:.3f} / {_fmt(ref)}")
        cat_rows.append(cells)
    cat_table = _table(["iteration"] + [f"{c} (single / refined)" for c in cats], cat_rows)
    probe_rows = [[e["iteration"], e["probed"], e["mean_pass_rate"],
                   *[e["counts"].get(k) for k in ("mastered", "learnable", "too_hard")]]
                  for e in report["iterations"] if e["counts"]]
    probe_table = _table(["iteration", "probed", "mean pass rate", "mastered", "learnable", "too hard"], probe_rows)
    stage_rows = [[e["iteration"], *[e["wall_s"].get(s) for s in ITER_STAGES]] for e in report["iterations"]]
    stage_table = _table(["iteration", *ITER_STAGES], stage_rows)
    imgs = "".join(f'<img alt="{k}" src="data:image/png;base64,{v}">' for k, v in plots.items())
    stopped = report.get("stopped")
    status = (f"stopped after iteration {stopped['iteration']}: {html.escape(stopped['reason'])}" if stopped
              else "running (reload to follow)")
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>toolace-r report — {html.escape(report['run_dir'])}</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1100px}} table{{border-collapse:collapse;margin:1em 0}}
td,th{{border:1px solid #ccc;padding:3px 8px;text-align:right}} img{{max-width:49%;margin:4px}}</style></head>
<body><h1>toolace-r run report</h1>
<p>run dir <code>{html.escape(report['run_dir'])}</code> · pool {_fmt(report.get('pool_size'))} samples ({_fmt(report.get('pool_skipped'))} bad records skipped) ·
status: {status} · updated {report['updated_at']} · stage time {report['wall_s_total']} s ·
final model <code>{_fmt(report.get('final_model'))}</code></p>
<div>{imgs}</div>
<h2>Held-out accuracy, selection and training per iteration</h2>{main}
<h2>Per category</h2>{cat_table}
<h2>Probing (pool pass rates with the model entering the iteration)</h2>{probe_table}
<h2>Wall time per stage (s)</h2>{stage_table}
</body></html>
"""


def write_report(run_dir: str | Path, plots: bool = True) -> dict[str, Any]:
    """Rebuild RUN_DIR/report.json, RUN_DIR/report.html and RUN_DIR/plots/*.png from RUN_DIR/state.json; returns
    the report object."""
    run_dir = Path(run_dir)
    state_path = run_dir / STATE_FILE
    state = rio.read_json(state_path) if state_path.is_file() else {}
    report = build_report(state, run_dir)
    rio.write_json(run_dir / REPORT_JSON, report)
    if plots:
        try:
            figures = _plots(report)
        except Exception as err:  # a broken plot must never stop a training run; the JSON is already written
            log.warning("report plots failed: %s", err)
            figures = {}
        rio.write_text(run_dir / REPORT_HTML, render_html(report, figures))
        for name, data in figures.items():  # the same figures as files, for READMEs, slides and dashboards
            with rio.atomic_path(run_dir / PLOTS_DIR / f"{name}.png") as tmp:
                tmp.write_bytes(base64.b64decode(data))
    return report
