"""The run report: `RUN_DIR/report.json` and `RUN_DIR/report.html` (plots embedded as PNG).

Built only from what the driver recorded in `RUN_DIR/state.json` (every finished stage stores a small JSON result
there), so it can be rebuilt at any moment — the driver does so after every stage, and a person can watch the run
by reloading the HTML page. `toolace-r`'s report is meant to answer one question at a glance: did the model-aware
iterations help, and does adaptive refinement add to single-pass accuracy?

report.json:
    {"run_dir", "updated_at", "stopped": {"iteration", "reason"} | null,
     "final_model": {"iteration", "model_dir", "metric", "value", "reason", "dev": FIGURES | null,
                     "test": FIGURES | null, "test_vs_baseline": {"accuracy": PAIRED, "refined_accuracy": PAIRED} | null}
                    | null (until the loop has stopped, or when no iteration trained a model),
     "final_model_dir": path | null, "base_model", "pool_size" (what the loop trains on, dev excluded),
     "dev": {"size", "fingerprint", "categories"} | null,
     "baseline": EVAL (test sets) | null, "baseline_dev": EVAL (dev split) | null,
     "iterations": [{"iteration", "eval": EVAL (test sets, evaluated after the loop stopped) | null,
                     "dev_eval": EVAL (dev split, what the driver decided on) | null, "final": bool,
                     "pool_size", "pass_rate_histogram": {"bins", "counts"} | null,
                     "counts": {"mastered", "learnable", "too_hard"} | null, "selected", "selected_total", "new_selected",
                     "refine_samples", "corpus_rows", "train": {"loss_first", "loss_last", "tokens_per_s", "train_tokens",
                     "steps", "wall_s"}, "wall_s": {stage: seconds}}, ...]}
    EVAL = FIGURES + {"mean_rounds", "tokens", "time_s", "categories": {cat: FIGURES + {"mean_rounds"}},
            "summaries": {benchmark: its own summary, as `toolace-r eval` writes it to metrics.json} | null}
    "leaks": the leak check of the test sets against the pool the loop trained on (toolace_r.leaks.check_leaks:
             per test set n, same_request, same_request_and_calls, per category, examples) | null until it ran
    FIGURES = {"n", "accuracy", "accuracy_ci95": [lo, hi], "refined_accuracy", "refined_accuracy_ci95": [lo, hi],
               "refined_vs_single": PAIRED (a = single pass, b = adaptive refinement, same items) | null}
    PAIRED = {"n", "a_only", "b_only", "diff", "p_value"}: exact McNemar test (toolace_r.stats.mcnemar); a_only = items
             only a gets right, diff = accuracy(b) − accuracy(a); for test_vs_baseline a = the untrained model and
             b = the final model.
Intervals are 95 % Wilson intervals of the counts (toolace_r.stats.wilson_interval). The final model is chosen by
the driver on the dev split (pool.dev_size, run.final_model_metric) before any test set is read; its reason says how.
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
from toolace_r.stats import mcnemar, wilson_interval

log = logging.getLogger(__name__)

STATE_FILE = "state.json"
REPORT_JSON = "report.json"
REPORT_HTML = "report.html"
PLOTS_DIR = "plots"
ITER_STAGES = ("probe", "select", "corpus", "train", "dev_eval", "eval")
TRAIN_KEYS = ("loss_first", "loss_last", "tokens_per_s", "train_tokens", "steps", "padding_fraction", "wall_s")


def iter_key(iteration: int, stage: str) -> str:
    """The state.json key of one stage of one iteration, e.g. `iter_002/train`; also its sub-directory name."""
    return f"iter_{iteration:03d}/{stage}"


def paired(a: list[bool], b: list[bool]) -> dict[str, Any]:
    """Exact McNemar test of verdicts b against a on the same items, plus the accuracy difference b − a."""
    test = mcnemar(a, b)
    n = test["n"]
    return {"n": n, "a_only": test["a_only"], "b_only": test["b_only"],
            "diff": (test["b_only"] - test["a_only"]) / n if n else 0.0, "p_value": test["p_value"]}


def add_item_statistics(result: dict[str, Any], outputs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per group and overall of an evaluate() result: exact counts (`correct`, `refined_correct`) and the paired
    test of adaptive refinement against the single pass over the same items (`refined_vs_single`), from the rows of
    outputs.jsonl (`group`, `valid`, `refined_valid`). Mutates and returns `result`."""
    by_group: dict[str, list[dict[str, Any]]] = {}
    for row in outputs:
        by_group.setdefault(row["group"], []).append(row)
    for group, rows in list(by_group.items()) + [("overall", outputs)]:
        if group not in result or not rows:
            continue
        single = [bool(r["valid"]) for r in rows]
        refined = [bool(r["refined_valid"]) for r in rows]
        result[group].update(correct=sum(single), refined_correct=sum(refined),
                             refined_vs_single=paired(single, refined))
    return result


def _count(m: dict[str, Any], rate: str, count: str) -> int | None:
    """Items right: the exact count where the stage recorded it, else rate × n (older run dirs)."""
    if m.get(count) is not None:
        return int(m[count])
    if m.get(rate) is None or not m.get("n"):
        return None
    return round(float(m[rate]) * int(m["n"]))


def figures(m: dict[str, Any]) -> dict[str, Any]:
    """n, both accuracies with their 95 % Wilson intervals, and the refined-vs-single paired test of one group."""
    n = m.get("n")
    out: dict[str, Any] = {"n": n}
    for rate, count in (("accuracy", "correct"), ("refined_accuracy", "refined_correct")):
        k = _count(m, rate, count)
        out[rate] = m.get(rate)
        out[f"{rate}_ci95"] = list(wilson_interval(k, int(n))) if k is not None and n else None
    out["refined_vs_single"] = m.get("refined_vs_single")
    return out


def eval_summary(result: dict[str, Any] | None) -> dict[str, Any] | None:
    """evaluate()'s `{category: {...}, "overall": {...}}` → overall figures on top, categories below."""
    if not result:
        return None
    overall = result.get("overall", {})
    categories = {
        cat: dict(figures(m), mean_rounds=m.get("mean_rounds"))
        for cat, m in result.items()
        if cat != "overall" and isinstance(m, dict)
    }
    return dict(figures(overall), mean_rounds=overall.get("mean_rounds"), tokens=overall.get("tokens"),
                time_s=overall.get("time_s"), categories=categories, summaries=overall.get("summaries"))


def fmt_ci(value: float | None, ci: list[float] | None, digits: int = 3) -> str:
    """`0.712 [0.645, 0.771]`; `–` when there is no figure."""
    if value is None:
        return "–"
    text = f"{value:.{digits}f}"
    return f"{text} [{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]" if ci else text


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
        "dev_eval": eval_summary(_result(stages, iter_key(iteration, "dev_eval"))),
        "final": False,
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


def _overall(summary: dict[str, Any] | None) -> dict[str, Any] | None:
    return {k: v for k, v in summary.items() if k != "categories"} if summary else None


def final_model_entry(state: dict[str, Any], stages: dict[str, Any]) -> dict[str, Any] | None:
    """The driver's recorded choice (state.json `final_model`, made on dev before any test set was read) with the
    chosen model's dev and test figures and its paired test against the untrained model on the test sets."""
    decision = state.get("final_model")
    if not decision:
        return None
    it = decision.get("iteration")
    entry = dict(decision)
    entry["dev"] = _overall(eval_summary(_result(stages, iter_key(it, "dev_eval")))) if it is not None else None
    entry["test"] = _overall(eval_summary(_result(stages, iter_key(it, "eval")))) if it is not None else None
    entry["test_vs_baseline"] = state.get("final_vs_baseline")
    return entry


def build_report(state: dict[str, Any], run_dir: str | Path) -> dict[str, Any]:
    """The report.json object from a state.json object (pure; no file access)."""
    stages = state.get("stages", {})
    pool = _result(stages, "pool") or {}
    iterations = sorted({int(key[5:8]) for key in stages if key.startswith("iter_")})
    final = final_model_entry(state, stages)
    entries = [iteration_entry(stages, it, pool.get("pool_size")) for it in iterations]
    for e in entries:
        e["final"] = bool(final) and e["iteration"] == final.get("iteration")
    return {
        "run_dir": str(run_dir),
        "updated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "stopped": state.get("stopped"),
        "final_model": final,
        "final_model_dir": (final or {}).get("model_dir"),
        "base_model": (_result(stages, "base_model") or {}).get("model_dir"),
        "pool_size": pool.get("pool_size"),
        "pool_skipped": pool.get("skipped", 0),  # bad records skipped under pool.on_error=skip
        "dev": ({"size": pool["dev_size"], "fingerprint": pool.get("dev_fingerprint"),
                 "categories": pool.get("dev_categories")} if pool.get("dev_size") else None),
        "baseline": eval_summary(_result(stages, "baseline/eval")),
        "baseline_dev": eval_summary(_result(stages, "baseline/dev_eval")),
        "iterations": entries,
        "leaks": _result(stages, "leaks"),
        "decoder": decoder_entry(state.get("decoders")),
        "wall_s_total": round(sum(s.get("wall_s", 0.0) for s in stages.values()), 1),
    }


def decoder_entry(decoders: dict[str, str] | None) -> dict[str, str] | None:
    """state.json's `decoders` ({"probe", "eval"}: how answers were read before judging) → report.json's `decoder`,
    with the label every table of the run carries: whether the figures read answers as BFCL's leaderboard does."""
    if not decoders or not decoders.get("eval"):
        return None  # a run dir from before the decoders were recorded
    from toolace_r.calls import decoder_label

    label = f"decoder: {decoder_label(decoders['eval'])}"
    if decoders.get("probe") and decoders["probe"] != decoders["eval"]:
        label += f"; the probe judged with {decoder_label(decoders['probe'])}"
    return {**decoders, "label": label}


# ------------------------------------------------------------------------------------ benchmark summaries, leaks
def headline_figures(summaries: dict[str, Any] | None) -> list[tuple[str, dict | None, dict | None]]:
    """A benchmark summary dict (metrics.json `summaries`) → its headline figures: (label, single, refined), each
    {"accuracy", "ci95", ...} or None. BFCL: the leaderboard's groups; ACEBench: normal, special; API-Bank: levels."""
    from toolace_r.bfcl_summary import LABELS

    rows: list[tuple[str, dict | None, dict | None]] = []
    for name, s in (summaries or {}).items():
        single, refined = s.get("single") or {}, s.get("refined") or {}
        if s.get("benchmark") == "bfcl":
            keys = [k for k in LABELS if k in single and k != "simple"]
            rows += [(f"BFCL v{s.get('version')} {LABELS[k].split(' (')[0]}", single[k], refined.get(k)) for k in keys]
        elif s.get("benchmark") == "acebench":
            rows += [(f"ACEBench {k}", single.get(k), refined.get(k)) for k in ("normal", "special")]
        elif s.get("benchmark") == "apibank":
            rows += [(f"API-Bank {k}", single.get(k), refined.get(k)) for k in single]
    return rows


def _fig_text(d: dict | None) -> str:
    if not d:
        return "–"
    if d.get("accuracy") is None:
        return "N/A (missing " + ", ".join(d.get("missing") or ["categories"]) + ")"
    return fmt_ci(d["accuracy"], d.get("ci95"))


def summary_rows(report: dict[str, Any]) -> list[list[Any]]:
    """[figure, model (untrained / iteration), single, refined] for every benchmark summary of the test sets."""
    evals = [("untrained", report.get("baseline"))] + [
        (f"{e['iteration']}{' ★' if e.get('final') else ''}", e.get("eval")) for e in report["iterations"]]
    rows: list[list[Any]] = []
    per_label: dict[str, list[list[Any]]] = {}
    for model, ev in evals:
        for label, single, refined in headline_figures((ev or {}).get("summaries")):
            per_label.setdefault(label, []).append([label, model, _fig_text(single), _fig_text(refined)])
    for group in per_label.values():
        rows += group
    return rows


def format_leaks_and_summaries(report: dict[str, Any]) -> str:
    """The console lines after the run's table: the benchmark summaries of the test sets per iteration (single |
    refined, 95 % interval), then the leak check."""
    from toolace_r.leaks import format_leaks

    lines = []
    rows = summary_rows(report)
    if rows:
        lines.append(f"{'test-set summary (95 % CI)':<34} {'model':>11} {'single':>21} {'refined':>21}")
        for label, model, single, refined in rows:
            lines.append(f"{label:<34} {model:>11} {single:>21} {refined:>21}")
    leaks = format_leaks(report.get("leaks"))
    return "\n".join(lines + ([""] if lines and leaks else []) + ([leaks] if leaks else []))


def _leak_html(leaks: dict[str, Any] | None) -> str:
    if not leaks:
        return "<p>not run yet (it runs after the loop, before the test sets are evaluated)</p>"
    rows = [[label, s["n"], s["same_request"], s["same_request_and_calls"],
             ", ".join(f"{e['test']} = {e['pool']}" for e in s["examples"]) or None]
            for label, s in leaks["sets"].items()]
    return (f"<p>Test items that also occur in the pool the loop trained on ({leaks['pool_size']} samples). "
            f"Request text compared after normalisation: {html.escape(leaks['normalization'])}; same calls: the "
            f"pool item's gold calls pass the test item's own judge.</p>"
            + _table(["test set", "n", "same request", "same request + same calls", "examples (test = pool)"], rows))


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
    fig, ax = plt.subplots(figsize=(6, 3.6))

    def curve(entries: list[dict], key: str, rate: str, fmt: str, label: str, **kw) -> None:
        pts = [(e["iteration"], e[key]) for e in entries if e[key] and e[key].get(rate) is not None]
        if not pts:
            return
        xs, ys = [x for x, _ in pts], [ev[rate] for _, ev in pts]
        cis = [ev.get(f"{rate}_ci95") or [y, y] for (_, ev), y in zip(pts, ys)]
        ax.errorbar(xs, ys, yerr=[[y - c[0] for y, c in zip(ys, cis)], [c[1] - y for y, c in zip(ys, cis)]],
                    fmt=fmt, capsize=3, label=label, **kw)

    curve(its, "eval", "accuracy", "o-", "test, single pass")
    curve(its, "eval", "refined_accuracy", "s--", "test, adaptive refinement")
    metric = (report.get("final_model") or {}).get("metric") or "refined_accuracy"
    curve(its, "dev_eval", metric, "^:", f"dev, {metric.replace('_', ' ')}", alpha=0.7)
    if its:
        ax.set_xticks([e["iteration"] for e in its])
    for e in its:
        if e.get("final"):
            ax.axvline(e["iteration"], color="gold", alpha=0.5, linewidth=6, label="final model (chosen on dev)")
    base = report.get("baseline") or {}
    if base.get("accuracy") is not None:
        ax.axhline(base["accuracy"], color="grey", linestyle=":", label=f"untrained model, test ({base['accuracy']:.3f})")
    ax.set_xlabel("iteration")
    ax.set_ylabel("accuracy (95 % Wilson interval)")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="best", fontsize="x-small")
    ax.set_title("Accuracy per iteration: dev (decisions) and test (after the loop)", fontsize="medium")
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
def fmt_value(value: Any, digits: int = 3) -> str:
    """A table cell's text: "–" for None, a float to `digits` decimals, anything else as str (the run report's HTML
    and the ablation's tables both write cells this way)."""
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _fmt(value: Any, digits: int = 3) -> str:
    return html.escape(fmt_value(value, digits))


def _table(header: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_fmt(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _paired_text(t: dict[str, Any] | None) -> str | None:
    """`+0.050 (4 vs 14, p 0.031)`: diff b − a, items only a / only b gets right, exact McNemar p."""
    if not t:
        return None
    return f"{t['diff']:+.3f} ({t['a_only']} vs {t['b_only']}, p {t['p_value']:.3g})"


def _final_text(report: dict[str, Any]) -> str:
    final = report.get("final_model")
    if not final:
        return "not chosen yet (the driver chooses it on the dev split once the loop has stopped)"
    parts = [f"<code>{html.escape(str(final.get('model_dir')))}</code> (iteration {_fmt(final.get('iteration'))}): "
             f"{html.escape(final.get('reason') or '')}"]
    test = final.get("test") or {}
    if test:
        parts.append(f"test accuracy {fmt_ci(test.get('accuracy'), test.get('accuracy_ci95'))} single pass, "
                     f"{fmt_ci(test.get('refined_accuracy'), test.get('refined_accuracy_ci95'))} refined")
    vs = final.get("test_vs_baseline") or {}
    if vs:
        parts.append("against the untrained model on the same test items (difference, items only the untrained / "
                     "only the final model gets right, exact McNemar p): single pass "
                     f"{_paired_text(vs.get('accuracy'))}, refined {_paired_text(vs.get('refined_accuracy'))}")
    return " · ".join(parts)


def render_html(report: dict[str, Any], plots: dict[str, str]) -> str:
    base, base_dev = report.get("baseline") or {}, report.get("baseline_dev") or {}
    ci = lambda ev, rate: fmt_ci(ev.get(rate), ev.get(f"{rate}_ci95")) if ev else None  # noqa: E731
    rows = []
    if base or base_dev:
        rows.append(["untrained", ci(base_dev, "accuracy"), ci(base_dev, "refined_accuracy"), ci(base, "accuracy"),
                     ci(base, "refined_accuracy"), _paired_text(base.get("refined_vs_single")), base.get("mean_rounds"),
                     None, None, None, None, None, None])
    for e in report["iterations"]:
        ev, dev, tr = e["eval"] or {}, e.get("dev_eval") or {}, e["train"] or {}
        rows.append([f"{e['iteration']} ★ final" if e.get("final") else e["iteration"],
                     ci(dev, "accuracy"), ci(dev, "refined_accuracy"), ci(ev, "accuracy"), ci(ev, "refined_accuracy"),
                     _paired_text(ev.get("refined_vs_single")), ev.get("mean_rounds"),
                     e["selected"], e["refine_samples"], tr.get("loss_first"), tr.get("loss_last"),
                     tr.get("train_tokens"), round(sum(e["wall_s"].values()), 1)])
    main = _table(["iteration", "dev single", "dev refined", "test single", "test refined",
                   "test refined − single (p)", "test mean rounds", "selected", "refine samples", "loss first",
                   "loss last", "train tokens", "wall s"], rows)

    def category_table(key: str, untrained: dict[str, Any]) -> str:
        evals = [("untrained", untrained)] + [(e["iteration"], e.get(key)) for e in report["iterations"]]
        evals = [(label, ev) for label, ev in evals if ev]
        cats = sorted({c for _, ev in evals for c in (ev.get("categories") or {})})
        cat_rows = []
        for label, ev in evals:
            cells = [label]
            for c in cats:
                m = (ev.get("categories") or {}).get(c) or {}
                cells.append(None if m.get("accuracy") is None else f"{ci(m, 'accuracy')} / {ci(m, 'refined_accuracy')}")
            cat_rows.append(cells)
        return _table(["iteration"] + [f"{c} (single / refined)" for c in cats], cat_rows) if cat_rows else "<p>–</p>"

    probe_rows = [[e["iteration"], e["probed"], e["mean_pass_rate"],
                   *[e["counts"].get(k) for k in ("mastered", "learnable", "too_hard")]]
                  for e in report["iterations"] if e["counts"]]
    probe_table = _table(["iteration", "probed", "mean pass rate", "mastered", "learnable", "too hard"], probe_rows)
    stage_rows = [[e["iteration"], *[e["wall_s"].get(s) for s in ITER_STAGES]] for e in report["iterations"]]
    stage_table = _table(["iteration", *ITER_STAGES], stage_rows)
    srows = summary_rows(report)
    summaries = (_table(["figure", "model", "single [95 % CI]", "refined [95 % CI]"], srows) if srows
                 else "<p>– (no benchmark test set: BFCL, API-Bank or ACEBench)</p>")
    imgs = "".join(f'<img alt="{k}" src="data:image/png;base64,{v}">' for k, v in plots.items())
    stopped = report.get("stopped")
    status = (f"stopped after iteration {stopped['iteration']}: {html.escape(stopped['reason'])}" if stopped
              else "running (reload to follow)")
    dev = report.get("dev")
    dev_text = (f"dev split {dev['size']} samples carved from the pool (fingerprint {html.escape(str(dev['fingerprint']))})"
                if dev else "no dev split (pool.dev_size = 0)")
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>toolace-r report — {html.escape(report['run_dir'])}</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1200px}} table{{border-collapse:collapse;margin:1em 0}}
td,th{{border:1px solid #ccc;padding:3px 8px;text-align:right}} img{{max-width:49%;margin:4px}}</style></head>
<body><h1>toolace-r run report</h1>
<p>run dir <code>{html.escape(report['run_dir'])}</code> · pool {_fmt(report.get('pool_size'))} samples ({_fmt(report.get('pool_skipped'))} bad records skipped) ·
{dev_text} · {html.escape((report.get('decoder') or {}).get('label') or 'decoder: not recorded')} · status: {status} ·
updated {report['updated_at']} · stage time {report['wall_s_total']} s</p>
<p><b>final model</b>: {_final_text(report)}</p>
<div>{imgs}</div>
<h2>Accuracy, selection and training per iteration</h2>
<p>Figures are accuracy [95 % Wilson interval]. dev = the split carved from the pool, the only figures the driver
decided on (stopping, final model); test = eval.data, evaluated only after the loop had stopped.
refined − single: accuracy gained by adaptive refinement on the test items (items only the single pass / only
refinement gets right, exact McNemar p).</p>{main}
<h2>Per category, test</h2>{category_table("eval", base)}
<h2>Benchmark summaries of the test sets (as `toolace-r eval` prints them)</h2>{summaries}
<h2>Leak check: test items in the training pool</h2>{_leak_html(report.get("leaks"))}
<h2>Per category, dev</h2>{category_table("dev_eval", base_dev)}
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
