"""What the tuning library raises to its callers."""

from __future__ import annotations


class TuningError(Exception):
    """Tuning cannot start or finish; the message says why and what to do."""


class TuningStopped(TuningError):
    """Tuning was stopped (the stop event, or Ctrl-C) before an adapter was written."""
