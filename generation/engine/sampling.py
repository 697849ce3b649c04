"""Choosing every running row's next token in one go: repetition penalty, temperature, top-p and
seeded sampling, with each row's own settings.

The rows' settings and the tokens each row has seen live in tensors in the batch's row order, so a
step costs a handful of tensor operations and one transfer to the host, however many rows there
are (one Python loop per row cost time in every row on the CPU, and a device sync a row on a
GPU).
Each row draws its random numbers from its own generator, so a seed gives the same text whatever
else shares the batch (up to the batch's floating-point noise).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from generation.types import GenerationRequest

# The nucleus almost always lies in the top few hundred tokens: only those are sorted, unless
# their mass falls short of top-p (then that row takes the full sort, so the result stays exact).
NUCLEUS_SHORTLIST = 256


def row_generator(request: GenerationRequest) -> torch.Generator:
    """A request's own random stream (on the host: one draw per sampled token)."""
    generator = torch.Generator()
    generator.manual_seed(request.seed)
    return generator


class BatchSampler:
    """Sampling settings and seen-token sets of a batch's rows, in the batch's row order."""

    def __init__(
        self,
        temperature: torch.Tensor,
        top_p: torch.Tensor,
        penalty: torch.Tensor,
        seen: torch.Tensor,
        generators: list[torch.Generator],
    ) -> None:
        self.temperature = temperature  # [rows]; <= 0 means greedy
        self.top_p = top_p  # [rows]
        self.penalty = penalty  # [rows]; 1.0 means none
        # [rows, n] token ids in each row's prompt and text so far; a row shorter than the
        # longest repeats its first id (the penalty is applied once per distinct token anyway).
        # Ids rather than a [rows, vocab] mask: the penalty then touches n columns, not 49k.
        self.seen = seen
        self.generators = generators
        # Decided on the host once, not with a device sync every step.
        self._sampled = [row for row, t in enumerate(temperature.tolist()) if t > 0]
        self._any_plain = any(p >= 1.0 for p in top_p.tolist())

    @classmethod
    def for_rows(
        cls,
        requests: Sequence[GenerationRequest],
        generators: list[torch.Generator],
        tokens: Sequence[Sequence[int]],
        vocab: int,
        device: torch.device,
    ) -> BatchSampler:
        """Rows for `requests`, each having seen `tokens` (its prompt and text so far)."""

        def column(values: list[float]) -> torch.Tensor:
            return torch.tensor(values, dtype=torch.float32, device=device)

        width = max(len(ids) for ids in tokens)
        seen = torch.tensor([_padded(list(ids), width) for ids in tokens], device=device)
        return cls(
            column([r.temperature for r in requests]),
            column([r.top_p for r in requests]),
            column([r.repetition_penalty for r in requests]),
            seen,
            list(generators),
        )

    @property
    def size(self) -> int:
        return len(self.generators)

    def merge(self, other: BatchSampler) -> BatchSampler:
        """Both samplers' rows in one (self's rows first), as `KVBatch.merge`."""
        return BatchSampler(
            torch.cat([self.temperature, other.temperature]),
            torch.cat([self.top_p, other.top_p]),
            torch.cat([self.penalty, other.penalty]),
            torch.cat(_same_width(self.seen, other.seen)),
            self.generators + other.generators,
        )

    def keep(self, rows: list[int]) -> BatchSampler:
        """Only `rows`, as `KVBatch.keep`."""
        index = torch.tensor(rows, dtype=torch.long, device=self.seen.device)
        return BatchSampler(
            self.temperature.index_select(0, index),
            self.top_p.index_select(0, index),
            self.penalty.index_select(0, index),
            self.seen.index_select(0, index),
            [self.generators[row] for row in rows],
        )

    def choose(self, logits: torch.Tensor, rows: list[int] | None = None) -> list[int]:
        """The next token of `rows` (default: every row) from their `logits` [len(rows), vocab]
        (float32); each becomes part of its row's seen tokens."""
        part = self if rows is None else self.keep(rows)
        tokens = part._pick(logits)
        if rows is None:
            column = tokens
        else:
            column = self.seen[:, 0].clone()  # a repeat: nothing new for the other rows
            column[torch.tensor(rows, device=column.device)] = tokens
        self.seen = torch.cat([self.seen, column.unsqueeze(1)], dim=1)
        return tokens.tolist()

    def _pick(self, logits: torch.Tensor) -> torch.Tensor:
        logits = self._penalised(logits)
        sampled = self._sampled
        if len(sampled) == self.size:
            return self._sample(logits, None, sampled)
        tokens = logits.argmax(dim=-1)
        if sampled:
            index = torch.tensor(sampled, device=logits.device)
            picks = self._sample(logits.index_select(0, index), index, sampled)
            tokens = tokens.index_copy(0, index, picks)
        return tokens

    def _penalised(self, logits: torch.Tensor) -> torch.Tensor:
        """The CTRL repetition penalty, as transformers applies it: each seen token's score
        shrinks if positive and grows if negative (once per token, however often seen)."""
        penalty = self.penalty.unsqueeze(1)
        picked = logits.gather(1, self.seen)
        picked = torch.where(picked < 0, picked * penalty, picked / penalty)
        return logits.scatter(1, self.seen, picked)

    def _sample(
        self, logits: torch.Tensor, index: torch.Tensor | None, rows: list[int]
    ) -> torch.Tensor:
        """Seeded top-p draws for the rows `rows` (`index` on the device; None: all rows),
        whose logits are `logits` (a tensor of our own: scaled in place)."""
        temperature, top_p = self.temperature, self.top_p
        if index is not None:
            temperature, top_p = temperature.index_select(0, index), top_p.index_select(0, index)
        probs = torch.softmax(logits.div_(temperature.unsqueeze(1)), dim=-1)
        # One uniform number per row from the row's own generator: inverse-CDF sampling.
        uniform = torch.cat([torch.rand(1, generator=self.generators[row]) for row in rows])
        uniform = uniform.to(probs.device)
        weights, order = probs.topk(min(NUCLEUS_SHORTLIST, probs.shape[-1]), dim=-1)
        picks = order.gather(1, _nucleus_draw(weights, top_p, uniform)).squeeze(1)
        plain = top_p >= 1.0
        wide = ~plain & (weights.sum(dim=-1) < top_p)
        if self._any_plain and bool(
            plain.any()
        ):  # no nucleus: draw from the whole distribution, unsorted
            picks[plain] = _inverse_cdf(probs[plain], uniform[plain]).squeeze(1)
        if bool(wide.any()):  # rare: a nucleus wider than the shortlist takes the full sort
            weights, order = probs[wide].sort(dim=-1, descending=True)
            place = _nucleus_draw(weights, top_p[wide], uniform[wide])
            picks[wide] = order.gather(1, place).squeeze(1)
        return picks


def _nucleus_draw(
    weights: torch.Tensor, top_p: torch.Tensor, uniform: torch.Tensor
) -> torch.Tensor:
    """Positions [rows, 1] drawn from descending `weights` cut to the smallest prefix whose
    mass reaches each row's top-p (always at least one token)."""
    cut = weights.cumsum(-1) - weights > top_p.unsqueeze(1)
    return _inverse_cdf(weights.masked_fill(cut, 0.0), uniform)


def _inverse_cdf(weights: torch.Tensor, uniform: torch.Tensor) -> torch.Tensor:
    """Positions [rows, 1] where each row's `uniform` falls in its cumulative (unnormalised)
    weights. right=True gives a zero weight an empty interval, so it is never chosen."""
    cumulative = weights.cumsum(-1)
    target = (uniform * cumulative[:, -1]).unsqueeze(1)
    place = torch.searchsorted(cumulative, target, right=True)
    # Rounding can put the target at the very top: take the last token with weight there.
    last = (weights > 0).long().cumsum(-1).argmax(dim=-1, keepdim=True)
    return torch.minimum(place, last)


def _padded(ids: list[int], width: int) -> list[int]:
    return ids + ids[:1] * (width - len(ids))


def _same_width(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Both id tables widened to the wider one's columns by repeating each row's first id."""
    width = max(a.shape[1], b.shape[1])
    return tuple(torch.cat([t, t[:, :1].expand(-1, width - t.shape[1])], dim=1) for t in (a, b))
