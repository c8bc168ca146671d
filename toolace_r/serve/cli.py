"""`toolace-r serve`: start (or join) Ray, run the application on Ray Serve, block until Ctrl-C or SIGTERM, then stop
within STOP_WITHIN_S.

Stopping: Serve is shut down first (its controller stops the proxies and drains the replicas), then Ray is stopped if
this command started it (`ray.shutdown()` ends the local node it started, and only disconnects from a cluster it
joined). Serve's graceful stop takes at least `graceful_shutdown_wait_loop_s` (2 s) per replica even when idle, and
up to `graceful_shutdown_timeout_s` (20 s) while a request is in flight, so the wait for it is bounded by
SERVE_STOP_WAIT_S: past that, stopping the local Ray ends Serve anyway, and on a joined cluster Serve's controller
carries on stopping by itself. A second Ctrl-C skips the wait; a third exits at once, whatever still hangs.
"""
from __future__ import annotations

import logging
import os
import signal
import threading
import time

from ray import serve

from toolace_r import ray_session
from toolace_r.config import Config
from toolace_r.serve.app import build_application

log = logging.getLogger(__name__)

STOP_WITHIN_S = 5.0  # Ctrl-C → process exit (tests/serve/test_cli.py holds the command to it)
# Of those, the graceful Serve stop may take this long. Measured on a loaded 2-core machine after Ctrl-C: Serve's stop
# 2.3-2.5 s when idle (its replica wait loop alone is 2 s), ray.shutdown() 1.3-1.6 s, interpreter exit 0.5-1 s; so the
# wait is cut at 1 s, and past it stopping the local Ray ends Serve (in-flight requests get ~1 s to finish). At 2 s the
# whole stop took 3.8-4.2 s alone and over 5 s beside an ablation run: 1 s keeps the 5 s promise on a busy machine.
SERVE_STOP_WAIT_S = 1.0


def serve_command(args, cfg: Config) -> int:
    """`toolace-r serve --model DIR [--config JOB.yaml] [--host H] [--port N] [serve.key=value ...]`: blocks."""
    if getattr(args, "model", None):
        cfg.serve.model = args.model
    if getattr(args, "host", None):
        cfg.serve.host = args.host
    if getattr(args, "port", None):
        cfg.serve.port = args.port
    app = build_application(cfg)
    # Ray started or joined here → ray.shutdown() when done: it stops the local Ray this started, or only disconnects
    # from a cluster it joined (RAY_ADDRESS, run.ray_address, a `ray start` node). A caller that had Ray up stops it.
    owns_ray = ray_session.start_or_join(cfg, service=True)

    def stop(_signum, _frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)  # `kill`, Kubernetes, systemd: shut down as on Ctrl-C
    # Ctrl-C explicitly too: a process started with SIGINT ignored (a launcher's or a shell's background job) would
    # otherwise inherit the ignore, and Python installs no KeyboardInterrupt handler then
    signal.signal(signal.SIGINT, stop)
    try:
        serve.start(http_options={"host": cfg.serve.host, "port": cfg.serve.port})
        serve.run(app, name="toolace-r", route_prefix=cfg.serve.route_prefix, blocking=False)
        base = f"http://{cfg.serve.host}:{cfg.serve.port}{cfg.serve.route_prefix.rstrip('/')}"
        print(f"toolace-r serving {cfg.serve.model} as {cfg.serve.model_name!r} at {base}/v1 (Ctrl-C to stop)",
              flush=True)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:  # also after a failed start, and on Ctrl-C while Serve was still starting
        shut_down(owns_ray)
    return 0


def shut_down(owns_ray: bool, serve_wait_s: float = SERVE_STOP_WAIT_S) -> None:
    """Stop Serve (waiting at most `serve_wait_s`), then Ray if `owns_ray`. Signals during the stop: the first
    skips the rest of the wait for Serve, the next exits the process at once (status 128 + signal number)."""
    import ray

    hurry = threading.Event()

    def on_signal(signum, _frame):
        if hurry.is_set():
            os._exit(128 + signum)  # asked a third time: whatever hangs, the user wants the prompt back
        hurry.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    print("shutting down Serve", flush=True)
    stopped = threading.Event()

    def stop_serve() -> None:
        try:
            serve.shutdown()
        except Exception:  # noqa: BLE001 - a dead cluster cannot be stopped more; say so and stop the rest
            log.exception("serve.shutdown() failed")
        finally:
            stopped.set()

    # A daemon thread: if Serve's controller does not answer, nothing waits for it at interpreter exit.
    threading.Thread(target=stop_serve, name="serve-shutdown", daemon=True).start()
    deadline = time.monotonic() + serve_wait_s
    while not stopped.is_set() and not hurry.is_set() and time.monotonic() < deadline:
        stopped.wait(0.05)
    if not stopped.is_set():
        ends = "stopping Ray ends it" if owns_ray else "its controller goes on stopping it on the cluster"
        print(f"Serve has not finished stopping; {ends}", flush=True)
    if owns_ray:
        print("stopping Ray", flush=True)
        ray.shutdown()
