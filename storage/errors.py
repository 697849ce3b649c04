"""Exceptions the store raises; the bot turns them into short answers."""

from __future__ import annotations

from storage.location import redact, scrub


class StorageError(Exception):
    """Base class of every error the store raises on purpose."""


class DatabaseTooNew(StorageError):
    """The file was written by a newer Muse: its schema has migrations this code does not know."""

    def __init__(self, path: str, found: int, supported: int) -> None:
        self.path = path
        self.found = found
        self.supported = supported
        super().__init__(
            f"{path} has schema version {found}, but this Muse knows only versions up to "
            f"{supported}. Upgrade Muse (or use a backup made by this version) to open it."
        )


class NotFound(StorageError, LookupError):
    """A row the caller refers to does not exist (any more)."""


class GenerationGone(NotFound):
    """The generation is missing, forgotten or deleted: it can no longer be rated or changed."""

    def __init__(self, generation_id: int, reason: str = "missing") -> None:
        self.generation_id = generation_id
        self.reason = reason
        super().__init__(f"generation {generation_id} is {reason}")


class ConversationGone(NotFound):
    """The conversation is missing or was forgotten."""

    def __init__(self, conversation_id: int) -> None:
        self.conversation_id = conversation_id
        super().__init__(f"conversation {conversation_id} is missing")


class StoreClosed(StorageError, RuntimeError):
    """The store was closed (or its writer died); no more writes are accepted."""


class DatabaseReadOnly(StorageError):
    """The database file, its folder, or its `-wal`/`-shm` files cannot be written.

    `str()` is the whole message for the user (the CLI prints it after "muse: ").
    """

    def __init__(self, path: str, reason: str, *, exists: bool = True) -> None:
        self.path = path
        self.reason = reason
        state = "is read-only" if exists else "cannot be created"
        super().__init__(
            f"the database {path} {state} ({reason}): fix its permissions or set MUSE_DB "
            "to a writable file."
        )


class DatabaseAlreadyOpen(StorageError, RuntimeError):
    """This process has a `Store` open on the database already: use that one.

    A second open is refused, not merely discouraged: a second set of connections (or any
    open and close of the file outside SQLite) beside the first can drop the first one's POSIX
    locks, and another process's checkpoint then deletes the `-wal` the first still writes to.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        super().__init__(
            f"{path} is already open in this process: pass the open Store along instead of "
            "opening the database a second time"
        )


class ModelExists(StorageError):
    """A model of that name is registered already (pass `replace=True` to overwrite it)."""

    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(f"a model named {name!r} is registered already")


class DatabaseUnreachable(StorageError):
    """The PostgreSQL server cannot be reached or refused the login; the URL is shown redacted
    and the driver's message scrubbed of the password."""

    def __init__(self, url: str, reason: str) -> None:
        self.url = redact(url)
        super().__init__(f"cannot connect to {self.url}: {scrub(reason, url)}")


class ConnectionLost(DatabaseUnreachable):
    """The server dropped the connection (a restart) and it could not be opened again in time;
    the writer retries a transaction that failed so (`storage.writer`)."""

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(url, reason)
        self.args = (f"lost the connection to {self.url}: {scrub(reason, url)}",)
