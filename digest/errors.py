"""The exceptions the library raises; each builds its one-line message from its arguments.

    DigestError                  a one-line message and an optional hint
    ├── ConfigError              a config or subscriber file is unreadable or invalid
    ├── SourceError              a listing source could not be read or parsed
    │   └── FetchStopped         a fetch was cut short on request (`digest run` stopping)
    ├── UnknownSubscriberError   a command named a subscriber with no file
    ├── FileWriteError           a subscriber file cannot be written (permissions, disk full)
    └── SendError                a message could not be handed to the mail server
        ├── TransientSendError   try this message again later (4xx, 421, a lost connection)
        ├── PermanentSendError   this message can never go (5xx); the batch goes on
        │   ├── RecipientRefusedError  550/551/553 at RCPT: a hard bounce, suppressed
        │   └── HeaderError      a header field cannot be written, or fails the last check
        └── FatalSendError       the batch must stop (login, TLS, no server, refused sender,
            │                    DKIM signing)
            └── ServerBusyError  a 421 greeting: only that connection stops, if others work

The class is the classification: `digest.delivery` retries a transient error, fails the
digest on a permanent one and stops the batch on a fatal one. Errors of smtplib, socket and
ssl become these classes in one place, `digest.send.map_smtp_error`.
"""

from __future__ import annotations

from collections.abc import Sequence
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

    def with_hint(self) -> str:
        """The message and, when there is one, its hint on the same line: for a report row
        or a log line, where the CLI's separate `hint:` line is not available."""
        return self.message + (f" (hint: {self.hint})" if self.hint else "")


class ConfigError(DigestError):
    """A config or subscriber file is unreadable or invalid: names the file, field and problem."""

    def __init__(
        self, path: Path | str, field: str | None, problem: str, hint: str | None = None,
        each: Sequence[ConfigError] = (),
    ) -> None:
        self.path = Path(path)
        self.field = field
        self.problem = problem
        # A file with several problems is one error (one line in a report) that says how many
        # more there are; `each` keeps them all, one error per problem, for `digest validate`.
        self.each = tuple(each) or (self,)
        shown = printable(str(self.path))
        where = f"{shown}: {field}: " if field else f"{shown}: "
        super().__init__(f"{where}{problem}", hint)


class StoreError(DigestError):
    """The store cannot be opened, read or written: names its path, the problem and a fix."""

    def __init__(self, path: Path, problem: str, hint: str | None = None) -> None:
        self.path = path
        self.problem = problem
        super().__init__(f"store {path}: {problem}", hint)


class FileWriteError(DigestError):
    """A file the web writes (a subscriber file, its lock) cannot be written: names it."""

    def __init__(self, path: Path, exc: OSError) -> None:
        self.path = path
        super().__init__(f"cannot write {printable(str(path))}: {exc.strerror or exc}",
                         hint="digest serve must be able to write the subscribers folder")


class SourceError(DigestError):
    """A listing source could not be read or parsed."""

    def __init__(self, source: str, reason: str, hint: str | None = None) -> None:
        self.source = source
        self.reason = reason
        super().__init__(f"source '{source}': {reason}", hint)


class FetchStopped(SourceError):
    """The fetch was asked to stop while reading this source (SIGTERM to `digest run`):
    nothing of the source is stored, and it did not fail."""

    def __init__(self, source: str) -> None:
        super().__init__(source, "stopped: digest is shutting down; nothing of this source "
                                 "was stored, the next fetch reads it again")


class SendError(DigestError):
    """A message could not be handed to the mail server (raised as one of the three
    subclasses below, which say what to do about it)."""

    def __init__(self, reason: str, hint: str | None = None) -> None:
        self.reason = reason
        super().__init__(reason, hint)


class TransientSendError(SendError):
    """The same message may go later: a 4xx or 421 answer, a lost connection, a server
    that broke a session limit."""


class PermanentSendError(SendError):
    """Retrying the same message cannot succeed (a 5xx refusal): its digest fails, the
    batch goes on."""


class RecipientRefusedError(PermanentSendError):
    """The server refused the recipient at RCPT with 550, 551 or 553: the address does not
    exist there, a hard bounce (`hard` False: the reply's enhanced status is X.7.X, a policy
    refusal of the sender, counted as a soft bounce)."""

    def __init__(self, reason: str, code: int, hard: bool = True) -> None:
        super().__init__(reason)
        self.code = code
        self.hard = hard


class FatalSendError(SendError):
    """Nothing more can be sent in this batch (login or TLS failure, unreachable server,
    a server that refuses our sender or wants a login first, DKIM signing failure): the
    batch stops and the message is put back unharmed."""


class ServerBusyError(FatalSendError):
    """The server refused one more connection (421 at the greeting, most often its limit of
    connections per client): with other connections of the batch at work, only this one
    stops; alone, it stops the batch."""


class HeaderError(PermanentSendError):
    """A header field cannot be written as the standards want it (or a finished header
    block fails the last check before sending): permanent, as the same message would fail
    again."""

    def __init__(self, problem: str) -> None:
        super().__init__(f"cannot write the message's headers: {problem}")


class UnknownSubscriberError(DigestError):
    """A command named a subscriber id that has no file in the subscribers folder."""

    def __init__(self, subscriber_id: str, folder: Path, valid: bool = True) -> None:
        # Creating the file an invalid id names would not help: say what an id is instead.
        hint = (f"subscriber ids are file stems: create {folder / printable(subscriber_id)}.toml"
                if valid else "a subscriber id is 1-64 letters, digits, '.', '_' or '-',"
                " starting with a letter or digit")
        super().__init__(f"no subscriber '{printable(subscriber_id)}' in {folder}", hint=hint)


def listen_error(host: str, port: int, exc: OSError, setting: str) -> DigestError:
    """A server socket that cannot be bound (port in use, an address not of this host, a bad
    host name) as one line, with the `setting` that moves it."""
    # socket.create_server appends "(while attempting to bind on address ...)": said already.
    why = (exc.strerror or str(exc)).split(" (while attempting")[0]
    return DigestError(f"cannot listen on {host}:{port}: {why}",
                       hint=f"another program may hold the port: pass --port or set {setting}")
