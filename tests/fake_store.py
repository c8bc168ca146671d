"""A `fake://bucket/...` object store for the storage tests, in every process of a Ray run.

The store is pyarrow's SubTreeFileSystem over a local dir (env FAKE_STORE_ROOT): the same pyarrow filesystem layer
an `s3://` URI resolves to, so storage.py's remote branch — mirror, pull/push, per-node model cache, Ray Train's
storage_filesystem — runs unchanged; only S3 itself is absent. `install()` plugs the scheme into
`storage.filesystem` of this process; as Ray's `worker_process_setup_hook` it does the same in every Ray worker
(probe and eval actors, train workers), which resolve the URIs the driver hands them exactly as they would s3://.

    python tests/fake_store.py RUN_OVERRIDES...   # the driver of tests/test_storage_run.py, in its own process
"""
from __future__ import annotations

import os
import sys

ROOT_ENV = "FAKE_STORE_ROOT"
WORKER_CACHE_ENV = "FAKE_STORE_WORKER_CACHE"  # TOOLACE_CACHE_DIR of the Ray workers: apart from the driver's


def install() -> None:
    """Resolve `fake://B/P` to (SubTreeFileSystem(ROOT), "B/P"); any other location as before. Idempotent."""
    import pyarrow.fs

    from toolace_r import storage

    if getattr(storage.filesystem, "fake_store", False):
        return
    root, real = os.environ[ROOT_ENV], storage.filesystem

    def filesystem(uri):
        if storage.scheme(uri) == "fake":
            return pyarrow.fs.SubTreeFileSystem(root, pyarrow.fs.LocalFileSystem()), str(uri)[len("fake://"):]
        return real(uri)

    filesystem.fake_store = True
    storage.filesystem = filesystem


def main(overrides: list[str]) -> int:
    """Run the driver's loop with the fake store in the driver and in every Ray worker. Ray is started here (the
    driver's ray_session.start_or_join then joins it) because the setup hook must be given when Ray starts."""
    import ray

    from toolace_r.config import load_config
    from toolace_r.driver import run

    install()
    env = {"TOOLACE_CACHE_DIR": os.environ[WORKER_CACHE_ENV], ROOT_ENV: os.environ[ROOT_ENV]}
    ray.init(address="local", num_cpus=2, include_dashboard=False,
             runtime_env={"worker_process_setup_hook": "fake_store.install", "env_vars": env})
    try:
        report = run(load_config(None, overrides))
    finally:
        ray.shutdown()
    print("final model:", report.get("final_model_dir"))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
