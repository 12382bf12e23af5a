"""The exceptions the library raises; each builds its one-line message from its arguments."""

from __future__ import annotations

from pathlib import Path


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
        where = f"{self.path}: {field}: " if field else f"{self.path}: "
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


class UnknownSubscriberError(DigestError):
    """A command named a subscriber id that has no file in the subscribers folder."""

    def __init__(self, subscriber_id: str, folder: Path) -> None:
        super().__init__(
            f"no subscriber '{subscriber_id}' in {folder}",
            hint=f"subscriber ids are file stems: create {folder / (subscriber_id + '.toml')}",
        )
