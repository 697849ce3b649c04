"""The batch sampler: each row sampled as transformers would sample it alone, seeded per row."""

from __future__ import annotations

import pytest
import torch
from transformers import RepetitionPenaltyLogitsProcessor, TemperatureLogitsWarper, TopPLogitsWarper

from generation.engine import sampling
from generation.engine.sampling import BatchSampler, row_generator
from generation.types import GenerationRequest, Message

VOCAB = 40
CPU = torch.device("cpu")


def request(seed: int = 0, **kwargs) -> GenerationRequest:
    return GenerationRequest(messages=(Message("user", "x"),), seed=seed, **kwargs)


def sampler(requests: list[GenerationRequest], seen: list[list[int]]) -> BatchSampler:
    generators = [row_generator(r) for r in requests]
    return BatchSampler.for_rows(requests, generators, seen, VOCAB, CPU)


def transformers_probs(logits: torch.Tensor, seen: list[int], r: GenerationRequest):
    """The distribution `model.generate` samples from for one row with these settings."""
    ids = torch.tensor([seen])
    scores = RepetitionPenaltyLogitsProcessor(r.repetition_penalty)(ids, logits[None].clone())
    scores = TemperatureLogitsWarper(r.temperature)(ids, scores)
    if r.top_p < 1.0:
        scores = TopPLogitsWarper(r.top_p)(ids, scores)
    return torch.softmax(scores, dim=-1)[0]


@pytest.mark.parametrize(
    ("temperature", "top_p", "penalty"), [(0.7, 0.9, 1.2), (1.3, 0.5, 1.0), (0.8, 1.0, 1.1)]
)
def test_rows_draw_from_the_distribution_transformers_samples(temperature, top_p, penalty):
    logits = torch.randn(VOCAB, generator=torch.Generator().manual_seed(7)) * 2
    seen = [1, 2, 3, 5, 8, 13]
    settings = dict(temperature=temperature, top_p=top_p, repetition_penalty=penalty)
    rows = 4000
    batch = sampler([request(seed, **settings) for seed in range(rows)], [seen] * rows)
    picks = torch.tensor(batch.choose(logits.expand(rows, VOCAB).clone()))
    observed = torch.bincount(picks, minlength=VOCAB) / rows
    expected = transformers_probs(logits, seen, request(**settings))
    assert set(picks.tolist()) <= set(expected.nonzero().flatten().tolist())
    assert (observed - expected).abs().max() < 0.03  # > 4 standard errors at 4,000 draws


def test_a_seed_gives_the_same_tokens_alone_and_beside_other_rows():
    steps = [torch.randn(3, VOCAB, generator=torch.Generator().manual_seed(s)) for s in range(20)]
    mine = request(seed=42, temperature=0.9, top_p=0.8)
    others = [request(seed=1, temperature=1.2), request(seed=2, temperature=0.0)]
    together = sampler([others[0], mine, others[1]], [[4], [5], [6]])
    alone = sampler([mine], [[5]])
    for logits in steps:
        assert together.choose(logits)[1] == alone.choose(logits[1:2])[0]


def test_greedy_rows_take_the_best_penalised_token_and_spend_no_randomness():
    logits = torch.zeros(1, VOCAB)
    logits[0, 3], logits[0, 9] = 2.0, 1.9
    greedy = request(temperature=0.0, repetition_penalty=1.5)
    batch = sampler([greedy], [[3]])  # 3 was seen: 2.0 / 1.5 < 1.9
    state = batch.generators[0].get_state()
    assert batch.choose(logits) == [9]
    assert batch.choose(logits) == [3]  # now 9 is seen too: 9 → 1.27, 3 stays 1.33
    assert torch.equal(batch.generators[0].get_state(), state)


def test_chosen_tokens_count_as_seen_for_the_penalty():
    logits = torch.zeros(2, VOCAB)
    logits[:, 0], logits[:, 1] = 1.0, 0.9
    batch = sampler([request(temperature=0.0, repetition_penalty=2.0)] * 2, [[7], [7]])
    assert batch.choose(logits) == [0, 0]
    assert batch.choose(logits) == [1, 1]


def test_a_subset_of_rows_is_drawn_without_touching_the_others():
    logits = torch.randn(1, VOCAB)
    batch = sampler([request(seed=1), request(seed=2)], [[0], [0]])
    untouched = batch.generators[0].get_state()
    (token,) = batch.choose(logits, rows=[1])
    assert torch.equal(batch.generators[0].get_state(), untouched)
    assert set(batch.seen[1].tolist()) == {0, token}
    assert set(batch.seen[0].tolist()) == {0}


def test_merge_and_keep_carry_each_rows_settings_and_history():
    a = sampler([request(seed=1, temperature=0.0)], [[1]])
    b = sampler([request(seed=2, temperature=0.5), request(seed=3, top_p=0.3)], [[2], [3]])
    merged = a.merge(b)
    assert merged.size == 3
    assert merged.temperature.tolist() == pytest.approx([0.0, 0.5, request().temperature])
    kept = merged.keep([0, 2])
    assert kept.top_p.tolist() == pytest.approx([request().top_p, 0.3])
    assert set(kept.seen[0].tolist()) == {1}
    assert set(kept.seen[1].tolist()) == {3}
    assert kept.generators == [merged.generators[0], merged.generators[2]]


def test_a_nucleus_wider_than_the_shortlist_is_drawn_from_the_full_sort(monkeypatch):
    flat = torch.randn(4, VOCAB, generator=torch.Generator().manual_seed(3)) * 0.1
    requests = [request(seed=s, top_p=0.95, repetition_penalty=1.0) for s in range(4)]
    monkeypatch.setattr(sampling, "NUCLEUS_SHORTLIST", 4)  # far too few for a flat distribution
    shortlisted = sampler(requests, [[0]] * 4).choose(flat.clone())
    monkeypatch.setattr(sampling, "NUCLEUS_SHORTLIST", VOCAB)
    fully_sorted = sampler(requests, [[0]] * 4).choose(flat.clone())
    assert shortlisted == fully_sorted
