"""Subscriber files written by the web: a new file for a confirmed sign-up, and a
subscriber's own edits to theirs.

The files stay the source of truth, so everything written here goes through the same model
as a hand-written file (`config.parse_subscriber`) before it reaches the disk, and is written
atomically: a temporary file in the same folder, fsync, then a rename (`os.replace` for an
edit; `os.link` for a new file, which fails rather than overwrite one that exists), then
fsync of the folder. Edits go through tomlkit, so the operator's comments, key order and
layout stay as they were; only the values a subscriber changed are touched.

Two edits at once: each takes an exclusive lock beside the file (`.<id>.toml.lock`, hidden
from `subscribers.files`), reads the file again and compares its SHA-256 with the one the
page was built from; a file that changed since (another edit, the operator) is a
`ConflictError` and is left alone, as is a file the operator broke by hand (`ConfigError`).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import itertools
import os
import re
import tomllib
from collections.abc import Iterator
from datetime import time
from pathlib import Path
from typing import Annotated, Any

import tomlkit
from pydantic import AfterValidator, BaseModel, ConfigDict, Field
from tomlkit.items import AoT, Array, Comment, Whitespace

from .config import (
    DefaultsConfig,
    Frequency,
    Keyword,
    PlainText,
    SendAt,
    TimeZoneName,
    Weekday,
    check_printable,
    parse_send_at,
    parse_subscriber,
)
from .errors import DigestError, FileWriteError
from .subscribers import read_file

MAX_TEXT = 100  # characters of a name, a topic name or one keyword typed into a form
MAX_KEYWORDS = 50  # keywords in one form field
MAX_TOPICS = 20  # topics one subscriber edits on the page


def _no_markup(value: str) -> str:
    # Names and keywords never need angle brackets; refusing them keeps HTML out of files.
    # Typed keywords follow the rules of names (the README's promise for the form pages).
    check_printable(value)
    if "<" in value or ">" in value:
        raise ValueError(f"{value[:40]!r}: '<' and '>' are not allowed")
    if len(value) > MAX_TEXT:
        raise ValueError(f"{value[:40]!r}...: longer than {MAX_TEXT} characters")
    return value


FormText = Annotated[PlainText, AfterValidator(_no_markup)]
FormKeyword = Annotated[Keyword, AfterValidator(_no_markup)]


class ConflictError(DigestError):
    """The file changed between showing the page and saving it."""

    def __init__(self) -> None:
        super().__init__("your subscription was changed elsewhere since this page was opened;"
                         " nothing was saved", hint="reload the page and make the change again")


def file_hash(raw: bytes) -> str:
    """The SHA-256 a page carries to tell whether a file changed under it."""
    return hashlib.sha256(raw).hexdigest()


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes, *, replace: bool) -> None:
    """Write `data` to `path` through a synced temporary file; with replace=False an
    existing `path` is never overwritten (FileExistsError)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{id(data)}.tmp")
    with _writing(path):
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            if replace:
                os.replace(tmp, path)
            else:
                os.link(tmp, path)  # atomic, and fails when `path` exists
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        _fsync_dir(path.parent)


@contextlib.contextmanager
def _writing(path: Path) -> Iterator[None]:
    # A folder digest serve may not write (it runs as another user), a full disk, a
    # read-only file system: one line naming the file, not a traceback and a bare 500.
    # FileExistsError passes: `signup.create_file` tries the next id on it.
    try:
        yield
    except FileExistsError:
        raise
    except OSError as exc:
        raise FileWriteError(path, exc) from exc


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """An exclusive lock on the subscriber file `path` (a lock file beside it)."""
    lock = path.with_name(f".{path.name}.lock")
    with _writing(lock):
        fh = open(lock, "a")  # closed by the `with` below, after the body ran
    with fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


class _Form(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TopicEdit(_Form):
    """One topic as the preferences page edits it; `index` is its place in the file (None:
    a new topic)."""

    index: int | None = Field(None, ge=0, le=99)
    name: FormText
    keywords: list[FormKeyword] = Field(default_factory=list, max_length=MAX_KEYWORDS)
    require: list[FormKeyword] = Field(default_factory=list, max_length=MAX_KEYWORDS)
    weight: float = Field(1.0, ge=0.001, le=100, allow_inf_nan=False)
    remove: bool = False


class Edit(_Form):
    """Everything the preferences page can change in a subscriber file."""

    topics: list[TopicEdit] = Field(max_length=MAX_TOPICS)
    exclude: list[FormKeyword] = Field(default_factory=list, max_length=MAX_KEYWORDS)
    timezone: TimeZoneName
    send_at: SendAt
    max_items: int = Field(ge=1, le=100)
    frequency: Frequency
    day: Weekday
    paused: bool


def _set(table: Any, key: str, value: Any, default: Any = None) -> None:
    # A value equal to what the file leaves to a default is only written when the file
    # already has the key: an untouched default stays out of the operator's file.
    if key in table or value != default:
        if key not in table or table[key] != value:
            old = table.get(key)
            comment = getattr(old, "trivia", None)
            edited = _edited_list(old, value) if isinstance(old, Array) else None
            item = edited if edited is not None else tomlkit.item(value)
            if comment is not None and comment.comment:
                item.comment(comment.comment.lstrip("# "))  # a line's comment stays
            table[key] = item


def _edited_list(old: Array, values: Any) -> Array | None:
    """A copy of the array `old` made to hold the list `values` with its lines and comments
    kept: the values gone deleted, the new ones added at the end (`_edit_array`); None when
    that cannot be (values reordered, or it would read back otherwise)."""
    if not isinstance(values, list) or not values:
        return None  # an emptied array is written `[]`, not as its bracket lines
    copy = tomlkit.parse(f"x = {old.as_string()}")["x"]
    existing = list(copy)
    kept: list[Any] = []
    for value in values:  # an existing item where one is equal, so that it stays as it is
        same = next((e for e in existing if e == value and all(e is not k for k in kept)),
                    value)
        kept.append(same)
    if not _edit_array(copy, existing, kept):
        return None
    return copy if tomllib.loads(f"x = {copy.as_string()}")["x"] == values else None


def _send_at_as_written(old: Any, new: str) -> Any:
    """The form's `new` send time ("07:30", all the page can send) as the file writes it:
    the file's own value when it is the same time (`7:30`, or the TOML local time
    `07:30:00`), a TOML time when the file wrote one, else `new`."""
    if isinstance(old, time):  # tomlkit's Time is one
        return old if old == parse_send_at(new) else parse_send_at(new)
    if isinstance(old, str):
        try:
            return old if parse_send_at(old) == parse_send_at(new) else new
        except ValueError:  # not a time: the form's value replaces it
            return new
    return new


def _apply_topics(doc: Any, topics: list[TopicEdit]) -> None:
    # `[[topics]]` tables (an AoT), or an inline `topics = [{...}]` array: edited in place.
    # When topics were removed or added, an inline array loses and gains just those items
    # (`_edit_array`: the others keep their lines and comments); `[[topics]]` is rebuilt from
    # the same tables, which carry their comments, one blank line apart (`_tables`).
    old = doc.get("topics")
    inline = isinstance(old, Array)
    existing = list(old) if isinstance(old, AoT | Array) else []
    kept: list[Any] = []
    for edit in topics:
        if edit.remove:
            continue
        if edit.index is None:
            table = tomlkit.inline_table() if inline else tomlkit.table()
        elif edit.index < len(existing):
            table = existing[edit.index]
        else:
            raise DigestError("a topic on the page is no longer in the file; reload the page")
        _set(table, "name", edit.name.strip())
        _set(table, "keywords", edit.keywords, [])
        _set(table, "require", edit.require, [])
        _set(table, "weight", edit.weight, 1.0)
        kept.append(table)
    if len(kept) == len(existing) and all(a is b for a, b in zip(kept, existing, strict=True)):
        return
    if inline and _edit_array(old, existing, kept):
        return
    if not inline:
        doc["topics"] = _tables(existing, kept)
        return
    rebuilt = tomlkit.array()
    for table in kept:
        rebuilt.append(table)
    doc["topics"] = rebuilt


def _tables(existing: list[Any], kept: list[Any]) -> AoT:
    """`[[topics]]` holding the tables `kept` (some of them from `existing`, the file's), laid
    out as a person writes it: one blank line between two tables, each comment above a
    table's header still above it, the file's end as it was. tomlkit keeps the blank line
    and the comments above a header at the end of the table before it, and puts a line break
    before each table it appends: a table that was followed by another then had two blank
    lines after it, and one that ended the file a blank line at its end."""
    above: dict[int, list[Any]] = {}  # id of a table -> the comment lines above its header
    for before, table in itertools.pairwise(existing):
        above[id(table)] = _take_end(before, Comment)
        _take_end(before, Whitespace)
    # The file's end: blank lines after the last table (a comment there is the table's own).
    end = _take_end(existing[-1], Whitespace) if existing else []
    rebuilt = tomlkit.aot()
    for i, table in enumerate(kept):
        if i > 0:
            kept[i - 1].value.body.append((None, Whitespace("\n")))
        rebuilt.append(table)
        # What is written before the header: its comment lines (and not the line break
        # `append` adds: the blank line is the one just added). In the indent rather than
        # in the body of the table before, which the first table has not.
        table.trivia.indent = "".join(item.as_string() for _, item in above.get(id(table), []))
    if kept:
        kept[-1].value.body.extend(end)
    return rebuilt


def _take_end(table: Any, kind: type[Comment] | type[Whitespace]) -> list[Any]:
    """Take the lines of `kind` that end a parsed table's body: its comment lines (those
    just above the next table's header, which are about it; one followed by a blank line
    stays: it is the table's own) or its blank lines. They hold no key, so the keys' places
    in the body do not move."""
    body = table.value.body
    taken: list[Any] = []
    while body and body[-1][0] is None and isinstance(body[-1][1], kind):
        taken.insert(0, body.pop())
    return taken


def _edit_array(array: Array, existing: list[Any], kept: list[Any]) -> bool:
    """Make the inline array `array` (holding `existing`) hold `kept` by deleting the items
    gone and appending the new ones, on lines of their own when the array spans lines (the
    indent of its items); False, changing nothing, when `kept` reorders the existing ones."""
    at = [next((i for i, e in enumerate(existing) if e is t), None) for t in kept]
    old = [i for i in at if i is not None]
    if old != sorted(old) or None in at[:len(old)]:  # reordered, or a new one in between
        return False
    text = array.as_string()
    for i in sorted(set(range(len(existing))) - set(old), reverse=True):
        del array[i]
    indent = re.search(r"\n([ \t]*)[^\s\]]", text)
    for table in kept[len(old):]:
        if indent is not None:
            # Not `append`: it puts the item after the last one's comment, on its line,
            # where it becomes part of the comment.
            array.add_line(table, indent=indent.group(1))
        else:
            array.append(table)
    return True


def apply(raw: bytes, edit: Edit, defaults: DefaultsConfig) -> bytes:
    """The file `raw` with `edit` applied, comments and layout kept (not yet validated). A
    value the file leaves to [defaults] is written only when the edit changes it."""
    doc = tomlkit.parse(raw.decode("utf-8-sig"))
    _set(doc, "timezone", edit.timezone, defaults.timezone)
    _set(doc, "send_at", _send_at_as_written(doc.get("send_at"), edit.send_at),
         defaults.send_at)
    _set(doc, "max_items", edit.max_items, defaults.max_items)
    _set(doc, "exclude", edit.exclude, [])
    _set(doc, "frequency", edit.frequency, "daily")
    _set(doc, "day", edit.day, "monday")
    _set(doc, "paused", edit.paused, False)
    _apply_topics(doc, edit.topics)
    out = tomlkit.dumps(doc)
    if tomllib.loads(out) != doc.unwrap():
        # tomlkit wrote something that reads back otherwise (an item put inside a comment):
        # never save that; the topics written afresh, without their layout, read right.
        doc["topics"] = _fresh(doc["topics"])
        out = tomlkit.dumps(doc)
    return _ending_as_in(raw, out).encode("utf-8")


def _ending_as_in(raw: bytes, text: str) -> str:
    """`text` with its lines ending as the first line of `raw` does (CR LF or LF): tomlkit
    keeps the lines it read as they were but ends the ones it adds with LF alone."""
    first = raw.find(b"\n")
    if first < 1 or raw[first - 1] != ord("\r"):
        return text
    crlf = re.sub(r"(?<!\r)\n", "\r\n", text)
    # A lone LF inside a multi-line string is part of its value: left as it is.
    return crlf if tomllib.loads(crlf) == tomllib.loads(text) else text


def _fresh(topics: Any) -> Any:
    """The topics as a new array (or array of tables) of the same values, no layout."""
    if isinstance(topics, AoT):
        rebuilt: Any = tomlkit.aot()
        for table in topics.unwrap():
            rebuilt.append(tomlkit.item(table))
        return rebuilt
    array = tomlkit.array()
    for table in topics.unwrap():
        inline = tomlkit.inline_table()
        inline.update(table)
        array.append(inline)
    return array


def read_checked(path: Path) -> tuple[bytes, dict[str, Any]]:
    """The file's bytes and validated data; ConfigError when it is broken (or unreadable,
    not a regular file, too large: `subscribers.read_file`)."""
    raw = read_file(path)
    return raw, parse_subscriber(path, raw)


def update(path: Path, seen_hash: str, edit: Edit, defaults: DefaultsConfig) -> bytes:
    """Apply `edit` to the subscriber file at `path` if it is still the version hashed as
    `seen_hash`; returns the new bytes. ConflictError when it changed (unless it holds the
    edit already), ConfigError when it is broken (as it is, or with the edit: then naming
    the field), and nothing is written."""
    with locked(path):
        raw, _data = read_checked(path)
        if file_hash(raw) != seen_hash:
            if _holds(raw, edit, defaults):
                return raw
            raise ConflictError()
        new = apply(raw, edit, defaults)
        parse_subscriber(path, new)  # the same model as a hand-written file
        if new != raw:
            write_atomic(path, new, replace=True)
        return new


def _holds(raw: bytes, edit: Edit, defaults: DefaultsConfig) -> bool:
    """Whether the file `raw` holds `edit` already: the same form sent twice (a double click
    on Save, a resubmit from the back button) is no conflict, as nothing would change."""
    try:
        return apply(raw, edit, defaults) == raw
    except DigestError:  # a topic the page names is gone: a change made elsewhere
        return False


def preview_data(path: Path, edit: Edit, defaults: DefaultsConfig) -> dict[str, Any]:
    """The validated data the file would hold with `edit`, writing nothing."""
    raw, _data = read_checked(path)
    return parse_subscriber(path, apply(raw, edit, defaults))
