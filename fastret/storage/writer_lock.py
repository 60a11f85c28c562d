"""One writer at a time for a store or an index file: an advisory lock (`fcntl.flock`) on a lock
file beside it, which readers never take.

    store/.fastret-lock          the lock of a store directory
    dir/.index.frt.lock          the lock of the index file dir/index.frt

A writer holds the lock around everything it changes (`Index.save`, `fastret encode`, `fastret
index`, `fastret clean`). A second writer waits for it up to `timeout` seconds and then gets a
`WriterBusyError` naming the holder's PID and host (written into the lock file by each holder). The
lock is the kernel's: a holder killed with -9 releases it at once. The lock file is never removed
(removing it would let two writers lock two different files); a holder empties it when it lets go.

Within one process the lock is re-entrant per thread, so a caller may hold it around a whole
load-modify-save (`writer_lock(path)`) while `save` takes it again inside. flock is advisory and,
on network filesystems, only as good as their lock support (NFSv4 has it; some FUSE mounts do not).
"""

from __future__ import annotations

import errno
import os
import socket
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

try:
    import fcntl
except ImportError:  # Windows: no flock; writers are not serialized there
    fcntl = None

STORE_LOCK = ".fastret-lock"
DEFAULT_TIMEOUT = 60.0
_POLL_SECONDS = 0.05


class WriterBusyError(TimeoutError):
    """Another writer held the lock of a store or index file for longer than the timeout."""


class ConcurrentWriteError(RuntimeError):
    """A store or index file changed by another writer since the index being saved was loaded from it."""


def lock_path(target: str | os.PathLike) -> Path:
    """The lock file of a store directory or an index file."""
    target = Path(target)
    if target.is_dir():
        return target / STORE_LOCK
    return target.with_name(f".{target.name}.lock")


class _Held:
    """A lock this process holds: its open lock file, the thread holding it and how often."""

    def __init__(self, file, owner: int):
        self.file = file
        self.owner = owner
        self.depth = 1


_held: dict[Path, _Held] = {}
_registry = threading.Condition()


@contextmanager
def writer_lock(target: str | os.PathLike, timeout: float = DEFAULT_TIMEOUT) -> Iterator[Path]:
    """Hold the writer lock of `target` (a store directory or an index file) for the block.

    Args:
        target: the store directory or index file; its parent directory must exist.
        timeout: seconds to wait for another writer (0: do not wait).

    Yields:
        The lock file's path.

    Raises:
        WriterBusyError (a TimeoutError): another writer held it for `timeout` seconds; the
            message names it (PID and host) and the lock file.
        ValueError: a negative timeout.
    """
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout < 0:
        raise ValueError(f"timeout must be a number of seconds >= 0, got {timeout!r}")
    path = lock_path(target).resolve()
    me = threading.get_ident()
    deadline = time.monotonic() + timeout
    with _registry:
        while path in _held and _held[path].owner != me:  # another thread of this process holds it
            left = deadline - time.monotonic()
            if left <= 0:
                raise WriterBusyError(f"{target} is being written by another thread of this process "
                                      f"(PID {os.getpid()}); waited {timeout:g} s for it")
            _registry.wait(left)
        fresh = path not in _held
        if fresh:  # claimed before the wait below, so that other threads of this process queue here
            _held[path] = _Held(None, me)
        else:
            _held[path].depth += 1
        entry = _held[path]
    if fresh:
        try:
            entry.file = _acquire(path, target, deadline, timeout)
        except BaseException:
            with _registry:
                del _held[path]
                _registry.notify_all()
            raise
    try:
        yield path
    finally:
        with _registry:
            entry.depth -= 1
            if entry.depth == 0:
                del _held[path]
                if fcntl is not None:
                    entry.file.truncate(0)  # the holder's name goes with the hold (a finished run leaves no trace)
                entry.file.close()  # releases the flock
                _registry.notify_all()


def _acquire(path: Path, target, deadline: float, timeout: float):
    """The lock file, opened and locked (waiting until `deadline`), with this process named in it."""
    try:
        file = open(path, "a+b")  # noqa: SIM115 (held open while the lock is)
    except FileNotFoundError:
        raise FileNotFoundError(errno.ENOENT, f"no such directory {path.parent} to write {target} in",
                                str(target)) from None
    if fcntl is None:
        return file
    try:
        while True:
            try:
                fcntl.flock(file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise WriterBusyError(f"{target} is being written by {holder(path)}; waited {timeout:g} s "
                                          f"for it (lock file {path}). Wait for that writer to finish, "
                                          "or stop it") from None
                time.sleep(_POLL_SECONDS)
        file.seek(0)
        file.truncate()
        file.write(f"{os.getpid()} {socket.gethostname()}\n".encode())
        file.flush()
    except BaseException:
        file.close()
        raise
    return file


def holder(path: str | os.PathLike) -> str:
    """Who holds a lock file, as its holder wrote it: "PID 123 on host"."""
    try:
        words = Path(path).read_text(errors="replace").split()
    except OSError:
        words = []
    if len(words) >= 2 and words[0].isdigit():
        return f"PID {words[0]} on {words[1]}"
    return "another process"
