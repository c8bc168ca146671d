"""`toolace-r` — one entry point, one subcommand per stage of the method.

Every subcommand that runs part of the method takes `--config FILE` and trailing `key=value` overrides of the typed
config (toolace_r/config.py). Heavy imports (torch, ray) happen inside the command, so `--help` stays fast.
"""
from __future__ import annotations

import argparse
import importlib
import re
import sys

from toolace_r.console import setup_logging
from toolace_r.errors import ToolaceError

# subcommand -> (module, function, help). The function takes (args, cfg) where cfg is the loaded Config or None.
COMMANDS = {
    "run": ("toolace_r.driver", "run_command", "run the iterative ToolACE-R loop: probe → select → corpus → train → eval"),
    "probe": ("toolace_r.probe", "probe_command", "probe a pool with a model: k sampled answers, pass rate per sample"),
    "select": ("toolace_r.select", "select_command", "model-aware selection from probe results"),
    "train": ("toolace_r.train", "train_command", "fine-tune on samples with Ray Train + DeepSpeed ZeRO"),
    "eval": ("toolace_r.evaluate", "eval_command", "evaluate single-pass and adaptive refinement accuracy per category"),
    "serve": ("toolace_r.serve.cli", "serve_command", "serve a model behind an OpenAI-compatible /v1/chat/completions"),
    "check": ("toolace_r.calls.cli", "check_command", "judge raw model outputs against BFCL ground truth (AST checker)"),
    "tiny-model": ("toolace_r.models", "tiny_model_command", "build a tiny local Llama model + tokenizer from pool text"),
    "base-model": ("toolace_r.base_model", "base_model_command",
                   "the warm tiny base model (model.path=tiny-base): shipped, cached, or pre-trained on the general corpus"),
    "ablate": ("toolace_r.ablation", "ablate_command", "run the ablation arms side by side and report"),
    "plan": ("toolace_r.plan", "plan_command",
             "per-GPU memory of every stage of a job from the model's config.json; what to change if one does not fit"),
}
TAKES_CONFIG = {"run", "probe", "select", "train", "eval", "serve", "tiny-model", "base-model", "ablate", "plan"}


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="job YAML (see jobs/); schema defaults when omitted")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. probe.k=4 run.dir=runs/x")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="toolace-r", description=__doc__.splitlines()[0])
    parser.add_argument("--log-level", default="INFO")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    parsers = {name: sub.add_parser(name, help=help_, description=help_) for name, (_, _, help_) in COMMANDS.items()}
    for name in TAKES_CONFIG:
        _add_config_args(parsers[name])
    parsers["probe"].add_argument("--out", help="output directory (default: run.dir/probe)")
    parsers["select"].add_argument("--probe", required=True, help="probe results (parquet dir or file)")
    parsers["select"].add_argument("--out", help="output directory (default: next to the probe results)")
    parsers["select"].add_argument("--iteration", type=int, default=1, help="iteration number (0 = seed subset)")
    parsers["select"].add_argument("--previous", help="previous selection.json (with select.accumulate: union with it)")
    parsers["train"].add_argument("--data", help="training samples (a pool file / dir, or a corpus written by the driver)")
    parsers["train"].add_argument("--out", help="output directory for the trained model and metrics")
    parsers["eval"].add_argument("--model", help="model dir (overrides model.path)")
    parsers["eval"].add_argument("--data", nargs="+", help="eval specs: builtin | bfcl:DIR | bfcl:pkg | "
                                 "apibank:FILE_OR_DIR | acebench:DIR | FILE")
    parsers["eval"].add_argument("--out", help="output directory (default: run.dir/eval)")
    parsers["eval"].add_argument("--decoder", choices=["lenient", "bfcl"],
                                 help="decoder for model output (overrides eval.decoder, default bfcl: the "
                                      "leaderboard's; lenient also reads fences, prose around calls, <tool_call> JSON)")
    parsers["eval"].add_argument("--pool", nargs="?", const="config", metavar="PATH",
                                 help="leak check first: count test items that also occur in this pool (a pool.path "
                                      "value; alone: the job's pool section)")
    parsers["serve"].add_argument("--model", help="model dir (overrides serve.model)")
    parsers["serve"].add_argument("--host")
    parsers["serve"].add_argument("--port", type=int)
    parsers["check"].add_argument("--input", required=True, help="cases JSONL")
    parsers["check"].add_argument("--output", help="verdicts JSONL (default: stdout)")
    parsers["check"].add_argument("--decoder", choices=["lenient", "bfcl"], default="lenient")
    for name in ("plan", "run"):  # the memory plan; `run` checks it first
        parsers[name].add_argument("--gpu-memory", type=float, metavar="GB",
                                   help="memory of one GPU in GiB (default: this machine's GPU 0; CPU stages use RAM)")
        parsers[name].add_argument("--model-config", metavar="PATH",
                                   help="the model's config.json (or its dir) when model.path is a hub name without a "
                                        "built-in shape (toolace_r/plan/shapes.py)")
    parsers["plan"].add_argument("--prompt-tokens", type=int, metavar="N",
                                 help="longest prompt for the KV-cache figures (default: train.max_length)")
    parsers["run"].add_argument("--no-memory-check", action="store_true",
                                help="start even if `toolace-r plan` says a stage cannot fit")
    parsers["tiny-model"].add_argument("--out", required=True, help="output model directory")
    parsers["base-model"].add_argument("--out", help="also copy the model dir here")
    parsers["base-model"].add_argument("--rebuild", action="store_true", help="pre-train anew even if cached")
    return parser


OVERRIDE = re.compile(r"[A-Za-z_][\w.]*=")  # key=value; an eval spec (builtin, bfcl:DIR, FILE) never starts so


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line. `--data` takes several specs, so argparse hands it the trailing key=value overrides
    too (`eval --data bfcl:pkg eval.num_actors=0`); they are moved back to the overrides."""
    args = build_parser().parse_args(argv)
    specs = getattr(args, "data", None)
    if isinstance(specs, list):
        args.data = [s for s in specs if not OVERRIDE.match(s)]
        args.overrides = list(args.overrides) + [s for s in specs if OVERRIDE.match(s)]
    pool = getattr(args, "pool", None)
    if pool and OVERRIDE.match(pool):  # `eval --pool eval.limit=5`: a bare --pool followed by an override
        args.pool, args.overrides = "config", [pool] + list(args.overrides)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # toolace_r's lines (and each stage's progress bar) on the console; Ray's and the libraries' output goes to
    # RUN_DIR/logs once a command starts Ray (toolace_r.console, ray_session.start_or_join)
    setup_logging(args.log_level)
    module_name, func_name, _ = COMMANDS[args.command]
    try:
        cfg = None
        if args.command in TAKES_CONFIG:
            from toolace_r.config import load_config

            cfg = load_config(args.config, args.overrides)
        if args.command == "run":  # refuse a job a stage of which cannot fit in memory, before anything launches
            from toolace_r.plan import check_before_run

            check_before_run(cfg, args)
        func = getattr(importlib.import_module(module_name), func_name)
        return int(func(args, cfg) or 0)
    except ToolaceError as err:
        print(f"toolace-r {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
