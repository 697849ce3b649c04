"""The adapter folder on disk: written whole or not at all, and checked when read back.

A run writes into `.NAME.tmp-PID-XXXX` beside the final folder, fsyncs it and renames it to
NAME in one step, so NAME is never half written: a killed run leaves only its tmp folder,
which the next run removes once its process is gone. Replacing (`force`) renames the old
folder aside to `.NAME.old-PID-XXXX` first; if a run dies between the two renames, the next
run puts the old folder back.

Adapters memorise community text, so they are private to the user Muse runs as, as the
database is: folders 0700 and files 0600, whatever the umask (set before the rename, so the
published folder is never readable by others).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
from pathlib import Path
from typing import Any

from generation.tuning.errors import TuningError

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
CARD = "muse.json"
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
LEFTOVER = re.compile(r"\.(?P<name>.+)\.(?P<kind>tmp|old)-(?P<pid>\d+)-[0-9a-f]+")
FOLDER_MODE = 0o700
FILE_MODE = 0o600


def check_name(name: str) -> str:
    """An adapter name is one plain folder name: letters, digits, `_ . -`, up to 64."""
    if not NAME.fullmatch(name or ""):
        raise TuningError(
            f"{name!r} is not a usable adapter name: use up to 64 letters, digits, '_', '.' or "
            "'-', starting with a letter or digit."
        )
    return name


def refuse_existing(adapters_dir: Path, name: str, force: bool) -> None:
    if not force and os.path.lexists(adapters_dir / name):
        raise TuningError(
            f"An adapter named {name!r} already exists in {adapters_dir}: pick another name or "
            "replace it with force."
        )


def make_tmp(adapters_dir: Path, name: str) -> Path:
    """A fresh working folder for `name` beside where it will end up (same file system), 0700
    (as is `adapters_dir` when this creates it)."""
    if not adapters_dir.is_dir():
        adapters_dir.mkdir(mode=FOLDER_MODE, parents=True, exist_ok=True)
        os.chmod(adapters_dir, FOLDER_MODE)  # mkdir's mode passes through the umask
    tmp = adapters_dir / f".{name}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
    tmp.mkdir(mode=FOLDER_MODE)
    os.chmod(tmp, FOLDER_MODE)
    return tmp


def clean_leftovers(adapters_dir: Path) -> list[Path]:
    """Remove what dead runs left in `adapters_dir`; returns the folders removed or restored.

    Only folders whose process is gone are touched, so a run in progress keeps its own.
    """
    done: list[Path] = []
    if not adapters_dir.is_dir():
        return done
    for path in sorted(adapters_dir.iterdir()):
        match = LEFTOVER.fullmatch(path.name)
        if not match or _alive(int(match["pid"])):
            continue
        final = adapters_dir / match["name"]
        if match["kind"] == "old" and not os.path.lexists(final):
            os.rename(path, final)  # the run died between its two renames: undo the first
        else:
            shutil.rmtree(path, ignore_errors=True)
        done.append(path)
    return done


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


def write_json(path: Path, value: Any) -> None:
    path.write_text(json.dumps(value, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def publish(tmp: Path, adapters_dir: Path, name: str, force: bool) -> Path:
    """Make the finished `tmp` folder `adapters_dir/name` in one rename, after fsyncing it."""
    final = adapters_dir / name
    make_private(tmp)
    _fsync_tree(tmp)
    if os.path.lexists(final):
        if not force:
            refuse_existing(adapters_dir, name, force)
        old = adapters_dir / f".{name}.old-{os.getpid()}-{secrets.token_hex(4)}"
        os.rename(final, old)
        try:
            os.rename(tmp, final)
        except BaseException:
            os.rename(old, final)
            raise
        _fsync_dir(adapters_dir)
        _remove(old)
    else:
        try:
            os.rename(tmp, final)
        except OSError as exc:  # another run published the same name meanwhile
            raise TuningError(f"Could not publish the adapter {name!r}: {exc}.") from exc
        _fsync_dir(adapters_dir)
    return final


def make_private(folder: Path) -> None:
    """Folders under `folder` (and itself) 0700, files 0600; links are left alone."""
    for path in [folder, *folder.rglob("*")]:
        if path.is_symlink():
            continue
        os.chmod(path, FOLDER_MODE if path.is_dir() else FILE_MODE)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _fsync_tree(folder: Path) -> None:
    for path in folder.rglob("*"):
        if path.is_file():
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
    _fsync_dir(folder)


def _fsync_dir(folder: Path) -> None:
    """Persist a folder's entries (new files, a rename) where the platform allows it."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems refuse fsync on folders; the rename is still atomic
    finally:
        os.close(fd)


def load_adapter_card(path: Path | str) -> dict[str, Any]:
    """The `muse.json` card of the adapter folder `path`, after checking the folder holds a
    whole adapter (PEFT's config and weights, and the card), each readable."""
    folder = Path(path)
    if not folder.is_dir():
        raise TuningError(f"The adapter folder {str(folder)!r} does not exist.")
    for required in (ADAPTER_CONFIG, ADAPTER_WEIGHTS, CARD):
        if not (folder / required).is_file():
            raise TuningError(f"The adapter folder {str(folder)!r} has no {required}.")
    config = _read_object(folder, ADAPTER_CONFIG)
    card = _read_object(folder, CARD)
    if "base_model_name_or_path" not in config:
        raise TuningError(f"{ADAPTER_CONFIG} in {str(folder)!r} names no base model.")
    try:
        from safetensors import safe_open

        with safe_open(str(folder / ADAPTER_WEIGHTS), framework="pt") as weights:
            if not list(weights.keys()):
                raise ValueError("it holds no tensors")
    except Exception as exc:  # any reader failure means the same: unusable weights
        raise TuningError(f"{ADAPTER_WEIGHTS} in {str(folder)!r} cannot be read: {exc}.") from exc
    return card


def _read_object(folder: Path, file: str) -> dict[str, Any]:
    try:
        value = json.loads((folder / file).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise TuningError(f"{file} in {str(folder)!r} is not readable JSON: {exc}.") from exc
    if not isinstance(value, dict):
        raise TuningError(f"{file} in {str(folder)!r} is not a JSON object.")
    return value
