"""Crash-safe file writes: a temporary file in the same directory, synced, then renamed.

A temporary is named `.<target name>.<host>.<pid>.<random>.tmp` and created with the mode any new
file gets (0666 less the umask), so the renamed file has it too. A process killed mid-write (kill -9,
power loss) cannot remove its own; the next write to the same target removes every temporary of
it whose writer (same host, that pid) is no longer running, and `fastret clean` does the same for
a whole directory. Temporaries of live writers, or of other hosts sharing the directory, are kept.
"""

from __future__ import annotations

import glob
import os
import re
import secrets
import shutil
import socket
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Iterator

_SUFFIX = ".tmp"


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "_", socket.gethostname()) or "host"


@contextmanager
def atomic_write(path: str | os.PathLike) -> Iterator[BinaryIO]:
    """Open a temporary file for writing that replaces `path` only if the block succeeds.

    An exception inside the block leaves `path` as it was and no temporary file behind; a killed
    process leaves one that the next write to `path` removes. An OSError of the write itself (a
    full disk, say) is raised with `path` as its filename, so that the message names the file.
    """
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a directory; pass a file path inside it")
    remove_stale_temporaries(path)
    tmp = path.parent / f".{path.name}.{_host()}.{os.getpid()}.{secrets.token_hex(4)}{_SUFFIX}"
    try:
        with naming(path):
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
            with os.fdopen(fd, "wb") as f:
                yield f
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    _fsync_directory(path.parent)


@contextmanager
def naming(path: str | os.PathLike) -> Iterator[None]:
    """Re-raise an OSError that names no file (a write's ENOSPC, EFBIG, EIO) as one naming `path`."""
    try:
        yield
    except OSError as error:
        if error.filename is not None or error.errno is None:
            raise
        raise type(error)(error.errno, error.strerror or os.strerror(error.errno), str(path)) from error


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Replace `path` with `data` atomically (see `atomic_write`)."""
    with atomic_write(path) as f:
        f.write(data)


@contextmanager
def atomic_directory(path: str | os.PathLike) -> Iterator[Path]:
    """A fresh directory `.<name>.tmp` beside `path` that replaces `path` (and all it held) only if
    the block succeeds; an exception inside the block removes it and leaves `path` as it was.

    One writer per `path` at a time: a leftover of a killed writer is removed when the next one
    starts. Readers see the old directory or the new one, except for the moment between removing
    the old one and renaming the new one into place (a directory cannot replace a full one at once).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}{_SUFFIX}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
        shutil.rmtree(path, ignore_errors=True)
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _fsync_directory(path.parent)


def temporaries(directory: str | os.PathLike, target_name: str | None = None) -> list[Path]:
    """Temporary files of `atomic_write` in `directory` (for `target_name` only, if given)."""
    directory = Path(directory)
    pattern = f".{glob.escape(target_name)}.*{_SUFFIX}" if target_name else f".*{_SUFFIX}"
    return sorted(p for p in directory.glob(pattern) if p.is_file() and _writer(p, target_name) is not None)


def _writer(path: Path, target_name: str | None) -> tuple[str, str, int] | None:
    """(target name, host, pid) encoded in a temporary's name, or None if it is not one of ours."""
    match = re.fullmatch(r"\.(.+)\.([A-Za-z0-9_-]+)\.(\d+)\.[^.]+" + re.escape(_SUFFIX), path.name)
    if match is None or (target_name is not None and match.group(1) != target_name):
        return None
    return match.group(1), match.group(2), int(match.group(3))


def _running(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def is_stale(path: Path, target_name: str | None = None) -> bool:
    """True for a temporary whose writer ran on this host and is gone."""
    writer = _writer(path, target_name)
    return writer is not None and writer[1] == _host() and not _running(writer[2])


def remove_stale_temporaries(target: str | os.PathLike, with_sidecars: bool = False) -> list[Path]:
    """Remove the leftover temporaries of writes to `target` whose writer is gone; returns them.

    Args:
        target: the file written.
        with_sidecars: also those of the files named `<target name>.*` (a segment's sidecars).
    """
    target = Path(target)
    if not target.parent.is_dir():
        return []
    removed = []
    for path in temporaries(target.parent, None if with_sidecars else target.name):
        name = _writer(path, None)[0]
        if (name == target.name or name.startswith(target.name + ".")) and is_stale(path):
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def remove_temporaries_in(directory: str | os.PathLike, all_writers: bool = False,
                          dry_run: bool = False) -> dict[Path, int]:
    """Remove the leftover temporaries in `directory` whose writer is gone (`fastret clean`).

    Args:
        directory: a store directory, or the directory of index files.
        all_writers: also those of live writers and of other hosts' (only when nothing else
            is writing there).
        dry_run: remove nothing; only say what would go.

    Returns:
        {temporary: its size in bytes}, removed (or, with `dry_run`, to be removed).
    """
    found = {path: path.stat().st_size for path in temporaries(directory) if all_writers or is_stale(path)}
    if not dry_run:
        for path in found:
            path.unlink(missing_ok=True)
    return found


def remove_paths(paths) -> None:
    """Remove each file or folder of `paths` (one already gone is fine)."""
    for path in map(Path, paths):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


def _fsync_directory(directory: Path) -> None:
    """Make the rename durable (not every platform can open a directory)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
