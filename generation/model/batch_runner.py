"""A batch of sequences decoded together over one key/value cache that rows join and leave.

Rows are left-padded to a common length; the attention mask hides the padding and each row keeps
its own position ids, so a row's numbers match what it computes alone up to floating-point noise.
A newcomer is prefilled in a batch of its own and then merged into the running cache: the running
rows never wait for a whole batch to drain.
"""

from __future__ import annotations

import inspect
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch
import torch.nn.functional as F
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from generation.model.adapters import BASE_SLOT, Adapters
from generation.model.llama_step import LlamaStep
from generation.model.prefill_mode import prefilling
from generation.model.prefix_cache import LayerStates, PrefixCache

# Room for this many more tokens per layer before its buffers are reallocated: each row's room
# for a 1.7B model is 0.4 MB a column, so spare room for many rows is memory the peak pays for;
# a reallocation every 16 steps costs ~1 % of them (benchmarks/README.md, "Memory").
SPARE_COLUMNS = 16


class GrowingLayer(DynamicLayer):
    """A cache layer with room to grow: a decoding step writes its new column into spare room,
    where transformers' `DynamicLayer` copies the whole layer with `torch.cat` (that copy was
    ~18 % of a 12-row step at 100 tokens on the CPU). `keys` / `values` are views of the room."""

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
            self.assign(key_states, value_states)
            return self.keys, self.values
        used, extra = self.keys.shape[-2], key_states.shape[-2]
        if used + extra > self._key_room.shape[-2] or key_states.shape[0] != self.keys.shape[0]:
            self.assign(
                torch.cat([self.keys, key_states], dim=-2),
                torch.cat([self.values, value_states], dim=-2),
            )
        else:
            self._key_room[:, :, used : used + extra] = key_states
            self._value_room[:, :, used : used + extra] = value_states
            self.grow(extra)
        return self.keys, self.values

    def rooms_for(self, extra: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The key and value rooms [rows, heads, room, dim], with space for `extra` columns after
        the cached ones (moved into bigger rooms if there is none), for a caller that writes
        them itself and then calls `grow(extra)`."""
        used = self.keys.shape[-2]
        if used + extra > self._key_room.shape[-2]:
            self.assign(self.keys, self.values)
        return self._key_room, self._value_room

    def grow(self, extra: int) -> None:
        """Take in the `extra` columns written into the rooms after the cached ones."""
        used = self.keys.shape[-2] + extra
        self.keys = self._key_room[:, :, :used]
        self.values = self._value_room[:, :, :used]

    def assign_stacked(
        self, keys: list[torch.Tensor], values: list[torch.Tensor], width: int
    ) -> None:
        """Hold the rows of all `keys` / `values` parts, each left-padded (zeros) to `width`
        columns: one copy of each part straight into the new room."""
        if not self.is_initialized:
            self.lazy_initialization(keys[0], values[0])
        self._key_room = _stacked_room(keys, width)
        self._value_room = _stacked_room(values, width)
        self.keys = self._key_room[:, :, :width]
        self.values = self._value_room[:, :, :width]

    def assign(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        """Hold copies of `keys` and `values` [rows, heads, tokens, dim], with spare room."""
        if not self.is_initialized:
            self.lazy_initialization(keys, values)
        self._key_room = _with_room(keys)
        self._value_room = _with_room(values)
        self.keys = self._key_room[:, :, : keys.shape[-2]]
        self.values = self._value_room[:, :, : values.shape[-2]]


def _stacked_room(parts: list[torch.Tensor], width: int) -> torch.Tensor:
    rows = sum(part.shape[0] for part in parts)
    _, heads, _, dim = parts[0].shape
    room = parts[0].new_zeros((rows, heads, width + SPARE_COLUMNS, dim))
    first = 0
    for part in parts:
        room[first : first + part.shape[0], :, width - part.shape[-2] : width] = part
        first += part.shape[0]
    return room


def _with_room(states: torch.Tensor) -> torch.Tensor:
    rows, heads, tokens, dim = states.shape
    room = states.new_empty((rows, heads, tokens + SPARE_COLUMNS, dim))
    room[:, :, :tokens] = states
    return room


class KVBatch:
    """Rows' key/value cache, attention mask, lengths (real tokens cached per row) and the
    adapter slot each row is decoded with (generation/model/adapters.py; 0: the base model)."""

    def __init__(
        self,
        cache: Any,
        mask: torch.Tensor,
        lengths: torch.Tensor,
        slots: tuple[int, ...] | None = None,
    ) -> None:
        self.cache = cache
        self.mask = mask
        self.lengths = lengths
        self.slots = slots if slots is not None else (BASE_SLOT,) * int(mask.shape[0])

    @property
    def size(self) -> int:
        return int(self.mask.shape[0])

    @property
    def width(self) -> int:
        return int(self.mask.shape[1])

    def merge(self, other: KVBatch) -> KVBatch:
        """Both batches' rows in one (self's rows first)."""
        return KVBatch.joined([self, other])

    @staticmethod
    def joined(batches: list[KVBatch]) -> KVBatch:
        """All `batches`' rows in one, in order: each row copied once, however many batches
        (merging them two by two held every intermediate batch beside the next)."""
        if len(batches) == 1:
            return batches[0]
        width = max(batch.width for batch in batches)
        cache = _new_cache(len(batches[0].cache.layers))
        # Into new rooms, so the batches stay intact until the merge has succeeded (an
        # out-of-memory leaves them usable).
        for index, layer in enumerate(cache.layers):
            parts = [batch.cache.layers[index] for batch in batches]
            layer.assign_stacked([p.keys for p in parts], [p.values for p in parts], width)
        mask = torch.cat([_pad_left(batch.mask, width) for batch in batches])
        lengths = torch.cat([batch.lengths for batch in batches])
        slots = tuple(slot for batch in batches for slot in batch.slots)
        return KVBatch(cache, mask, lengths, slots)

    def keep(self, rows: list[int]) -> KVBatch:
        """Only `rows`, with columns that are padding in every kept row dropped."""
        index = torch.tensor(rows, dtype=torch.long, device=self.mask.device)
        mask = self.mask.index_select(0, index)
        used = mask.any(dim=0).nonzero()
        start = int(used[0]) if used.numel() else mask.shape[1]
        for layer in self.cache.layers:
            if getattr(layer, "is_initialized", False):
                keys = layer.keys.index_select(0, index)[:, :, start:]
                values = layer.values.index_select(0, index)[:, :, start:]
                _set_states(layer, keys, values)
        lengths = self.lengths.index_select(0, index)
        return KVBatch(self.cache, mask[:, start:], lengths, tuple(self.slots[r] for r in rows))

    def row_states(self, row: int) -> LayerStates:
        """Row `row`'s keys and values without padding, as [1, heads, tokens, dim] copies."""
        columns = self.mask[row].nonzero().flatten()
        return [
            (
                layer.keys[row : row + 1].index_select(2, columns),
                layer.values[row : row + 1].index_select(2, columns),
            )
            for layer in self.cache.layers
        ]

    def truncate(self, width: int) -> None:
        """Undo a forward that failed part-way: cut every layer back to `width` columns."""
        for layer in self.cache.layers:
            if getattr(layer, "is_initialized", False) and layer.keys.shape[-2] > width:
                _set_states(layer, layer.keys[:, :, :width], layer.values[:, :, :width])


class BatchRunner:
    """Runs the model's forward for prefills and decoding steps over `KVBatch`es; with
    `adapters`, each row through its own adapter."""

    def __init__(self, model: Any, pad_token_id: int, adapters: Adapters | None = None) -> None:
        self.model = model
        self.pad_token_id = pad_token_id
        self.adapters = adapters
        self.device = next(model.parameters()).device
        params = inspect.signature(model.forward).parameters
        # transformers 5 names the cache argument `cache`; earlier releases `past_key_values`.
        self._cache_arg = "cache" if "cache" in params else "past_key_values"
        self._logits_to_keep = "logits_to_keep" in params
        probe = DynamicCache(config=model.config)
        # Merging rows needs plain growing layers (no sliding windows or recurrent state).
        self.supports_merging = bool(probe.layers) and all(
            type(layer) is DynamicLayer for layer in probe.layers
        )
        self._layers = len(probe.layers)
        # Decoding steps without transformers' forward around the layers, where written out.
        self._decode = (
            LlamaStep(model) if self.supports_merging and LlamaStep.supports(model) else None
        )

    def _model_cache(self) -> Any:
        """The model's own cache (sliding windows and all), for models whose rows cannot merge."""
        return DynamicCache(config=self.model.config)

    @torch.inference_mode()
    def prefill(
        self,
        sequences: list[list[int]],
        prefix: LayerStates | None = None,
        slots: list[int] | None = None,
    ) -> tuple[KVBatch, torch.Tensor]:
        """A new batch holding `sequences` (row i through the adapter `slots[i]`; None: all the
        base model); returns it and each row's last logits.

        With `prefix` (the keys and values of the first n tokens, which every sequence starts
        with, computed by the same adapter) only the rest is computed: rows are laid out as
        [prefix][padding][rest]."""
        row_slots = tuple(slots) if slots is not None else (BASE_SLOT,) * len(sequences)
        shared = prefix[0][0].shape[-2] if prefix else 0
        rests = [seq[shared:] for seq in sequences]
        width = max(len(rest) for rest in rests)
        ids = torch.full((len(rests), width), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(rests), width), dtype=torch.long)
        for row, rest in enumerate(rests):
            ids[row, width - len(rest) :] = torch.tensor(rest, dtype=torch.long)
            mask[row, width - len(rest) :] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        positions = shared + (mask.cumsum(-1) - 1).clamp(min=0)
        cache = _new_cache(self._layers) if self.supports_merging else self._model_cache()
        if prefix:
            rows = len(rests)
            for layer, (keys, values) in zip(cache.layers, prefix, strict=True):
                layer.assign(keys.expand(rows, -1, -1, -1), values.expand(rows, -1, -1, -1))
            mask = F.pad(mask, (shared, 0), value=1)
        with prefilling():  # quantised layers: bf16 weights for many rows
            logits = self._forward(ids, mask, positions, cache, row_slots)
        lengths = torch.tensor([len(seq) for seq in sequences], device=self.device)
        return KVBatch(cache, mask, lengths, row_slots), logits

    def prefill_reusing(
        self, sequences: list[list[int]], prefixes: PrefixCache, slots: list[int] | None = None
    ) -> tuple[list[int], KVBatch, torch.Tensor]:
        """Prefill `sequences` (row i through the adapter `slots[i]`), each group that starts
        like a prompt remembered for the same adapter reusing its columns (one forward per
        group), and remember them all. Returns the sequences' order in the batch (indices into
        `sequences`), the batch and the last logits in that order."""
        slots = list(slots) if slots is not None else [BASE_SLOT] * len(sequences)
        if not self.supports_merging:  # its layers cannot take borrowed columns either
            batch, logits = self.prefill(sequences, slots=slots)
            return list(range(len(sequences))), batch, logits
        # Rows without a remembered beginning share one forward, whatever their adapters.
        groups: dict[tuple[int, tuple[int, ...]] | None, list[tuple[int, int]]] = {}
        for index, seq in enumerate(sequences):
            key, shared = prefixes.match(seq, slots[index])
            group = None if key is None else (slots[index], key)
            groups.setdefault(group, []).append((index, shared))
        order: list[int] = []
        parts: list[KVBatch] = []
        logits: list[torch.Tensor] = []
        for group, members in groups.items():
            prefix = None
            if group is not None:
                shared = min(count for _, count in members)
                prefix = prefixes.states(group[1], shared, group[0])
                prefixes.hits += len(members)
                prefixes.tokens_reused += shared * len(members)
            rows = [sequences[i] for i, _ in members]
            part, part_logits = self.prefill(rows, prefix, [slots[i] for i, _ in members])
            parts.append(part)
            logits.append(part_logits)
            order += [i for i, _ in members]
        del prefix, part  # the last group's prefix and rooms go with the others'
        batch = KVBatch.joined(parts)
        parts.clear()  # each part's rooms go now, not when this frame ends
        for row, index in enumerate(order):
            prefixes.add(sequences[index], batch.row_states(row), slots[index])
        return order, batch, torch.cat(logits)

    @torch.inference_mode()
    def step(self, batch: KVBatch, tokens: list[int]) -> torch.Tensor:
        """Feed one token per row; returns next-token logits [rows, vocab] (float32)."""
        ids = torch.tensor(tokens, dtype=torch.long, device=self.device).unsqueeze(1)
        width = batch.width
        mask = F.pad(batch.mask, (0, 1), value=1)
        positions = batch.lengths.unsqueeze(1)
        try:
            if self._decode is not None:  # then the batch's cache has growing layers
                routed = self.adapters is not None and any(batch.slots)
                with self._routed(batch.slots):
                    logits = self._decode(ids, mask, positions, batch.cache, routed)
            else:
                logits = self._forward(ids, mask, positions, batch.cache, batch.slots)
        except BaseException:
            batch.truncate(width)
            raise
        batch.mask = mask
        batch.lengths = batch.lengths + 1
        return logits

    def _forward(
        self,
        ids: torch.Tensor,
        mask: torch.Tensor,
        positions: torch.Tensor,
        cache: Any,
        slots: tuple[int, ...],
    ) -> torch.Tensor:
        kwargs: dict[str, Any] = {self._cache_arg: cache, "use_cache": True}
        if self._logits_to_keep:
            kwargs["logits_to_keep"] = 1
        with self._routed(slots):
            out = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, **kwargs)
        return out.logits[:, -1, :].float()

    def _routed(self, slots: tuple[int, ...]) -> AbstractContextManager[None]:
        """Each row through its adapter; no adapter served: the model exactly as it is."""
        return nullcontext() if self.adapters is None else self.adapters.route(slots)


def _new_cache(layers: int) -> Any:
    cache = DynamicCache()
    cache.layers = [GrowingLayer() for _ in range(layers)]
    return cache


def _pad_left(mask: torch.Tensor, width: int) -> torch.Tensor:
    return F.pad(mask, (width - mask.shape[1], 0), value=0)


def _set_states(layer: Any, keys: torch.Tensor, values: torch.Tensor) -> None:
    """Give a layer new states: ours keep spare room; a model's own layers (for models whose rows
    cannot merge) just hold the tensors."""
    if isinstance(layer, GrowingLayer):
        layer.assign(keys, values)
    else:
        layer.keys, layer.values = keys, values
