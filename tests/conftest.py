"""Shared pytest fixtures: one local Ray for the whole session, one tiny model, the shared data dir.

Everything here is session-scoped on purpose: starting Ray or training a tokenizer once per test would make the suite
minutes slower on the 2-core CI machine.
"""
from __future__ import annotations

from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = (REPO_ROOT / ".." / "shared" / "data").resolve()

# The tiny model tests share: small enough to build in seconds and run forward passes on CPU.
TINY_SHAPE = dict(vocab_size=512, hidden_size=64, num_layers=2, num_heads=4, intermediate_size=128,
                  max_position_embeddings=1024, seed=0)


@pytest.fixture(scope="session")
def ray_local():
    """A local Ray with 2 CPUs and no dashboard, shut down when the session ends. Reuses a running one."""
    import ray

    started = False
    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False)
        started = True
    yield ray
    if started:
        ray.shutdown()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A tiny Llama model (hidden 64, 2 layers, vocab 512) whose tokenizer was trained on the built-in pool text.
    Saved once per session as a plain HF dir; tests must not modify it (copy it first)."""
    from toolace_r.config import BuiltinPoolConfig, TinyModelConfig
    from toolace_r.data.pool import load_builtin, pool_texts
    from toolace_r.models import build_tiny_model

    train, heldout = load_builtin(BuiltinPoolConfig(n_train=400, n_heldout=50, seed=0))
    out = tmp_path_factory.mktemp("tiny_model")
    return build_tiny_model(out, pool_texts(train + heldout, "compact"), TinyModelConfig(**TINY_SHAPE), "compact")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data relative to the repo root (real public data sets); skips when this checkout has none."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data dir {SHARED_DATA} is absent (real data sets live outside the repo)")
    return SHARED_DATA


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models run fastest single-threaded; on a shared 2-core box, 2 threads spin against each other (30x).
    Modules that decode tiny models use it with `pytestmark = pytest.mark.usefixtures("one_torch_thread")`."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def sharp_llama(seed: int, cls=None, **config):
    """A random tiny LlamaForCausalLM with larger weights than the default init (std 0.3): sharp logits, few near-ties,
    so greedy answers are stable under the float differences of batching. `config`: LlamaConfig fields."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    model = (cls or LlamaForCausalLM)(LlamaConfig(**config)).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0, 0.3)
    return model
