"""The serving batch's cache (p2p.server.batch_cache) on plain tensors: whatever rows join and leave, and however the
buffers move, each row in use sees exactly its own keys, right-aligned, behind its own mask."""

from __future__ import annotations

import pytest
import torch

from p2p.server.batch_cache import BatchCache

HEADS, DIM, LAYERS = 2, 3, 2


def prefilled(lengths: list[int], seed: int) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], torch.Tensor,
                                                      list[torch.Tensor]]:
    """Per layer (keys, values) of left-padded rows as a prefill gives them, their mask, and each row's real keys of
    layer 0 (heads, tokens, dim)."""
    generator = torch.Generator().manual_seed(seed)
    width = max(lengths)
    keys = torch.randn((len(lengths), HEADS, width, DIM), generator=generator)
    mask = torch.tensor([[0] * (width - n) + [1] * n for n in lengths])
    tensors = [(keys + layer, -keys - layer) for layer in range(LAYERS)]
    return tensors, mask, [keys[i, :, width - n:] for i, n in enumerate(lengths)]


def seen(batch: BatchCache) -> list[torch.Tensor]:
    """What each row in use attends to in layer 0: the keys of its unmasked columns."""
    keys, values = batch.cache().layers[0].update(torch.zeros((batch.rows, HEADS, 0, DIM)),
                                                  torch.zeros((batch.rows, HEADS, 0, DIM)))
    mask = batch.mask[:batch.rows, batch.start:batch.end].bool()
    assert torch.equal(values, -keys)
    assert keys.shape[2] == batch.width and batch.cache().get_seq_length() == batch.width
    return [keys[i][:, mask[i]] for i in range(batch.rows)]


def step(batch: BatchCache, expected: list[torch.Tensor], value: float) -> None:
    """One decode step: a new key per row in use, written through the cache as the model writes it."""
    mask = batch.step_mask()
    new = torch.full((batch.rows, HEADS, 1, DIM), value)
    cache = batch.cache()
    for layer in range(LAYERS):
        keys, _ = cache.layers[layer].update(new + layer, -new - layer)
        assert keys.shape[2] == mask.shape[1] == batch.width + 1
    batch.advance()
    for i in range(batch.rows):
        expected[i] = torch.cat([expected[i], new[i]], dim=1)


def test_rows_join_decode_and_leave_each_seeing_only_its_own_keys():
    batch = BatchCache(slots=5, device="cpu", capacity=8)
    tensors, mask, expected = prefilled([3, 5], seed=0)
    batch.add(tensors, mask)
    for k in range(4):
        step(batch, expected, 10.0 + k)
    assert [t.shape[1] for t in seen(batch)] == [7, 9]

    tensors, mask, joined = prefilled([12, 2], seed=1)  # longer than the running rows: the buffers move and grow
    batch.add(tensors, mask)
    expected += joined
    assert batch.capacity > 8
    step(batch, expected, 20.0)
    assert all(torch.equal(a, b) for a, b in zip(seen(batch), expected))

    moved = batch.remove(0)  # the last row moves into slot 0
    assert moved == 3
    expected[0] = expected.pop()
    moved = batch.remove(2)  # the row of 13 keys: the widest leaves, so its padding columns go from the left
    assert moved == 2
    expected.pop(2)
    before = batch.width
    batch.trim()
    assert batch.width < before and batch.width == max(t.shape[1] for t in expected)
    for k in range(40):  # past the capacity: the columns in use move back to the left
        step(batch, expected, 30.0 + k)
    assert all(torch.equal(a, b) for a, b in zip(seen(batch), expected))

    while batch.rows:
        batch.remove(batch.rows - 1)
    batch.trim()
    assert batch.width == 0
    tensors, mask, expected = prefilled([4], seed=2)
    buffer = batch.cache().layers[0].buffers[0].data_ptr()
    batch.add(tensors, mask)  # a new batch starts at the buffers' left edge, in the same buffers
    assert batch.cache().layers[0].buffers[0].data_ptr() == buffer
    assert all(torch.equal(a, b) for a, b in zip(seen(batch), expected))


def test_rows_beyond_the_slots_are_refused():
    batch = BatchCache(slots=2, device="cpu")
    tensors, mask, _ = prefilled([2, 2, 2], seed=0)
    with pytest.raises(ValueError, match="2 slots"):
        batch.add(tensors, mask)
