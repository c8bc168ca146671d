"""The engine's row cache (toolace_r.engine.cache): whatever rows join, leave, crop, copy or compact, each row's next
logits equal a fresh forward pass over its own sequence alone."""
from __future__ import annotations

import pytest
import torch

from conftest import sharp_llama
from toolace_r.engine.cache import GrowingLayer, RowCache

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def model():
    return sharp_llama(7, vocab_size=64, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512)


def _assert_exact(model, cache: RowCache, rows: list[int], logits: torch.Tensor, expected: list[list[int]]) -> None:
    for i, (row, seq) in enumerate(zip(rows, expected)):
        assert cache.seqs[row] == seq
        with torch.no_grad():
            ref = model(input_ids=torch.tensor([seq])).logits[0, -1]
        torch.testing.assert_close(logits[i, -1], ref, atol=1e-4, rtol=1e-4)


@torch.no_grad()
def test_rows_join_mid_decode_and_a_subset_pass_touches_only_its_rows(model):
    cache = RowCache(model, pad_id=0)
    a, b = cache.add_rows(2)
    cache.feed([a, b], [[5, 6, 7, 8], [9, 10]])
    cache.feed([a, b], [[11], [12]], right_aligned=True)
    (c,) = cache.add_rows(1)  # joins while a and b are mid-answer
    cache.feed([c], [[13, 14, 15, 16, 17, 18]])  # prefill of c alone: a and b get holes there
    assert cache.seqs[a] == [5, 6, 7, 8, 11] and cache.mask[a, -6:].sum() == 0
    logits = cache.feed([a, b, c], [[20], [21], [22]], right_aligned=True)
    _assert_exact(model, cache, [a, b, c], logits,
                  [[5, 6, 7, 8, 11, 20], [9, 10, 12, 21], [13, 14, 15, 16, 17, 18, 22]])


@torch.no_grad()
def test_a_released_row_takes_the_last_row_and_a_new_row_carries_nothing_over(model):
    """Rows in use stay 0..n-1 (passes over them are views): releasing a middle row moves the last one into it."""
    cache = RowCache(model, pad_id=0)
    a, b, c = cache.add_rows(3)
    cache.feed([a, b, c], [[5, 6, 7], [9, 10, 11, 12], [20, 21]])
    assert cache.release(a) == c and cache.rows == 2  # c now lives in row a
    assert cache.seqs[a] == [20, 21]
    (new,) = cache.add_rows(1)
    assert new == 2 and cache.mask[new].sum() == 0
    cache.feed([new], [[30, 31]])  # a pass over the new row alone (a view of the last row)
    logits = cache.feed([a, b, new], [[32], [33], [34]], right_aligned=True)
    _assert_exact(model, cache, [a, b, new], logits, [[20, 21, 32], [9, 10, 11, 12, 33], [30, 31, 34]])
    assert cache.release(new) is None and cache.rows == 2


@torch.no_grad()
def test_crop_copy_trim_and_compact_keep_rows_exact(model):
    cache = RowCache(model, pad_id=0)
    a, b, c = cache.add_rows(3)
    cache.feed([a, b, c], [[5, 6, 7, 8], [9, 10], [40, 41, 42]])
    cache.copy_row(a, [c])  # c becomes a copy of a (k continuations of one prompt)
    width = cache.width
    cache.feed([a, b, c], [[11, 12, 13, 14], [15], [16]], keep=4, right_aligned=True)
    cache.crop(a, 4 + 2)  # a keeps 2 of its 4 proposed tokens
    cache.trim()
    assert cache.width == width + 2
    assert cache.release(b) == c  # c moves into row b
    cache.feed([b], [[22, 23, 24, 25, 26]])  # b alone, then a alone: each leaves holes in the other row
    cache.feed([a], [[17, 18, 19, 20, 21]])
    assert cache.width == 16 and cache.excess() > 0.25
    cache.compact()
    assert cache.rows == 2 and cache.width == 11 and cache.excess() == 0
    logits = cache.feed([a, b], [[9], [9]], right_aligned=True)
    _assert_exact(model, cache, [a, b], logits, [[5, 6, 7, 8, 11, 12, 17, 18, 19, 20, 21, 9], [5, 6, 7, 8, 16, 22, 23, 24, 25, 26, 9]])


def test_growing_layer_appends_in_place_like_concatenation():
    """The layer holds what DynamicLayer's concatenation would, through buffer growth, row selection and crops,
    while its buffer grows geometrically (appends are not copies of the whole cache)."""
    layer, reference = GrowingLayer(), None
    gen = torch.Generator().manual_seed(0)
    buffers = set()
    for n in (5, 1, 1, 70, 1, 3):  # crosses the initial 64-column capacity
        k, v = torch.randn(3, 2, n, 4, generator=gen), torch.randn(3, 2, n, 4, generator=gen)
        keys, values = layer.update(k, v)
        reference = (k, v) if reference is None else tuple(torch.cat([r, x], dim=-2) for r, x in zip(reference, (k, v)))
        torch.testing.assert_close(keys, reference[0], rtol=0, atol=0)
        torch.testing.assert_close(values, reference[1], rtol=0, atol=0)
        buffers.add(layer._k.shape[-2])  # its capacity in columns
    assert layer.get_seq_length() == 81 and buffers == {64, 80, 100}  # a quarter more each time it is full
    layer.batch_select_indices(torch.tensor([2, 0]))
    torch.testing.assert_close(layer.keys, reference[0][[2, 0]], rtol=0, atol=0)
    layer.crop(-3)
    assert layer.get_seq_length() == 78
    torch.testing.assert_close(layer.values, reference[1][[2, 0], :, :78], rtol=0, atol=0)
