"""Where the database is: an SQLite file path or a `postgresql://user@host:port/db` URL.

The password may be in the URL, in `PGPASSWORD` or in `~/.pgpass` (libpq reads the last two
itself). It never leaves this process in text: `redact` is how a URL is shown, and `scrub`
removes it from any message (a driver's error) before that message is logged or raised.
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import unquote, urlsplit, urlunsplit

SCHEMES = ("postgresql", "postgres")


def is_postgres(target: str | os.PathLike[str]) -> bool:
    """Whether `target` names a PostgreSQL database (a URL) rather than an SQLite file."""
    return isinstance(target, str) and urlsplit(target).scheme in SCHEMES and "://" in target


def database_target(value: str | os.PathLike[str]) -> Path | str:
    """`MUSE_DB` or `--db` as the store takes it: a URL stays text, a path becomes a `Path`
    (`Path` would fold a URL's `//`)."""
    if isinstance(value, str) and is_postgres(value):
        return value
    return Path(value).expanduser()


def redact(url: str) -> str:
    """The URL with its password, if any, replaced by `***`."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rpartition("@")[2]
    user = parts.netloc.rpartition("@")[0].partition(":")[0]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


def secrets_of(url: str) -> list[str]:
    """The password texts (as written and decoded) that must never be shown."""
    found = [urlsplit(url).password or "", os.environ.get("PGPASSWORD", "")]
    raw = urlsplit(url).netloc.rpartition("@")[0].partition(":")[2]
    found += [raw, unquote(raw)]
    return sorted({secret for secret in found if secret}, key=len, reverse=True)


def scrub(text: str, url: str) -> str:
    """`text` with the URL shown redacted and every password text replaced by `***`."""
    text = text.replace(url, redact(url))
    for secret in secrets_of(url):
        text = text.replace(secret, "***")
    return text


def describe(target: str | os.PathLike[str]) -> str:
    """How a database is named in messages: a path as is, a URL redacted."""
    return redact(target) if isinstance(target, str) and is_postgres(target) else str(target)
