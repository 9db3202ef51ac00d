"""One supervisor per folder: an advisory lock file (flock), held for the life of the process that owns it.

Two studios on one --home would each start the same queued job (same second, same run folder). The first
to start holds the lock; the second is refused with a message naming the holder (pid, URL). The kernel
drops the lock when its holder dies, so a crashed studio never leaves a stale lock behind.
"""
from __future__ import annotations

import fcntl
import json
import os
import time
from pathlib import Path


class FolderBusy(RuntimeError):
    """Another live process holds the folder's lock."""


class FolderLock:
    def __init__(self, folder: Path | str, name: str = ".lock", what: str = "this folder"):
        self.path = Path(folder) / name
        self.what = what
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self, **info) -> "FolderLock":
        """Take the lock or raise FolderBusy naming the holder. `info` (e.g. url=...) is written for the
        next one to read."""
        if self._fd is not None:
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise FolderBusy(self._busy_message()) from None
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"pid": os.getpid(), "since": time.time(), **info}).encode())
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def holder(self) -> dict:
        try:
            return json.loads(self.path.read_text() or "{}")
        except (OSError, ValueError):
            return {}

    def _busy_message(self) -> str:
        info = self.holder()
        who = f"process {info['pid']}" if info.get("pid") else "another process"
        where = f" at {info['url']}" if info.get("url") else ""
        return (f"{self.what} ({self.path.parent}) is in use by {who}{where}; use that one, stop it, or choose "
                f"another folder")
