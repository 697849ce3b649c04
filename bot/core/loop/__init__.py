"""The learning loop: a guild's ratings and edits tune an adapter, which is checked, battles
the guild's default in the arena, and is promoted or retired by the votes — inside `muse run`,
with no shell and no restart. `runner.LoopRunner` drives it; the other modules are its parts."""
