"""The engine inside a replica (toolace_r.serve.engine), on the memorising tiny model."""
from __future__ import annotations

import pytest

from serve_model import OPENAI_TOOLS, _project_tools
from toolace_r.serve.engine import Engine, Job, Outcome

from .common import PARIS


@pytest.mark.slow
def test_a_failing_job_does_not_fail_its_batch_neighbours(model_dir):
    """Inside a replica: a job the model code rejects (here max_rounds=0, refused by adaptive_refine) gets its own
    exception back (→ 500 for that request only); the others in the same batch are answered."""
    engine = Engine.load(str(model_dir), dtype="float32")
    tools = _project_tools(OPENAI_TOOLS)
    good = Job(tools, PARIS, 3, 32, 0.0)
    bad = Job(tools, PARIS, 0, 32, 0.0)
    results = engine.run([good, bad, good])
    assert isinstance(results[1], Exception)
    assert all(isinstance(r, Outcome) and r.calls == [{"name": "get_weather", "arguments": {"city": "Paris"}}]
               for r in (results[0], results[2]))


