"""A batch of sequences decoded together over one key/value cache that rows join and leave.

Rows are left-padded to a common length; the attention mask hides the padding and each row keeps
its own position ids, so a row's numbers match what it computes alone up to floating-point noise.
A newcomer is prefilled in a batch of its own and then merged into the running cache: the running
rows never wait for a whole batch to drain.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
import torch.nn.functional as F
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer


class KVBatch:
    """Rows' key/value cache, attention mask and lengths (real tokens cached per row)."""

    def __init__(self, cache: Any, mask: torch.Tensor, lengths: torch.Tensor) -> None:
        self.cache = cache
        self.mask = mask
        self.lengths = lengths

    @property
    def size(self) -> int:
        return int(self.mask.shape[0])

    @property
    def width(self) -> int:
        return int(self.mask.shape[1])

    def merge(self, other: KVBatch) -> KVBatch:
        """Both batches' rows in one (self's rows first)."""
        width = max(self.width, other.width)
        a, b = self._padded_layers(width), other._padded_layers(width)
        cache = _new_cache(self.cache)
        for layer, (ka, va), (kb, vb) in zip(cache.layers, a, b, strict=True):
            _fill_layer(layer, torch.cat([ka, kb]), torch.cat([va, vb]))
        mask = torch.cat([_pad_left(self.mask, width), _pad_left(other.mask, width)])
        return KVBatch(cache, mask, torch.cat([self.lengths, other.lengths]))

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
                _fill_layer(layer, keys, values)
        return KVBatch(self.cache, mask[:, start:], self.lengths.index_select(0, index))

    def truncate(self, width: int) -> None:
        """Undo a forward that failed part-way: cut every layer back to `width` columns."""
        for layer in self.cache.layers:
            if getattr(layer, "is_initialized", False) and layer.keys.shape[-2] > width:
                _fill_layer(layer, layer.keys[:, :, :width], layer.values[:, :, :width])

    def _padded_layers(self, width: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        pad = width - self.width
        return [
            (F.pad(layer.keys, (0, 0, pad, 0)), F.pad(layer.values, (0, 0, pad, 0)))
            for layer in self.cache.layers
        ]


class BatchRunner:
    """Runs the model's forward for prefills and decoding steps over `KVBatch`es."""

    def __init__(self, model: Any, pad_token_id: int) -> None:
        self.model = model
        self.pad_token_id = pad_token_id
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

    @torch.inference_mode()
    def prefill(self, sequences: list[list[int]]) -> tuple[KVBatch, torch.Tensor]:
        """A new batch holding `sequences` (left-padded); returns it and each row's last logits."""
        width = max(len(seq) for seq in sequences)
        ids = torch.full((len(sequences), width), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(sequences), width), dtype=torch.long)
        for row, seq in enumerate(sequences):
            ids[row, width - len(seq) :] = torch.tensor(seq, dtype=torch.long)
            mask[row, width - len(seq) :] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        cache = DynamicCache(config=self.model.config)
        logits = self._forward(ids, mask, positions, cache)
        lengths = torch.tensor([len(seq) for seq in sequences], device=self.device)
        return KVBatch(cache, mask, lengths), logits

    @torch.inference_mode()
    def step(self, batch: KVBatch, tokens: list[int]) -> torch.Tensor:
        """Feed one token per row; returns next-token logits [rows, vocab] (float32)."""
        ids = torch.tensor(tokens, dtype=torch.long, device=self.device).unsqueeze(1)
        width = batch.width
        mask = F.pad(batch.mask, (0, 1), value=1)
        try:
            logits = self._forward(ids, mask, batch.lengths.unsqueeze(1), batch.cache)
        except BaseException:
            batch.truncate(width)
            raise
        batch.mask = mask
        batch.lengths = batch.lengths + 1
        return logits

    def _forward(
        self, ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, cache: Any
    ) -> torch.Tensor:
        kwargs: dict[str, Any] = {self._cache_arg: cache, "use_cache": True}
        if self._logits_to_keep:
            kwargs["logits_to_keep"] = 1
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, **kwargs)
        return out.logits[:, -1, :].float()


def _new_cache(like: Any) -> Any:
    cache = DynamicCache()
    cache.layers = [DynamicLayer() for _ in like.layers]
    return cache


def _fill_layer(layer: Any, keys: torch.Tensor, values: torch.Tensor) -> None:
    if not getattr(layer, "is_initialized", False):
        layer.lazy_initialization(keys, values)
    layer.keys, layer.values = keys, values


def _pad_left(mask: torch.Tensor, width: int) -> torch.Tensor:
    return F.pad(mask, (width - mask.shape[1], 0), value=0)
