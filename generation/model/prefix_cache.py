"""Keys and values of recent prompts, so a newcomer that starts the same way prefills only the rest.

Muse's prompts share long beginnings: a preset's system prompt and worked example, a chat's
earlier turns, a regenerated prompt in full. A newcomer whose tokens begin like a remembered
prompt copies those columns of the cache instead of recomputing them, which cuts the time to its
first token and the stall every running row takes while it is prefilled. Entries are whole
prompts (their longest common prefix with a newcomer is what gets used), kept most recently used
first within a byte budget. Keys and values depend on the adapter that computed them, so each
entry belongs to one model (an adapter slot, generation/model/adapters.py; 0: the base model) and is
only ever offered to rows of that model.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch

# Shorter shared beginnings are not worth a separate prefill group.
MIN_SHARED_TOKENS = 16
# A prompt's last tokens are always computed, at least this many. Attention over one or two
# new tokens rounds otherwise than over more (the smallest products take other kernels, far
# apart in the logits on the default int4 model), and a seeded request must give
# the same text whether its beginning was remembered or not (with `bf16_products.PREFILL_TILE`,
# which makes the weights' products alike). A prefill pads its products to 64 rows anyway.
MIN_REST_TOKENS = 16

LayerStates = list[tuple[torch.Tensor, torch.Tensor]]  # per layer: keys, values [1, heads, n, dim]
BASE_MODEL = 0


class PrefixCache:
    """Remembered prompts' cache columns, at most `budget_bytes` of them."""

    def __init__(
        self,
        budget_bytes: int,
        min_tokens: int = MIN_SHARED_TOKENS,
        min_rest: int = MIN_REST_TOKENS,
    ) -> None:
        self.budget_bytes = budget_bytes
        self.min_tokens = min_tokens
        self.min_rest = max(1, min_rest)  # the last position's logits choose the first token
        # By (model, prompt tokens).
        self._entries: OrderedDict[tuple[int, tuple[int, ...]], LayerStates] = OrderedDict()
        self._bytes = 0
        self.hits = 0  # prompts that reused a remembered beginning
        self.tokens_reused = 0

    def __len__(self) -> int:
        return len(self._entries)

    def match(
        self, tokens: Sequence[int], model: int = BASE_MODEL
    ) -> tuple[tuple[int, ...] | None, int]:
        """The prompt remembered for `model` sharing the longest beginning with `tokens`, and how
        many tokens of it to reuse: at least `min_tokens`, and always `min_rest` short of
        `tokens` (the last position must be computed: its logits choose the first new token;
        and see `MIN_REST_TOKENS`). (None, 0) when none does."""
        best_key, best = None, 0
        for owner, key in self._entries:
            if owner != model:
                continue
            shared = _shared_length(key, tokens)
            if shared > best:
                best_key, best = key, shared
        best = min(best, len(tokens) - self.min_rest)
        if best_key is None or best < self.min_tokens:
            return None, 0
        self._entries.move_to_end((model, best_key))
        return best_key, best

    def states(self, key: tuple[int, ...], length: int, model: int = BASE_MODEL) -> LayerStates:
        """The first `length` columns of the keys and values `model` computed for a remembered
        prompt."""
        return [(k[:, :, :length], v[:, :, :length]) for k, v in self._entries[(model, key)]]

    def add(self, tokens: Sequence[int], states: LayerStates, model: int = BASE_MODEL) -> None:
        """Remember `tokens`' cache columns as `model` computed them; a prompt remembered for
        `model` that `tokens` extends goes."""
        key = tuple(tokens)
        size = _nbytes(states)
        if size > self.budget_bytes:
            return
        for old in [
            old for old in self._entries if old[0] == model and key[: len(old[1])] == old[1]
        ]:
            self._forget(old)
        self._entries[(model, key)] = states
        self._bytes += size
        while self._bytes > self.budget_bytes:
            self._forget(next(iter(self._entries)))

    def clear(self) -> None:
        self._entries.clear()
        self._bytes = 0

    def _forget(self, key: tuple[int, tuple[int, ...]]) -> None:
        self._bytes -= _nbytes(self._entries.pop(key))


def _nbytes(states: LayerStates) -> int:
    return sum(k.numel() * k.element_size() + v.numel() * v.element_size() for k, v in states)


def _shared_length(a: Sequence[int], b: Sequence[int]) -> int:
    for i, (x, y) in enumerate(zip(a, b)):  # noqa: B905 - lengths differ by design
        if x != y:
            return i
    return min(len(a), len(b))
