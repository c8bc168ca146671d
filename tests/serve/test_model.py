"""The model inside a replica (toolace_r.serve.model), on the memorising tiny model."""
from __future__ import annotations

import pytest

from serve_model import OPENAI_TOOLS, _project_tools
from toolace_r.serve.model import Job, Outcome, ServingModel

from .common import PARIS


@pytest.mark.slow
def test_a_failing_job_does_not_fail_its_batch_neighbours(model_dir):
    """Inside a replica: a job the model code rejects (here max_rounds=0, refused by adaptive_refine) gets its own
    exception back (→ 500 for that request only); the others in the same batch are answered."""
    engine = ServingModel.load(str(model_dir), dtype="float32")
    tools = _project_tools(OPENAI_TOOLS)
    good = Job(tools, PARIS, 3, 32, 0.0)
    bad = Job(tools, PARIS, 0, 32, 0.0)
    results = engine.run([good, bad, good])
    assert isinstance(results[1], Exception)
    assert all(isinstance(r, Outcome) and r.calls == [{"name": "get_weather", "arguments": {"city": "Paris"}}]
               for r in (results[0], results[2]))




def test_a_model_dir_in_object_storage_is_served_with_its_own_prompt_style(tiny_model_dir, tmp_path, monkeypatch):
    """`serve --model s3://…/iter_NNN/model`: the replica loads this node's copy and prompts in the style the model
    was trained with (its toolace_r.json: compact), not the configured fallback. The store is pyarrow's
    SubTreeFileSystem under a made-up `fake://` scheme, the layer an s3:// URI goes through."""
    import shutil

    import pyarrow.fs

    from toolace_r import storage

    root = tmp_path / "store"
    shutil.copytree(tiny_model_dir, root / "bucket" / "m")
    real = storage.filesystem
    monkeypatch.setattr(storage, "filesystem", lambda uri: (
        (pyarrow.fs.SubTreeFileSystem(str(root), pyarrow.fs.LocalFileSystem()), str(uri)[len("fake://"):])
        if storage.scheme(uri) == "fake" else real(uri)))
    monkeypatch.setenv(storage.CACHE_ENV, str(tmp_path / "cache"))
    engine = ServingModel.load("fake://bucket/m", dtype="float32", style="toolace")
    assert engine.style == "compact"
    assert ServingModel.load(str(tiny_model_dir), dtype="float32", style="toolace").style == "compact"


def test_a_model_is_asked_to_refine_the_way_it_was_trained(tiny_model_dir, tmp_path):
    """refine.keep_answer travels with the model (its toolace_r.json); the configured value only fills in for a
    model that does not say."""
    import shutil

    from toolace_r.models import write_meta

    assert ServingModel.load(str(tiny_model_dir), dtype="float32", keep_answer="confirm").keep_answer == "confirm"
    confirm = tmp_path / "confirm"
    shutil.copytree(tiny_model_dir, confirm)
    write_meta(confirm, keep_answer="confirm")
    assert ServingModel.load(str(confirm), dtype="float32").keep_answer == "confirm"
    write_meta(confirm, keep_answer="repeat")
    assert ServingModel.load(str(confirm), dtype="float32", keep_answer="confirm").keep_answer == "repeat"


def test_single_pass_answers_equal_hf_generate_while_requests_arrive_together(tiny_model_dir):
    """Greedy equivalence on the serving path: jobs submitted together (one engine, continuous batching) answer, in
    one round, exactly what `model.generate` gives for each prompt alone."""
    import torch

    from toolace_r.config import BuiltinPoolConfig
    from toolace_r.data.pool import load_builtin

    served = ServingModel.load(str(tiny_model_dir), dtype="float32")
    _, heldout = load_builtin(BuiltinPoolConfig(n_train=10, n_heldout=6, seed=4))
    jobs = []
    for s in heldout:
        ids = served.tokenize(served.prompt(s.tools, s.messages))
        jobs.append(Job(s.tools, s.messages, 1, 16, 0.0, len(ids), ids))
    outcomes = served.run(jobs)
    tok = served.tokenizer
    for job, out in zip(jobs, outcomes):
        with torch.no_grad():
            ref = served.model.generate(torch.tensor([job.prompt_ids]), max_new_tokens=16, do_sample=False,
                                        pad_token_id=tok.pad_token_id, eos_token_id=sorted(served.engine.eos))
        assert out.answer == tok.decode(ref[0, len(job.prompt_ids):], skip_special_tokens=True).strip()
        assert out.rounds == 1
