"""`toolace-r serve`: start (or join) Ray, run the application on Ray Serve, block until Ctrl-C or SIGTERM."""
from __future__ import annotations

import signal
import time

from ray import serve

from toolace_r.config import Config
from toolace_r.serve.app import build_application


def serve_command(args, cfg: Config) -> int:
    """`toolace-r serve --model DIR [--config JOB.yaml] [--host H] [--port N] [serve.key=value ...]`: blocks."""
    import ray

    if getattr(args, "model", None):
        cfg.serve.model = args.model
    if getattr(args, "host", None):
        cfg.serve.host = args.host
    if getattr(args, "port", None):
        cfg.serve.port = args.port
    app = build_application(cfg)
    if not ray.is_initialized():
        ray.init(address=cfg.run.ray_address or None, include_dashboard=False)
    serve.start(http_options={"host": cfg.serve.host, "port": cfg.serve.port})
    serve.run(app, name="toolace-r", route_prefix=cfg.serve.route_prefix, blocking=False)
    base = f"http://{cfg.serve.host}:{cfg.serve.port}{cfg.serve.route_prefix.rstrip('/')}"
    print(f"toolace-r serving {cfg.serve.model} as {cfg.serve.model_name!r} at {base}/v1 (Ctrl-C to stop)", flush=True)
    def stop(_signum, _frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)  # `kill`, Kubernetes, systemd: shut down as on Ctrl-C
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        print("shutting down Serve", flush=True)
        serve.shutdown()
    return 0
