"""One writer per store name: two processes converting the same model take turns, the second
finds the first one's folder. An advisory lock (flock) on LOCALAI_HOME/models/.lock-<name>;
where fcntl does not exist the lock is skipped and the atomic rename of the staging folder
still keeps the store whole (the slower writer discards its copy).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Callable, Iterator

try:
    import fcntl
except ImportError:  # not on this platform: no locking
    fcntl = None

LOCK_PREFIX = ".lock-"


def lock_path(models: Path, name: str) -> Path:
    return Path(models) / f"{LOCK_PREFIX}{name}"


def _acquire(path: Path, on_wait: Callable[[], None]) -> int:
    """An open descriptor holding the lock on `path`. The holder removes the file when done, so a
    lock taken on a file that is no longer at `path` is dropped and taken again on the new one."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            on_wait()
            fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)


@contextlib.contextmanager
def store_lock(models: Path, name: str, on_wait: Callable[[], None] = lambda: None) -> Iterator[None]:
    """Hold the lock of store name `name` in the folder `models`; `on_wait` runs when another
    process holds it (to say why nothing happens)."""
    if fcntl is None:
        yield
        return
    path = lock_path(models, name)
    fd = _acquire(path, on_wait)
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)
        os.close(fd)
