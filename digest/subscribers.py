"""Subscriber files: listed, read, validated, cached. The one place subscribers are loaded.

`send`, `preview`, `explain`, `validate` and `digest serve` all load subscribers here:

- a subscriber's id is its file's stem (`config.SUBSCRIBER_ID`), checked before the file
  system sees it; an id with no file is an `UnknownSubscriberError` (`path_of`, the one place
  that raises it);
- one bad file is one `ConfigError` naming the file, field and problem, and never hides the
  others (`load` yields it in the file's place);
- an address is one subscriber: a file whose email (case-insensitive) an earlier file (by
  id) has is a `ConfigError` naming both, so `send` mails the address once and `validate`
  reports it;
- given a store, validated data is cached there, keyed by the file's path and the SHA-256 of
  its bytes and of the cache key (`CACHE_KEY`), so a run over 100,000 unchanged files reads
  and hashes them but validates none. The cache key derives from the subscriber file's JSON
  schema and the package version: a change to the fields or to the validation rules (which
  ship in a new version) validates every file again, with nothing to bump by hand.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import stat
from collections.abc import Iterator, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlite_utils import Database

from . import __version__, store
from .config import (
    DefaultsConfig,
    SubscriberFile,
    check_subscriber_id,
    is_subscriber_id,
    parse_subscriber,
    subscriber_from_data,
)
from .errors import ConfigError, UnknownSubscriberError
from .models import Subscriber

log = logging.getLogger("digest")


def cache_key(schema: dict[str, Any], version: str) -> bytes:
    """The key the cached data of every file is hashed with: from the subscriber file's JSON
    schema and the package version, so either changing validates every file again."""
    text = json.dumps({"schema": schema, "version": version}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest().encode() + b"\n"


CACHE_KEY = cache_key(SubscriberFile.model_json_schema(), __version__)


def content_hash(raw: bytes) -> str:
    """The hash a file's bytes are cached under (with the cache key)."""
    return hashlib.sha256(CACHE_KEY + raw).hexdigest()


def entries(folder: Path) -> list[os.DirEntry[str]]:
    """The subscriber files in `folder` as the listing gives them (unsorted; hidden files are
    ignored). A folder that cannot be listed is a ConfigError: `glob` would say it is empty,
    and nobody gets a digest while `validate` says ok."""
    try:
        with os.scandir(folder) as found:
            return [e for e in found if listed(e.name)]
    except (FileNotFoundError, NotADirectoryError):
        raise ConfigError(folder, None, "subscribers folder not found",
                          hint="set [subscribers] dir in digest.toml") from None
    except OSError as exc:
        raise ConfigError(folder, None, f"cannot list the subscribers folder:"
                          f" {exc.strerror or exc}") from None


def files(folder: Path) -> list[Path]:
    """The subscriber files in `folder` (`entries`), in id order."""
    names = [e.name for e in entries(folder)]
    # Sorted by id, the name without ".toml" (by the whole name "ada-2.toml" would come before
    # "ada.toml", '-' being before '.'; the first by id is the one an address's digest goes
    # to); on strings: comparing Path objects costs a second at 100,000 files.
    return [folder / name for name in sorted(names, key=lambda name: name[:-5])]


def listed(name: str) -> bool:
    """Whether a file named `name` is a subscriber file (a hidden one is not)."""
    return name.endswith(".toml") and not name.startswith(".")


def path_of(folder: Path, subscriber_id: str) -> Path:
    """The file of `subscriber_id` in `folder`, or UnknownSubscriberError when the id is not
    valid (checked before the file system sees it) or has no file."""
    path = folder / f"{subscriber_id}.toml"
    # `lexists`, not `is_file`: a name that is there but unreadable (a folder, a broken link)
    # is that file's one-line ConfigError when read, as `validate` says, not "create it".
    valid = is_subscriber_id(subscriber_id)
    if not valid or not os.path.lexists(path):
        raise UnknownSubscriberError(subscriber_id, folder, valid)
    return path


def load_one(
    folder: Path, defaults: DefaultsConfig, subscriber_id: str, db: Database | None = None,
) -> Subscriber:
    """The subscriber `subscriber_id` (cached in `db` when given); UnknownSubscriberError when
    there is no such subscriber, ConfigError when their file is bad. Only their file is read,
    so an earlier file with the same address is not looked for (`load` does that)."""
    [entry] = load_files(folder, [path_of(folder, subscriber_id)], defaults, db)
    if isinstance(entry, ConfigError):
        raise entry
    return entry


def load_files(
    folder: Path, paths: Sequence[Path], defaults: DefaultsConfig, db: Database | None = None,
) -> list[Subscriber | ConfigError]:
    """Each of `paths` (files of `folder`) as `load` gives it, cached in `db`, without listing
    the folder: no other file is read, so an address is a duplicate only of another of
    `paths` (`load` looks at every file)."""
    return list(_entries(folder, list(paths), defaults, db, None, False))


def load(
    folder: Path, defaults: DefaultsConfig, db: Database | None = None,
    only: Sequence[str] | None = None, now: datetime | None = None,
) -> Iterator[Subscriber | ConfigError]:
    """Each subscriber in `folder` (or those in `only`, in that order), or the ConfigError its
    file raised. With a store, unchanged files come from its cache instead of being validated
    again, and the cache forgets files that are gone."""
    listing = _entries(folder, files(folder), defaults, db, now, True)
    if not only:
        yield from listing
        return
    # Every file is listed even so: whether an earlier file (by id) has a chosen subscriber's
    # address decides whether they get a digest (`send --subscriber ada-2` must not mail the
    # address ada.toml already got its digest at).
    wanted = dict.fromkeys(path_of(folder, sid).name for sid in only)
    found = {_file_name(e): e for e in listing if _file_name(e) in wanted}
    for name in wanted:
        if name not in found:  # gone between the two looks
            raise UnknownSubscriberError(name[:-5], folder)
        yield found[name]


def _file_name(entry: Subscriber | ConfigError) -> str:
    return entry.path.name if isinstance(entry, ConfigError) else f"{entry.id}.toml"


def _entries(
    folder: Path, paths: list[Path], defaults: DefaultsConfig, db: Database | None,
    now: datetime | None, whole: bool,
) -> Iterator[Subscriber | ConfigError]:
    """`load`'s loop over `paths` (`whole`: every file of the folder, so the cache may
    forget the files that are gone; else only the cache entries of `paths` are read)."""
    fresh: list[tuple[str, str, str]] = []
    # The folder is resolved once, not each file, and the keys are plain strings: a Path per
    # file cost a third of a second at 100,000 files.
    base = os.fspath(folder.resolve())
    keys = [os.path.join(base, p.name) for p in paths]
    cached = (store.cached_subscribers(db, None if whole else keys) if db is not None
              else {})
    owners: dict[str, str] = {}  # address (casefolded) -> the file that gets its digest
    for path, key in zip(paths, keys, strict=True):
        try:
            check_subscriber_id(path)
            raw = read_file(path)
        except ConfigError as exc:
            yield exc
            continue
        digest = content_hash(raw)
        hit = cached.get(key)
        data: dict[str, Any]
        if hit is not None and hit[0] == digest:
            data = json.loads(hit[1])
        else:
            try:
                data = parse_subscriber(path, raw)
            except ConfigError as exc:
                yield exc
                continue
            fresh.append((key, digest, json.dumps(data)))
        subscriber = subscriber_from_data(path, data, defaults)
        owner = owners.setdefault(subscriber.email.casefold(), path.name)
        yield subscriber if owner == path.name else duplicate(path, subscriber.email, owner)
    if db is None:
        return
    gone = sorted(set(cached) - set(keys)) if whole else []
    if fresh or gone:
        store.cache_subscribers(db, fresh, gone, now or datetime.now().astimezone())
        log.debug("subscriber cache: %d file(s) validated and cached, %d forgotten",
                 len(fresh), len(gone))


def duplicate(path: Path, email: str, owner: str) -> ConfigError:
    """The error of a file whose address an earlier file (by id) already has: one address
    gets one digest, the first file's."""
    return ConfigError(path, "email", f"{email} is also in {owner}, which gets its digest;"
                       " one address gets one digest",
                       hint="remove one of the two files, or change its email")


# A subscriber file is a few hundred bytes; a link to /dev/zero would fill the memory.
MAX_FILE_BYTES = 1 << 20


def read_file(path: Path) -> bytes:
    """The bytes of the subscriber file `path`; ConfigError (one line naming it) when it
    cannot be read, is not a regular file or is over MAX_FILE_BYTES. Every reader of a
    subscriber file goes through here."""
    # `path.read_bytes()` in fewer system calls (a buffered file also asks whether it is a
    # terminal, and for its position): half the time of reading 100,000 small files. Only a
    # regular file: opening a named pipe would wait for a writer, and every digest with it
    # (O_NONBLOCK), and a device has no end.
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                why = "Is a directory" if stat.S_ISDIR(info.st_mode) else \
                    "not a regular file (a pipe, a device or a socket)"
                raise ConfigError(path, None, f"cannot read file: {why}")
            chunks, size = [], 0
            while size <= MAX_FILE_BYTES and (chunk := os.read(fd, min(
                    info.st_size, MAX_FILE_BYTES) + 1)):
                chunks.append(chunk)
                size += len(chunk)
        finally:
            os.close(fd)
    except OSError as exc:
        raise ConfigError(path, None, f"cannot read file: {exc.strerror or exc}") from None
    if size > MAX_FILE_BYTES:
        raise ConfigError(path, None, f"larger than {MAX_FILE_BYTES:,} bytes: not a subscriber"
                          " file")
    return b"".join(chunks)
