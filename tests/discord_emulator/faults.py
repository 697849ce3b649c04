"""Fault injection for the REST API: 429s, 5xx and latency, deterministic or seeded."""

from __future__ import annotations

import math
import random
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any


@dataclass
class FaultRule:
    """Answer matching requests with ``status``: every Nth, a seeded fraction, or the next few."""

    status: int
    methods: frozenset[str] = frozenset({"PATCH"})
    path: str | None = None  # a regular expression searched in the path
    every: int = 0
    fraction: float = 0.0
    remaining: int | None = None  # stop after this many injections
    retry_after: float = 0.05
    seen: int = 0
    injected: int = 0

    def matches(self, method: str, path: str) -> bool:
        """Whether the rule applies to this request at all."""
        if "*" not in self.methods and method not in self.methods:
            return False
        return self.path is None or re.search(self.path, path) is not None


@dataclass
class DelayRule:
    """Delay matching responses by ``seconds``."""

    seconds: float
    methods: frozenset[str] = frozenset({"*"})
    path: str | None = None

    def matches(self, method: str, path: str) -> bool:
        """Whether the delay applies to this request."""
        if "*" not in self.methods and method not in self.methods:
            return False
        return self.path is None or re.search(self.path, path) is not None


@dataclass(frozen=True)
class InjectedFault:
    """A fault that was served."""

    method: str
    path: str
    status: int
    at: float


@dataclass
class Faults:
    """The emulator's fault configuration (``emu.faults``); empty means a healthy Discord."""

    seed: int = 0
    rules: list[FaultRule] = field(default_factory=list)
    delays: list[DelayRule] = field(default_factory=list)
    injected: list[InjectedFault] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)

    def rate_limit(
        self,
        *,
        every: int = 0,
        fraction: float = 0.0,
        count: int | None = None,
        methods: Iterable[str] = ("PATCH",),
        path: str | None = None,
        retry_after: float = 0.05,
    ) -> FaultRule:
        """Answer matching requests with 429 (``Via`` header, ``retry_after`` body)."""
        return self._add(429, every, fraction, count, methods, path, retry_after)

    def server_error(
        self,
        *,
        every: int = 0,
        fraction: float = 0.0,
        count: int | None = None,
        methods: Iterable[str] = ("PATCH",),
        path: str | None = None,
        status: int = 500,
    ) -> FaultRule:
        """Answer matching requests with a 5xx (discord.py retries after 1 s, 3 s, …)."""
        return self._add(status, every, fraction, count, methods, path, 0.0)

    def fail_next(
        self,
        status: int = 429,
        *,
        count: int = 1,
        methods: Iterable[str] = ("PATCH",),
        path: str | None = None,
        retry_after: float = 0.05,
    ) -> FaultRule:
        """Fail the next ``count`` matching requests."""
        return self._add(status, 1, 0.0, count, methods, path, retry_after)

    def delay(
        self, seconds: float, *, methods: Iterable[str] = ("*",), path: str | None = None
    ) -> DelayRule:
        """Add latency to matching responses."""
        rule = DelayRule(seconds, frozenset(m.upper() for m in methods), path)
        self.delays.append(rule)
        return rule

    def clear(self) -> None:
        """Back to a healthy Discord (the log of injected faults is kept)."""
        self.rules.clear()
        self.delays.clear()

    def count(self, status: int | None = None) -> int:
        """How many faults (of ``status``) were served."""
        return sum(1 for f in self.injected if status is None or f.status == status)

    def delay_for(self, method: str, path: str) -> float:
        """Total delay for a request."""
        return sum(d.seconds for d in self.delays if d.matches(method, path))

    def decide(self, method: str, path: str) -> FaultRule | None:
        """The rule that fails this request, if any, and note it."""
        for rule in self.rules:
            if not rule.matches(method, path):
                continue
            if rule.remaining is not None and rule.injected >= rule.remaining:
                continue
            rule.seen += 1
            hit = (rule.every and rule.seen % rule.every == 0) or (
                rule.fraction and self._rng.random() < rule.fraction
            )
            if hit:
                rule.injected += 1
                self.injected.append(InjectedFault(method, path, rule.status, time.monotonic()))
                return rule
        return None

    def _add(
        self,
        status: int,
        every: int,
        fraction: float,
        count: int | None,
        methods: Iterable[str],
        path: str | None,
        retry_after: float,
    ) -> FaultRule:
        if not every and not fraction:
            raise ValueError("give every=N or fraction=F")
        rule = FaultRule(
            status=status,
            methods=frozenset(m.upper() for m in methods),
            path=path,
            every=every,
            fraction=fraction,
            remaining=count,
            retry_after=retry_after,
        )
        self.rules.append(rule)
        return rule


def fault_response(rule: FaultRule) -> tuple[int, dict[str, Any], dict[str, str]]:
    """Status, JSON body and headers for an injected fault, shaped like Discord's."""
    if rule.status == 429:
        body = {
            "message": "You are being rate limited.",
            "retry_after": rule.retry_after,
            "global": False,
            "code": 0,
        }
        headers = {
            "Via": "1.1 google",
            "Retry-After": str(max(1, math.ceil(rule.retry_after))),
            "X-RateLimit-Scope": "user",
        }
        return 429, body, headers
    return rule.status, {"message": f"{rule.status}: Internal Server Error", "code": 0}, {}
