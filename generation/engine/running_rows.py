"""The running batch: its jobs, their keys and values, and their sampling state, kept in step.

Row `i` of the KV cache batch and of the sampler is `jobs[i]`; every change here keeps it so.
The engine's scheduler holds the lock while it calls these."""

from __future__ import annotations

from collections.abc import Iterator

import torch

from generation.engine.jobs import Job
from generation.engine.sampling import BatchSampler
from generation.model.batch_runner import KVBatch


class RunningRows:
    """The jobs being decoded, in row order, with their `KVBatch` and `BatchSampler` (both None
    when no row holds any)."""

    def __init__(self) -> None:
        self.jobs: list[Job] = []
        self.batch: KVBatch | None = None
        self.sampling: BatchSampler | None = None

    def __len__(self) -> int:
        return len(self.jobs)

    def __bool__(self) -> bool:
        return bool(self.jobs)

    def __contains__(self, job: object) -> bool:
        return job in self.jobs

    def __iter__(self) -> Iterator[Job]:
        return iter(list(self.jobs))  # a copy: callers drop rows while they iterate

    def join(self, jobs: list[Job], batch: KVBatch, sampling: BatchSampler) -> int:
        """Append freshly prefilled rows; return the row of the first. Merging copies the cache
        and can run out of memory: then nothing has changed."""
        first = len(self.jobs)
        if self.batch is not None:
            assert self.sampling is not None
            batch, sampling = self.batch.merge(batch), self.sampling.merge(sampling)
        self.batch, self.sampling = batch, sampling
        self.jobs.extend(jobs)
        return first

    def choose(self, logits: torch.Tensor, rows: list[int] | None = None) -> list[int]:
        """Sample the next token of each row (`rows`: which rows `logits` holds; None: all)."""
        assert self.sampling is not None
        return self.sampling.choose(logits, rows)

    def overwrite(self, job: Job, token: int) -> None:
        """`job`'s last chosen token was replaced by `token`: its row has seen that instead."""
        assert self.sampling is not None
        self.sampling.seen[self.jobs.index(job), -1] = token

    def drop(self, job: Job) -> None:
        """Take `job`'s row out of the jobs, the cache and the sampler."""
        row = self.jobs.index(job)
        self.jobs.pop(row)
        assert self.batch is not None and self.sampling is not None
        keep = [i for i in range(self.batch.size) if i != row]
        if keep:
            self.batch, self.sampling = self.batch.keep(keep), self.sampling.keep(keep)
        else:
            self.clear_state()

    def forget(self, job: Job) -> None:
        """Take `job` out of the jobs only, leaving the cache and sampler as they are (a failed
        or requeued step replaces them); once no job is left they go too."""
        if job in self.jobs:
            self.jobs.remove(job)
        if not self.jobs:
            self.clear_state()

    def clear(self) -> None:
        """No rows at all."""
        self.jobs.clear()
        self.clear_state()

    def clear_state(self) -> None:
        """Let go of the cache and the sampler (the jobs stay)."""
        self.batch = self.sampling = None
