"""The demo's trained model and its held-out test items, for the benchmarks that measure a trained model
(refine_cost, serve_load).

`demo_model()` is the final model of this checkout's `make demo` run (runs/demo/report.json's final_model_dir: the
model chosen on dev), else the first of DEMO_MODELS that exists (demo runs elsewhere on this machine); `demo_items(model_dir)`
the held-out split of the built-in pool that run was evaluated on (its RUN_DIR/config.yaml: pool.builtin, and
eval.generation.max_new_tokens), so the items and the answer length are the demo's own. A model dir that is not in a
run dir gets the built-in pool's defaults.
"""
from __future__ import annotations

from dataclasses import fields
from pathlib import Path
from typing import Any

DEMO_MODELS = ("/tmp/s5/demo/runs/demo/iter_002/model", "/tmp/fresh7/runs/demo/iter_002/model")


REPORT = Path(__file__).resolve().parents[1] / "runs" / "demo" / "report.json"


def demo_model() -> str | None:
    """The demo's trained model, or None when no demo run is on this machine."""
    import json

    final = json.loads(REPORT.read_text()).get("final_model_dir") if REPORT.is_file() else None
    candidates = ([final] if final else []) + list(DEMO_MODELS)
    return next((str(m) for m in candidates if (Path(m) / "config.json").is_file()), None)


def run_config(model_dir: str) -> dict[str, Any]:
    """The config.yaml of the run `model_dir` belongs to (RUN_DIR/iter_NNN/model), or {}."""
    import yaml

    for parent in Path(model_dir).resolve().parents[:3]:
        if (parent / "config.yaml").is_file() and (parent / "state.json").is_file():
            return yaml.safe_load((parent / "config.yaml").read_text()) or {}
    return {}


def demo_items(model_dir: str) -> tuple[list[Any], dict[str, Any]]:
    """(held-out samples in the pool's order, where they came from: pool settings, max_new_tokens, config path)."""
    from toolace_r.config import BuiltinPoolConfig
    from toolace_r.data.pool import load_builtin

    cfg = run_config(model_dir)
    pool = (cfg.get("pool") or {})
    if pool and pool.get("path", "builtin") != "builtin":
        raise SystemExit(f"{model_dir}: its run trained on pool.path={pool['path']!r}; these benchmarks read the "
                         "built-in pool's held-out split only")
    known = {f.name for f in fields(BuiltinPoolConfig)}
    builtin = BuiltinPoolConfig(**{k: v for k, v in (pool.get("builtin") or {}).items() if k in known})
    _, heldout = load_builtin(builtin)
    max_new = int(((cfg.get("eval") or {}).get("generation") or {}).get("max_new_tokens") or 96)
    return heldout, {"pool_builtin": vars(builtin), "max_new_tokens": max_new, "from_run_config": bool(cfg)}
