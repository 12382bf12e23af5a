"""Executors: a unit of work run over many units, in this process or in worker processes.

A `Work` object holds what building needs (for `digest send`: the run, a store connection, a
template environment) and builds a task, a list of units: `build(units) -> results`, one
result per unit. An executor runs it over all the units and yields each task's results as
they come back; a task starts only while `ready()`, and `idle()` is called at least every
`poll` seconds while a pool waits. So `pipeline`'s send loop is one loop whichever runs it:

- `Serial` builds here, one unit a task.
- `ForkPool` builds in forked worker processes, each with its own `Work` made there by
  `start()`, all sharing what the parent built before the fork (the run's index). At most two
  tasks per worker are in flight, so memory stays flat however many units there are. A worker
  that dies (killed, out of memory) loses the tasks it held (yielded with results None) and
  marks the pool `broken`: no task starts after that.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import logging
import multiprocessing as mp
import os
import signal
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from multiprocessing.connection import Connection, wait
from typing import Any, Generic, Protocol, TypeVar

from .errors import DigestError

log = logging.getLogger("digest")

U = TypeVar("U")
R = TypeVar("R")

CHUNK = 32  # units per task of a pool (for `send`: a task's outbox writes are one transaction)
Task = tuple[list[U], list[R] | None]  # a task's units and their results (None: lost)


class Work(Protocol[U, R]):
    """The state one process builds with, and the unit of work."""

    def build(self, units: list[U]) -> list[R]:
        """Build these units: one result per unit."""


class Executor(Protocol[U, R]):
    """Runs a `Work` over units, a task at a time."""

    in_process: bool  # True: the work runs in the caller's thread
    broken: str | None  # why no more tasks can run, if none can

    def build(self, units: Sequence[U], ready: Callable[[], bool],
              idle: Callable[[], None]) -> Iterator[Task[U, R]]:
        """Each task's units and results as they come."""

    def close(self) -> None:
        """Release the executor's processes."""


class Serial(Generic[U, R]):
    """Builds in this process, one unit a task."""

    in_process = True
    broken: str | None = None

    def __init__(self, work: Work[U, R]) -> None:
        self.work = work

    def build(self, units: Sequence[U], ready: Callable[[], bool],
              idle: Callable[[], None]) -> Iterator[Task[U, R]]:
        """Each unit's result, built when `ready()` says so."""
        for unit in units:
            if not ready():
                return
            yield [unit], self.work.build([unit])

    def close(self) -> None:
        """Nothing to release."""


class ForkPool(Generic[U, R]):
    """`workers` forked processes, each building with its own `start()` Work.

    Forked (Linux) so that the workers share what the parent built instead of building their
    own: create the pool while this is the only thread (a fork copies only the caller)."""

    in_process = False

    def __init__(self, start: Callable[[], Work[U, R]], workers: int, *, poll: float,
                 chunk: int = CHUNK) -> None:
        self.broken: str | None = None
        self.poll, self.chunk = poll, chunk
        context = mp.get_context("fork")
        self._held: dict[Connection, deque[list[U]]] = {}  # tasks in flight, per worker
        self._process: dict[Connection, Any] = {}  # the worker at the other end
        # Freeze what exists (the index, the subscribers) out of the cyclic GC's sight before
        # the fork: the workers' collections then never walk it, nor copy its pages.
        gc.freeze()
        try:
            for n in range(workers):
                here, there = context.Pipe()
                process = context.Process(target=_serve, args=(there, start), daemon=True,
                                          name=f"digest-worker-{n}")
                process.start()
                there.close()  # so the worker's death is an EOF here
                self._held[here], self._process[here] = deque(), process
        finally:
            gc.unfreeze()

    def build(self, units: Sequence[U], ready: Callable[[], bool],
              idle: Callable[[], None]) -> Iterator[Task[U, R]]:
        """Each task's results as a worker hands them back (in no set order)."""
        size = max(1, min(self.chunk, len(units) // (len(self._held) * 4)))
        tasks = deque(list(units[k:k + size]) for k in range(0, len(units), size))
        while True:
            while (tasks and self.broken is None and (conn := self._free()) is not None
                   and ready()):
                try:
                    conn.send(tasks[0])
                except OSError:  # the worker died since its last result
                    yield from self._dead(conn)
                    break
                self._held[conn].append(tasks.popleft())
            busy = [conn for conn, held in self._held.items() if held]
            if not busy:
                return
            done = wait(busy, timeout=self.poll)
            idle()
            for ready_conn in done:
                assert isinstance(ready_conn, Connection)
                yield from self._receive(ready_conn)

    def _free(self) -> Connection | None:
        conn = min(self._held, key=lambda c: len(self._held[c]), default=None)
        return conn if conn is not None and len(self._held[conn]) < 2 else None

    def _receive(self, conn: Connection) -> Iterator[Task[U, R]]:
        task = self._held[conn].popleft()
        try:
            results = conn.recv()
        except (EOFError, OSError):
            yield task, None
            yield from self._dead(conn)
            return
        if isinstance(results, str):  # the task raised: see the worker's log
            self._fail(results)
            results = None
        yield task, results

    def _dead(self, conn: Connection) -> Iterator[Task[U, R]]:
        # The worker died (killed, out of memory): what it held is lost with it (the store
        # says what it committed first), and no task starts after this.
        process = self._process.pop(conn)
        process.join(5.0)  # it is gone (its end of the pipe closed): reap it
        code = process.exitcode
        self._fail(f"worker {process.pid} was killed by {signal.Signals(-code).name}"
                   if code is not None and code < 0 else f"worker {process.pid} exited")
        for lost in self._held.pop(conn):
            yield lost, None
        conn.close()

    def _fail(self, why: str) -> None:
        if self.broken is None:  # once: every worker meets a full disk, say
            self.broken = f"a worker process failed: {why}"
            log.error("%s", self.broken)

    def close(self) -> None:
        """Let the workers finish what they hold, then stop them."""
        for conn, held in self._held.items():
            try:
                for _ in held:  # read, so no worker blocks on a full pipe
                    conn.recv()
                conn.send(None)
            except (EOFError, OSError):
                pass
            conn.close()
        for process in self._process.values():
            process.join()


def _serve(conn: Connection, start: Callable[[], Work[Any, Any]]) -> None:
    # A worker process's life: its Work, then one task after another until told to stop.
    # Ctrl-C reaches the whole process group: the parent decides what stops, and when.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _die_with_parent()
    work = start()
    while (units := conn.recv()) is not None:
        try:
            conn.send(work.build(units))
        except DigestError as exc:  # the store is full, say: the parent logs its one line
            conn.send(str(exc))
        except Exception as exc:  # a bug: the parent stops the batch
            log.exception("a worker's task failed")
            conn.send(repr(exc))


def _die_with_parent() -> None:
    # A SIGKILLed `digest send` must not leave workers behind: they hold a copy of the send
    # lock's file descriptor, and would keep the next run waiting. Linux: PR_SET_PDEATHSIG.
    parent = os.getppid()
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG = 1
    except (OSError, AttributeError):
        log.warning("cannot tie worker %d to its parent's life (not Linux?)", os.getpid())
    if os.getppid() != parent:  # the parent died before the call above
        os._exit(1)
