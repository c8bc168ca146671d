"""One decoding engine for probing, evaluation and serving (toolace_r.engine.core): continuous batching over one KV
cache (cache.py), per-sequence sampling (sampling.py)."""
from toolace_r.engine.core import Engine, PassStats, Request, Round, RoundStats, default_kv_cache_tokens
from toolace_r.engine.sampling import Sampling

__all__ = ["Engine", "PassStats", "Request", "Round", "RoundStats", "Sampling", "default_kv_cache_tokens"]
