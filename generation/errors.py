"""What the generation layer raises to its callers."""

from __future__ import annotations


class OptionError(ValueError):
    """A bad option: a request's field, a command's option, or a preset file that is not
    valid; the message says which and why (and is shown to the user as it is)."""


class EngineBusy(Exception):
    """The queue is full; `retry_after_s` estimates when a slot frees up."""

    def __init__(self, retry_after_s: float, reason: str = "Muse is busy") -> None:
        self.retry_after_s = retry_after_s
        super().__init__(f"{reason} — try again in {retry_after_s:.0f} s")


class EngineDead(Exception):
    """The engine stopped serving (a hung step or a model that failed to load)."""


class GenerationFailed(Exception):
    """The worker failed this request; the cause is chained."""


class UnknownModel(Exception):
    """A request named a model this backend does not serve; `served` lists what it does."""

    def __init__(self, model: str, served: list[str]) -> None:
        self.model = model
        self.served = served
        listed = ", ".join(repr(name) for name in served) or "nothing yet"
        super().__init__(f"The model {model!r} is not served here; served: {listed}.")


class ModelLoadError(RuntimeError):
    """The model could not be loaded; the message names it and says what to do."""


class AdapterError(Exception):
    """An adapter that cannot be served; the message says why."""
