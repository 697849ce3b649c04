"""Muse's storage: an SQLite file or a PostgreSQL database, an async store with group commit,
exports and statistics."""

from storage.errors import (
    ConversationGone,
    DatabaseReadOnly,
    DatabaseTooNew,
    DatabaseUnreachable,
    GenerationGone,
    ModelExists,
    NotFound,
    StorageError,
    StoreClosed,
)
from storage.export import FORMATS, ExportFilters
from storage.rows import (
    ArenaVote,
    Conversation,
    FeedbackOutcome,
    Generation,
    GuildSettings,
    ModelRecord,
    Persona,
)
from storage.stats import TaskModelStats
from storage.store import Store

__all__ = [
    "FORMATS",
    "ArenaVote",
    "Conversation",
    "ConversationGone",
    "DatabaseReadOnly",
    "DatabaseTooNew",
    "DatabaseUnreachable",
    "ExportFilters",
    "FeedbackOutcome",
    "Generation",
    "GenerationGone",
    "GuildSettings",
    "ModelExists",
    "ModelRecord",
    "NotFound",
    "Persona",
    "StorageError",
    "Store",
    "StoreClosed",
    "TaskModelStats",
]
