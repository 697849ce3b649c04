"""What Muse says, in plain text, whatever the front end (Discord adds its own markdown)."""

from __future__ import annotations

NOTICE = (
    "👋 First time with Muse? Your prompts, the generated texts and your ratings are stored "
    "by this server's Muse and may be used to train models. See `/privacy` for what is kept "
    "(and to opt out of training), and `/forget` to delete all your data."
)
GONE = "That generation was deleted or forgotten, so it can no longer be rated."
DELETED = "That text was deleted or forgotten."
COMPARISON_GONE = "That comparison was deleted or forgotten."
FINAL_VOTE = (
    "🔒 Your vote on this battle is final: you chose {choice}. Arena votes cannot change once "
    "the models are revealed."
)
NOT_YOURS = "Only the person who asked for this text, or a moderator, can {what} it."

FINISH_NOTES = {
    "length": "✂️ Cut at the length limit — press ▶ Continue for more.",
    "cancelled": "⏹ Stopped.",
    "timeout": "⌛ Timed out.",
    "error": "⚠️ Generation failed.",
    "interrupted": "⚠️ Muse restarted while writing this — press 🔁 to try again.",
}


def finish_note(reason: str | None) -> str:
    """A line saying why a text ended early (empty for a normal end)."""
    return FINISH_NOTES.get(reason or "", "")


def footer(
    model_id: str, tokens_out: int, total_ms: float | None, persona: str | None = None
) -> str:
    """`model · as Persona · N tokens · S s · AI-generated`."""
    seconds = (total_ms or 0.0) / 1000
    name = model_id or "model"
    voice = f" · as {persona}" if persona else ""
    return f"{name}{voice} · {tokens_out} tokens · {seconds:.1f} s · AI-generated"


def thanks_rating(thumbs: str | None = None, stars: int | None = None) -> str:
    """The answer to a saved rating."""
    if stars is not None:
        return f"Thanks — saved {'⭐' * stars}"
    return f"Thanks — saved {'👍' if thumbs == 'up' else '👎'}"


def thanks_vote(winner: str) -> str:
    """The answer to a saved A/B vote."""
    said = "a tie" if winner == "tie" else f"{winner} is better"
    return f"Thanks — saved ({said})"
