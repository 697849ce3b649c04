"""How closely one way of computing the model's next-token logits agrees with another.

Along a reference model's greedy text (teacher-forced): another model's forward over it, or the
logits of decoding steps of one row; and a runner's steps taken the Python way beside the C++
step. The int8/int4 quality guard (tests/generation/model/) and the quality figures of
`benchmarks/peers.py` are both measured with these, so the two cannot drift apart.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from generation.model.batch_runner import BatchRunner
from generation.model.loading import LoadedModel
from generation.model.prompting import encode_messages
from generation.types import Message


@functools.cache
def greedy_text(model: nn.Module, ids: tuple[int, ...], tokens: int) -> torch.Tensor:
    """`model`'s greedy continuation of `ids` (the prompt included), computed once."""
    with torch.inference_mode():
        return model.generate(torch.tensor([ids]), max_new_tokens=tokens, do_sample=False)


def along_greedy(
    reference: LoadedModel, text: str, tokens: int = 32
) -> tuple[list[int], torch.Tensor, torch.Tensor]:
    """`text`'s prompt ids, `reference`'s greedy continuation of them ([1, ids + tokens]) and its
    next-token logits along it ([tokens, vocab])."""
    ids = encode_messages(reference.tokenizer, (Message("user", text),), 4096)
    whole = greedy_text(reference.model, tuple(ids), tokens)
    with torch.inference_mode():
        want = reference.model(whole).logits[0, len(ids) - 1 : -1].float()
    return ids, whole, want


def teacher_forced(
    reference: LoadedModel, other: LoadedModel, text: str, tokens: int = 32
) -> tuple[torch.Tensor, torch.Tensor]:
    """Both models' next-token logits along `reference`'s greedy continuation of `text`."""
    ids, whole, want = along_greedy(reference, text, tokens)
    with torch.inference_mode():
        got = other.model(whole).logits[0, len(ids) - 1 : -1].float()
    return want, got


@contextmanager
def python_step(runner: BatchRunner) -> Iterator[None]:
    """Inside, `runner`'s steps take the Python way."""
    native, runner._decode.native = runner._decode.native, None
    try:
        yield
    finally:
        runner._decode.native = native


def stepped_logits(runner: BatchRunner, ids: list[int], whole: torch.Tensor) -> torch.Tensor:
    """The next-token logits along `whole` (`ids` and a continuation, [1, tokens]) from one
    prefill of `ids` and then one decoding step of one row per token."""
    batch, first = runner.prefill([ids])
    got = [first[0]] + [runner.step(batch, [int(t)])[0] for t in whole[0, len(ids) : -1]]
    return torch.stack(got)
