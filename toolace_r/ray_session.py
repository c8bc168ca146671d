"""Starting or joining Ray: the one place in the package that calls `ray.init`.

Every command and stage that needs Ray — the driver's loop, the ablation, probing, evaluation on actors, training,
`toolace-r serve` — calls `start_or_join(cfg)`. It does nothing when Ray is up already (the driver's, an ablation's,
a test's), and returns True only when this call connected, so the caller that started Ray is the one that stops it
(`ray.shutdown()` ends a local Ray it started, and only disconnects from a cluster it joined).

Two kinds of caller:
- a job (run, ablate, probe, train, eval): inside `ray job submit` (RAY_ADDRESS is set) or with run.ray_address it
  joins that cluster without asking for resources; otherwise it starts a private local Ray with run.num_cpus CPUs
  (never silently joining someone else's `ray start` on this machine: set run.ray_address=auto for that). Ray's
  console output goes to RUN_DIR/logs (toolace_r.console).
- a service (`toolace-r serve`, `service=True`): a foreground process whose Ray output stays on its terminal; without
  run.ray_address it takes `ray.init`'s own default — RAY_ADDRESS, else a Ray already running on this machine (a
  `ray start` node), else a new local one with all CPUs.
"""
from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from toolace_r.config import Config

log = logging.getLogger(__name__)


def quiet_state_api_warnings() -> None:
    """Ray worker setup hook: Ray Train's placement-group cleaner asks the state API every second whether the train
    controller is alive and warns each time the API is down, as it always is on a Ray started without a dashboard —
    half of a demo run's log was that line. Only that logger is raised to ERROR; its other errors still show."""
    logging.getLogger("ray.train.v2._internal.execution.controller.placement_group_cleaner").setLevel(logging.ERROR)


def start_or_join(cfg: Config, *, service: bool = False) -> bool:
    """Connect this process to Ray (see the module doc); True when this call did, False when Ray was up already.

    A job's Ray output goes to RUN_DIR/logs (toolace_r.console): Ray's loggers and Ray Data's execution reports to
    ray.log, every worker's stdout/stderr (training workers' step lines, Ray Train's report and checkpoint lines,
    DeepSpeed, actors) to workers.log; Ray Data's progress bars are off — each stage shows one bar of its own. When
    Ray is already up nothing is changed."""
    import ray

    if ray.is_initialized():
        return False
    if service:
        ray.init(address=cfg.run.ray_address or None, include_dashboard=False)
        return True
    import ray.data  # before log_to_dir: importing it installs Ray Data's console handler

    from toolace_r import console
    from toolace_r.storage import RunDir

    log_dir = console.log_to_dir(RunDir(cfg.run.dir).local / "logs")
    console.redirect_native_stderr(log_dir)  # Ray's C++ core worker writes to fd 2 itself (a command line only)
    data_ctx = ray.data.DataContext.get_current()
    data_ctx.enable_progress_bars = False  # Ray Data's "Running Dataset" blocks and per-operator bars
    data_ctx.enable_operator_progress_bars = False
    data_ctx.execution_options.preserve_order = True  # outputs in input order (toolace_r.raydata)
    routable = console.worker_log_routing_available()
    address = cfg.run.ray_address or os.environ.get("RAY_ADDRESS", "")
    if address:
        log.info("joining the Ray cluster at %s", address)
        ray.init(address=address, log_to_driver=routable)
    else:
        log.info("starting a local Ray (%s CPUs)", cfg.run.num_cpus or "all")
        # no dashboard on a private local Ray: less memory and no ports to collide with; without it Ray's state API is
        # down, and the quiet_state_api_warnings hook keeps Ray Train's once-a-second complaint about it out of the log
        ray.init(address="local", num_cpus=cfg.run.num_cpus or None, include_dashboard=False, log_to_driver=routable,
                 runtime_env={"worker_process_setup_hook": f"{__name__}.quiet_state_api_warnings"})
    if routable:
        console.route_worker_logs(log_dir)
    log.info("Ray resources: %s; Ray's and the workers' logs: %s%s",
             {k: v for k, v in ray.cluster_resources().items() if not k.startswith("node:")}, log_dir,
             "" if routable else " (worker logs: the Ray session's logs dir)")
    return True
