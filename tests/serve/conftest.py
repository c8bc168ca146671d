"""Fixtures of the serving tests: the memorising tiny model, and the real app on a free loopback port."""
from __future__ import annotations

from pathlib import Path

import pytest

from processes import free_port
from serve_model import calling_model

from .common import app_for


@pytest.fixture(scope="module")
def model_dir() -> Path:
    return calling_model()


@pytest.fixture(scope="module")
def server(ray_local, model_dir):
    """Serve on a free 127.0.0.1 port with the default app at /; yields the base URL. Shuts Serve down after."""
    from ray import serve

    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        serve.run(app_for(model_dir), name="toolace-test", route_prefix="/", blocking=False)
        yield f"http://127.0.0.1:{port}"
    finally:
        serve.shutdown()
