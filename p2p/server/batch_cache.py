"""The running batch's attention keys and values: one slot per row in buffers that outlive the rows, so a row joins,
decodes and leaves without copying anyone else's cache.

A `transformers` DynamicCache grows by concatenation: every decode step copies the whole batch's cache, and taking in
or dropping a row meant copying it twice more (left-padding it to a new width, then selecting the rows that stay).
Under traffic where requests come and go at every token boundary (clients that hang up after their first chunk)
those copies took as long as the decode steps themselves. Here:

- the buffers hold `slots` rows and `capacity` columns; the rows in use are slots `0..rows-1` and the columns in use
  `start..end-1`, every row right-aligned at `end` (left-padded, its padding masked out);
- a decode step writes one column per row (`update`) and returns a view of the columns in use;
- a row joins by writing its own prefilled keys into the next free slot, right-aligned at `end`;
- a row leaves by moving the last row into its slot (`remove`): the caller reorders its rows the same way;
- columns that every row masks out are dropped from the left by moving `start`, never by copying.

Columns outside a row's mask may hold another row's stale keys: they are finite and masked, so they add exactly
nothing to its attention. The buffers grow (and the columns in use move back to the left) only when `end` reaches
`capacity`, so a copy of the whole cache happens once every `capacity - width` steps instead of at every step.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers.cache_utils import Cache, DynamicLayer


class BatchCache:
    """Keys, values and attention mask of up to `slots` rows; `cache()` is what the model's forward pass takes."""

    def __init__(self, slots: int, device: torch.device | str, capacity: int = 256):
        self.slots, self.device, self.capacity = slots, torch.device(device), capacity
        self.rows = self.start = self.end = 0
        self.mask = torch.zeros((slots, capacity), dtype=torch.long, device=self.device)
        self._layers: list[_SlotLayer] = []  # one per decoder layer, made by the first add()

    @property
    def width(self) -> int:
        return self.end - self.start

    def cache(self) -> Cache:
        """A `transformers` Cache over the rows in use: the model writes each new token's keys into column `end`."""
        return Cache(layers=self._layers)

    def step_mask(self) -> torch.Tensor:
        """The attention mask of one decode step (the columns in use and the new token's); call `advance` after."""
        self._fit(left=self.width, right=1)
        self.mask[:self.rows, self.end] = 1
        return self.mask[:self.rows, self.start:self.end + 1]

    def advance(self) -> None:
        """The decode step wrote column `end` of every row."""
        self.end += 1

    def add(self, tensors: list[tuple[torch.Tensor, torch.Tensor]], mask: torch.Tensor) -> None:
        """Take in prefilled rows: per layer (keys, values) of shape (rows, heads, tokens, head_dim), and their
        (rows, tokens) attention mask, right-aligned with the running rows."""
        new, length = mask.shape
        if self.rows + new > self.slots:
            raise ValueError(f"{self.rows} rows in use and {new} more do not fit {self.slots} slots")
        if not self._layers:
            self._layers = [_SlotLayer(self) for _ in tensors]
        if self.rows == 0:  # a new batch: from the buffers' left edge, where they have room
            self.start = self.end = min(length, self.capacity - 1)
        self._fit(left=max(length, self.width), right=1)
        begin = self.end - length
        # the newcomers may be longer: the columns left of `start` are zero in the mask of every row in use (a new
        # slot's row is zeroed whole, and a row moves only within start..end), so they are the running rows' padding
        self.start = min(self.start, begin)
        rows = slice(self.rows, self.rows + new)
        self.mask[rows] = 0
        self.mask[rows, begin:self.end] = mask
        for layer, (keys, values) in zip(self._layers, tensors):
            layer.write(rows, begin, keys, values)
        self.rows += new

    def remove(self, row: int) -> int:
        """Free `row`'s slot by moving the last row into it; returns the slot that moved (the caller moves its own
        record of that row to `row`), which is `row` itself when it was the last."""
        last = self.rows - 1
        if row != last:
            columns = slice(self.start, self.end)
            self.mask[row, columns] = self.mask[last, columns]
            for layer in self._layers:
                layer.move(last, row, columns)
        self.rows = last
        return last

    def clear(self) -> None:
        """No row in use (the buffers stay, to be written over)."""
        self.rows = self.start = self.end = 0

    def trim(self) -> None:
        """Drop from the left the columns that are padding in every row in use."""
        if self.rows == 0:
            self.start = self.end = 0
            return
        used = (self.mask[:self.rows, self.start:self.end].sum(0) > 0).nonzero()
        self.start += int(used[0]) if len(used) else self.width

    def _fit(self, left: int, right: int) -> None:
        """Room for `left` columns before `end` and `right` after it; moves the columns in use (and grows the
        buffers) only when they do not fit where they are."""
        if self.end - left >= 0 and self.end + right <= self.capacity:
            return
        width = self.width
        left = max(left, width)
        capacity = max(self.capacity, 2 * (left + right))
        mask = torch.zeros((self.slots, capacity), dtype=torch.long, device=self.device)
        mask[:self.rows, left - width:left] = self.mask[:self.rows, self.start:self.end]
        for layer in self._layers:
            layer.relocate(capacity, self.start, self.end, left - width, self.rows)
        self.mask, self.capacity, self.start, self.end = mask, capacity, left - width, left


class _SlotLayer(DynamicLayer):
    """One decoder layer's buffers; what the model sees is the view of the rows and columns in use."""

    def __init__(self, batch: BatchCache):
        super().__init__()
        self.batch = batch
        self.buffers: tuple[torch.Tensor, torch.Tensor] | None = None

    def write(self, rows: slice, begin: int, keys: torch.Tensor, values: torch.Tensor) -> None:
        if self.buffers is None:
            shape = (self.batch.slots, keys.shape[1], self.batch.capacity, keys.shape[3])
            self.buffers = (torch.zeros(shape, dtype=keys.dtype, device=keys.device),
                            torch.zeros(shape, dtype=values.dtype, device=values.device))
        end = begin + keys.shape[2]
        self.buffers[0][rows, :, begin:end] = keys
        self.buffers[1][rows, :, begin:end] = values
        self.is_initialized = True

    def move(self, source: int, target: int, columns: slice) -> None:
        for buffer in self.buffers:
            buffer[target, :, columns] = buffer[source, :, columns]

    def relocate(self, capacity: int, start: int, end: int, to: int, rows: int) -> None:
        if self.buffers is None:
            return
        moved = []
        for buffer in self.buffers:
            grown = buffer.new_zeros((buffer.shape[0], buffer.shape[1], capacity, buffer.shape[3]))
            grown[:rows, :, to:to + end - start] = buffer[:rows, :, start:end]
            moved.append(grown)
        self.buffers = (moved[0], moved[1])

    # ---- what the model calls

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        raise RuntimeError("a BatchCache takes its rows through add(), never from a forward pass")

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any,
               **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        batch = self.batch
        end = batch.end + key_states.shape[2]
        self.buffers[0][:batch.rows, :, batch.end:end] = key_states
        self.buffers[1][:batch.rows, :, batch.end:end] = value_states
        return (self.buffers[0][:batch.rows, :, batch.start:end], self.buffers[1][:batch.rows, :, batch.start:end])

    def get_seq_length(self) -> int:
        return self.batch.width

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.batch.width + query_length, 0
