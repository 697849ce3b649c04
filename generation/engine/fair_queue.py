"""The waiting line: start-time fair queuing across users."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from generation.engine.jobs import Job


class FairQueue:
    """Waiting jobs, run by tag, then arrival. A job's tag is one past its user's previous job's
    but never below the oldest tag still in the system: users take turns, a burst never jumps the
    others, and being away earns no credit."""

    def __init__(self) -> None:
        self._jobs: list[Job] = []
        self._last_tag: dict[str, int] = {}  # the tag of each user's latest job

    def push(self, job: Job, floor: int | None) -> None:
        """Queue a new job; `floor` is the oldest tag of the jobs in the system (None: none)."""
        if floor is None:
            self._last_tag.clear()
            floor = 0
        job.tag = max(floor, self._last_tag.get(job.user_key, -1) + 1)
        self._last_tag[job.user_key] = job.tag
        self._jobs.append(job)

    def requeue(self, jobs: Iterable[Job]) -> None:
        """Put back jobs that had been admitted; they keep their tags (and so their turn)."""
        self._jobs.extend(jobs)

    def take(self, count: int) -> list[Job]:
        """Remove and return the first `count` jobs in running order."""
        chosen = self._ordered()[: max(0, count)]
        for job in chosen:
            self._jobs.remove(job)
        return chosen

    def position(self, job: Job) -> int:
        """`job`'s 1-based place in the running order (it must be waiting)."""
        return self._ordered().index(job) + 1

    def remove(self, job: Job) -> None:
        self._jobs.remove(job)

    def clear(self) -> None:
        self._jobs.clear()

    def __contains__(self, job: object) -> bool:
        return job in self._jobs

    def __iter__(self) -> Iterator[Job]:
        return iter(list(self._jobs))  # a copy: callers remove jobs while they iterate

    def __len__(self) -> int:
        return len(self._jobs)

    def _ordered(self) -> list[Job]:
        return sorted(self._jobs, key=lambda job: (job.tag, job.seq))
