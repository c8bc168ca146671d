"""Fixtures of the training tests."""
from __future__ import annotations

import pytest

from toolace_r.models import load_tokenizer


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    return load_tokenizer(str(tiny_model_dir))
