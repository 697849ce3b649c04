"""A community's `MUSE_PRESETS` file for the tests: /poem with a form the built-ins lack (ode),
and a new task of the dialogue kind (screenplay), offered by /dialogue's and /compare's task."""

from __future__ import annotations

from pathlib import Path

POEM_AND_SCREENPLAY = """
[poem]
compare = true
system = "You are a poet. You reply with the poem only."
template = "Write a {form} about {topic}. {form_hint}"
main_field = "topic"
[poem.defaults]
form = "free"
[poem.choices.form.free]
hint = "Use 8 to 12 short lines."
[poem.choices.form.ode]
hint = "An ode praises its subject in three short stanzas."

[screenplay]
kind = "dialogue"
compare = true
system = "You write film scripts. Every line starts with the speaker's name and a colon."
template = "Scene: {scene}\\nCharacters: {characters}\\nTone: {tone}\\nWrite {lines} lines."
main_field = "scene"
[screenplay.defaults]
characters = "Ana, Ben"
lines = "2"
tone = "tense"
"""

ODE_HINT = "An ode praises its subject in three short stanzas."


def write_presets(folder: Path, text: str = POEM_AND_SCREENPLAY) -> Path:
    """`text` as `folder/presets.toml`, the path MUSE_PRESETS names."""
    path = folder / "presets.toml"
    path.write_text(text, encoding="utf-8")
    return path


def many_forms(count: int) -> str:
    """A /poem with `count` forms (Discord offers at most 25 choices per option)."""
    forms = "".join(f"[poem.choices.form.f{i}]\nhint = 'form {i}'\n" for i in range(count))
    return (
        "[poem]\ntemplate = 'Write a {form} about {topic}. {form_hint}'\n"
        "main_field = 'topic'\n[poem.defaults]\nform = 'f0'\n" + forms
    )
