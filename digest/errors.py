"""The exceptions the library raises; each builds its one-line message from its arguments."""

from __future__ import annotations

from pathlib import Path


def printable(text: str) -> str:
    """`text` with control characters (a newline in a file name, say) escaped as in Python
    literals, so that a message or a report row stays on one line."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


class DigestError(Exception):
    """Base class: a one-line message for the user and an optional hint on how to fix it."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message


class ConfigError(DigestError):
    """A config or subscriber file is unreadable or invalid: names the file, field and problem."""

    def __init__(
        self, path: Path | str, field: str | None, problem: str, hint: str | None = None
    ) -> None:
        self.path = Path(path)
        self.field = field
        self.problem = problem
        shown = printable(str(self.path))
        where = f"{shown}: {field}: " if field else f"{shown}: "
        super().__init__(f"{where}{problem}", hint)


class StoreError(DigestError):
    """The store cannot be opened, read or written: names its path, the problem and a fix."""

    def __init__(self, path: Path, problem: str, hint: str | None = None) -> None:
        self.path = path
        self.problem = problem
        super().__init__(f"store {path}: {problem}", hint)


class SourceError(DigestError):
    """A listing source could not be read or parsed."""

    def __init__(self, source: str, reason: str, hint: str | None = None) -> None:
        self.source = source
        self.reason = reason
        super().__init__(f"source '{source}': {reason}", hint)


class SendError(DigestError):
    """A message could not be handed to the mail server.

    `permanent` is True when retrying the same message cannot succeed (a 5xx refusal),
    and `fatal` when the whole batch must stop (authentication or TLS failure).
    """

    def __init__(
        self, reason: str, *, permanent: bool = False, fatal: bool = False, hint: str | None = None
    ) -> None:
        self.reason = reason
        self.permanent = permanent
        self.fatal = fatal
        super().__init__(reason, hint)


class HeaderError(SendError):
    """A header field cannot be written as the standards want it (or a finished header
    block fails the last check before sending): permanent, as the same message would fail
    again."""

    def __init__(self, problem: str) -> None:
        super().__init__(f"cannot write the message's headers: {problem}", permanent=True)


class UnknownSubscriberError(DigestError):
    """A command named a subscriber id that has no file in the subscribers folder."""

    def __init__(self, subscriber_id: str, folder: Path) -> None:
        super().__init__(
            f"no subscriber '{printable(subscriber_id)}' in {folder}",
            hint="subscriber ids are file stems: create "
                 f"{folder / printable(subscriber_id + '.toml')}",
        )
