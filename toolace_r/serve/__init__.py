"""Serve a tool-calling model behind an OpenAI-compatible `/v1/chat/completions`, on Ray Serve.

Agents that speak the OpenAI tools API point their client at this server and get `message.tool_calls` back; inside,
each answer goes through the paper's adaptive self-refinement (the model checks its own call and stops when two
rounds agree; toolace_r.refine).

Layout of a replica (one Ray Serve deployment, FastAPI ingress, autoscaled), and the module holding each part:

    HTTP → auth → body size → JSON (body.py) → pydantic, OpenAI schema (schema.py) → convert to the project's
    tools/messages, render the prompt and check its length (convert.py)
      ──(everything above is per request and can only fail with a 4xx: the error contract in schema.py)──
    → the replica's decoding engine (model.py: toolace_r.engine, continuous batching, stepped by one model thread;
      each request is an adaptive-refinement item, toolace_r.refine)
    → parse calls → OpenAI response (convert.py), or with `stream: true` server-sent chunks (stream.py)

The routes, the deployment and the application builders live in app.py; the `toolace-r serve` command in cli.py.
The model is loaded once per replica; every request in flight shares its forward passes (`serve.batching`): a request
joins the running batch at the next decoding step and leaves it when its answer is decided. The model runs in one
thread so the event loop keeps answering health checks and validating requests meanwhile.

Two ways to start it, one source of defaults (`ServeConfig` in toolace_r/config.py):
  - `toolace-r serve --model DIR [--config JOB.yaml] [--port N] [serve.key=value ...]`
  - `serve run jobs/serve.yaml` (a Ray Serve config file whose `import_path` is `toolace_r.serve:build_app`; its
    `args` are serve.* keys, plus optionally `config: JOB.yaml` and `overrides: [key=value, ...]`).

Decisions where the OpenAI API leaves room (all visible in the response or documented here):
  - `temperature` defaults to 0 (greedy): refinement stops when two rounds agree, which is what greedy decoding gives.
    Temperatures below MIN_SAMPLING_TEMPERATURE (1e-3, convert.py) also decode greedily.
  - `tool_choice: "none"`: the model is prompted without the tools and its text comes back as `content`, never as
    `tool_calls`. `"required"` or a named function: the answer is decoded under the tools' schemas
    (toolace_r.constrain), in every refinement round, so it is a valid call (names, required arguments, types, enum
    values) closed within max_tokens; a max_tokens too small for the shortest call is a 400. A named function also
    restricts the tools the model sees to that one; `parallel_tool_calls: false` allows one call. The 422
    `tool_choice_unsatisfied` (the final answer holds no matching call) remains as a safety net only.
  - Extension `guided: true` with tool_choice "auto": a call the model starts stays valid the same way; an answer
    without a call is still allowed.
  - `max_tokens` (per refinement round) above `serve.max_new_tokens` is clamped to it; `n > 1` is refused with 400;
    `parallel_tool_calls: false` keeps the first call; `top_p` and `seed` are accepted and ignored.
  - `stream: true` streams the final answer only (stream.py): at once when its last refinement round is decided, token
    by token in a round that must be the last (`max_refine_rounds: 1`).
  - `usage.prompt_tokens` counts the round-1 prompt; `completion_tokens` every token generated over all rounds.
  - Extension fields: request `max_refine_rounds` (openai client: `extra_body={"max_refine_rounds": 1}`; 1 = a single
    pass, no refinement); response `choices[0].refinement = {"rounds": n}` and top-level `toolace_r` with the rounds,
    the cap used and, when the answer was a malformed call, the parse error.
"""
from typing import Any


def __getattr__(name: str) -> Any:
    """`toolace_r.serve:build_app` is the documented `import_path` of Serve config files (jobs/serve.yaml,
    cluster/kuberay/rayservice.yaml), so it must stay importable from the package. It is resolved on first use rather
    than imported here, so that `toolace_r.serve.schema` or `.convert` can be imported without Ray Serve and FastAPI's
    app being built (PEP 562 module __getattr__; Ray's import_attr is a plain getattr, which this serves)."""
    if name == "build_app":
        from toolace_r.serve.app import build_app

        return build_app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
