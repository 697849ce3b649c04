"""Muse's storage: one SQLite file, an async store with group commit, exports and statistics."""

from storage.errors import (
    ConversationGone,
    DatabaseReadOnly,
    DatabaseTooNew,
    GenerationGone,
    NotFound,
    StorageError,
    StoreClosed,
)
from storage.export import FORMATS, ExportFilters
from storage.models import Conversation, FeedbackOutcome, Generation, GuildSettings
from storage.stats import TaskModelStats
from storage.store import Store

__all__ = [
    "FORMATS",
    "Conversation",
    "ConversationGone",
    "DatabaseReadOnly",
    "DatabaseTooNew",
    "ExportFilters",
    "FeedbackOutcome",
    "Generation",
    "GenerationGone",
    "GuildSettings",
    "NotFound",
    "StorageError",
    "Store",
    "StoreClosed",
    "TaskModelStats",
]
