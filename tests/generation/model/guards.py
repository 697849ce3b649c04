"""The prompts and the thresholds of the int8/int4 quality guard, shared by the quantised
layers' tests and the C++ step's."""

from __future__ import annotations

PROMPTS = [
    "Write two lines of dialogue for a blacksmith in a fantasy game.",
    "Write a poem about the sea.",
    "Tell me a story about a wizard who lost his hat.",
    "List three fruits.",
    "Describe a haunted lighthouse.",
    "Write a product description for a lantern.",
]


GUARDS = {"int8": (0.9, 1.0, 3.0), "int4": (0.95, 0.5, 1.5)}  # agreement, tie, largest
